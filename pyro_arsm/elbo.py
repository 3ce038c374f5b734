"""``ARSM_ELBO``: the ARSM gradient estimator as a drop-in :class:`pyro.infer.ELBO`.

This module is glue: tracing, replay and re-sampling, plate bookkeeping and the surrogate loss.
The estimator arithmetic lives in :mod:`pyro_arsm.estimators`.
"""

import contextlib
import warnings
from collections import namedtuple
from typing import Callable, Optional, Union

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.score_parts import ScoreParts
from pyro.infer.elbo import ELBO
from pyro.infer.util import MultiFrameTensor, torch_backward, torch_item
from pyro.ops.provenance import detach_provenance, get_provenance, track_provenance
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match, check_site_shape, warn_if_nan

from pyro_arsm import _noise
from pyro_arsm import estimators as est
from pyro_arsm._programs import ProgramCache
from pyro_arsm._pyro_internals import (
    TrackScored,
    is_subsample,
    partially_reparameterized,
    tracegraph_elbo,
)
from pyro_arsm._sites import (
    arsm_kind,
    element_shape_of,
    elementwise_log_prob,
    event_ndims,
    site_logits,
    value_from_action,
)

__all__ = ["ARSM_ELBO"]

_PSEUDO_PLATE = "_arsm_pseudo_actions"
_ESTIMATORS = ("arsm", "ars", "ar", "rloo", "local")

# What the sampler learns about one ARSM site of the guide.
#   kind: "categorical" | "onehot" | "bernoulli"
#   noise: log pi [*elements, C] (categorical, one-hot) or u [*elements] (Bernoulli)
#   logits: detached logits broadcast to [*elements, C] or [*elements]
_SiteNoise = namedtuple("_SiteNoise", ["kind", "noise", "logits"])

# One particle: the (possibly particle-vectorized) model and guide, their traces and ARSM noise.
_Particle = namedtuple(
    "_Particle",
    ["model", "guide", "model_trace", "guide_trace", "raw_guide_trace", "raw_model_trace",
     "noise", "streams", "max_plate_nesting", "deps", "signature", "program"],
)
# program: the ProgramState of this model and guide (cached dependencies, pseudo-pass modes)
# streams: the guide sites' random streams in this particle (None on the compiled path); a pseudo
# pass re-samples downstream sites from the same streams (common random numbers).
# deps: None (read the dependencies from provenance on the traces) or, when cached, a dict
# site -> (model_deps, guide_deps, downstream) of frozensets of site names.
# signature: the model structure (site names, types, shapes), the key of what is remembered
# about the batched pseudo pass.


# ---------------------------------------------------------------------------------------------
# Site inspection
# ---------------------------------------------------------------------------------------------


def _guess_nesting(*traces):
    """Number of batch dims used by any sample site: plate dims and undeclared batch dims."""
    nesting = 0
    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] != "sample":
                continue
            for frame in site["cond_indep_stack"]:
                if frame.vectorized:
                    nesting = max(nesting, -frame.dim)
            batch_shape = getattr(site["fn"], "batch_shape", ())
            nesting = max(nesting, len(batch_shape))
    return nesting


# ---------------------------------------------------------------------------------------------
# Messengers
# ---------------------------------------------------------------------------------------------


class _ARSMSampler(Messenger):
    """Samples the guide's categorical / one-hot / Bernoulli sites from their ARSM augmentation.

    A categorical site gets ``pi ~ Dir(1_C)`` and the value ``argmin(log pi - logits)``
    (Yin et al. 2019, the augmentation); a Bernoulli site gets ``u ~ U(0, 1)`` and
    ``1[u < sigmoid(logits)]``. The noise is kept in ``self.noise``.

    With ``reuse``, sites already in ``reuse`` are drawn from that noise instead (broadcast over
    any new batch dims): in a pseudo pass this gives downstream discrete sites common random
    numbers with the real pass.

    With ``streams`` (a :class:`~pyro_arsm._noise.SiteStreams`), every site that draws draws from
    a stream of its own, so that a pseudo pass given the real pass's streams re-samples each
    downstream site from the random numbers it had in the real pass; ``broadcast`` maps the sites
    re-sampled in a batched pseudo pass to their :class:`~pyro_arsm._noise.BroadcastNoise`
    arguments. ``streams=None`` (the compiled path) draws from torch's global stream.
    """

    def __init__(self, reuse=None, check_finite=True, defer_finite=False, streams=None,
                 broadcast=None):
        super().__init__()
        self.check_finite = check_finite
        # defer_finite (compiled path): keep a boolean tensor per site instead of branching on it
        self.defer_finite = defer_finite
        self.finite = []
        self.noise = {}
        self.enumerated = set()
        self.reuse = reuse or {}
        self.streams = streams
        self.broadcast = broadcast or {}

    def _stream(self, name):
        return contextlib.nullcontext() if self.streams is None else self.streams.stream(name)

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["done"] or msg["value"] is not None:
            return
        if is_subsample(msg["fn"]):
            return
        name = msg["name"]
        kind, base = arsm_kind(msg["fn"])
        if kind is not None and msg["infer"].get("enumerate"):
            # A guide written for TraceEnum_ELBO (config_enumerate): sample the site instead, as
            # Trace_ELBO does; the ELBO warns once. The flag is dropped so that replaying this
            # trace into the model does not mark the model site as enumerated.
            self.enumerated.add(name)
            msg["infer"] = {k: v for k, v in msg["infer"].items() if k != "enumerate"}
        if kind is None:
            if self.streams is not None:  # sampled here, as Pyro would, on its own stream
                shared = (_noise.BroadcastNoise(*self.broadcast[name]) if name in self.broadcast
                          else contextlib.nullcontext())
                with self._stream(name), shared:
                    msg["value"] = msg["fn"](*msg["args"], **msg["kwargs"])
                msg["done"] = True
            return
        element_shape = element_shape_of(kind, msg["fn"])
        logits = site_logits(kind, base, element_shape).detach()
        if self.check_finite and self.defer_finite:
            self.finite.append((name, torch.isfinite(logits).all()))
        elif self.check_finite and not torch.isfinite(logits).all():
            bad = "NaN" if torch.isnan(logits).any() else "infinite"
            raise ValueError(
                f"ARSM_ELBO: guide site '{name}' has {bad} logits. ARSM needs finite logits: "
                "check the network or parameters producing them (NaN usually means a diverged "
                "optimizer), and use a large negative finite logit rather than -inf to make a "
                "category nearly impossible."
            )
        if name in self.reuse:
            kind, noise = self.reuse[name].kind, self.reuse[name].noise
            noise = noise.expand(logits.shape)
        elif kind == "bernoulli":
            with self._stream(name):
                noise = est.sample_uniform(element_shape, dtype=logits.dtype,
                                           device=logits.device)
        else:
            with self._stream(name):
                noise = est.sample_log_pi(element_shape, logits.shape[-1], dtype=logits.dtype,
                                          device=logits.device)
        if kind == "bernoulli":
            value = est.bernoulli_pair(noise, logits)[0]
        else:
            action = est.categorical_from_log_pi(noise, logits)
            value = value_from_action(kind, action, logits.shape[-1], logits.dtype)
        value = value.reshape(tuple(msg["fn"].batch_shape) + tuple(msg["fn"].event_shape))
        # The value depends on whatever the logits depend on: keep that provenance, so that a
        # site sampled from logits computed from another discrete site is known to be downstream
        # of it (TrackNonReparam adds the site's own name afterwards).
        msg["value"] = track_provenance(value, get_provenance(base.logits))
        msg["done"] = True
        self.noise[name] = _SiteNoise(kind, noise, logits)


def _with_pseudo_plate(fn, size, dim):
    def wrapped(*args, **kwargs):
        with pyro.plate(_PSEUDO_PLATE, size, dim=dim):
            return fn(*args, **kwargs)

    return wrapped


# ---------------------------------------------------------------------------------------------
# The ELBO
# ---------------------------------------------------------------------------------------------


class ARSM_ELBO(ELBO):
    r"""ELBO whose gradient uses the ARSM estimator for discrete guide sites.

    A drop-in replacement for :class:`~pyro.infer.TraceGraph_ELBO`::

        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=ARSM_ELBO())

    Each sample site of the guide gets the gradient estimator its distribution allows:

    * ``Categorical`` / ``OneHotCategorical`` (logits or probs, any batch shape, inside plates,
      with ``.to_event``, ``.mask``): **ARSM** [1] on the logits. The site is sampled by
      Dirichlet augmentation; the same swap ``(m, j)`` is applied to all elements of the site, so
      a step costs at most ``C(C-1)/2 + 1`` evaluations of model and guide per site, whatever the
      batch. Pseudo actions identical for the whole site are evaluated once.
    * ``Bernoulli``: **DisARM** [2] (``estimator="ar"``: the single-evaluation AR estimator).
    * other non-reparameterizable sites (Poisson, Geometric, ...): the score-function estimator of
      :class:`~pyro.infer.TraceGraph_ELBO` with its provenance-based Rao-Blackwellization and
      ``infer={"baseline": ...}`` options. A warning names such sites once.
    * reparameterizable sites: pathwise gradients. Partially reparameterized sites (a
      :class:`~pyro.distributions.Rejector`, ``ShapeAugmentedGamma``) get their whole
      ``score_parts``: the pathwise part and the score-function part, with its downstream cost,
      as :class:`~pyro.infer.Trace_ELBO` does. (:class:`~pyro.infer.TraceGraph_ELBO` drops the
      score-function part of such sites, which biases its gradient.)

    A site whose cost is **element-separable** (no ``.to_event`` dims, and every log-prob term
    that depends on it inside all of its plates: mixtures, token assignments) is evaluated at its
    ``C`` columns instead, the ``k``-th setting every element to category ``k``; each swap's cost
    is then read off this table (the same estimate at ``C`` instead of up to ``C(C-1)/2 + 1``
    evaluations), and ``estimator="local"`` uses it for the exact local expectation.

    The cost ``f`` of an ARSM site holds only the model and guide log-probabilities that depend on
    the site (provenance tracking, as in TraceGraph_ELBO), with their scale and mask, reduced to
    the site's plates, so each element of a plated site is scored by its own terms
    (Rao-Blackwellization). Guide sites upstream of, or independent of, the site are replayed;
    guide sites **downstream** of it are re-sampled at each pseudo action from the random numbers
    they had in the real pass (common random numbers: each guide site draws from a random stream
    of its own, so the pseudo action equal to the sampled one reproduces the real pass exactly;
    on the batched path, noise whose law depends on the parameters, as a Gamma's, is drawn
    afresh from the site's stream for the whole batch). Subsample indices are replayed, so the
    estimate is unbiased for the gradient of the full-data ELBO under ``subsample_size`` and
    ``poutine.scale``.

    By default all pseudo actions of a site are evaluated in one batched pass of guide and model
    under an extra :class:`~pyro.plate` left of ``max_plate_nesting``; this requires model and
    guide to broadcast on the left, as for ``vectorize_particles`` or parallel enumeration. On the
    first step of each model structure a few pseudo actions of each site are evaluated both in
    one batched pass and one at a time, with every other guide site replayed; where the batched
    pass fails or disagrees (a model that sums over all dims, reads ``z[0]``, concatenates along
    a fixed dim or asserts shapes), that site's pseudo actions are evaluated one at a time from
    then on, with one warning naming the site.

    Guide sites configured for enumeration (``config_enumerate``, for ``TraceEnum_ELBO``) are
    sampled and get ARSM gradients, with one warning, as :class:`~pyro.infer.Trace_ELBO` does.

    The reported loss is the usual single-sample ``-ELBO`` (averaged over particles).

    :param int num_particles: number of particles (independent estimates averaged).
    :param int max_plate_nesting: bound on the number of nested :class:`~pyro.plate` contexts
        (and other batch dims); guessed from the traces when not given.
    :param bool vectorize_particles: vectorize over particles with an outer plate.
    :param str estimator: ``"arsm"`` (default; all ``C(C-1)/2 + 1`` swaps, merged), ``"ars"`` (one
        random reference category: ``C`` evaluations) or ``"ar"`` (1 evaluation, no pseudo pass;
        much higher variance), ``"rloo"``: REINFORCE with leave-one-out baselines over
        ``num_rloo_samples`` independent samples of the site (Kool et al. 2019), evaluated in the
        same batched pass, the equal-budget competitor; or ``"local"``: the exact local
        expectation (Titsias & Lazaro-Gredilla 2015) from the per-element table, for sites whose
        cost is element-separable (others get ARSM, with a warning). Bernoulli sites use DisARM
        for ``"arsm"``/``"ars"``, AR for ``"ar"``, RLOO for ``"rloo"``.
    :param int num_rloo_samples: samples per site for ``estimator="rloo"`` (default: the ARSM
        budget, ``C(C-1)/2 + 1`` for a categorical site, 2 for a Bernoulli site).
    :param vectorize_pseudo: ``"auto"`` (default): one batched pass per site where the check
        on the first step of a model structure finds it right, else one pass per pseudo action
        (with a warning); ``True``: batched, and raise where the check fails; ``False``: one pass
        per pseudo action (slower; needs nothing of the model).
    :param int pseudo_batch_size: evaluate at most this many pseudo actions per batched pass
        (bounds the memory of a site with many distinct swaps; default: all at once).
    :param bool check_finite: raise, naming the site, when a site's logits are NaN or infinite.
    :param bool warn_score_function: warn once about each site that falls back to the
        score-function estimator.
    :param bool cache_dependencies: find which cost terms depend on which site by provenance
        tracking once per model structure (site names, types and shapes) and cache it (default);
        ``False`` tracks provenance on every step, as TraceGraph_ELBO does (slower; needed only if
        the data flow from a site to the costs changes between steps while the structure does
        not, e.g. through Python branches on the model's arguments). Models with score-function
        sites always track provenance.
    :param retain_graph: as for :class:`~pyro.infer.ELBO`; ``ignore_jit_warnings`` and
        ``strict_enumeration_warning`` are accepted as the other Pyro ELBOs accept them, so that
        a call written for :class:`~pyro.infer.TraceGraph_ELBO` runs unchanged.

    References

    [1] M. Yin, Y. Yue, M. Zhou, "ARSM: Augment-REINFORCE-Swap-Merge Estimator for Gradient
        Backpropagation Through Categorical Variables", ICML 2019.
    [2] Z. Dong, A. Mnih, G. Tucker, "DisARM: An Antithetic Gradient Estimator for Binary Latent
        Variables", NeurIPS 2020.
    """

    def __init__(
        self,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        estimator: str = "arsm",
        num_rloo_samples: Optional[int] = None,
        vectorize_pseudo: Union[str, bool] = "auto",
        pseudo_batch_size: Optional[int] = None,
        warn_score_function: bool = True,
        check_finite: bool = True,
        cache_dependencies: bool = True,
        retain_graph: Optional[bool] = None,
        ignore_jit_warnings: bool = False,
        strict_enumeration_warning: bool = True,
    ) -> None:
        if estimator not in _ESTIMATORS:
            raise ValueError(
                f"ARSM_ELBO: estimator must be one of {_ESTIMATORS}, got {estimator!r}")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            retain_graph=retain_graph,
            ignore_jit_warnings=ignore_jit_warnings,
            strict_enumeration_warning=strict_enumeration_warning,
        )
        self.estimator = estimator
        self.num_rloo_samples = num_rloo_samples
        if num_rloo_samples is not None and num_rloo_samples < 2:
            raise ValueError("ARSM_ELBO: num_rloo_samples must be at least 2")
        if vectorize_pseudo not in ("auto", True, False):
            raise ValueError(
                "ARSM_ELBO: vectorize_pseudo must be 'auto', True or False, got "
                f"{vectorize_pseudo!r}")
        self.vectorize_pseudo = vectorize_pseudo
        if pseudo_batch_size is not None and pseudo_batch_size < 1:
            raise ValueError("ARSM_ELBO: pseudo_batch_size must be a positive integer or None")
        self.pseudo_batch_size = pseudo_batch_size
        self.check_finite = check_finite
        self.warn_score_function = warn_score_function
        self._warned_sites = set()
        self.cache_dependencies = cache_dependencies
        # what is learnt per model and guide: dependencies, how each site's pseudo actions are
        # evaluated (decided by the check on the first step of a structure), autograd needs
        self._programs = ProgramCache()
        self._program = None  # the state of the program of the current call
        # static (JitARSM_ELBO): every step runs the same tensor ops, with no branch on values
        self._static = False
        self._finite_flags = []
        #: model evaluations in pseudo passes during the last call (for benchmarks and tests)
        self.last_num_pseudo_evaluations = 0

    # --- tracing -----------------------------------------------------------------------------

    def _get_trace(self, model, guide, args, kwargs):
        if isinstance(poutine.unwrap(guide), Messenger):
            raise NotImplementedError(
                "ARSM_ELBO does not support GuideMessenger guides (e.g. AutoNormalMessenger); "
                "use a callable guide or an AutoGuide."
            )
        # Dependencies (which costs depend on which site) come from provenance tracking, as in
        # TraceGraph_ELBO. Tracking every op is slow, so by default it runs once per model
        # structure, on a replay of the sampled values, and is cached.
        program = self._program
        sampler = _ARSMSampler(check_finite=self.check_finite, defer_finite=self._static,
                               streams=None if self._static else _noise.SiteStreams())
        with TrackScored() if program.provenance else contextlib.nullcontext():
            with sampler:
                raw_guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            raw_model_trace = poutine.trace(
                poutine.replay(model, trace=raw_guide_trace)
            ).get_trace(*args, **kwargs)
        self._check_sites(raw_model_trace, raw_guide_trace, sampler.enumerated)
        if pyro.infer.util.is_validation_enabled():
            check_model_guide_match(raw_model_trace, raw_guide_trace, self.max_plate_nesting)

        deps = None
        signature = _signature(raw_model_trace, raw_guide_trace)
        if not program.provenance:
            deps = program.deps.get(signature)
            if deps is None:
                # (the real traces stay as they are: a partially reparameterized distribution
                # computes its score parts from the value it sampled, not from a replayed one)
                replayed_guide_trace, replayed_model_trace = _replay_with_provenance(
                    model, guide, raw_guide_trace, args, kwargs)
                if _has_score_function_sites(replayed_guide_trace):
                    # TraceGraph's score-function terms read provenance on every step
                    program.provenance = True
                else:
                    deps = _dependencies(replayed_model_trace, replayed_guide_trace,
                                         sampler.noise)
                    program.deps[signature] = deps
        if self._static and program.provenance:
            raise NotImplementedError(
                f"{type(self).__name__} needs the dependencies of every ARSM site cached once per "
                "model structure: it does not support guides with score-function sites (neither "
                "categorical, Bernoulli nor reparameterizable) or cache_dependencies=False. Use "
                "ARSM_ELBO for this model.")
        self._finite_flags.extend(sampler.finite)

        guide_trace = prune_subsample_sites(raw_guide_trace)
        model_trace = prune_subsample_sites(raw_model_trace)
        model_trace.compute_log_prob()
        guide_trace.compute_score_parts()
        if pyro.infer.util.is_validation_enabled():
            for trace in (model_trace, guide_trace):
                for site in trace.nodes.values():
                    if site["type"] == "sample":
                        check_site_shape(site, self.max_plate_nesting)
        nesting = _guess_nesting(raw_model_trace, raw_guide_trace)
        if self.max_plate_nesting != float("inf"):
            nesting = max(nesting, self.max_plate_nesting)
        return _Particle(model, guide, model_trace, guide_trace, raw_guide_trace,
                         raw_model_trace, sampler.noise, sampler.streams, nesting, deps,
                         signature, program)

    def _get_traces(self, model, guide, args, kwargs):
        self._program = self._programs.get(model, guide,
                                           provenance=not self.cache_dependencies)
        yield from super()._get_traces(model, guide, args, kwargs)

    def _warn_once(self, key, message):
        if key not in self._warned_sites:
            self._warned_sites.add(key)
            warnings.warn(message, stacklevel=5)

    def _check_sites(self, model_trace, guide_trace, enumerated=()):
        for name in enumerated:
            self._warn_once(("enumerate", name), (
                f"ARSM_ELBO: guide site '{name}' is configured for enumeration (e.g. by "
                "config_enumerate); ARSM_ELBO samples it and estimates its gradient with ARSM "
                "instead. Use TraceEnum_ELBO to enumerate it exactly."))
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or is_subsample(site["fn"]):
                continue
            guide_site = guide_trace.nodes.get(name)
            if site["is_observed"]:
                if guide_site is not None and guide_site["type"] == "sample":
                    raise ValueError(
                        f"ARSM_ELBO: site '{name}' is observed in the model but sampled in the "
                        "guide. Remove it from the guide (or do not observe it in the model)."
                    )
                continue
            if guide_site is None:
                if site["infer"].get("enumerate"):
                    raise ValueError(
                        f"ARSM_ELBO: model site '{name}' is enumerated in the model "
                        f"(infer={{'enumerate': {site['infer']['enumerate']!r}}}) and absent from "
                        "the guide. ARSM needs the discrete latent in the guide: add a guide site "
                        f"pyro.sample('{name}', dist.Categorical(...)) and drop the model-side "
                        "enumeration, or keep TraceEnum_ELBO for this model."
                    )
                raise ValueError(
                    f"ARSM_ELBO: latent site '{name}' of the model is missing from the guide; it "
                    "would be sampled from the prior and the ELBO would be wrong. Add it to the "
                    "guide."
                )
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample" or is_subsample(site["fn"]):
                continue
            if site["is_observed"] or getattr(site["fn"], "has_rsample", False):
                continue
            kind, _ = arsm_kind(site["fn"])
            if kind is None and self.warn_score_function:
                self._warn_once(("score_function", name), (
                    f"ARSM_ELBO: guide site '{name}' ({type(site['fn']).__name__}) is neither "
                    "categorical nor Bernoulli; it gets the TraceGraph_ELBO score-function "
                    "gradient (unbiased, higher variance). Pass warn_score_function=False to "
                    "silence this."))
            if kind is not None and site["infer"].get("baseline"):
                self._warn_once(("baseline", name), (
                    f"ARSM_ELBO: the baseline of site '{name}' is ignored: ARSM gets its "
                    "variance reduction from the swap table and needs no baseline."))

    # --- loss --------------------------------------------------------------------------------

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """
        :returns: an estimate of ``-ELBO`` (no gradient work, no pseudo passes).
        :rtype: float
        """
        try:
            with torch.no_grad():
                loss = self._loss(model, guide, args, kwargs)
        except RuntimeError as e:  # a guide that calls torch.autograd.grad
            if not _needs_autograd(e):
                raise
            with torch.enable_grad():
                loss = self._loss(model, guide, args, kwargs)
        warn_if_nan(loss, "loss")
        return loss

    def _loss(self, model, guide, args, kwargs):
        elbo = 0.0
        for particle in self._get_traces(model, guide, args, kwargs):
            elbo_particle = torch_item(particle.model_trace.log_prob_sum()) - torch_item(
                particle.guide_trace.log_prob_sum()
            )
            elbo += elbo_particle / self.num_particles
        return -elbo

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """Computes the ``-ELBO`` and back-propagates the ARSM surrogate loss.

        :returns: an estimate of ``-ELBO``.
        :rtype: float
        """
        loss, surrogate_loss = self._loss_and_surrogate_loss(model, guide, args, kwargs)
        torch_backward(surrogate_loss, retain_graph=self.retain_graph)
        loss = torch_item(loss)
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model: Callable, guide: Callable, *args,
                            **kwargs) -> torch.Tensor:
        """A tensor whose value is ``-ELBO`` and whose gradient is the ARSM estimate.

        This also makes ``ARSM_ELBO()(model, guide)`` an :class:`~pyro.infer.elbo.ELBOModule`.
        """
        loss, surrogate_loss = self._loss_and_surrogate_loss(model, guide, args, kwargs)
        # (plain numbers when nothing was scored, e.g. an empty model and guide: a zero loss)
        loss, surrogate_loss = torch.as_tensor(loss), torch.as_tensor(surrogate_loss)
        warn_if_nan(loss, "loss")
        return loss.detach() + (surrogate_loss - surrogate_loss.detach())

    def _loss_and_surrogate_loss(self, model, guide, args, kwargs):
        loss = 0.0
        surrogate_loss = 0.0
        self.last_num_pseudo_evaluations = 0
        self._finite_flags = []
        for particle in self._get_traces(model, guide, args, kwargs):
            elbo, surrogate_elbo = self._particle_elbo(particle, args, kwargs)
            loss = loss - elbo / self.num_particles
            surrogate_loss = surrogate_loss - surrogate_elbo / self.num_particles
        return loss, surrogate_loss

    def _particle_elbo(self, particle, args, kwargs):
        """ELBO and surrogate ELBO of one particle.

        Everything except the ARSM sites goes through TraceGraph_ELBO's ``_compute_elbo`` (model
        log-probabilities, entropy terms of reparameterized sites, score-function terms and
        baselines of other non-reparameterizable sites); the ARSM sites' score-function terms are
        switched off there and replaced by ``g . logits`` with ``g`` the ARSM estimate.
        """
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
        surrogate_elbo = -surrogate_loss
        for name in particle.noise:
            grad, logits = self._site_grad(particle, name, args, kwargs)
            surrogate_elbo = surrogate_elbo + (grad.detach() * logits).sum()
        return elbo, surrogate_elbo

    # --- the ARSM term of one site -----------------------------------------------------------

    def _cost_spec(self, particle, name):
        """Which terms make up the cost of site ``name`` (see :class:`_CostSpec`), and the guide
        sites downstream of it (their value depends on it)."""
        if particle.deps is not None:
            model_deps, guide_deps, downstream = particle.deps[name]
        else:
            model_deps, guide_deps, downstream = _site_dependencies(
                particle.model_trace, particle.guide_trace, particle.raw_guide_trace, name)
        model_site = particle.model_trace.nodes.get(name)
        spec = _CostSpec(
            name=name,
            model_deps=model_deps,
            guide_deps=guide_deps,
            model_names=frozenset(particle.raw_model_trace.nodes),
            guide_names=frozenset(particle.raw_guide_trace.nodes),
            own_model=model_site is not None and event_ndims(model_site["fn"]) > 0,
            own_guide=event_ndims(particle.guide_trace.nodes[name]["fn"]) > 0,
        )
        return spec, downstream

    def _site_grad(self, particle, name, args, kwargs):
        """The estimate for site ``name`` and its differentiable logits, in four steps: the real
        cost, the actions the estimator needs, their costs, the gradient."""
        site = particle.guide_trace.nodes[name]
        noise = particle.noise[name]
        kind, base = arsm_kind(site["fn"])
        element_shape = tuple(noise.noise.shape[:-1]) if kind != "bernoulli" else tuple(
            noise.noise.shape)
        logits = site_logits(kind, base, element_shape)
        spec, downstream = self._cost_spec(particle, name)
        real_cost, cost_shape = self._real_cost(particle, spec, site, element_shape)
        separable = _is_separable(particle, spec, site)
        estimator = self.estimator
        if estimator == "local" and not separable:
            self._warn_once(("local", name), (
                f"ARSM_ELBO: the cost of guide site '{name}' is not element-separable (a term "
                "that depends on it lies outside its plates, or it has .to_event dims), so the "
                "exact local expectation does not apply; it gets ARSM instead."))
            estimator = "arsm"
        if estimator == "ar":  # the real pass is all AR needs
            return est.estimator_gradient("ar", kind, real_cost.unsqueeze(0), None, noise.noise,
                                          noise.logits), logits

        pseudo = _PseudoPass(particle, spec, kind, cost_shape, downstream, args, kwargs,
                             check_finite=self.check_finite and not self._static)
        if separable and (estimator == "local" or (estimator == "arsm" and kind != "bernoulli")):
            # C evaluations give every element's cost at every category
            column_costs = self._column_costs(pseudo, noise, real_cost)
            if estimator == "local":
                local = est.bernoulli_local_grad if kind == "bernoulli" else est.local_grad
                return local(column_costs, noise.logits), logits
            return est.arsm_grad_from_columns(column_costs, noise.noise, noise.logits), logits
        actions, true_row, reference = est.estimator_actions(
            estimator, kind, noise.noise, noise.logits, num_samples=self.num_rloo_samples)
        table = self._action_costs(pseudo, actions, true_row, real_cost, separable)
        return est.estimator_gradient(estimator, kind, table, actions, noise.noise, noise.logits,
                                      reference), logits

    def _real_cost(self, particle, spec, site, element_shape):
        """The site's cost at the sampled value, from the real pass, and its shape: the site's
        batch shape, or its elements for a ``.to_event`` site (whose own log-probabilities
        factorize over its event elements: each element is scored by its own share of them and
        the shared rest; the other elements' shares do not depend on it)."""
        batch_shape = tuple(site["fn"].batch_shape)
        cost_shape = element_shape if (spec.own_model or spec.own_guide) else batch_shape
        shared, own = _site_cost(particle.model_trace, particle.guide_trace, spec,
                                 site["cond_indep_stack"])
        real_cost = _combine_costs(
            detach_provenance(torch.as_tensor(shared)).detach(),
            detach_provenance(torch.as_tensor(own)).detach(), batch_shape, cost_shape,
            len(cost_shape) - len(batch_shape), spec.name)
        return real_cost, cost_shape

    def _column_costs(self, pseudo, noise, real_cost):
        """The per-element table ``[C, *elements]`` of a separable site: the ``k``-th row
        evaluated with every element set to category ``k``."""
        if pseudo.kind == "bernoulli":
            true_action = est.bernoulli_pair(noise.noise, noise.logits)[0]
        else:
            true_action = est.categorical_from_log_pi(noise.noise, noise.logits)
        columns = est.column_actions(pseudo.num_categories, true_action.shape,
                                     device=true_action.device).to(true_action.dtype)
        self.last_num_pseudo_evaluations += pseudo.num_categories
        return self._pseudo_costs(pseudo, true_action, columns, real_cost)

    def _action_costs(self, pseudo, actions, true_row, real_cost, separable):
        """Costs ``[R, *cost_shape]`` of whole-site actions ``[R, *elements]``.

        Each distinct action is evaluated once and the true action reuses the real pass; a
        separable site's costs are read off its per-element table where that takes fewer
        evaluations. Static shapes (:class:`~pyro_arsm.JitARSM_ELBO`): every action is taken as
        distinct (no data-dependent ``torch.unique``)."""
        name = pseudo.spec.name
        if self._static:
            distinct, inverse, true_index = actions, None, true_row
        else:
            flat = actions.reshape(actions.shape[0], -1)
            distinct, inverse = torch.unique(flat, dim=0, return_inverse=True)
            distinct = distinct.reshape((distinct.shape[0],) + tuple(actions.shape[1:]))
            true_index = int(inverse[true_row])
        others = [u for u in range(distinct.shape[0]) if u != true_index]
        if separable and pseudo.num_categories <= len(others):
            column_costs = self._column_costs(pseudo, pseudo.particle.noise[name], real_cost)
            return est.costs_from_columns(column_costs, actions)
        if len(others) > _MANY_EVALUATIONS:
            self._warn_once(("many", name), (
                f"ARSM_ELBO: guide site '{name}' needs {len(others)} model evaluations per "
                "step (whole-site swaps of a site whose cost is not element-separable). "
                "Bound the memory with pseudo_batch_size, or use estimator='ars' (C "
                "evaluations) or 'rloo' with a small num_rloo_samples; estimator='local' "
                "needs a separable cost."))
        self.last_num_pseudo_evaluations += len(others)
        parts = [real_cost.unsqueeze(0)]
        if others:  # the distinct actions' costs in order, the real pass's at true_index
            costs = self._pseudo_costs(pseudo, distinct[true_index], distinct[others], real_cost)
            parts = [costs[:true_index], parts[0], costs[true_index:]]
        distinct_costs = torch.cat(parts)
        return distinct_costs if inverse is None else distinct_costs[inverse]

    def _pseudo_costs(self, pseudo, true_action, actions, real_cost):
        """Costs ``[U, *cost_shape]`` of a site at ``U`` pseudo actions ``[U, *elements]``.

        ``vectorize_pseudo=False``: one pass per action. Otherwise one batched pass, if the check
        on the first step of this model structure (:meth:`_check_batched`) found it right;
        ``"auto"`` falls back to the sequential path (with one warning) where it is not.
        """
        name = pseudo.spec.name
        if self.vectorize_pseudo is False:
            return pseudo.sequential(actions)
        modes = pseudo.particle.program.pseudo_mode
        key = (pseudo.particle.signature, name)
        mode = modes.get(key)
        if mode is None:
            check_rows = torch.cat([true_action.unsqueeze(0), actions[:_NUM_CHECK_ROWS - 1]])
            problem = self._check_batched(pseudo, check_rows, real_cost)
            mode = modes[key] = "batched" if problem is None else "sequential"
            if problem is not None:
                self._batched_failed(name, problem, actions.shape[0], pseudo.dim)
        if self._static:
            if mode != "batched":
                raise NotImplementedError(
                    f"{type(self).__name__}: guide site '{name}' needs its pseudo actions "
                    "evaluated one at a time (see the warning above), which cannot be compiled. "
                    "Make model and guide broadcast on the left, or use ARSM_ELBO.")
            return self._batched_costs(pseudo, actions)
        if mode == "batched":
            try:
                return self._batched_costs(pseudo, actions)
            except Exception as e:  # the check passed on fewer rows or another step's data
                modes[key] = "sequential"
                self._batched_failed(name, _failure(e),
                                     actions.shape[0], pseudo.dim, e)
        return pseudo.sequential(actions)

    def _batched_costs(self, pseudo, actions):
        if self.pseudo_batch_size and actions.shape[0] > self.pseudo_batch_size:
            return torch.cat([pseudo.batched(chunk)
                              for chunk in actions.split(self.pseudo_batch_size)])
        return pseudo.batched(actions)

    def _check_batched(self, pseudo, rows, real_cost):
        """Evaluates a few pseudo actions (the true one first) both in one batched pass and one
        by one, every other guide site replayed at its real value, so that both are deterministic
        functions of the action. Returns ``None`` if they agree, else what went wrong.

        This catches a model or guide that mixes the pseudo-action dim with others (sums or
        reshapes over all dims, ``torch.cat`` along a fixed dim, indexing ``z[0]``, shape
        asserts), downstream guide sites included."""
        try:
            batched = pseudo.batched(rows, replay_all=True)
        except Exception as e:
            if isinstance(e, _PseudoShapeError):
                return str(e)
            return _failure(e)
        sequential = pseudo.sequential(rows, replay_all=True)
        if not _same_costs(sequential[0], real_cost):
            # e.g. randomness outside sample sites (dropout): nothing to compare against
            return ("cannot be checked: re-evaluating the true action does not reproduce the "
                    "real pass's cost (randomness outside pyro.sample sites, such as dropout?)")
        if not _same_costs(batched, sequential):
            diff = (batched - sequential).abs().max()
            return ("gives other costs than evaluating the same actions one at a time (max abs "
                    f"difference {diff:.3g}): the model or guide mixes the pseudo-action dim with "
                    "others, e.g. sums or reshapes over all dims, indexes sample values with "
                    "z[0], or concatenates along a fixed dim")
        return None

    def _batched_failed(self, name, problem, num_actions, dim, error=None):
        message = (
            f"ARSM_ELBO: the batched pseudo-action pass for guide site '{name}' {problem}. "
            f"ARSM_ELBO evaluates the pseudo actions of a site ({num_actions} this step) in one "
            f"pass under a plate at dim {dim}, which needs model and guide to broadcast on the "
            "left: no "
            "x.view(batch, -1), len(z), .item(), z[0] or torch.cat along a fixed dim on values "
            "that depend on a sample (use dim=-1, Vindex, and declare batch dims with "
            "pyro.plate); set max_plate_nesting if the guess was wrong."
        )
        if self.vectorize_pseudo is True:
            raise _PseudoShapeError(
                message + " Pass ARSM_ELBO(vectorize_pseudo=False) (or the default 'auto') to "
                "evaluate pseudo actions one at a time.") from error
        self._warn_once(("pseudo", name), message + " Its pseudo actions are evaluated one at a "
                        "time instead (correct, slower); pass vectorize_pseudo=False to silence "
                        "this warning.")


_NUM_CHECK_ROWS = 4  # rows of the batched-pass check: the true action and up to 3 pseudo actions


def _failure(error):
    """``failed (Type: first line of the message)``: Pyro appends whole trace-shape tables."""
    lines = str(error).strip().splitlines()
    return f"failed ({type(error).__name__}: {lines[0] if lines else ''})"


def _same_costs(a, b):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=1e-4 * scale))


_MANY_EVALUATIONS = 4096  # warn once about a site that needs more evaluations per step


def _is_separable(particle, spec, site):
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


class _PseudoPass:
    """Evaluates the cost of one ARSM site at pseudo actions: batched under a pseudo-action plate
    left of ``max_plate_nesting``, or one action at a time.

    Guide sites upstream of or independent of the site are replayed (and subsample indices);
    downstream ones are re-sampled, discrete ones from the real pass's noise and the others from
    their own random streams of the real pass, on both paths (common random numbers).
    With ``replay_all``, downstream sites are replayed too (for the batched-pass check).
    """

    def __init__(self, particle, spec, kind, cost_shape, downstream, args, kwargs,
                 check_finite=True):
        self.particle, self.spec, self.kind = particle, spec, kind
        self.check_finite = check_finite
        self.cost_shape, self.downstream = cost_shape, downstream
        self.args, self.kwargs = args, kwargs
        self.site = particle.guide_trace.nodes[spec.name]
        fn = self.site["fn"]
        self.batch_shape = tuple(fn.batch_shape)
        self.value_shape = self.batch_shape + tuple(fn.event_shape)
        self.n_event = len(cost_shape) - len(self.batch_shape)
        self.dim = -(particle.max_plate_nesting + 1)
        self.model_subsample = {
            n: s for n, s in particle.raw_model_trace.nodes.items()
            if s["type"] == "sample" and is_subsample(s["fn"])
            and n not in particle.raw_guide_trace.nodes
        }
        self.reuse = {n: v for n, v in particle.noise.items() if n in downstream}
        noise = particle.noise[spec.name]
        self.num_categories = noise.noise.shape[-1] if kind != "bernoulli" else 2

    def _sampler(self, broadcast=None):
        """The sampler of a pseudo pass: downstream discrete sites re-use their noise, the
        others draw from their real-pass streams (``broadcast`` over the pseudo actions)."""
        return _ARSMSampler(reuse=self.reuse, check_finite=self.check_finite,
                            streams=self.particle.streams, broadcast=broadcast)

    def _values(self, actions):
        dtype = self.particle.noise[self.spec.name].logits.dtype
        return value_from_action(self.kind, actions, self.num_categories, dtype)

    def _replayed(self, replay_all):
        """The guide sites to replay: all but the site (and, unless ``replay_all``, but the
        sites downstream of it)."""
        part = poutine.Trace()
        for n, s in self.particle.raw_guide_trace.nodes.items():
            if s["type"] == "sample" and n != self.spec.name and (
                    replay_all or n not in self.downstream):
                part.add_node(n, **{**s, "value": detach_provenance(s["value"])})
        return part

    def batched(self, actions, replay_all=False):
        U = actions.shape[0]
        nesting = self.particle.max_plate_nesting
        pad = (1,) * (nesting - len(self.batch_shape))
        part = self._replayed(replay_all)  # replayed values broadcast over the rows
        part.add_node(self.spec.name, **{
            **self.site, "value": self._values(actions).reshape((U,) + pad + self.value_shape)})
        guide = _with_pseudo_plate(self.particle.guide, U, self.dim)
        model = _with_pseudo_plate(self.particle.model, U, self.dim)
        # Pseudo values are valid by construction and the real pass was validated: skip the
        # distributions' argument checks, which cost as much as the decoder on large sites.
        broadcast = {n: (U, -self.dim + len(s["fn"].event_shape), s["value"].shape)
                     for n, s in self.particle.raw_guide_trace.nodes.items()
                     if n in self.downstream}
        with pyro.validation_enabled(False):
            shared, own = self._without_grad(
                lambda: _pass_cost(guide, model, part, self.model_subsample,
                                   self._sampler(broadcast), self.spec, self.args, self.kwargs,
                                   pseudo=(U, self.dim)))
        if not isinstance(own, float):
            own = own.reshape((U,) + self.cost_shape)
        return _combine_costs(shared, own, (U,) + pad + self.batch_shape,
                              (U,) + self.cost_shape, self.n_event, self.spec.name)

    def sequential(self, actions, replay_all=False):
        part = self._replayed(replay_all)
        values = self._values(actions)
        costs = []
        with pyro.validation_enabled(False):
            for value in values:
                trace = poutine.Trace()
                for n, s in part.nodes.items():
                    trace.add_node(n, **s)
                trace.add_node(self.spec.name,
                               **{**self.site, "value": value.reshape(self.value_shape)})
                with torch.random.fork_rng(devices=[]):
                    shared, own = self._without_grad(
                        lambda trace=trace: _pass_cost(
                            self.particle.guide, self.particle.model, trace,
                            self.model_subsample, self._sampler(), self.spec, self.args,
                            self.kwargs))
                costs.append(_combine_costs(shared, own, self.batch_shape, self.cost_shape,
                                            self.n_event, self.spec.name))
        return torch.stack(costs)

    def _without_grad(self, run):
        """``run()`` with gradient recording off, or, for a program that needs autograd inside
        (a guide that calls ``torch.autograd.grad``), on; the costs are detached either way."""
        program = self.particle.program
        if not program.needs_grad:
            try:
                with torch.no_grad():
                    return run()
            except RuntimeError as e:
                if not _needs_autograd(e):
                    raise
                program.needs_grad = True
        with torch.enable_grad():
            shared, own = run()
        return _detach(shared), _detach(own)


# ---------------------------------------------------------------------------------------------
# Dependencies
# ---------------------------------------------------------------------------------------------


def _signature(model_trace, guide_trace):
    """The structure of a pair of traces: site names, kinds and shapes."""
    return tuple(
        (n, s["type"], type(s["fn"]).__name__, s["is_observed"],
         tuple(getattr(s["value"], "shape", ())))
        for trace in (model_trace, guide_trace)
        for n, s in trace.nodes.items()
        if s["type"] == "sample"
    )


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


def _replay_with_provenance(model, guide, guide_trace, args, kwargs):
    """Re-run guide and model on the sampled values with provenance tracking (deterministic:
    every guide sample site is replayed)."""
    part = poutine.Trace()
    for n, s in guide_trace.nodes.items():
        if s["type"] == "sample" and not s["is_observed"]:
            part.add_node(n, **s)
    with TrackScored(score_parts=False), _ValueProvenance():
        raw_guide_trace = poutine.trace(poutine.replay(guide, trace=part)).get_trace(
            *args, **kwargs)
        raw_model_trace = poutine.trace(poutine.replay(model, trace=raw_guide_trace)).get_trace(
            *args, **kwargs)
    return raw_guide_trace, raw_model_trace


def _site_dependencies(model_trace, guide_trace, raw_guide_trace, name):
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
    """:func:`_site_dependencies` of every site in ``sites``, from provenance-tracked traces."""
    model_trace = prune_subsample_sites(raw_model_trace)
    guide_trace = prune_subsample_sites(raw_guide_trace)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    return {name: _site_dependencies(model_trace, guide_trace, raw_guide_trace, name)
            for name in sites}


# ---------------------------------------------------------------------------------------------
# Costs
# ---------------------------------------------------------------------------------------------

# What makes up the cost f of one ARSM site:
#   model_deps / guide_deps: sites whose log-prob depends on it in the real pass (provenance)
#   model_names / guide_names: all sites of the real pass; sites that appear only at a pseudo
#       action (dynamic structure) depend on it too
#   own_model / own_guide: the site's own log-prob is scored per event element (.to_event sites)
_CostSpec = namedtuple(
    "_CostSpec",
    ["name", "model_deps", "guide_deps", "model_names", "guide_names", "own_model", "own_guide"],
)


def _site_cost(model_trace, guide_trace, spec, target, pseudo=None):
    """The cost of site ``spec.name`` from a model and guide trace: ``(shared, own)`` where
    ``shared`` is ``sum_to`` the site's plates ``target`` and ``own`` (or ``0.``) holds the site's
    own log-probabilities per event element."""
    shared = MultiFrameTensor()
    own = 0.0
    for trace, sign, deps, names, own_flag in (
        (model_trace, 1.0, spec.model_deps, spec.model_names, spec.own_model),
        (guide_trace, -1.0, spec.guide_deps, spec.guide_names, spec.own_guide),
    ):
        for n, s in trace.nodes.items():
            if s["type"] != "sample" or (n not in deps and n in names):
                continue
            if n == spec.name and own_flag:
                own = own + sign * elementwise_log_prob(s)
                continue
            log_prob = s["log_prob"]
            if pseudo is not None:
                size, dim = pseudo
                if log_prob.dim() < -dim or log_prob.shape[dim] != size:
                    raise _PseudoShapeError(
                        f"gives site '{n}' a log-prob of shape {tuple(log_prob.shape)}, without "
                        f"the {size} pseudo actions at dim {dim}")
            shared.add((s["cond_indep_stack"], sign * log_prob))
    return shared.sum_to(target), own


def _combine_costs(shared, own, expand_shape, cost_shape, n_event, name):
    """The cost per scored element, ``cost_shape``: ``shared`` (broadcastable to
    ``expand_shape``, which may hold size-1 padding dims that ``cost_shape`` lacks) repeated over
    the ``n_event`` trailing event dims, plus the per-element ``own`` terms (or ``0.``)."""
    shared = torch.as_tensor(shared)
    try:
        shared = shared.expand(expand_shape)
    except RuntimeError as e:
        raise ValueError(
            f"ARSM_ELBO: the cost of site '{name}' has shape {tuple(shared.shape)}, which does "
            f"not broadcast to the site's batch shape {tuple(expand_shape)}. Declare every batch "
            "dimension with pyro.plate (or use .to_event) in both model and guide."
        ) from e
    lead = tuple(cost_shape[: len(cost_shape) - n_event])
    shared = shared.reshape(lead + (1,) * n_event)
    return (shared + own).expand(cost_shape)


def _pass_cost(guide, model, part, model_subsample, sampler, spec, args, kwargs, pseudo=None):
    """One pass of guide and model with ``part`` replayed; the site's ``(shared, own)`` cost.

    ``sampler`` re-samples the other guide sites from the real pass's noise. ``pseudo = (U, dim)``
    on the batched path, to check that every term of the cost carries the pseudo-action dim."""
    name = spec.name
    with sampler:
        guide_trace = poutine.trace(poutine.replay(guide, trace=part)).get_trace(*args, **kwargs)
    replay_trace = guide_trace.copy()
    for n, s in model_subsample.items():
        replay_trace.add_node(n, **s)
    model_trace = poutine.trace(poutine.replay(model, trace=replay_trace)).get_trace(
        *args, **kwargs)
    target = guide_trace.nodes[name]["cond_indep_stack"]
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace = prune_subsample_sites(model_trace)
    # (a .to_event site's own log-prob is computed per element by _site_cost instead)
    model_trace.compute_log_prob(lambda n, s: (n in spec.model_deps or n not in spec.model_names)
                                 and not (n == name and spec.own_model))
    guide_trace.compute_log_prob(lambda n, s: (n in spec.guide_deps or n not in spec.guide_names)
                                 and not (n == name and spec.own_guide))
    return _site_cost(model_trace, guide_trace, spec, target, pseudo)


def _needs_autograd(error):
    """Whether ``error`` is autograd's complaint about a graph that ``torch.no_grad`` removed."""
    return "does not require grad" in str(error)


def _detach(cost):
    return cost.detach() if isinstance(cost, torch.Tensor) else cost


class _PseudoShapeError(ValueError):
    """The batched pseudo-action pass cannot be right for a site (raised with
    ``vectorize_pseudo=True``; the default falls back to the sequential path)."""
