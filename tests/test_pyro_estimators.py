"""Unit tests of ``pyro_arsm.estimators`` (pure torch, no Pyro)."""

import itertools

import pytest
import torch
from pyro_exact import Z_MAX, assert_unbiased, z_scores

from pyro_arsm import estimators as est

pytestmark = pytest.mark.usefixtures("torch_seed")


@pytest.mark.parametrize("C", [2, 3, 5, 10])
def test_swap_row_count_is_unordered_pairs_plus_identity(C):
    perms = est.swap_permutations(C)
    assert perms.shape == (C * (C - 1) // 2 + 1, C) == (est.num_swap_rows(C), C)
    assert (perms[0] == torch.arange(C)).all()
    # every row is a distinct transposition (or the identity)
    assert len({tuple(p.tolist()) for p in perms}) == perms.shape[0]
    moved = (perms != torch.arange(C)).sum(-1)
    assert moved[0] == 0 and (moved[1:] == 2).all()


@pytest.mark.parametrize("C", [3, 6])
def test_pair_index_is_symmetric_and_matches_permutations(C):
    index = est.pair_index(C)
    perms = est.swap_permutations(C)
    assert (index == index.T).all() and (index.diag() == 0).all()
    for m, j in itertools.combinations(range(C), 2):
        expected = list(range(C))
        expected[m], expected[j] = j, m
        assert perms[index[m, j]].tolist() == expected


def test_pseudo_actions_match_explicit_swaps():
    C = 5
    logits = torch.randn(4, C)
    log_pi = est.sample_log_pi((4,), C)
    actions = est.pseudo_actions(log_pi, logits)  # [P, 4]
    index = est.pair_index(C)
    for m in range(C):
        for j in range(C):
            swapped = log_pi.clone()
            swapped[:, [m, j]] = log_pi[:, [j, m]]
            expected = torch.argmin(swapped - logits, -1)
            assert (actions[index[m, j]] == expected).all()
    assert (actions[0] == est.categorical_from_log_pi(log_pi, logits)).all()


def test_sample_log_pi_is_dirichlet_and_sampling_is_softmax():
    C, n = 4, 200_000
    log_pi = est.sample_log_pi((n,), C)
    assert torch.allclose(log_pi.exp().sum(-1), torch.ones(n), atol=1e-5)
    # Dirichlet(1_C) marginal: pi_1 ~ Beta(1, C-1) with mean 1/C and variance (C-1)/(C^2 (C+1))
    pi = log_pi.exp()
    se_mean = ((C - 1) / (C ** 2 * (C + 1)) / n) ** 0.5
    assert ((pi.mean(0) - 1 / C).abs() < 5 * se_mean).all()
    logits = torch.tensor([1.0, -0.5, 0.0, 2.0])
    z = est.categorical_from_log_pi(log_pi, logits)
    freq = torch.bincount(z, minlength=C).float() / n
    p = logits.softmax(-1)
    assert ((freq - p).abs() < 5 * (p * (1 - p) / n).sqrt()).all()


@pytest.mark.parametrize("C", [2, 3, 7])
def test_arsm_grad_sums_to_zero(C):
    log_pi = est.sample_log_pi((50, 3), C)
    costs = torch.randn(est.num_swap_rows(C), 50, 3)
    g = est.arsm_grad(costs, log_pi)
    assert g.shape == (50, 3, C)
    assert g.sum(-1).abs().max() < 1e-5


def test_arsm_grad_is_zero_when_every_pseudo_action_is_the_true_action():
    C = 4
    log_pi = est.sample_log_pi((10,), C)
    costs = torch.randn(10).expand(est.num_swap_rows(C), 10)
    assert est.arsm_grad(costs, log_pi).abs().max() == 0


def test_arsm_grad_equals_the_paper_matrix_form():
    # g = (F - colmean(F)) @ (1/C - pi) with F[m, j] = f(z^{m<->j})
    C = 5
    log_pi = est.sample_log_pi((), C)
    costs = torch.randn(est.num_swap_rows(C))
    F = costs[est.pair_index(C)]
    expected = (F - F.mean(0, keepdim=True)) @ (1.0 / C - log_pi.exp())
    assert torch.allclose(est.arsm_grad(costs, log_pi), expected, atol=1e-6)


def test_c2_arsm_reduces_to_arm():
    # logits (a, 0), pi = (u, 1 - u): ARSM's gradient for a is ARM's (Yin & Zhou 2019)
    a = torch.randn(1000)
    u = torch.rand(1000)
    log_pi = torch.stack([u.log(), (1 - u).log()], -1)
    logits = torch.stack([a, torch.zeros_like(a)], -1)
    f = torch.tensor([0.3, -1.7])  # f(category 0), f(category 1)
    actions = est.pseudo_actions(log_pi, logits)  # [2, n]
    g = est.arsm_grad(f[actions], log_pi)[..., 0]
    b, anti_b = est.bernoulli_pair(u, a)  # b = 1[z = category 0]
    assert (actions[0] == (1 - b).long()).all() and (actions[1] == (1 - anti_b).long()).all()
    cost, anti_cost = f[(1 - b).long()], f[(1 - anti_b).long()]
    assert torch.allclose(g, est.arm_grad(cost, anti_cost, u), atol=1e-6)


def _exact_categorical_grad(logits, f):
    p = logits.softmax(-1)
    return p * (f - (p * f).sum())


@pytest.mark.parametrize("estimator", ["arsm", "ars", "ar"])
def test_univariate_estimators_unbiased(estimator):
    C, n = 5, 100_000
    logits = torch.tensor([0.5, -1.0, 0.0, 1.5, -0.2])
    f = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
    draws = torch.stack([
        est.arsm_gradient(logits.expand(1000, C), lambda z: f[z], estimator=estimator)
        for _ in range(n // 1000)
    ]).reshape(-1, C)
    assert_unbiased(draws, _exact_categorical_grad(logits, f), label=f"univariate {estimator}")


def test_biased_ar_weight_is_detected():
    # the official code's pre-2020 AR weight (1 - pi) is biased: the same z-test must catch it
    C, n = 5, 100_000
    logits = torch.tensor([0.5, -1.0, 0.0, 1.5, -0.2])
    f = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
    log_pi = est.sample_log_pi((n,), C)
    z = est.categorical_from_log_pi(log_pi, logits)
    biased = f[z].unsqueeze(-1) * (1 - log_pi.exp())
    exact = _exact_categorical_grad(logits, f)
    assert z_scores(biased, exact)[0].max() > Z_MAX
    assert_unbiased(est.ar_grad(f[z], log_pi), exact, label="AR weight")


def test_multivariate_shared_swap_unbiased_for_joint_f():
    # K = 3 categoricals, one swap applied to all of them, non-separable f
    K, C, n = 3, 3, 60_000
    logits = torch.tensor([[0.2, -0.4, 0.1], [1.0, 0.0, -0.5], [-0.3, 0.6, 0.0]])
    table = torch.randn(C, C, C)

    def f(z):  # z: [R, ..., K]
        return table[z[..., 0], z[..., 1], z[..., 2]]

    log_pi = est.sample_log_pi((n, K), C)
    actions = est.pseudo_actions(log_pi, logits)  # [P, n, K]
    g = est.arsm_grad(f(actions), log_pi)  # costs [P, n] shared by the K event elements
    # exact: d/dlogits sum_z q(z) f(z)
    phi = logits.clone().requires_grad_()
    logq = phi.log_softmax(-1)
    joint = logq[0][:, None, None] + logq[1][None, :, None] + logq[2][None, None, :]
    (exact,) = torch.autograd.grad((joint.exp() * table).sum(), phi)
    assert_unbiased(g.reshape(n, -1), exact.reshape(-1), label="shared swap, joint f")


@pytest.mark.parametrize("multivariate", [False, True])
def test_disarm_unbiased_and_lower_variance_than_arm(multivariate):
    n = 200_000
    a = torch.tensor([0.7, -1.2, 0.0]) if multivariate else torch.tensor([0.7])
    u = torch.rand(n, a.shape[0])
    b, anti_b = est.bernoulli_pair(u, a)
    w = torch.tensor([1.0, -2.0, 0.5])[: a.shape[0]]

    def f(x):
        return ((x * w).sum(-1) - 0.3) ** 2 + x[..., 0] * x[..., -1]

    disarm = est.disarm_grad(f(b), f(anti_b), b, anti_b, a)
    arm = est.arm_grad(f(b), f(anti_b), u)
    ar = est.bernoulli_ar_grad(f(b), u)
    phi = a.clone().requires_grad_()
    p = phi.sigmoid()
    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=a.shape[0])))
    probs = (configs * p + (1 - configs) * (1 - p)).prod(-1)
    (exact,) = torch.autograd.grad((probs * f(configs)).sum(), phi)
    for name, draws in (("DisARM", disarm), ("ARM", arm), ("AR", ar)):
        assert_unbiased(draws, exact, label=f"{name}, multivariate={multivariate}")
    assert (disarm.var(0) <= arm.var(0) * 1.02).all()
