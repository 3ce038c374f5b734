"""The categorical VAE, one definition per backend, shared by ``quickstart.py``,
``categorical_vae.py`` and the benchmarks (``benchmarks/vae_bench.py``, ``numpyro_vs_pyro.py``,
``profile_pyro_step.py``, which load this file by path).

The model of Yin, Yue & Zhou (ICML 2019, section 4.2), NUM_LATENTS categorical latents of
NUM_CLASSES classes each:

    layers=1   q(z1 | x):  encoder D-512-256-200 (leaky ReLU 0.2) logits;  p(z1) uniform;
               p(x | z1):  decoder 200-256-512-D (leaky ReLU 0.2), Bernoulli
    layers=2   adds a second stochastic layer: q(z2 | z1) a linear layer 200 -> 200 logits
               (a second, chained categorical guide site); p(z2) uniform,
               p(z1 | z2) a linear layer 200 -> 200 logits

The weights are drawn once in numpy (:func:`initial_weights`), so both backends and every
estimator start from the same point. Each backend is imported only by its own VAE: the NumPyro
path never imports torch.
"""

import math

import numpy as np

NUM_LATENTS = 20
NUM_CLASSES = 10
LATENT_DIM = NUM_LATENTS * NUM_CLASSES  # one-hot code, flattened
ENCODER_HIDDEN = (512, 256)
DECODER_HIDDEN = (256, 512)
LEAKY_SLOPE = 0.2


def linear_init(rng, fan_in, fan_out):
    """torch.nn.Linear's default initialization, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), in numpy:
    ``w`` is ``[fan_in, fan_out]`` (``x @ w + b``), ``b`` is ``[fan_out]``."""
    bound = 1.0 / math.sqrt(fan_in)
    w = rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32)
    b = rng.uniform(-bound, bound, (fan_out,)).astype(np.float32)
    return w, b


def initial_weights(num_pixels, layers=1, seed=0, encoder_hidden=ENCODER_HIDDEN,
                    decoder_hidden=DECODER_HIDDEN):
    """All network weights as numpy arrays: ``{network name: [(w, b), ...]}``."""
    rng = np.random.RandomState(seed)

    def mlp(sizes):
        return [linear_init(rng, a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]

    weights = {
        "encoder": mlp((num_pixels,) + tuple(encoder_hidden) + (LATENT_DIM,)),
        "decoder": mlp((LATENT_DIM,) + tuple(decoder_hidden) + (num_pixels,)),
    }
    if layers == 2:
        weights["guide_z2"] = mlp((LATENT_DIM, LATENT_DIM))  # q(z2 | z1) logits
        weights["prior_z1"] = mlp((LATENT_DIM, LATENT_DIM))  # p(z1 | z2) logits
    return weights


class PyroVAE:
    """Model and guide of the categorical VAE in Pyro.

    Both broadcast on the left: ``ARSM_ELBO`` evaluates a site's pseudo actions in one batched
    pass with an extra dim left of the ``data`` plate, so a code ``z`` may be
    ``[..., batch, NUM_LATENTS, NUM_CLASSES]``: flatten with ``reshape(z.shape[:-2] + (-1,))``,
    never ``view(batch, -1)``; ``nn.Linear`` acts on the last dim.

    ``temperature`` (model and guide argument): ``None`` for the discrete VAE; a tensor makes
    every latent a ``RelaxedOneHotCategoricalStraightThrough`` at that temperature (gumbel).

    :param dict weights: :func:`initial_weights`.
    :param int layers: stochastic layers, 1 or 2.
    :param device: torch device of the networks.
    :param str prefix: prepended to the networks' names in Pyro's param store (keeps several
        VAEs apart in one store).
    """

    def __init__(self, weights, layers=1, device="cpu", prefix=""):
        import torch
        from torch import nn

        def mlp(pairs):
            modules = []
            for i, (w, b) in enumerate(pairs):
                linear = nn.Linear(*w.shape)
                with torch.no_grad():
                    linear.weight.copy_(torch.as_tensor(w.T))
                    linear.bias.copy_(torch.as_tensor(b))
                modules.append(linear)
                if i < len(pairs) - 1:
                    modules.append(nn.LeakyReLU(LEAKY_SLOPE))
            return nn.Sequential(*modules).to(device)

        self.layers = layers
        self.prefix = prefix
        self.encoder = mlp(weights["encoder"])
        self.decoder = mlp(weights["decoder"])
        if layers == 2:
            self.guide_z2 = mlp(weights["guide_z2"])
            self.prior_z1 = mlp(weights["prior_z1"])

    @staticmethod
    def latent(logits, temperature):
        import pyro.distributions as dist

        if temperature is None:
            return dist.OneHotCategorical(logits=logits).to_event(1)
        # No support check: the relaxed sample is clamped away from 0 and 1 (clamp_probs), so once
        # the encoder is confident it leaves the simplex by more than the check's tolerance.
        return dist.RelaxedOneHotCategoricalStraightThrough(
            temperature, logits=logits, validate_args=False).to_event(1)

    @staticmethod
    def code_to_logits(network, z):
        """``[..., NUM_LATENTS, NUM_CLASSES]`` one-hot code -> logits of the same shape."""
        return network(z.reshape(z.shape[:-2] + (-1,))).reshape(z.shape)

    def model(self, x, temperature=None):
        import pyro
        import pyro.distributions as dist

        pyro.module(self.prefix + "decoder", self.decoder)
        uniform_logits = x.new_zeros(NUM_LATENTS, NUM_CLASSES)
        with pyro.plate("data", x.shape[-2]):
            if self.layers == 2:
                pyro.module(self.prefix + "prior_z1", self.prior_z1)
                z2 = pyro.sample("z2", self.latent(uniform_logits, temperature))
                z1_logits = self.code_to_logits(self.prior_z1, z2)
            else:
                z1_logits = uniform_logits
            z1 = pyro.sample("z1", self.latent(z1_logits, temperature))
            pixel_logits = self.decoder(z1.reshape(z1.shape[:-2] + (-1,)))
            pyro.sample("x", dist.Bernoulli(logits=pixel_logits).to_event(1), obs=x)

    def guide(self, x, temperature=None):
        import pyro

        pyro.module(self.prefix + "encoder", self.encoder)
        with pyro.plate("data", x.shape[-2]):
            z1_logits = self.encoder(x).reshape(x.shape[:-1] + (NUM_LATENTS, NUM_CLASSES))
            z1 = pyro.sample("z1", self.latent(z1_logits, temperature))
            if self.layers == 2:
                pyro.module(self.prefix + "guide_z2", self.guide_z2)
                pyro.sample("z2", self.latent(self.code_to_logits(self.guide_z2, z1),
                                              temperature))


def numpyro_vae(weights, layers=1):
    """Model and guide of the categorical VAE in NumPyro (same networks and weights as
    :class:`PyroVAE`; codes are ``Categorical`` indices ``[batch, NUM_LATENTS]``, one-hot encoded
    for the networks). Returns ``(model, guide)``, both taking ``x`` ``[batch, D]``."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as npdist

    def network(name):
        return [(numpyro.param(f"{name}{i}_w", jnp.asarray(w)),
                 numpyro.param(f"{name}{i}_b", jnp.asarray(b)))
                for i, (w, b) in enumerate(weights[name])]

    def mlp(params, h):
        for i, (w, b) in enumerate(params):
            h = h @ w + b
            if i < len(params) - 1:
                h = jax.nn.leaky_relu(h, LEAKY_SLOPE)
        return h

    def one_hot_code(z):
        return jax.nn.one_hot(z, NUM_CLASSES).reshape(z.shape[:-1] + (LATENT_DIM,))

    def code_to_logits(params, z):
        return mlp(params, one_hot_code(z)).reshape(z.shape + (NUM_CLASSES,))

    def latent(logits):
        return npdist.Categorical(logits=logits).to_event(1)

    def model(x):
        decoder = network("decoder")
        uniform_logits = jnp.zeros((NUM_LATENTS, NUM_CLASSES))
        prior_z1 = network("prior_z1") if layers == 2 else None
        with numpyro.plate("data", x.shape[-2]):
            if layers == 2:
                z2 = numpyro.sample("z2", latent(uniform_logits))
                z1_logits = code_to_logits(prior_z1, z2)
            else:
                z1_logits = uniform_logits
            z1 = numpyro.sample("z1", latent(z1_logits))
            pixel_logits = mlp(decoder, one_hot_code(z1))
            numpyro.sample("x", npdist.Bernoulli(logits=pixel_logits).to_event(1), obs=x)

    def guide(x):
        encoder = network("encoder")
        guide_z2 = network("guide_z2") if layers == 2 else None
        with numpyro.plate("data", x.shape[-2]):
            z1_logits = mlp(encoder, x).reshape(x.shape[:-1] + (NUM_LATENTS, NUM_CLASSES))
            z1 = numpyro.sample("z1", latent(z1_logits))
            if layers == 2:
                numpyro.sample("z2", latent(code_to_logits(guide_z2, z1)))

    return model, guide
