"""Exact references and z-tests for the NumPyro estimators.

NumPyro's TraceEnum_ELBO needs funsor, so the exact reference enumerates by hand: the ELBO is
``sum_z q(z) E[log p - log q | z]`` over every joint value ``z`` of the guide's discrete sites,
differentiated with ``jax.grad``. Continuous sites, if any, are sampled with fixed keys; the
reference is then a Monte Carlo mean with its own standard error (exact over ``z``), or, for
Normal sites, integrated by Gauss-Hermite quadrature (:func:`quadrature_gradient`, no Monte
Carlo error).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import ExpandedDistribution, Independent, MaskedDistribution
from numpyro.distributions.discrete import CategoricalLogits, CategoricalProbs
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.primitives import Messenger

Z_MAX = 5.0


def _unmasked(fn):
    """The distribution without its masks (for the enumeration weight q(z))."""
    if isinstance(fn, MaskedDistribution):
        return _unmasked(fn.base_dist)
    if isinstance(fn, Independent):
        return Independent(_unmasked(fn.base_dist), fn.reinterpreted_batch_ndims)
    if isinstance(fn, ExpandedDistribution):
        return _unmasked(fn.base_dist).expand(fn.batch_shape)
    return fn


def _num_values(fn):
    """Number of values of each element: C for a categorical, 2 for a Bernoulli."""
    base = fn
    while hasattr(base, "base_dist"):
        base = base.base_dist
    if isinstance(base, (CategoricalLogits, CategoricalProbs)):
        return base.logits.shape[-1]
    return 2


class _AtNode(Messenger):
    """Puts each Normal guide site named in ``nodes`` at ``loc + scale * node``: the
    reparameterized draw at a quadrature node, so that gradients flow as through a sample."""

    def __init__(self, fn, nodes):
        super().__init__(fn)
        self.nodes = nodes

    def process_message(self, msg):
        if msg["type"] != "sample" or msg["name"] not in self.nodes or msg["value"] is not None:
            return
        base = msg["fn"]
        while hasattr(base, "base_dist"):
            base = base.base_dist
        value = base.loc + base.scale * self.nodes[msg["name"]]
        msg["value"] = jnp.broadcast_to(value, msg["fn"].shape())


def _joint_values(discrete):
    """Every joint value of the discrete sites, one stacked array per site (``[N, *shape]``)."""
    grids = []
    for _, site in discrete:
        shape = jnp.shape(site["value"])
        num = int(np.prod(shape))
        values = range(_num_values(site["fn"]))
        grids.append(np.array(list(itertools.product(values, repeat=num)),
                              dtype=np.int32).reshape((-1,) + shape))
    index = np.indices([len(g) for g in grids]).reshape(len(grids), -1)
    return [jnp.asarray(g[i]) for g, i in zip(grids, index, strict=True)]


def enum_loss(model, guide, params, *args, key=None, nodes=None):
    """``-ELBO`` summed exactly over the guide's discrete sites (continuous sites drawn with
    ``key``, or those named in ``nodes`` put at their quadrature node).

    The model and guide are traced once and ``vmap``-ped over the stacked joint values, so the
    program's size does not grow with their number."""
    key = jax.random.PRNGKey(0) if key is None else key
    guide_key, model_key = jax.random.split(key)
    if nodes:
        guide = _AtNode(guide, nodes)
    proto = trace(seed(substitute(guide, data=params), guide_key)).get_trace(*args)
    discrete = [(n, s) for n, s in proto.items()
                if s["type"] == "sample" and not s.get("is_observed", False)
                and s["fn"].support.is_discrete]
    names = [n for n, _ in discrete]

    def weighted_elbo(values):
        data = dict(zip(names, values, strict=True))
        guide_trace = trace(substitute(seed(substitute(guide, data=params), guide_key),
                                       data=data)).get_trace(*args)
        model_trace = trace(replay(seed(substitute(model, data=params), model_key),
                                   guide_trace)).get_trace(*args)
        log_q_weight = 0.0
        elbo = 0.0
        for tr, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
            for n, site in tr.items():
                if site["type"] != "sample":
                    continue
                log_prob = site["fn"].log_prob(site["value"])
                scale = 1.0 if site["scale"] is None else site["scale"]
                elbo = elbo + sign * jnp.sum(scale * log_prob)
                if tr is guide_trace and n in data:
                    log_q_weight = log_q_weight + jnp.sum(
                        _unmasked(site["fn"]).log_prob(site["value"]))
        return jnp.exp(log_q_weight) * elbo

    if not discrete:
        return -weighted_elbo([])
    return -jnp.sum(jax.vmap(weighted_elbo)(_joint_values(discrete)))


def flatten(tree, names):
    return jnp.concatenate([jnp.ravel(tree[n]) for n in names])


def exact_gradient(model, guide, params, names, *args, num_keys=1, seed_=0):
    """Exact gradient (mean, standard error) of ``-ELBO`` w.r.t. ``params[names]``."""
    grad = jax.grad(lambda p, k: enum_loss(model, guide, p, *args, key=k))
    keys = jax.random.split(jax.random.PRNGKey(seed_ + 12345), num_keys)
    grads = quick_jit(jax.vmap(grad, in_axes=(None, 0)), params, keys)
    draws = jnp.concatenate([grads[n].reshape(num_keys, -1) for n in names], -1)
    if num_keys == 1:
        return draws[0], jnp.zeros_like(draws[0])
    return draws.mean(0), draws.std(0) / np.sqrt(num_keys)


def quick_compile(fn, *args):
    """``jax.jit(fn)`` compiled for ``args`` without XLA's backend optimizations: on CPU,
    compiling a test's program optimized takes several times as long as all its calls."""
    return jax.jit(fn).lower(*args).compile(
        compiler_options={"xla_backend_optimization_level": 0})


def quick_jit(fn, *args):
    """``jax.jit(fn)(*args)`` compiled by :func:`quick_compile` (a program that runs once)."""
    return quick_compile(fn, *args)(*args)


def quadrature_gradient(model, guide, params, names, *args, sites=("z",), num_nodes=40):
    """Exact gradient of ``-ELBO`` w.r.t. ``params[names]`` for a guide whose continuous sites
    are the Normal ``sites``: enumeration over the discrete sites, Gauss-Hermite quadrature
    (``num_nodes`` per site, exact for the polynomial parts) over the Normal ones."""
    x, w = np.polynomial.hermite_e.hermegauss(num_nodes)
    grid = np.array(list(itertools.product(x, repeat=len(sites))), dtype=np.float32)
    weights = np.prod(list(itertools.product(w / w.sum(), repeat=len(sites))), axis=1)

    def loss(p, node):
        return enum_loss(model, guide, p, *args, nodes=dict(zip(sites, node, strict=True)))

    grads = quick_jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)), params, jnp.asarray(grid))
    return np.concatenate([np.tensordot(weights, np.asarray(grads[n], np.float64), 1).ravel()
                           for n in names])


def vmapped_gradient_draws(elbo, model, guide, params, names, num_draws, *args, seed_=0):
    """Like :func:`gradient_draws`, all draws in one ``jit(vmap(grad))`` (one compilation)."""
    grad = jax.grad(lambda p, k: elbo.loss(k, p, model, guide, *args))
    keys = jax.random.split(jax.random.PRNGKey(seed_), num_draws)
    draws = quick_jit(jax.vmap(grad, in_axes=(None, 0)), params, keys)
    return jnp.concatenate([draws[n].reshape(num_draws, -1) for n in names], -1)


def gradient_draws(elbo, model, guide, params, names, num_draws, *args, seed_=0):
    """``num_draws`` gradient estimates ``[num_draws, D]`` of ``elbo.loss`` (compiled once by
    :func:`quick_compile`, called once per key)."""
    keys = jax.random.split(jax.random.PRNGKey(seed_), num_draws)
    grad = quick_compile(jax.grad(lambda p, k: elbo.loss(k, p, model, guide, *args)),
                         params, keys[0])
    return jnp.stack([flatten(grad(params, k), names) for k in keys])


def z_scores(draws, exact, exact_se=None):
    draws = np.asarray(draws, dtype=np.float64)
    exact = np.asarray(exact, dtype=np.float64)
    se = draws.std(0, ddof=1) / np.sqrt(draws.shape[0])
    if exact_se is not None:
        se = np.sqrt(se ** 2 + np.asarray(exact_se, dtype=np.float64) ** 2)
    # float32 round-off floor: some components are deterministic (e.g. DisARM at logit 0)
    floor = 1e-5 * max(np.abs(exact).max(), 1.0)
    return np.abs(draws.mean(0) - exact) / np.sqrt(se ** 2 + floor ** 2), se


def assert_unbiased(draws, exact, exact_se=None, power=0.05, label=""):
    """z-test of the Monte Carlo mean against the exact gradient; the standard error must be
    below ``power * max|exact|`` so that the test can see a bias (returns the worst z)."""
    z, se = z_scores(draws, exact, exact_se)
    scale = np.abs(np.asarray(exact)).max()
    assert se.max() < power * scale, (
        f"{label}: standard error {se.max():.3g} too large to test against |exact| {scale:.3g}")
    worst = float(z.max())
    print(f"\n[{label}] worst z = {worst:.2f} over {z.size} components, {len(draws)} draws")
    assert worst < Z_MAX, (
        f"{label}: biased? worst z {worst:.2f}\nmean  {np.asarray(draws).mean(0)}\n"
        f"exact {np.asarray(exact)}")
    return worst


def check_unbiased(model, guide, params, names, args, particles=200, draws=40, exact_keys=1,
                   exact_params=None, exact_args=None, scale=1.0, power=0.05, label="",
                   **elbo_kwargs):
    """:func:`assert_unbiased` of ``draws`` gradients of ``ARSM_ELBO(num_particles=particles,
    **elbo_kwargs)`` against ``scale`` times the exact gradient (taken at ``exact_params`` and
    ``exact_args`` when given, else at ``params`` and ``args``)."""
    from numpyro_arsm import ARSM_ELBO

    exact, exact_se = exact_gradient(model, guide, exact_params or params, names,
                                     *(exact_args if exact_args is not None else args),
                                     num_keys=exact_keys)
    elbo = ARSM_ELBO(num_particles=particles, **elbo_kwargs)
    samples = gradient_draws(elbo, model, guide, params, names, draws, *args)
    return assert_unbiased(samples, scale * exact, scale * exact_se, power=power, label=label)


def _empty_guide(*args, **kwargs):
    pass


def enumerated_enum_loss(model, guide, params, max_plate_nesting, *args):
    """``-ELBO`` of a model with enumerated sites and a guide of discrete sites only:
    ``sum_z q(z) (log q(z) - log p(x, z))`` over every joint value ``z`` of the guide's sites,
    where ``log p(x, z) = log sum_y p(x, y, z)`` sums the model's enumerated sites out (NumPyro's
    ``TraceEnum_ELBO`` on the model conditioned on ``z``, with an empty guide: no sampled site is
    left, so that is exact). ``vmap``-ped over the joint values (funsor sees one value at a
    time)."""
    from numpyro.handlers import condition
    from numpyro.infer import TraceEnum_ELBO

    proto = trace(seed(substitute(guide, data=params), 0)).get_trace(*args)
    discrete = [(n, s) for n, s in proto.items()
                if s["type"] == "sample" and not s.get("is_observed", False)]
    names = [n for n, _ in discrete]
    enum = TraceEnum_ELBO(max_plate_nesting=max_plate_nesting)

    def weighted(values):
        data = dict(zip(names, values, strict=True))
        guide_trace = trace(substitute(seed(substitute(guide, data=params), 0),
                                       data=data)).get_trace(*args)
        log_q = sum(jnp.sum(s["fn"].log_prob(s["value"])) for n, s in guide_trace.items()
                    if n in data)
        neg_log_p = enum.loss(jax.random.PRNGKey(0), params, condition(model, data),
                              _empty_guide, *args)
        return jnp.exp(log_q) * (log_q + neg_log_p)

    return jnp.sum(jax.vmap(weighted)(_joint_values(discrete)))


def enumerated_brute_force_gradient(model, guide, params, names, max_plate_nesting, *args):
    """The exact gradient of :func:`enumerated_enum_loss` w.r.t. ``params[names]``, and the
    loss."""
    loss, grad = quick_jit(jax.value_and_grad(
        lambda p: enumerated_enum_loss(model, guide, p, max_plate_nesting, *args)), params)
    return flatten(grad, names), loss
