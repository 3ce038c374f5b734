"""Minimal reproduction: NumPyro 0.22's TraceGraph_ELBO counts ``handlers.scale`` twice in the
score-function gradient of a categorical guide site; numpyro_arsm.ARSM_ELBO does not.

Prints the exact gradient of -ELBO w.r.t. the guide logits (by enumeration), and the Monte Carlo
means of TraceGraph_ELBO and ARSM_ELBO (4000 particles x 20 draws).
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.infer import TraceGraph_ELBO

from numpyro_arsm import ARSM_ELBO

SCALE = 2.5
data = jnp.array([0.0, 1.0, 2.5])


def model(data):
    with numpyro.plate("data", 3), handlers.scale(scale=SCALE):
        z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros(2)))
        numpyro.sample("x", dist.Normal(2.0 * z, 1.0), obs=data)


def guide(data):
    phi = numpyro.param("phi", jnp.zeros((3, 2)))
    with numpyro.plate("data", 3), handlers.scale(scale=SCALE):
        numpyro.sample("z", dist.Categorical(logits=phi))


def exact_loss(phi):
    # the data points are independent: -ELBO = -scale * sum_n sum_z q(z) [log p - log q]
    log_q = jax.nn.log_softmax(phi, -1)
    log_p = jnp.log(0.5) + dist.Normal(2.0 * jnp.arange(2.0), 1.0).log_prob(data[:, None])
    return -SCALE * (jnp.exp(log_q) * (log_p - log_q)).sum()


def mean_gradient(elbo):
    grad = jax.jit(jax.grad(lambda p, k: elbo.loss(k, {"phi": p}, model, guide, data)))
    draws = np.stack([grad(jnp.zeros((3, 2)), k)
                      for k in jax.random.split(jax.random.PRNGKey(0), 20)])
    return draws.mean(0), draws.std(0) / np.sqrt(len(draws))


if __name__ == "__main__":
    exact = np.asarray(jax.grad(exact_loss)(jnp.zeros((3, 2))))
    print(f"numpyro {numpyro.__version__}, handlers.scale(scale={SCALE}); d(-ELBO)/d logits[:, 1]:")
    print("  exact          ", np.round(exact[:, 1], 3))
    for name, elbo in (("TraceGraph_ELBO", TraceGraph_ELBO(num_particles=4000)),
                       ("ARSM_ELBO", ARSM_ELBO(num_particles=4000))):
        mean, se = mean_gradient(elbo)
        ratio = (mean * exact).sum() / (exact * exact).sum()  # along the exact gradient
        print(f"  {name:15s}", np.round(mean[:, 1], 3), "+/-", np.round(se[:, 1], 3),
              f"  ratio to exact {ratio:.2f}")
