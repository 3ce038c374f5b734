"""The cost ``f`` of an ARSM site, from the traces of one pass, and the rest of a particle's ELBO.

Owns: which terms make up a site's cost (:class:`CostSpec`, from the dependencies), the one
function that computes a pass's cost from its traces (:func:`pass_cost`, used for the real pass
and for every pseudo pass), how a cost is laid out per scored element, whether a cost is
element-separable, and the ``TraceGraph_ELBO`` terms of everything that is not an ARSM site.
"""

from collections import namedtuple

import torch
from pyro.distributions.score_parts import ScoreParts
from pyro.infer.util import MultiFrameTensor
from pyro.ops.provenance import detach_provenance
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_site_shape

from pyro_arsm._analytic import kl_term
from pyro_arsm._checks import cost_shape_message, missing_pseudo_dim_message
from pyro_arsm._dependencies import site_dependencies
from pyro_arsm._pyro_internals import tracegraph_elbo
from pyro_arsm._sites import elementwise_log_prob, event_ndims

__all__ = ["CostSpec", "PseudoShapeError", "combine_costs", "cost_spec", "is_separable",
           "pass_cost", "real_cost", "scored", "tracegraph_terms"]

# What makes up the cost f of one ARSM site:
#   model_deps / guide_deps: sites whose log-prob depends on it in the real pass (provenance)
#   model_names / guide_names: all sites of the real pass; sites that appear only at a pseudo
#       action (dynamic structure) depend on it too
#   own_model / own_guide: the site's own log-prob is scored per event element (.to_event sites)
#   analytic: ARSM sites whose KL is in closed form (pyro_arsm._analytic): their two log-probs
#       are -KL in the cost of every other site and absent from their own
CostSpec = namedtuple(
    "CostSpec",
    ["name", "model_deps", "guide_deps", "model_names", "guide_names", "own_model", "own_guide",
     "analytic"],
)


class PseudoShapeError(ValueError):
    """The batched pseudo-action pass cannot be right for a site (raised with
    ``vectorize_pseudo=True``; the default falls back to the sequential path)."""


def scored(raw_model_trace, raw_guide_trace, max_plate_nesting=None):
    """A real pass's traces without subsample sites, the model's log-probs and the guide's score
    parts computed; every site's shape checked against ``max_plate_nesting`` if given."""
    guide_trace = prune_subsample_sites(raw_guide_trace)
    model_trace = prune_subsample_sites(raw_model_trace)
    model_trace.compute_log_prob()
    guide_trace.compute_score_parts()
    if max_plate_nesting is not None:
        for trace in (model_trace, guide_trace):
            for site in trace.nodes.values():
                if site["type"] == "sample":
                    check_site_shape(site, max_plate_nesting)
    return model_trace, guide_trace


def cost_spec(particle, name):
    """Which terms make up the cost of site ``name``, and the guide sites downstream of it (their
    value depends on it): from the cached dependencies, or from provenance on the traces."""
    if particle.deps is not None:
        model_deps, guide_deps, downstream = particle.deps[name]
    else:
        model_deps, guide_deps, downstream = site_dependencies(
            particle.model_trace, particle.guide_trace, particle.raw_guide_trace, name)
    model_site = particle.model_trace.nodes.get(name)
    spec = CostSpec(
        name=name,
        model_deps=model_deps,
        guide_deps=guide_deps,
        model_names=frozenset(particle.raw_model_trace.nodes),
        guide_names=frozenset(particle.raw_guide_trace.nodes),
        own_model=model_site is not None and event_ndims(model_site["fn"]) > 0,
        own_guide=event_ndims(particle.guide_trace.nodes[name]["fn"]) > 0,
        analytic=particle.analytic,
    )
    return spec, downstream


def pass_cost(guide_trace, model_trace, spec, pseudo=None):
    """The cost of site ``spec.name`` in one pass: ``(shared, own)``, where ``shared`` is summed to
    the site's plates and ``own`` (or ``0.``) holds the site's own log-probabilities per event
    element (:func:`combine_costs` lays them out).

    Only the terms of ``spec`` are computed (a log-prob already in a trace is reused).
    ``pseudo = (U, dim)`` on the batched path, to check that every term of the cost carries the
    pseudo-action dim."""
    name = spec.name
    target = guide_trace.nodes[name]["cond_indep_stack"]
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace = prune_subsample_sites(model_trace)
    analytic = spec.analytic

    def model_term(n):
        return n in spec.model_deps or n not in spec.model_names

    def guide_term(n):
        return n in spec.guide_deps or n not in spec.guide_names

    # (a .to_event site's own log-prob is computed per element below instead)
    model_trace.compute_log_prob(lambda n, s: model_term(n) and n not in analytic
                                 and not (n == name and spec.own_model))
    guide_trace.compute_log_prob(lambda n, s: guide_term(n) and n not in analytic
                                 and not (n == name and spec.own_guide))
    shared = MultiFrameTensor()
    own = 0.0
    for n in analytic:
        # -KL in the cost of every other site whose model or guide term depends on it
        if n != name and n in guide_trace.nodes and (model_term(n) or guide_term(n)):
            guide_site = guide_trace.nodes[n]
            shared.add((guide_site["cond_indep_stack"],
                        -kl_term(model_trace.nodes[n], guide_site)))
    for trace, sign, deps, names, own_flag in (
        (model_trace, 1.0, spec.model_deps, spec.model_names, spec.own_model),
        (guide_trace, -1.0, spec.guide_deps, spec.guide_names, spec.own_guide),
    ):
        for n, s in trace.nodes.items():
            if s["type"] != "sample" or (n not in deps and n in names) or n in analytic:
                continue
            if n == name and own_flag:
                own = own + sign * elementwise_log_prob(s)
                continue
            if pseudo is not None:
                _check_pseudo_dim(n, s["log_prob"], *pseudo)
            shared.add((s["cond_indep_stack"], sign * s["log_prob"]))
    return shared.sum_to(target), own


def _check_pseudo_dim(name, log_prob, size, dim):
    if log_prob.dim() < -dim or log_prob.shape[dim] != size:
        raise PseudoShapeError(missing_pseudo_dim_message(name, log_prob.shape, size, dim))


def real_cost(particle, spec, site, element_shape, cost_of_pass=None):
    """The site's cost at the sampled value, from the real pass, and its shape: the site's
    batch shape, or its elements for a ``.to_event`` site (whose own log-probabilities
    factorize over its event elements: each element is scored by its own share of them and
    the shared rest; the other elements' shares do not depend on it). ``cost_of_pass``:
    :func:`pass_cost` or its enumerating twin."""
    batch_shape = tuple(site["fn"].batch_shape)
    cost_shape = element_shape if (spec.own_model or spec.own_guide) else batch_shape
    shared, own = (cost_of_pass or pass_cost)(particle.guide_trace, particle.model_trace, spec)
    cost = combine_costs(
        detach_provenance(torch.as_tensor(shared)).detach(),
        detach_provenance(torch.as_tensor(own)).detach(), batch_shape, cost_shape,
        len(cost_shape) - len(batch_shape), spec.name)
    return cost, cost_shape


def combine_costs(shared, own, expand_shape, cost_shape, n_event, name):
    """The cost per scored element, ``cost_shape``: ``shared`` (broadcastable to
    ``expand_shape``, which may hold size-1 padding dims that ``cost_shape`` lacks) repeated over
    the ``n_event`` trailing event dims, plus the per-element ``own`` terms (or ``0.``)."""
    shared = torch.as_tensor(shared)
    try:
        shared = shared.expand(expand_shape)
    except RuntimeError as e:
        raise ValueError(cost_shape_message(name, shared.shape, expand_shape)) from e
    lead = tuple(cost_shape[: len(cost_shape) - n_event])
    shared = shared.reshape(lead + (1,) * n_event)
    return (shared + own).expand(cost_shape)


def is_separable(particle, spec, site):
    """Whether the cost of each element of the site depends on that element alone: no event
    dims, every batch dim a plate, and every log-prob term that depends on the site inside all
    of its plates (the assumption plates already make, and the per-element cost relies on)."""
    if spec.own_model or spec.own_guide:
        return False
    plates = {(f.name, f.dim) for f in site["cond_indep_stack"] if f.vectorized}
    batch_shape = tuple(site["fn"].batch_shape)
    plate_dims = {dim for _, dim in plates}
    if any(size > 1 and i - len(batch_shape) not in plate_dims
           for i, size in enumerate(batch_shape)):
        return False
    for trace, deps in ((particle.model_trace, spec.model_deps),
                        (particle.guide_trace, spec.guide_deps)):
        for n in deps:
            frames = {(f.name, f.dim) for f in trace.nodes[n]["cond_indep_stack"] if f.vectorized}
            if not plates <= frames:
                return False
    return True


def tracegraph_terms(particle):
    """ELBO and surrogate ELBO of everything but the ARSM sites' score-function terms.

    These go through TraceGraph_ELBO's ``_compute_elbo`` (model log-probabilities, entropy terms
    of reparameterized sites, score-function terms and baselines of other non-reparameterizable
    sites) with the ARSM sites' score-function terms switched off: the caller adds
    ``g . logits``, ``g`` the site's estimate."""
    guide_trace = particle.guide_trace
    for name in particle.noise:
        site = guide_trace.nodes[name]
        parts = site["score_parts"]
        infer = {k: v for k, v in site["infer"].items() if k != "baseline"}
        guide_trace.nodes[name] = {
            **site,
            "infer": infer,
            "score_parts": ScoreParts(parts.log_prob, torch.zeros(()), parts.entropy_term),
        }
    elbo, surrogate_loss = tracegraph_elbo(particle.model_trace, guide_trace)
    return elbo, -surrogate_loss
