"""Guide sites from Pyro's own tests beside an ARSM site.

The models are in the style of Pyro's ``tests/infer/test_gradient.py``
(``test_svi_step_guide_uses_grad``, ``test_elbo_rsvi``) and ``test_enum.py``, rewritten here
with a Bernoulli guide site that
``ARSM_ELBO`` handles, and with an exact ``-ELBO`` in closed form (the Bernoulli site summed out,
Normal and Gamma expectations and KL divergences analytic) so that each gradient is checked
against the exact one by a z-test (``assert_unbiased``, fixed seeds, standard error below 5% of
the largest exact component).

* a guide that calls ``torch.autograd.grad`` (a Newton step) to set a Normal site's location;
* a partially reparameterized site, ``ShapeAugmentedGamma`` (scalar and plated);
* a ``Rejector`` site, ``RejectionGamma``, whose ``score_parts`` carry a score-function term
  that the gradient must include (``Trace_ELBO`` does; ``TraceGraph_ELBO`` drops it).
"""

import contextlib

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.distributions.testing.rejection_gamma import RejectionGamma, ShapeAugmentedGamma
from pyro.infer import SVI, Trace_ELBO
from pyro_chain_models import expect_warnings
from pyro_exact import assert_unbiased, flat_grad, gradient_draws, param_tensors

from pyro_arsm import ARSM_ELBO

pytestmark = pytest.mark.usefixtures("fresh_param_store")

PATHS = ["auto", True, False]


def init(guide, *args):
    with pyro.plate("_init_particles", 1, dim=-2):
        pyro.poutine.trace(guide).get_trace(*args)


def bernoulli_sum(log_q1, log_q0, cost1, cost0):
    """``sum_b q(b) (log q(b) - log 0.5 + cost(b))`` for a Bernoulli site with a uniform prior."""
    return (log_q1.exp() * (log_q1 + np.log(2.0) + cost1)
            + log_q0.exp() * (log_q0 + np.log(2.0) + cost0))


def arsm(path, particles, max_plate_nesting=1, vectorize_particles=True):
    return ARSM_ELBO(num_particles=particles, vectorize_particles=vectorize_particles,
                     max_plate_nesting=max_plate_nesting, vectorize_pseudo=path)


# ---------------------------------------------------------------------------------------------
# 3. A guide that calls torch.autograd.grad
# ---------------------------------------------------------------------------------------------

NEWTON_DATA = torch.tensor([0.0, 1.0, 3.0])
PRIOR_SCALE = 10.0


def newton_model(data):
    scale = pyro.param("scale")
    loc = pyro.sample("loc", dist.Normal(0.0, PRIOR_SCALE))
    b = pyro.sample("b", dist.Bernoulli(0.5))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(loc + b, scale), obs=data)


def newton_guide(data):
    p = pyro.param("p", torch.tensor(0.3), constraint=constraints.unit_interval)
    scale = pyro.param("scale", torch.tensor(1.2), constraint=constraints.positive)
    sd = pyro.param("sd", torch.tensor(0.8), constraint=constraints.positive)
    # one Newton step from x = 0 on -log p(x, data) (b = 0): the posterior mean, since the
    # objective is quadratic; differentiable in `scale` through create_graph
    x = torch.tensor(0.0, requires_grad=True)
    objective = -(dist.Normal(0.0, PRIOR_SCALE).log_prob(x)
                  + dist.Normal(x, scale).log_prob(data).sum())
    g = torch.autograd.grad(objective, [x], create_graph=True)[0]
    h = torch.autograd.grad(g, [x], create_graph=True)[0]
    loc = x.detach() - g / h
    pyro.sample("loc", dist.Normal(loc, sd))
    pyro.sample("b", dist.Bernoulli(p))


NEWTON_PARAMS = ["p", "scale", "sd"]


def newton_exact_loss(data):
    p, scale, sd = (pyro.param(n) for n in NEWTON_PARAMS)
    mu = (data.sum() / scale ** 2) / (1 / PRIOR_SCALE ** 2 + len(data) / scale ** 2)
    kl_loc = torch.distributions.kl_divergence(dist.Normal(mu, sd), dist.Normal(0.0, PRIOR_SCALE))

    def nll(b):  # E[-log p(data | loc, b)], loc ~ N(mu, sd)
        return (len(data) * (torch.log(scale) + 0.5 * np.log(2 * np.pi))
                + (((data - mu - b) ** 2).sum() + len(data) * sd ** 2) / (2 * scale ** 2))

    return kl_loc + bernoulli_sum(torch.log(p), torch.log1p(-p), nll(1.0), nll(0.0))


@pytest.mark.parametrize("path", PATHS)
def test_guide_calling_autograd_grad_runs(path):
    init(newton_guide, NEWTON_DATA)
    elbo = arsm(path, 8)
    svi = SVI(newton_model, newton_guide, pyro.optim.Adam({"lr": 0.01}), loss=elbo)
    with expect_warnings():
        for _ in range(2):
            assert np.isfinite(svi.step(NEWTON_DATA))
        params = param_tensors(NEWTON_PARAMS)
        for q in params:
            q.grad = None
        assert np.isfinite(elbo.loss_and_grads(newton_model, newton_guide, NEWTON_DATA))
    assert all(q.grad is not None and torch.isfinite(q.grad).all() for q in params)


@pytest.mark.parametrize("path", PATHS)
def test_guide_calling_autograd_grad_unbiased(path):
    init(newton_guide, NEWTON_DATA)
    exact = flat_grad(newton_exact_loss(NEWTON_DATA), param_tensors(NEWTON_PARAMS))
    with expect_warnings():
        draws = gradient_draws(arsm(path, 200), newton_model, newton_guide, NEWTON_PARAMS, 40,
                               NEWTON_DATA)
    assert_unbiased(draws, exact, label=f"guide calls autograd.grad, vectorize_pseudo={path}")


def test_autograd_grad_reference_matches_trace_elbo():
    init(newton_guide, NEWTON_DATA)
    exact = flat_grad(newton_exact_loss(NEWTON_DATA), param_tensors(NEWTON_PARAMS))
    elbo = Trace_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1)
    draws = gradient_draws(elbo, newton_model, newton_guide, NEWTON_PARAMS, 40, NEWTON_DATA)
    assert_unbiased(draws, exact, label="autograd.grad guide: Trace_ELBO vs closed form")


# ---------------------------------------------------------------------------------------------
# 4. A partially reparameterized site: ShapeAugmentedGamma
# ---------------------------------------------------------------------------------------------

PRIOR = (0.5, 1.0)
COUNTS = {"scalar": torch.tensor(2.0), "plate": torch.tensor([0.0, 2.0, 5.0])}
GAMMA_PARAMS = ["alpha", "beta", "c"]


def _data_plate(counts):
    return pyro.plate("data", len(counts)) if counts.dim() else contextlib.nullcontext()


def gamma_model(counts, family="shape_augmented"):
    with _data_plate(counts):
        g = pyro.sample("g", dist.Gamma(*PRIOR))
        b = pyro.sample("b", dist.Bernoulli(0.5))
        pyro.sample("y", dist.Poisson(g * (1 + b)), obs=counts)


def gamma_guide(counts, family="shape_augmented"):
    shape = tuple(counts.shape)
    alpha = pyro.param("alpha", torch.full(shape, 0.8), constraint=constraints.positive)
    beta = pyro.param("beta", torch.full(shape, 1.3), constraint=constraints.positive)
    c = pyro.param("c", torch.full(shape, 0.4))
    with _data_plate(counts):
        pyro.sample("g", ShapeAugmentedGamma(alpha, beta))
        pyro.sample("b", dist.Bernoulli(logits=c))


def gamma_exact_loss(counts):
    alpha, beta, c = (pyro.param(n) for n in GAMMA_PARAMS)
    kl = torch.distributions.kl_divergence(dist.Gamma(alpha, beta), dist.Gamma(*PRIOR))
    e_log_g = torch.digamma(alpha) - torch.log(beta)
    e_g = alpha / beta

    def nll(b):  # E[-log Poisson(y; g (1 + b))]
        return -(counts * (e_log_g + np.log(1 + b)) - (1 + b) * e_g - torch.lgamma(counts + 1))

    log_q1 = torch.nn.functional.logsigmoid(c)
    log_q0 = torch.nn.functional.logsigmoid(-c)
    return (kl + bernoulli_sum(log_q1, log_q0, nll(1.0), nll(0.0))).sum()


@pytest.mark.parametrize("vectorize_particles", [True, False])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", list(COUNTS))
def test_shape_augmented_gamma_runs(shape, path, vectorize_particles):
    # (without vectorize_particles the site's distribution is not expanded: the scalar site
    # then failed on an assertion in score_parts rather than on the missing cache)
    counts = COUNTS[shape]
    init(gamma_guide, counts)
    elbo = arsm(path, 8 if vectorize_particles else 2, vectorize_particles=vectorize_particles)
    svi = SVI(gamma_model, gamma_guide, pyro.optim.Adam({"lr": 0.01}), loss=elbo)
    with expect_warnings():
        assert np.isfinite(svi.step(counts))
        assert np.isfinite(elbo.loss_and_grads(gamma_model, gamma_guide, counts))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", list(COUNTS))
def test_shape_augmented_gamma_unbiased(shape, path):
    counts = COUNTS[shape]
    init(gamma_guide, counts)
    exact = flat_grad(gamma_exact_loss(counts), param_tensors(GAMMA_PARAMS))
    with expect_warnings():
        draws = gradient_draws(arsm(path, 500), gamma_model, gamma_guide, GAMMA_PARAMS, 50,
                               counts)
    assert_unbiased(draws, exact, label=f"ShapeAugmentedGamma ({shape}), vectorize_pseudo={path}")


@pytest.mark.parametrize("shape", list(COUNTS))
def test_shape_augmented_gamma_reference_matches_trace_elbo(shape):
    counts = COUNTS[shape]
    init(gamma_guide, counts)
    exact = flat_grad(gamma_exact_loss(counts), param_tensors(GAMMA_PARAMS))
    elbo = Trace_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1)
    draws = gradient_draws(elbo, gamma_model, gamma_guide, GAMMA_PARAMS, 40, counts)
    assert_unbiased(draws, exact, label=f"ShapeAugmentedGamma ({shape}): Trace_ELBO vs exact")


# ---------------------------------------------------------------------------------------------
# 5. A Rejector site: RejectionGamma
# ---------------------------------------------------------------------------------------------

REJECTION_OBS = torch.tensor(0.7)
REJECTION_PARAMS = ["a", "c"]


def rejection_model(obs):
    pyro.sample("x", dist.Gamma(*PRIOR))
    b = pyro.sample("b", dist.Bernoulli(0.5))
    pyro.sample("obs", dist.Normal(2.0 * b - 0.5, 1.0), obs=obs)


def rejection_guide(obs):
    a = pyro.param("a", torch.tensor(1.5))  # RejectionGamma needs a >= 1
    c = pyro.param("c", torch.tensor(-0.3))
    pyro.sample("x", RejectionGamma(a, torch.tensor(1.0)))
    pyro.sample("b", dist.Bernoulli(logits=c))


def rejection_exact_loss(obs):
    a, c = (pyro.param(n) for n in REJECTION_PARAMS)
    kl = torch.distributions.kl_divergence(dist.Gamma(a, 1.0), dist.Gamma(*PRIOR))

    def nll(b):
        return -dist.Normal(2.0 * b - 0.5, 1.0).log_prob(obs)

    log_q1 = torch.nn.functional.logsigmoid(c)
    log_q0 = torch.nn.functional.logsigmoid(-c)
    return kl + bernoulli_sum(log_q1, log_q0, nll(1.0), nll(0.0))


def test_rejection_gamma_exact_gradient_is_the_closed_form():
    # d KL(Gamma(a, 1) || Gamma(0.5, 1)) / da = (a - 0.5) trigamma(a) = 0.935 at a = 1.5
    init(rejection_guide, REJECTION_OBS)
    exact = flat_grad(rejection_exact_loss(REJECTION_OBS), param_tensors(REJECTION_PARAMS))
    assert abs(exact[0].item() - 1.0 * torch.polygamma(1, torch.tensor(1.5)).item()) < 1e-5
    assert abs(exact[0].item() - 0.935) < 1e-3


@pytest.mark.parametrize("path", PATHS)
def test_rejection_gamma_unbiased(path):
    init(rejection_guide, REJECTION_OBS)
    exact = flat_grad(rejection_exact_loss(REJECTION_OBS), param_tensors(REJECTION_PARAMS))
    with expect_warnings():
        draws = gradient_draws(arsm(path, 500, max_plate_nesting=0), rejection_model,
                               rejection_guide, REJECTION_PARAMS, 50, REJECTION_OBS)
    assert_unbiased(draws, exact, label=f"RejectionGamma, vectorize_pseudo={path}")


def test_rejection_gamma_reference_matches_trace_elbo():
    init(rejection_guide, REJECTION_OBS)
    exact = flat_grad(rejection_exact_loss(REJECTION_OBS), param_tensors(REJECTION_PARAMS))
    elbo = Trace_ELBO(num_particles=500, vectorize_particles=True, max_plate_nesting=0)
    draws = gradient_draws(elbo, rejection_model, rejection_guide, REJECTION_PARAMS, 50,
                           REJECTION_OBS)
    assert_unbiased(draws, exact, label="RejectionGamma: Trace_ELBO vs exact")
