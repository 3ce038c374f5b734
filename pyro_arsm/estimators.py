"""ARSM, ARS, AR, ARM and DisARM gradient estimators in plain torch (no Pyro).

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

All functions broadcast over arbitrary leading batch dimensions and are differentiable only where
it makes sense (the costs are treated as constants by the callers).

For Bernoulli variables the module offers ARM (Yin & Zhou, ICLR 2019), which is ARSM with
``C = 2``, and its Rao-Blackwellization DisARM (Dong, Mnih & Tucker, NeurIPS 2020).
"""

import functools
from typing import Callable, Optional

import torch

__all__ = [
    "sample_log_pi",
    "categorical_from_log_pi",
    "num_swap_rows",
    "swap_permutations",
    "pair_index",
    "pseudo_actions",
    "swap_table",
    "ESTIMATORS",
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
#: and :func:`pyro_arsm.compare.compare_estimators` accept these.
ESTIMATORS = ("arsm", "ars", "ar", "rloo", "local")


# ---------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------


def sample_log_pi(shape, num_categories, *, dtype=None, device=None, generator=None):
    """Draw ``log pi`` with ``pi ~ Dirichlet(1_C)``, computed in log space.

    ``pi = eps / sum(eps)`` with ``eps_i ~ Exp(1)`` iid, so
    ``log pi = log eps - log sum eps``; no ``log(pi + 1e-10)`` clamp is needed.

    :param shape: batch shape ``[...]``.
    :param int num_categories: ``C``.
    :returns: tensor of shape ``[..., C]``.
    """
    shape = tuple(shape) + (num_categories,)
    eps = torch.empty(shape, dtype=dtype, device=device).exponential_(generator=generator)
    # exponential_ can return exactly 0 with probability ~2^-24 in float32; keep log finite.
    log_eps = eps.clamp_min(torch.finfo(eps.dtype).tiny).log()
    return log_eps - log_eps.logsumexp(-1, keepdim=True)


def categorical_from_log_pi(log_pi, logits):
    """The true action ``z = argmin_i (log pi_i - phi_i)``.

    :param log_pi: ``[..., C]``.
    :param logits: ``[..., C]`` (broadcastable to ``log_pi``).
    :returns: long tensor ``[...]``; ``P(z = c) = softmax(phi)_c``.
    """
    return torch.argmin(log_pi - logits, dim=-1)


# ---------------------------------------------------------------------------------------------
# Swap rows
# ---------------------------------------------------------------------------------------------


def num_swap_rows(num_categories):
    """``C(C-1)/2 + 1``: the number of distinct swaps of a ``C``-vector, identity included."""
    return num_categories * (num_categories - 1) // 2 + 1


@functools.lru_cache(maxsize=None)
def _swap_tables(num_categories):
    C = num_categories
    perms = [list(range(C))]
    index = [[0] * C for _ in range(C)]
    for m in range(C):
        for j in range(m + 1, C):
            perm = list(range(C))
            perm[m], perm[j] = j, m
            index[m][j] = index[j][m] = len(perms)
            perms.append(perm)
    return torch.tensor(perms, dtype=torch.long), torch.tensor(index, dtype=torch.long)


def swap_permutations(num_categories, device=None):
    """Permutations of the ``C`` categories, one per swap row.

    :returns: long tensor ``[P, C]`` with ``P = C(C-1)/2 + 1``; row 0 is the identity and row
        ``pair_index(C)[m, j]`` exchanges ``m`` and ``j``. ``log_pi[..., perm[p]]`` is
        ``log pi`` with the swap of row ``p`` applied.
    """
    perms = _swap_tables(num_categories)[0]
    return perms if device is None else perms.to(device)


def pair_index(num_categories, device=None):
    """The swap row of each ordered pair: ``[C, C]`` long, symmetric, zero on the diagonal.

    ``F = pseudo_costs[pair_index(C)]`` rebuilds the symmetric ARSM table from one cost per
    swap row, because ``z^{m<->j} = z^{j<->m}`` and ``z^{m<->m} = z``.
    """
    index = _swap_tables(num_categories)[1]
    return index if device is None else index.to(device)


def pseudo_actions(log_pi, logits, rows=None):
    """Pseudo actions ``z^{m<->j} = argmin_i (log pi^{m<->j}_i - phi_i)`` for swap rows.

    The same swap is applied to every element of the batch, as the multivariate ARSM
    requires (all elements of one site share the pair ``(m, j)``).

    :param log_pi: ``[..., C]``.
    :param logits: ``[..., C]``, broadcastable to ``log_pi``.
    :param rows: optional long tensor ``[R]`` of swap rows to compute (default: all ``P``).
    :returns: long tensor ``[R, ...]``; row ``r`` is the action under swap ``rows[r]``.
        Row 0 of the full table is the true action.
    """
    C = log_pi.shape[-1]
    perms = swap_permutations(C, device=log_pi.device)
    if rows is not None:
        perms = perms[rows]
    swapped = log_pi[..., perms]  # [..., R, C]
    actions = torch.argmin(swapped - logits.unsqueeze(-2), dim=-1)  # [..., R]
    return actions.movedim(-1, 0)


def swap_table(pseudo_costs, num_categories):
    """Symmetric ARSM table ``F[m, j, ...] = f(z^{m<->j})`` from one cost per swap row.

    :param pseudo_costs: ``[P, ...]``.
    :returns: ``[C, C, ...]``.
    """
    return pseudo_costs[pair_index(num_categories, device=pseudo_costs.device)]


# ---------------------------------------------------------------------------------------------
# Categorical estimators
# ---------------------------------------------------------------------------------------------


def _pad_costs(costs, lead, batch_ndim):
    # A cost may have fewer trailing dims than the variable it scores (a to_event site: one
    # cost per batch element, shared by its event elements). Right-pad so they broadcast.
    extra = lead + batch_ndim - costs.dim()
    if extra > 0:
        costs = costs.reshape(costs.shape + (1,) * extra)
    return costs


def arsm_grad(pseudo_costs, log_pi):
    """ARSM estimate of ``d E[f(z)] / d phi`` (the "merge" over all reference categories).

    ``g_m = sum_j (F[m, j] - (1/C) sum_m' F[m', j]) (1/C - pi_j)``, i.e.
    ``g = (F - colmean(F)) @ (1/C - pi)``.

    :param pseudo_costs: ``[P, *b]`` costs ``f`` at the ``P = C(C-1)/2 + 1`` swap rows
        (:func:`pseudo_actions`); ``*b`` must broadcast against ``log_pi.shape[:-1]`` after
        right-padding (a cost shared by the trailing event dims of a ``to_event`` site).
    :param log_pi: ``[..., C]`` the augmenting Dirichlet draw.
    :returns: ``[..., C]``; sums to zero over the last dim (up to rounding).
    """
    C = log_pi.shape[-1]
    if pseudo_costs.shape[0] != num_swap_rows(C):
        raise ValueError(
            f"arsm_grad expects {num_swap_rows(C)} swap rows for C={C}, "
            f"got pseudo_costs of shape {tuple(pseudo_costs.shape)}"
        )
    pseudo_costs = _pad_costs(pseudo_costs, 1, log_pi.dim() - 1)
    F = swap_table(pseudo_costs, C)  # [C(m), C(j), ...]
    F = F - F.mean(0, keepdim=True)  # centre over the swapped category m, per reference j
    F = F.movedim((0, 1), (-2, -1))  # [..., m, j]
    weights = (1.0 / C - log_pi.exp()).unsqueeze(-2)  # [..., 1, j]
    return (F * weights).sum(-1)


def ars_rows(reference, num_categories, device=None):
    """Swap rows ``z^{m<->j}``, ``m = 0..C-1``, needed by ARS with reference category ``j``.

    :returns: long tensor ``[C]``; entry ``reference`` is row 0 (the true action).
    """
    return pair_index(num_categories, device=device)[:, reference]


def ars_grad(reference_costs, log_pi, reference):
    """ARS estimate with a single reference category ``j`` (Swap without Merge).

    ``g_m = (f(z^{m<->j}) - (1/C) sum_m' f(z^{m'<->j})) (1 - C pi_j)``.
    Unbiased when ``j`` is drawn independently of ``pi`` (e.g. uniformly).

    :param reference_costs: ``[C, *b]``: ``reference_costs[m] = f(z^{m<->j})``
        (rows :func:`ars_rows`).
    :param log_pi: ``[..., C]``.
    :param int reference: ``j``.
    :returns: ``[..., C]``.
    """
    C = log_pi.shape[-1]
    if reference_costs.shape[0] != C:
        raise ValueError(
            f"ars_grad expects C={C} rows (ars_rows), got reference_costs of shape "
            f"{tuple(reference_costs.shape)}"
        )
    reference_costs = _pad_costs(reference_costs, 1, log_pi.dim() - 1)
    centred = reference_costs - reference_costs.mean(0, keepdim=True)
    centred = centred.movedim(0, -1)  # [..., m]
    weight = 1.0 - C * log_pi[..., reference].exp()
    return centred * weight.unsqueeze(-1)


def ar_grad(cost, log_pi):
    """AR (Augment-REINFORCE) estimate ``g_c = f(z) (1 - C pi_c)``.

    One evaluation of ``f``, high variance. (The official code's pre-2020 ``(1 - pi_c)`` weight
    is biased; this is the corrected form.)

    :param cost: ``[*b]`` the cost at the true action.
    :param log_pi: ``[..., C]``.
    """
    C = log_pi.shape[-1]
    return _pad_costs(cost, 0, log_pi.dim() - 1).unsqueeze(-1) * (1.0 - C * log_pi.exp())


# ---------------------------------------------------------------------------------------------
# Bernoulli estimators
# ---------------------------------------------------------------------------------------------


def sample_uniform(shape, *, dtype=None, device=None, generator=None):
    """``u ~ Uniform(0, 1)`` of the given shape (the Bernoulli augmentation)."""
    return torch.rand(tuple(shape), dtype=dtype, device=device, generator=generator)


def sample_categorical(num_samples, logits, *, generator=None):
    """``num_samples`` independent draws from ``Categorical(logits=logits)`` by inverse CDF (one
    uniform per draw): long ``[num_samples, *logits.shape[:-1]]``. The extra samples of RLOO."""
    cdf = logits.softmax(-1).cumsum(-1)[..., :-1]
    u = sample_uniform((num_samples,) + tuple(logits.shape[:-1]), dtype=cdf.dtype,
                       device=cdf.device, generator=generator)
    return (u.unsqueeze(-1) > cdf).sum(-1)


def bernoulli_pair(u, logits):
    """The sample ``b = 1[u < sigmoid(a)]`` and its antithetic ``b~ = 1[1 - u < sigmoid(a)]``.

    Both are ``Bernoulli(sigmoid(a))``. Returned as floating tensors (Pyro's value dtype).
    """
    p = torch.sigmoid(logits)
    return (u < p).to(p.dtype), ((1.0 - u) < p).to(p.dtype)


def arm_grad(cost, anti_cost, u):
    """ARM estimate (Yin & Zhou 2019) of ``d E[f(b)] / d a``: ``(f(b~) - f(b)) (u - 1/2)``.

    This is ARSM with ``C = 2`` on logits ``(a, 0)``.

    :param cost: ``f(b)``, ``[*b]``.
    :param anti_cost: ``f(b~)``, ``[*b]``.
    :param u: ``[...]``, the uniform that generated ``b`` and ``b~`` (:func:`bernoulli_pair`).
    """
    return _pad_costs(anti_cost - cost, 0, u.dim()) * (u - 0.5)


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
    diff = _pad_costs(cost - anti_cost, 0, b.dim())
    sign = 1.0 - 2.0 * anti_b
    return 0.5 * diff * sign * (b != anti_b).to(diff.dtype) * torch.sigmoid(logits.abs())


def bernoulli_ar_grad(cost, u):
    """AR for a Bernoulli with logit ``a`` (``C = 2`` with logits ``(a, 0)``): ``f(b) (1 - 2u)``."""
    return _pad_costs(cost, 0, u.dim()) * (1.0 - 2.0 * u)


# ---------------------------------------------------------------------------------------------
# REINFORCE with leave-one-out baselines (the equal-budget competitor)
# ---------------------------------------------------------------------------------------------


def _leave_one_out(costs):
    # f_i - (1/(n-1)) sum_{j != i} f_j
    n = costs.shape[0]
    if n < 2:
        raise ValueError(f"leave-one-out baselines need at least 2 samples, got {n}")
    return costs - (costs.sum(0, keepdim=True) - costs) / (n - 1)


def rloo_grad(costs, actions, logits):
    """REINFORCE with leave-one-out baselines (RLOO; Kool, van Hoof & Welling 2019) for ``n``
    independent samples ``z_i`` of a categorical with logits ``phi``:

    ``g = (1/n) sum_i (f(z_i) - (1/(n-1)) sum_{j != i} f(z_j)) (onehot(z_i) - softmax(phi))``.

    :param costs: ``[n, *b]`` (right-padded like :func:`arsm_grad`'s costs).
    :param actions: long ``[n, ...]``, the samples.
    :param logits: ``[..., C]``.
    :returns: ``[..., C]``.
    """
    n = costs.shape[0]
    centred = _pad_costs(_leave_one_out(costs), 1, logits.dim() - 1)
    # The leave-one-out-centred costs sum to zero over the samples, so the softmax part of the
    # score cancels: g = (1/n) sum_i centred_i onehot(z_i), a scatter-add.
    centred = centred.expand(actions.shape).movedim(0, -1).to(logits.dtype)
    grad = logits.new_zeros(actions.shape[1:] + logits.shape[-1:])
    return grad.scatter_add_(-1, actions.movedim(0, -1), centred) / n


def bernoulli_rloo_grad(costs, samples, logits):
    """RLOO for ``n`` independent samples ``b_i`` of a Bernoulli with logit ``a``:
    ``(1/n) sum_i (f(b_i) - mean_{j != i} f(b_j)) (b_i - sigmoid(a))``.

    :param costs: ``[n, *b]``; :param samples: ``[n, ...]`` (0./1.); :param logits: ``[...]``.
    """
    centred = _pad_costs(_leave_one_out(costs), 1, logits.dim())
    return (centred * (samples - torch.sigmoid(logits))).mean(0)


# ---------------------------------------------------------------------------------------------
# Element-separable costs: one cost per category and element
# ---------------------------------------------------------------------------------------------
#
# When the cost of element n depends on z_n only, f_n(z) = T[z_n, n], C evaluations (every
# element set to category k in the k-th) give the whole table T, and every swap's cost is a
# gather. With T the exact local expectation (Titsias & Lazaro-Gredilla, "Local expectation
# gradients for black box variational inference", NeurIPS 2015) is free as well.


def column_actions(num_categories, element_shape, device=None):
    """``[C, *element_shape]`` long: the ``k``-th row sets every element to category ``k``."""
    columns = torch.arange(num_categories, device=device)
    return columns.reshape((num_categories,) + (1,) * len(element_shape)).expand(
        (num_categories,) + tuple(element_shape))


def costs_from_columns(column_costs, actions):
    """Costs of whole-site actions read off the per-element table: ``T[a_n, n]``.

    :param column_costs: ``[C, *elements]``, the cost of each element at each category.
    :param actions: long ``[R, *elements]`` (Bernoulli: 0./1.).
    :returns: ``[R, *elements]``.
    """
    index = actions.long().expand((actions.shape[0],) + tuple(column_costs.shape[1:]))
    return column_costs.gather(0, index)


def local_grad(column_costs, logits):
    """Exact local expectation ``d E_{q_n}[f_n] / d phi_n = q_n (T_n - sum_k q_nk T_nk)`` with
    ``q_n = softmax(phi_n)``: no sampling variance from the site itself.

    :param column_costs: ``[C, *elements]``; :param logits: ``[*elements, C]``.
    :returns: ``[*elements, C]``.
    """
    q = logits.softmax(-1)
    table = column_costs.movedim(0, -1).to(q.dtype)
    return q * (table - (q * table).sum(-1, keepdim=True))


def bernoulli_local_grad(column_costs, logits):
    """Exact local expectation for Bernoulli elements with logits ``a``:
    ``sigmoid(a) (1 - sigmoid(a)) (T_1 - T_0)``. :param column_costs: ``[2, *elements]``."""
    p = torch.sigmoid(logits)
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
    best_scores, best = scores.topk(min(3, C), dim=-1, largest=False)
    if C < 3:  # pad: a third candidate that never wins
        pad = (0, 3 - C)
        best_scores = torch.nn.functional.pad(best_scores, pad, value=float("inf"))
        best = torch.nn.functional.pad(best, pad, value=0)
    best_values = values.gather(-1, best)
    m = torch.arange(C, device=logits.device).unsqueeze(-1)  # [C(m), 1]
    j = torch.arange(C, device=logits.device)  # [C(j)]

    def unswapped(i):  # [..., C, C]: the i-th best category is neither m nor j
        b = best[..., i, None, None]
        return (b != m) & (b != j)

    def pick(x, i):
        return x[..., i, None, None]

    first, second = unswapped(0), unswapped(1)
    rest_score = torch.where(first, pick(best_scores, 0),
                             torch.where(second, pick(best_scores, 1), pick(best_scores, 2)))
    rest_value = torch.where(first, pick(best_values, 0),
                             torch.where(second, pick(best_values, 1), pick(best_values, 2)))
    swapped_m = log_pi.unsqueeze(-2) - logits.unsqueeze(-1)  # [..., m, j]: log pi_j - phi_m
    swapped_j = log_pi.unsqueeze(-1) - logits.unsqueeze(-2)  # [..., m, j]: log pi_m - phi_j
    m_wins = swapped_m < swapped_j
    swapped_score = torch.where(m_wins, swapped_m, swapped_j)
    swapped_value = torch.where(m_wins, values.unsqueeze(-1), values.unsqueeze(-2))
    return torch.where(rest_score < swapped_score, rest_value, swapped_value)


def swap_actions(log_pi, logits):
    """Every pseudo action ``z^{m<->j}`` of every element: long ``[..., C(m), C(j)]``."""
    C = logits.shape[-1]
    categories = torch.arange(C, device=logits.device, dtype=logits.dtype)
    return _at_swaps(categories.expand(logits.shape), log_pi, logits).long()


def _swap_costs_times(table, weights, log_pi, logits):
    """``(F w)_m = sum_j F[m, j] w_j`` with ``F[m, j] = table[z^{m<->j}]``, per element, in
    ``O(C log C)``.

    Let ``b0`` be the true action (the least score ``r0 = log pi_b0 - phi_b0``). A swap of two
    categories ``m, j`` other than ``b0`` leaves ``b0`` and its score in place, so ``z^{m<->j}`` is
    ``m`` when ``log pi_j - phi_m < r0``, ``j`` when ``log pi_m - phi_j < r0`` (the two cannot
    hold together: each implies the opposite order of ``log pi + phi``), and ``b0`` otherwise.
    Hence, for ``m != b0``::

        sum_{j != b0} F[m, j] w_j = T_b0 sum_{j != b0} w_j
                                    + (T_m - T_b0) sum_{j != b0: log pi_j < r0 + phi_m} w_j
                                    + sum_{j != b0: phi_j > log pi_m - r0} (T_j - T_b0) w_j,

    two threshold sums read off prefix sums over ``log pi`` and ``phi`` sorted (a search per
    ``m``). Row ``b0`` (= column ``b0``: ``F`` is symmetric) is computed directly in ``O(C)``.
    """
    C = logits.shape[-1]
    scores = log_pi - logits  # [n, C]
    best_scores, best = scores.topk(min(3, C), dim=-1, largest=False)
    if C < 3:  # a third candidate that never wins
        best_scores = torch.nn.functional.pad(best_scores, (0, 3 - C), value=float("inf"))
        best = torch.nn.functional.pad(best, (0, 3 - C), value=0)
    best_values = table.gather(-1, best)  # [n, 3]
    b0, r0, v0 = best[:, :1], best_scores[:, :1], best_values[:, :1]
    not_b0 = torch.arange(C, device=logits.device) != b0  # [n, C]
    w_rest = torch.where(not_b0, weights, torch.zeros_like(weights))
    # (T_m - T_b0) * sum of w_j over log pi_j < r0 + phi_m
    sorted_log_pi, order = log_pi.sort(-1)
    below = torch.nn.functional.pad(w_rest.gather(-1, order).cumsum(-1), (1, 0))  # [n, C + 1]
    count = torch.searchsorted(sorted_log_pi, r0 + logits)  # number of log pi_j < r0 + phi_m
    bulk = (table - v0) * below.gather(-1, count)
    # sum of (T_j - T_b0) w_j over phi_j > log pi_m - r0
    sorted_logits, order = logits.sort(-1)
    gain = ((table - v0) * w_rest).gather(-1, order)
    above = torch.nn.functional.pad(gain.flip(-1).cumsum(-1), (1, 0)).flip(-1)  # [n, C + 1]
    count = torch.searchsorted(sorted_logits, log_pi - r0, right=True)  # phi_j <= log pi_m - r0
    bulk = bulk + above.gather(-1, count) + v0 * w_rest.sum(-1, keepdim=True)
    # row b0 exactly: candidates b0 (score log pi_j - phi_b0), j, and the best of the rest
    log_pi_b0, logits_b0 = log_pi.gather(-1, b0), logits.gather(-1, b0)
    score_b0, score_j = log_pi - logits_b0, log_pi_b0 - logits
    is_b1 = torch.arange(C, device=logits.device) == best[:, 1:2]
    rest_score = torch.where(is_b1, best_scores[:, 2:3], best_scores[:, 1:2])
    rest_value = torch.where(is_b1, best_values[:, 2:3], best_values[:, 1:2])
    row = torch.where(score_b0 < score_j, v0, table)
    row = torch.where(torch.minimum(score_b0, score_j) < rest_score, row, rest_value)
    row = row.scatter(-1, b0, v0)  # the diagonal: no swap
    Fw = bulk + row * weights.gather(-1, b0)
    return Fw.scatter(-1, b0, (row * weights).sum(-1, keepdim=True))


def arsm_grad_from_columns(column_costs, log_pi, logits):
    """ARSM estimate for an element-separable cost from its per-element table: the same value
    as :func:`arsm_grad` on the costs of every swap row, at ``O(C log C)`` per element.

    :param column_costs: ``[C, *elements]``; :param log_pi, logits: ``[*elements, C]``.
    :returns: ``[*elements, C]``.
    """
    C = logits.shape[-1]
    shape = torch.broadcast_shapes(log_pi.shape, logits.shape)
    table = column_costs.movedim(0, -1).to(log_pi.dtype).expand(shape).reshape(-1, C)
    log_pi, flat_logits = log_pi.expand(shape).reshape(-1, C), logits.expand(shape).reshape(-1, C)
    weights = 1.0 / C - log_pi.exp()
    Fw = _swap_costs_times(table, weights, log_pi.contiguous(), flat_logits.contiguous())
    # g_m = sum_j (F[m, j] - mean_m' F[m', j]) w_j = (F w)_m - mean_m' (F w)_m'
    return (Fw - Fw.mean(-1, keepdim=True)).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Convenience: logits + f -> gradient (outside any PPL, e.g. reinforcement learning)
# ---------------------------------------------------------------------------------------------


def estimator_actions(estimator, kind, noise, logits, *, num_samples=None, generator=None):
    """The whole-site actions ``[R, *elements]`` an estimator evaluates, the true action in row 0,
    and for ARS the reference category (else ``None``): the one place that decides them per
    estimator and site kind (used by ``ARSM_ELBO`` and :func:`arsm_gradient`; ``"local"`` and a
    separable site's ``"arsm"`` read the per-element table of :func:`column_actions` instead).

    :param str kind: ``"categorical"`` (``noise`` is ``log pi``, ``[*elements, C]``) or
        ``"bernoulli"`` (``noise`` is ``u``, ``[*elements]``).
    :param int num_samples: RLOO's samples (default: ``C(C-1)/2 + 1``; 2 for Bernoulli).
    """
    if kind == "bernoulli":
        b, anti_b = bernoulli_pair(noise, logits)
        if estimator == "rloo":
            n = num_samples or 2
            u = sample_uniform((n - 1,) + tuple(b.shape), dtype=b.dtype, device=b.device,
                               generator=generator)
            extra = (u < torch.sigmoid(logits)).to(b.dtype)
            return torch.cat([b.unsqueeze(0), extra]), None
        if estimator == "ar":
            return b.unsqueeze(0), None
        return torch.stack([b, anti_b]), None
    C = noise.shape[-1]
    true_action = categorical_from_log_pi(noise, logits)
    if estimator == "rloo":
        n = num_samples or num_swap_rows(C)
        extra = sample_categorical(n - 1, logits.expand(noise.shape), generator=generator)
        return torch.cat([true_action.unsqueeze(0), extra]), None
    if estimator == "ar":
        return true_action.unsqueeze(0), None
    if estimator == "ars":
        reference = int(torch.randint(C, (), generator=generator))
        # row 0 the true action, then the C - 1 swaps m <-> reference, m != reference
        rows = ars_rows(reference, C, device=noise.device)[_ars_order(reference, C)]
        return pseudo_actions(noise, logits, rows), reference
    return pseudo_actions(noise, logits), None


def _ars_order(reference, num_categories):
    """``[reference, the other categories in order]``: ARS's rows with the true action first."""
    others = [m for m in range(num_categories) if m != reference]
    return torch.tensor([reference] + others)


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
    if estimator == "ars":  # back to ars_rows' order: entry m is f(z^{m<->reference})
        table = torch.empty_like(costs)
        table[_ars_order(reference, noise.shape[-1]).to(costs.device)] = costs
        return ars_grad(table, noise, reference)
    return arsm_grad(costs, noise)


def arsm_gradient(logits: torch.Tensor, f: Callable, estimator: str = "arsm", *,
                  num_samples: Optional[int] = None,
                  generator: Optional[torch.Generator] = None, return_action: bool = False):
    """Estimate ``d E_{z ~ Cat(softmax(logits))}[f(z)] / d logits`` for one categorical site.

    The entry point outside any PPL (reinforcement learning, a hand-written loss): it draws the
    noise, calls ``f`` on the rows the estimator needs and applies the estimator's arithmetic
    (:func:`arsm_grad`, :func:`ars_grad`, ... take the costs of rows already evaluated).

    :param logits: ``[..., C]``; every element of the batch is one categorical, and all of them
        share each swap (the multivariate ARSM).
    :param callable f: maps actions of shape ``[R, ...]`` (long) to costs ``[R, *b]`` where
        ``*b`` broadcasts against ``logits.shape[:-1]`` (use a per-element cost when elements are
        independent, a scalar per row for a joint ``f``). Called once, with all needed rows.
    :param str estimator: ``"arsm"`` (``C(C-1)/2 + 1`` rows), ``"ars"`` (``C`` rows, random
        reference), ``"ar"`` (1 row), ``"rloo"`` (``num_samples`` independent samples,
        default ``C(C-1)/2 + 1``, with leave-one-out baselines) or ``"local"`` (the ``C``
        rows of :func:`column_actions` and the exact local expectation: only valid when the
        cost of each element depends on that element alone, and ``f`` returns one per element).
    :returns: ``g`` of shape ``[..., C]`` (and the true action if ``return_action``).

    Example::

        >>> logits = torch.zeros(3)
        >>> g = arsm_gradient(logits, lambda z: (z == 2).float())
        >>> g.shape
        torch.Size([3])
    """
    if estimator not in ESTIMATORS:
        names = ", ".join(repr(n) for n in ESTIMATORS[:-1]) + f" or {ESTIMATORS[-1]!r}"
        raise ValueError(f"estimator must be {names}, got {estimator!r}")
    logits = logits.detach()
    C = logits.shape[-1]
    log_pi = sample_log_pi(logits.shape[:-1], C, dtype=logits.dtype, device=logits.device,
                           generator=generator)
    if estimator == "local":
        columns = f(column_actions(C, logits.shape[:-1], device=logits.device))
        g = local_grad(columns.expand((C,) + tuple(logits.shape[:-1])), logits)
    else:
        actions, reference = estimator_actions(estimator, "categorical", log_pi, logits,
                                               num_samples=num_samples, generator=generator)
        g = estimator_gradient(estimator, "categorical", f(actions), actions, log_pi, logits,
                               reference)
    if return_action:
        return g, categorical_from_log_pi(log_pi, logits)
    return g

