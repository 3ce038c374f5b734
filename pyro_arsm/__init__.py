"""ARSM gradient estimators as a drop-in ELBO for Pyro."""

from pyro_arsm import estimators
from pyro_arsm.compare import compare_estimators
from pyro_arsm.elbo import ARSM_ELBO

__all__ = ["ARSM_ELBO", "compare_estimators", "estimators"]
__version__ = "0.1.0"
