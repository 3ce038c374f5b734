"""Site inspection: which guide sites ARSM handles and how their logits and per-element
log-probabilities look. Used by the ELBO's modules and :mod:`numpyro_arsm.autoguide` (the Pyro
package's ``_sites`` module has the same functions and signatures, and ``value_from_action``
besides: NumPyro has no one-hot categorical, so a value here is the action itself)."""

import jax.numpy as jnp
from numpyro.distributions import ExpandedDistribution, Independent, MaskedDistribution
from numpyro.distributions.discrete import (
    BernoulliLogits,
    BernoulliProbs,
    CategoricalLogits,
    CategoricalProbs,
)


def arsm_kind(fn):
    """``(kind, base)`` for a categorical / Bernoulli distribution (possibly wrapped by
    ``.to_event``, ``.expand`` or ``.mask``), else ``(None, None)``."""
    if getattr(fn, "has_rsample", False):
        return None, None
    base = fn
    while isinstance(base, (Independent, ExpandedDistribution, MaskedDistribution)):
        base = base.base_dist
    if isinstance(base, (CategoricalLogits, CategoricalProbs)):
        return "categorical", base
    if isinstance(base, (BernoulliLogits, BernoulliProbs)):
        return "bernoulli", base
    return None, None


def element_shape_of(kind, fn):
    """Shape of the site's scalar random variables (batch and event dims)."""
    return tuple(fn.batch_shape) + tuple(fn.event_shape)


def site_logits(kind, base, element_shape):
    """The site's logits broadcast to ``[*elements, C]`` or ``[*elements]``."""
    logits = base.logits
    if kind == "bernoulli":
        return jnp.broadcast_to(logits, element_shape)
    return jnp.broadcast_to(logits, element_shape + logits.shape[-1:])


def event_ndims(fn):
    """Event dims that can be scored elementwise: those of a chain of ``Independent`` wrappers
    (0 for anything else)."""
    ndims = 0
    while isinstance(fn, (Independent, ExpandedDistribution, MaskedDistribution)):
        if isinstance(fn, Independent):
            ndims += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return ndims


def _unsummed_log_prob(fn, value):
    """Log-prob of each element of a site, ``[*batch, *event]``, unsummed over event dims."""
    if isinstance(fn, MaskedDistribution):
        log_prob = _unsummed_log_prob(fn.base_dist, value)
        mask = fn._mask
        if mask is True:
            return log_prob
        if mask is False:
            return jnp.zeros_like(log_prob)
        mask = mask.reshape(mask.shape + (1,) * (log_prob.ndim - mask.ndim))
        return jnp.where(mask, log_prob, 0.0)
    if isinstance(fn, (ExpandedDistribution, Independent)):
        return jnp.broadcast_to(_unsummed_log_prob(fn.base_dist, value),
                                tuple(fn.batch_shape) + tuple(fn.event_shape))
    return fn.log_prob(value)


def elementwise_log_prob(site):
    """Scaled, masked log-prob of each element of a ``.to_event`` site: ``[*batch, *event]``."""
    log_prob = _unsummed_log_prob(site["fn"], site["value"])
    scale = site.get("scale")
    if scale is None:
        return log_prob
    scale = jnp.asarray(scale)
    return log_prob * scale.reshape(scale.shape + (1,) * (log_prob.ndim - scale.ndim))
