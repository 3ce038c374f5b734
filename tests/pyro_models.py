"""Pyro test models shared by more than one test module.

Each family comes with its data; a test calls :func:`init` first so that the exact reference and
the Monte Carlo draws read the same ``pyro.param`` values. The NumPyro twins live in
``numpyro_models.py``.
"""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch


def init(model, guide, *args):
    """Create the params (the exact reference and the draws then share them)."""
    guide_trace = poutine.trace(guide).get_trace(*args)
    poutine.replay(model, trace=guide_trace)(*args)


def single_model(x):
    locs = pyro.param("locs", torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0]))
    z = pyro.sample("z", dist.Categorical(logits=torch.zeros(5)))
    pyro.sample("x", dist.Normal(locs[z], 1.0), obs=x)


def single_guide(x):
    phi = pyro.param("phi", torch.tensor([0.3, -0.5, 1.0, 0.0, -1.2]))
    pyro.sample("z", dist.Categorical(logits=phi))


W_EVENT = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.3, -0.7], [-1.5, 0.8, 0.2]])


def to_event_model(x):
    scale = pyro.param("scale", torch.tensor(1.0))
    z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3, 3)).to_event(1))
    h = torch.gather(W_EVENT.expand(z.shape + (3,)), -1, z.unsqueeze(-1)).squeeze(-1)
    # not separable across the three categoricals
    mean = torch.tanh(h.sum(-1)) + 0.5 * h[..., 0] * h[..., 1] * h[..., 2]
    pyro.sample("x", dist.Normal(mean * scale, 0.5), obs=x)


def to_event_guide(x):
    phi = pyro.param("phi", torch.tensor([[0.2, -0.4, 0.1], [1.0, 0.0, -0.5], [-0.3, 0.6, 0.0]]))
    pyro.sample("z", dist.Categorical(logits=phi).to_event(1))


def plated_model(data, scale=1.0):
    locs = pyro.param("locs", torch.tensor([-1.0, 0.0, 1.0, 2.0]))
    with pyro.plate("data", len(data)), poutine.scale(scale=scale):
        z = pyro.sample("z", dist.Categorical(logits=torch.zeros(4)))
        pyro.sample("x", dist.Normal(locs[z], 1.0), obs=data)


def plated_guide(data, scale=1.0):
    phi = pyro.param("phi", torch.tensor([[0.5, -0.5, 0.0, 0.2], [0.0, 1.0, -1.0, 0.0],
                                          [-0.5, 0.0, 0.5, 1.0]]))
    with pyro.plate("data", len(data)), poutine.scale(scale=scale):
        pyro.sample("z", dist.Categorical(logits=phi))


PLATED_DATA = torch.tensor([0.0, 1.0, 2.5])

SUB_DATA = torch.tensor([-1.0, 0.2, 2.1, 0.9, -0.4, 1.7])


def subsampled_model(data, subsample_size=None):
    locs = pyro.param("locs", torch.tensor([-1.0, 0.5, 2.0]))
    with pyro.plate("data", len(data), subsample_size=subsample_size) as idx:
        z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
        pyro.sample("x", dist.Normal(locs[z], 1.0), obs=data[idx])


def subsampled_guide(data, subsample_size=None):
    phi = pyro.param("phi", torch.linspace(-1, 1, 18).reshape(6, 3).sin() * 2)
    with pyro.plate("data", len(data), subsample_size=subsample_size) as idx:
        pyro.sample("z", dist.Categorical(logits=phi[idx]))


P_CHAIN = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.5, 0.0], [-1.0, 0.0, 1.0]])


def chain_model(x):
    locs = pyro.param("locs", torch.tensor([[-2.0, -1.0, 0.0], [0.0, 1.0, 2.0], [1.0, 3.0, -1.0]]))
    z1 = pyro.sample("z1", dist.Categorical(logits=torch.tensor([0.2, -0.3, 0.1])))
    z2 = pyro.sample("z2", dist.Categorical(logits=P_CHAIN[z1]))
    pyro.sample("x", dist.Normal(locs[z1, z2], 1.0), obs=x)


def chain_guide(x):
    phi1 = pyro.param("phi1", torch.tensor([0.4, -0.2, 0.0]))
    phi2 = pyro.param("phi2", torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.5], [-0.5, 1.0, 0.0]]))
    z1 = pyro.sample("z1", dist.Categorical(logits=phi1))
    pyro.sample("z2", dist.Categorical(logits=phi2[z1]))


def bernoulli_model(data):
    w = pyro.param("w", torch.tensor([-1.0, 1.5]))
    with pyro.plate("data", len(data)):
        b = pyro.sample("b", dist.Bernoulli(0.4))
        pyro.sample("x", dist.Normal(w[b.long()], 1.0), obs=data)


def bernoulli_guide(data):
    alpha = pyro.param("alpha", torch.tensor([0.3, -1.0, 0.0, 1.2]))
    with pyro.plate("data", len(data)):
        pyro.sample("b", dist.Bernoulli(logits=alpha))


def onehot_model(data):
    locs = pyro.param("locs", torch.tensor([-1.0, 0.5, 2.0]))
    with pyro.plate("data", len(data)):
        y = pyro.sample("y", dist.OneHotCategorical(logits=torch.zeros(3)))
        pyro.sample("x", dist.Normal((y * locs).sum(-1), 1.0), obs=data)


def onehot_guide(data):
    phi = pyro.param("phi", torch.tensor([[0.5, -0.5, 0.0], [0.0, 1.0, -1.0]]))
    with pyro.plate("data", len(data)):
        pyro.sample("y", dist.OneHotCategorical(logits=phi))


def downstream_model(x):
    locs = pyro.param("locs", torch.tensor([-1.0, 0.5, 2.0]))
    z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
    w = pyro.sample("w", dist.Normal(locs[z], 1.0))
    pyro.sample("x", dist.Normal(w, 1.0), obs=x)


def downstream_guide(x):
    phi = pyro.param("phi", torch.tensor([0.2, -0.3, 0.5]))
    m = pyro.param("m", torch.tensor([0.0, 1.0, -1.0]))
    z = pyro.sample("z", dist.Categorical(logits=phi))
    pyro.sample("w", dist.Normal(m[z], 0.7))


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x)


ENCODER = None
DECODER = None


def vae_model(x):
    pyro.module("decoder", DECODER)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.OneHotCategorical(logits=torch.zeros(3)))
        pyro.sample("x", dist.Bernoulli(logits=DECODER(z)).to_event(1), obs=x)


def vae_guide(x):
    pyro.module("encoder", ENCODER)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.OneHotCategorical(logits=ENCODER(x)))


VAE_DATA = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
VAE_PARAMS = ["encoder$$$linear.weight", "encoder$$$linear.bias", "decoder$$$weight",
              "decoder$$$bias"]


def make_vae_networks(seed=1):
    """Fresh seeded encoder and decoder for :func:`vae_model` / :func:`vae_guide`."""
    global ENCODER, DECODER
    torch.manual_seed(seed)
    ENCODER, DECODER = Encoder(), torch.nn.Linear(3, 4)
