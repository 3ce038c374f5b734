"""NumPyro's ARSM_ELBO beside guide-side enumeration: guide sites marked ``infer={"enumerate":
"parallel"}`` are summed out with their guide probabilities (TraceEnum_ELBO's expectation), the
sampled sites, upstream or downstream of them, get the ELBO's estimator on the pass's whole
enumerated ELBO. z-tests at the 5% rule against brute force (upstream) or TraceEnum_ELBO with
every discrete guide site enumerated (downstream, its standard error in the test).
"""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro_exact import (
    assert_unbiased,
    exact_gradient,
    flatten,
    quick_jit,
    vmapped_gradient_draws,
)

from numpyro_arsm import ARSM_ELBO

X = jnp.array([0.3, -1.2, 2.0, 0.8])


def upstream_model(x):
    locs = numpyro.param("locs", jnp.array([-1.0, 0.0, 1.5]))
    c = numpyro.sample("c", dist.Categorical(logits=jnp.zeros(3)))
    with numpyro.plate("data", len(x)):
        y = numpyro.sample("y", dist.Bernoulli(0.4))
        numpyro.sample("x", dist.Normal(locs[c] + 0.8 * y, 1.0), obs=x)


def upstream_guide(x):
    """A sampled global ``c`` upstream of per-datum ``y_n`` that the guide enumerates."""
    c = numpyro.sample("c", dist.Categorical(logits=numpyro.param("phi",
                                                                  jnp.array([0.2, -0.1, 0.3]))))
    w = numpyro.param("w", jnp.array([0.5, -0.5, 0.1]))
    with numpyro.plate("data", len(x)):
        numpyro.sample("y", dist.Bernoulli(logits=w[c] + numpyro.param("v", jnp.zeros(len(x)))),
                       infer={"enumerate": "parallel"})


UPSTREAM = {"locs": jnp.array([-1.0, 0.0, 1.5]), "phi": jnp.array([0.2, -0.1, 0.3]),
            "w": jnp.array([0.5, -0.5, 0.1]), "v": jnp.zeros(4)}
PHI = jnp.array([[0.2, -0.3, 0.1], [-0.4, 0.5, 0.0]])


def below_model(x):
    y = numpyro.sample("y", dist.Bernoulli(0.4))
    with numpyro.plate("data", len(x)):
        c = numpyro.sample("c", dist.Categorical(logits=jnp.zeros(3)))
        w = numpyro.sample("w", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(c + y - 1.0 + 0.3 * w, 1.0), obs=x)


def below_guide(x, enumerate_c=False):
    """A global ``y`` that the guide enumerates over per-datum sampled ``c_n`` whose logits
    depend on it, and a reparameterized ``w_n`` below both."""
    y = numpyro.sample("y", dist.Bernoulli(logits=numpyro.param("v", 0.3)),
                       infer={"enumerate": "parallel"})
    phi = numpyro.param("phi", PHI)
    with numpyro.plate("data", len(x)):
        c = numpyro.sample("c", dist.Categorical(logits=phi[y] + numpyro.param(
            "u", jnp.zeros((len(x), 3)))), infer={"enumerate": "parallel"} if enumerate_c else {})
        numpyro.sample("w", dist.Normal(numpyro.param("m", jnp.zeros(len(x))) + 0.5 * c, 1.0))


def below_guide_enumerated(x):
    below_guide(x, enumerate_c=True)


BELOW = {"v": jnp.array(0.3), "phi": PHI, "u": jnp.zeros((3, 3)), "m": jnp.zeros(3)}


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["arsm", "rloo"])
def test_a_sampled_site_upstream_of_guide_enumerated_sites_is_unbiased(estimator):
    names = ["phi", "w", "v", "locs"]
    exact, _ = exact_gradient(upstream_model, upstream_guide, UPSTREAM, names, X)
    elbo = ARSM_ELBO(num_particles=50, max_plate_nesting=1, estimator=estimator)
    draws = vmapped_gradient_draws(elbo, upstream_model, upstream_guide, UPSTREAM, names, 40, X)
    assert_unbiased(draws, exact, label=f"numpyro guide-enumerated y below sampled c, {estimator}")


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["arsm", "rloo"])
def test_a_sampled_site_below_a_guide_enumerated_one_is_unbiased(estimator):
    # c's batch shape holds y's enumeration dim: one estimate per value of y; w is pathwise.
    # The reference is TraceEnum_ELBO with c enumerated too (only w sampled: its standard error
    # enters the z-test)
    from numpyro.infer import TraceEnum_ELBO

    names = ["v", "phi", "u", "m"]
    x = X[:3]
    reference = TraceEnum_ELBO(max_plate_nesting=1, num_particles=2000)
    draws = vmapped_gradient_draws(reference, below_model, below_guide_enumerated, BELOW, names,
                                   40, x, seed_=1)
    exact, exact_se = draws.mean(0), draws.std(0, ddof=1) / 40 ** 0.5
    elbo = ARSM_ELBO(num_particles=50, max_plate_nesting=1, estimator=estimator)
    draws = vmapped_gradient_draws(elbo, below_model, below_guide, BELOW, names, 40, x)
    assert_unbiased(draws, exact, exact_se,
                    label=f"numpyro sampled c below guide-enumerated y, {estimator}")


@pytest.mark.slow  # 6.5 s, compiling both losses
def test_a_fully_enumerated_guide_is_trace_enum_elbo():
    # every discrete guide site enumerated (c below y included), only the Normal w sampled with
    # the same key: loss and gradient are TraceEnum_ELBO's to float rounding
    from numpyro.infer import TraceEnum_ELBO

    names = ["v", "phi", "u", "m"]
    key = jax.random.PRNGKey(0)
    (ours, ours_grad), (theirs, theirs_grad) = [quick_jit(jax.value_and_grad(
        lambda p, e=elbo: e.loss(key, p, below_model, below_guide_enumerated, X[:3])), BELOW)
        for elbo in (ARSM_ELBO(max_plate_nesting=1), TraceEnum_ELBO(max_plate_nesting=1))]
    assert jnp.allclose(ours, theirs, rtol=1e-6)
    assert jnp.allclose(flatten(ours_grad, names), flatten(theirs_grad, names), rtol=1e-5,
                        atol=1e-6)


def test_a_guide_site_marked_for_sequential_enumeration_is_an_error_naming_the_site():
    def guide(x):
        numpyro.sample("y", dist.Bernoulli(logits=numpyro.param("v", 0.3)),
                       infer={"enumerate": "sequential"})

    def model(x):
        y = numpyro.sample("y", dist.Bernoulli(0.4))
        numpyro.sample("x", dist.Normal(y, 1.0), obs=x[0])

    with pytest.raises(ValueError, match=r"guide site 'y' is marked infer=\{'enumerate': "
                                         r"'sequential'\}.*Mark it 'parallel'"):
        jax.eval_shape(lambda k: ARSM_ELBO(max_plate_nesting=0).loss(
            k, {"v": jnp.array(0.3)}, model, guide, X), jax.random.PRNGKey(0))
