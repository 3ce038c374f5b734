"""Costs of a pass whose model sums discrete sites out exactly, as ``TraceEnum_ELBO`` does.

The NumPyro twin of :mod:`pyro_arsm._enum`. Model sites marked ``infer={"enumerate":
"parallel"}`` and absent from the guide are enumerated by ``numpyro.contrib.funsor``'s ``enum``
(dims left of ``max_plate_nesting``; NumPyro's plates become funsor's, as
``TraceEnum_ELBO`` traces them). The model log-probabilities that carry an enumerated dim are
*factors*; with the enumerated sites' log-measures they fall into connected components (factors
that share an enumerated site), and each component is contracted as ``TraceEnum_ELBO`` contracts
it: log-sum-exp over its enumerated sites, product over the plates inside its outermost ones
(``funsor.sum_product.sum_product``), times the component's common scale.

The cost of a sampled site holds every component with a site that depends on it, whole: a
component contracted to a more global ordinal than the site (a global enumerated site over a
plate of sampled ones) is a cost shared by all the site's elements, never dropped and never
split; a component inside the site's plates keeps the per-element cost. Pseudo actions are
``vmap``-ped (or ``lax.map``-ped) over whole passes, each with its enumeration inside, so funsor
never sees the pseudo-action axis.

funsor is imported lazily (:func:`require_funsor`): only a model with marked sites needs it.
"""

from contextlib import contextmanager
from typing import NamedTuple

import jax.numpy as jnp
from jax.lax import stop_gradient
from numpyro.infer.elbo import MultiFrameTensor
from numpyro.infer.util import get_importance_trace

__all__ = ["enumerated_elbo", "enumerated_site_cost", "enumerating", "marked_sites",
           "require_funsor", "separable_under_enumeration"]


class _Component(NamedTuple):
    factors: tuple  # model sites (not enumerated) whose log-probs carry an enumerated dim
    sum_vars: tuple  # the enumerated sites whose dims they share


def missing_funsor_message():
    return ("ARSM_ELBO: the model has sites marked infer={'enumerate': 'parallel'}; summing them "
            "out needs funsor, as NumPyro's TraceEnum_ELBO does. Install it with "
            "`pip install ppl-arsm[enum]` (or `pip install funsor`).")


def require_funsor():
    """``numpyro.contrib.funsor``, or an ImportError naming the extra."""
    try:
        import funsor  # noqa: F401
        import numpyro.contrib.funsor as contrib
    except ImportError as e:
        raise ImportError(missing_funsor_message()) from e
    return contrib


def marked_sites(model_trace, guide_trace):
    """``{name: mark}`` of the latent model sites absent from the guide and marked for
    enumeration."""
    return {n: s["infer"]["enumerate"] for n, s in model_trace.items()
            if s["type"] == "sample" and not s.get("is_observed", False)
            and n not in guide_trace and (s.get("infer") or {}).get("enumerate")}


@contextmanager
def enumerating(max_plate_nesting):
    """The context of an enumerated pass: funsor's plates, marked sites enumerated left of the
    plates."""
    contrib = require_funsor()
    with contrib.plate_to_enum_plate(), contrib.enum(
            first_available_dim=-max_plate_nesting - 1):
        yield


def enumerated_importance_trace(model, guide, args, kwargs, params):
    """``get_importance_trace`` with the model traced by funsor's ``trace`` too (each site's
    ``infer["dim_to_name"]``); to be called inside :func:`enumerating`."""
    contrib = require_funsor()
    return get_importance_trace(contrib.trace(model), guide, args, kwargs, params)


def _enumerated(model_trace, guide_trace):
    return [n for n, s in model_trace.items()
            if s["type"] == "sample" and not s.get("is_observed", False) and n not in guide_trace
            and s["infer"].get("enumerate") == "parallel"]


def _inputs(site):
    """The names of the batch dims of a site's log-prob (plates and enumerated sites)."""
    return set(site["infer"].get("dim_to_name", {}).values())


def components_of(model_trace, guide_trace):
    """The connected components of the enumerated pass's factors."""
    sum_vars = _enumerated(model_trace, guide_trace)
    owner = {}  # enumerated site -> index of its component
    components = []
    for name, site in model_trace.items():
        if site["type"] != "sample":
            continue
        # a factor, or an enumerated site whose log-measure joins the sites it depends on (a
        # markov chain's transitions)
        dims = [v for v in sum_vars if v in _inputs(site) or v == name]
        if not dims:
            continue
        joined = sorted({owner[d] for d in dims if d in owner})
        factors = [] if name in sum_vars else [name]
        variables = set(dims)
        for i in joined:
            factors = list(components[i].factors) + factors
            variables |= set(components[i].sum_vars)
            components[i] = None
        components.append(_Component(tuple(factors), tuple(v for v in sum_vars
                                                          if v in variables)))
        for d in variables:
            owner[d] = len(components) - 1
    # (a component of log-measures alone sums to zero: as TraceEnum_ELBO, leave it out)
    return [c for c in components if c is not None and c.factors]


def _base_log_measure(site):
    """The enumerated site's log-measure: its unmasked prior at the enumerated values."""
    from numpyro.distributions import ExpandedDistribution, MaskedDistribution
    fn = site["fn"]
    batch_shape = fn.batch_shape
    while isinstance(fn, (MaskedDistribution, ExpandedDistribution)):
        fn = fn.base_dist
    return fn.expand(batch_shape).log_prob(site["value"])


def _common_scale(model_trace, component):
    values = set()
    for name in component.factors + component.sum_vars:
        scale = model_trace[name]["scale"]
        scale = 1.0 if scale is None else scale
        if jnp.ndim(scale):
            raise ValueError("ARSM_ELBO: enumeration only supports a scalar handlers.scale "
                             f"(sites {list(component.factors + component.sum_vars)})")
        values.add(float(scale))
    if len(values) != 1:
        raise ValueError(
            "ARSM_ELBO: expected all enumerated sample sites to share a common scale, but found "
            f"{len(values)} different scales among {list(component.factors + component.sum_vars)}"
            " (as TraceEnum_ELBO requires: a global enumerated site cannot couple a subsampled "
            "plate)")
    return values.pop()


def contract(model_trace, component):
    """``(frames, term)``: the component contracted (its enumerated sites summed out in log
    space, inner plates product-contracted), scaled, with the frames of its outermost plates;
    ``term`` has a dim for each of them (size 1 for the others)."""
    import funsor
    import funsor.optimizer
    from numpyro.contrib.funsor import to_data, to_funsor

    frames_of = {}
    factors = []
    for name in component.factors + component.sum_vars:
        site = model_trace[name]
        frames_of.update({f.name: f for f in site["cond_indep_stack"]})
        if name in component.sum_vars:
            log = _base_log_measure(site)
        else:
            log = site["fn"].log_prob(site["value"])  # masked inside, the scale outside
        factors.append(to_funsor(log, output=funsor.Real,
                                 dim_to_name=site["infer"]["dim_to_name"]))
    sum_vars = frozenset(component.sum_vars)
    all_vars = frozenset().union(*[f.inputs for f in factors])
    plates = all_vars - sum_vars
    outermost = frozenset.intersection(*(frozenset(f.inputs) & plates for f in factors))
    with funsor.interpretations.normalize:
        cost = funsor.sum_product.sum_product(funsor.ops.logaddexp, funsor.ops.add, factors,
                                              plates=plates, eliminate=sum_vars | plates
                                              - outermost)
    cost = funsor.optimizer.apply_optimizer(cost)
    frames = tuple(frames_of[p] for p in outermost)
    term = to_data(cost, name_to_dim={f.name: f.dim for f in frames})
    depth = max((-f.dim for f in frames), default=0)
    term = jnp.reshape(term, (1,) * (depth - jnp.ndim(term)) + jnp.shape(term))
    scale = _common_scale(model_trace, component)
    return frames, term if scale == 1.0 else scale * term


def _touches(component, name, deps):
    return any(name in deps.model.get(n, ()) for n in component.factors + component.sum_vars)


def enumerated_site_cost(model_trace, guide_trace, spec):
    """:func:`numpyro_arsm._costs._site_cost` for a pass with enumerated model sites: the same
    terms, with each component that depends on the site contracted and taken whole."""
    from numpyro_arsm._sites import elementwise_log_prob

    components = components_of(model_trace, guide_trace)
    in_components = {n for c in components for n in c.factors + c.sum_vars}
    in_components |= set(_enumerated(model_trace, guide_trace))
    batch_shape, cost_shape = spec.batch_shape, spec.cost_shape
    per_element = len(cost_shape) > len(batch_shape)
    if per_element and spec.name in in_components:
        raise NotImplementedError(
            f"ARSM_ELBO: the model log-prob of the .to_event site '{spec.name}' depends on an "
            "enumerated site; score it without .to_event, or do not enumerate that site.")
    shared = MultiFrameTensor()
    own = 0.0
    for n, sign, site in spec.deps.dependent_sites(spec.name, model_trace, guide_trace):
        if sign > 0 and n in in_components:
            continue
        if n == spec.name and per_element:
            own = own + sign * elementwise_log_prob(site)
            continue
        shared.add((site["cond_indep_stack"], sign * site["log_prob"]))
    for component in components:
        if _touches(component, spec.name, spec.deps):
            shared.add(contract(model_trace, component))
    shared = jnp.broadcast_to(shared.sum_to(spec.stack), batch_shape) if shared else \
        jnp.zeros(batch_shape)
    shared = shared.reshape(batch_shape + (1,) * (len(cost_shape) - len(batch_shape)))
    return jnp.broadcast_to(shared + own, cost_shape)


def separable_under_enumeration(model_trace, guide_trace, spec):
    """Whether every component that depends on the site lies inside all of its plates (else its
    contracted term couples the site's elements)."""
    plates = {(f.name, f.dim) for f in spec.stack}
    for component in components_of(model_trace, guide_trace):
        if not _touches(component, spec.name, spec.deps):
            continue
        for n in component.factors + component.sum_vars:
            if not plates <= {(f.name, f.dim) for f in model_trace[n]["cond_indep_stack"]}:
                return False
    return True


def enumerated_elbo(model_trace, guide_trace, arsm_sites):
    """The single-sample ELBO of an enumerated pass: the model's other log-probs and its
    contracted components, minus the guide's (detached for non-reparameterized sites). A
    non-reparameterized guide site that is not an ARSM site would need a score-function term
    beside enumeration: an error."""
    components = components_of(model_trace, guide_trace)
    in_components = {n for c in components for n in c.factors + c.sum_vars}
    sum_vars = set(_enumerated(model_trace, guide_trace))
    elbo = 0.0
    for n, site in model_trace.items():
        if site["type"] == "sample" and n not in in_components and n not in sum_vars:
            elbo = elbo + jnp.sum(site["log_prob"])
    for component in components:
        elbo = elbo + jnp.sum(contract(model_trace, component)[1])
    for n, site in guide_trace.items():
        if site["type"] != "sample":
            continue
        log_prob = jnp.sum(site["log_prob"])
        if not site["fn"].has_rsample:
            if n not in arsm_sites and not site.get("is_observed", False):
                raise NotImplementedError(
                    f"ARSM_ELBO: guide site '{n}' ({type(site['fn']).__name__}) needs a "
                    "score-function term, which ARSM_ELBO does not combine with model-side "
                    "enumeration. Make it categorical or Bernoulli, reparameterize it, or use "
                    "TraceEnum_ELBO.")
            log_prob = stop_gradient(log_prob)
        elbo = elbo - log_prob
    return elbo
