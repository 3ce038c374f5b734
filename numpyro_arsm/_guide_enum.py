"""Guide-side enumeration: guide sites marked ``infer={"enumerate": "parallel"}`` summed out with
their guide probabilities, with NumPyro ``TraceEnum_ELBO``'s own expectation.

This module owns the enumerated pass of a guide with marked sites (traced by NumPyro's
``get_importance_trace_enum``, the ARSM sampler inside it) and its ELBO: ``TraceEnum_ELBO``'s
cost terms (model groups contracted over the model's enumerated sites, each cost weighted by
the exp-sum-product of the log-measures of the guide sites it depends on), with the ARSM
(sampled) sites' DiCE factors set to zero and their log-probs detached, since the ELBO's
estimator gives their gradient. The cost of a sampled site at a pseudo action is that whole
expectation (:func:`dice_pass_cost`), a cost shared by all of the site's elements.
"""

from collections import defaultdict

import jax.numpy as jnp
from jax.lax import stop_gradient

__all__ = ["dice_elbo", "dice_pass_cost", "guide_enumerated_trace", "marked_guide_sites"]


def marked_guide_sites(sampler):
    """Whether the guide has sites marked for parallel enumeration (found by the sampler)."""
    return "parallel" in sampler.enumerated.values()


def guide_enumerated_trace(model, guide, args, kwargs, params, max_plate_nesting, deps):
    """``(model_trace, guide_trace)`` with the guide's marked sites (and the model's) enumerated,
    each site's ``log_prob`` and ``log_measure`` a funsor (``get_importance_trace_enum``)."""
    from numpyro.infer.elbo import get_importance_trace_enum

    from numpyro_arsm._enum import require_funsor

    require_funsor()
    model_trace, guide_trace, _ = get_importance_trace_enum(
        model, guide, args, kwargs, params, max_plate_nesting, deps.model,
        defaultdict(frozenset))
    return model_trace, guide_trace


def _sum_vars(model_trace, guide_trace):
    return frozenset(n for n, s in model_trace.items() if s["type"] == "sample"
                     and not s["is_observed"] and n not in guide_trace)


def _contract_group(model_trace, names, sum_vars, model_vars):
    """A model group's factors contracted over its enumerated sites and inner plates, with its
    common scale and the plates it eliminated."""
    import funsor
    import funsor.optimizer

    from numpyro_arsm._enum import _common_scale, _Component

    factors = tuple(model_trace[n]["log_prob"] for n in names)
    factors += tuple(model_trace[v]["log_measure"] for v in sum_vars)
    plates = frozenset().union(*[f.inputs for f in factors]) - model_vars
    outermost = frozenset.intersection(*(frozenset(f.inputs) & plates for f in factors))
    with funsor.interpretations.normalize:
        cost = funsor.sum_product.sum_product(funsor.ops.logaddexp, funsor.ops.add, factors,
                                              plates=plates,
                                              eliminate=sum_vars | (plates - outermost))
    cost = funsor.optimizer.apply_optimizer(cost)
    scale = _common_scale(model_trace, _Component(tuple(names), tuple(sum_vars)))
    return cost, scale, plates - outermost


def _cost_terms(model_trace, guide_trace, deps):
    """``[(cost, scale, deps)]``: TraceEnum_ELBO's cost terms of an enumerated pass."""
    from numpyro.infer.elbo import _partition

    sum_vars = _sum_vars(model_trace, guide_trace)
    model_vars = frozenset(deps.model)
    model_sum_deps = {k: v & sum_vars for k, v in deps.model.items() if k not in sum_vars}
    model_deps = {k: v - sum_vars for k, v in deps.model.items() if k not in sum_vars}
    terms = []
    for names, group_sum_vars in _partition(model_sum_deps, sum_vars):
        if any(model_trace[n].get("kl") is not None for n in names):
            raise NotImplementedError("ARSM_ELBO: infer={'kl': 'analytic'} is not supported "
                                      "beside guide-side enumeration")
        if not group_sum_vars:
            (name,) = names
            terms.append((model_trace[name]["log_prob"], model_trace[name]["scale"],
                          model_deps[name]))
            continue
        cost, scale, eliminated = _contract_group(model_trace, names, group_sum_vars,
                                                  model_vars)
        group_deps = frozenset().union(*[model_deps[n] for n in names])
        for key in group_deps:
            site = guide_trace[key]
            if site["infer"].get("enumerate") == "parallel" and (
                    frozenset(site["log_measure"].inputs) & eliminated):
                raise ValueError(
                    "ARSM_ELBO: expected model enumeration to be no more global than guide "
                    f"enumeration, but found model enumeration sites upstream of guide site "
                    f"'{key}' (as TraceEnum_ELBO requires). Enumerate those sites in the guide.")
        terms.append((cost, scale, group_deps))
    for name, site_deps in deps.guide.items():
        if name in guide_trace and guide_trace[name]["type"] == "sample":
            terms.append((-guide_trace[name]["log_prob"], guide_trace[name]["scale"],
                          site_deps))
    return terms, model_vars


def _without_arsm(guide_trace, arsm_sites):
    """The guide trace with the ARSM sites' log-measures zero and their log-probs detached."""
    import funsor

    guide_trace = dict(guide_trace)
    for name in arsm_sites:
        site = dict(guide_trace[name])
        measure = site["log_measure"]
        site["log_measure"] = funsor.ops.detach(measure) - funsor.ops.detach(measure)
        site["log_prob"] = funsor.ops.detach(site["log_prob"])
        guide_trace[name] = site
    return guide_trace


def dice_elbo(model_trace, guide_trace, deps, arsm_sites):
    """The ELBO of an enumerated pass (TraceEnum_ELBO's expectation, its gradient included but
    for the ARSM sites', which the estimator gives)."""
    import funsor
    import funsor.optimizer
    from numpyro.contrib.funsor import to_data
    from numpyro.distributions.util import is_identically_one

    guide_trace = _without_arsm(guide_trace, arsm_sites)
    terms, model_vars = _cost_terms(model_trace, guide_trace, deps)
    elbo = jnp.array(0.0)
    for cost, scale, cost_deps in terms:
        if cost_deps:
            measures = tuple(guide_trace[k]["log_measure"] for k in cost_deps)
            measure_vars = frozenset().union(*[f.inputs for f in measures])
            with funsor.interpretations.normalize:
                weight = funsor.sum_product.sum_product(
                    funsor.ops.logaddexp, funsor.ops.add, measures,
                    plates=(measure_vars | frozenset(cost.inputs)) - model_vars,
                    eliminate=measure_vars - frozenset(cost.inputs))
            cost = cost * funsor.ops.exp(funsor.optimizer.apply_optimizer(weight))
        if scale is not None and not is_identically_one(scale):
            cost = cost * scale
        elbo = elbo + to_data(cost.reduce(funsor.ops.add))
    return elbo


def dice_pass_cost(model_trace, guide_trace, spec):
    """The cost of a sampled site in one enumerated pass: the pass's whole ELBO (no gradient),
    shared by every element of the site: ``[*spec.cost_shape]``."""
    sampled = [n for n, s in guide_trace.items() if s["type"] == "sample"
               and not s["is_observed"] and s["infer"].get("enumerate") != "parallel"
               and not s["fn"].has_rsample]
    value = stop_gradient(dice_elbo(model_trace, guide_trace, spec.deps, sampled))
    return jnp.broadcast_to(value, spec.cost_shape)
