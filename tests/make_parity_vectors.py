"""Generate ``tests/data/parity_vectors.json``: shared test vectors for both estimator modules.

This script is an *independent* reference: it writes the formulas out again in plain float64
numpy, element by element, and imports neither ``pyro_arsm`` nor ``numpyro_arsm``. Both packages
are then pinned to it by ``tests/test_parity_vectors.py``, and so to each other.

Formulas (Yin, Yue & Zhou, ICML 2019; Dong, Mnih & Tucker, NeurIPS 2020):

* swap rows: row 0 is the identity; then one row per pair ``(m, j)``, ``m < j``, in
  lexicographic order, the permutation exchanging entries ``m`` and ``j``;
* pseudo action of row ``p``: ``argmin_i (log_pi[perm_p[i]] - logits[i])``, the same swap for
  every element of the batch;
* ARSM: ``g[m] = sum_j (F[m, j] - mean_m' F[m', j]) (1/C - pi_j)`` with ``F[m, j]`` the cost at
  the row of swap ``(m, j)`` (``F`` symmetric, row 0 on the diagonal);
* ARS with reference ``j``: ``g[m] = (f(z^{m<->j}) - mean_m' f(z^{m'<->j})) (1 - C pi_j)``;
* AR: ``g[c] = f(z) (1 - C pi_c)``;
* Bernoulli: ``b = 1[u < sigmoid(a)]``, ``b~ = 1[1 - u < sigmoid(a)]``;
  DisARM ``1/2 (f(b) - f(b~)) (-1)^{b~} 1[b != b~] sigmoid(|a|)``;
  ARM ``(f(b~) - f(b)) (u - 1/2)``; AR ``f(b) (1 - 2u)``.
* element-separable costs, from a per-element table ``T[k, n]`` (the cost of element ``n`` at
  category ``k``): ``costs_from_columns`` ``T[a_n, n]``; ``swap_actions[n, m, j]`` the pseudo
  action of swap ``(m, j)``; ``arsm_grad_from_columns`` ARSM with ``F[m, j] = T[z_n^{m<->j}, n]``;
  ``local_grad`` ``q_k (T[k, n] - sum_k' q_k' T[k', n])`` with ``q = softmax(logits_n)``;
  ``bernoulli_local_grad`` ``s (1 - s) (T[1, n] - T[0, n])`` with ``s = sigmoid(a_n)``.
  These tables are drawn from a second generator (``SEED + 1``), after the other vectors, so the
  other vectors do not depend on them; they are added to the cases with one cost per element.

A cost with fewer dims than the variable's batch belongs to the leading dims and is shared by
the trailing (event) elements, as for a ``to_event`` site.

Run from the repository root: ``python tests/make_parity_vectors.py``.
"""

import itertools
import json
import os

import numpy as np

SEED = 20190605
# Inputs are redrawn until no argmin and no Bernoulli threshold is closer to a tie than this, so
# the vectors do not depend on the last bit of any implementation's arithmetic.
MARGIN = 1e-9

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "parity_vectors.json")


def swap_rows(C):
    perms = [list(range(C))]
    for m, j in itertools.combinations(range(C), 2):
        perm = list(range(C))
        perm[m], perm[j] = j, m
        perms.append(perm)
    return perms


def row_of_swap(C, m, j):
    if m == j:
        return 0
    m, j = min(m, j), max(m, j)
    return 1 + list(itertools.combinations(range(C), 2)).index((m, j))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def cost_at(costs, p, index):
    """Cost of swap row ``p`` for batch element ``index``; the cost keeps the leading dims."""
    c = np.asarray(costs[p])
    return float(c[tuple(index[: c.ndim])])


def categorical_case(rng, name, C, batch_shape, cost_shape, logits_shape=None):
    perms = swap_rows(C)
    P = len(perms)
    logits_shape = batch_shape if logits_shape is None else logits_shape
    while True:
        eps = rng.exponential(size=batch_shape + (C,))
        log_pi = np.log(eps) - np.log(eps.sum(-1, keepdims=True))
        logits = 1.5 * rng.standard_normal(logits_shape + (C,))
        full_logits = np.broadcast_to(logits, batch_shape + (C,))
        actions = np.zeros((P,) + batch_shape, dtype=np.int64)
        closest = np.inf
        for p, perm in enumerate(perms):
            for index in np.ndindex(*batch_shape):
                race = np.array([log_pi[index][perm[i]] - full_logits[index][i] for i in range(C)])
                order = np.sort(race)
                closest = min(closest, order[1] - order[0])
                actions[(p,) + index] = int(np.argmin(race))
        if closest > MARGIN:
            break

    pseudo_costs = rng.standard_normal((P,) + cost_shape)
    reference = int(rng.integers(C))
    reference_rows = [row_of_swap(C, m, reference) for m in range(C)]
    reference_costs = pseudo_costs[reference_rows]
    cost = pseudo_costs[0]

    arsm = np.zeros(batch_shape + (C,))
    ars = np.zeros(batch_shape + (C,))
    ar = np.zeros(batch_shape + (C,))
    rloo = np.zeros(batch_shape + (C,))
    for index in np.ndindex(*batch_shape):
        pi = np.exp(log_pi[index])
        F = np.array([[cost_at(pseudo_costs, row_of_swap(C, m, j), index) for j in range(C)]
                      for m in range(C)])
        for m in range(C):
            arsm[index + (m,)] = sum(
                (F[m, j] - F[:, j].mean()) * (1.0 / C - pi[j]) for j in range(C)
            )
        f_ref = np.array([cost_at(pseudo_costs, reference_rows[m], index) for m in range(C)])
        for m in range(C):
            ars[index + (m,)] = (f_ref[m] - f_ref.mean()) * (1.0 - C * pi[reference])
            ar[index + (m,)] = cost_at(pseudo_costs, 0, index) * (1.0 - C * pi[m])
        # RLOO, reading the P pseudo actions as P samples with the same costs
        f = np.array([cost_at(pseudo_costs, p, index) for p in range(P)])
        probs = np.exp(full_logits[index] - full_logits[index].max())
        probs = probs / probs.sum()
        for p in range(P):
            baseline = (f.sum() - f[p]) / (P - 1)
            score = np.eye(C)[actions[(p,) + index]] - probs
            rloo[index] += (f[p] - baseline) * score / P

    return {
        "name": name,
        "num_categories": C,
        "batch_shape": list(batch_shape),
        "log_pi": log_pi.tolist(),
        "logits": logits.tolist(),
        "pseudo_actions": actions.tolist(),
        "pseudo_costs": pseudo_costs.tolist(),
        "arsm_grad": arsm.tolist(),
        "reference": reference,
        "reference_rows": reference_rows,
        "reference_costs": reference_costs.tolist(),
        "ars_grad": ars.tolist(),
        "cost": cost.tolist(),
        "ar_grad": ar.tolist(),
        "rloo_grad": rloo.tolist(),
    }


def bernoulli_case(rng, name, shape, cost_shape):
    while True:
        u = rng.uniform(size=shape)
        logits = 1.5 * rng.standard_normal(shape)
        s = sigmoid(logits)
        b = (u < s).astype(np.float64)
        anti_b = ((1.0 - u) < s).astype(np.float64)
        closest = min(np.abs(u - s).min(), np.abs(1.0 - u - s).min())
        differ = b != anti_b
        # every case must exercise both branches of DisARM (a scalar case: the non-zero one)
        both = differ.any() and (differ.size == 1 or not differ.all())
        if closest > MARGIN and both:
            break
    cost = rng.standard_normal(cost_shape)
    anti_cost = rng.standard_normal(cost_shape)

    disarm = np.zeros(shape)
    arm = np.zeros(shape)
    ar = np.zeros(shape)
    rloo = np.zeros(shape)
    for index in np.ndindex(*shape):
        c = float(cost[index[: cost.ndim]])
        c_anti = float(anti_cost[index[: cost.ndim]])
        disarm[index] = (0.5 * (c - c_anti) * (-1.0) ** anti_b[index]
                         * float(b[index] != anti_b[index]) * sigmoid(abs(logits[index])))
        arm[index] = (c_anti - c) * (u[index] - 0.5)
        ar[index] = c * (1.0 - 2.0 * u[index])
        # RLOO over the two samples (b, b~) with their costs
        rloo[index] = 0.5 * ((c - c_anti) * (b[index] - s[index])
                             + (c_anti - c) * (anti_b[index] - s[index]))

    return {
        "name": name,
        "shape": list(shape),
        "u": u.tolist(),
        "logits": logits.tolist(),
        "b": b.tolist(),
        "anti_b": anti_b.tolist(),
        "cost": cost.tolist(),
        "anti_cost": anti_cost.tolist(),
        "disarm_grad": disarm.tolist(),
        "arm_grad": arm.tolist(),
        "bernoulli_ar_grad": ar.tolist(),
        "bernoulli_rloo_grad": rloo.tolist(),
    }


def add_column_vectors(rng, case):
    """Per-element table vectors for a categorical case with one cost per element."""
    C = case["num_categories"]
    batch_shape = tuple(case["batch_shape"])
    log_pi, logits = np.asarray(case["log_pi"]), np.asarray(case["logits"])
    actions = np.asarray(case["pseudo_actions"])
    P = actions.shape[0]
    table = rng.standard_normal((C,) + batch_shape)
    gathered = np.zeros((P,) + batch_shape)
    swaps = np.zeros(batch_shape + (C, C), dtype=np.int64)
    arsm = np.zeros(batch_shape + (C,))
    local = np.zeros(batch_shape + (C,))
    for index in np.ndindex(*batch_shape):
        for p in range(P):
            gathered[(p,) + index] = table[(actions[(p,) + index],) + index]
        pi = np.exp(log_pi[index])
        F = np.zeros((C, C))
        for m in range(C):
            for j in range(C):
                swaps[index + (m, j)] = actions[(row_of_swap(C, m, j),) + index]
                F[m, j] = table[(swaps[index + (m, j)],) + index]
        for m in range(C):
            arsm[index + (m,)] = sum(
                (F[m, j] - F[:, j].mean()) * (1.0 / C - pi[j]) for j in range(C)
            )
        q = np.exp(logits[index] - logits[index].max())
        q = q / q.sum()
        t = np.array([table[(k,) + index] for k in range(C)])
        expectation = sum(q[k] * t[k] for k in range(C))
        for k in range(C):
            local[index + (k,)] = q[k] * (t[k] - expectation)
    case.update({
        "column_costs": table.tolist(),
        "costs_from_columns": gathered.tolist(),
        "swap_actions": swaps.tolist(),
        "arsm_grad_from_columns": arsm.tolist(),
        "local_grad": local.tolist(),
    })


def add_bernoulli_column_vectors(rng, case):
    shape = tuple(case["shape"])
    logits = np.asarray(case["logits"])
    table = rng.standard_normal((2,) + shape)
    local = np.zeros(shape)
    for index in np.ndindex(*shape):
        s = sigmoid(logits[index])
        local[index] = s * (1.0 - s) * (table[(1,) + index] - table[(0,) + index])
    case.update({"column_costs": table.tolist(), "bernoulli_local_grad": local.tolist()})


def main():
    rng = np.random.default_rng(SEED)
    categorical = []
    for C in (2, 3, 5, 10):
        for batch_shape in ((), (4,), (2, 3)):
            name = f"C{C}_batch{'x'.join(map(str, batch_shape)) or 'scalar'}"
            categorical.append(categorical_case(rng, name, C, batch_shape, batch_shape))
    # to_event: one cost per batch element, shared by the 3 event elements of each
    for C in (3, 5):
        categorical.append(categorical_case(rng, f"C{C}_to_event_4x3", C, (4, 3), (4,)))
    # a joint f over the whole site: one scalar cost per swap row
    categorical.append(categorical_case(rng, "C4_joint_cost_2x3", 4, (2, 3), ()))
    # logits shared by every batch element (broadcast against log_pi)
    categorical.append(categorical_case(rng, "C5_shared_logits_4", 5, (4,), (4,), ()))

    bernoulli = [
        bernoulli_case(rng, "scalar", (), ()),
        bernoulli_case(rng, "batch6", (6,), (6,)),
        bernoulli_case(rng, "batch2x3", (2, 3), (2, 3)),
        bernoulli_case(rng, "to_event_4x3", (4, 3), (4,)),
    ]

    # per-element tables: cases with one cost per element and one logit vector per element
    column_rng = np.random.default_rng(SEED + 1)
    for case in categorical:
        logits_shape = np.shape(case["logits"])[:-1]
        if (np.shape(case["pseudo_costs"])[1:] == tuple(case["batch_shape"])
                and logits_shape == tuple(case["batch_shape"])):
            add_column_vectors(column_rng, case)
    for case in bernoulli:
        if np.shape(case["cost"]) == tuple(case["shape"]):
            add_bernoulli_column_vectors(column_rng, case)

    vectors = {
        "description": "ARSM/ARS/AR/RLOO/ARM/DisARM/Bernoulli-AR and per-element-table "
                       "(column) reference values in float64, "
                       "generated by tests/make_parity_vectors.py (independent numpy code).",
        "seed": SEED,
        "swap_permutations": {str(C): swap_rows(C) for C in (2, 3, 4, 5, 10)},
        "categorical": categorical,
        "bernoulli": bernoulli,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as handle:
        json.dump(vectors, handle, separators=(",", ":"))
        handle.write("\n")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes, {len(categorical)} categorical and "
          f"{len(bernoulli)} Bernoulli cases)")


if __name__ == "__main__":
    main()
