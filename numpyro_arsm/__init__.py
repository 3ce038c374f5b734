"""ARSM gradient estimators as a drop-in ELBO for NumPyro."""

from importlib import metadata as _metadata

from numpyro_arsm import estimators
from numpyro_arsm.autoguide import AutoCategorical, discrete_latent_sites
from numpyro_arsm.compare import compare_estimators
from numpyro_arsm.config import config_estimator
from numpyro_arsm.elbo import ARSM_ELBO

__all__ = [
    "ARSM_ELBO",
    "AutoCategorical",
    "compare_estimators",
    "config_estimator",
    "discrete_latent_sites",
    "estimators",
]
try:  # the version is written once, in pyproject.toml; read it from the installed metadata
    __version__ = _metadata.version("ppl-arsm")
except _metadata.PackageNotFoundError:  # imported from a source tree never pip-installed
    __version__ = "0+unknown"
