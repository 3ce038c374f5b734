"""Which cost terms and guide sites depend on each ARSM site, from provenance tracking.

Owns: the structure signature of a pair of traces, the provenance replay (guide and model re-run
on the sampled values with every op tracked, as ``TraceGraph_ELBO`` tracks them), the dependencies
of a site read off it, and :func:`cached_dependencies`, which keeps them per model structure in the
program's :class:`~pyro_arsm._programs.ProgramState` (tracking every op is slow, so by default it
runs once per structure).
"""

import pyro.poutine as poutine
import torch
from pyro.ops.provenance import get_provenance, track_provenance
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites

from pyro_arsm._pyro_internals import TrackScored, is_subsample, partially_reparameterized
from pyro_arsm._sampler import run_pass
from pyro_arsm._sites import arsm_kind

__all__ = ["cached_dependencies", "signature", "site_dependencies"]


def signature(model_trace, guide_trace):
    """The structure of a pair of traces: site names, kinds and shapes."""
    return tuple(
        (n, s["type"], type(s["fn"]).__name__, s["is_observed"],
         tuple(getattr(s["value"], "shape", ())))
        for trace in (model_trace, guide_trace)
        for n, s in trace.nodes.items()
        if s["type"] == "sample"
    )


def cached_dependencies(program, structure, model, guide, raw_guide_trace, args, kwargs, sites,
                        model_handlers=()):
    """The dependencies of every site in ``sites`` (a dict ``site -> (model_deps, guide_deps,
    downstream)`` of frozensets of names) for this ``structure``, from the program's cache or
    from one provenance replay; ``None`` where provenance is read on every step instead (the
    program asks for it, or a guide site gets a score-function term, which switches it on).

    (The real traces stay as they are: a partially reparameterized distribution computes its
    score parts from the value it sampled, not from a replayed one.) ``model_handlers`` enumerate
    the model as in the real pass."""
    if program.provenance:
        return None
    deps = program.deps.get(structure)
    if deps is not None:
        return deps
    replayed_guide_trace, replayed_model_trace = _replay_with_provenance(
        model, guide, raw_guide_trace, args, kwargs, model_handlers)
    if _has_score_function_sites(replayed_guide_trace):
        program.provenance = True  # TraceGraph's score-function terms read it on every step
        return None
    deps = program.deps[structure] = _dependencies(replayed_model_trace, replayed_guide_trace,
                                                   sites)
    return deps


def site_dependencies(model_trace, guide_trace, raw_guide_trace, name):
    """From provenance: model and guide sites whose log-prob depends on ``name`` and guide sites
    downstream of it. ``model_trace`` and ``guide_trace`` have their log-probs computed."""
    model_deps = frozenset(
        n for n, s in model_trace.nodes.items()
        if s["type"] == "sample" and name in get_provenance(s["log_prob"])
    )
    guide_deps = frozenset(
        n for n, s in guide_trace.nodes.items()
        if s["type"] == "sample" and name in get_provenance(s["log_prob"])
    )
    downstream = frozenset(
        n for n, s in raw_guide_trace.nodes.items()
        if s["type"] == "sample" and n != name and name in get_provenance(s["value"])
    )
    return model_deps, guide_deps, downstream


def _dependencies(raw_model_trace, raw_guide_trace, sites):
    """:func:`site_dependencies` of every site in ``sites``, from provenance-tracked traces."""
    model_trace = prune_subsample_sites(raw_model_trace)
    guide_trace = prune_subsample_sites(raw_guide_trace)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    return {name: site_dependencies(model_trace, guide_trace, raw_guide_trace, name)
            for name in sites}


def _has_score_function_sites(guide_trace):
    """Whether a guide site gets a TraceGraph score-function term: neither ARSM nor
    reparameterizable, or partially reparameterized."""
    return any(
        s["type"] == "sample" and not s["is_observed"] and not is_subsample(s["fn"])
        and (partially_reparameterized(s["fn"]) or (
            not getattr(s["fn"], "has_rsample", False) and arsm_kind(s["fn"])[0] is None))
        for s in guide_trace.nodes.values()
    )


def _distribution_provenance(fn):
    """Provenance of all tensors a distribution holds (its parameters, masks, base dists)."""
    provenance = frozenset()
    stack = [fn]
    while stack:
        d = stack.pop()
        for value in vars(d).values():
            if isinstance(value, torch.Tensor):
                provenance |= get_provenance(value)
            elif isinstance(value, torch.distributions.Distribution):
                stack.append(value)
    return provenance


class _ValueProvenance(Messenger):
    """On a replay, gives each latent value the provenance of its distribution's parameters, as
    sampling it would have (a value drawn from logits that depend on ``z`` depends on ``z``)."""

    def _pyro_post_sample(self, msg):
        if msg["is_observed"] or is_subsample(msg["fn"]):
            return
        provenance = _distribution_provenance(msg["fn"])
        if provenance:
            msg["value"] = track_provenance(msg["value"], provenance)


def _replay_with_provenance(model, guide, guide_trace, args, kwargs, model_handlers=()):
    """Re-run guide and model on the sampled values with provenance tracking (deterministic:
    every guide sample site is replayed)."""
    part = {n: s for n, s in guide_trace.nodes.items()
            if s["type"] == "sample" and not s["is_observed"]}
    return run_pass(model, guide, args, kwargs, replay=_trace_of(part),
                    handlers=(TrackScored(score_parts=False), _ValueProvenance()),
                    model_handlers=model_handlers)


def _trace_of(sites):
    """A partial trace holding ``sites`` (name -> site dict), for ``poutine.replay``."""
    trace = poutine.Trace()
    for name, site in sites.items():
        trace.add_node(name, **site)
    return trace
