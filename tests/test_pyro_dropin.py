"""ARSM_ELBO as a drop-in loss for models written without it in mind .

Each model here is written the way Pyro's own examples and tests write theirs, and is run with
only the loss swapped: models that mix the pseudo-action dim (sums over all dims, ``b[0]``,
``torch.cat`` along a fixed dim, shape asserts), guides configured for ``TraceEnum_ELBO``, and
degenerate models. The default ``vectorize_pseudo="auto"`` must give the unbiased gradient
with exactly one warning per site.

Where the batched pseudo pass does not fit a model, the fallback decision is tested in two steps
(the warning, which passes ran, and gradients identical to ``vectorize_pseudo=False`` from the
same seed); that sequential path is then z-tested once per model structure against an exact
gradient.
"""

import itertools
import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro_exact import (
    assert_falls_back_to_sequential,
    assert_unbiased,
    brute_force_gradient,
    count_passes,
    enum_gradient,
    gradient_draws,
)
from pyro_models import init

from pyro_arsm import ARSM_ELBO

pytestmark = pytest.mark.usefixtures("fresh_param_store")


def draws_and_warnings(elbo, model, guide, names, num_draws, *args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        draws = gradient_draws(elbo, model, guide, names, num_draws, *args)
    return draws, [str(w.message) for w in caught if "ARSM_ELBO" in str(w.message)]


def sequential_draws(model, guide, names, num_draws, *args):
    elbo = ARSM_ELBO(num_particles=4, vectorize_pseudo=False)
    return gradient_draws(elbo, model, guide, names, num_draws, *args)


# ---------------------------------------------------------------------------------------------
# a model that sums over all dims, with a continuous guide site downstream of z
# ---------------------------------------------------------------------------------------------

LOC = torch.tensor([-1.0, 0.5, 2.0])
W_MEAN = torch.tensor([0.3, -0.2, 0.1])
X_OBS = 1.5


def mixing_model():
    with pyro.plate("p", 2):
        z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
    pyro.sample("x", dist.Normal(LOC[z].sum() + w.sum(), 1.0), obs=torch.tensor(X_OBS))


def mixing_guide():
    e = pyro.param("e", torch.tensor([[0.2, -0.3, 0.1], [0.5, 0.0, -0.4]]))
    with pyro.plate("p", 2):
        z = pyro.sample("z", dist.Categorical(logits=e))
        pyro.sample("w", dist.Normal(W_MEAN[z], 1.0))


def mixing_exact_gradient():
    """Exact gradient of ``-ELBO`` in ``e``: the expectation over ``w | z`` is closed-form
    (Gaussians), the one over ``z`` a sum over its 9 values."""
    e = pyro.param("e").unconstrained()
    log_q = e.log_softmax(-1)
    total = 0.0
    for z in itertools.product(range(3), repeat=2):
        z = torch.tensor(z)
        m = W_MEAN[z]
        # E_w log N(x; a + sum w, 1), sum w ~ N(sum m, 2); E_w log N(w; 0, 1); E_w log q(w | z)
        log_lik = -0.5 * math.log(2 * math.pi) - 0.5 * ((X_OBS - LOC[z].sum() - m.sum()) ** 2 + 2)
        log_p_w = (-0.5 * math.log(2 * math.pi) - 0.5 * (m ** 2 + 1)).sum()
        log_q_w = 2 * (-0.5 * math.log(2 * math.pi) - 0.5)
        log_qz = log_q[0, z[0]] + log_q[1, z[1]]
        f = log_lik + log_p_w + 2 * math.log(1 / 3) - log_q_w - log_qz
        total = total - log_qz.exp() * f
    return torch.autograd.grad(total, e)[0].reshape(-1)


def test_mixing_model_falls_back_once(monkeypatch):
    init(mixing_model, mixing_guide)
    assert_falls_back_to_sequential(monkeypatch, ["z"], mixing_model, mixing_guide, ["e"],
                                    match="one at a time")


@pytest.mark.slow
def test_mixing_model_with_downstream_site_is_unbiased():
    init(mixing_model, mixing_guide)
    exact = mixing_exact_gradient()
    draws = sequential_draws(mixing_model, mixing_guide, ["e"], 1000)
    assert_unbiased(draws, exact, label="mixing model, sequential path")


def test_mixing_model_raises_with_vectorize_pseudo_true():
    init(mixing_model, mixing_guide)
    with pytest.raises(ValueError, match="(?s)site 'z'.*mixes the pseudo-action dim"):
        ARSM_ELBO(vectorize_pseudo=True).loss_and_grads(mixing_model, mixing_guide)


def discrete_mixing_model():
    with pyro.plate("p", 2):
        z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
        w = pyro.sample("w", dist.Bernoulli(0.5))
    pyro.sample("x", dist.Normal(LOC[z].sum() + w.sum(), 1.0), obs=torch.tensor(X_OBS))


def discrete_mixing_guide():
    e = pyro.param("e", torch.tensor([[0.2, -0.3, 0.1], [0.5, 0.0, -0.4]]))
    with pyro.plate("p", 2):
        z = pyro.sample("z", dist.Categorical(logits=e))
        pyro.sample("w", dist.Bernoulli(logits=torch.tensor([0.3, -1.2, 0.8])[z]))


def test_mixing_model_with_discrete_downstream_site_falls_back_once_per_site(monkeypatch):
    init(discrete_mixing_model, discrete_mixing_guide)
    assert_falls_back_to_sequential(monkeypatch, ["z", "w"], discrete_mixing_model,
                                    discrete_mixing_guide, ["e"])


@pytest.mark.slow
def test_mixing_model_with_discrete_downstream_site_against_brute_force():
    init(discrete_mixing_model, discrete_mixing_guide)
    exact = brute_force_gradient(discrete_mixing_model, discrete_mixing_guide, ["e"])
    draws = sequential_draws(discrete_mixing_model, discrete_mixing_guide, ["e"], 1500)
    assert_unbiased(draws, exact, label="mixing model, discrete downstream site")


# ---------------------------------------------------------------------------------------------
# elements read one by one, networks that concatenate along a fixed dim
# ---------------------------------------------------------------------------------------------

BERN_DATA = torch.tensor([0.8, -0.4])


def indexing_model(data):
    with pyro.plate("p", 2):
        b = pyro.sample("b", dist.Bernoulli(0.4))
    # reads the plate's elements one by one, as hand-written models often do
    pyro.sample("x0", dist.Normal(b[0] - 0.5 * b[1], 1.0), obs=data[0])
    pyro.sample("x1", dist.Normal(2.0 * b[1], 1.0), obs=data[1])


def indexing_guide(data):
    phi = pyro.param("phi", torch.tensor([0.3, -0.6]))
    with pyro.plate("p", 2):
        pyro.sample("b", dist.Bernoulli(logits=phi))


def test_model_reading_elements_by_index_falls_back_once(monkeypatch):
    init(indexing_model, indexing_guide, BERN_DATA)
    assert_falls_back_to_sequential(monkeypatch, ["b"], indexing_model, indexing_guide, ["phi"],
                                    BERN_DATA)


@pytest.mark.slow
def test_model_reading_elements_by_index_is_unbiased():
    init(indexing_model, indexing_guide, BERN_DATA)
    exact = brute_force_gradient(indexing_model, indexing_guide, ["phi"], BERN_DATA)
    draws = sequential_draws(indexing_model, indexing_guide, ["phi"], 150, BERN_DATA)
    assert_unbiased(draws, exact, label="b[0], b[1] in the model")


class ConcatDecoder(torch.nn.Module):
    """Concatenates its inputs along dim 1, as networks taking ``[z, y]`` often do."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3 + 2, 2)

    def forward(self, y, h):
        return self.linear(torch.cat([y, h], dim=1))


DECODER = ConcatDecoder()
CAT_H = torch.tensor([[0.5, -1.0], [1.0, 0.2], [-0.3, 0.4]])
CAT_X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])


def concat_model(x):
    pyro.module("decoder", DECODER)
    with pyro.plate("data", 3):
        y = pyro.sample("y", dist.OneHotCategorical(logits=torch.zeros(3)))
        pyro.sample("x", dist.Bernoulli(logits=DECODER(y, CAT_H)).to_event(1), obs=x)


def concat_guide(x):
    phi = pyro.param("phi", torch.tensor([[0.5, -0.5, 0.0], [0.0, 1.0, -1.0], [0.3, 0.0, 0.2]]))
    with pyro.plate("data", 3):
        pyro.sample("y", dist.OneHotCategorical(logits=phi))


CONCAT_NAMES = ["phi", "decoder$$$linear.weight"]


def init_concat():
    torch.manual_seed(1)
    DECODER.linear.reset_parameters()
    init(concat_model, concat_guide, CAT_X)


def test_network_concatenating_along_fixed_dim_falls_back_once(monkeypatch):
    init_concat()
    assert_falls_back_to_sequential(monkeypatch, ["y"], concat_model, concat_guide, CONCAT_NAMES,
                                    CAT_X, match="failed")


@pytest.mark.slow
def test_network_concatenating_along_fixed_dim_is_unbiased():
    init_concat()
    exact = brute_force_gradient(concat_model, concat_guide, CONCAT_NAMES, CAT_X)
    draws = sequential_draws(concat_model, concat_guide, CONCAT_NAMES, 50, CAT_X)
    assert_unbiased(draws, exact, label="torch.cat along dim 1")


# ---------------------------------------------------------------------------------------------
# a guide written for TraceEnum_ELBO
# ---------------------------------------------------------------------------------------------

MIX_DATA = torch.tensor([-1.2, 0.1, 2.3, 1.9])


def mixture_model(data):
    locs = pyro.param("locs", torch.tensor([-1.0, 0.5, 2.0]))
    weights = pyro.param("weights", torch.ones(3) / 3, constraint=dist.constraints.simplex)
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample("x", dist.Normal(locs[z], 0.8), obs=data)


def mixture_guide(data):
    phi = pyro.param("phi", torch.zeros(len(data), 3) + torch.tensor([0.3, 0.0, -0.3]))
    with pyro.plate("data", len(data)):
        pyro.sample("z", dist.Categorical(logits=phi))


enumerated_guide = config_enumerate(mixture_guide)  # as written for TraceEnum_ELBO


def test_config_enumerate_guide_is_enumerated_as_in_trace_enum_elbo():
    # the guide's only discrete site is marked for enumeration: it is summed out exactly, so the
    # gradient is TraceEnum_ELBO's (every other latent is a parameter), with no warning
    init(mixture_model, enumerated_guide, MIX_DATA)
    names = ["phi", "locs", "weights"]
    exact, _ = enum_gradient(mixture_model, enumerated_guide, names, 1, MIX_DATA)
    elbo = ARSM_ELBO(num_particles=4, vectorize_particles=True)
    draws, caught = draws_and_warnings(elbo, mixture_model, enumerated_guide, names, 3, MIX_DATA)
    assert not caught
    assert torch.allclose(draws, exact.expand_as(draws), rtol=1e-5, atol=1e-5)


def test_config_enumerate_guide_in_svi_runs_without_a_warning():
    elbo = ARSM_ELBO()
    svi = SVI(mixture_model, enumerated_guide, pyro.optim.Adam({"lr": 0.01}), loss=elbo)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):
            svi.step(MIX_DATA)
    messages = [str(w.message) for w in caught if "ARSM_ELBO" in str(w.message)]
    assert not messages


def test_model_side_enumeration_runs_as_in_trace_enum_elbo():
    # a model written for TraceEnum_ELBO, only the loss swapped: its enumerated site is summed out
    @config_enumerate
    def model(data):
        locs = pyro.param("enum_locs", torch.tensor([-1.0, 0.0, 1.0]))
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
            pyro.sample("x", dist.Normal(locs[z], 1.0), obs=data)

    def guide(data):
        pass

    ours = ARSM_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, MIX_DATA)
    theirs = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, MIX_DATA)
    assert torch.allclose(ours, theirs, rtol=1e-6)
    locs = pyro.param("enum_locs").unconstrained()
    assert torch.allclose(torch.autograd.grad(ours, locs)[0], torch.autograd.grad(theirs, locs)[0],
                          atol=1e-6)


# ---------------------------------------------------------------------------------------------
# models that assert sample shapes
# ---------------------------------------------------------------------------------------------


def asserting_model(data):
    locs = pyro.param("locs", torch.tensor([-1.0, 0.5, 2.0]))
    with pyro.plate("data", 3):
        z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
        assert z.shape == (3,)
        pyro.sample("x", dist.Normal(locs[z], 1.0), obs=data)


def asserting_guide(data):
    phi = pyro.param("phi", torch.tensor([[0.5, -0.5, 0.0], [0.0, 1.0, -1.0], [0.3, 0.0, 0.2]]))
    with pyro.plate("data", 3):
        pyro.sample("z", dist.Categorical(logits=phi))


def test_shape_asserting_model_falls_back_once(monkeypatch):
    data = MIX_DATA[:3]
    init(asserting_model, asserting_guide, data)
    assert_falls_back_to_sequential(monkeypatch, ["z"], asserting_model, asserting_guide,
                                    ["phi", "locs"], data, match="AssertionError")


@pytest.mark.slow
def test_shape_asserting_model_is_unbiased():
    data = MIX_DATA[:3]
    init(asserting_model, asserting_guide, data)
    names = ["phi", "locs"]
    exact = brute_force_gradient(asserting_model, asserting_guide, names, data)
    draws = sequential_draws(asserting_model, asserting_guide, names, 200, data)
    assert_unbiased(draws, exact, label="shape-asserting model")


# ---------------------------------------------------------------------------------------------
# What is remembered per model structure
# ---------------------------------------------------------------------------------------------


def test_failed_batched_pass_is_not_retried(monkeypatch):
    data = MIX_DATA[:3]
    calls = count_passes(monkeypatch)
    elbo = ARSM_ELBO()
    with pytest.warns(UserWarning, match="guide site 'z' failed.*AssertionError"):
        for _ in range(6):
            elbo.loss_and_grads(asserting_model, asserting_guide, data)
    # the check's batched attempt on the first step, then only the sequential path
    assert calls["batched"] == 1
    assert calls["sequential"] == 6  # (the check stopped at the failing batched pass)


def test_good_model_is_checked_once_then_batched(monkeypatch):
    calls = count_passes(monkeypatch)
    elbo = ARSM_ELBO()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(6):
            elbo.loss_and_grads(mixture_model, mixture_guide, MIX_DATA)
    assert calls["sequential"] == 1  # the check, on the first step only
    assert calls["batched"] == 6 + 1


# ---------------------------------------------------------------------------------------------
# degenerate models
# ---------------------------------------------------------------------------------------------


def _factor_guide():
    pyro.factor("f", torch.tensor(0.0), has_rsample=False)


@pytest.mark.parametrize("guide", [lambda: None, _factor_guide], ids=["empty", "factor"])
def test_degenerate_models_give_a_zero_loss(guide):
    elbo = ARSM_ELBO()
    reference = Trace_ELBO().loss(lambda: None, guide)
    assert elbo.loss(lambda: None, guide) == reference == 0.0
    assert elbo.loss_and_grads(lambda: None, guide) == 0.0
    loss = elbo.differentiable_loss(lambda: None, guide)
    assert torch.is_tensor(loss) and loss.item() == 0.0
    assert elbo(lambda: None, guide)().item() == 0.0
