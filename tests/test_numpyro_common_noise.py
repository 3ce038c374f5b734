"""Common random numbers in NumPyro's pseudo passes.

A pseudo pass re-runs guide and model with one ARSM site set to a pseudo action. Every other
site must see the random numbers it saw in the real pass, whatever the order and kind of the
sites: then a pseudo pass at the site's *true* action reproduces the real pass exactly, and a
downstream site is re-sampled from the same noise at the new value. In Pyro a reused site drew
nothing from the RNG stream, which shifted the later sites' noise (a biased gradient, z = 13);
NumPyro's ``seed`` likewise hands out keys only to sites whose value is still ``None``, so the
order of handlers decides. These tests pin the property down for guides whose sites come in any
order, then check the gradients of the chain structures against exact ones.
"""

import itertools

import pytest

jax = pytest.importorskip("jax")
numpyro = pytest.importorskip("numpyro")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from jax import random  # noqa: E402
from numpyro.infer.elbo import get_nonreparam_deps  # noqa: E402
from numpyro_exact import (  # noqa: E402
    assert_unbiased,
    quadrature_gradient,
    quick_jit,
    vmapped_gradient_draws,
)

from numpyro_arsm import ARSM_ELBO  # noqa: E402
from numpyro_arsm._costs import _cost_spec  # noqa: E402
from numpyro_arsm._dependencies import _Dependencies  # noqa: E402
from numpyro_arsm._pseudo import _PseudoPass  # noqa: E402
from numpyro_arsm._sampler import _Particle  # noqa: E402
from numpyro_arsm._sites import arsm_kind, element_shape_of  # noqa: E402

# ---------------------------------------------------------------------------------------------
# A guide whose sites come in any order, each downstream of all earlier ones
# ---------------------------------------------------------------------------------------------


class NoRsampleNormal(dist.Normal):
    """A continuous site without a reparameterized sampler (score-function gradient)."""

    reparametrized_params = []


N = 2  # plate size

# site name -> how it is sampled, given h (a function of every earlier site)
SITES = {
    "b": lambda h: dist.Bernoulli(logits=0.4 + h),
    "c": lambda h: dist.Categorical(logits=jnp.stack([0.2 + h, -h, 0.1 * h], -1)),
    "z": lambda h: dist.Normal(0.3 + 0.5 * h, 0.8),
    "n": lambda h: dist.Poisson(jnp.exp(0.2 * jnp.tanh(h))),
    "g": lambda h: NoRsampleNormal(-0.2 + 0.5 * h, 0.7),
    "w": lambda h: dist.Normal(0.1, 1.0),  # independent of every earlier site
}
ORDER_SETS = [("b", "c", "z"), ("c", "b", "z"), ("z", "b", "c"), ("b", "z", "c"),
              ("b", "w", "c"), ("c", "n", "b", "z"), ("b", "g", "c"), ("n", "c", "w", "g", "b")]


def any_order_guide(order):
    h = jnp.zeros(N)
    with numpyro.plate("data", N):
        for name in order:
            x = numpyro.sample(name, SITES[name](h))
            if name != "w":
                h = h + 0.6 * jnp.tanh(x)


def any_order_model(order):
    total = jnp.zeros(N)
    with numpyro.plate("data", N):
        for name in order:
            prior = (dist.Poisson(1.0) if name == "n"
                     else dist.Categorical(logits=jnp.zeros(3)) if name == "c"
                     else dist.Bernoulli(0.5) if name == "b" else dist.Normal(0.0, 1.0))
            total = total + numpyro.sample(name, prior)
        numpyro.sample("y", dist.Normal(total, 1.0), obs=jnp.array([0.5, -1.0]))


def _values(trace):
    return {n: s["value"] for n, s in trace.items() if s["type"] == "sample"}


def _true_action_check(elbo, order, key):
    """The real pass's values and costs, and those of each ARSM site's pseudo pass at its true
    action: ``(real, {site: (values, cost, real cost)})``."""
    params, args, kwargs = {}, (order,), {}
    model, guide = any_order_model, any_order_guide
    particle = _Particle(tuple(random.split(key, 3)), params, model, guide, args, kwargs)
    model_trace, guide_trace, sampler = elbo._run(*particle)
    real = {**_values(guide_trace), **_values(model_trace)}
    deps = _Dependencies(*get_nonreparam_deps(model, guide, args, kwargs, params,
                                              latents={n: real[n] for n in order}))
    again = {}
    for name in sampler.noise:
        site = guide_trace[name]
        kind, _ = arsm_kind(site["fn"])
        m_tr, g_tr, _ = elbo._run(*particle, substitutions={name: site["value"]})
        spec = _cost_spec(name, site, element_shape_of(kind, site["fn"]), deps)
        pseudo = _PseudoPass(elbo._run, particle, spec, jnp.shape(site["value"]),
                             elbo.pseudo_map, elbo.pseudo_batch_size)
        cost = pseudo.costs(jnp.asarray(site["value"])[None]).costs[0]
        again[name] = ({**_values(g_tr), **_values(m_tr)}, cost,
                       pseudo.cost_of(model_trace, guide_trace))
    return real, again


def _order_cases():
    """Every order with vmap and the longest with lax.map; the order that holds every kind of
    site (an upstream categorical, a downstream Normal, Gamma and Bernoulli) is quick on both,
    the rest run in the full stage."""
    quick = {ORDER_SETS[-1]}
    for order, pseudo_map in [(o, "vmap") for o in ORDER_SETS] + [(ORDER_SETS[-1], "map")]:
        yield pytest.param(order, pseudo_map, id=f"{''.join(order)}-{pseudo_map}",
                           marks=() if order in quick else pytest.mark.slow)


@pytest.mark.parametrize("order, pseudo_map", list(_order_cases()))
def test_pseudo_pass_at_the_true_action_reproduces_the_real_pass(order, pseudo_map):
    # on 8 keys at once: every site's value (guide and model) in a pseudo pass at the true
    # action is the real pass's, and the pseudo cost (vmap or lax.map) is the real cost
    elbo = ARSM_ELBO(pseudo_map=pseudo_map)
    keys = random.split(random.PRNGKey(0), 8)
    real, again = quick_jit(jax.vmap(lambda k: _true_action_check(elbo, order, k)), keys)
    assert set(again) == {n for n in order if n in "bc"}
    for name, (values, cost, real_cost) in again.items():
        for n, value in real.items():
            np.testing.assert_array_equal(values[n], value, err_msg=f"{order} {name}: {n}")
        np.testing.assert_allclose(cost, real_cost, rtol=1e-6, atol=1e-6,
                                   err_msg=f"{order} {name}")


# two site names whose crc32 agree in their low 31 bits (the per-site noise key was folded in
# from that hash, so the two sites drew the same noise: identical values, a biased gradient)
COLLIDING = ("z_24", "obs_27851_x")


@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
def test_sites_whose_name_hashes_collide_draw_independent_noise(kind):
    def guide():
        with numpyro.plate("data", 256):
            for name in COLLIDING:
                numpyro.sample(name, _discrete(kind, jnp.zeros(3 if kind == "categorical"
                                                              else ()), jnp.zeros(256)))

    def model():
        with numpyro.plate("data", 256):
            for name in COLLIDING:
                numpyro.sample(name, _discrete(kind, jnp.zeros(3 if kind == "categorical"
                                                              else ()), jnp.zeros(256)))

    keys = tuple(random.split(random.PRNGKey(0), 3))
    _, guide_trace, _ = ARSM_ELBO()._run(keys, {}, model, guide, (), {})
    first, second = (guide_trace[n]["value"] for n in COLLIDING)
    # independent uniform sites agree with probability 1/2 (Bernoulli) or 1/3 (C = 3)
    agree = 0.5 if kind == "bernoulli" else 1 / 3
    se = np.sqrt(agree * (1 - agree) / 256)
    assert abs(float(jnp.mean(first == second)) - agree) < 5 * se


# ---------------------------------------------------------------------------------------------
# Exact gradients of the chain structures
# ---------------------------------------------------------------------------------------------

EMBED = jnp.array([-1.0, 0.5, 1.5])  # a categorical value as a number
Y = jnp.array(0.8)


def _discrete(kind, a, shift):
    if kind == "bernoulli":
        return dist.Bernoulli(logits=a + shift)
    return dist.Categorical(logits=a + shift[..., None] * EMBED)


def _embed(kind, x):
    return x.astype(jnp.float32) if kind == "bernoulli" else EMBED[x]


def chain_guide(structure, kind):
    """``ddc``: b0 -> b1 -> z; ``cd``: z -> b0; ``dcd``: b0 -> z -> b1; ``dwd``: b0, then z
    independent of it, then b1 (each later site's parameters depend on the earlier ones)."""
    a0, m = (numpyro.param(n, CHAIN_PARAMS[kind][n]) for n in ("a0", "m"))
    z = jnp.array(0.0)
    if structure == "cd":
        z = numpyro.sample("z", dist.Normal(m, 0.8))
    e0 = _embed(kind, numpyro.sample("b0", _discrete(kind, a0, 0.7 * z)))
    if structure == "cd":
        return
    a1 = numpyro.param("a1", CHAIN_PARAMS[kind]["a1"])
    if structure in ("dcd", "dwd"):
        z = numpyro.sample("z", dist.Normal(m + (0.5 * e0 if structure == "dcd" else 0.0), 0.8))
    numpyro.sample("b1", _discrete(kind, a1, 0.5 * e0 + (0.7 * z if structure == "dcd" else 0.0)))
    if structure == "ddc":
        numpyro.sample("z", dist.Normal(m + 0.5 * e0, 0.8))


def chain_model(structure, kind):
    def prior(name):
        if kind == "bernoulli":
            return _embed(kind, numpyro.sample(name, dist.Bernoulli(0.5)))
        return _embed(kind, numpyro.sample(name, dist.Categorical(logits=jnp.zeros(3))))

    e0 = prior("b0")
    e1 = prior("b1") if structure != "cd" else 0.0
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    mean = {"cd": e0 + z, "dwd": e0 + e1 + z}.get(structure, e0 + e1 * z)
    numpyro.sample("y", dist.Normal(mean, 0.5), obs=Y)


# (no Bernoulli logit exactly 0 at any value of the earlier sites: jax.grad of NumPyro's
# Bernoulli log_prob has a kink there, which spoils the exact reference; a1 = -0.5 did)
CHAIN_PARAMS = {
    "bernoulli": {"a0": jnp.array(0.3), "a1": jnp.array(-0.6), "m": jnp.array(1.0)},
    "categorical": {"a0": jnp.array([0.3, -0.4, 0.1]), "a1": jnp.array([-0.2, 0.4, 0.0]),
                    "m": jnp.array(1.0)},
}
ESTIMATORS = {"bernoulli": ["arsm", "ar", "rloo", "local"],
              "categorical": ["arsm", "ars", "ar", "rloo", "local"]}
STRUCTURES = ["ddc", "cd", "dcd", "dwd"]
_EXACT = {}


def _exact_chain_gradient(structure, kind, names):
    key = (structure, kind)
    if key not in _EXACT:
        params = {n: CHAIN_PARAMS[kind][n] for n in names}
        _EXACT[key] = quadrature_gradient(chain_model, chain_guide, params, names, structure,
                                          kind)
    return _EXACT[key]


def test_quadrature_reference_matches_the_closed_form():
    # b0 -> b1 -> z with Bernoulli sites: E_z of the Gaussian terms in closed form, the sum over
    # (b0, b1) by hand; an independent check of the enumeration + quadrature reference
    y, s, sigma = float(Y), 0.8, 0.5

    def loss(p):
        total = 0.0
        for b0, b1 in itertools.product((0.0, 1.0), repeat=2):
            log_q0 = jax.nn.log_sigmoid(p["a0"] if b0 else -p["a0"])
            logit1 = p["a1"] + 0.5 * b0
            log_q1 = jax.nn.log_sigmoid(logit1 if b1 else -logit1)
            mu = p["m"] + 0.5 * b0
            f = (2 * jnp.log(0.5) - log_q0 - log_q1 - 0.5 * (mu ** 2 + s ** 2) + jnp.log(s) + 0.5
                 - 0.5 * jnp.log(2 * jnp.pi * sigma ** 2)
                 - ((y - b0 - b1 * mu) ** 2 + b1 ** 2 * s ** 2) / (2 * sigma ** 2))
            total = total + jnp.exp(log_q0 + log_q1) * f
        return -total

    names = ["a0", "a1", "m"]
    params = dict(CHAIN_PARAMS["bernoulli"])
    closed = np.concatenate([np.ravel(g) for g in jax.grad(loss)(params).values()])
    np.testing.assert_allclose(_exact_chain_gradient("ddc", "bernoulli", names), closed,
                               rtol=1e-5, atol=1e-6)


def _chain_cases():
    """Every estimator on every chain and kind; ARSM on three structures (both kinds over them)
    is quick, the rest run in the full stage (slow)."""
    quick_cases = {("cd", "bernoulli"), ("dcd", "categorical"), ("ddc", "bernoulli")}
    for structure in STRUCTURES:
        for kind, estimators in ESTIMATORS.items():
            for estimator in estimators:
                quick = estimator == "arsm" and (structure, kind) in quick_cases
                yield pytest.param(structure, kind, estimator,
                                   marks=() if quick else pytest.mark.slow)


@pytest.mark.parametrize("structure, kind, estimator", list(_chain_cases()))
def test_chain_gradients_are_unbiased(structure, kind, estimator):
    names = ["a0", "m"] if structure == "cd" else ["a0", "a1", "m"]
    params = {n: CHAIN_PARAMS[kind][n] for n in names}
    exact = _exact_chain_gradient(structure, kind, names)
    elbo = ARSM_ELBO(num_particles=100, estimator=estimator)
    draws = vmapped_gradient_draws(elbo, chain_model, chain_guide, params, names, 200,
                                   structure, kind)
    assert_unbiased(draws, exact, label=f"numpyro {structure} {kind} {estimator}")


# ---------------------------------------------------------------------------------------------
# Sites that are not (fully) reparameterized, beside and downstream of a discrete site
# ---------------------------------------------------------------------------------------------


class PartialNormal(dist.Normal):
    """Reparameterized in ``loc`` only (as NumPyro's VonMises): ``has_rsample`` is False."""

    reparametrized_params = ["loc"]


def partial_guide():
    b = numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("alpha", jnp.array(0.4))))
    loc = numpyro.param("m", jnp.array(0.5)) + 0.5 * b
    numpyro.sample("z", PartialNormal(loc, numpyro.param("s", jnp.array(0.8))))
    numpyro.sample("g", dist.Gamma(numpyro.param("a", jnp.array(1.5)), 1.0))


def partial_model():
    b = numpyro.sample("b", dist.Bernoulli(0.5))
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    numpyro.sample("g", dist.Gamma(0.5, 1.0))
    numpyro.sample("y", dist.Normal(b + z, 0.5), obs=Y)


def test_partially_reparameterized_and_gamma_sites_are_unbiased():
    # z (loc reparameterized, scale not) gets the whole score-function gradient, its value
    # detached; g (Gamma, implicitly reparameterized) is pathwise. Exact: enumeration over b,
    # quadrature over z, and d KL(Gamma(a, 1) || Gamma(0.5, 1)) / da = (a - 0.5) psi'(a).
    names = ["alpha", "m", "s", "a"]
    params = {"alpha": jnp.array(0.4), "m": jnp.array(0.5), "s": jnp.array(0.8),
              "a": jnp.array(1.5)}
    assert not PartialNormal(0.0, 1.0).has_rsample and dist.Gamma(1.0, 1.0).has_rsample

    def guide_without_g():
        with numpyro.handlers.block(hide=["g"]):
            partial_guide()

    def model_without_g():
        with numpyro.handlers.block(hide=["g"]):
            partial_model()

    exact = quadrature_gradient(model_without_g, guide_without_g, params, names)
    exact[3] = (1.5 - 0.5) * float(jax.scipy.special.polygamma(1, 1.5))
    elbo = ARSM_ELBO(num_particles=100, warn_score_function=False)
    draws = vmapped_gradient_draws(elbo, partial_model, partial_guide, params, names, 400)
    assert_unbiased(draws, exact, label="numpyro partially reparameterized + Gamma sites")


# ---------------------------------------------------------------------------------------------
# No state keyed on the program's objects
# ---------------------------------------------------------------------------------------------


class Program:
    """Model and guide as methods: each ``obj.model`` is a new bound-method object, and the
    ids of collected objects are recycled. ``linked`` decides whether b1 depends on b0."""

    def __init__(self, linked):
        self.linked = linked

    def guide(self):
        b0 = numpyro.sample("b0", dist.Bernoulli(logits=numpyro.param("a0", jnp.array(0.3))))
        shift = 0.8 * b0 if self.linked else 0.0
        numpyro.sample("b1", dist.Bernoulli(logits=numpyro.param("a1", jnp.array(-0.6)) + shift))

    def model(self):
        b0 = numpyro.sample("b0", dist.Bernoulli(0.5))
        b1 = numpyro.sample("b1", dist.Bernoulli(0.5))
        numpyro.sample("y", dist.Normal(b0 + 2.0 * b1, 0.5), obs=Y)


def test_no_state_keyed_on_the_model_or_guide_objects():
    # a cache keyed on object ids would miss bound methods and could be handed a collected
    # program's entry: one ARSM_ELBO fed
    # new bound methods of programs of two structures, each object dropped after its call (its
    # id free for reuse), gives the gradients a fresh ARSM_ELBO gives, and holds no more state
    # after 4 calls than after 1 (all traced in one program)
    elbo = ARSM_ELBO()
    params = {"a0": jnp.array(0.3), "a1": jnp.array(-0.6)}
    sizes = []

    def grads(key):
        out = []
        for i in range(4):
            obj = Program(linked=i % 2 == 0)
            for loss_fn in (elbo.loss, ARSM_ELBO().loss):
                out.append(jax.grad(loss_fn, argnums=1)(key, params, obj.model, obj.guide))
            sizes.append({k: len(v) if hasattr(v, "__len__") else v
                          for k, v in vars(elbo).items()})
            del obj
        return out

    out = quick_jit(grads, random.PRNGKey(3))
    for i in range(4):
        for name in params:
            np.testing.assert_array_equal(out[2 * i][name], out[2 * i + 1][name],
                                          err_msg=f"call {i}: {name}")
    assert not np.allclose(out[0]["a0"], out[2]["a0"])  # the two structures differ
    assert all(size == sizes[0] for size in sizes)
