"""``ARSM_ELBO``: the ARSM gradient estimator as a drop-in :class:`pyro.infer.ELBO`.

Owns the ELBO class, its public methods and the path of one step: the real pass of each particle
(:meth:`ARSM_ELBO._real_pass`), then for each ARSM site of it the estimate
(:meth:`ARSM_ELBO._site_grad`: its cost from :mod:`pyro_arsm._costs`, its pseudo actions'
costs from :mod:`pyro_arsm._pseudo`, the arithmetic from :mod:`pyro_arsm.estimators`), then the
surrogate loss. Per-step values (finite flags, evaluation counts) are returned up this path, not
stored; what is learnt per program lives in :mod:`pyro_arsm._programs`.

:class:`~pyro_arsm.JitARSM_ELBO` changes the step through the hooks marked below.
"""

import contextlib
from collections import namedtuple
from typing import Callable, Optional, Union

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.elbo import ELBO
from pyro.infer.util import torch_backward, torch_item
from pyro.poutine.messenger import Messenger
from pyro.util import check_model_guide_match, warn_if_nan

from pyro_arsm import _analytic, _checks, _costs, _enum, _noise, _pseudo
from pyro_arsm import estimators as est
from pyro_arsm._dependencies import cached_dependencies, signature, site_dependencies
from pyro_arsm._programs import ProgramCache
from pyro_arsm._pyro_internals import TrackScored
from pyro_arsm._sampler import _ARSMSampler, _Particle, run_pass
from pyro_arsm._sites import arsm_kind, site_logits
from pyro_arsm.config import site_estimator

__all__ = ["ARSM_ELBO"]

# One step (all particles): -ELBO, the surrogate loss, the deferred finiteness flags and the
# number of model evaluations at pseudo actions.
_Step = namedtuple("_Step", ["loss", "surrogate_loss", "finite", "num_pseudo_evaluations"])


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
    the site (provenance tracking, as in TraceGraph_ELBO), reduced to the site's plates, so each
    element of a plated site is scored by its own terms (Rao-Blackwellization). Guide sites
    upstream of the site are replayed; guide sites **downstream** of it are re-sampled at each
    pseudo action from the random numbers they had in the real pass (each guide site draws from a
    random stream of its own). Subsample indices are replayed, so the estimate is unbiased for the
    full-data ELBO under ``subsample_size`` and ``poutine.scale``.

    By default all pseudo actions of a site are evaluated in one batched pass under an extra
    :class:`~pyro.plate` left of ``max_plate_nesting`` (model and guide must broadcast on the
    left); a check on the first step of each model structure falls back to one pass per pseudo
    action, with one warning naming the site, where that pass fails or disagrees.

    **Enumeration.** Model sites marked ``infer={"enumerate": "parallel"}`` and absent from the
    guide are summed out exactly, as :class:`~pyro.infer.TraceEnum_ELBO` sums them (enumerated
    dims left of ``max_plate_nesting``, guessed once when not given); the cost of a sampled site
    holds every contracted component that depends on it, whole (a global enumerated site over a
    plate of sampled sites is a cost shared by all their elements). Guide sites marked for
    enumeration (``config_enumerate``) are summed out with their guide probabilities too (a
    sampled site whose logits depend on an enumerated one gets one estimate per enumerated
    value).

    **Closed-form KL** (``analytic_kl=True``, the default), as in
    :class:`~pyro.infer.TraceMeanField_ELBO`: for an ARSM site whose model distribution has a
    registered :func:`~torch.distributions.kl.kl_divergence` with its guide distribution (e.g.
    categorical against categorical, Bernoulli against Bernoulli, ``.to_event`` alike), scaled
    and masked alike, the site's own ``E_q[log q(z) - log p(z)]`` is ``KL(q || p)``, with its
    pathwise gradient to the guide's logits and the prior's parameters; it leaves the site's
    sampled cost (where it only added variance), and in the cost of every other site that it
    depends on (a prior or guide whose parameters depend on an upstream sampled site) it is
    ``-KL`` computed in that pass. Where the prior's parameters could depend on the site itself
    through another guide site (a guide site downstream of it is sampled before it in the model),
    under enumeration, or where no closed form is registered, the sampled term stays.

    **Model-parameter gradients** (``model_grads``): by default the model's parameters (e.g. a
    decoder) get the pathwise gradient of the real sample. ``model_grads="all"`` averages it over
    every action the estimator evaluates (each ARSM or ARS swap action, each RLOO sample,
    DisARM's antithetic draw is itself a draw from ``q``; a separable site's rows are read off its
    columns, and ``estimator="local"`` weights its columns by ``q``), with the guide's values
    detached, so the guide's gradient is unchanged. The pseudo passes then keep their graph (one
    more evaluation per site, for the true action, and a backward pass through all of them).

    The reported loss is a single-sample ``-ELBO`` estimate (averaged over particles), with the
    closed-form KL terms where ``analytic_kl`` applies.

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
    :param bool analytic_kl: take each ARSM site's own KL term in closed form where it can be
        (see above); ``False`` samples it, as :class:`~pyro.infer.TraceGraph_ELBO` does.
    :param str model_grads: ``"real"`` (default): the model parameters' gradient from the real
        sample; ``"all"``: averaged over every evaluated action (lower variance for them, at the
        cost of backpropagating through the pseudo passes). Model-side or guide-side
        enumeration keeps ``"real"``.
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
        analytic_kl: bool = True,
        model_grads: str = "real",
        vectorize_pseudo: Union[str, bool] = "auto",
        pseudo_batch_size: Optional[int] = None,
        check_finite: bool = True,
        warn_score_function: bool = True,
        cache_dependencies: bool = True,
        retain_graph: Optional[bool] = None,
        ignore_jit_warnings: bool = False,
        strict_enumeration_warning: bool = True,
    ) -> None:
        _checks.check_arguments(estimator, num_rloo_samples, vectorize_pseudo, pseudo_batch_size,
                                model_grads)
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
        self.analytic_kl = analytic_kl
        self.model_grads = model_grads
        self.vectorize_pseudo = vectorize_pseudo
        self.pseudo_batch_size = pseudo_batch_size
        self.check_finite = check_finite
        self.warn_score_function = warn_score_function
        self.cache_dependencies = cache_dependencies
        self._warn = _checks.WarnOnce()
        # what is learnt per model and guide: dependencies, how each site's pseudo actions are
        # evaluated (decided by the check on the first step of a structure), autograd needs
        self._programs = ProgramCache()
        #: the number of guide and model evaluations at pseudo actions in the last loss
        #: computation, summed over sites and particles (a batched pass over ``R`` actions
        #: counts ``R``; identical whole-site actions are evaluated, and counted, once)
        self.last_num_pseudo_evaluations = 0

    # --- hooks (JitARSM_ELBO overrides them) ---------------------------------------------------

    def _real_sampler(self):
        """The sampler of a real pass: each guide site on a random stream of its own, finiteness
        checked at once."""
        return _ARSMSampler(check_finite=self.check_finite, streams=_noise.SiteStreams())

    def _check_program(self, program):
        """Raises if this ELBO cannot run ``program`` (a ProgramState)."""

    def _distinct_actions(self, actions):
        """``(distinct, inverse, true_index)``: the distinct whole-site actions among ``actions``
        (true action in row 0), each action's index among them and the true action's."""
        flat = actions.reshape(actions.shape[0], -1)
        distinct, inverse = torch.unique(flat, dim=0, return_inverse=True)
        distinct = distinct.reshape((distinct.shape[0],) + tuple(actions.shape[1:]))
        return distinct, inverse, int(inverse[0])

    def _pseudo_checks_finite(self):
        """Whether the samplers of pseudo passes check the logits of downstream sites."""
        return self.check_finite

    def _allows_sequential_pass(self):
        """Whether a site's pseudo actions may be evaluated one at a time."""
        return True

    def _check_estimator(self, name, estimator):
        """Raises if this ELBO cannot give site ``name`` the ``estimator`` its infer dict chose."""

    # --- the real pass -------------------------------------------------------------------------

    def _get_traces(self, model, guide, args, kwargs):
        """One real pass per particle (or one, vectorized), as :class:`~pyro.infer.ELBO` runs
        them, each knowing the state of its program."""
        program = self._programs.get(model, guide, provenance=not self.cache_dependencies)
        if self.vectorize_particles:
            if self.max_plate_nesting == float("inf"):
                self._guess_max_plate_nesting(model, guide, args, kwargs)
            yield self._real_pass(self._vectorized_num_particles(model),
                                  self._vectorized_num_particles(guide), args, kwargs, program)
        else:
            for _ in range(self.num_particles):
                yield self._real_pass(model, guide, args, kwargs, program)

    def _get_trace(self, model, guide, args, kwargs):  # (ELBO's hook)
        return self._real_pass(model, guide, args, kwargs,
                               self._programs.get(model, guide, not self.cache_dependencies))

    def _real_pass(self, model, guide, args, kwargs, program):
        """Samples the guide (ARSM sites from their augmentation), runs the model against it,
        checks the sites and finds (or recalls) the dependencies of every ARSM site."""
        if isinstance(poutine.unwrap(guide), Messenger):
            raise NotImplementedError(_checks.guide_messenger_message())
        sampler = self._real_sampler()
        sampler.enumerate_guide = program.guide_enumerated
        raw_guide_trace, raw_model_trace = self._run_real(model, guide, args, kwargs, program,
                                                          sampler)
        if _enum.pass_again(self, program, sampler, raw_guide_trace, raw_model_trace,
                            (model, guide, args, kwargs)):
            return self._real_pass(model, guide, args, kwargs, program)
        guide_enumerated = program.guide_enumerated
        _checks.check_sites(raw_model_trace, raw_guide_trace, self._warn,
                            self.warn_score_function)
        validating = pyro.infer.util.is_validation_enabled()
        if validating:
            check_model_guide_match(raw_model_trace, raw_guide_trace, self.max_plate_nesting)
        structure = signature(raw_model_trace, raw_guide_trace)
        deps = cached_dependencies(program, structure, model, guide, raw_guide_trace, args,
                                   kwargs, sampler.noise, self._enumeration(guide_enumerated))
        self._check_program(program)
        model_trace, guide_trace = _costs.scored(raw_model_trace, raw_guide_trace,
                                                 self.max_plate_nesting if validating else None)
        components = None
        if not guide_enumerated and _enum.enumerated_sites(model_trace, guide_trace):
            model_trace.pack_tensors()
            components = _enum.components_of(model_trace, guide_trace)
        analytic = frozenset()
        if self.analytic_kl and components is None and not guide_enumerated:
            kls = self._analytic_sites(model_trace, guide_trace, raw_guide_trace,
                                       raw_model_trace, sampler.noise, deps)
            _analytic.substitute(model_trace, guide_trace, kls)
            analytic = frozenset(kls)
        if components is not None or guide_enumerated:  # (batch shapes hold enumerated dims)
            nesting = self.max_plate_nesting
        else:
            nesting = _pseudo.batch_nesting(raw_model_trace, raw_guide_trace)
            if self.max_plate_nesting != float("inf"):
                nesting = max(nesting, self.max_plate_nesting)
        return _Particle(model, guide, model_trace, guide_trace, raw_guide_trace,
                         raw_model_trace, sampler.noise, sampler.streams, nesting, deps,
                         structure, program, sampler.finite, components, guide_enumerated,
                         analytic)

    def _analytic_sites(self, model_trace, guide_trace, raw_guide_trace, raw_model_trace,
                        names, deps):
        """The ARSM sites of a real pass whose KL is taken in closed form, with their KLs."""
        if deps is not None:
            downstream = {name: deps[name][2] for name in names}
        else:
            downstream = {name: site_dependencies(model_trace, guide_trace, raw_guide_trace,
                                                  name)[2] for name in names}
        return _analytic.analytic_sites(model_trace, guide_trace, raw_model_trace, names,
                                        downstream)

    def _enumeration(self, guide_enumerated=False):
        """The model's handlers in a real pass (see :func:`pyro_arsm._enum.enumeration`)."""
        return _enum.enumeration(self.max_plate_nesting, guide_enumerated)

    def _run_real(self, model, guide, args, kwargs, program, sampler):
        """The traces of a real pass: guide (and model) enumerated as ``program`` says."""
        guide_handlers = (sampler,)
        if program.guide_enumerated:
            guide_handlers = (sampler, _enum.guide_enumeration(self.max_plate_nesting))
        tracking = TrackScored() if program.provenance else contextlib.nullcontext()
        try:
            return run_pass(model, guide, args, kwargs, guide_handlers=guide_handlers,
                            handlers=(tracking,),
                            model_handlers=self._enumeration(program.guide_enumerated))
        except Exception as e:
            if self.max_plate_nesting == float("inf"):  # (run without enumeration)
                e.add_note(_checks.NESTING_NOTE)
            raise

    # --- loss ----------------------------------------------------------------------------------

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """
        :returns: an estimate of ``-ELBO`` (no gradient work, no pseudo passes).
        :rtype: float
        """
        try:
            with torch.no_grad():
                loss = self._loss(model, guide, args, kwargs)
        except RuntimeError as e:  # a guide that calls torch.autograd.grad
            if not _pseudo.needs_autograd(e):
                raise
            with torch.enable_grad():
                loss = self._loss(model, guide, args, kwargs)
        warn_if_nan(loss, "loss")
        return loss

    def _loss(self, model, guide, args, kwargs):
        elbo = 0.0
        for particle in self._get_traces(model, guide, args, kwargs):
            if particle.guide_enumerated:
                elbo_particle = torch_item(_enum.dice_terms(particle, particle.noise)[0])
            elif particle.components is not None:
                elbo_particle = torch_item(_enum.enumerated_terms(particle, particle.noise)[0])
            else:
                elbo_particle = torch_item(particle.model_trace.log_prob_sum()) - torch_item(
                    particle.guide_trace.log_prob_sum())
            elbo += elbo_particle / self.num_particles
        return -elbo

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """Computes the ``-ELBO`` and back-propagates the ARSM surrogate loss.

        :returns: an estimate of ``-ELBO``.
        :rtype: float
        """
        step = self._step(model, guide, args, kwargs)
        self.last_num_pseudo_evaluations = step.num_pseudo_evaluations
        torch_backward(step.surrogate_loss, retain_graph=self.retain_graph)
        loss = torch_item(step.loss)
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model: Callable, guide: Callable, *args,
                            **kwargs) -> torch.Tensor:
        """A tensor whose value is ``-ELBO`` and whose gradient is the ARSM estimate.

        This also makes ``ARSM_ELBO()(model, guide)`` an :class:`~pyro.infer.elbo.ELBOModule`.
        """
        step = self._step(model, guide, args, kwargs)
        self.last_num_pseudo_evaluations = step.num_pseudo_evaluations
        # (plain numbers when nothing was scored, e.g. an empty model and guide: a zero loss)
        loss, surrogate_loss = torch.as_tensor(step.loss), torch.as_tensor(step.surrogate_loss)
        warn_if_nan(loss, "loss")
        return loss.detach() + (surrogate_loss - surrogate_loss.detach())

    def _step(self, model, guide, args, kwargs):
        """The loss, surrogate loss, finiteness flags and evaluation count of one step."""
        loss = surrogate_loss = 0.0
        finite, num_evaluations = [], 0
        for particle in self._get_traces(model, guide, args, kwargs):
            elbo, surrogate_elbo, n = self._particle_elbo(particle, args, kwargs)
            loss = loss - elbo / self.num_particles
            surrogate_loss = surrogate_loss - surrogate_elbo / self.num_particles
            finite.extend(particle.finite)
            num_evaluations += n
        return _Step(loss, surrogate_loss, finite, num_evaluations)

    def _particle_elbo(self, particle, args, kwargs):
        """ELBO, surrogate ELBO and pseudo evaluations of one particle: TraceGraph_ELBO's terms
        for everything but the ARSM sites, and ``g . logits`` for each ARSM site, ``g`` its
        estimate."""
        if particle.guide_enumerated:
            elbo, surrogate_elbo = _enum.dice_terms(particle, particle.noise)
        elif particle.components is not None:
            elbo, surrogate_elbo = _enum.enumerated_terms(particle, particle.noise)
        else:
            elbo, surrogate_elbo = _costs.tracegraph_terms(particle)
        num_evaluations = 0
        for name in particle.noise:
            grad, logits, n, model_terms = self._site_grad(particle, name, args, kwargs)
            # (model_terms: with model_grads="all", the model-parameter gradient averaged over
            # the site's evaluations less the real pass's share: zero otherwise)
            surrogate_elbo = surrogate_elbo + (grad.detach() * logits).sum() + model_terms
            num_evaluations += n
        return elbo, surrogate_elbo, num_evaluations

    # --- the estimate of one site --------------------------------------------------------------

    def _site_grad(self, particle, name, args, kwargs):
        """The estimate for site ``name``, its differentiable logits and the evaluations it took,
        in four steps: the real cost, the actions the estimator needs, their costs, the
        gradient."""
        site = particle.guide_trace.nodes[name]
        noise = particle.noise[name]
        kind, base = arsm_kind(site["fn"])
        element_shape = tuple(noise.noise.shape[:-1]) if kind != "bernoulli" else tuple(
            noise.noise.shape)
        logits = site_logits(kind, base, element_shape)
        spec, downstream = _costs.cost_spec(particle, name)
        enumerated = particle.components is not None
        real_cost, cost_shape = _costs.real_cost(particle, spec, site, element_shape,
                                                 _pseudo.cost_of_pass(particle))
        separable = _costs.is_separable(particle, spec, site) and not particle.guide_enumerated \
            and (not enumerated or _enum.separable_under_enumeration(particle, spec, site))
        estimator, num_samples = site_estimator(name, site["infer"], self.estimator,
                                                self.num_rloo_samples)
        self._check_estimator(name, estimator)
        if estimator == "local" and not separable:
            self._warn(("local", name), _checks.not_separable_message(name))
            estimator = "arsm"
        if estimator == "ar":  # the real pass is all AR needs
            return est.estimator_gradient("ar", kind, real_cost.unsqueeze(0), None, noise.noise,
                                          noise.logits), logits, 0, 0.0
        model_grads = self.model_grads == "all" and not enumerated and \
            not particle.guide_enumerated
        pseudo = _pseudo._PseudoPass(particle, spec, kind, cost_shape, downstream, args, kwargs,
                                     check_finite=self._pseudo_checks_finite(),
                                     model_grads=model_grads)
        if separable and (estimator == "local" or (estimator == "arsm" and kind != "bernoulli")):
            # C evaluations give every element's cost at every category
            columns, n = _pseudo.column_costs(self, pseudo, real_cost)
            if estimator == "local":
                local = est.bernoulli_local_grad if kind == "bernoulli" else est.local_grad
                pseudo.rows_taken(actions=_true_action(kind, noise).unsqueeze(0),
                                  weights=_local_weights(kind, noise.logits))
                return local(columns, noise.logits), logits, n, pseudo.correction
            pseudo.rows_taken(actions=est.estimator_actions(
                "arsm", kind, noise.noise, noise.logits)[0])
            return est.arsm_grad_from_columns(columns, noise.noise, noise.logits), logits, n, \
                pseudo.correction
        actions, reference = est.estimator_actions(
            estimator, kind, noise.noise, noise.logits, num_samples=num_samples)
        table, n = _pseudo.action_costs(self, pseudo, actions, real_cost, separable)
        return est.estimator_gradient(estimator, kind, table, actions, noise.noise, noise.logits,
                                      reference), logits, n, pseudo.correction


def _true_action(kind, noise):
    if kind == "bernoulli":
        return est.bernoulli_pair(noise.noise, noise.logits)[0]
    return est.categorical_from_log_pi(noise.noise, noise.logits)


def _local_weights(kind, logits):
    """``q`` per element and category, ``[C, *elements]``: the weights of the exact local
    expectation over a separable site's columns."""
    if kind == "bernoulli":
        p = torch.sigmoid(logits)
        return torch.stack([1.0 - p, p])
    return logits.softmax(-1).movedim(-1, 0)
