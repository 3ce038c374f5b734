"""numpyro_arsm.AutoCategorical: unbiased ARSM gradients through it, composition, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro import handlers
from numpyro.infer import SVI
from numpyro.infer.autoguide import AutoDelta, AutoGuideList
from numpyro_exact import check_unbiased

from numpyro_arsm import ARSM_ELBO, AutoCategorical, discrete_latent_sites

DATA = jnp.array([-1.3, 2.1])  # small: the exact reference sums over 3^2 x 2^2 values


def mixed_model(data):
    """Global continuous latent, plated categorical and Bernoulli latents."""
    loc = numpyro.sample("loc", dist.Normal(jnp.zeros(3), 2.0).to_event(1))
    with numpyro.plate("data", data.shape[0]):
        z = numpyro.sample("z", dist.Categorical(logits=jnp.array([0.2, -0.4, 0.1])))
        b = numpyro.sample("b", dist.Bernoulli(probs=0.3))
        numpyro.sample("x", dist.Normal(jnp.take_along_axis(
            jnp.broadcast_to(loc[..., None, :], z.shape + (3,)), z[..., None], -1)[..., 0]
            + 1.5 * b, 1.0), obs=data)


def combined_guide(model):
    discrete = ["z", "b"]
    guide = AutoGuideList(handlers.block(model, hide=discrete))
    guide.append(AutoDelta(handlers.block(model, hide=discrete)))
    guide.append(AutoCategorical(model, sites=discrete, init="uniform"))
    return guide


def init_params(guide, *args, seed=0):
    """Params of the guide (and model), moved off their initial values."""
    tr = handlers.trace(handlers.seed(guide, jax.random.PRNGKey(seed))).get_trace(*args)
    params = {n: s["value"] for n, s in tr.items() if s["type"] == "param"}
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(params))
    return {n: v + 0.5 * jax.random.normal(k, jnp.shape(v))
            for (n, v), k in zip(params.items(), keys, strict=True)}


def test_discrete_latent_sites_lists_only_discrete_latents():
    assert discrete_latent_sites(mixed_model, DATA) == ["z", "b"]


@pytest.mark.slow  # (10 s or more: the quick stage has no room)
def test_unbiased_local_logits_in_auto_guide_list():
    guide = combined_guide(mixed_model)
    params = init_params(guide, DATA)
    assert {"auto_z_logits", "auto_b_logits"} <= set(params)
    assert params["auto_z_logits"].shape == (2, 3) and params["auto_b_logits"].shape == (2,)
    check_unbiased(mixed_model, guide, params, sorted(params), (DATA,),
                   label="numpyro AutoGuideList(AutoDelta, AutoCategorical)")


def encoder(data):
    w_z = numpyro.param("enc_z_w", jnp.array([0.5, -0.3, 0.8]))
    b_z = numpyro.param("enc_z_b", jnp.zeros(3))
    w_w = numpyro.param("enc_w_w", jnp.array([[0.7, -0.4], [-0.2, 0.9]]))
    return {"z": data[:, None] * w_z + b_z, "w": w_w * data.mean()}


def amortized_model(data):
    locs = numpyro.param("locs", jnp.array([-1.0, 0.5, 2.0]))
    with numpyro.plate("data", data.shape[0]):
        z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros(3)))
        numpyro.sample("x", dist.Normal(locs[z], 1.0), obs=data)
    # a non-separable pair of codes (.to_event): the cost depends on both jointly
    w = numpyro.sample("w", dist.Categorical(logits=jnp.zeros((2, 2))).to_event(1))
    numpyro.sample("y", dist.Normal(2.0 * (w[..., 0] == w[..., 1]), 0.5), obs=1.0)


@pytest.mark.slow  # (quick-stage budget: the full stage runs it)
def test_unbiased_amortized_logits_and_to_event():
    guide = AutoCategorical(amortized_model, network=encoder)
    data = DATA
    params = init_params(guide, data)
    assert not any(n.endswith("_logits") for n in params), "amortized sites got local logits"
    params["locs"] = jnp.array([-1.0, 0.5, 2.0])
    check_unbiased(amortized_model, guide, params, sorted(params), (data,),
                   label="numpyro amortized AutoCategorical, to_event")


@pytest.mark.slow  # (quick-stage budget: the full stage runs it)
def test_subsampled_plate_uses_full_size_logits():
    data = jnp.arange(10.0)

    def model(data):
        with numpyro.plate("data", data.shape[0], subsample_size=4):
            z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros(3)))
            numpyro.sample("x", dist.Normal(z.astype(jnp.float32), 1.0),
                           obs=numpyro.subsample(data, event_dim=0))

    guide = AutoCategorical(model)
    svi = SVI(model, guide, optax.adam(0.1), ARSM_ELBO())
    result = svi.run(jax.random.PRNGKey(0), 5, data, progress_bar=False)
    assert np.isfinite(result.losses).all()
    assert result.params["auto_z_logits"].shape == (10, 3)
    assert guide.median(result.params)["z"].shape == (10,)
    draws = guide.sample_posterior(jax.random.PRNGKey(1), result.params, data, sample_shape=(5,))
    assert draws["z"].shape == (5, 4)


def test_prior_initialization_copies_model_logits():
    prior = jnp.array([1.0, -2.0, 0.5])

    def model():
        with numpyro.plate("p", 2):
            numpyro.sample("z", dist.Categorical(logits=prior))

    params = init_params(AutoCategorical(model), seed=0)
    tr = handlers.trace(handlers.seed(AutoCategorical(model), 0)).get_trace()
    assert np.allclose(tr["auto_z_logits"]["value"], jax.nn.log_softmax(prior) * jnp.ones((2, 1)))
    assert params["auto_z_logits"].shape == (2, 3)


def test_svi_learns_bernoulli_posterior():
    def model(x):
        b = numpyro.sample("b", dist.Bernoulli(0.5))
        numpyro.sample("x", dist.Normal(2.0 * b, 1.0), obs=x)

    x = 1.6
    guide = AutoCategorical(model, init="uniform")
    svi = SVI(model, guide, optax.adam(0.1), ARSM_ELBO(num_particles=8))
    result = svi.run(jax.random.PRNGKey(0), 250, x, progress_bar=False)
    logit = float(result.params["auto_b_logits"])
    exact = float(dist.Normal(2.0, 1.0).log_prob(x) - dist.Normal(0.0, 1.0).log_prob(x))
    assert abs(logit - exact) < 0.25, (logit, exact)


def test_error_on_continuous_site_names_the_fix():
    with pytest.raises(ValueError, match=r"site 'loc'.*continuous.*AutoGuideList"):
        handlers.seed(AutoCategorical(mixed_model), 0)(DATA)


def test_error_on_model_enumerated_site():
    def model():
        numpyro.sample("z", dist.Categorical(logits=jnp.zeros(3)), infer={"enumerate": "parallel"})

    with pytest.raises(ValueError, match=r"site 'z' is enumerated in the model"):
        handlers.seed(AutoCategorical(model), 0)()


def test_error_on_unsupported_discrete_distribution():
    def model():
        numpyro.sample("n", dist.Poisson(3.0))

    with pytest.raises(NotImplementedError, match=r"site 'n'.*Poisson"):
        handlers.seed(AutoCategorical(model), 0)()


def test_error_when_block_expose_hides_the_plates():
    with pytest.raises(ValueError, match=r"plate 'data' of site 'z' is hidden.*sites="):
        handlers.seed(AutoCategorical(handlers.block(mixed_model, expose=["z", "b"])), 0)(DATA)


def test_error_on_unknown_site_name():
    with pytest.raises(ValueError, match=r"\['q'\] are not latent sample sites"):
        handlers.seed(AutoCategorical(mixed_model, sites=["z", "q"]), 0)(DATA)


def test_network_must_return_a_dict():
    def model():
        numpyro.sample("z", dist.Categorical(logits=jnp.zeros(3)))

    with pytest.raises(TypeError, match="must return a dict"):
        handlers.seed(AutoCategorical(model, network=lambda: jnp.zeros(3)), 0)()


def test_svi_with_auto_normal_and_auto_categorical():
    # a sampled continuous guide (AutoNormal) upstream of the ARSM sites, jitted by SVI.run
    from numpyro.infer.autoguide import AutoNormal

    discrete = discrete_latent_sites(mixed_model, DATA)
    guide = AutoGuideList(handlers.block(mixed_model, hide=discrete))
    guide.append(AutoNormal(handlers.block(mixed_model, hide=discrete)))
    guide.append(AutoCategorical(mixed_model, sites=discrete))
    svi = SVI(mixed_model, guide, optax.adam(0.05), ARSM_ELBO(num_particles=4))
    result = svi.run(jax.random.PRNGKey(0), 30, DATA, progress_bar=False)
    assert np.isfinite(result.losses).all()
    assert all(np.isfinite(v).all() for v in result.params.values())
