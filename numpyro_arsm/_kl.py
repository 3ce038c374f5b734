"""Closed-form KL terms of ARSM sites (``ARSM_ELBO(analytic_kl=True)``).

For an ARSM guide site ``z`` whose model site has a closed-form ``KL(q(z | ...) || p(z | ...))``
the site's own ``log p(z) - log q(z)`` is replaced, in the ELBO and in the cost of every site
whose cost holds it, by ``-KL`` computed in that pass (as NumPyro's ``TraceMeanField_ELBO`` does
for the ELBO). :func:`analytic_kl_sites` decides which sites qualify (once per trace, at the real
pass); :func:`site_kl` is the closed form of one site in one pass.

NumPyro 0.22 registers no ``kl_divergence`` for ``CategoricalLogits`` or Bernoulli, so a pair of
categorical (same number of categories) or of Bernoulli distributions, wrapped by ``.to_event``,
``.expand`` or ``.mask`` in any order, gets the closed form here; any other pair gets NumPyro's
``kl_divergence`` where one is registered.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.lax import stop_gradient
from numpyro.distributions import ExpandedDistribution, Independent, MaskedDistribution
from numpyro.distributions.kl import kl_divergence

from numpyro_arsm._sites import arsm_kind

__all__ = ["analytic_kl_sites", "site_kl"]


def _elementwise(fn):
    """``(base, mask)``: the distribution under the ``Independent`` / ``Expanded`` / ``Masked``
    wrappers, and the product of their masks (``True``, or a boolean array that broadcasts
    against ``fn``'s batch and event dims)."""
    if isinstance(fn, MaskedDistribution):
        base, inner = _elementwise(fn.base_dist)
        mask = fn._mask
        if mask is True:
            return base, inner
        mask = jnp.asarray(mask, dtype=bool)
        mask = jnp.reshape(mask, jnp.shape(mask) + (1,) * len(fn.event_shape))
        return base, mask if inner is True else (inner & mask)
    if isinstance(fn, (Independent, ExpandedDistribution)):
        return _elementwise(fn.base_dist)
    return fn, True


def _raw_masks(fn):
    """The mask objects along ``fn``'s wrappers (those that are not ``True``)."""
    masks = []
    while isinstance(fn, (Independent, ExpandedDistribution, MaskedDistribution)):
        if isinstance(fn, MaskedDistribution) and fn._mask is not True:
            masks.append(fn._mask)
        fn = fn.base_dist
    return masks


def _log_probs(kind, base):
    """The log-prob of every value of an unwrapped categorical / Bernoulli distribution,
    ``[*batch, V]`` (``V = C`` or 2), from its own ``log_prob`` (so that a probs-parameterized
    distribution is differentiated as its sampled log-prob is)."""
    num_values = base.logits.shape[-1] if kind == "categorical" else 2
    values = jnp.arange(num_values).reshape((num_values,) + (1,) * len(base.batch_shape))
    return jnp.moveaxis(base.log_prob(values), 0, -1)


def _base_kl(kind, q, p):
    """Elementwise ``KL(q || p)`` of two unwrapped categorical / Bernoulli distributions."""
    log_q, log_p = _log_probs(kind, q), _log_probs(kind, p)
    q_probs = jnp.exp(log_q)
    # (0 log 0 = 0; NaN logits stay NaN)
    return jnp.where(q_probs == 0, 0.0, q_probs * (log_q - log_p)).sum(-1)


def _closed_form(q_fn, p_fn):
    """``KL(q_fn || p_fn)``, one per batch element (event dims summed, masks applied); raises
    ``NotImplementedError`` when there is none."""
    q_kind, q_base = arsm_kind(q_fn)
    p_kind, p_base = arsm_kind(p_fn)
    if q_kind is None or q_kind != p_kind:
        return kl_divergence(q_fn, p_fn)  # a registered one, or NotImplementedError
    if tuple(q_fn.event_shape) != tuple(p_fn.event_shape) or (
            q_kind == "categorical" and q_base.logits.shape[-1] != p_base.logits.shape[-1]):
        raise NotImplementedError
    _, q_mask = _elementwise(q_fn)
    _, p_mask = _elementwise(p_fn)
    elements = jnp.broadcast_shapes(tuple(q_fn.batch_shape) + tuple(q_fn.event_shape),
                                    tuple(p_fn.batch_shape) + tuple(p_fn.event_shape))
    kl = jnp.broadcast_to(_base_kl(q_kind, q_base, p_base), elements)
    mask = q_mask if p_mask is True else (p_mask if q_mask is True else q_mask & p_mask)
    if mask is not True:
        kl = jnp.where(mask, kl, 0.0)
    event_ndims = len(q_fn.event_shape)
    return kl.sum(tuple(range(kl.ndim - event_ndims, kl.ndim))) if event_ndims else kl


def site_kl(model_site, guide_site, stop_guide=False):
    """The scaled, masked ``KL(q || p)`` of a site in one pass, of the site's batch shape (the
    shape of its ``log_prob``). With ``stop_guide``, the guide's distribution is held constant
    (its parameters under ``stop_gradient``): the gradient is then ``-E_q[grad log p]``, the
    model's part."""
    q_fn, p_fn = guide_site["fn"], model_site["fn"]
    if stop_guide:
        q_fn = jax.tree_util.tree_map(stop_gradient, q_fn)
    kl = _closed_form(q_fn, p_fn)
    kl = jnp.broadcast_to(kl, jnp.broadcast_shapes(tuple(q_fn.batch_shape),
                                                   tuple(p_fn.batch_shape)))
    scale = guide_site.get("scale")
    if scale is not None:
        kl = kl * scale
    return kl


def _is_concrete(x):
    return not isinstance(x, jax.core.Tracer)


def _scales_equal(a, b):
    """Whether two site scales are known equal at trace time (``None`` is 1)."""
    if a is b:
        return True
    a = 1.0 if a is None else a
    b = 1.0 if b is None else b
    if not (_is_concrete(a) and _is_concrete(b)):
        return False
    try:
        a, b = np.asarray(a), np.asarray(b)
        return bool(np.all(np.broadcast_to(a, np.broadcast_shapes(a.shape, b.shape))
                           == np.broadcast_to(b, np.broadcast_shapes(a.shape, b.shape))))
    except ValueError:
        return False


def _masks_equal(q_fn, p_fn):
    """Whether guide and model mask the same elements, as far as trace time can tell: no masks,
    the same mask objects, or concrete masks of equal values."""
    q_raw, p_raw = _raw_masks(q_fn), _raw_masks(p_fn)
    if not q_raw and not p_raw:
        return True
    _, q_mask = _elementwise(q_fn)
    _, p_mask = _elementwise(p_fn)
    shape = tuple(q_fn.batch_shape) + tuple(q_fn.event_shape)
    if (len(q_raw) == len(p_raw) and all(a is b for a, b in zip(q_raw, p_raw, strict=True))
            and jnp.shape(q_mask) == jnp.shape(p_mask)):
        return True
    if not all(_is_concrete(m) for m in q_raw + p_raw):
        return False
    try:
        q_mask = np.broadcast_to(np.asarray(q_mask), shape)
        p_mask = np.broadcast_to(np.asarray(p_mask), shape)
    except ValueError:
        return False
    return bool(np.array_equal(q_mask, p_mask))


def _downstream(name, guide_deps):
    """The guide sites whose log-prob (so whose value or distribution) depends on site
    ``name``, directly or through other guide sites (provenance's map is one step deep: a
    non-reparameterized site's value starts its own provenance)."""
    down = set()
    changed = True
    while changed:
        changed = False
        for n, site_deps in guide_deps.items():
            if n != name and n not in down and (name in site_deps or down & set(site_deps)):
                down.add(n)
                changed = True
    return down


def analytic_kl_sites(model_trace, guide_trace, arsm_sites, deps):
    """The ARSM sites (names in ``arsm_sites``) whose ``log p - log q`` may be replaced by the
    closed-form ``-KL``: the model site exists and is latent; a closed form exists; model and
    guide scale their log-probs equally and mask the same elements; and no guide site
    downstream of the site (its value depends on it) is sampled before it in the model (then
    the prior's parameters could depend on the site's own value, and ``E_q[log p]`` would not
    be the KL's). Anything else keeps its sampled terms."""
    eligible = []
    for name in arsm_sites:
        model_site, guide_site = model_trace.get(name), guide_trace.get(name)
        if (model_site is None or guide_site is None or model_site["type"] != "sample"
                or model_site.get("is_observed", False)):
            continue
        if not _scales_equal(model_site.get("scale"), guide_site.get("scale")):
            continue
        if not _masks_equal(guide_site["fn"], model_site["fn"]):
            continue
        down = _downstream(name, deps.guide)
        before = []
        for n, site in model_trace.items():
            if n == name:
                break
            if site["type"] == "sample":
                before.append(n)
        if down & set(before):
            continue
        try:  # (traced only: whether there is a closed form, at no cost outside jit)
            jax.eval_shape(lambda m=model_site, g=guide_site: site_kl(m, g))
        except NotImplementedError:
            continue
        eligible.append(name)
    return frozenset(eligible)
