"""``ARSM_ELBO``: the ARSM gradient estimator as a drop-in :class:`numpyro.infer.elbo.ELBO`.

This module is glue: tracing, re-running guide and model at pseudo actions, plate bookkeeping and
the surrogate loss. The estimator arithmetic lives in :mod:`numpyro_arsm.estimators`.

Common random numbers come from the handler order: the guide runs as
``substitute(seed(guide, key), data={site: pseudo_value})`` under the same key at every pseudo
action, so every other site draws the same noise (``seed`` hands out keys before ``substitute``
sets the value). Sites upstream of or independent of the site therefore come out identical to the
real pass, and sites downstream of it are re-sampled from the same noise at the new value.
"""

import hashlib
import inspect
import warnings
from collections import namedtuple
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
from jax import random
from jax.lax import stop_gradient
from numpyro.handlers import seed, substitute
from numpyro.infer.elbo import ELBO, MultiFrameTensor, get_nonreparam_deps
from numpyro.infer.util import get_importance_trace
from numpyro.primitives import Messenger
from numpyro.util import _validate_model, check_model_guide_match

from numpyro_arsm import estimators as est
from numpyro_arsm._sites import (
    arsm_kind,
    element_shape_of,
    elementwise_log_prob,
    site_logits,
)

__all__ = ["ARSM_ELBO"]

# What the sampler learns about one ARSM site of the guide (as in the Pyro package, without its
# RNG state: JAX keys are explicit).
#   kind: "categorical" | "bernoulli"
#   noise: log pi [*elements, C] (categorical) or u [*elements] (Bernoulli)
#   logits: logits (no gradient) broadcast to [*elements, C] or [*elements]
_SiteNoise = namedtuple("_SiteNoise", ["kind", "noise", "logits"])

_MANY_EVALUATIONS = 4096  # warn once about a site that needs more evaluations per step


# ---------------------------------------------------------------------------------------------
# Site inspection
# ---------------------------------------------------------------------------------------------


def _site_key(noise_key, name):
    """The key of the noise of site ``name``: ``noise_key`` folded in with a 64-bit digest of
    the name (stable across processes, unlike ``hash()``). Two sites must never share noise:
    with a 31-bit crc32, "z_24" and "obs_27851_x" did, and drew identical values (a biased
    gradient); a guide of 10^5 sites had about two such pairs. At 64 bits collisions are as
    unlikely as those of the keys themselves."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    for i in (0, 4):
        noise_key = random.fold_in(noise_key, int.from_bytes(digest[i:i + 4], "little"))
    return noise_key


def _raise_if_not_finite(names, finite):
    bad = [n for n, ok in zip(names, finite, strict=True) if not bool(ok)]
    if not bad:
        return
    sites = ", ".join(f"'{n}'" for n in bad)
    raise ValueError(
        f"ARSM_ELBO: guide site{'s' if len(bad) > 1 else ''} {sites} "
        f"{'have' if len(bad) > 1 else 'has'} NaN or infinite logits. ARSM needs finite "
        "logits: check the network or parameters producing them (NaN usually means a "
        "diverged optimizer), and use a large negative finite logit rather than -inf."
    )


# Under jax.sharding an unpartitioned callback runs on one device: when it raises, the other
# devices wait in the next collective until XLA aborts the process (40 s rendezvous timeout).
_PARTITIONED = ({"partitioned": True}
                if "partitioned" in inspect.signature(jax.debug.callback).parameters else {})


def _check_finite(flags):
    """One finiteness check per loss call: ``flags`` maps site names to boolean arrays (any
    shape: particles, pseudo actions) that must all be true. Under tracing this is a single host
    callback, whatever the number of particles and pseudo actions; it is partitioned, so that
    under ``jax.sharding`` every device runs it on the reduced (scalar, replicated) flags and
    raises."""
    if not flags:
        return
    names = sorted(flags)
    finite = [jnp.all(flags[n]) for n in names]
    if any(isinstance(ok, jax.core.Tracer) for ok in finite):
        jax.debug.callback(lambda *ok: _raise_if_not_finite(names, ok), *finite, **_PARTITIONED)
    else:
        _raise_if_not_finite(names, finite)


def _merge_flags(*flag_dicts):
    """Logical AND, per site, of finiteness flags (each reduced to a scalar)."""
    merged = {}
    for flags in flag_dicts:
        for name, ok in flags.items():
            ok = jnp.all(ok)
            merged[name] = ok if name not in merged else merged[name] & ok
    return merged


def _fresh(param_map):
    """``param_map`` with new containers at every level (``numpyro.mutable`` values are updated
    in place, and ``substitute`` copies only the top-level dict): each pass of guide and model,
    real, pseudo or provenance, starts from the state passed in, no update of one pass leaks
    into another (or leaks a vmap tracer), and the state returned is the real pass's."""
    return {k: jax.tree.map(lambda x: x, v) for k, v in param_map.items()}


class _ARSMSampler(Messenger):
    """Samples the guide's categorical / Bernoulli sites from their ARSM augmentation.

    A categorical site gets ``pi ~ Dir(1_C)`` and ``argmin(log pi - logits)``; a Bernoulli site
    gets ``u ~ U(0, 1)`` and ``1[u < sigmoid(logits)]``. The noise comes from ``noise_key``
    folded in with a digest of the site's name (:func:`_site_key`): the same at every pass, so a
    downstream discrete site re-sampled at a pseudo action shares its noise with the real pass,
    and different at every site. Must wrap ``seed`` from outside, so that ``seed`` still hands a
    key to the site (keeping the other sites' keys).

    Sites marked for enumeration (``infer={"enumerate": ...}``, e.g. by ``config_enumerate``)
    are sampled like the others; their names are recorded in ``enumerated`` and the mark is
    dropped from the message, so that replaying the guide trace does not mark the model site.
    With ``check_finite``, ``finite`` maps each site to whether its logits are finite (a traced
    boolean, no host callback here: the ELBO checks all flags once per loss call).
    """

    def __init__(self, fn, noise_key, check_finite=True):
        super().__init__(fn)
        self.noise_key = noise_key
        self.check_finite = check_finite
        self.noise = {}
        self.finite = {}
        self.enumerated = {}

    def process_message(self, msg):
        if msg["type"] != "sample" or msg.get("is_observed"):
            return
        name = msg["name"]
        infer = msg.get("infer") or {}
        if infer.get("enumerate"):
            self.enumerated[name] = infer["enumerate"]
            msg["infer"] = {k: v for k, v in infer.items() if k != "enumerate"}
        if msg["value"] is not None:
            return
        kind, base = arsm_kind(msg["fn"])
        if kind is None:
            return
        element_shape = element_shape_of(kind, msg["fn"])
        logits = stop_gradient(site_logits(kind, base, element_shape))
        if self.check_finite:
            self.finite[name] = jnp.all(jnp.isfinite(logits))
        key = _site_key(self.noise_key, name)
        if kind == "bernoulli":
            noise = est.sample_uniform(key, element_shape, dtype=logits.dtype)
            action = est.bernoulli_pair(noise, logits)[0]
        else:
            noise = est.sample_log_pi(key, element_shape, logits.shape[-1], dtype=logits.dtype)
            action = est.categorical_from_log_pi(noise, logits)
        # NumPyro's value is the action itself: the index (Categorical) or 0/1 (Bernoulli)
        msg["value"] = jnp.asarray(action).astype(jnp.int32)
        self.noise[name] = _SiteNoise(kind, noise, logits)


# ---------------------------------------------------------------------------------------------
# Costs
# ---------------------------------------------------------------------------------------------


def _site_cost(model_trace, guide_trace, name, model_deps, guide_deps, stack, batch_shape,
               cost_shape):
    """The cost of site ``name``: model and guide log-probs that depend on it (scaled, masked),
    ``sum_to`` its plates, and, for a ``.to_event`` site, its own log-probs per event element.

    :returns: ``[*cost_shape]`` (``batch_shape`` plus the site's event dims when per element).
    """
    per_element = len(cost_shape) > len(batch_shape)
    shared = MultiFrameTensor()
    own = 0.0
    for trace, sign, deps in ((model_trace, 1.0, model_deps), (guide_trace, -1.0, guide_deps)):
        for n, site in trace.items():
            if site["type"] != "sample" or name not in deps.get(n, ()):
                continue
            if n == name and per_element:
                own = own + sign * elementwise_log_prob(site)
                continue
            shared.add((site["cond_indep_stack"], sign * site["log_prob"]))
    shared = jnp.broadcast_to(shared.sum_to(stack), batch_shape)
    shared = shared.reshape(batch_shape + (1,) * (len(cost_shape) - len(batch_shape)))
    return jnp.broadcast_to(shared + own, cost_shape)


# ---------------------------------------------------------------------------------------------
# The ELBO
# ---------------------------------------------------------------------------------------------


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
    (a warning for a batch dim without a plate). A guide site marked for enumeration
    (``infer={"enumerate": ...}``, e.g. a guide written for TraceEnum_ELBO with
    ``config_enumerate``) is sampled and gets the same estimator as an unmarked one, with one
    warning per site; enumerating a model site that is absent from the guide is an error.
    :meth:`loss_with_mutable_state` supports ``numpyro.mutable`` sites: each pass of guide and
    model starts from the state passed in, and the state returned is that of the real pass (of
    the first particle when ``num_particles > 1``).

    References

    [1] M. Yin, Y. Yue, M. Zhou, "ARSM: Augment-REINFORCE-Swap-Merge Estimator for Gradient
        Backpropagation Through Categorical Variables", ICML 2019.
    [2] Z. Dong, A. Mnih, G. Tucker, "DisARM: An Antithetic Gradient Estimator for Binary Latent
        Variables", NeurIPS 2020.
    """

    can_infer_discrete = True

    def __init__(self, num_particles: int = 1, vectorize_particles: Union[bool, Callable] = True,
                 estimator: str = "arsm", num_rloo_samples: Optional[int] = None,
                 pseudo_map: str = "vmap", pseudo_batch_size: Optional[int] = None,
                 check_finite: bool = True, warn_score_function: bool = True) -> None:
        if estimator not in est.ESTIMATORS:
            raise ValueError(
                f"ARSM_ELBO: estimator must be one of {est.ESTIMATORS}, got {estimator!r}")
        if pseudo_map not in ("vmap", "map"):
            raise ValueError(f"ARSM_ELBO: pseudo_map must be 'vmap' or 'map', got {pseudo_map!r}")
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles)
        if num_rloo_samples is not None and num_rloo_samples < 2:
            raise ValueError("ARSM_ELBO: num_rloo_samples must be at least 2")
        self.estimator = estimator
        self.num_rloo_samples = num_rloo_samples
        self.pseudo_map = pseudo_map
        self.pseudo_batch_size = pseudo_batch_size
        self.check_finite = check_finite
        self.warn_score_function = warn_score_function
        self._warned_sites = set()
        self._warned_enumerated = set()
        #: pseudo-action evaluations of one particle, counted when the loss was last traced
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

        self.last_num_pseudo_evaluations = 0

        def single_particle(key):
            elbo, surrogate, finite, mutable = self._particle(key, param_map, model, guide,
                                                              args, kwargs)
            return elbo + surrogate - stop_gradient(surrogate), finite, mutable

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
        return {"loss": -value, "mutable_state": mutable or None}

    # --- one particle ------------------------------------------------------------------------

    def _run(self, keys, param_map, model, guide, args, kwargs, substitutions=None):
        model_key, guide_key, noise_key = keys
        seeded_guide = seed(guide, guide_key)
        if substitutions:
            seeded_guide = substitute(seeded_guide, data=substitutions)
        sampler = _ARSMSampler(seeded_guide, noise_key, self.check_finite)
        model_trace, guide_trace = get_importance_trace(
            seed(model, model_key), sampler, args, kwargs, _fresh(param_map))
        return model_trace, guide_trace, sampler

    def _particle(self, rng_key, param_map, model, guide, args, kwargs):
        """``(elbo, surrogate, finiteness flags per site, mutable state)`` of one particle."""
        model_key, guide_key, noise_key, reference_key = random.split(rng_key, 4)
        keys = (model_key, guide_key, noise_key)
        model_trace, guide_trace, sampler = self._run(keys, param_map, model, guide, args,
                                                      kwargs)
        noise = sampler.noise
        self._check_sites(model_trace, guide_trace, noise)
        self._warn_sites(model_trace, guide_trace, sampler)
        latents = {
            n: s["value"] for n, s in guide_trace.items()
            if s["type"] == "sample" and not s.get("is_observed", False)
        }
        model_deps, guide_deps = get_nonreparam_deps(
            model, guide, args, kwargs, _fresh(param_map), latents=latents)

        surrogate = _score_function_surrogate(model_trace, guide_trace, noise, model_deps,
                                              guide_deps)
        flags = [sampler.finite]
        for i, name in enumerate(noise):
            grad, logits, finite = self._site_grad(
                name, keys, random.fold_in(reference_key, i), model_trace, guide_trace, noise,
                model_deps, guide_deps, param_map, model, guide, args, kwargs)
            surrogate = surrogate + jnp.sum(stop_gradient(grad) * logits)
            flags.append(finite)
        mutable = {n: s["value"] for tr in (guide_trace, model_trace) for n, s in tr.items()
                   if s["type"] == "mutable"}
        return _elbo_value(model_trace, guide_trace), surrogate, _merge_flags(*flags), mutable

    def _site_grad(self, name, keys, reference_key, model_trace, guide_trace, noise, model_deps,
                   guide_deps, param_map, model, guide, args, kwargs):
        """``(gradient w.r.t. the site's logits, logits, finiteness flags of its pseudo
        passes)``, in four steps: the real cost, the actions the estimator needs, their costs,
        the gradient."""
        fn = guide_trace[name]["fn"]
        kind, base = arsm_kind(fn)
        site_noise, detached_logits = noise[name].noise, noise[name].logits
        element_shape = element_shape_of(kind, fn)
        logits = site_logits(kind, base, element_shape)
        pseudo = _PseudoPass(self, name, kind, guide_trace[name], element_shape, model_deps,
                             guide_deps, (keys, param_map, model, guide, args, kwargs))
        real_cost = pseudo.cost_of(model_trace, guide_trace)
        estimator = self.estimator
        separable = _is_separable(name, model_trace, guide_trace, model_deps, guide_deps)
        if estimator == "local" and not separable:
            self._warn_once(name, (
                f"ARSM_ELBO: the cost of guide site '{name}' is not element-separable (a term "
                "that depends on it lies outside its plates, or it has .to_event dims), so the "
                "exact local expectation does not apply; it gets ARSM instead."))
            estimator = "arsm"
        if separable and (estimator == "local" or (estimator == "arsm" and kind == "categorical")):
            # C evaluations (the k-th with every element at category k) give every element's
            # cost at every category
            C = 2 if kind == "bernoulli" else site_noise.shape[-1]
            column_costs = pseudo.costs(est.column_actions(C, element_shape))
            if estimator == "local":
                local = est.bernoulli_local_grad if kind == "bernoulli" else est.local_grad
                grad = local(column_costs, detached_logits)
            else:
                grad = est.arsm_grad_from_columns(column_costs, site_noise, detached_logits)
            return grad, logits, _merge_flags(*pseudo.found)
        actions, reference = est.estimator_actions(
            reference_key, estimator, kind, site_noise, detached_logits,
            num_samples=self.num_rloo_samples)
        costs = real_cost[None]  # the true action's, from the real pass
        if actions.shape[0] > 1:
            costs = jnp.concatenate([costs, pseudo.costs(actions[1:])])
        grad = est.estimator_gradient(estimator, kind, costs, actions, site_noise,
                                      detached_logits, reference)
        return grad, logits, _merge_flags(*pseudo.found)

    def _warn_once(self, key, message):
        if key not in self._warned_sites:
            self._warned_sites.add(key)
            warnings.warn(message, stacklevel=7)

    # --- validation --------------------------------------------------------------------------

    def _check_sites(self, model_trace, guide_trace, noise):
        """Errors for a model/guide pair ARSM cannot estimate (raised at trace time)."""
        for name, site in model_trace.items():
            if site["type"] != "sample":
                continue
            guide_site = guide_trace.get(name)
            if site.get("is_observed", False):
                if guide_site is not None and guide_site["type"] == "sample":
                    raise ValueError(
                        f"ARSM_ELBO: site '{name}' is observed in the model but sampled in the "
                        "guide. Remove it from the guide (or do not observe it in the model)."
                    )
                continue
            if guide_site is None:
                if (site.get("infer") or {}).get("enumerate"):
                    raise ValueError(
                        f"ARSM_ELBO: model site '{name}' is enumerated in the model and absent "
                        "from the guide. ARSM needs the discrete latent in the guide: add a guide "
                        f"site numpyro.sample('{name}', dist.Categorical(...)) and drop the "
                        "model-side enumeration, or keep TraceEnum_ELBO for this model."
                    )
                raise ValueError(
                    f"ARSM_ELBO: latent site '{name}' of the model is missing from the guide; it "
                    "would be sampled from the prior and the ELBO would be wrong. Add it to the "
                    "guide."
                )
        # NumPyro's own checks, as TraceGraph_ELBO runs them: a warning for guide sites absent
        # from the model, an error for shapes that disagree, a warning for a missing plate
        check_model_guide_match(model_trace, guide_trace)
        _validate_model(model_trace, plate_warning="strict")

    def _warn_sites(self, model_trace, guide_trace, sampler):
        """One warning per site (per ELBO object) for enumeration-marked guide sites and for
        sites that get the score-function fallback."""
        for name, enum in sampler.enumerated.items():
            if name in self._warned_enumerated:
                continue
            self._warned_enumerated.add(name)
            how = ("ARSM" if name in sampler.noise else "the score-function fallback")
            warnings.warn(
                f"ARSM_ELBO: guide site '{name}' is marked for enumeration (infer={{'enumerate': "
                f"{enum!r}}}, e.g. by config_enumerate); ARSM_ELBO samples it instead and "
                f"estimates its gradient with {how}. To enumerate it, use TraceEnum_ELBO.",
                stacklevel=6,
            )
        if not self.warn_score_function:
            return
        for name, site in guide_trace.items():
            if (site["type"] != "sample" or site.get("is_observed", False)
                    or site["fn"].has_rsample or name in sampler.noise
                    or name in self._warned_sites):
                continue
            self._warned_sites.add(name)
            warnings.warn(
                f"ARSM_ELBO: guide site '{name}' ({type(site['fn']).__name__}) is neither "
                "categorical nor Bernoulli; it gets a score-function gradient with plate "
                "Rao-Blackwellization (unbiased, higher variance). Pass "
                "warn_score_function=False to silence this warning.",
                stacklevel=6,
            )


class _PseudoPass:
    """Evaluates the cost of one ARSM site at pseudo actions (``jax.vmap`` over them, or
    ``jax.lax.map`` with ``pseudo_map="map"``), counting the evaluations and keeping the
    finiteness flags of the passes (returned, checked once per loss)."""

    def __init__(self, elbo, name, kind, site, element_shape, model_deps, guide_deps, run_args):
        self.elbo, self.name, self.kind = elbo, name, kind
        self.model_deps, self.guide_deps = model_deps, guide_deps
        self.run_args = run_args  # (keys, param_map, model, guide, args, kwargs)
        fn = site["fn"]
        self.stack = site["cond_indep_stack"]
        self.batch_shape = tuple(fn.batch_shape)
        self.value_shape = self.batch_shape + tuple(fn.event_shape)
        self.element_shape = element_shape
        self.found = []

    def cost_of(self, model_trace, guide_trace):
        # A .to_event site's own log-probabilities factorize over its event elements: each
        # element is scored by its own share of them (the others' do not depend on it).
        return stop_gradient(_site_cost(model_trace, guide_trace, self.name, self.model_deps,
                                        self.guide_deps, self.stack, self.batch_shape,
                                        self.element_shape))

    def _evaluate(self, action):
        value = jnp.asarray(action.reshape(self.value_shape)).astype(jnp.int32)
        keys, param_map, model, guide, args, kwargs = self.run_args
        model_trace, guide_trace, sampler = self.elbo._run(
            keys, param_map, model, guide, args, kwargs, substitutions={self.name: value})
        return self.cost_of(model_trace, guide_trace), sampler.finite

    def costs(self, actions):
        """The costs at actions ``[U, *elements]``: ``[U, *cost_shape]``."""
        elbo, name = self.elbo, self.name
        elbo.last_num_pseudo_evaluations += actions.shape[0]
        if actions.shape[0] > _MANY_EVALUATIONS:
            elbo._warn_once(("many", name), (
                f"ARSM_ELBO: guide site '{name}' needs {actions.shape[0]} model evaluations "
                "per step (whole-site swaps of a site whose cost is not element-separable). "
                "Bound the memory with pseudo_map='map' and pseudo_batch_size, or use "
                "estimator='ars' (C evaluations) or 'rloo' with a small num_rloo_samples; "
                "estimator='local' needs a separable cost."))
        if elbo.pseudo_map == "map":
            costs, finite = jax.lax.map(self._evaluate, actions,
                                        batch_size=elbo.pseudo_batch_size)
        else:
            costs, finite = jax.vmap(self._evaluate)(actions)
        self.found.append(finite)
        return costs


def _is_separable(name, model_trace, guide_trace, model_deps, guide_deps):
    """Whether the cost of each element of site ``name`` depends on that element alone: no
    event dims, every batch dim a plate, and every log-prob term that depends on the site inside
    all of its plates (the assumption plates already make, and the per-element cost relies on)."""
    site = guide_trace[name]
    model_site = model_trace.get(name)
    if site["fn"].event_shape or (model_site is not None and model_site["fn"].event_shape):
        return False
    plates = {(f.name, f.dim) for f in site["cond_indep_stack"]}
    batch_shape = tuple(site["fn"].batch_shape)
    plate_dims = {dim for _, dim in plates}
    if any(size > 1 and i - len(batch_shape) not in plate_dims
           for i, size in enumerate(batch_shape)):
        return False
    for trace, deps in ((model_trace, model_deps), (guide_trace, guide_deps)):
        for n, s in trace.items():
            if s["type"] == "sample" and name in deps.get(n, ()):
                if not plates <= {(f.name, f.dim) for f in s["cond_indep_stack"]}:
                    return False
    return True


def _elbo_value(model_trace, guide_trace):
    """The single-sample ELBO; the guide log-prob of non-reparameterized sites is detached."""
    elbo = 0.0
    for site in model_trace.values():
        if site["type"] == "sample":
            elbo = elbo + jnp.sum(site["log_prob"])
    for site in guide_trace.values():
        if site["type"] == "sample":
            log_prob = jnp.sum(site["log_prob"])
            if not site["fn"].has_rsample:
                log_prob = stop_gradient(log_prob)
            elbo = elbo - log_prob
    return elbo


def _score_function_surrogate(model_trace, guide_trace, noise, model_deps, guide_deps):
    """Score-function surrogate of the non-reparameterized sites that are neither categorical
    nor Bernoulli, Rao-Blackwellized over plates; the scale enters once, via the cost."""
    surrogate = 0.0
    for name, site in guide_trace.items():
        if (site["type"] != "sample" or site.get("is_observed", False)
                or site["fn"].has_rsample or name in noise):
            continue
        batch_shape = tuple(site["fn"].batch_shape)
        cost = _site_cost(model_trace, guide_trace, name, model_deps, guide_deps,
                          site["cond_indep_stack"], batch_shape, batch_shape)
        log_q = site["fn"].log_prob(site["value"])
        surrogate = surrogate + jnp.sum(log_q * stop_gradient(cost))
    return surrogate
