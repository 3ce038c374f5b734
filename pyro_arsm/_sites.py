"""Site inspection: which guide sites ARSM handles and how their values, logits and per-element
log-probabilities look. Used by :mod:`pyro_arsm.elbo` and :mod:`pyro_arsm.autoguide` (the NumPyro
package's ``_sites`` module has the same functions and signatures)."""

import torch
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.distributions.util import scale_and_mask
from pyro.ops.provenance import detach_provenance
from torch.distributions import Bernoulli, Categorical, Independent, OneHotCategorical


def arsm_kind(fn):
    """Return ``(kind, base_distribution)`` for an ARSM-capable distribution, else ``(None, None)``.

    Unwraps ``.to_event`` (Independent), ``.mask`` (MaskedDistribution; the mask reaches the
    estimator through the masked log-probabilities in the cost) and ``.expand``.
    """
    if getattr(fn, "has_rsample", False):
        return None, None
    base = fn
    while isinstance(base, (Independent, MaskedDistribution, ExpandedDistribution)):
        base = base.base_dist
    if getattr(base, "has_rsample", False):
        return None, None
    if isinstance(base, OneHotCategorical):
        return "onehot", base
    if isinstance(base, Categorical):
        return "categorical", base
    if isinstance(base, Bernoulli):
        return "bernoulli", base
    return None, None


def element_shape_of(kind, fn):
    """Shape of the site's scalar random variables (batch and event, without the one-hot dim)."""
    shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
    return shape[:-1] if kind == "onehot" else shape


def site_logits(kind, base, element_shape):
    """The site's logits (differentiable) broadcast to ``[*elements, C]`` or ``[*elements]``."""
    logits = detach_provenance(base.logits)
    if kind == "bernoulli":
        return logits.expand(element_shape)
    return logits.expand(element_shape + logits.shape[-1:])


def value_from_action(kind, action, num_categories, dtype):
    """Pyro's value for an action: the index (Categorical), one-hot, or 0./1. (Bernoulli)."""
    if kind == "onehot":
        return torch.nn.functional.one_hot(action, num_categories).to(dtype)
    return action


def event_ndims(fn):
    """Event dims that can be scored elementwise: those of a chain of ``Independent`` wrappers
    (0 for anything else)."""
    ndims = 0
    while isinstance(fn, Independent):
        ndims += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return ndims


def elementwise_log_prob(site):
    """Scaled, masked log-prob of each element of a ``.to_event`` site: ``[*batch, *event]``."""
    fn = site["fn"]
    ndims = 0
    while isinstance(fn, Independent):
        ndims += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    log_prob = fn.log_prob(site["value"])
    scale, mask = site["scale"], site["mask"]
    if isinstance(scale, torch.Tensor) and scale.dim():
        scale = scale.reshape(scale.shape + (1,) * ndims)
    if isinstance(mask, torch.Tensor) and mask.dim():
        mask = mask.reshape(mask.shape + (1,) * ndims)
    return scale_and_mask(log_prob, scale, mask)
