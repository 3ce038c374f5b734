"""NumPyro's ARSM_ELBO beside model-side enumeration: sites marked ``infer={"enumerate":
"parallel"}`` in the model are summed out exactly (as NumPyro's TraceEnum_ELBO sums them, with
funsor), the guide's discrete sites get the ELBO's estimator on the contracted cost.

Every z-test is against :func:`numpyro_exact.enumerated_brute_force_gradient` (the guide's sites
summed by brute force, the model's enumerated ones by TraceEnum_ELBO with nothing left to
sample), at the 5% rule.
"""

import sys

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro_exact import (
    assert_unbiased,
    enumerated_brute_force_gradient,
    flatten,
    quick_compile,
    quick_jit,
    vmapped_gradient_draws,
)

from numpyro_arsm import ARSM_ELBO, _enum

X = jnp.array([0.3, -1.2, 2.0, 0.8])
SHIFT = jnp.array([-0.5, 0.7])
TRANS = jnp.array([[0.7, 0.3], [0.4, 0.6]])
PHI = jnp.array([[0.2, -0.1, 0.0], [0.5, 0.1, -0.4], [-0.3, 0.3, 0.2], [0.0, -0.6, 0.4]])


def global_sampled_model(x):
    """A global sampled cluster ``c`` over per-datum enumerated assignments ``y_n``."""
    loc = numpyro.param("loc", jnp.array([-1.0, 0.0, 1.5]))
    w = numpyro.param("w", jnp.array([0.2, -0.3]))
    c = numpyro.sample("c", dist.Categorical(logits=jnp.zeros(3)))
    with numpyro.plate("data", len(x)):
        y = numpyro.sample("y", dist.Categorical(logits=w), infer={"enumerate": "parallel"})
        numpyro.sample("x", dist.Normal(loc[c] + SHIFT[y], 1.0), obs=x)


def global_sampled_guide(x):
    numpyro.sample("c", dist.Categorical(logits=numpyro.param("phi", PHI[0])))


def coupled_model(x):
    """A global enumerated ``y`` coupling a plate of sampled ``z_n``: the contracted
    ``log sum_y p(y) prod_n p(x_n | y, z_n)`` is a cost shared by every element of ``z``."""
    m = numpyro.param("m", jnp.array([-0.7, 0.9]))
    a = numpyro.param("a", jnp.array([0.0, 1.0, -1.0]))
    y = numpyro.sample("y", dist.Categorical(logits=jnp.array([0.1, -0.1])),
                       infer={"enumerate": "parallel"})
    with numpyro.plate("data", len(x)):
        z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros(3)))
        numpyro.sample("x", dist.Normal(m[y] + a[z], 1.0), obs=x)


def plated_guide(x):
    phi = numpyro.param("phi", PHI)
    with numpyro.plate("data", len(x)):
        numpyro.sample("z", dist.Categorical(logits=phi))


def local_model(x):
    """Per-datum sampled ``z_n`` and per-datum enumerated ``y_n``: every contraction stays inside
    the plate, so ``z``'s cost is element-separable."""
    a = numpyro.param("a", jnp.array([0.0, 1.0, -1.0]))
    w = numpyro.param("w", jnp.array([0.2, -0.3]))
    with numpyro.plate("data", len(x)):
        z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros(3)))
        y = numpyro.sample("y", dist.Categorical(logits=w), infer={"enumerate": "parallel"})
        numpyro.sample("x", dist.Normal(a[z] + SHIFT[y], 1.0), obs=x)


def chain_model(ys):
    """An enumerated hidden chain (``markov``) whose emissions a sampled ``.to_event`` Bernoulli
    code ``b`` shifts: the whole contracted chain is ``b``'s cost."""
    from numpyro.contrib.funsor import markov

    trans = numpyro.param("trans", TRANS, constraint=dist.constraints.simplex)
    locs = numpyro.param("locs", jnp.array([-0.5, 0.8]))
    weights = numpyro.param("weights", jnp.array([0.6, -0.4]))
    b = numpyro.sample("b", dist.Bernoulli(jnp.full((2,), 0.5)).to_event(1))
    shift = (b * weights).sum(-1)
    x = 0
    for t in markov(range(len(ys))):
        x = numpyro.sample(f"x_{t}", dist.Categorical(trans[x]), infer={"enumerate": "parallel"})
        numpyro.sample(f"y_{t}", dist.Normal(locs[x] + shift, 1.0), obs=ys[t])


def chain_guide(ys):
    numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("beta", jnp.array([0.3, -0.2])))
                   .to_event(1))


PARAMS = {
    "global_sampled": {"loc": jnp.array([-1.0, 0.0, 1.5]), "w": jnp.array([0.2, -0.3]),
                       "phi": PHI[0]},
    "coupled": {"m": jnp.array([-0.7, 0.9]), "a": jnp.array([0.0, 1.0, -1.0]), "phi": PHI},
    "local": {"a": jnp.array([0.0, 1.0, -1.0]), "w": jnp.array([0.2, -0.3]), "phi": PHI},
    "chain": {"trans": TRANS, "locs": jnp.array([-0.5, 0.8]), "weights": jnp.array([0.6, -0.4]),
              "beta": jnp.array([0.3, -0.2])},
}
MODELS = {
    "global_sampled": (global_sampled_model, global_sampled_guide, ["phi", "loc", "w"]),
    "coupled": (coupled_model, plated_guide, ["phi", "m", "a"]),
    "local": (local_model, plated_guide, ["phi", "a", "w"]),
    "chain": (chain_model, chain_guide, ["beta", "trans", "locs", "weights"]),
}
NESTING = {"chain": 0}


def _unbiased(name, num_draws=40, particles=50, **kwargs):
    """The z-test of ``name``'s gradient: ``particles`` vectorized particles x ``num_draws``
    draws, all in one compiled ``vmap``; returns the worst z."""
    model, guide, names = MODELS[name]
    params = PARAMS[name]
    nesting = NESTING.get(name, 1)
    exact, _ = enumerated_brute_force_gradient(model, guide, params, names, nesting, X)
    elbo = ARSM_ELBO(num_particles=particles, max_plate_nesting=nesting, **kwargs)
    draws = vmapped_gradient_draws(elbo, model, guide, params, names, num_draws, X)
    return assert_unbiased(draws, exact, label=f"numpyro {name} {kwargs}")


@pytest.mark.parametrize("name, kwargs", [
    ("coupled", {}),
    pytest.param("global_sampled", {}, marks=pytest.mark.slow),
    pytest.param("local", {}, marks=pytest.mark.slow),
    pytest.param("local", {"estimator": "local"}, marks=pytest.mark.slow),
    pytest.param("coupled", {"estimator": "rloo"}, marks=pytest.mark.slow),
    # (DisARM's draws are spiky, often exactly 0: 40 draws under-estimate its standard error)
    pytest.param("chain", {"num_draws": 200}, marks=pytest.mark.slow),
    pytest.param("chain", {"estimator": "rloo"}, marks=pytest.mark.slow),
    pytest.param("coupled", {"pseudo_map": "map", "pseudo_batch_size": 2},
                 marks=pytest.mark.slow),
], ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items()))
def test_gradient_is_unbiased(name, kwargs):
    _unbiased(name, **kwargs)


def subsampled_local_model(x):
    """:func:`local_model` over a subsample of 2 of the 4 data: the common scale 2 of the
    contracted components; in expectation over the subsample, ``local_model``'s gradient."""
    a = numpyro.param("a", jnp.array([0.0, 1.0, -1.0]))
    w = numpyro.param("w", jnp.array([0.2, -0.3]))
    with numpyro.plate("data", len(x), subsample_size=2) as idx:
        z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros(3)))
        y = numpyro.sample("y", dist.Categorical(logits=w), infer={"enumerate": "parallel"})
        numpyro.sample("x", dist.Normal(a[z] + SHIFT[y], 1.0), obs=x[idx])


def subsampled_guide(x):
    phi = numpyro.param("phi", PHI)
    with numpyro.plate("data", len(x), subsample_size=2) as idx:
        numpyro.sample("z", dist.Categorical(logits=phi[idx]))


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["arsm", "local"])
def test_subsampled_gradient_is_unbiased(estimator):
    names = ["phi", "a", "w"]
    exact, _ = enumerated_brute_force_gradient(local_model, plated_guide, PARAMS["local"], names,
                                               1, X)
    elbo = ARSM_ELBO(num_particles=50, max_plate_nesting=1, estimator=estimator)
    draws = vmapped_gradient_draws(elbo, subsampled_local_model, subsampled_guide,
                                   PARAMS["local"], names, 80, X)
    assert_unbiased(draws, exact, label=f"numpyro subsampled local {estimator}")


def test_the_z_test_rejects_a_cost_without_the_shared_global_component(monkeypatch):
    # the harness can fail: drop the global component (log sum_y p(y) prod_n p(x_n | y, z_n))
    # from z's cost and the same z-test sees the bias
    touches = _enum._touches
    monkeypatch.setattr(_enum, "_touches", lambda component, name, deps: (
        "y" not in component.sum_vars and touches(component, name, deps)))
    with pytest.raises(AssertionError, match="biased"):
        _unbiased("coupled")


def _fully_enumerated_model(x):
    w = numpyro.param("w", jnp.array([0.2, -0.3]))
    m = numpyro.sample("m", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", len(x)):
        y = numpyro.sample("y", dist.Categorical(logits=w), infer={"enumerate": "parallel"})
        numpyro.sample("x", dist.Normal(m + SHIFT[y], 1.0), obs=x)


def _delta_guide(x):
    numpyro.sample("m", dist.Delta(numpyro.param("m_map", 0.4)))


def test_nothing_sampled_equals_trace_enum_elbo():
    # every discrete site enumerated, the continuous one a Delta: loss and gradient are
    # TraceEnum_ELBO's to float rounding
    from numpyro.infer import TraceEnum_ELBO

    params = {"w": jnp.array([0.2, -0.3]), "m_map": jnp.array(0.4)}
    key = jax.random.PRNGKey(0)
    results = [quick_jit(jax.value_and_grad(lambda p, e=elbo: e.loss(
        key, p, _fully_enumerated_model, _delta_guide, X)), params)
        for elbo in (ARSM_ELBO(max_plate_nesting=1), TraceEnum_ELBO(max_plate_nesting=1))]
    (ours, ours_grad), (theirs, theirs_grad) = results
    assert jnp.allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    assert jnp.allclose(flatten(ours_grad, ["w", "m_map"]),
                        flatten(theirs_grad, ["w", "m_map"]), atol=1e-6)


@pytest.mark.slow
def test_loss_is_the_negative_elbo_with_enumerated_sites_summed():
    model, guide, names = MODELS["coupled"]
    params = PARAMS["coupled"]
    _, exact = enumerated_brute_force_gradient(model, guide, params, names, 1, X)
    elbo = ARSM_ELBO(num_particles=4000, max_plate_nesting=1)
    loss = quick_compile(lambda k: elbo.loss(k, params, model, guide, X), jax.random.PRNGKey(0))
    losses = jnp.stack([loss(jax.random.PRNGKey(i)) for i in range(3)])
    se = losses.std() / 3 ** 0.5
    assert abs(losses.mean() - exact) < 5 * se + 1e-3 * abs(exact), (losses, exact)


@pytest.mark.slow
def test_max_plate_nesting_is_guessed_once_as_trace_enum_elbo_guesses_it():
    model, guide, names = MODELS["coupled"]
    params = PARAMS["coupled"]
    key = jax.random.PRNGKey(3)
    elbo = ARSM_ELBO()
    guessed = quick_jit(jax.grad(lambda p: elbo.loss(key, p, model, guide, X)), params)
    assert elbo.max_plate_nesting == 1
    given = quick_jit(jax.grad(
        lambda p: ARSM_ELBO(max_plate_nesting=1).loss(key, p, model, guide, X)), params)
    assert jnp.array_equal(flatten(guessed, names), flatten(given, names))


def _trace_only(elbo, params, model, guide):
    """The loss traced, not compiled nor run (the checks and warnings happen at trace time)."""
    return jax.eval_shape(lambda key: elbo.loss(key, params, model, guide, X),
                          jax.random.PRNGKey(0))


def test_a_global_enumerated_site_makes_the_plated_cost_shared():
    # "local" needs an element-separable cost: the global y couples the elements of z, so it
    # warns once and uses ARSM (unbiased: the z-test of "coupled" above)
    model, guide, _ = MODELS["coupled"]
    elbo = ARSM_ELBO(max_plate_nesting=1, estimator="local")
    with pytest.warns(UserWarning, match="guide site 'z' is not element-separable"):
        _trace_only(elbo, PARAMS["coupled"], model, guide)


def test_sequential_enumeration_is_an_error_naming_the_site():
    def model(x):
        y = numpyro.sample("y", dist.Bernoulli(0.3), infer={"enumerate": "sequential"})
        numpyro.sample("x", dist.Normal(y, 1.0), obs=x[0])

    with pytest.raises(NotImplementedError,
                       match="model site 'y' is marked infer={'enumerate': 'sequential'}"):
        _trace_only(ARSM_ELBO(max_plate_nesting=1), {}, model, lambda x: None)


def test_missing_funsor_is_an_import_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "funsor", None)  # `import funsor` raises ImportError
    with pytest.raises(ImportError, match=r"pip install ppl-arsm\[enum\]"):
        _trace_only(ARSM_ELBO(max_plate_nesting=1), PARAMS["coupled"], coupled_model,
                    plated_guide)


def test_score_function_guide_site_beside_enumeration_is_an_error():
    def model(x):
        n = numpyro.sample("n", dist.Poisson(3.0))
        y = numpyro.sample("y", dist.Bernoulli(0.3), infer={"enumerate": "parallel"})
        numpyro.sample("x", dist.Normal(y + jnp.minimum(n, 5) * 0.1, 1.0), obs=x[0])

    def guide(x):
        numpyro.sample("n", dist.Poisson(numpyro.param("rate", 2.0)))

    with pytest.raises(NotImplementedError, match="guide site 'n' .* needs a score-function"):
        _trace_only(ARSM_ELBO(max_plate_nesting=1, warn_score_function=False),
                    {"rate": jnp.array(2.0)}, model, guide)


@pytest.mark.slow
@pytest.mark.parametrize("vectorize_particles", [True, False])
def test_svi_runs_under_jit_with_particles_vectorized_or_mapped(vectorize_particles):
    import optax
    from numpyro.infer import SVI

    elbo = ARSM_ELBO(num_particles=3, vectorize_particles=vectorize_particles)
    svi = SVI(coupled_model, plated_guide, optax.adam(0.05), loss=elbo)
    result = svi.run(jax.random.PRNGKey(0), 30, X, progress_bar=False)
    assert jnp.all(jnp.isfinite(result.losses))
    assert elbo.max_plate_nesting == 1
