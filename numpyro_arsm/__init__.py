"""ARSM gradient estimators as a drop-in ELBO for NumPyro."""

from numpyro_arsm import estimators
from numpyro_arsm.autoguide import AutoCategorical, discrete_latent_sites
from numpyro_arsm.compare import compare_estimators
from numpyro_arsm.elbo import ARSM_ELBO

__all__ = ["ARSM_ELBO", "AutoCategorical", "compare_estimators", "discrete_latent_sites", "estimators"]
__version__ = "0.1.0"
