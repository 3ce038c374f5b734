"""NumPyro test models shared by more than one test module: the same families as
``pyro_models.py``, each with its initial parameter values (``PLATED``, ...) and data."""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro import handlers

SINGLE = {"locs": jnp.array([-2.0, -1.0, 0.0, 1.0, 2.0]),
          "phi": jnp.array([0.3, -0.5, 1.0, 0.0, -1.2])}


def single_model(x):
    locs = numpyro.param("locs", SINGLE["locs"])
    z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros(5)))
    numpyro.sample("x", dist.Normal(locs[z], 1.0), obs=x)


def single_guide(x):
    numpyro.sample("z", dist.Categorical(logits=numpyro.param("phi", SINGLE["phi"])))


W_EVENT = jnp.array([[0.5, -1.0, 2.0], [1.0, 0.3, -0.7], [-1.5, 0.8, 0.2]])
EVENT = {"scale": jnp.array(1.0),
         "phi": jnp.array([[0.2, -0.4, 0.1], [1.0, 0.0, -0.5], [-0.3, 0.6, 0.0]])}


def to_event_model(x):
    scale = numpyro.param("scale", EVENT["scale"])
    z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros((3, 3))).to_event(1))
    h = jnp.take_along_axis(jnp.broadcast_to(W_EVENT, z.shape + (3,)), z[..., None], -1)[..., 0]
    mean = jnp.tanh(h.sum(-1)) + 0.5 * h[..., 0] * h[..., 1] * h[..., 2]
    numpyro.sample("x", dist.Normal(mean * scale, 0.5), obs=x)


def to_event_guide(x):
    numpyro.sample("z", dist.Categorical(logits=numpyro.param("phi", EVENT["phi"])).to_event(1))


PLATED_DATA = jnp.array([0.0, 1.0, 2.5])
PLATED = {"locs": jnp.array([-1.0, 0.0, 1.0, 2.0]),
          "phi": jnp.array([[0.5, -0.5, 0.0, 0.2], [0.0, 1.0, -1.0, 0.0],
                            [-0.5, 0.0, 0.5, 1.0]])}


def plated_model(data, scale=1.0):
    locs = numpyro.param("locs", PLATED["locs"])
    with numpyro.plate("data", data.shape[0]), handlers.scale(scale=scale):
        z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros(4)))
        numpyro.sample("x", dist.Normal(locs[z], 1.0), obs=data)


def plated_guide(data, scale=1.0):
    phi = numpyro.param("phi", PLATED["phi"])
    with numpyro.plate("data", data.shape[0]), handlers.scale(scale=scale):
        numpyro.sample("z", dist.Categorical(logits=phi))


SUB_DATA = jnp.array([-1.0, 0.2, 2.1, 0.9, -0.4, 1.7])
SUB = {"locs": jnp.array([-1.0, 0.5, 2.0]),
       "phi": jnp.sin(jnp.linspace(-1, 1, 18).reshape(6, 3)) * 2}


def subsampled_model(data, subsample_size=None):
    locs = numpyro.param("locs", SUB["locs"])
    with numpyro.plate("data", data.shape[0], subsample_size=subsample_size) as idx:
        z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros(3)))
        numpyro.sample("x", dist.Normal(locs[z], 1.0), obs=data[idx])


def subsampled_guide(data, subsample_size=None):
    phi = numpyro.param("phi", SUB["phi"])
    with numpyro.plate("data", data.shape[0], subsample_size=subsample_size) as idx:
        numpyro.sample("z", dist.Categorical(logits=phi[idx]))


P_CHAIN = jnp.array([[1.0, 0.0, -1.0], [0.0, 0.5, 0.0], [-1.0, 0.0, 1.0]])
CHAIN = {"locs": jnp.array([[-2.0, -1.0, 0.0], [0.0, 1.0, 2.0], [1.0, 3.0, -1.0]]),
         "phi1": jnp.array([0.4, -0.2, 0.0]),
         "phi2": jnp.array([[1.0, -1.0, 0.0], [0.0, 0.0, 0.5], [-0.5, 1.0, 0.0]])}


def chain_model(x):
    locs = numpyro.param("locs", CHAIN["locs"])
    z1 = numpyro.sample("z1", dist.Categorical(logits=jnp.array([0.2, -0.3, 0.1])))
    z2 = numpyro.sample("z2", dist.Categorical(logits=P_CHAIN[z1]))
    numpyro.sample("x", dist.Normal(locs[z1, z2], 1.0), obs=x)


def chain_guide(x):
    phi2 = numpyro.param("phi2", CHAIN["phi2"])
    z1 = numpyro.sample("z1", dist.Categorical(logits=numpyro.param("phi1", CHAIN["phi1"])))
    numpyro.sample("z2", dist.Categorical(logits=phi2[z1]))


BERN_DATA = jnp.array([0.0, 1.0, 2.5, -1.0])
# (no logit exactly 0: jax.grad of NumPyro's Bernoulli log_prob has a kink there, which would
# spoil the exact reference)
BERN = {"w": jnp.array([-1.0, 1.5]), "alpha": jnp.array([0.3, -1.0, 0.1, 1.2])}


def bernoulli_model(data):
    w = numpyro.param("w", BERN["w"])
    with numpyro.plate("data", data.shape[0]):
        b = numpyro.sample("b", dist.Bernoulli(probs=0.4))
        numpyro.sample("x", dist.Normal(w[b], 1.0), obs=data)


def bernoulli_guide(data):
    alpha = numpyro.param("alpha", BERN["alpha"])
    with numpyro.plate("data", data.shape[0]):
        numpyro.sample("b", dist.Bernoulli(logits=alpha))


def poisson_model(x):
    locs = numpyro.param("locs", jnp.array([-1.0, 0.5, 2.0]))
    z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros(3)))
    n = numpyro.sample("n", dist.Poisson(2.0))
    numpyro.sample("x", dist.Normal(locs[z] + 0.3 * n, 1.0), obs=x)


def poisson_guide(x):
    numpyro.sample("z", dist.Categorical(logits=numpyro.param("phi", jnp.array([0.2, -0.3, 0.5]))))
    numpyro.sample("n", dist.Poisson(numpyro.param("rate", jnp.array(1.5))))


# a VAE in miniature: encoder and decoder parameters, a plate (element-separable)
VAE_DATA = jnp.array([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
_k1, _k2 = jax.random.split(jax.random.PRNGKey(1))
VAE = {"enc_w": 0.5 * jax.random.normal(_k1, (4, 3)), "enc_b": jnp.zeros(3),
       "dec_w": 0.5 * jax.random.normal(_k2, (3, 4)), "dec_b": jnp.zeros(4)}


def vae_model(x):
    w, b = numpyro.param("dec_w", VAE["dec_w"]), numpyro.param("dec_b", VAE["dec_b"])
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros(3)))
        logits = jax.nn.one_hot(z, 3) @ w + b
        numpyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)


def vae_guide(x):
    w, b = numpyro.param("enc_w", VAE["enc_w"]), numpyro.param("enc_b", VAE["enc_b"])
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("z", dist.Categorical(logits=x @ w + b))
