"""``ARSM_ELBO``: the ARSM gradient estimator as a drop-in :class:`numpyro.infer.elbo.ELBO`.

This module owns the ELBO object (its options and public methods) and the steps of one particle:
the real pass through ``ARSM_ELBO._run`` (the one place guide and model run, for the real and
every pseudo pass), the site checks, the dependencies, and per ARSM site the real cost, the
estimator's actions, their costs and the gradient, put on the logits by the surrogate loss. The
pieces live in the other modules, in the order the data flows through them: ``_sampler``
(noise and sampling), ``_checks`` (errors, warnings and their texts), ``_dependencies``
(provenance), ``_kl`` (the closed-form KL of ``analytic_kl``), ``_costs`` (cost assembly),
``_pseudo`` (pseudo passes); the estimator arithmetic is in :mod:`numpyro_arsm.estimators`.
"""

import warnings
from functools import partial
from typing import Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
from jax import random
from jax.lax import stop_gradient
from numpyro.handlers import seed, substitute
from numpyro.infer.elbo import ELBO
from numpyro.infer.util import get_importance_trace

from numpyro_arsm import _enum, _guide_enum
from numpyro_arsm import estimators as est
from numpyro_arsm._checks import (
    _MANY_EVALUATIONS,
    _check_finite,
    _check_options,
    _check_sites,
    _merge_flags,
    _site_warnings,
    many_evaluations_message,
    not_separable_message,
)
from numpyro_arsm._costs import (
    _cost_spec,
    _elbo_value,
    _is_separable,
    _model_part,
    _score_function_surrogate,
)
from numpyro_arsm._dependencies import _Dependencies, _dependencies
from numpyro_arsm._kl import analytic_kl_sites
from numpyro_arsm._pseudo import _PseudoCosts, _PseudoPass
from numpyro_arsm._sampler import _ARSMSampler, _fresh, _Particle, _SiteNoise
from numpyro_arsm._sites import arsm_kind, element_shape_of, site_logits
from numpyro_arsm.config import site_estimator

__all__ = ["ARSM_ELBO"]


class _RealPass(NamedTuple):
    """One particle's real pass, as the gradient of each of its ARSM sites reads it."""

    model_trace: dict
    guide_trace: dict
    noise: dict  # ARSM site -> _SiteNoise
    deps: _Dependencies
    run: Callable  # the runner of its passes (ARSM_ELBO._run, enumerating where it must)
    enumerated: str  # "" (none), "model" (the model sums marked sites out) or "guide" (both)
    # model_grads="all" (and no enumeration): the particle with its guide-only parameters under
    # stop_gradient, for the pseudo passes; else None
    model_particle: Optional[_Particle] = None
    # whether a guide value of the real pass may carry a gradient (a continuous site): then the
    # model's part of the true action's cost is re-evaluated (guide held constant) with the
    # pseudo passes, not read off the real pass
    values_differentiable: bool = False


class _Site(NamedTuple):
    """One ARSM site of a particle, as the steps of its gradient see it."""

    name: str
    kind: str  # "categorical" | "bernoulli"
    estimator: str  # the estimator it gets ("arsm" where "local" does not apply)
    num_samples: Optional[int]  # RLOO's samples (None: the default)
    noise: _SiteNoise
    element_shape: tuple
    pseudo: _PseudoPass


class _SiteGrad(NamedTuple):
    """The ARSM term of one site: ``grad . logits`` enters the surrogate."""

    grad: jax.Array  # the estimate w.r.t. the logits (no gradient)
    logits: jax.Array  # the site's differentiable logits, [*elements, C] or [*elements]
    finite: dict  # finiteness flags of its pseudo passes, per guide site
    num_evaluations: int  # its pseudo actions evaluated (static)
    # model_grads="all": mean over the estimator's actions of the model's part of the cost,
    # minus the true action's (a scalar, its gradient to the model's parameters only)
    model_term: Union[float, jax.Array] = 0.0


class _ParticleResult(NamedTuple):
    """What one particle gives the loss."""

    elbo: jax.Array
    surrogate: jax.Array
    finite: dict  # finiteness flags per guide site, real and pseudo passes
    mutable: dict  # numpyro.mutable values after the real pass
    num_pseudo_evaluations: int  # static


def _model_grad_particle(particle, model_trace, guide_trace):
    """For model_grads="all": the particle with its guide-only parameters (params of the guide
    that the model does not read) under ``stop_gradient``, so that a pass's model log-probs
    carry the gradient to the model's parameters only; and whether a guide value of the real
    pass may carry a gradient (a continuous sample site)."""
    model_params = {n for n, s in model_trace.items() if s["type"] == "param"}
    guide_only = {n for n, s in guide_trace.items()
                  if s["type"] == "param" and n not in model_params}
    param_map = {k: jax.tree.map(stop_gradient, v) if k in guide_only else v
                 for k, v in particle.param_map.items()}
    values_differentiable = any(
        s["type"] == "sample" and not s.get("is_observed", False)
        and jnp.issubdtype(jnp.result_type(s["value"]), jnp.inexact)
        for s in guide_trace.values())
    return particle._replace(param_map=param_map), values_differentiable


class ARSM_ELBO(ELBO):
    r"""ELBO whose gradient uses the ARSM estimator for the guide's discrete sites.

    A drop-in loss for :class:`numpyro.infer.SVI`, traceable under ``jit``::

        svi = numpyro.infer.SVI(model, guide, optax.adam(1e-3), loss=ARSM_ELBO())
        result = svi.run(rng_key, 2000, data)

    Each sample site of the guide gets the estimator its distribution allows:

    * ``Categorical`` (logits or probs, inside plates, with ``.to_event``, ``.mask``,
      ``.expand``): **ARSM** [1]. The same swap ``(m, j)`` applies to all elements of the site, so
      the ``C(C-1)/2`` pseudo actions besides the true one are evaluated with one ``vmap`` of guide
      and model (static shapes; ``pseudo_map="map"`` evaluates them with ``lax.map`` in chunks
      of ``pseudo_batch_size`` to save memory).
    * ``Bernoulli``: **DisARM** [2] (``estimator="ar"``: AR, one evaluation).
    * other non-reparameterizable sites: a score-function estimator with plate
      Rao-Blackwellization (written here; NumPyro 0.22's TraceGraph_ELBO counts the scale of
      ``handlers.scale`` / subsampled plates twice in it).
    * reparameterizable sites: pathwise.

    The cost of a site holds the model and guide log-probabilities that depend on it
    (``get_nonreparam_deps`` provenance), with scale and mask, reduced to the site's plates; a
    ``.to_event`` site scores each event element with its own log-probabilities plus the shared
    rest. At a pseudo action the guide is re-run with the same per-site keys: upstream and
    independent sites are reproduced exactly, downstream sites are re-sampled from the same noise
    (common random numbers), subsample indices are the same.

    The value of :meth:`loss` is the single-sample ``-ELBO`` (averaged over particles); its
    gradient is the ARSM estimate (a ``stop_gradient`` surrogate).

    :param int num_particles: number of independent particles averaged.
    :param int max_plate_nesting: the plates' nesting, as NumPyro's ``TraceEnum_ELBO`` takes it:
        a model's sites marked for enumeration get dims left of it. Guessed once from the real
        pass (the most batch dims of a log-prob, as ``TraceEnum_ELBO`` guesses it) when not
        given; only models with marked sites use it.
    :param vectorize_particles: ``True`` (vmap), ``False`` (lax.map) or a callable, as in NumPyro.
    :param str estimator: ``"arsm"`` (default, ``C(C-1)/2 + 1`` evaluations), ``"ars"`` (one
        random reference category, ``C`` evaluations), ``"ar"`` (1 evaluation) or ``"rloo"``
        (REINFORCE with leave-one-out baselines over ``num_rloo_samples`` independent samples of
        the site, evaluated with the same ``vmap``: the equal-budget competitor) or ``"local"``
        (the exact local expectation from the per-element table, for element-separable sites;
        others get ARSM, with a warning). Bernoulli sites: DisARM, AR for ``"ar"``, RLOO for
        ``"rloo"``. An element-separable site (no ``.to_event`` dims, every dependent log-prob
        term inside all of its plates) is evaluated at its ``C`` columns, the ``k``-th with
        every element at category ``k``, and ARSM reads every swap's cost off that table.
    :param int num_rloo_samples: samples per site for ``"rloo"`` (default: the ARSM budget,
        ``C(C-1)/2 + 1`` for a categorical site, 2 for a Bernoulli site).
    :param bool analytic_kl: ``True`` (default): for an ARSM site whose model site has a
        closed-form ``KL(q || p)`` (a categorical or Bernoulli prior against the guide's,
        ``.to_event`` / ``.expand`` / ``.mask`` wrappers allowed, computed here since NumPyro
        0.22 registers none for logits; any other pair through a registered
        ``numpyro.distributions.kl.kl_divergence``), the site's ``log p(z) - log q(z)`` is
        replaced by ``-KL`` (scaled and masked as the log-probs), as ``TraceMeanField_ELBO``
        does: in the ELBO, with its pathwise gradient to the guide's and the prior's
        parameters, so the loss is still a ``-ELBO`` estimate; not at all in the site's own
        cost (the KL does not depend on its value); and in the cost of every other site that
        holds those terms (one the site's guide or prior depends on), as the KL computed in
        that pass (at a pseudo action, at the pseudo value). A site keeps its sampled terms
        when there is no closed form, when model and guide scale or mask it differently (as
        far as trace time can tell), when a guide site downstream of it (whose value depends on
        it) is sampled before it in the model (its prior could then depend on its own value),
        or in a program with enumerated sites. ``False``: the sampled terms everywhere.
    :param str model_grads: ``"real"`` (default): the model's parameters get the gradient of
        the real pass. ``"all"``: each ARSM site's model part of the cost (the log-probs of the
        model sites that depend on it, with ``-KL`` for the closed-form sites) is averaged
        over every action the estimator evaluates (ARSM / ARS swaps, RLOO samples, DisARM's
        antithetic pair; ``"local"``: the exact expectation, each element weighted by its
        ``q``), each distributed as the real one: the surrogate gets ``mean_r(c_r) - c_0``,
        whose gradient (to the model's parameters only: the guide's parameters are held
        constant in it) has mean zero, so the gradient stays unbiased and the guide's
        gradient is unchanged. A parameter read by both model and guide counts as the
        model's. When the real pass has continuous guide sites, the true action is evaluated
        once more with the pseudo actions (the guide held constant). No effect on
        score-function sites or in programs with enumerated sites.
    :param str pseudo_map: ``"vmap"`` (default) or ``"map"`` (``lax.map``, less memory).
    :param int pseudo_batch_size: chunk size for ``pseudo_map="map"``.
    :param bool check_finite: raise (also under jit) when a site's logits are NaN or infinite,
        naming the sites; one check per loss call (a single host callback under jit), covering
        the real pass and the pseudo passes of every particle.
    :param bool warn_score_function: warn once per site when a guide site gets the
        score-function fallback (neither categorical nor Bernoulli); ``False`` silences it.

    Like TraceGraph_ELBO, each trace of the real pass (once per compilation under ``jit``) runs
    NumPyro's ``check_model_guide_match`` (a warning for guide sites absent from the model, an
    error when model and guide shapes disagree) and ``_validate_model(plate_warning="strict")``
    (a warning for a batch dim without a plate). Guide sites marked
    ``infer={"enumerate": "parallel"}`` (e.g. a guide written for TraceEnum_ELBO with
    ``config_enumerate``) are summed out with their guide probabilities, as TraceEnum_ELBO sums
    them (its own expectation, the sampled sites' DiCE terms taken out); each sampled site,
    upstream of them or downstream (its batch shape then holds their enumeration dims: one
    estimate per value), gets the ELBO's estimator with the pass's whole enumerated ELBO as its
    cost at each pseudo action. Any other mark is an error naming the site.

    **Enumeration.** Model sites marked ``infer={"enumerate": "parallel"}`` and absent from the
    guide are summed out exactly, as NumPyro's ``TraceEnum_ELBO`` sums them (with funsor:
    ``pip install ppl-arsm[enum]``; enumerated dims left of ``max_plate_nesting``, ``markov``
    where it applies). The cost of a sampled site holds every contracted component (factors
    sharing enumerated sites, log-sum-exp over them, product over inner plates) that depends
    on it, whole: a global enumerated site over a plate of sampled ones is a cost shared by
    all of its elements; ``estimator="local"`` and the column path apply only when every such
    component lies inside the site's plates. Pseudo actions are mapped over whole passes, each
    with its enumeration inside. ``"sequential"`` marks and score-function guide sites beside
    enumeration are errors.
    :meth:`loss_with_mutable_state` supports ``numpyro.mutable`` sites: each pass of guide and
    model starts from the state passed in, and the state returned is that of the real pass (of
    the first particle when ``num_particles > 1``).

    After each loss computation, ``last_num_pseudo_evaluations`` is the number of guide+model
    evaluations at pseudo actions that it made, summed over sites and particles (a batched pass
    over ``R`` actions counts ``R``): ``num_particles`` times the pseudo rows of one particle,
    a static count. It is set when the loss is computed; under ``jit``, when it is traced, so it
    is then the count of every call of that compiled program.

    References

    [1] M. Yin, Y. Yue, M. Zhou, "ARSM: Augment-REINFORCE-Swap-Merge Estimator for Gradient
        Backpropagation Through Categorical Variables", ICML 2019.
    [2] Z. Dong, A. Mnih, G. Tucker, "DisARM: An Antithetic Gradient Estimator for Binary Latent
        Variables", NeurIPS 2020.
    """


    can_infer_discrete = True

    def __init__(self, num_particles: int = 1, max_plate_nesting: float = float("inf"),
                 vectorize_particles: Union[bool, Callable] = True,
                 estimator: str = "arsm", num_rloo_samples: Optional[int] = None,
                 analytic_kl: bool = True, model_grads: str = "real",
                 pseudo_map: str = "vmap", pseudo_batch_size: Optional[int] = None,
                 check_finite: bool = True, warn_score_function: bool = True) -> None:
        _check_options(est.ESTIMATORS, estimator, pseudo_map, num_rloo_samples, analytic_kl,
                       model_grads)
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles)
        self.max_plate_nesting = max_plate_nesting
        self.estimator = estimator
        self.num_rloo_samples = num_rloo_samples
        self.analytic_kl = bool(analytic_kl)
        self.model_grads = model_grads
        self.pseudo_map = pseudo_map
        self.pseudo_batch_size = pseudo_batch_size
        self.check_finite = check_finite
        self.warn_score_function = warn_score_function
        self._warned = set()  # (what, site) of the warnings given, one each per ELBO object
        #: guide+model evaluations at pseudo actions in the last loss computation, summed over
        #: sites and particles (see the class docstring)
        self.last_num_pseudo_evaluations = 0

    def loss(self, rng_key: jax.Array, param_map: dict, model: Callable, guide: Callable, *args,
             **kwargs) -> jax.Array:
        """``-ELBO`` whose gradient is the ARSM estimate.

        :param jax.random.key rng_key: random key.
        :param dict param_map: current (constrained) parameter values.
        :param model: NumPyro model.
        :param guide: NumPyro guide.
        """
        return self.loss_with_mutable_state(rng_key, param_map, model, guide, *args,
                                            **kwargs)["loss"]

    def loss_with_mutable_state(self, rng_key: jax.Array, param_map: dict, model: Callable,
                                guide: Callable, *args, **kwargs) -> dict:
        """Like :meth:`loss`, and the values of the ``numpyro.mutable`` sites after the real
        pass: ``{"loss": ..., "mutable_state": ...}`` (``None`` without mutable sites), as
        :class:`numpyro.infer.SVI` expects."""
        # the static count of one particle's pseudo evaluations, recorded each time a particle
        # is traced (a Python int cannot leave vmap / lax.map as a return value)
        counts = []

        def single_particle(key):
            result = self._particle(key, param_map, model, guide, args, kwargs)
            counts.append(result.num_pseudo_evaluations)
            value = result.elbo + result.surrogate - stop_gradient(result.surrogate)
            return value, result.finite, result.mutable

        if self.num_particles == 1:
            value, finite, mutable = single_particle(rng_key)
        else:
            keys = random.split(rng_key, self.num_particles)
            values, finite, mutable = self.vectorize_particles_fn(single_particle, keys)
            value = jnp.mean(values)
            # one state, not one per particle: that of the first particle
            mutable = jax.tree.map(lambda x: x[0], mutable)
        if self.check_finite:
            _check_finite(finite)  # once per loss call, outside the particle and pseudo maps
        self.last_num_pseudo_evaluations = self.num_particles * counts[-1]
        return {"loss": -value, "mutable_state": mutable or None}

    def _warn_once(self, key, message, stacklevel):
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=stacklevel + 1)

    # --- one particle ------------------------------------------------------------------------

    def _run(self, keys, param_map, model, guide, args, kwargs, substitutions=None,
             plate_nesting=None, guide_deps=None):
        """Guide and model, traced: ``(model_trace, guide_trace, sampler)``. The one place they
        run, for the real pass and every pseudo pass (``substitutions``: the pseudo value). With
        ``plate_nesting``, the model's marked sites are enumerated left of that many plates;
        with ``guide_deps`` (the particle's dependencies) the guide's marked sites too."""
        model_key, guide_key, noise_key = keys
        seeded_guide = seed(guide, guide_key)
        if substitutions:
            seeded_guide = substitute(seeded_guide, data=substitutions)
        sampler = _ARSMSampler(seeded_guide, noise_key, self.check_finite,
                               enumerate_guide=guide_deps is not None)
        if guide_deps is not None:
            model_trace, guide_trace = _guide_enum.guide_enumerated_trace(
                seed(model, model_key), sampler, args, kwargs, _fresh(param_map), plate_nesting,
                guide_deps)
            return model_trace, guide_trace, sampler
        if plate_nesting is not None:
            with _enum.enumerating(plate_nesting):
                model_trace, guide_trace = _enum.enumerated_importance_trace(
                    seed(model, model_key), sampler, args, kwargs, _fresh(param_map))
            return model_trace, guide_trace, sampler
        model_trace, guide_trace = get_importance_trace(
            seed(model, model_key), sampler, args, kwargs, _fresh(param_map))
        return model_trace, guide_trace, sampler

    def _plate_nesting(self, model_trace, guide_trace):
        """``max_plate_nesting``, guessed once from the real pass (as TraceEnum_ELBO guesses
        it: the most batch dims of a log-prob) when it was not given."""
        if self.max_plate_nesting == float("inf"):
            self.max_plate_nesting = max(
                (jnp.ndim(s["log_prob"]) for tr in (model_trace, guide_trace)
                 for s in tr.values() if s["type"] == "sample"), default=0)
        return int(self.max_plate_nesting)

    def _particle(self, rng_key, param_map, model, guide, args, kwargs):
        """The real pass, its checks and the ARSM term of every site: a ``_ParticleResult``."""
        model_key, guide_key, noise_key, reference_key = random.split(rng_key, 4)
        particle = _Particle((model_key, guide_key, noise_key), param_map, model, guide, args,
                             kwargs)
        model_trace, guide_trace, sampler = self._run(*particle)
        marked = _enum.marked_sites(model_trace, guide_trace)
        _check_sites(model_trace, guide_trace, marked)
        for key, message in _site_warnings(guide_trace, sampler, self.warn_score_function):
            self._warn_once(key, message, stacklevel=5)
        guide_marked = _guide_enum.marked_guide_sites(sampler)
        deps = _dependencies(particle, guide_trace, model_trace if guide_marked else None)
        run, mode = self._run, ""
        if guide_marked:  # again, every marked site summed out
            run = partial(self._run, plate_nesting=self._plate_nesting(model_trace, guide_trace),
                          guide_deps=deps)
            model_trace, guide_trace, sampler = run(*particle)
            mode = "guide"
        elif marked:  # the same pass again, the marked sites summed out
            run = partial(self._run, plate_nesting=self._plate_nesting(model_trace, guide_trace))
            model_trace, guide_trace, sampler = run(*particle)
            mode = "model"
        model_particle, values_differentiable = None, False
        if not mode:
            if self.analytic_kl:
                deps = deps._replace(kl=analytic_kl_sites(model_trace, guide_trace,
                                                          sampler.noise, deps))
            if self.model_grads == "all":
                model_particle, values_differentiable = _model_grad_particle(
                    particle, model_trace, guide_trace)
        real = _RealPass(model_trace, guide_trace, sampler.noise, deps, run, mode,
                         model_particle, values_differentiable)

        if mode == "guide":
            elbo = _guide_enum.dice_elbo(model_trace, guide_trace, deps, real.noise)
            surrogate = 0.0
        elif real.enumerated:
            elbo = _enum.enumerated_elbo(model_trace, guide_trace, real.noise)
            surrogate = 0.0
        else:
            elbo = _elbo_value(model_trace, guide_trace, deps.kl)
            surrogate = _score_function_surrogate(model_trace, guide_trace, real.noise,
                                                  real.deps)
        flags, num_pseudo_evaluations = [sampler.finite], 0
        for i, name in enumerate(real.noise):
            site_grad = self._site_grad(particle, real, name, random.fold_in(reference_key, i))
            surrogate = (surrogate + jnp.sum(stop_gradient(site_grad.grad) * site_grad.logits)
                         + site_grad.model_term)
            flags.append(site_grad.finite)
            num_pseudo_evaluations += site_grad.num_evaluations
        mutable = {n: s["value"] for tr in (guide_trace, model_trace) for n, s in tr.items()
                   if s["type"] == "mutable"}
        return _ParticleResult(elbo, surrogate,
                               _merge_flags(*flags), mutable, num_pseudo_evaluations)

    # --- the ARSM term of one site -----------------------------------------------------------

    def _site_grad(self, particle, real, name, reference_key):
        """The :class:`_SiteGrad` of site ``name``, in four steps: the real cost, the actions the
        estimator needs, their costs, the gradient."""
        fn = real.guide_trace[name]["fn"]
        kind, base = arsm_kind(fn)
        element_shape = element_shape_of(kind, fn)
        logits = site_logits(kind, base, element_shape)
        spec = _cost_spec(name, real.guide_trace[name], element_shape, real.deps)
        estimator, num_samples = site_estimator(name, real.guide_trace[name]["infer"],
                                                self.estimator, self.num_rloo_samples)
        separable = real.enumerated != "guide" and _is_separable(
            real.model_trace, real.guide_trace, spec) and (
            not real.enumerated
            or _enum.separable_under_enumeration(real.model_trace, real.guide_trace, spec))
        if estimator == "local" and not separable:
            self._warn_once(("local", name), not_separable_message(name), stacklevel=6)
            estimator = "arsm"
        columns = separable and (estimator == "local"
                                 or (estimator == "arsm" and kind == "categorical"))
        model_part, pass_particle = "", particle
        if real.model_particle is not None:  # model_grads="all"
            model_part, pass_particle = ("element" if columns else "total"), real.model_particle
        pseudo = _PseudoPass(real.run, pass_particle, spec,
                             spec.batch_shape + tuple(fn.event_shape), self.pseudo_map,
                             self.pseudo_batch_size, real.enumerated, model_part)
        real_cost = pseudo.cost_of(real.model_trace, real.guide_trace)
        site = _Site(name, kind, estimator, num_samples, real.noise[name], element_shape, pseudo)
        if columns:
            grad, evaluated, model_term = self._column_grad(site)
        else:
            real_part = None
            if model_part and not real.values_differentiable:
                real_part = _model_part(real.model_trace, real.guide_trace, spec)
            grad, evaluated, model_term = self._action_grad(site, real_cost, reference_key,
                                                            real_part)
        if evaluated is None:  # the real pass was all the estimator needed
            return _SiteGrad(grad, logits, _merge_flags(), 0, model_term)
        return _SiteGrad(grad, logits, _merge_flags(evaluated.finite), evaluated.num_evaluations,
                         model_term)

    def _column_grad(self, site):
        """``(gradient, _PseudoCosts, model term)`` of an element-separable site from its ``C``
        columns (the ``k``-th with every element at category ``k``): every element's cost at
        every category."""
        C = 2 if site.kind == "bernoulli" else site.noise.noise.shape[-1]
        evaluated = self._pseudo_costs(site, est.column_actions(C, site.element_shape))
        noise, logits = site.noise.noise, site.noise.logits
        if site.estimator == "local":
            local = est.bernoulli_local_grad if site.kind == "bernoulli" else est.local_grad
            grad = local(evaluated.costs, logits)
        else:
            grad = est.arsm_grad_from_columns(evaluated.costs, noise, logits)
        model_term = 0.0
        if evaluated.model_parts is not None:  # model_grads="all": the rows off the table
            table = evaluated.model_parts  # [C, *elements], with the model's gradient
            if site.kind == "bernoulli":
                true_action = est.bernoulli_pair(noise, logits)[0].astype(jnp.int32)
                q = jax.nn.sigmoid(logits)
                q = jnp.stack([1.0 - q, q], -1)
            else:
                true_action = est.categorical_from_log_pi(noise, logits).astype(jnp.int32)
                q = jax.nn.softmax(logits, -1)
            real_part = jnp.sum(est.costs_from_columns(table, true_action[None]))
            if site.estimator == "local":  # the exact expectation over each element
                mean_part = jnp.sum(q * jnp.moveaxis(table, 0, -1))
            else:  # the mean over the swap rows
                mean_part = jnp.sum(est.costs_from_columns(
                    table, est.pseudo_actions(noise, logits))) / est.num_swap_rows(C)
            model_term = mean_part - real_part
        return grad, evaluated, model_term

    def _action_grad(self, site, real_cost, reference_key, real_part=None):
        """``(gradient, _PseudoCosts or None, model term)`` from the actions of
        ``estimator_actions`` (the true action's cost, row 0, is the real pass's; with
        model_grads="all", its model part too, ``real_part``, unless that is ``None``: then
        row 0 is evaluated with the others)."""
        actions, reference = est.estimator_actions(
            reference_key, site.estimator, site.kind, site.noise.noise, site.noise.logits,
            num_samples=site.num_samples)
        costs, evaluated, model_term = real_cost[None], None, 0.0
        if actions.shape[0] > 1:
            with_real_row = bool(site.pseudo.model_part) and real_part is None
            evaluated = self._pseudo_costs(site, actions if with_real_row else actions[1:])
            pseudo_costs = evaluated.costs[1:] if with_real_row else evaluated.costs
            costs = jnp.concatenate([costs, pseudo_costs])
            if evaluated.model_parts is not None:  # model_grads="all"
                parts = evaluated.model_parts
                if not with_real_row:
                    parts = jnp.concatenate([jnp.reshape(real_part, (1,)), parts])
                model_term = jnp.mean(parts) - parts[0]
        grad = est.estimator_gradient(site.estimator, site.kind, costs, actions, site.noise.noise,
                                      site.noise.logits, reference)
        return grad, evaluated, model_term

    def _pseudo_costs(self, site, actions) -> _PseudoCosts:
        """The site's pseudo passes at ``actions``, with one warning (per site) when they are
        many."""
        if actions.shape[0] > _MANY_EVALUATIONS:
            self._warn_once(("many", site.name),
                            many_evaluations_message(site.name, actions.shape[0]), stacklevel=8)
        return site.pseudo.costs(actions)
