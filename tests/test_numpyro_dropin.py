"""NumPyro ARSM_ELBO as a drop-in loss: one finiteness check per loss call whatever
the number of particles, guides written for TraceEnum_ELBO (``config_enumerate``), SVI with
``numpyro.mutable`` state, NumPyro's model/guide checks, and ``warn_score_function``."""

import functools
import re
import warnings

import numpy as np
import pytest

jax = pytest.importorskip("jax")
numpyro = pytest.importorskip("numpyro")
optax = pytest.importorskip("optax")

import jax.numpy as jnp  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro import handlers  # noqa: E402
from numpyro.infer import SVI  # noqa: E402
from numpyro_exact import flatten  # noqa: E402
from numpyro_models import (  # noqa: E402
    CHAIN,
    chain_guide,
    chain_model,
    poisson_guide,
    poisson_model,
)

from numpyro_arsm import ARSM_ELBO  # noqa: E402


def config_enumerate(fn):
    """NumPyro's ``config_enumerate`` (``numpyro.contrib.funsor``, which needs funsor) when it
    can be imported, else the same marking written with ``handlers.infer_config``."""
    try:
        from numpyro.contrib.funsor import config_enumerate as upstream
    except ImportError:
        def mark(site):
            if not site["is_observed"] and site["fn"].has_enumerate_support:
                return {"enumerate": site["infer"].get("enumerate", "parallel")}
            return {}

        return handlers.infer_config(fn, mark)
    return upstream(fn)


def _grad_fn(elbo, model, guide, *args):
    return jax.grad(lambda p, k: elbo.loss(k, p, model, guide, *args))


# ---------------------------------------------------------------------------------------------
# the finiteness check is one host callback per loss call
# ---------------------------------------------------------------------------------------------


def _lowered(num_particles, check_finite=True):
    elbo = ARSM_ELBO(num_particles=num_particles, check_finite=check_finite)
    loss = lambda p: elbo.loss(jax.random.PRNGKey(0), p, chain_model, chain_guide,  # noqa: E731
                               jnp.array(0.5))
    text = jax.jit(jax.grad(loss)).lower(CHAIN).as_text()
    return len(re.findall(r"custom_call @\w*callback", text)), len(text)


def test_program_size_does_not_grow_with_num_particles():
    # z2's logits depend on z1: the pseudo passes of z1 re-sample z2. Before the fix the check
    # was a callback per site, pass and particle (34 callbacks at 8 particles, 1026 at 256).
    callbacks_8, size_8 = _lowered(8)
    callbacks_256, size_256 = _lowered(256)
    print(f"\ncallbacks {callbacks_8} / {callbacks_256}, program size {size_8} / {size_256}")
    assert callbacks_8 == callbacks_256 == 1
    assert size_256 / size_8 < 1.1
    assert _lowered(8, check_finite=False)[0] == 0


def _nan_row_params():
    return dict(CHAIN, phi2=CHAIN["phi2"].at[2].set(jnp.nan))


@functools.lru_cache
def _key_with_nan_only_in_pseudo_passes(num_particles):
    """A key whose real pass is finite while a pseudo pass of z1 re-samples z2 from a NaN row:
    found, and checked, with check_finite off. The real pass is the same under ``"ar"`` (no
    pseudo passes): its loss is finite; ARSM's gradient is NaN."""
    def value_and_grad(estimator):
        elbo = ARSM_ELBO(num_particles=num_particles, estimator=estimator, check_finite=False)
        return jax.jit(jax.value_and_grad(
            lambda p, k: elbo.loss(k, p, chain_model, chain_guide, jnp.array(0.5))))

    params = _nan_row_params()
    real_pass, arsm = value_and_grad("ar"), value_and_grad("arsm")
    for i in range(40):
        key = jax.random.PRNGKey(i)
        if (jnp.isfinite(real_pass(params, key)[0])
                and not jnp.all(jnp.isfinite(arsm(params, key)[1]["phi1"]))):
            return i
    raise AssertionError("no key found with NaN logits in pseudo passes only")


def _nan_cases():
    """Every combination; one of them in the quick stage."""
    for jit in (False, True):
        for num_particles in (1, 3):
            for where in ("real pass", "pseudo passes only"):
                quick = (jit, num_particles, where) == (True, 3, "pseudo passes only")
                yield pytest.param(jit, num_particles, where,
                                   marks=() if quick else pytest.mark.slow)


@pytest.mark.parametrize("jit, num_particles, where", list(_nan_cases()))
def test_nan_logits_of_a_downstream_site_raise_naming_it(jit, num_particles, where):
    key = jax.random.PRNGKey(0)
    with numpyro.validation_enabled(False):
        if where == "real pass":
            params = dict(CHAIN, phi2=CHAIN["phi2"].at[:, 1].set(jnp.nan))
        else:  # z1 = 2 is drawn by some pseudo action but not by the real pass
            params = _nan_row_params()
            key = jax.random.PRNGKey(_key_with_nan_only_in_pseudo_passes(num_particles))
        loss = ARSM_ELBO(num_particles=num_particles).loss
        if jit:
            loss = jax.jit(loss, static_argnums=(2, 3))
        # the check's ValueError, raised in a host callback, reaches a jitted caller wrapped
        error = jax.errors.JaxRuntimeError if jit else ValueError
        with pytest.raises(error, match="guide site 'z2' has NaN or infinite logits"):
            jax.block_until_ready(loss(key, params, chain_model, chain_guide, jnp.array(0.5)))


def test_nan_logits_of_two_sites_are_named_in_one_error():
    params = dict(CHAIN, phi1=jnp.full(3, jnp.nan), phi2=jnp.full((3, 3), jnp.nan))
    grad = jax.jit(_grad_fn(ARSM_ELBO(num_particles=4), chain_model, chain_guide,
                            jnp.array(0.5)))
    with numpyro.validation_enabled(False), pytest.raises(
            jax.errors.JaxRuntimeError, match="guide sites 'z1', 'z2' have NaN or infinite logits"):
        jax.block_until_ready(grad(params, jax.random.PRNGKey(0)))


def test_finite_logits_pass_the_check():
    grad = jax.jit(_grad_fn(ARSM_ELBO(num_particles=4), chain_model, chain_guide,
                            jnp.array(0.5)))
    g = grad(CHAIN, jax.random.PRNGKey(0))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))


# ---------------------------------------------------------------------------------------------
# Deliverable 3: a guide written for TraceEnum_ELBO
# ---------------------------------------------------------------------------------------------

MIX_DATA = jnp.array([-1.8, 0.3, 2.4])
MIX = {"locs": jnp.array([-2.0, 0.0, 2.0]),
       "alpha": jnp.array(0.4),
       "phi": jnp.array([[1.0, -0.5, 0.0], [0.2, 0.6, -0.4], [-0.7, 0.1, 0.9]])}


def mixture_model(data):
    # a Gaussian mixture whose noise scale is itself a discrete latent
    locs = numpyro.param("locs", MIX["locs"])
    wide = numpyro.sample("wide", dist.Bernoulli(probs=0.3))
    scale = jnp.array([0.7, 1.5])[wide]
    with numpyro.plate("data", data.shape[0]):
        z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros(3)))
        numpyro.sample("x", dist.Normal(locs[z], scale), obs=data)


def mixture_guide(data):
    numpyro.sample("wide", dist.Bernoulli(logits=numpyro.param("alpha", MIX["alpha"])))
    phi = numpyro.param("phi", MIX["phi"])
    with numpyro.plate("data", data.shape[0]):
        numpyro.sample("z", dist.Categorical(logits=phi))


enumerated_mixture_guide = config_enumerate(mixture_guide)


@pytest.mark.parametrize("name", [pytest.param("mixture", marks=pytest.mark.slow),
                                  pytest.param("chain", marks=pytest.mark.slow)])
def test_a_config_enumerate_guide_is_trace_enum_elbo(name):
    # every discrete guide site marked (z2 of the chain below z1 included) is summed out with its
    # guide probabilities: nothing discrete is sampled, so loss and gradient are TraceEnum_ELBO's
    # (tests/test_numpyro_guide_enumeration.py checks sampled sites beside marked ones)
    from numpyro.infer import TraceEnum_ELBO

    model, guide, params, data = {
        "mixture": (mixture_model, mixture_guide, MIX, MIX_DATA),
        "chain": (chain_model, chain_guide, CHAIN, jnp.array(0.5))}[name]
    key = jax.random.PRNGKey(1)
    nesting = 1 if name == "mixture" else 0
    ours, theirs = (jax.value_and_grad(lambda p, e=elbo: e.loss(
        key, p, model, config_enumerate(guide), data))(params)
        for elbo in (ARSM_ELBO(max_plate_nesting=nesting),
                     TraceEnum_ELBO(max_plate_nesting=nesting)))
    assert jnp.allclose(ours[0], theirs[0], rtol=1e-6)
    for n in params:
        assert jnp.allclose(ours[1][n], theirs[1][n], rtol=1e-5, atol=1e-6), n


@pytest.mark.slow  # (10 s or more: the quick stage has no room)
def test_model_side_enumeration_of_sites_absent_from_the_guide_is_trace_enum_elbo():
    # both discrete sites summed out in the model, nothing sampled: loss and gradient are
    # TraceEnum_ELBO's to float rounding
    from numpyro.infer import TraceEnum_ELBO

    def guide(data):
        pass

    params = {"locs": MIX["locs"]}
    key = jax.random.PRNGKey(0)
    ours, theirs = (jax.value_and_grad(lambda p, e=elbo: e.loss(
        key, p, config_enumerate(mixture_model), guide, MIX_DATA))(params)
        for elbo in (ARSM_ELBO(), TraceEnum_ELBO(max_plate_nesting=1)))
    assert jnp.allclose(ours[0], theirs[0], rtol=1e-6)
    assert jnp.allclose(ours[1]["locs"], theirs[1]["locs"], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Deliverable 5: mutable state, NumPyro's checks, warn_score_function
# ---------------------------------------------------------------------------------------------


def mutable_model(data):
    locs = numpyro.param("locs", MIX["locs"])
    # a step counter and a batch statistic (an exponential moving average, as batch norm keeps),
    # the latter updated in place one level down (NumPyro's substitute copies only the top level)
    stats = numpyro.primitives.mutable("stats", {"steps": jnp.array(0.0),
                                                 "ema": {"mean": jnp.array(0.0)}})
    stats["steps"] = stats["steps"] + 1.0
    stats["ema"]["mean"] = 0.9 * stats["ema"]["mean"] + 0.1 * jnp.mean(data)
    with numpyro.plate("data", data.shape[0]):
        z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros(3)))
        numpyro.sample("x", dist.Normal(locs[z], 1.0), obs=data)


def mutable_guide(data):
    calls = numpyro.primitives.mutable("guide_calls", {"n": jnp.array(0.0)})
    calls["n"] = calls["n"] + 1.0
    with numpyro.plate("data", data.shape[0]):
        numpyro.sample("z", dist.Categorical(logits=numpyro.param("phi", MIX["phi"])))


@pytest.mark.parametrize("num_particles", [1, 4])
def test_svi_with_mutable_state_under_jit(num_particles):
    # every pass of guide and model (real, pseudo, provenance) starts from the state passed in;
    # the state kept is the real pass's: one increment per step, not one per pass
    svi = SVI(mutable_model, mutable_guide, optax.adam(0.05),
              loss=ARSM_ELBO(num_particles=num_particles))
    state = svi.init(jax.random.PRNGKey(0), MIX_DATA)
    start = state.mutable_state  # (SVI.init has run guide and model once already)
    update = jax.jit(svi.update)
    steps = 6
    for _ in range(steps):
        state, loss = update(state, MIX_DATA)
    mutable = state.mutable_state
    assert float(mutable["stats"]["steps"]) == float(start["stats"]["steps"]) + steps
    assert float(mutable["guide_calls"]["n"]) == float(start["guide_calls"]["n"]) + steps
    decay = 0.9 ** steps
    expected_mean = decay * float(start["stats"]["ema"]["mean"]) + (1 - decay) * float(
        jnp.mean(MIX_DATA))
    assert abs(float(mutable["stats"]["ema"]["mean"]) - expected_mean) < 1e-5
    assert bool(jnp.isfinite(loss))
    params = svi.get_params(state)
    assert not np.allclose(params["phi"], MIX["phi"])  # it trained


@pytest.mark.slow  # (quick-stage budget: the full stage runs it)
def test_loss_with_mutable_state_without_mutable_sites():
    out = ARSM_ELBO().loss_with_mutable_state(jax.random.PRNGKey(0), MIX, mixture_model,
                                              mixture_guide, MIX_DATA)
    assert out["mutable_state"] is None
    loss = ARSM_ELBO().loss(jax.random.PRNGKey(0), MIX, mixture_model, mixture_guide, MIX_DATA)
    assert float(out["loss"]) == float(loss)


@pytest.mark.slow  # (10 s or more: the quick stage has no room)
def test_guide_site_absent_from_the_model_warns():
    def guide(data):
        mixture_guide(data)
        numpyro.sample("extra", dist.Normal(0.0, 1.0))

    with pytest.warns(UserWarning, match="non-auxiliary vars in guide but not model"):
        ARSM_ELBO().loss(jax.random.PRNGKey(0), MIX, mixture_model, guide, MIX_DATA)


def test_model_and_guide_shapes_that_disagree_raise():
    def guide(data):  # one assignment for all data, outside the plate: shape (1,), not (3,)
        numpyro.sample("wide", dist.Bernoulli(logits=0.0))
        numpyro.sample("z", dist.Categorical(logits=jnp.zeros((1, 3))))

    with pytest.raises(ValueError, match="shapes disagree at site 'z'"):
        ARSM_ELBO().loss(jax.random.PRNGKey(0), MIX, mixture_model, guide, MIX_DATA)


def test_batch_dim_without_plate_warns():
    def model(data):
        z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros((3, 3))))
        numpyro.sample("x", dist.Normal(z.sum(), 1.0), obs=data.sum())

    def guide(data):
        numpyro.sample("z", dist.Categorical(logits=numpyro.param("phi", MIX["phi"])))

    with pytest.warns(UserWarning, match="Missing a plate statement .* at site 'z'"):
        ARSM_ELBO().loss(jax.random.PRNGKey(0), MIX, model, guide, MIX_DATA)


@pytest.mark.slow  # (quick-stage budget: the full stage runs it)
def test_warn_score_function_false_silences_the_fallback_warning():
    params = {"locs": jnp.array([-1.0, 0.5, 2.0]), "phi": jnp.array([0.2, -0.3, 0.5]),
              "rate": jnp.array(1.5)}
    x = jnp.array(1.0)
    for warn in (True, False):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            elbo = ARSM_ELBO(warn_score_function=warn)
            for i in range(3):
                elbo.loss(jax.random.PRNGKey(i), params, poisson_model, poisson_guide, x)
        messages = [str(w.message) for w in record if "score-function" in str(w.message)]
        assert len(messages) == (1 if warn else 0), messages
        if warn:
            assert "'n'" in messages[0] and "warn_score_function=False" in messages[0]
    # the flag changes no number (the warning expected, not left to stray)
    def grad(warn):
        return flatten(_grad_fn(ARSM_ELBO(warn_score_function=warn), poisson_model,
                                poisson_guide, x)(params, jax.random.PRNGKey(0)),
                       ["phi", "rate", "locs"])

    with pytest.warns(UserWarning, match="score-function"):
        warned = grad(True)
    np.testing.assert_array_equal(warned, grad(False))
