"""ARSM gradient estimators as a drop-in ELBO for NumPyro."""

from numpyro_arsm import estimators
from numpyro_arsm.compare import compare_estimators
from numpyro_arsm.elbo import ARSM_ELBO

__all__ = ["ARSM_ELBO", "compare_estimators", "estimators"]
__version__ = "0.1.0"
