"""Both estimator modules reproduce the float64 vectors of ``tests/data/parity_vectors.json``.

The vectors come from an independent numpy implementation (``tests/make_parity_vectors.py``), so
passing here pins ``pyro_arsm.estimators`` and ``numpyro_arsm.estimators`` to the same formulas,
the same swap-row order and the same ``to_event`` cost broadcasting.
"""

import json
import os

import numpy as np
import pytest

VECTORS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                            "parity_vectors.json")
with open(VECTORS_PATH) as _handle:
    VECTORS = json.load(_handle)

CATEGORICAL = VECTORS["categorical"]
BERNOULLI = VECTORS["bernoulli"]
TOL = 1e-6


def _close(actual, expected, what, case):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64),
                               np.asarray(expected, dtype=np.float64),
                               rtol=TOL, atol=TOL, err_msg=f"{what} ({case['name']})")


def _equal(actual, expected, what, case):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what} ({case['name']}): shape {actual.shape}"
    np.testing.assert_array_equal(actual, expected, err_msg=f"{what} ({case['name']})")


def _check_swap_permutations(est, to_numpy):
    for C, perms in VECTORS["swap_permutations"].items():
        C = int(C)
        _equal(to_numpy(est.swap_permutations(C)), perms, "swap_permutations", {"name": C})
        index = to_numpy(est.pair_index(C))
        for m in range(C):
            for j in range(C):
                expected = list(range(C))
                expected[m], expected[j] = expected[j], expected[m]
                assert perms[index[m, j]] == expected


def _check_categorical(est, real, integer, to_numpy, case):
    C = case["num_categories"]
    log_pi, logits = real(case["log_pi"]), real(case["logits"])
    reference = case["reference"]
    rows = integer(case["reference_rows"])

    _equal(to_numpy(est.pseudo_actions(log_pi, logits)), case["pseudo_actions"],
           "pseudo_actions", case)
    _equal(to_numpy(est.categorical_from_log_pi(log_pi, logits)), case["pseudo_actions"][0],
           "categorical_from_log_pi", case)
    _equal(to_numpy(est.ars_rows(reference, C)), case["reference_rows"], "ars_rows", case)
    _equal(to_numpy(est.pseudo_actions(log_pi, logits, rows)),
           np.asarray(case["pseudo_actions"])[case["reference_rows"]],
           "pseudo_actions at ARS rows", case)

    arsm = to_numpy(est.arsm_grad(real(case["pseudo_costs"]), log_pi))
    assert arsm.dtype == np.float64
    _close(arsm, case["arsm_grad"], "arsm_grad", case)
    _close(to_numpy(est.ars_grad(real(case["reference_costs"]), log_pi, reference)),
           case["ars_grad"], "ars_grad", case)
    _close(to_numpy(est.ar_grad(real(case["cost"]), log_pi)), case["ar_grad"], "ar_grad", case)
    _close(to_numpy(est.rloo_grad(real(case["pseudo_costs"]), integer(case["pseudo_actions"]),
                                  logits)), case["rloo_grad"], "rloo_grad", case)


def _check_columns(est, real, integer, to_numpy, case):
    """The per-element-table functions, on the cases with one cost per element."""
    log_pi, logits = real(case["log_pi"]), real(case["logits"])
    columns = real(case["column_costs"])
    _close(to_numpy(est.costs_from_columns(columns, integer(case["pseudo_actions"]))),
           case["costs_from_columns"], "costs_from_columns", case)
    _equal(to_numpy(est.swap_actions(log_pi, logits)), case["swap_actions"], "swap_actions", case)
    arsm = to_numpy(est.arsm_grad_from_columns(columns, log_pi, logits))
    assert arsm.dtype == np.float64
    _close(arsm, case["arsm_grad_from_columns"], "arsm_grad_from_columns", case)
    _close(to_numpy(est.local_grad(columns, logits)), case["local_grad"], "local_grad", case)


def _check_bernoulli(est, real, to_numpy, case):
    u, logits = real(case["u"]), real(case["logits"])
    cost, anti_cost = real(case["cost"]), real(case["anti_cost"])
    b, anti_b = est.bernoulli_pair(u, logits)
    _equal(to_numpy(b), case["b"], "bernoulli_pair b", case)
    _equal(to_numpy(anti_b), case["anti_b"], "bernoulli_pair anti_b", case)
    b, anti_b = real(case["b"]), real(case["anti_b"])

    disarm = to_numpy(est.disarm_grad(cost, anti_cost, b, anti_b, logits))
    assert disarm.dtype == np.float64
    _close(disarm, case["disarm_grad"], "disarm_grad", case)
    _close(to_numpy(est.arm_grad(cost, anti_cost, u)), case["arm_grad"], "arm_grad", case)
    _close(to_numpy(est.bernoulli_ar_grad(cost, u)), case["bernoulli_ar_grad"],
           "bernoulli_ar_grad", case)
    samples = real(np.stack([case["b"], case["anti_b"]]))
    costs = real(np.stack([case["cost"], case["anti_cost"]]))
    _close(to_numpy(est.bernoulli_rloo_grad(costs, samples, logits)),
           case["bernoulli_rloo_grad"], "bernoulli_rloo_grad", case)
    if "column_costs" in case:
        _close(to_numpy(est.bernoulli_local_grad(real(case["column_costs"]), logits)),
               case["bernoulli_local_grad"], "bernoulli_local_grad", case)


def _names(cases):
    return [case["name"] for case in cases]


COLUMNS = [case for case in CATEGORICAL if "column_costs" in case]


def _staged(cases, quick):
    """``cases`` as pytest params: those named in ``quick`` run in the quick stage, the rest in
    the full stage only (each NumPyro case compiles its own programs, 2-3 s apiece on 2 cores;
    the Pyro cases run in milliseconds and are all quick)."""
    return [pytest.param(case, id=case["name"],
                         marks=() if case["name"] in quick else pytest.mark.slow)
            for case in cases]


# one quick case per batch shape, category count and cost kind
QUICK_CATEGORICAL = {"C2_batch4", "C10_batch2x3", "C3_to_event_4x3", "C4_joint_cost_2x3",
                     "C5_shared_logits_4"}
QUICK_COLUMNS = {"C2_batch4", "C5_batch2x3", "C10_batchscalar"}
QUICK_BERNOULLI = {"scalar", "to_event_4x3"}


# ---------------------------------------------------------------------------------------------
# pyro_arsm (torch, float64 tensors)
# ---------------------------------------------------------------------------------------------


def _torch_backend():
    torch = pytest.importorskip("torch")
    from pyro_arsm import estimators

    def real(x):
        return torch.tensor(x, dtype=torch.float64)

    def integer(x):
        return torch.tensor(x, dtype=torch.long)

    def to_numpy(x):
        return x.detach().cpu().numpy()

    return estimators, real, integer, to_numpy


def test_pyro_swap_permutations_match_vectors():
    est, _, _, to_numpy = _torch_backend()
    _check_swap_permutations(est, to_numpy)


@pytest.mark.parametrize("case", CATEGORICAL, ids=_names(CATEGORICAL))
def test_pyro_categorical_estimators_match_vectors(case):
    est, real, integer, to_numpy = _torch_backend()
    _check_categorical(est, real, integer, to_numpy, case)


@pytest.mark.parametrize("case", COLUMNS, ids=_names(COLUMNS))
def test_pyro_column_estimators_match_vectors(case):
    est, real, integer, to_numpy = _torch_backend()
    _check_columns(est, real, integer, to_numpy, case)


@pytest.mark.parametrize("case", BERNOULLI, ids=_names(BERNOULLI))
def test_pyro_bernoulli_estimators_match_vectors(case):
    est, real, _, to_numpy = _torch_backend()
    _check_bernoulli(est, real, to_numpy, case)


# ---------------------------------------------------------------------------------------------
# numpyro_arsm (jax, float64 enabled locally)
# ---------------------------------------------------------------------------------------------


def _jax_backend():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from numpyro_arsm import estimators

    def real(x):
        return jnp.asarray(np.asarray(x, dtype=np.float64))

    def integer(x):
        return jnp.asarray(np.asarray(x, dtype=np.int32))

    def to_numpy(x):
        return np.asarray(x)

    return jax, estimators, real, integer, to_numpy


def _enable_x64(jax):
    # jax >= 0.6 exposes the context manager as jax.enable_x64(True); older releases as
    # jax.experimental.enable_x64().
    state = getattr(jax, "enable_x64", None)
    if state is not None:
        return state(True)
    from jax.experimental import enable_x64

    return enable_x64()


def test_numpyro_swap_permutations_match_vectors():
    jax, est, _, _, to_numpy = _jax_backend()
    with _enable_x64(jax):
        _check_swap_permutations(est, to_numpy)


@pytest.mark.parametrize("case", _staged(CATEGORICAL, QUICK_CATEGORICAL))
def test_numpyro_categorical_estimators_match_vectors(case):
    jax, est, real, integer, to_numpy = _jax_backend()
    with _enable_x64(jax):
        _check_categorical(est, real, integer, to_numpy, case)
        # the same values when the ARS reference is a traced integer inside jit
        ars = jax.jit(est.ars_grad)(real(case["reference_costs"]), real(case["log_pi"]),
                                    integer(case["reference"]))
        _close(to_numpy(ars), case["ars_grad"], "jit ars_grad", case)


@pytest.mark.parametrize("case", _staged(COLUMNS, QUICK_COLUMNS))
def test_numpyro_column_estimators_match_vectors(case):
    jax, est, real, integer, to_numpy = _jax_backend()
    with _enable_x64(jax):
        _check_columns(est, real, integer, to_numpy, case)
        # the same values under jit
        arsm = jax.jit(est.arsm_grad_from_columns)(real(case["column_costs"]),
                                                   real(case["log_pi"]), real(case["logits"]))
        _close(to_numpy(arsm), case["arsm_grad_from_columns"], "jit arsm_grad_from_columns", case)


@pytest.mark.parametrize("case", _staged(BERNOULLI, QUICK_BERNOULLI))
def test_numpyro_bernoulli_estimators_match_vectors(case):
    jax, est, real, _, to_numpy = _jax_backend()
    with _enable_x64(jax):
        _check_bernoulli(est, real, to_numpy, case)
