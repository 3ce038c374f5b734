"""Costs of a pass whose model sums discrete sites out exactly, as ``TraceEnum_ELBO`` does.

Owns the enumerating twins of :func:`pyro_arsm._costs.pass_cost` and
:func:`pyro_arsm._costs.tracegraph_terms`. Model sites marked ``infer={"enumerate": "parallel"}``
and absent from the guide are enumerated by Pyro's ``EnumMessenger`` (dims left of
``max_plate_nesting``, and left of the pseudo-action plate in a batched pseudo pass). The model
log-probabilities that depend on an enumerated value are *factors*; they fall into connected
components (factors that share an enumerated dim), and each component is contracted as
``TraceEnum_ELBO`` contracts it: log-sum-exp over its enumerated dims, product over the plates
inside its ordinal (:func:`pyro.ops.contract.contract_tensor_tree`).

The cost of a sampled site holds every component with a factor that depends on the site, whole:
a component contracted to a more global ordinal than the site (a global enumerated site over a
plate of sampled ones) is a cost shared by all the site's elements, never dropped and never
split; a component inside the site's plates keeps the per-element cost.
"""

import weakref
from collections import OrderedDict, namedtuple

import torch
from pyro.infer.util import MultiFrameTensor
from pyro.ops import packed
from pyro.ops.contract import contract_tensor_tree
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.util import prune_subsample_sites

from pyro_arsm import _checks
from pyro_arsm._costs import PseudoShapeError, _check_pseudo_dim
from pyro_arsm._pyro_internals import dice_elbo, is_subsample, partially_reparameterized
from pyro_arsm._sites import elementwise_log_prob

__all__ = ["EnumMessenger", "components_of", "dice_pass_cost", "dice_terms",
           "enumerated_pass_cost", "enumerated_terms",
           "enumerated_sites", "enumeration", "guide_enumeration", "marked_for_enumeration",
           "pass_again", "separable_under_enumeration"]

# sites: the model sites whose log-probs are the component's factors; dims: its enumerated dims
_Component = namedtuple("_Component", ["sites", "dims"])

# trace -> {component sites: contracted terms}: the real pass's components are contracted once,
# for the ELBO and for every site's real cost
_CONTRACTED = weakref.WeakKeyDictionary()


def enumerated_sites(model_trace, guide_trace):
    """The model sites enumerated in this pass (marked, absent from the guide)."""
    return [n for n, s in model_trace.nodes.items()
            if s["type"] == "sample" and n not in guide_trace.nodes
            and s["infer"].get("_enumerate_dim") is not None]


def components_of(model_trace, guide_trace):
    """The connected components of the factors of a packed model trace (a real pass's: their
    contractions are computed once, then reused)."""
    _CONTRACTED.setdefault(model_trace, {})
    enum_dims = {model_trace.nodes[n]["infer"]["_enumerate_symbol"]
                 for n in enumerated_sites(model_trace, guide_trace)}
    owner = {}  # enumerated dim -> component index (union-find over dims)
    components = []
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or is_subsample(site["fn"]):
            continue
        dims = enum_dims.intersection(site["packed"]["log_prob"]._pyro_dims)
        if not dims:
            continue
        joined = sorted({owner[d] for d in dims if d in owner})
        sites, all_dims = [name], set(dims)
        for i in joined:
            sites = components[i].sites + sites
            all_dims |= components[i].dims
            components[i] = None
        components.append(_Component(sites, all_dims))
        for d in all_dims:
            owner[d] = len(components) - 1
    return [c for c in components if c is not None]


def _contract(model_trace, component, owner=None):
    """``[(frames, log-term)]``: the component's factors contracted (its enumerated dims summed
    out in log space, inner plates product-contracted), unpacked, with their common scale;
    remembered per ``owner`` (a trace) and component."""
    cache = _CONTRACTED.setdefault(owner, {}) if owner is not None else {}
    key = tuple(component.sites)
    if key not in cache:
        cache[key] = _contract_now(model_trace, component)
    return cache[key]


def _contract_now(model_trace, component):
    frame_of = {}
    tree = OrderedDict()
    scales = []
    for name in component.sites:
        site = model_trace.nodes[name]
        frames = [f for f in site["cond_indep_stack"] if f.vectorized]
        frame_of.update({model_trace.plate_to_symbol[f.name]: f for f in frames})
        ordinal = frozenset(model_trace.plate_to_symbol[f.name] for f in frames)
        term = site["packed"]["unscaled_log_prob"]
        if site["infer"].get("_enumerate_dim") is None:  # the mask inside, the scale outside
            term = packed.scale_and_mask(term, mask=site["packed"]["mask"])
        tree.setdefault(ordinal, []).append(term)
        scales.append(site["scale"])
    scale = _common_scale(scales, component)
    terms = []
    for ordinal, contracted in contract_tensor_tree(tree, set(component.dims)).items():
        for term in contracted:
            term = packed.unpack(packed.scale_and_mask(term, scale=scale),
                                 model_trace.symbol_to_dim)
            frames = tuple(frame_of[s] for s in ordinal)
            # (packing drops size-1 dims: give the term every dim of its plates back)
            depth = max((-f.dim for f in frames), default=0)
            term = term.reshape((1,) * (depth - term.dim()) + tuple(term.shape))
            terms.append((frames, term))
    return terms


def _common_scale(scales, component):
    values = set()
    for scale in scales:
        if isinstance(scale, torch.Tensor) and scale.dim():
            raise ValueError("ARSM_ELBO: enumeration only supports a scalar poutine.scale "
                             f"(sites {component.sites})")
        values.add(float(scale))
    if len(values) != 1:
        raise ValueError(
            "ARSM_ELBO: expected all enumerated sample sites to share a common poutine.scale, "
            f"but found {len(values)} different scales among {component.sites} (as "
            "TraceEnum_ELBO requires: a global enumerated site cannot couple a subsampled plate)")
    return scales[0]


def _pack(guide_trace, model_trace):
    """Pruned traces, every model log-prob computed and packed."""
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace = prune_subsample_sites(model_trace)
    model_trace.compute_log_prob()
    model_trace.pack_tensors()
    return guide_trace, model_trace


def enumerated_pass_cost(guide_trace, model_trace, spec, pseudo=None):
    """:func:`pyro_arsm._costs.pass_cost` for a model with enumerated sites: the same
    ``(shared, own)``, with each component that touches the site contracted."""
    name = spec.name
    target = guide_trace.nodes[name]["cond_indep_stack"]
    owner = model_trace if model_trace in _CONTRACTED else None  # (a real pass's)
    guide_trace, model_trace = _pack(guide_trace, model_trace)
    guide_trace.compute_log_prob(lambda n, s: (n in spec.guide_deps or n not in spec.guide_names)
                                 and not (n == name and spec.own_guide))
    components = components_of(model_trace, guide_trace)
    factors = {n for c in components for n in c.sites}
    if spec.own_model and name in factors:
        raise NotImplementedError(
            f"ARSM_ELBO: the model log-prob of the .to_event site '{name}' depends on an "
            "enumerated site; score it without .to_event, or do not enumerate that site.")
    shared = MultiFrameTensor()
    own = 0.0
    for n, s in model_trace.nodes.items():
        if s["type"] != "sample" or n in factors or (n not in spec.model_deps
                                                     and n in spec.model_names):
            continue
        if n == name and spec.own_model:
            own = own + elementwise_log_prob(s)
            continue
        if pseudo is not None:
            _check_pseudo_dim(n, s["log_prob"], *pseudo)
        shared.add((s["cond_indep_stack"], s["log_prob"]))
    for component in components:
        if any(n in spec.model_deps or n not in spec.model_names for n in component.sites):
            for frames, term in _contract(model_trace, component, owner):
                if pseudo is not None and pseudo[0] > 1:  # (packing drops size-1 dims)
                    _check_pseudo_dim(component.sites[0], term, *pseudo)
                shared.add((frames, term))
    for n, s in guide_trace.nodes.items():
        if s["type"] != "sample" or (n not in spec.guide_deps and n in spec.guide_names):
            continue
        if n == name and spec.own_guide:
            own = own - elementwise_log_prob(s)
            continue
        if pseudo is not None:
            _check_pseudo_dim(n, s["log_prob"], *pseudo)
        shared.add((s["cond_indep_stack"], -s["log_prob"]))
    return shared.sum_to(target), own


def separable_under_enumeration(particle, spec, site):
    """Whether every component that touches the site lies inside all of the site's plates (else
    its contracted term couples the site's elements)."""
    plates = {f.name for f in site["cond_indep_stack"] if f.vectorized}
    for component in particle.components:
        if not any(n in spec.model_deps for n in component.sites):
            continue
        for n in component.sites:
            frames = {f.name for f in particle.model_trace.nodes[n]["cond_indep_stack"]
                      if f.vectorized}
            if not plates <= frames:
                return False
    return True


def enumerated_terms(particle, arsm_sites):
    """ELBO and surrogate ELBO of an enumerated particle, but for the ARSM sites' estimates:
    the model's costs and contracted components, minus the guide's log-probs (pathwise through
    its reparameterized sites' entropy terms)."""
    model_trace, guide_trace = particle.model_trace, particle.guide_trace
    factors = {n for c in particle.components for n in c.sites}
    elbo = 0.0
    for n, s in model_trace.nodes.items():
        if s["type"] == "sample" and n not in factors:
            elbo = elbo + s["log_prob_sum"]
    for component in particle.components:
        for _, term in _contract(model_trace, component, model_trace):
            elbo = elbo + term.sum()
    surrogate = elbo
    for n, s in guide_trace.nodes.items():
        if s["type"] != "sample" or is_subsample(s["fn"]):
            continue
        log_prob, _, entropy_term = s["score_parts"]
        elbo = elbo - log_prob.sum()
        if n in arsm_sites:
            continue
        if not getattr(s["fn"], "has_rsample", False) or partially_reparameterized(s["fn"]):
            raise NotImplementedError(
                f"ARSM_ELBO: guide site '{n}' ({type(s['fn']).__name__}) needs a score-function "
                "term, which ARSM_ELBO does not combine with model-side enumeration. Make it "
                "categorical or Bernoulli, reparameterize it, or use TraceEnum_ELBO.")
        surrogate = surrogate - entropy_term.sum()
    return elbo, surrogate


def marked_for_enumeration(model_trace, guide_trace):
    """Whether a latent model site absent from the guide is marked for enumeration."""
    return any(s["type"] == "sample" and not s["is_observed"] and n not in guide_trace.nodes
               and s["infer"].get("enumerate") for n, s in model_trace.nodes.items())


def enumeration(max_plate_nesting, guide_enumerated=False, offset=0):
    """The model's handlers in a pass: its marked sites enumerated left of the plates (and of
    ``offset`` more dims: the pseudo-action plate), or left of the guide's enumerated dims;
    none while ``max_plate_nesting`` is unknown."""
    if guide_enumerated:
        return (EnumMessenger(),)  # (continues where the guide's enumeration stopped)
    if max_plate_nesting == float("inf"):
        return ()
    return (EnumMessenger(first_available_dim=-1 - max_plate_nesting - offset),)


def guide_enumeration(max_plate_nesting, offset=0):
    """The guide's enumeration handler: its marked sites' dims left of the plates (and of
    ``offset`` more dims)."""
    return EnumMessenger(first_available_dim=-1 - max_plate_nesting - offset)


# ---------------------------------------------------------------------------------------------
# Guide-side enumeration: TraceEnum_ELBO's own expectation, with the sampled sites' costs whole
# ---------------------------------------------------------------------------------------------


def _packed_for_dice(guide_trace, model_trace, arsm_sites):
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace = prune_subsample_sites(model_trace)
    model_trace.compute_log_prob()
    guide_trace.compute_score_parts()
    guide_trace.pack_tensors()
    model_trace.pack_tensors(guide_trace.plate_to_symbol)
    for name in arsm_sites:  # (their score-function term is the estimator's)
        packed_site = guide_trace.nodes[name]["packed"]
        log_prob = packed_site["log_prob"]
        kept = log_prob.detach()
        kept._pyro_dims = log_prob._pyro_dims
        packed_site["log_prob"] = kept
        parts = packed_site["score_parts"]
        packed_site["score_parts"] = parts._replace(log_prob=kept, score_function=0.0)
    return guide_trace, model_trace


def dice_terms(particle, arsm_sites):
    """ELBO and surrogate ELBO of a particle whose guide enumerates sites, but for the ARSM sites'
    estimates: ``TraceEnum_ELBO``'s expectation (each enumerated value weighted by its guide
    probability) with the ARSM sites' score-function terms and log-prob gradients taken out."""
    guide_trace, model_trace = _packed_for_dice(particle.raw_guide_trace,
                                                particle.raw_model_trace, arsm_sites)
    surrogate = dice_elbo(model_trace, guide_trace)
    return surrogate, surrogate


def dice_pass_cost(guide_trace, model_trace, spec, pseudo=None):
    """The cost of a sampled site in one pass of a guide that enumerates sites: the pass's whole
    ELBO, its enumerated values weighted by their guide probabilities (the terms that do not
    depend on the site are the same at every pseudo action), as a cost shared by every element
    of the site. One pass per pseudo action (``pseudo`` must be ``None``)."""
    if pseudo is not None:
        raise PseudoShapeError("cannot batch a guide that enumerates sites")
    sampled = [n for n, s in guide_trace.nodes.items()
               if s["type"] == "sample" and not s["is_observed"] and not is_subsample(s["fn"])
               and s["infer"].get("_enumerate_dim") is None]
    guide_trace, model_trace = _packed_for_dice(guide_trace, model_trace, sampled)
    return torch.as_tensor(dice_elbo(model_trace, guide_trace)).detach(), 0.0


def pass_again(elbo, program, sampler, raw_guide_trace, raw_model_trace, call):
    """Whether ``elbo``'s real pass must run again: with enumeration, once ``max_plate_nesting``
    is guessed, or with the guide's marked sites enumerated."""
    wants_guide = not program.guide_enumerated and "parallel" in sampler.enumerated.values()
    if not wants_guide and not (elbo.max_plate_nesting == float("inf") and
                                marked_for_enumeration(raw_model_trace,
                                                       raw_guide_trace)):
        return False
    if elbo.max_plate_nesting == float("inf"):  # guessed once, as TraceEnum_ELBO does
        try:
            elbo._guess_max_plate_nesting(*call)
        except Exception as e:
            raise ValueError(_checks.nesting_not_guessed(e)) from e
    program.guide_enumerated = program.guide_enumerated or wants_guide
    return True
