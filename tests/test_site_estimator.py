"""Per-site estimator choice, in both packages: a guide site's ``infer={"estimator": ...,
"num_samples": ...}`` overrides the ELBO's ``estimator`` for that site, and ``config_estimator``
sets it for a whole guide (a predicate picks the sites), in the style of ``config_enumerate``."""

import pytest

torch = pytest.importorskip("torch")
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import pyro.poutine as poutine  # noqa: E402
from pyro_exact import (  # noqa: E402
    assert_unbiased,
    enumerated_brute_force_gradient,
    gradient_draws,
)

import pyro_arsm  # noqa: E402
from pyro_arsm import ARSM_ELBO, JitARSM_ELBO, config_estimator  # noqa: E402

X = torch.tensor([0.3, -1.2, 2.0])
SHIFT = torch.tensor([-0.5, 0.7])


def mixed_model(x):
    """One enumerated site (y, per datum), one separable sampled site (z, per datum) and one
    ``.to_event`` sampled code (b) that shifts every datum."""
    a = pyro.param("a", torch.tensor([0.0, 1.0, -1.0]))
    w = pyro.param("w", torch.tensor([0.2, -0.3]))
    b = pyro.sample("b", dist.Bernoulli(torch.full((2,), 0.5)).to_event(1))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
        y = pyro.sample("y", dist.Categorical(logits=w), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(a[z] + SHIFT[y] + 0.4 * b.sum(-1), 1.0),
                    obs=x)


def mixed_guide(x):
    phi = pyro.param("phi", torch.tensor([0.2, -0.1, 0.0]).expand(len(x), 3).clone())
    beta = pyro.param("beta", torch.tensor([0.3, -0.4]))
    pyro.sample("b", dist.Bernoulli(logits=beta).to_event(1))  # the ELBO's default: DisARM
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Categorical(logits=phi), infer={"estimator": "local"})


def test_one_model_enumerates_one_site_and_estimates_two_others_each_its_own_way(
        fresh_param_store):
    names = ["phi", "beta", "a", "w"]
    mixed_model(X)
    mixed_guide(X)
    exact, _ = enumerated_brute_force_gradient(mixed_model, mixed_guide, names, 1, X)
    elbo = ARSM_ELBO(num_particles=50, vectorize_particles=True, max_plate_nesting=2)
    draws = gradient_draws(elbo, mixed_model, mixed_guide, names, 40, X)
    assert_unbiased(draws, exact, label="enumerated y, local z, DisARM b")


def _guide_trace(guide):
    return poutine.trace(guide).get_trace(X)


def test_config_estimator_sets_the_discrete_sites_a_predicate_picks(fresh_param_store):
    def guide(x):
        pyro.sample("code_a", dist.Categorical(logits=torch.zeros(3)))
        pyro.sample("code_b", dist.Bernoulli(logits=torch.zeros(())))
        pyro.sample("other", dist.Categorical(logits=torch.zeros(3)))
        pyro.sample("scale", dist.Normal(0.0, 1.0))

    trace = _guide_trace(config_estimator(guide, "rloo", num_samples=4,
                                          predicate=lambda site: site["name"].startswith("code")))
    assert trace.nodes["code_a"]["infer"] == {"estimator": "rloo", "num_samples": 4}
    assert trace.nodes["code_b"]["infer"] == {"estimator": "rloo", "num_samples": 4}
    assert "estimator" not in trace.nodes["other"]["infer"]
    assert "estimator" not in trace.nodes["scale"]["infer"]  # (not discrete)

    @config_estimator(estimator="ar")
    def decorated(x):
        return guide(x)

    assert _guide_trace(decorated).nodes["other"]["infer"] == {"estimator": "ar"}


def test_rloo_num_samples_of_one_site_sets_its_evaluations(fresh_param_store):
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(4)))
        pyro.sample("y", dist.Normal(z.float().sum(-1, keepdim=True), 1.0), obs=x[:1])

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Categorical(logits=pyro.param("lz", torch.zeros(3, 4))),
                        infer={"estimator": "rloo", "num_samples": 3})

    elbo = ARSM_ELBO(max_plate_nesting=1)  # (its default, ARSM, would take up to 6)
    for _ in range(5):
        elbo.differentiable_loss(model, guide, X)
        assert 1 <= elbo.last_num_pseudo_evaluations <= 2


@pytest.mark.parametrize("infer, match", [
    ({"estimator": "reinforce"}, "guide site 'z': unknown estimator 'reinforce'"),
    ({"estimator": "arsm", "num_samples": 4}, "guide site 'z': num_samples applies to "
                                              "estimator='rloo' only"),
    ({"estimator": "rloo", "num_samples": 1}, "guide site 'z': num_samples must be at least 2"),
    ({"estimator": "rloo", "enumerate": "parallel"},
     "guide site 'z' is marked both for enumeration"),
])
def test_a_bad_choice_is_an_error_naming_the_site(fresh_param_store, infer, match):
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
            pyro.sample("x", dist.Normal(z.float(), 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Categorical(logits=torch.zeros(3)), infer=dict(infer))

    with pytest.raises(ValueError, match=match):
        ARSM_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, X)


def test_config_estimator_rejects_an_unknown_estimator():
    with pytest.raises(ValueError, match="config_estimator: unknown estimator 'gumbel'"):
        config_estimator(lambda: None, "gumbel")
    with pytest.raises(ValueError, match="unknown estimator 'gumbel'"):
        pytest.importorskip("numpyro_arsm").config_estimator(lambda: None, "gumbel")


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.trace` is deprecated:DeprecationWarning")
def test_compiled_elbo_refuses_a_per_site_ars(fresh_param_store):
    def model(x):
        pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))

    def guide(x):
        pyro.sample("z", dist.Categorical(logits=pyro.param("l", torch.zeros(3))),
                    infer={"estimator": "ars"})

    with pytest.raises(NotImplementedError, match="guide site 'z' asks for estimator='ars'"):
        JitARSM_ELBO(ignore_jit_warnings=True).differentiable_loss(model, guide, X)


def test_the_handler_is_exported_by_both_packages():
    numpyro_arsm = pytest.importorskip("numpyro_arsm")
    assert "config_estimator" in pyro_arsm.__all__ and "config_estimator" in numpyro_arsm.__all__


# ---------------------------------------------------------------------------------------------
# NumPyro
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # (20 s of XLA compilation; the Pyro z-test above is quick)
def test_numpyro_per_site_choice_is_unbiased_and_counted():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as ndist
    from numpyro_exact import check_unbiased

    from numpyro_arsm import ARSM_ELBO as NumPyroARSM
    from numpyro_arsm import config_estimator as numpyro_config

    data = jnp.array([0.3, -1.2, 2.0])

    def model(x):
        a = numpyro.param("a", jnp.array([0.0, 1.0, -1.0]))
        b = numpyro.sample("b", ndist.Bernoulli(jnp.full(2, 0.5)).to_event(1))
        with numpyro.plate("data", 3):
            z = numpyro.sample("z", ndist.Categorical(logits=jnp.zeros(3)))
            numpyro.sample("x", ndist.Normal(a[z] + 0.4 * b.sum(-1), 1.0), obs=x)

    def guide(x):
        beta = numpyro.param("beta", jnp.array([0.3, -0.4]))
        phi = numpyro.param("phi", jnp.tile(jnp.array([0.2, -0.1, 0.0]), (3, 1)))
        numpyro.sample("b", ndist.Bernoulli(logits=beta).to_event(1))
        with numpyro.plate("data", 3):
            numpyro.sample("z", ndist.Categorical(logits=phi))

    params = {"a": jnp.array([0.0, 1.0, -1.0]), "beta": jnp.array([0.3, -0.4]),
              "phi": jnp.tile(jnp.array([0.2, -0.1, 0.0]), (3, 1))}
    local_z = numpyro_config(guide, "local", predicate=lambda site: site["name"] == "z")
    check_unbiased(model, local_z, params, ["phi", "beta", "a"], (data,), particles=100,
                   draws=20, label="numpyro: local z, DisARM b")
    elbo = NumPyroARSM(num_particles=2)
    elbo.loss(jax.random.PRNGKey(0), params, model, local_z, data)
    # z: its C = 3 columns; b: DisARM's antithetic pair (one evaluation); per particle
    assert elbo.last_num_pseudo_evaluations == 2 * (3 + 1)
