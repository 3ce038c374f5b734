"""Guides with downstream chains of mixed kinds, and their exact ``-ELBO`` in closed form.

Each structure comes in a Bernoulli and a Categorical (``C = 3``) variant, all in a plate of
``N`` data points with every term inside the plate, so each element's ``-ELBO`` is a sum over
the (at most ``K * K``) joint values of its discrete sites with every Gaussian part in closed
form (or, where a discrete site's logits depend on a continuous one, Gauss-Hermite quadrature of
64 nodes: deterministic, and exact to float32 round-off for these smooth integrands; see
``test_quadrature_reference_is_converged``). Differentiating the reference with autograd gives
the exact gradient with respect to the same ``pyro.param`` leaves the Monte Carlo draws use.

Structures (guide order; the model has uniform discrete priors, ``Normal(0, 1)`` continuous
priors and ``y ~ Normal(mean, SIGMA)`` observed):

* ``dd_c``: ``b0 -> b1 -> z``: ``b0 ~ D(a0)``, ``b1 ~ D(a1 + S[b0])``, ``z ~ N(m + M[b0], 1)``;
  ``mean = H[b0] + G[b1] * z`` (for Bernoulli: ``b0 + b1 * z``).
* ``c_d``: ``z -> b``: ``z ~ N(m, s)``, ``b ~ D(a + W * z)``; ``mean = H[b] + G[b] * z``.
* ``d_c_c``: ``b``, an independent ``w``, then ``z`` downstream of ``b``: ``b ~ D(a)``,
  ``w ~ N(mw, 1)``, ``z ~ N(m + M[b], 1)``; ``mean = H[b] + G[b] * z + w``.
* ``cat_bern`` / ``bern_cat``: two discrete sites of different kinds, in either order, the
  second's logits shifted by the first; ``mean = H_cat[c] + G_cat[c] * b`` (pure discrete: the
  exact reference is TraceEnum_ELBO / brute force from ``pyro_exact``).

``dd_c_flat`` is ``dd_c`` with a guide that ``torch.cat``s along dim 1 of a ``[particles, N]``
tensor (as Pyro's AIR guide does): right on every real pass (with ``vectorize_particles``) and
on one pseudo action at a time, but the batched pseudo pass of ``b0`` fails, so
``vectorize_pseudo="auto"`` falls back to one pass per pseudo action.
"""

import re
import warnings
from contextlib import contextmanager

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

C = 3
SIGMA = 0.3
CHAIN_DATA = torch.tensor([0.4, 1.3, -0.2, 2.1])
KINDS = ("bernoulli", "categorical")

# tables indexed by a discrete value (0/1 for Bernoulli, 0..C-1 for Categorical)
H = {"bernoulli": torch.tensor([0.0, 1.0]), "categorical": torch.tensor([-0.5, 0.6, 1.4])}
G = {"bernoulli": torch.tensor([0.0, 1.0]), "categorical": torch.tensor([1.0, 0.2, -0.7])}
M = {"bernoulli": torch.tensor([0.0, 0.5]), "categorical": torch.tensor([-0.4, 0.3, 0.8])}
S = {"bernoulli": torch.tensor([0.0, 0.5]),
     "categorical": torch.tensor([[0.0, 0.5, -0.5], [1.0, 0.0, 0.0], [-0.3, 0.2, 0.7]])}
W = {"bernoulli": torch.tensor(0.8), "categorical": torch.tensor([0.8, -0.5, 0.0])}
# the mixed pair: a categorical c and a Bernoulli b
H_CAT = torch.tensor([-0.6, 0.4, 1.5])
G_CAT = torch.tensor([1.2, -0.3, 0.5])
S_CAT_TO_BERN = torch.tensor([0.0, 1.0, -0.8])
S_BERN_TO_CAT = torch.tensor([[0.0, 0.0, 0.0], [0.9, -0.4, 0.2]])

STRUCTURE_PARAMS = {
    "dd_c": ["a0", "a1", "m"],
    "dd_c_flat": ["a0", "a1", "m"],
    "c_d": ["a", "m", "s"],
    "d_c_c": ["a", "mw", "m"],
    "cat_bern": ["ac", "ab"],
    "bern_cat": ["ab", "ac"],
}


def num_values(kind):
    return 2 if kind == "bernoulli" else C


def idx(value):
    return value.long()


def _logits_init(kind, n, offset):
    x = torch.sin(1.7 * torch.arange(n * C, dtype=torch.float).reshape(n, C) + offset)
    return 1.2 * x[:, 0] if kind == "bernoulli" else 1.2 * x


def _vector_init(n, offset, scale=0.6):
    return scale * torch.cos(1.3 * torch.arange(n, dtype=torch.float) + offset)


def site_dist(kind, logits):
    return dist.Bernoulli(logits=logits) if kind == "bernoulli" else dist.Categorical(
        logits=logits)


def prior_dist(kind):
    return dist.Bernoulli(0.5) if kind == "bernoulli" else dist.Categorical(
        logits=torch.zeros(C))


def log_prob_table(kind, logits):
    """``[..., K]``: the log-probability of each value of a site with these logits."""
    if kind == "bernoulli":
        return torch.stack([torch.nn.functional.logsigmoid(-logits),
                            torch.nn.functional.logsigmoid(logits)], -1)
    return torch.log_softmax(logits, -1)


def _neg_log_normal(y, mean, var_extra):
    """``E[-log N(y; mean + e, SIGMA)]`` for a zero-mean ``e`` of variance ``var_extra``."""
    return (0.5 * np.log(2 * np.pi * SIGMA ** 2)
            + ((y - mean) ** 2 + var_extra) / (2 * SIGMA ** 2))


# ---------------------------------------------------------------------------------------------
# dd_c: b0 -> b1 -> z
# ---------------------------------------------------------------------------------------------


def dd_c_guide(y, kind, flat=False):
    n = len(y)
    a0 = pyro.param("a0", _logits_init(kind, n, 0.0))
    a1 = pyro.param("a1", _logits_init(kind, n, 1.0))
    m = pyro.param("m", _vector_init(n, 0.5))
    with pyro.plate("data", n):
        b0 = pyro.sample("b0", site_dist(kind, a0))
        pyro.sample("b1", site_dist(kind, a1 + S[kind][idx(b0)]))
        shift = M[kind][idx(b0)]
        if flat:  # AIR-style: assumes shift is [particles, N]
            shift = torch.cat([shift[..., :1], shift[..., 1:]], dim=1)
        pyro.sample("z", dist.Normal(m + shift, 1.0))


def dd_c_model(y, kind, flat=False):
    with pyro.plate("data", len(y)):
        b0 = pyro.sample("b0", prior_dist(kind))
        b1 = pyro.sample("b1", prior_dist(kind))
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(H[kind][idx(b0)] + G[kind][idx(b1)] * z, SIGMA), obs=y)


def dd_c_exact_loss(y, kind, flat=False):
    a0, a1, m = pyro.param("a0"), pyro.param("a1"), pyro.param("m")
    K = num_values(kind)
    log_prior = -np.log(K)
    lq0 = log_prob_table(kind, a0)  # [N, K]
    total = 0.0
    for j in range(K):
        lq1 = log_prob_table(kind, a1 + S[kind][j])  # [N, K]
        mu = m + M[kind][j]
        for k in range(K):
            g = G[kind][k]
            cost = (lq0[:, j] + lq1[:, k] - 2 * log_prior + 0.5 * mu ** 2
                    + _neg_log_normal(y, H[kind][j] + g * mu, g ** 2))
            total = total + (lq0[:, j] + lq1[:, k]).exp() * cost
    return total.sum()


def dd_c_flat_guide(y, kind):
    dd_c_guide(y, kind, flat=True)


def dd_c_flat_model(y, kind):
    dd_c_model(y, kind)


def dd_c_flat_exact_loss(y, kind):
    return dd_c_exact_loss(y, kind)


# ---------------------------------------------------------------------------------------------
# c_d: z -> b
# ---------------------------------------------------------------------------------------------


def _b_logits(kind, a, z):
    return a + W[kind] * z if kind == "bernoulli" else a + z.unsqueeze(-1) * W[kind]


def c_d_guide(y, kind):
    n = len(y)
    a = pyro.param("a", _logits_init(kind, n, 2.0))
    m = pyro.param("m", _vector_init(n, 1.5))
    s = pyro.param("s", torch.full((n,), 0.7), constraint=constraints.positive)
    with pyro.plate("data", n):
        z = pyro.sample("z", dist.Normal(m, s))
        pyro.sample("b", site_dist(kind, _b_logits(kind, a, z)))


def c_d_model(y, kind):
    with pyro.plate("data", len(y)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        b = pyro.sample("b", prior_dist(kind))
        pyro.sample("y", dist.Normal(H[kind][idx(b)] + G[kind][idx(b)] * z, SIGMA), obs=y)


NUM_NODES = 64


def gauss_hermite(num_nodes=NUM_NODES):
    """Nodes and weights of ``E[f(x)]``, ``x ~ N(0, 1)``."""
    x, w = np.polynomial.hermite_e.hermegauss(num_nodes)
    return torch.tensor(x, dtype=torch.float64), torch.tensor(w / w.sum(), dtype=torch.float64)


def c_d_exact_loss(y, kind, num_nodes=NUM_NODES):
    # in float64: the quadrature sums 64 terms per element
    a, m, s = (pyro.param(n).double() for n in ("a", "m", "s"))
    y = y.double()
    x, w = gauss_hermite(num_nodes)
    z = m.unsqueeze(-1) + s.unsqueeze(-1) * x  # [N, Q]
    log_q_z = torch.distributions.Normal(m.unsqueeze(-1), s.unsqueeze(-1)).log_prob(z)
    log_p_z = torch.distributions.Normal(0.0, 1.0).log_prob(z)
    logits = (a.unsqueeze(-1) + W[kind].double() * z if kind == "bernoulli"
              else a.unsqueeze(-2) + z.unsqueeze(-1) * W[kind].double())  # [N, Q(, C)]
    lq = log_prob_table(kind, logits)  # [N, Q, K]
    K = num_values(kind)
    inner = 0.0
    for j in range(K):
        h, g = H[kind][j].double(), G[kind][j].double()
        cost = lq[..., j] + np.log(K) + _neg_log_normal(y.unsqueeze(-1), h + g * z, 0.0)
        inner = inner + lq[..., j].exp() * cost
    return (((log_q_z - log_p_z + inner) * w).sum(-1)).sum().float()


# ---------------------------------------------------------------------------------------------
# d_c_c: b, an independent w, then z downstream of b
# ---------------------------------------------------------------------------------------------


def d_c_c_guide(y, kind):
    n = len(y)
    a = pyro.param("a", _logits_init(kind, n, 3.0))
    mw = pyro.param("mw", _vector_init(n, 2.5, 0.4))
    m = pyro.param("m", _vector_init(n, 0.2))
    with pyro.plate("data", n):
        b = pyro.sample("b", site_dist(kind, a))
        pyro.sample("w", dist.Normal(mw, 1.0))
        pyro.sample("z", dist.Normal(m + M[kind][idx(b)], 1.0))


def d_c_c_model(y, kind):
    with pyro.plate("data", len(y)):
        b = pyro.sample("b", prior_dist(kind))
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(H[kind][idx(b)] + G[kind][idx(b)] * z + w, SIGMA), obs=y)


def d_c_c_exact_loss(y, kind):
    a, mw, m = pyro.param("a"), pyro.param("mw"), pyro.param("m")
    K = num_values(kind)
    lq = log_prob_table(kind, a)
    total = 0.5 * mw ** 2  # KL of w
    for j in range(K):
        mu, g = m + M[kind][j], G[kind][j]
        cost = (lq[:, j] + np.log(K) + 0.5 * mu ** 2
                + _neg_log_normal(y, H[kind][j] + g * mu + mw, g ** 2 + 1.0))
        total = total + lq[:, j].exp() * cost
    return total.sum()


# ---------------------------------------------------------------------------------------------
# cat_bern / bern_cat: two discrete sites of different kinds, in either order
# ---------------------------------------------------------------------------------------------


def _pair_params(n):
    ac = pyro.param("ac", _logits_init("categorical", n, 4.0))
    ab = pyro.param("ab", _logits_init("bernoulli", n, 5.0))
    return ac, ab


def cat_bern_guide(y, total=None):
    ac, ab = _pair_params(len(y))
    with pyro.plate("data", len(y)):
        c = pyro.sample("c", dist.Categorical(logits=ac))
        pyro.sample("b", dist.Bernoulli(logits=ab + S_CAT_TO_BERN[c]))


def bern_cat_guide(y, total=None):
    ac, ab = _pair_params(len(y))
    with pyro.plate("data", len(y)):
        b = pyro.sample("b", dist.Bernoulli(logits=ab))
        pyro.sample("c", dist.Categorical(logits=ac + S_BERN_TO_CAT[idx(b)]))


def pair_model(y, total=None):
    """``total`` (not None): a term outside the plate that sums over it (not separable)."""
    with pyro.plate("data", len(y)):
        c = pyro.sample("c", dist.Categorical(logits=torch.zeros(C)))
        b = pyro.sample("b", dist.Bernoulli(0.5))
        pyro.sample("y", dist.Normal(H_CAT[c] + G_CAT[c] * b, SIGMA), obs=y)
    if total is not None:
        # keepdim: the data dim stays (size 1) right of any particle or pseudo-action dims
        loc = (H_CAT[c] * (1 + b)).sum(-1, keepdim=True)
        pyro.sample("total", dist.Normal(loc, 1.0), obs=total)


# ---------------------------------------------------------------------------------------------
# lookup
# ---------------------------------------------------------------------------------------------

_MODELS = {
    "dd_c": (dd_c_model, dd_c_guide, dd_c_exact_loss),
    "dd_c_flat": (dd_c_flat_model, dd_c_flat_guide, dd_c_flat_exact_loss),
    "c_d": (c_d_model, c_d_guide, c_d_exact_loss),
    "d_c_c": (d_c_c_model, d_c_c_guide, d_c_c_exact_loss),
}


def structure(name):
    """``(model, guide, exact_loss)`` of a structure with continuous sites (see the module
    docstring); each takes ``(y, kind)``."""
    return _MODELS[name]


def init_params(guide, *args):
    """Create the params by one run of the guide (values as initialized), under a plate of one
    particle at dim -2 as ``vectorize_particles`` would (``dd_c_flat``'s guide needs it)."""
    with pyro.plate("_init_particles", 1, dim=-2):
        pyro.poutine.trace(guide).get_trace(*args)


@contextmanager
def expect_warnings(*patterns):
    """Record every warning; on exit, each pattern (a regex of the message) must have matched at
    least one of them and every warning must match a pattern. Yields the records."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    messages = [str(w.message) for w in caught]
    unexpected = [m for m in messages if not any(re.search(p, m, re.S) for p in patterns)]
    assert not unexpected, f"unexpected warnings: {unexpected}"
    for p in patterns:
        assert any(re.search(p, m, re.S) for m in messages), f"no warning matched {p!r}"
