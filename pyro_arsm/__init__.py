"""ARSM gradient estimators as a drop-in ELBO for Pyro."""

from importlib import metadata as _metadata

from pyro_arsm import estimators
from pyro_arsm.autoguide import AutoCategorical, discrete_latent_sites
from pyro_arsm.compare import compare_estimators
from pyro_arsm.config import config_estimator
from pyro_arsm.elbo import ARSM_ELBO
from pyro_arsm.jit import JitARSM_ELBO

__all__ = [
    "ARSM_ELBO",
    "AutoCategorical",
    "JitARSM_ELBO",
    "compare_estimators",
    "config_estimator",
    "discrete_latent_sites",
    "estimators",
]
try:  # the version is written once, in pyproject.toml; read it from the installed metadata
    __version__ = _metadata.version("ppl-arsm")
except _metadata.PackageNotFoundError:  # imported from a source tree never pip-installed
    __version__ = "0+unknown"
