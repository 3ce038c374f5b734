"""ARSM gradient estimators as a drop-in ELBO for Pyro."""

from pyro_arsm import estimators
from pyro_arsm.autoguide import AutoCategorical, discrete_latent_sites
from pyro_arsm.compare import compare_estimators
from pyro_arsm.elbo import ARSM_ELBO

__all__ = ["ARSM_ELBO", "AutoCategorical", "compare_estimators", "discrete_latent_sites", "estimators"]
__version__ = "0.1.0"
