"""Unit tests of ``numpyro_arsm.estimators`` (pure jax.numpy, no NumPyro), float32 throughout.

The same properties as ``tests/test_pyro_estimators.py``, with fixed ``jax.random`` keys, plus the
jit-traceability the NumPyro ELBO relies on. Each case compiles its own XLA programs (1-3 s on
two cores), so a parametrized property runs on one case in the quick stage (``-m "not slow"``)
and on every case in the full stage.
"""

import itertools

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from numpyro_exact import Z_MAX, assert_unbiased, z_scores  # noqa: E402

from numpyro_arsm import estimators as est  # noqa: E402

SLOW = pytest.mark.slow  # a case that runs in the full stage only


def _key(seed):
    return jax.random.PRNGKey(seed)


@pytest.mark.parametrize("C", [2, 3, 5, 10])
def test_swap_row_count_is_unordered_pairs_plus_identity(C):
    perms = np.asarray(est.swap_permutations(C))
    assert perms.dtype == np.int32
    assert perms.shape == (C * (C - 1) // 2 + 1, C) == (est.num_swap_rows(C), C)
    assert (perms[0] == np.arange(C)).all()
    # every row is a distinct transposition (or the identity)
    assert len({tuple(p.tolist()) for p in perms}) == perms.shape[0]
    moved = (perms != np.arange(C)).sum(-1)
    assert moved[0] == 0 and (moved[1:] == 2).all()


@pytest.mark.parametrize("C", [3, 6])
def test_pair_index_is_symmetric_and_matches_permutations(C):
    index = np.asarray(est.pair_index(C))
    perms = np.asarray(est.swap_permutations(C))
    assert index.dtype == np.int32
    assert (index == index.T).all() and (np.diag(index) == 0).all()
    for m, j in itertools.combinations(range(C), 2):
        expected = list(range(C))
        expected[m], expected[j] = j, m
        assert perms[index[m, j]].tolist() == expected


def test_pseudo_actions_match_explicit_swaps():
    C = 5
    logits = jax.random.normal(_key(1), (4, C))
    log_pi = est.sample_log_pi(_key(2), (4,), C)
    actions = est.pseudo_actions(log_pi, logits)  # [P, 4]
    assert actions.shape == (est.num_swap_rows(C), 4)
    index = np.asarray(est.pair_index(C))
    for m in range(C):
        for j in range(C):
            swapped = log_pi.at[:, [m, j]].set(log_pi[:, [j, m]])
            expected = jnp.argmin(swapped - logits, -1)
            assert (actions[index[m, j]] == expected).all()
    assert (actions[0] == est.categorical_from_log_pi(log_pi, logits)).all()


def test_sample_log_pi_is_dirichlet_and_sampling_is_softmax():
    C, n = 4, 200_000
    log_pi = est.sample_log_pi(_key(3), (n,), C)
    assert log_pi.shape == (n, C) and log_pi.dtype == jnp.float32
    assert jnp.isfinite(log_pi).all()
    assert jnp.allclose(jnp.exp(log_pi).sum(-1), 1.0, atol=1e-5)
    # Dirichlet(1_C) marginal: pi_1 ~ Beta(1, C-1) with mean 1/C and variance (C-1)/(C^2 (C+1))
    pi = jnp.exp(log_pi)
    se_mean = ((C - 1) / (C ** 2 * (C + 1)) / n) ** 0.5
    assert (jnp.abs(pi.mean(0) - 1 / C) < 5 * se_mean).all()
    logits = jnp.array([1.0, -0.5, 0.0, 2.0])
    z = est.categorical_from_log_pi(log_pi, logits)
    freq = jnp.bincount(z, length=C) / n
    p = jax.nn.softmax(logits)
    assert (jnp.abs(freq - p) < 5 * jnp.sqrt(p * (1 - p) / n)).all()


@pytest.mark.parametrize("C", [pytest.param(2, marks=SLOW), 3, pytest.param(7, marks=SLOW)])
def test_arsm_grad_sums_to_zero(C):
    log_pi = est.sample_log_pi(_key(4), (50, 3), C)
    costs = jax.random.normal(_key(5), (est.num_swap_rows(C), 50, 3))
    g = est.arsm_grad(costs, log_pi)
    assert g.shape == (50, 3, C)
    assert jnp.abs(g.sum(-1)).max() < 1e-5


def test_arsm_grad_rejects_wrong_number_of_swap_rows():
    log_pi = est.sample_log_pi(_key(6), (2,), 4)
    with pytest.raises(ValueError, match="7 swap rows"):
        est.arsm_grad(jnp.zeros((4, 2)), log_pi)


def test_arsm_grad_is_zero_when_every_pseudo_action_is_the_true_action():
    C = 4
    log_pi = est.sample_log_pi(_key(7), (10,), C)
    costs = jnp.broadcast_to(jax.random.normal(_key(8), (10,)), (est.num_swap_rows(C), 10))
    assert jnp.abs(est.arsm_grad(costs, log_pi)).max() == 0


def test_arsm_grad_equals_the_paper_matrix_form():
    # g = (F - colmean(F)) @ (1/C - pi) with F[m, j] = f(z^{m<->j})
    C = 5
    log_pi = est.sample_log_pi(_key(9), (), C)
    costs = jax.random.normal(_key(10), (est.num_swap_rows(C),))
    F = costs[est.pair_index(C)]
    expected = (F - F.mean(0, keepdims=True)) @ (1.0 / C - jnp.exp(log_pi))
    assert jnp.allclose(est.arsm_grad(costs, log_pi), expected, atol=1e-6)


def test_to_event_cost_is_shared_by_event_elements():
    # costs [P, 4] for log_pi [4, 3, C]: each batch element's cost scores its 3 event elements
    C = 3
    log_pi = est.sample_log_pi(_key(11), (4, 3), C)
    costs = jax.random.normal(_key(12), (est.num_swap_rows(C), 4))
    padded = jnp.broadcast_to(costs[:, :, None], (est.num_swap_rows(C), 4, 3))
    assert jnp.allclose(est.arsm_grad(costs, log_pi), est.arsm_grad(padded, log_pi))
    rows = est.ars_rows(1, C)
    assert jnp.allclose(est.ars_grad(costs[rows], log_pi, 1), est.ars_grad(padded[rows], log_pi, 1))
    assert jnp.allclose(est.ar_grad(costs[0], log_pi), est.ar_grad(padded[0], log_pi))


def test_c2_arsm_reduces_to_arm():
    # logits (a, 0), pi = (u, 1 - u): ARSM's gradient for a is ARM's (Yin & Zhou 2019)
    a = jax.random.normal(_key(13), (1000,))
    u = est.sample_uniform(_key(14), (1000,))
    log_pi = jnp.stack([jnp.log(u), jnp.log1p(-u)], -1)
    logits = jnp.stack([a, jnp.zeros_like(a)], -1)
    f = jnp.array([0.3, -1.7])  # f(category 0), f(category 1)
    actions = est.pseudo_actions(log_pi, logits)  # [2, n]
    g = est.arsm_grad(f[actions], log_pi)[..., 0]
    b, anti_b = est.bernoulli_pair(u, a)  # b = 1[z = category 0]
    assert (actions[0] == (1 - b).astype(jnp.int32)).all()
    assert (actions[1] == (1 - anti_b).astype(jnp.int32)).all()
    cost, anti_cost = f[(1 - b).astype(jnp.int32)], f[(1 - anti_b).astype(jnp.int32)]
    assert jnp.allclose(g, est.arm_grad(cost, anti_cost, u), atol=1e-6)


def _exact_categorical_grad(logits, f):
    p = jax.nn.softmax(logits)
    return p * (f - (p * f).sum())


@pytest.mark.parametrize("estimator", ["arsm", pytest.param("ars", marks=SLOW),
                                       pytest.param("ar", marks=SLOW)])
def test_univariate_estimators_unbiased(estimator):
    C, n = 5, 100_000
    logits = jnp.array([0.5, -1.0, 0.0, 1.5, -0.2])
    f = jnp.array([1.0, -2.0, 0.5, 0.0, 3.0])

    @jax.jit
    def draw(key):  # 1000 categoricals sharing one swap (and one ARS reference) per call
        return est.arsm_gradient(key, jnp.broadcast_to(logits, (1000, C)), lambda z: f[z],
                                 estimator=estimator)

    draws = jax.vmap(draw)(jax.random.split(_key(15), n // 1000)).reshape(-1, C)
    assert_unbiased(draws, _exact_categorical_grad(logits, f), label=f"univariate {estimator}")


def test_biased_ar_weight_is_detected():
    # the official code's pre-2020 AR weight (1 - pi) is biased: the same z-test must catch it
    C, n = 5, 100_000
    logits = jnp.array([0.5, -1.0, 0.0, 1.5, -0.2])
    f = jnp.array([1.0, -2.0, 0.5, 0.0, 3.0])
    log_pi = est.sample_log_pi(_key(16), (n,), C)
    z = est.categorical_from_log_pi(log_pi, logits)
    biased = f[z][:, None] * (1 - jnp.exp(log_pi))
    exact = _exact_categorical_grad(logits, f)
    assert z_scores(biased, exact)[0].max() > Z_MAX
    assert_unbiased(est.ar_grad(f[z], log_pi), exact, label="AR weight")


def test_multivariate_shared_swap_unbiased_for_joint_f():
    # K = 3 categoricals, one swap applied to all of them, non-separable f
    K, C, n = 3, 3, 60_000
    logits = jnp.array([[0.2, -0.4, 0.1], [1.0, 0.0, -0.5], [-0.3, 0.6, 0.0]])
    table = jax.random.normal(_key(17), (C, C, C))

    def f(z):  # z: [R, ..., K]
        return table[z[..., 0], z[..., 1], z[..., 2]]

    log_pi = est.sample_log_pi(_key(18), (n, K), C)
    actions = est.pseudo_actions(log_pi, logits)  # [P, n, K]
    g = est.arsm_grad(f(actions), log_pi)  # costs [P, n] shared by the K event elements

    def expected_cost(phi):  # exact: sum_z q(z) f(z)
        logq = jax.nn.log_softmax(phi, -1)
        joint = logq[0][:, None, None] + logq[1][None, :, None] + logq[2][None, None, :]
        return (jnp.exp(joint) * table).sum()

    exact = jax.grad(expected_cost)(logits)
    assert_unbiased(g.reshape(n, -1), exact.reshape(-1), label="shared swap, joint f")


@pytest.mark.parametrize("multivariate", [False, pytest.param(True, marks=SLOW)])
def test_disarm_unbiased_and_lower_variance_than_arm(multivariate):
    n = 200_000
    a = jnp.array([0.7, -1.2, 0.0]) if multivariate else jnp.array([0.7])
    u = est.sample_uniform(_key(19), (n, a.shape[0]))
    b, anti_b = est.bernoulli_pair(u, a)
    w = jnp.array([1.0, -2.0, 0.5])[: a.shape[0]]

    def f(x):
        return ((x * w).sum(-1) - 0.3) ** 2 + x[..., 0] * x[..., -1]

    disarm = est.disarm_grad(f(b), f(anti_b), b, anti_b, a)
    arm = est.arm_grad(f(b), f(anti_b), u)
    ar = est.bernoulli_ar_grad(f(b), u)
    configs = jnp.array(list(itertools.product([0.0, 1.0], repeat=a.shape[0])))

    def expected_cost(phi):
        p = jax.nn.sigmoid(phi)
        probs = (configs * p + (1 - configs) * (1 - p)).prod(-1)
        return (probs * f(configs)).sum()

    exact = jax.grad(expected_cost)(a)
    for name, draws in (("DisARM", disarm), ("ARM", arm), ("AR", ar)):
        assert_unbiased(draws, exact, label=f"{name}, multivariate={multivariate}")
    assert (disarm.var(0) <= arm.var(0) * 1.02).all()


def test_arsm_grad_and_pseudo_actions_jit_like_eager():
    C = 5
    logits = jax.random.normal(_key(20), (6, C))
    log_pi = est.sample_log_pi(_key(21), (6,), C)
    costs = jax.random.normal(_key(22), (est.num_swap_rows(C), 6))
    assert (jax.jit(est.pseudo_actions)(log_pi, logits) == est.pseudo_actions(log_pi, logits)).all()
    assert jnp.allclose(jax.jit(est.arsm_grad)(costs, log_pi), est.arsm_grad(costs, log_pi))
    # sampling inside jit: the swap tables are constants, shapes are static
    sample = jax.jit(est.sample_log_pi, static_argnums=(1, 2))
    assert jnp.allclose(sample(_key(21), (6,), C), log_pi)


def test_ars_grad_and_rows_accept_a_traced_reference():
    C = 4
    logits = jax.random.normal(_key(23), (3, C))
    log_pi = est.sample_log_pi(_key(24), (3,), C)
    costs = jax.random.normal(_key(25), (est.num_swap_rows(C), 3))

    @jax.jit
    def ars(reference):
        rows = est.ars_rows(reference, C)
        actions = est.pseudo_actions(log_pi, logits, rows)
        return actions, est.ars_grad(costs[rows], log_pi, reference)

    for reference in range(C):
        rows = est.ars_rows(reference, C)
        actions, g = ars(jnp.int32(reference))
        assert (actions == est.pseudo_actions(log_pi, logits)[rows]).all()
        assert jnp.allclose(g, est.ars_grad(costs[rows], log_pi, reference))
        assert int(rows[reference]) == 0


@pytest.mark.parametrize("estimator", ["arsm", pytest.param("ars", marks=SLOW),
                                       pytest.param("ar", marks=SLOW)])
def test_arsm_gradient_jits_and_returns_the_true_action(estimator):
    C = 4
    logits = jax.random.normal(_key(26), (5, C))
    f = jnp.array([0.5, -1.0, 2.0, 0.0])

    def gradient(key, logits):
        return est.arsm_gradient(key, logits, lambda z: f[z], estimator=estimator,
                                 return_action=True)

    g, z = jax.jit(gradient)(_key(27), logits)
    g_eager, z_eager = gradient(_key(27), logits)
    assert g.shape == (5, C) and z.shape == (5,)
    assert jnp.allclose(g, g_eager, atol=1e-6) and (z == z_eager).all()
    # no gradient flows through the estimator to the logits (the costs are constants)
    assert jnp.abs(jax.grad(lambda lg: gradient(_key(27), lg)[0].sum())(logits)).max() == 0


def test_arsm_gradient_rejects_unknown_estimator():
    message = "estimator must be 'arsm', 'ars', 'ar', 'rloo' or 'local'"
    with pytest.raises(ValueError, match=message):
        est.arsm_gradient(_key(28), jnp.zeros(3), lambda z: z * 1.0, estimator="reinforce")


# ---------------------------------------------------------------------------------------------
# Element-separable costs: per-element tables (column_actions, costs_from_columns, local_grad,
# bernoulli_local_grad, swap_actions, arsm_grad_from_columns)
# ---------------------------------------------------------------------------------------------


def test_column_actions_set_every_element_to_one_category():
    actions = jax.jit(est.column_actions, static_argnums=(0, 1))(4, (2, 3))
    assert actions.shape == (4, 2, 3) and actions.dtype == jnp.int32
    assert (actions == jnp.arange(4)[:, None, None]).all()
    assert est.column_actions(3, ()).tolist() == [0, 1, 2]


@pytest.mark.parametrize("C,element_shape", [pytest.param(2, (2, 3), marks=SLOW),
                                             pytest.param(3, (), marks=SLOW), (4, (2, 3)),
                                             pytest.param(7, (6,), marks=SLOW)])
def test_arsm_grad_from_columns_equals_arsm_grad_on_the_gathered_costs(C, element_shape):
    keys = jax.random.split(_key(100 + C), 3)
    logits = jax.random.normal(keys[0], element_shape + (C,))
    log_pi = est.sample_log_pi(keys[1], element_shape, C)
    columns = jax.random.normal(keys[2], (C,) + element_shape)
    actions = est.pseudo_actions(log_pi, logits)  # [P, *elements]
    costs = jax.jit(est.costs_from_columns)(columns, actions)
    np.testing.assert_array_equal(  # T[a_n, n]
        np.asarray(costs), np.take_along_axis(np.asarray(columns), np.asarray(actions), 0))
    expected = est.arsm_grad(costs, log_pi)
    g = jax.jit(est.arsm_grad_from_columns)(columns, log_pi, logits)
    assert g.shape == element_shape + (C,)
    assert jnp.allclose(g, expected, atol=1e-5)
    # swap_actions: the pseudo actions rows rearranged into [*elements, m, j]
    swaps = jax.jit(est.swap_actions)(log_pi, logits)
    assert swaps.shape == element_shape + (C, C) and swaps.dtype == actions.dtype
    expected_swaps = np.moveaxis(np.asarray(actions)[np.asarray(est.pair_index(C))], (0, 1),
                                 (-2, -1))
    np.testing.assert_array_equal(np.asarray(swaps), expected_swaps)


@pytest.mark.parametrize("C", [pytest.param(2, marks=SLOW), pytest.param(3, marks=SLOW),
                               pytest.param(9, marks=SLOW), pytest.param(40, marks=SLOW), 200])
def test_sorted_swap_sums_equal_the_dense_swap_table(C):
    # _swap_costs_times (used from C = 160 on) reads (F w) off sorted prefix sums; check it
    # against F built swap by swap
    keys = jax.random.split(_key(1000 + C), 3)
    n = 50
    logits = 2 * jax.random.normal(keys[0], (n, C))
    log_pi = est.sample_log_pi(keys[1], (n,), C)
    table = jax.random.normal(keys[2], (n, C))
    weights = 1.0 / C - jnp.exp(log_pi)
    F = jnp.take_along_axis(table[:, None, :], est.swap_actions(log_pi, logits), -1)
    expected = (F * weights[:, None, :]).sum(-1)
    got = jax.jit(est._swap_costs_times)(table, weights, log_pi, logits)
    assert jnp.allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_arsm_grad_from_columns_with_logits_shared_by_the_elements():
    C = 5
    logits = jax.random.normal(_key(110), (C,))
    log_pi = est.sample_log_pi(_key(111), (8,), C)
    columns = jax.random.normal(_key(112), (C, 8))
    expected = est.arsm_grad(est.costs_from_columns(columns, est.pseudo_actions(log_pi, logits)),
                             log_pi)
    assert jnp.allclose(jax.jit(est.arsm_grad_from_columns)(columns, log_pi, logits), expected,
                        atol=1e-5)
    swaps = est.swap_actions(log_pi, logits)
    assert (swaps == jnp.moveaxis(est.pseudo_actions(log_pi, logits)[est.pair_index(C)],
                                  (0, 1), (-2, -1))).all()


@pytest.mark.parametrize("element_shape", [pytest.param((), marks=SLOW), (2, 3)])
def test_local_grad_is_the_gradient_of_the_expectation(element_shape):
    C = 5
    logits = jax.random.normal(_key(120), element_shape + (C,))
    columns = jax.random.normal(_key(121), (C,) + element_shape)

    def expectation(phi):  # sum_n E_{q_n}[f_n] = sum_n sum_k q_nk T[k, n]
        return (jax.nn.softmax(phi, -1) * jnp.moveaxis(columns, 0, -1)).sum()

    exact = jax.grad(expectation)(logits)
    assert jnp.allclose(jax.jit(est.local_grad)(columns, logits), exact, atol=1e-6)


@pytest.mark.parametrize("element_shape", [pytest.param((), marks=SLOW), (2, 3)])
def test_bernoulli_local_grad_is_the_gradient_of_the_expectation(element_shape):
    a = jax.random.normal(_key(122), element_shape)
    columns = jax.random.normal(_key(123), (2,) + element_shape)

    def expectation(a):  # sum_n (1 - p_n) T[0, n] + p_n T[1, n]
        p = jax.nn.sigmoid(a)
        return ((1 - p) * columns[0] + p * columns[1]).sum()

    exact = jax.grad(expectation)(a)
    assert jnp.allclose(jax.jit(est.bernoulli_local_grad)(columns, a), exact, atol=1e-6)
    # the C = 2 categorical with logits (a, 0): category 0 is b = 1
    logits = jnp.stack([a, jnp.zeros_like(a)], -1)
    g = est.local_grad(columns[::-1], logits)[..., 0]
    assert jnp.allclose(g, exact, atol=1e-6)


def test_arsm_gradient_local_jits_and_is_exact():
    C = 4
    logits = jax.random.normal(_key(124), (5, C))
    f = jnp.array([0.5, -1.0, 2.0, 0.0])

    def gradient(key, logits):
        return est.arsm_gradient(key, logits, lambda z: f[z], estimator="local",
                                 return_action=True)

    g, z = jax.jit(gradient)(_key(125), logits)
    assert g.shape == (5, C) and z.shape == (5,)
    exact = jax.vmap(_exact_categorical_grad, (0, None))(logits, f)
    assert jnp.allclose(g, exact, atol=1e-6)
    # a cost shared by all elements (one scalar per column row) broadcasts
    g_scalar = est.arsm_gradient(_key(125), logits[0], lambda z: f[z], estimator="local")
    assert jnp.allclose(g_scalar, exact[0], atol=1e-6)
    # no gradient flows through the estimator to the logits
    assert jnp.abs(jax.grad(lambda lg: gradient(_key(125), lg)[0].sum())(logits)).max() == 0
