"""NumPyro ARSM_ELBO gradients are unbiased: Monte Carlo means against exact gradients.

Each draw is ``jax.grad`` of ``ARSM_ELBO(num_particles=K).loss`` under ``jit`` (the mean of K
vmapped particles); the exact references enumerate the guide's discrete sites by hand
(``numpyro_exact.enum_loss``).
"""

import pytest

jax = pytest.importorskip("jax")
numpyro = pytest.importorskip("numpyro")

import jax.numpy as jnp  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro import handlers  # noqa: E402
from numpyro_exact import (  # noqa: E402
    assert_unbiased,
    check_unbiased,
    exact_gradient,
    gradient_draws,
)
from numpyro_models import (  # noqa: E402
    BERN,
    BERN_DATA,
    CHAIN,
    EVENT,
    PLATED,
    PLATED_DATA,
    SINGLE,
    VAE,
    VAE_DATA,
    bernoulli_guide,
    bernoulli_model,
    chain_guide,
    chain_model,
    plated_guide,
    plated_model,
    single_guide,
    single_model,
    to_event_guide,
    to_event_model,
    vae_guide,
    vae_model,
)

from numpyro_arsm import ARSM_ELBO  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Models used by this module only (the shared ones are in numpyro_models.py)
# ---------------------------------------------------------------------------------------------

BERN_EVENT = {"v": jnp.array([1.0, -2.0, 0.5]), "alpha": jnp.array([0.5, -0.3, 1.0])}


def bernoulli_event_model(x):
    v = numpyro.param("v", BERN_EVENT["v"])
    b = numpyro.sample("b", dist.Bernoulli(probs=0.5 * jnp.ones(3)).to_event(1))
    mean = jnp.tanh((b * v).sum(-1)) + b[..., 0] * b[..., 1]
    numpyro.sample("x", dist.Normal(mean, 0.5), obs=x)


def bernoulli_event_guide(x):
    numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("alpha", BERN_EVENT["alpha"]))
                   .to_event(1))


UP = {"locs": jnp.array([-1.0, 0.0, 1.5]), "mu": jnp.array(0.3),
      "a": jnp.array([1.0, -0.5, 0.2]), "b": jnp.array([0.1, 0.2, -0.3])}


def upstream_model(x):
    locs = numpyro.param("locs", UP["locs"])
    u = numpyro.sample("u", dist.Normal(0.0, 1.0))
    z = numpyro.sample("z", dist.Categorical(logits=jnp.stack([u, -u, 0.5 * u], -1)))
    numpyro.sample("x", dist.Normal(locs[z] + u, 1.0), obs=x)


def upstream_guide(x):
    u = numpyro.sample("u", dist.Normal(numpyro.param("mu", UP["mu"]), 0.8))
    logits = numpyro.param("a", UP["a"]) * u[..., None] + numpyro.param("b", UP["b"])
    numpyro.sample("z", dist.Categorical(logits=logits))


DOWN = {"locs": jnp.array([-1.0, 0.5, 2.0]), "phi": jnp.array([0.2, -0.3, 0.5]),
        "m": jnp.array([0.0, 1.0, -1.0])}


def downstream_model(x):
    locs = numpyro.param("locs", DOWN["locs"])
    z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros(3)))
    w = numpyro.sample("w", dist.Normal(locs[z], 1.0))
    numpyro.sample("x", dist.Normal(w, 1.0), obs=x)


def downstream_guide(x):
    z = numpyro.sample("z", dist.Categorical(logits=numpyro.param("phi", DOWN["phi"])))
    numpyro.sample("w", dist.Normal(numpyro.param("m", DOWN["m"])[z], 0.7))




MASK = jnp.array([True, False, True, True])
MASK_DATA = jnp.array([0.0, 1.0, 2.5, -1.0])
MASKED = {"locs": jnp.array([-1.0, 0.0, 1.0]),
          "phi": jnp.array([[0.5, -0.5, 0.0], [0.0, 1.0, -1.0], [-0.5, 0.0, 0.5],
                            [1.0, 0.0, 0.0]])}


def masked_model(data, mask=MASK, how="handler"):
    locs = numpyro.param("locs", MASKED["locs"])
    with numpyro.plate("data", data.shape[0]):
        prior = dist.Categorical(logits=jnp.zeros(3))
        if how == "handler":
            with handlers.mask(mask=mask):
                z = numpyro.sample("z", prior)
                numpyro.sample("x", dist.Normal(locs[z], 1.0), obs=data)
        else:
            z = numpyro.sample("z", prior.mask(mask))
            numpyro.sample("x", dist.Normal(locs[z], 1.0).mask(mask), obs=data)


def masked_guide(data, mask=MASK, how="handler"):
    phi = numpyro.param("phi", MASKED["phi"])
    with numpyro.plate("data", data.shape[0]):
        if how == "handler":
            with handlers.mask(mask=mask):
                numpyro.sample("z", dist.Categorical(logits=phi))
        else:
            numpyro.sample("z", dist.Categorical(logits=phi).mask(mask))


PROBS = {"locs": jnp.array([-1.0, 0.5, 2.0]),
         "probs": jnp.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]]), "p": jnp.array([0.3, 0.8])}


def probs_model(data):
    locs = numpyro.param("locs", PROBS["locs"])
    with numpyro.plate("data", data.shape[0]):
        z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros(3)))
        b = numpyro.sample("b", dist.Bernoulli(probs=0.5))
        numpyro.sample("x", dist.Normal(locs[z] + b, 1.0), obs=data)


def probs_guide(data):
    probs = numpyro.param("probs", PROBS["probs"])
    p = numpyro.param("p", PROBS["p"])
    with numpyro.plate("data", data.shape[0]):
        numpyro.sample("z", dist.Categorical(probs=probs))
        numpyro.sample("b", dist.Bernoulli(probs=p))


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["arsm", "ars", "rloo"])
def test_unbiased_single_categorical(estimator):
    check_unbiased(single_model, single_guide, SINGLE, ["phi", "locs"], (jnp.array(0.7),),
                   estimator=estimator, label=f"numpyro single categorical, {estimator}")


@pytest.mark.parametrize("pseudo_map", ["vmap", "map"])
def test_unbiased_to_event_non_separable(pseudo_map):
    check_unbiased(to_event_model, to_event_guide, EVENT, ["phi", "scale"], (jnp.array(0.4),),
                   pseudo_map=pseudo_map, pseudo_batch_size=4,
                   label=f"numpyro to_event, pseudo_map={pseudo_map}")


def test_unbiased_plate_under_handlers_scale():
    # the scaled ELBO is 2.5 x the unscaled one (reference independent of scale handling)
    check_unbiased(plated_model, plated_guide, PLATED, ["phi", "locs"], (PLATED_DATA, 2.5),
                   exact_args=(PLATED_DATA,), scale=2.5,
                   label="numpyro plate + handlers.scale(2.5)")


def test_unbiased_chained_categoricals():
    check_unbiased(chain_model, chain_guide, CHAIN, ["phi1", "phi2", "locs"], (jnp.array(1.3),),
                   label="numpyro chained categoricals")


@pytest.mark.parametrize("estimator", ["arsm", "ar", "rloo"])
def test_unbiased_bernoulli_plate(estimator):
    check_unbiased(bernoulli_model, bernoulli_guide, BERN, ["alpha", "w"], (BERN_DATA,),
                   draws=100 if estimator == "ar" else 40, estimator=estimator,
                   label=f"numpyro Bernoulli plate, {estimator}")


def test_unbiased_bernoulli_to_event_non_separable():
    check_unbiased(bernoulli_event_model, bernoulli_event_guide, BERN_EVENT, ["alpha", "v"],
                   (jnp.array(0.3),), label="numpyro Bernoulli to_event")


@pytest.mark.slow
def test_unbiased_reparameterized_site_upstream():
    check_unbiased(upstream_model, upstream_guide, UP, ["mu", "a", "b", "locs"],
                   (jnp.array(0.9),), draws=60, exact_keys=4000,
                   label="numpyro reparameterized site upstream")


@pytest.mark.slow
def test_unbiased_reparameterized_site_downstream():
    # w ~ q(w | z) is re-sampled (same noise) at each pseudo action
    check_unbiased(downstream_model, downstream_guide, DOWN, ["phi", "m", "locs"],
                   (jnp.array(1.2),), draws=60, exact_keys=4000,
                   label="numpyro reparameterized site downstream")


def test_unbiased_model_and_guide_weights():
    check_unbiased(vae_model, vae_guide, VAE, ["enc_w", "enc_b", "dec_w", "dec_b"], (VAE_DATA,),
                   label="numpyro encoder and decoder weights")


@pytest.mark.parametrize("how", ["handler", "distribution"])
def test_unbiased_masked_elements(how):
    keep = jnp.array([0, 2, 3])
    # masked elements drop out of the ELBO: exact = the unmasked data alone
    exact_params = {"locs": MASKED["locs"], "phi": MASKED["phi"]}

    def sub_guide(data, mask=True, how=how):
        phi = numpyro.param("phi", MASKED["phi"])
        with numpyro.plate("data", data.shape[0]):
            numpyro.sample("z", dist.Categorical(logits=phi[keep]))

    exact, _ = exact_gradient(masked_model, sub_guide, exact_params, ["phi", "locs"],
                              MASK_DATA[keep], True, how)
    elbo = ARSM_ELBO(num_particles=200)
    draws = gradient_draws(elbo, masked_model, masked_guide, MASKED, ["phi", "locs"], 40,
                           MASK_DATA, MASK, how)
    assert (draws[:, 3:6] == 0).all()  # element 1 is masked out: exactly zero
    assert_unbiased(draws, exact, label=f"numpyro mask via {how}")


@pytest.mark.slow  # (quick-stage budget: the full stage runs it)
def test_unbiased_probs_parameterization():
    # probs live on the simplex: compare the gradients' components along it (row-centred), as a
    # simplex-constrained numpyro.param would see them
    names = ["probs", "p", "locs"]
    data = (jnp.array([0.3, 1.8]),)
    exact, _ = exact_gradient(probs_model, probs_guide, PROBS, names, *data)
    draws = gradient_draws(ARSM_ELBO(num_particles=200), probs_model, probs_guide, PROBS, names,
                           40, *data)

    def centre(g):
        block = g[..., :6].reshape(g.shape[:-1] + (2, 3))
        block = block - block.mean(-1, keepdims=True)
        return jnp.concatenate([block.reshape(g.shape[:-1] + (6,)), g[..., 6:]], -1)

    assert_unbiased(centre(draws), centre(exact),
                    label="numpyro probs-parameterized Categorical and Bernoulli")


NESTED_DATA = jnp.array([[0.3, -1.0], [2.0, 0.5]])
NESTED = {"locs": jnp.array([-1.0, 0.5, 1.5]), "psi": jnp.array([0.3, -0.2]),
          "phi": jnp.array([[[0.5, -0.5, 0.0], [0.0, 1.0, -1.0]],
                            [[-0.5, 0.0, 0.5], [1.0, 0.0, 0.0]]])}


def nested_model(data):
    locs = numpyro.param("locs", NESTED["locs"])
    g = numpyro.sample("g", dist.Categorical(logits=jnp.zeros(2)))
    with numpyro.plate("rows", 2, dim=-2), numpyro.plate("cols", 2, dim=-1):
        z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros(3)))
        numpyro.sample("x", dist.Normal(locs[z] + g, 1.0), obs=data)


def nested_guide(data):
    g = numpyro.sample("g", dist.Categorical(logits=numpyro.param("psi", NESTED["psi"])))
    phi = numpyro.param("phi", NESTED["phi"])
    with numpyro.plate("rows", 2, dim=-2), numpyro.plate("cols", 2, dim=-1):
        numpyro.sample("z", dist.Categorical(logits=phi + 0.5 * g))


@pytest.mark.slow
def test_unbiased_nested_plates_under_a_global_categorical():
    check_unbiased(nested_model, nested_guide, NESTED, ["phi", "psi", "locs"], (NESTED_DATA,),
                   label="numpyro nested plates + global categorical")


@pytest.mark.parametrize("num_rloo_samples", [None, 8])
def test_unbiased_rloo_on_to_event(num_rloo_samples):
    check_unbiased(to_event_model, to_event_guide, EVENT, ["phi", "scale"], (jnp.array(0.4),),
                   estimator="rloo", num_rloo_samples=num_rloo_samples,
                   label=f"numpyro RLOO({num_rloo_samples}) to_event")
