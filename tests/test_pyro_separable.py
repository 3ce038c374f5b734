"""Element-separable sites: the per-element table of C evaluations, ARSM read off it,
the exact local expectation (``estimator="local"``), and bounded memory for the joint path."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro_exact import assert_unbiased, brute_force_gradient, enum_gradient, gradient_draws
from pyro_models import (
    PLATED_DATA,
    SUB_DATA,
    init,
    plated_guide,
    plated_model,
    single_guide,
    single_model,
    subsampled_guide,
    subsampled_model,
    to_event_guide,
    to_event_model,
)

from pyro_arsm import ARSM_ELBO
from pyro_arsm import estimators as est

pytestmark = pytest.mark.usefixtures("fresh_param_store")

ESTIMATORS = ["arsm", "ars", "rloo", "local"]


def draws_for(model, guide, names, args, estimator, particles=200, draws=40, mpn=1, **kwargs):
    elbo = ARSM_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=mpn,
                     estimator=estimator, **kwargs)
    return gradient_draws(elbo, model, guide, names, draws, *args)


# ---------------------------------------------------------------------------------------------
# The estimator arithmetic
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("C", [2, 3, 4, 7])
def test_arsm_from_columns_equals_arsm_on_every_swap_row(C):
    torch.manual_seed(C)
    logits = torch.randn(6, C)
    log_pi = est.sample_log_pi((6,), C)
    columns = torch.randn(C, 6)
    rows = est.pseudo_actions(log_pi, logits)  # [C(C-1)/2 + 1, 6]
    expected = est.arsm_grad(est.costs_from_columns(columns, rows), log_pi)
    assert torch.allclose(est.arsm_grad_from_columns(columns, log_pi, logits), expected,
                          atol=1e-5)
    # and the pseudo actions themselves, swap by swap
    pair = est.pair_index(C)
    actions = est.swap_actions(log_pi, logits)
    assert torch.equal(actions, rows[pair].permute(2, 0, 1))


@pytest.mark.parametrize("C", [2, 3, 9, 40, 200])
def test_sorted_swap_sums_equal_the_dense_swap_table(C):
    # _swap_costs_times reads (F w) off sorted prefix sums; check it against F built swap by swap
    torch.manual_seed(1000 + C)
    n = 50
    logits = 2 * torch.randn(n, C, dtype=torch.float64)
    log_pi = est.sample_log_pi((n,), C, dtype=torch.float64)
    table = torch.randn(n, C, dtype=torch.float64)
    weights = 1.0 / C - log_pi.exp()
    F = table.gather(-1, est.swap_actions(log_pi, logits).reshape(n, -1)).reshape(n, C, C)
    expected = (F @ weights.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(est._swap_costs_times(table, weights, log_pi, logits), expected,
                          rtol=1e-12, atol=1e-12)


def test_local_grad_is_the_gradient_of_the_expectation():
    logits = torch.randn(4, 5, requires_grad=True)
    columns = torch.randn(5, 4)
    (logits.softmax(-1) * columns.T).sum().backward()
    assert torch.allclose(est.local_grad(columns, logits.detach()), logits.grad, atol=1e-6)
    a = torch.randn(4, requires_grad=True)
    columns = torch.randn(2, 4)
    p = torch.sigmoid(a)
    ((1 - p) * columns[0] + p * columns[1]).sum().backward()
    assert torch.allclose(est.bernoulli_local_grad(columns, a.detach()), a.grad, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Models: a mixture (plate), LDA-style token plates, subsampling, poutine.scale
# ---------------------------------------------------------------------------------------------

# two documents of three tokens each, vocabulary of 4 words, 3 topics
WORDS = torch.tensor([[0, 1, 1], [3, 2, 3]])


def lda_model(words):
    topic_words = pyro.param("topic_words", torch.tensor(
        [[0.5, 0.2, 0.2, 0.1], [0.1, 0.6, 0.2, 0.1], [0.1, 0.1, 0.3, 0.5]]),
        constraint=dist.constraints.simplex)
    with pyro.plate("docs", 2, dim=-2):
        doc_topics = pyro.param("doc_topics", torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]]),
                                constraint=dist.constraints.simplex).unsqueeze(-2)
        with pyro.plate("tokens", 3, dim=-1):
            z = pyro.sample("z", dist.Categorical(doc_topics))
            pyro.sample("w", dist.Categorical(topic_words[z]), obs=words)


def lda_guide(words):
    phi = pyro.param("phi", torch.tensor([[[0.4, -0.2, 0.1], [0.0, 0.5, -0.5], [0.2, 0.2, 0.0]],
                                          [[-0.3, 0.1, 0.6], [0.3, 0.0, -0.1], [0.0, -0.4, 0.4]]]))
    with pyro.plate("docs", 2, dim=-2), pyro.plate("tokens", 3, dim=-1):
        pyro.sample("z", dist.Categorical(logits=phi))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_unbiased_mixture_plate(estimator):
    init(plated_model, plated_guide, PLATED_DATA)
    names = ["phi", "locs"]
    exact, _ = enum_gradient(plated_model, plated_guide, names, 1, PLATED_DATA)
    draws = draws_for(plated_model, plated_guide, names, (PLATED_DATA,), estimator)
    assert_unbiased(draws, exact, label=f"mixture plate, {estimator}")


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_unbiased_lda_token_plates(estimator):
    init(lda_model, lda_guide, WORDS)
    names = ["phi", "topic_words", "doc_topics"]
    exact, _ = enum_gradient(lda_model, lda_guide, names, 2, WORDS)
    draws = draws_for(lda_model, lda_guide, names, (WORDS,), estimator, mpn=2)
    assert_unbiased(draws, exact, label=f"LDA token plates, {estimator}")


@pytest.mark.parametrize("estimator", ["arsm", "local"])
def test_unbiased_plate_under_poutine_scale(estimator):
    init(plated_model, plated_guide, PLATED_DATA)
    names = ["phi", "locs"]
    exact, _ = enum_gradient(plated_model, plated_guide, names, 1, PLATED_DATA)
    draws = draws_for(plated_model, plated_guide, names, (PLATED_DATA, 2.5), estimator)
    assert_unbiased(draws, 2.5 * exact, label=f"poutine.scale(2.5), {estimator}")


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["arsm", "local"])
def test_unbiased_subsampled_plate(estimator):
    # one subsample per draw: few particles, many draws; the full-data gradient is the target
    init(subsampled_model, subsampled_guide, SUB_DATA)
    names = ["phi", "locs"]
    exact, _ = enum_gradient(subsampled_model, subsampled_guide, names, 1, SUB_DATA)
    elbo = ARSM_ELBO(num_particles=50, vectorize_particles=True, max_plate_nesting=1,
                     estimator=estimator)
    draws = gradient_draws(elbo, subsampled_model, subsampled_guide, names, 150, SUB_DATA, 2)
    assert_unbiased(draws, exact, label=f"subsample_size=2 of 6, {estimator}")


# ---------------------------------------------------------------------------------------------
# Cost, zero variance, non-separable sites
# ---------------------------------------------------------------------------------------------


def test_separable_site_costs_C_evaluations():
    init(plated_model, plated_guide, PLATED_DATA)
    for estimator in ["arsm", "local"]:
        elbo = ARSM_ELBO(max_plate_nesting=1, estimator=estimator)
        elbo.loss_and_grads(plated_model, plated_guide, PLATED_DATA)
        assert elbo.last_num_pseudo_evaluations == 4  # C = 4


def test_local_has_zero_variance_on_a_single_site():
    x = torch.tensor(0.7)
    init(single_model, single_guide, x)
    names = ["phi"]
    exact = brute_force_gradient(single_model, single_guide, names, x)
    draws = gradient_draws(ARSM_ELBO(estimator="local"), single_model, single_guide, names, 20, x)
    assert torch.allclose(draws, exact.expand_as(draws), atol=1e-5)
    assert (draws.std(0) < 1e-6).all()


def test_local_on_a_non_separable_site_warns_once_and_uses_arsm():
    x = torch.tensor(0.4)
    init(to_event_model, to_event_guide, x)
    names = ["phi", "scale"]
    exact = brute_force_gradient(to_event_model, to_event_guide, names, x)
    elbo = ARSM_ELBO(num_particles=200, vectorize_particles=True, max_plate_nesting=0,
                     estimator="local")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        draws = gradient_draws(elbo, to_event_model, to_event_guide, names, 40, x)
    messages = [str(w.message) for w in caught if "ARSM_ELBO" in str(w.message)]
    assert len(messages) == 1 and "not element-separable" in messages[0]
    assert_unbiased(draws, exact, label="local on a .to_event site (ARSM)")


def shared_term_model(data):
    locs = pyro.param("locs", torch.tensor([-1.0, 0.3, 1.2]))
    with pyro.plate("data", 3):
        z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
    # one likelihood term shared by the plate's elements, outside it
    pyro.sample("x", dist.Normal(locs[z].sum(-1, keepdim=True), 1.0), obs=data.sum())


def shared_term_guide(data):
    phi = pyro.param("phi", torch.tensor([[0.5, -0.5, 0.0], [0.0, 1.0, -1.0], [0.3, 0.0, 0.2]]))
    with pyro.plate("data", 3):
        pyro.sample("z", dist.Categorical(logits=phi))


@pytest.mark.parametrize("estimator", ["arsm", "local"])
def test_shared_term_outside_the_plate_takes_the_joint_path(estimator):
    data = PLATED_DATA[:3]
    init(shared_term_model, shared_term_guide, data)
    names = ["phi", "locs"]
    exact = brute_force_gradient(shared_term_model, shared_term_guide, names, data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        draws = draws_for(shared_term_model, shared_term_guide, names, (data,), estimator)
    assert_unbiased(draws, exact, label=f"shared term, {estimator}")
    assert len([w for w in caught if "not element-separable" in str(w.message)]) == (
        1 if estimator == "local" else 0)


# ---------------------------------------------------------------------------------------------
# Bounded memory for the joint path
# ---------------------------------------------------------------------------------------------


def wide_model(x):
    w = pyro.param("w", torch.linspace(-1.0, 1.0, 100))
    z = pyro.sample("z", dist.Categorical(logits=torch.zeros(100)).expand([100]).to_event(1))
    pyro.sample("x", dist.Normal(w[z].sum(-1) / 10, 1.0), obs=x)


def wide_guide(x):
    # flat logits: almost every one of the C(C-1)/2 = 4950 swaps gives a distinct vector
    phi = pyro.param("phi", torch.zeros(100, 100))
    pyro.sample("z", dist.Categorical(logits=phi).to_event(1))


def test_pseudo_batch_size_gives_the_same_gradient_and_many_evaluations_warn():
    x = torch.tensor(0.3)
    init(wide_model, wide_guide, x)
    grads = []
    for batch_size in [None, 1000]:
        pyro.set_rng_seed(3)
        elbo = ARSM_ELBO(pseudo_batch_size=batch_size)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss = elbo.differentiable_loss(wide_model, wide_guide, x)
        grads.append(torch.autograd.grad(loss, pyro.param("phi").unconstrained())[0])
        messages = [str(w.message) for w in caught if "ARSM_ELBO" in str(w.message)]
        assert elbo.last_num_pseudo_evaluations > 4096
        assert len(messages) == 1 and "'ars'" in messages[0] and "pseudo_batch_size" in messages[0]
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_pseudo_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="pseudo_batch_size"):
        ARSM_ELBO(pseudo_batch_size=0)
