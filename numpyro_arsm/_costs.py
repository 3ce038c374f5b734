"""Cost assembly: from the traces of one pass of guide and model to the numbers the estimators
and the surrogate loss use.

:func:`_site_cost` is the one function that turns a pass's traces into a site's cost (the real
pass, every pseudo pass and the score-function fallback go through it); :class:`_CostSpec` says
which terms make it up (the closed-form ``-KL`` of ``analytic_kl`` sites in place of their
log-probs). Also here: whether a site's cost is element-separable, the ELBO value, the
score-function surrogate of the sites that are neither categorical nor Bernoulli, and the
model's part of a cost (``model_grads="all"``).
"""

from typing import NamedTuple

import jax.numpy as jnp
from jax.lax import stop_gradient
from numpyro.infer.elbo import MultiFrameTensor

from numpyro_arsm._dependencies import _Dependencies
from numpyro_arsm._kl import site_kl
from numpyro_arsm._sites import elementwise_log_prob


class _CostSpec(NamedTuple):
    """What makes up the cost of one guide site."""

    name: str
    deps: _Dependencies  # the sites whose log-probs depend on it
    stack: tuple  # its cond_indep_stack: the plates the shared terms are summed to
    batch_shape: tuple
    cost_shape: tuple  # batch_shape, plus the event dims of a .to_event site (per element)


def _cost_spec(name, site, cost_shape, deps):
    """The :class:`_CostSpec` of guide site ``name`` (its ``site`` of the real pass)."""
    return _CostSpec(name, deps, site["cond_indep_stack"], tuple(site["fn"].batch_shape),
                     tuple(cost_shape))


def _site_cost(model_trace, guide_trace, spec):
    """The cost of site ``spec.name`` in one pass: model and guide log-probs that depend on it
    (scaled, masked), ``sum_to`` its plates, and, for a ``.to_event`` site, its own log-probs
    per event element (they factorize over its elements: each element is scored by its own
    share of them and the shared rest; the other elements' shares do not depend on it). The two
    log-probs of a site in ``spec.deps.kl`` are ``-KL`` in this pass instead, and nothing in
    the site's own cost (the KL does not depend on its value).

    :returns: ``[*spec.cost_shape]``.
    """
    batch_shape, cost_shape = spec.batch_shape, spec.cost_shape
    per_element = len(cost_shape) > len(batch_shape)
    shared = MultiFrameTensor()
    own = 0.0
    kl_added = set()
    for n, sign, site in spec.deps.dependent_sites(spec.name, model_trace, guide_trace):
        if n in spec.deps.kl:  # log p - log q is -KL: none for the site itself (a constant)
            if n != spec.name and n not in kl_added:
                kl_added.add(n)
                shared.add((model_trace[n]["cond_indep_stack"],
                            -site_kl(model_trace[n], guide_trace[n])))
            continue
        if n == spec.name and per_element:
            own = own + sign * elementwise_log_prob(site)
            continue
        shared.add((site["cond_indep_stack"], sign * site["log_prob"]))
    shared = jnp.broadcast_to(shared.sum_to(spec.stack), batch_shape)
    shared = shared.reshape(batch_shape + (1,) * (len(cost_shape) - len(batch_shape)))
    return jnp.broadcast_to(shared + own, cost_shape)


def _is_separable(model_trace, guide_trace, spec):
    """Whether the cost of each element of site ``spec.name`` depends on that element alone: no
    event dims, every batch dim a plate, and every log-prob term that depends on the site inside
    all of its plates (the assumption plates already make, and the per-element cost relies on)."""
    site = guide_trace[spec.name]
    model_site = model_trace.get(spec.name)
    if site["fn"].event_shape or (model_site is not None and model_site["fn"].event_shape):
        return False
    plates = {(f.name, f.dim) for f in spec.stack}
    plate_dims = {dim for _, dim in plates}
    if any(size > 1 and i - len(spec.batch_shape) not in plate_dims
           for i, size in enumerate(spec.batch_shape)):
        return False
    for _, _, s in spec.deps.dependent_sites(spec.name, model_trace, guide_trace):
        if not plates <= {(f.name, f.dim) for f in s["cond_indep_stack"]}:
            return False
    return True


def _elbo_value(model_trace, guide_trace, kl=frozenset()):
    """The single-sample ELBO; the guide log-prob of non-reparameterized sites is detached. The
    sites in ``kl`` contribute ``-KL`` (closed form, with its pathwise gradient to guide and
    model parameters) instead of ``log p - log q``."""
    elbo = 0.0
    for name, site in model_trace.items():
        if site["type"] == "sample":
            if name in kl:
                elbo = elbo - jnp.sum(site_kl(site, guide_trace[name]))
                continue
            elbo = elbo + jnp.sum(site["log_prob"])
    for name, site in guide_trace.items():
        if site["type"] == "sample" and name not in kl:
            log_prob = jnp.sum(site["log_prob"])
            if not site["fn"].has_rsample:
                log_prob = stop_gradient(log_prob)
            elbo = elbo - log_prob
    return elbo


def _score_function_surrogate(model_trace, guide_trace, noise, deps):
    """Score-function surrogate of the non-reparameterized sites that are neither categorical
    nor Bernoulli (not in ``noise``), Rao-Blackwellized over plates; the scale enters once, via
    the cost."""
    surrogate = 0.0
    for name, site in guide_trace.items():
        if (site["type"] != "sample" or site.get("is_observed", False)
                or site["fn"].has_rsample or name in noise):
            continue
        spec = _cost_spec(name, site, tuple(site["fn"].batch_shape), deps)
        cost = _site_cost(model_trace, guide_trace, spec)
        log_q = site["fn"].log_prob(site["value"])
        surrogate = surrogate + jnp.sum(log_q * stop_gradient(cost))
    return surrogate


def _model_part(model_trace, guide_trace, spec, per_element=False):
    """The model's part of the cost of site ``spec.name`` in one pass, with its gradient to the
    model's parameters (``model_grads="all"``): the log-probs of the model sites that depend on
    it, and for a site in ``spec.deps.kl`` (other than itself) whose terms depend on it
    ``-KL`` with the guide held constant. A scalar, or with ``per_element`` one value per
    element of an element-separable site (``[*spec.batch_shape]``, summing to the scalar)."""
    terms = MultiFrameTensor() if per_element else None
    total = 0.0
    kl_added = set()
    for n, sign, site in spec.deps.dependent_sites(spec.name, model_trace, guide_trace):
        if n in spec.deps.kl:
            if n == spec.name or n in kl_added:
                continue
            kl_added.add(n)
            stack = model_trace[n]["cond_indep_stack"]
            term = -site_kl(model_trace[n], guide_trace[n], stop_guide=True)
        elif sign > 0:
            stack, term = site["cond_indep_stack"], site["log_prob"]
        else:
            continue
        if per_element:
            terms.add((stack, term))
        else:
            total = total + jnp.sum(term)
    if per_element:
        return jnp.broadcast_to(terms.sum_to(spec.stack), spec.batch_shape)
    return total
