"""ARSM, ARS, AR, ARM and DisARM gradient estimators in plain ``jax.numpy`` (no NumPyro).

A port of :mod:`pyro_arsm.estimators` with the same names, argument order and shape conventions;
the shared JSON vectors in ``tests/data/parity_vectors.json`` pin the two to each other. The only
difference is the randomness: functions that draw random numbers take a ``jax.random`` key as
their first argument.

Notation follows Yin, Yue & Zhou, "ARSM: Augment-REINFORCE-Swap-Merge Estimator for
Gradient Backpropagation Through Categorical Variables" (ICML 2019, arXiv:1905.01413).

A categorical variable with logits ``phi`` of shape ``[..., C]`` is sampled by Dirichlet
augmentation: ``pi ~ Dirichlet(1_C)`` and ``z = argmin_i (log pi_i - phi_i)`` (the Gumbel-max
trick in disguise). Swapping entries ``m`` and ``j`` of ``pi`` gives the pseudo action
``z^{m<->j}``. With ``F[m, j] = f(z^{m<->j})`` (symmetric, ``f(z)`` on the diagonal) the ARSM
estimate of ``d E[f(z)] / d phi`` is::

    g = (F - colmean(F)) @ (1/C - pi)

A site with many elements (a plate, or ``.to_event``) applies the *same* swap to every element,
so all pseudo actions of a site are indexed by the ``C(C-1)/2 + 1`` unordered swaps
(``m < j``, plus the identity). This module represents them as *swap rows*: row 0 is the
identity (the true action) and row ``p >= 1`` is one pair ``(m, j)``, ``m < j``. Functions that
take a table of costs take it as ``pseudo_costs[p, ...]``, one cost per swap row, and rebuild the
symmetric ``C x C`` table ``F`` with :func:`pair_index`.

All functions broadcast over arbitrary leading batch dimensions and are traceable by
``jax.jit`` / ``jax.vmap``: every shape depends only on static shapes and on ``C``, the swap
tables are constants, and the ARS reference category may be a traced integer. The costs are
treated as constants by the callers.

For Bernoulli variables the module offers ARM (Yin & Zhou, ICLR 2019), which is ARSM with
``C = 2``, and its Rao-Blackwellization DisARM (Dong, Mnih & Tucker, NeurIPS 2020).
"""

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ESTIMATORS",
    "sample_log_pi",
    "categorical_from_log_pi",
    "num_swap_rows",
    "swap_permutations",
    "pair_index",
    "pseudo_actions",
    "swap_table",
    "arsm_grad",
    "ars_grad",
    "ar_grad",
    "ars_rows",
    "sample_uniform",
    "sample_categorical",
    "bernoulli_pair",
    "arm_grad",
    "disarm_grad",
    "bernoulli_ar_grad",
    "rloo_grad",
    "bernoulli_rloo_grad",
    "column_actions",
    "costs_from_columns",
    "local_grad",
    "bernoulli_local_grad",
    "swap_actions",
    "arsm_grad_from_columns",
    "estimator_actions",
    "estimator_gradient",
    "arsm_gradient",
]

#: The estimator names, the one list of them: ``ARSM_ELBO(estimator=...)``, :func:`arsm_gradient`
#: and :func:`numpyro_arsm.compare.compare_estimators` accept these.
ESTIMATORS = ("arsm", "ars", "ar", "rloo", "local")


# ---------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------


def sample_log_pi(key, shape, num_categories, dtype=jnp.float32):
    """Draw ``log pi`` with ``pi ~ Dirichlet(1_C)``, computed in log space.

    ``pi = eps / sum(eps)`` with ``eps_i ~ Exp(1)`` iid, so
    ``log pi = log eps - log sum eps``; no ``log(pi + 1e-10)`` clamp is needed.

    :param key: a ``jax.random`` key.
    :param shape: batch shape ``[...]``.
    :param int num_categories: ``C``.
    :returns: array of shape ``[..., C]``.
    """
    shape = tuple(shape) + (num_categories,)
    eps = jax.random.exponential(key, shape, dtype=dtype)
    # exponential can return exactly 0 (from a uniform draw of 0); keep the log finite.
    log_eps = jnp.log(jnp.maximum(eps, jnp.finfo(eps.dtype).tiny))
    return log_eps - jax.nn.logsumexp(log_eps, axis=-1, keepdims=True)


def categorical_from_log_pi(log_pi, logits):
    """The true action ``z = argmin_i (log pi_i - phi_i)``.

    :param log_pi: ``[..., C]``.
    :param logits: ``[..., C]`` (broadcastable to ``log_pi``).
    :returns: integer array ``[...]``; ``P(z = c) = softmax(phi)_c``.
    """
    return jnp.argmin(log_pi - logits, axis=-1)


# ---------------------------------------------------------------------------------------------
# Swap rows
# ---------------------------------------------------------------------------------------------


def num_swap_rows(num_categories):
    """``C(C-1)/2 + 1``: the number of distinct swaps of a ``C``-vector, identity included."""
    return num_categories * (num_categories - 1) // 2 + 1


@functools.lru_cache(maxsize=None)
def _swap_tables(num_categories):
    # Cached as numpy (not jax) arrays: a jax array first created inside a trace must not be
    # cached, and numpy constants are embedded in any trace for free.
    C = num_categories
    perms = [list(range(C))]
    index = [[0] * C for _ in range(C)]
    for m in range(C):
        for j in range(m + 1, C):
            perm = list(range(C))
            perm[m], perm[j] = j, m
            index[m][j] = index[j][m] = len(perms)
            perms.append(perm)
    perms = np.array(perms, dtype=np.int32)
    index = np.array(index, dtype=np.int32)
    perms.flags.writeable = False
    index.flags.writeable = False
    return perms, index


def swap_permutations(num_categories):
    """Permutations of the ``C`` categories, one per swap row.

    :returns: int32 array ``[P, C]`` with ``P = C(C-1)/2 + 1``; row 0 is the identity and row
        ``pair_index(C)[m, j]`` exchanges ``m`` and ``j``. ``log_pi[..., perm[p]]`` is
        ``log pi`` with the swap of row ``p`` applied.
    """
    return jnp.asarray(_swap_tables(num_categories)[0])


def pair_index(num_categories):
    """The swap row of each ordered pair: ``[C, C]`` int32, symmetric, zero on the diagonal.

    ``F = pseudo_costs[pair_index(C)]`` rebuilds the symmetric ARSM table from one cost per
    swap row, because ``z^{m<->j} = z^{j<->m}`` and ``z^{m<->m} = z``.
    """
    return jnp.asarray(_swap_tables(num_categories)[1])


def pseudo_actions(log_pi, logits, rows=None):
    """Pseudo actions ``z^{m<->j} = argmin_i (log pi^{m<->j}_i - phi_i)`` for swap rows.

    The same swap is applied to every element of the batch, as the multivariate ARSM
    requires (all elements of one site share the pair ``(m, j)``).

    :param log_pi: ``[..., C]``.
    :param logits: ``[..., C]``, broadcastable to ``log_pi``.
    :param rows: optional integer array ``[R]`` of swap rows to compute (default: all ``P``);
        may be traced (e.g. :func:`ars_rows` of a traced reference).
    :returns: integer array ``[R, ...]``; row ``r`` is the action under swap ``rows[r]``.
        Row 0 of the full table is the true action.
    """
    C = log_pi.shape[-1]
    perms = swap_permutations(C)
    if rows is not None:
        perms = jnp.take(perms, rows, axis=0)
    swapped = log_pi[..., perms]  # [..., R, C]
    actions = jnp.argmin(swapped - jnp.expand_dims(logits, -2), axis=-1)  # [..., R]
    return jnp.moveaxis(actions, -1, 0)


def swap_table(pseudo_costs, num_categories):
    """Symmetric ARSM table ``F[m, j, ...] = f(z^{m<->j})`` from one cost per swap row.

    :param pseudo_costs: ``[P, ...]``.
    :returns: ``[C, C, ...]``.
    """
    return jnp.asarray(pseudo_costs)[pair_index(num_categories)]


# ---------------------------------------------------------------------------------------------
# Categorical estimators
# ---------------------------------------------------------------------------------------------


def _pad_costs(costs, lead, batch_ndim):
    # A cost may have fewer trailing dims than the variable it scores (a to_event site: one
    # cost per batch element, shared by its event elements). Right-pad so they broadcast.
    costs = jnp.asarray(costs)
    extra = lead + batch_ndim - costs.ndim
    if extra > 0:
        costs = jnp.reshape(costs, costs.shape + (1,) * extra)
    return costs


def arsm_grad(pseudo_costs, log_pi):
    """ARSM estimate of ``d E[f(z)] / d phi`` (the "merge" over all reference categories).

    ``g_m = sum_j (F[m, j] - (1/C) sum_m' F[m', j]) (1/C - pi_j)``, i.e.
    ``g = (F - colmean(F)) @ (1/C - pi)`` (Yin, Yue & Zhou 2019; for a multivariate site the same
    swap is applied to every element).

    :param pseudo_costs: ``[P, *b]`` costs ``f`` at the ``P = C(C-1)/2 + 1`` swap rows
        (:func:`pseudo_actions`); ``*b`` must broadcast against ``log_pi.shape[:-1]`` after
        right-padding (a cost shared by the trailing event dims of a ``to_event`` site).
    :param log_pi: ``[..., C]`` the augmenting Dirichlet draw.
    :returns: ``[..., C]``; sums to zero over the last dim (up to rounding).
    """
    C = log_pi.shape[-1]
    pseudo_costs = jnp.asarray(pseudo_costs)
    if pseudo_costs.shape[0] != num_swap_rows(C):
        raise ValueError(
            f"arsm_grad expects {num_swap_rows(C)} swap rows for C={C}, "
            f"got pseudo_costs of shape {tuple(pseudo_costs.shape)}"
        )
    pseudo_costs = _pad_costs(pseudo_costs, 1, log_pi.ndim - 1)
    F = swap_table(pseudo_costs, C)  # [C(m), C(j), ...]
    F = F - F.mean(0, keepdims=True)  # centre over the swapped category m, per reference j
    F = jnp.moveaxis(F, (0, 1), (-2, -1))  # [..., m, j]
    weights = jnp.expand_dims(1.0 / C - jnp.exp(log_pi), -2)  # [..., 1, j]
    return (F * weights).sum(-1)


def ars_rows(reference, num_categories):
    """Swap rows ``z^{m<->j}``, ``m = 0..C-1``, needed by ARS with reference category ``j``.

    :param reference: ``j``, a Python int or a traced integer scalar.
    :returns: int32 array ``[C]``; entry ``reference`` is row 0 (the true action).
    """
    return jnp.take(pair_index(num_categories), reference, axis=1)


def ars_grad(reference_costs, log_pi, reference):
    """ARS estimate with a single reference category ``j`` (Swap without Merge).

    ``g_m = (f(z^{m<->j}) - (1/C) sum_m' f(z^{m'<->j})) (1 - C pi_j)`` (Yin, Yue & Zhou 2019).
    Unbiased when ``j`` is drawn independently of ``pi`` (e.g. uniformly).

    :param reference_costs: ``[C, *b]``: ``reference_costs[m] = f(z^{m<->j})``
        (rows :func:`ars_rows`).
    :param log_pi: ``[..., C]``.
    :param reference: ``j``, a Python int or a traced integer scalar.
    :returns: ``[..., C]``.
    """
    C = log_pi.shape[-1]
    if reference_costs.shape[0] != C:
        raise ValueError(
            f"ars_grad expects C={C} rows (ars_rows), got reference_costs of shape "
            f"{tuple(reference_costs.shape)}"
        )
    reference_costs = _pad_costs(reference_costs, 1, log_pi.ndim - 1)
    centred = reference_costs - reference_costs.mean(0, keepdims=True)
    centred = jnp.moveaxis(centred, 0, -1)  # [..., m]
    weight = 1.0 - C * jnp.exp(jnp.take(log_pi, reference, axis=-1))
    return centred * jnp.expand_dims(weight, -1)


def ar_grad(cost, log_pi):
    """AR (Augment-REINFORCE) estimate ``g_c = f(z) (1 - C pi_c)`` (Yin, Yue & Zhou 2019).

    One evaluation of ``f``, high variance. (The official code's pre-2020 ``(1 - pi_c)`` weight
    is biased; this is the corrected form.)

    :param cost: ``[*b]`` the cost at the true action.
    :param log_pi: ``[..., C]``.
    """
    C = log_pi.shape[-1]
    cost = _pad_costs(cost, 0, log_pi.ndim - 1)
    return jnp.expand_dims(cost, -1) * (1.0 - C * jnp.exp(log_pi))


# ---------------------------------------------------------------------------------------------
# Bernoulli estimators
# ---------------------------------------------------------------------------------------------


def sample_uniform(key, shape, dtype=jnp.float32):
    """``u ~ Uniform(0, 1)`` of the given shape (the Bernoulli augmentation)."""
    return jax.random.uniform(key, tuple(shape), dtype=dtype)


def sample_categorical(key, num_samples, logits):
    """``num_samples`` independent draws from ``Categorical(logits=logits)`` by inverse CDF (one
    uniform per draw): int32 ``[num_samples, *logits.shape[:-1]]``. The extra samples of RLOO."""
    cdf = jnp.cumsum(jax.nn.softmax(logits, -1), -1)[..., :-1]
    u = sample_uniform(key, (num_samples,) + tuple(jnp.shape(logits)[:-1]), dtype=cdf.dtype)
    return (u[..., None] > cdf).sum(-1).astype(jnp.int32)


def bernoulli_pair(u, logits):
    """The sample ``b = 1[u < sigmoid(a)]`` and its antithetic ``b~ = 1[1 - u < sigmoid(a)]``.

    Both are ``Bernoulli(sigmoid(a))``. Returned as floating arrays (NumPyro's value dtype).
    """
    p = jax.nn.sigmoid(logits)
    return (u < p).astype(p.dtype), ((1.0 - u) < p).astype(p.dtype)


def arm_grad(cost, anti_cost, u):
    """ARM estimate (Yin & Zhou 2019) of ``d E[f(b)] / d a``: ``(f(b~) - f(b)) (u - 1/2)``.

    This is ARSM with ``C = 2`` on logits ``(a, 0)``.

    :param cost: ``f(b)``, ``[*b]``.
    :param anti_cost: ``f(b~)``, ``[*b]``.
    :param u: ``[...]``, the uniform that generated ``b`` and ``b~`` (:func:`bernoulli_pair`).
    """
    u = jnp.asarray(u)
    return _pad_costs(jnp.asarray(anti_cost) - cost, 0, u.ndim) * (u - 0.5)


def disarm_grad(cost, anti_cost, b, anti_b, logits):
    """DisARM estimate (Dong, Mnih & Tucker 2020) of ``d E[f(b)] / d a``.

    ``g_k = 1/2 (f(b) - f(b~)) (-1)^{b~_k} 1[b_k != b~_k] sigmoid(|a_k|)``; for a vector
    ``b`` with a joint ``f`` the pair is formed for all elements at once. Zero wherever
    ``b == b~``.

    :param cost: ``f(b)``, ``[*b]`` (broadcast over trailing event dims of ``b``).
    :param anti_cost: ``f(b~)``.
    :param b: ``[...]`` sample (0./1.).
    :param anti_b: ``[...]`` antithetic sample.
    :param logits: ``[...]``.
    """
    b = jnp.asarray(b)
    diff = _pad_costs(jnp.asarray(cost) - anti_cost, 0, b.ndim)
    sign = 1.0 - 2.0 * anti_b
    return 0.5 * diff * sign * (b != anti_b).astype(diff.dtype) * jax.nn.sigmoid(jnp.abs(logits))


def bernoulli_ar_grad(cost, u):
    """AR for a Bernoulli with logit ``a`` (``C = 2`` with logits ``(a, 0)``): ``f(b) (1 - 2u)``."""
    u = jnp.asarray(u)
    return _pad_costs(cost, 0, u.ndim) * (1.0 - 2.0 * u)


# ---------------------------------------------------------------------------------------------
# REINFORCE with leave-one-out baselines (the equal-budget competitor)
# ---------------------------------------------------------------------------------------------


def _leave_one_out(costs):
    # f_i - (1/(n-1)) sum_{j != i} f_j
    n = costs.shape[0]
    if n < 2:
        raise ValueError(f"leave-one-out baselines need at least 2 samples, got {n}")
    return costs - (costs.sum(0, keepdims=True) - costs) / (n - 1)


def rloo_grad(costs, actions, logits):
    """REINFORCE with leave-one-out baselines (RLOO; Kool, van Hoof & Welling 2019) for ``n``
    independent samples ``z_i`` of a categorical with logits ``phi``:

    ``g = (1/n) sum_i (f(z_i) - (1/(n-1)) sum_{j != i} f(z_j)) (onehot(z_i) - softmax(phi))``.

    :param costs: ``[n, *b]`` (right-padded like :func:`arsm_grad`'s costs).
    :param actions: integer ``[n, ...]``, the samples.
    :param logits: ``[..., C]``.
    :returns: ``[..., C]``.
    """
    C = logits.shape[-1]
    centred = _pad_costs(_leave_one_out(costs), 1, logits.ndim - 1)
    # The leave-one-out-centred costs sum to zero over the samples, so the softmax part of the
    # score cancels: g = (1/n) sum_i centred_i onehot(z_i).
    return (centred[..., None] * jax.nn.one_hot(actions, C, dtype=logits.dtype)).mean(0)


def bernoulli_rloo_grad(costs, samples, logits):
    """RLOO for ``n`` independent samples ``b_i`` of a Bernoulli with logit ``a``:
    ``(1/n) sum_i (f(b_i) - mean_{j != i} f(b_j)) (b_i - sigmoid(a))``.

    :param costs: ``[n, *b]``; :param samples: ``[n, ...]`` (0/1); :param logits: ``[...]``.
    """
    centred = _pad_costs(_leave_one_out(costs), 1, logits.ndim)
    return (centred * (samples - jax.nn.sigmoid(logits))).mean(0)


# ---------------------------------------------------------------------------------------------
# Element-separable costs: one cost per category and element
# ---------------------------------------------------------------------------------------------
#
# When the cost of element n depends on z_n only, f_n(z) = T[z_n, n], C evaluations (every
# element set to category k in the k-th) give the whole table T, and every swap's cost is a
# gather. With T the exact local expectation (Titsias & Lazaro-Gredilla, "Local expectation
# gradients for black box variational inference", NeurIPS 2015) is free as well.


def column_actions(num_categories, element_shape):
    """``[C, *element_shape]`` int32: the ``k``-th row sets every element to category ``k``.

    ``element_shape`` must be static (a tuple of Python ints).
    """
    element_shape = tuple(element_shape)
    columns = jnp.arange(num_categories, dtype=jnp.int32)
    return jnp.broadcast_to(columns.reshape((num_categories,) + (1,) * len(element_shape)),
                            (num_categories,) + element_shape)


def costs_from_columns(column_costs, actions):
    """Costs of whole-site actions read off the per-element table: ``T[a_n, n]``.

    :param column_costs: ``[C, *elements]``, the cost of each element at each category.
    :param actions: integer ``[R, *elements]`` (Bernoulli: 0./1.).
    :returns: ``[R, *elements]``.
    """
    column_costs, actions = jnp.asarray(column_costs), jnp.asarray(actions)
    elements = jnp.broadcast_shapes(tuple(actions.shape[1:]), tuple(column_costs.shape[1:]))
    index = jnp.broadcast_to(actions.astype(jnp.int32), (actions.shape[0],) + elements)
    table = jnp.broadcast_to(column_costs, (column_costs.shape[0],) + elements)
    return jnp.take_along_axis(table, index, axis=0)


def local_grad(column_costs, logits):
    """Exact local expectation ``d E_{q_n}[f_n] / d phi_n = q_n (T_n - sum_k q_nk T_nk)`` with
    ``q_n = softmax(phi_n)``: no sampling variance from the site itself.

    :param column_costs: ``[C, *elements]``; :param logits: ``[*elements, C]``.
    :returns: ``[*elements, C]``.
    """
    q = jax.nn.softmax(logits, axis=-1)
    table = jnp.moveaxis(jnp.asarray(column_costs), 0, -1).astype(q.dtype)
    return q * (table - (q * table).sum(-1, keepdims=True))


def bernoulli_local_grad(column_costs, logits):
    """Exact local expectation for Bernoulli elements with logits ``a``:
    ``sigmoid(a) (1 - sigmoid(a)) (T_1 - T_0)``. :param column_costs: ``[2, *elements]``."""
    p = jax.nn.sigmoid(logits)
    column_costs = jnp.asarray(column_costs)
    return p * (1 - p) * (column_costs[1] - column_costs[0])


def _at_swaps(values, log_pi, logits):
    """``values[..., z^{m<->j}]`` for every swap: ``[..., C(m), C(j)]``, for per-category
    ``values`` ``[..., C]``.

    Swapping ``pi_m`` and ``pi_j`` changes only the scores ``log pi_i - phi_i`` of ``i = m, j``;
    the best of the other categories is among the three best scores. So each entry is the best of
    three candidates: ``O(C^2)`` per element instead of the ``O(C^3)`` of an argmin per swap.
    """
    C = logits.shape[-1]
    scores = log_pi - logits
    shape = scores.shape
    values = jnp.broadcast_to(values, shape)
    log_pi, logits = jnp.broadcast_to(log_pi, shape), jnp.broadcast_to(logits, shape)
    neg_best, best = jax.lax.top_k(-scores, min(3, C))  # the (up to) three smallest scores
    best_scores = -neg_best
    if C < 3:  # pad: a third candidate that never wins
        pad = [(0, 0)] * (len(shape) - 1) + [(0, 3 - C)]
        best_scores = jnp.pad(best_scores, pad, constant_values=jnp.inf)
        best = jnp.pad(best, pad, constant_values=0)
    best_values = jnp.take_along_axis(values, best, axis=-1)
    m = jnp.arange(C)[:, None]  # [C(m), 1]
    j = jnp.arange(C)  # [C(j)]

    def unswapped(i):  # [..., C, C]: the i-th best category is neither m nor j
        b = best[..., i, None, None]
        return (b != m) & (b != j)

    def pick(x, i):
        return x[..., i, None, None]

    first, second = unswapped(0), unswapped(1)
    rest_score = jnp.where(first, pick(best_scores, 0),
                           jnp.where(second, pick(best_scores, 1), pick(best_scores, 2)))
    rest_value = jnp.where(first, pick(best_values, 0),
                           jnp.where(second, pick(best_values, 1), pick(best_values, 2)))
    swapped_m = log_pi[..., None, :] - logits[..., :, None]  # [..., m, j]: log pi_j - phi_m
    swapped_j = log_pi[..., :, None] - logits[..., None, :]  # [..., m, j]: log pi_m - phi_j
    m_wins = swapped_m < swapped_j
    swapped_score = jnp.where(m_wins, swapped_m, swapped_j)
    swapped_value = jnp.where(m_wins, values[..., :, None], values[..., None, :])
    return jnp.where(rest_score < swapped_score, rest_value, swapped_value)


def swap_actions(log_pi, logits):
    """Every pseudo action ``z^{m<->j}`` of every element: int32 ``[..., C(m), C(j)]``.

    Equal to ``jnp.moveaxis(pseudo_actions(log_pi, logits)[pair_index(C)], (0, 1), (-2, -1))``
    (up to exact ties of the scores), at ``O(C^2)`` instead of ``O(C^3)`` per element.
    """
    C = logits.shape[-1]
    categories = jnp.arange(C, dtype=jnp.int32)
    return _at_swaps(categories, log_pi, logits)


def _sum_where_below(keys, values, thresholds):
    """``out[:, m] = sum_j [keys_j < thresholds_m] values_j``; all ``[n, C]``: sort, prefix sums
    and a search per ``m``."""
    keys, values = jax.lax.sort((keys, values), dimension=-1, num_keys=1)
    prefix = jnp.pad(jnp.cumsum(values, -1), [(0, 0), (1, 0)])
    count = jax.vmap(lambda a, v: jnp.searchsorted(a, v, side="left"))(keys, thresholds)
    return jnp.take_along_axis(prefix, count, -1)


def _sum_where_above(keys, values, thresholds):
    """``out[:, m] = sum_j [keys_j > thresholds_m] values_j``; all ``[n, C]``."""
    keys, values = jax.lax.sort((keys, values), dimension=-1, num_keys=1)
    suffix = jnp.pad(jnp.cumsum(values[:, ::-1], -1), [(0, 0), (1, 0)])[:, ::-1]
    count = jax.vmap(lambda a, v: jnp.searchsorted(a, v, side="right"))(keys, thresholds)
    return jnp.take_along_axis(suffix, count, -1)


def _swap_costs_times(table, weights, log_pi, logits):
    """``(F w)_m = sum_j F[m, j] w_j`` with ``F[m, j] = table[z^{m<->j}]``, per element, in
    ``O(C log C)``; all arguments ``[n, C]``.

    Let ``b0`` be the true action (the least score ``r0 = log pi_b0 - phi_b0``). A swap of two
    categories ``m, j`` other than ``b0`` leaves ``b0`` and its score in place, so ``z^{m<->j}`` is
    ``m`` when ``log pi_j - phi_m < r0``, ``j`` when ``log pi_m - phi_j < r0`` (the two cannot
    hold together: each implies the opposite order of ``log pi + phi``), and ``b0`` otherwise.
    Hence, for ``m != b0``::

        sum_{j != b0} F[m, j] w_j = T_b0 sum_{j != b0} w_j
                                    + (T_m - T_b0) sum_{j != b0: log pi_j < r0 + phi_m} w_j
                                    + sum_{j != b0: phi_j > log pi_m - r0} (T_j - T_b0) w_j,

    two threshold sums read off prefix sums over ``log pi`` and ``phi`` sorted (a search per
    ``m``). Row ``b0`` (= column ``b0``: ``F`` is symmetric) is computed directly
    in ``O(C)``.
    """
    C = logits.shape[-1]
    scores = log_pi - logits
    neg_best, best = jax.lax.top_k(-scores, min(3, C))  # the (up to) three smallest scores
    best_scores = -neg_best
    if C < 3:  # a third candidate that never wins
        best_scores = jnp.pad(best_scores, [(0, 0), (0, 3 - C)], constant_values=jnp.inf)
        best = jnp.pad(best, [(0, 0), (0, 3 - C)], constant_values=0)
    best_values = jnp.take_along_axis(table, best, axis=-1)  # [n, 3]
    b0, r0, v0 = best[:, :1], best_scores[:, :1], best_values[:, :1]
    w_rest = jnp.where(jnp.arange(C) != b0, weights, 0.0)
    bulk = ((table - v0) * _sum_where_below(log_pi, w_rest, r0 + logits)
            + _sum_where_above(logits, (table - v0) * w_rest, log_pi - r0)
            + v0 * w_rest.sum(-1, keepdims=True))
    # row b0 exactly: candidates b0 (score log pi_j - phi_b0), j, and the best of the rest
    log_pi_b0 = jnp.take_along_axis(log_pi, b0, -1)
    logits_b0 = jnp.take_along_axis(logits, b0, -1)
    score_b0, score_j = log_pi - logits_b0, log_pi_b0 - logits
    is_b1 = jnp.arange(C) == best[:, 1:2]
    rest_score = jnp.where(is_b1, best_scores[:, 2:3], best_scores[:, 1:2])
    rest_value = jnp.where(is_b1, best_values[:, 2:3], best_values[:, 1:2])
    row = jnp.where(score_b0 < score_j, v0, table)
    row = jnp.where(jnp.minimum(score_b0, score_j) < rest_score, row, rest_value)
    is_b0 = jnp.arange(C) == b0
    row = jnp.where(is_b0, v0, row)  # the diagonal: no swap
    Fw = bulk + row * jnp.take_along_axis(weights, b0, -1)
    return jnp.where(is_b0, (row * weights).sum(-1, keepdims=True), Fw)


# XLA's CPU sort is slow: below this C the O(C^2) candidate table is faster (measured jitted at
# N = 500, one thread, dense against sorted: 3.8 / 10.1 ms at C = 32, 25-38 / 32-34 ms at C = 128,
# 85-91 / 42-53 ms at C = 192)
_SORT_FROM_C = 160


def arsm_grad_from_columns(column_costs, log_pi, logits):
    """ARSM estimate for an element-separable cost from its per-element table: the same value
    as :func:`arsm_grad` on the costs of every swap row, at ``O(C log C)`` per element (``O(C^2)``
    below ``C = 160``, faster there on XLA's CPU backend); traceable by ``jax.jit``.

    :param column_costs: ``[C, *elements]``; :param log_pi, logits: ``[*elements, C]``.
    :returns: ``[*elements, C]``.
    """
    C = logits.shape[-1]
    log_pi = jnp.asarray(log_pi)
    shape = jnp.broadcast_shapes(log_pi.shape, jnp.shape(logits))
    table = jnp.moveaxis(jnp.asarray(column_costs), 0, -1).astype(log_pi.dtype)
    weights = 1.0 / C - jnp.exp(log_pi)
    if C < _SORT_FROM_C:
        F = _at_swaps(table, log_pi, logits)  # [..., m, j]
        Fw = (F * jnp.broadcast_to(weights, shape)[..., None, :]).sum(-1)  # [..., m]
    else:
        def flat(x):
            return jnp.broadcast_to(x, shape).reshape(-1, C)

        logits = jnp.asarray(logits, log_pi.dtype)
        Fw = _swap_costs_times(flat(table), flat(weights), flat(log_pi), flat(logits))
        Fw = Fw.reshape(shape)
    # g_m = sum_j (F[m, j] - mean_m' F[m', j]) w_j = (F w)_m - mean_m' (F w)_m'
    return Fw - Fw.mean(-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Convenience: logits + f -> gradient (outside any PPL, e.g. reinforcement learning)
# ---------------------------------------------------------------------------------------------


def estimator_actions(key, estimator, kind, noise, logits, *, num_samples=None):
    """The whole-site actions ``[R, *elements]`` an estimator evaluates, the true action in row 0
    (static shapes: a caller with the true action's cost evaluates rows ``1:``), and for ARS the
    reference category (else ``None``): the one place that decides them per estimator and site
    kind (used by ``ARSM_ELBO`` and :func:`arsm_gradient`; ``"local"`` and a separable site's
    ``"arsm"`` read the per-element table of :func:`column_actions` instead).

    :param key: a ``jax.random`` key (ARS's reference, RLOO's extra samples).
    :param str kind: ``"categorical"`` (``noise`` is ``log pi``, ``[*elements, C]``) or
        ``"bernoulli"`` (``noise`` is ``u``, ``[*elements]``).
    :param int num_samples: RLOO's samples (default: ``C(C-1)/2 + 1``; 2 for Bernoulli).
    """
    if kind == "bernoulli":
        b, anti_b = bernoulli_pair(noise, logits)
        if estimator == "rloo":
            n = num_samples or 2
            u = sample_uniform(key, (n - 1,) + jnp.shape(b), dtype=jnp.result_type(logits))
            extra = (u < jax.nn.sigmoid(logits)).astype(b.dtype)
            return jnp.concatenate([b[None], extra]), None
        if estimator == "ar":
            return b[None], None
        return jnp.stack([b, anti_b]), None
    C = noise.shape[-1]
    true_action = categorical_from_log_pi(noise, logits).astype(jnp.int32)
    if estimator == "rloo":
        n = num_samples or num_swap_rows(C)
        return jnp.concatenate([true_action[None], sample_categorical(key, n - 1, logits)]), None
    if estimator == "ar":
        return true_action[None], None
    if estimator == "ars":
        reference = jax.random.randint(key, (), 0, C)
        # row 0 the true action, then the C - 1 swaps m <-> reference, m != reference
        rows = jnp.concatenate([jnp.zeros(1, jnp.int32),
                                jnp.take(ars_rows(reference, C), _ars_others(reference, C))])
        return pseudo_actions(noise, logits, rows), reference
    return pseudo_actions(noise, logits), None


def _ars_others(reference, num_categories):
    """The categories other than ``reference``, in order: int32 ``[C - 1]`` (static shape)."""
    others = jnp.arange(num_categories - 1)
    return jnp.where(others < reference, others, others + 1)


def estimator_gradient(estimator, kind, costs, actions, noise, logits, reference=None):
    """The estimate in the logits from the ``costs`` ``[R, ...]`` of the actions
    :func:`estimator_actions` returned (the true action's first)."""
    if kind == "bernoulli":
        if estimator == "rloo":
            return bernoulli_rloo_grad(costs, actions, logits)
        if estimator == "ar":
            return bernoulli_ar_grad(costs[0], noise)
        return disarm_grad(costs[0], costs[1], actions[0], actions[1], logits)
    if estimator == "rloo":
        return rloo_grad(costs, actions, logits)
    if estimator == "ar":
        return ar_grad(costs[0], noise)
    if estimator == "ars":
        C = noise.shape[-1]
        table = jnp.zeros((C,) + costs.shape[1:], costs.dtype)
        table = table.at[_ars_others(reference, C)].set(costs[1:]).at[reference].set(costs[0])
        return ars_grad(table, noise, reference)
    return arsm_grad(costs, noise)


def arsm_gradient(key: jax.Array, logits: jax.Array, f: Callable, estimator: str = "arsm", *,
                  num_samples: Optional[int] = None, return_action: bool = False):
    """Estimate ``d E_{z ~ Cat(softmax(logits))}[f(z)] / d logits`` for one categorical site.

    The entry point outside any PPL (reinforcement learning, a hand-written loss): it draws the
    noise, calls ``f`` on the rows the estimator needs and applies the estimator's arithmetic
    (:func:`arsm_grad`, :func:`ars_grad`, ... take the costs of rows already evaluated).

    Traceable by ``jax.jit`` when ``f``, ``estimator`` and ``return_action`` are static.

    :param key: a ``jax.random`` key.
    :param logits: ``[..., C]``; every element of the batch is one categorical, and all of them
        share each swap (the multivariate ARSM).
    :param callable f: maps actions of shape ``[R, ...]`` (integer) to costs ``[R, *b]`` where
        ``*b`` broadcasts against ``logits.shape[:-1]`` (use a per-element cost when elements are
        independent, a scalar per row for a joint ``f``). Called once, with all needed rows.
    :param str estimator: ``"arsm"`` (``C(C-1)/2 + 1`` rows), ``"ars"`` (``C`` rows, random
        reference), ``"ar"`` (1 row), ``"rloo"`` (``num_samples`` independent samples,
        default ``C(C-1)/2 + 1``, with leave-one-out baselines) or ``"local"`` (the ``C``
        rows of :func:`column_actions` and the exact local expectation: only valid when the
        cost of each element depends on that element alone, and ``f`` returns one per element).
    :returns: ``g`` of shape ``[..., C]`` (and the true action if ``return_action``).

    Example::

        >>> logits = jnp.zeros(3)
        >>> g = arsm_gradient(jax.random.PRNGKey(0), logits, lambda z: (z == 2) * 1.0)
        >>> g.shape
        (3,)
    """
    if estimator not in ESTIMATORS:
        names = ", ".join(repr(n) for n in ESTIMATORS[:-1]) + f" or {ESTIMATORS[-1]!r}"
        raise ValueError(f"estimator must be {names}, got {estimator!r}")
    logits = jax.lax.stop_gradient(jnp.asarray(logits))
    C = logits.shape[-1]
    key_pi, key_reference = jax.random.split(key)
    log_pi = sample_log_pi(key_pi, logits.shape[:-1], C, dtype=logits.dtype)
    if estimator == "local":
        columns = jnp.asarray(f(column_actions(C, logits.shape[:-1])))
        g = local_grad(jnp.broadcast_to(columns, (C,) + logits.shape[:-1]), logits)
    else:
        actions, reference = estimator_actions(key_reference, estimator, "categorical", log_pi,
                                               logits, num_samples=num_samples)
        g = estimator_gradient(estimator, "categorical", jnp.asarray(f(actions)), actions,
                               log_pi, logits, reference)
    if return_action:
        return g, categorical_from_log_pi(log_pi, logits)
    return g
