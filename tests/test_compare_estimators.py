"""compare_estimators: per-model variance and cost tables in both packages.

The reported variances are checked against the variance of gradient draws taken independently
(``pyro_exact`` / ``numpyro_exact``), and the reported seconds against the wall-clock time of the
whole call: an estimator's median over ``NUM_DRAWS`` estimates, times half of them, cannot
exceed it.
"""

import time

import pytest

NUM_DRAWS = 40


def assert_variance_matches(reported, draws):
    """``reported`` (from NUM_DRAWS draws) against the trace of the covariance of ``draws`` (ten
    times as many, independent): equal up to sampling error, and far from e.g. the variance of a
    mean (1 / NUM_DRAWS of it) or a standard deviation."""
    reference = float(draws.var(0).sum())
    assert reference / 3 < reported < 3 * reference, (reported, reference)


def assert_seconds_fit_the_wall_clock(rows, wall_seconds, compile_key=None):
    spent = sum(r["seconds"] * (NUM_DRAWS // 2) for r in rows)
    if compile_key:
        spent += sum(r[compile_key] for r in rows)
    assert 0 < spent <= wall_seconds, (spent, wall_seconds)


@pytest.mark.usefixtures("fresh_param_store")
def test_pyro_compare_estimators_table():
    pytest.importorskip("torch")
    import pyro
    import torch
    from pyro_exact import gradient_draws
    from pyro_models import PLATED_DATA, init, plated_guide, plated_model

    from pyro_arsm import ARSM_ELBO, compare_estimators

    init(plated_model, plated_guide, PLATED_DATA)
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    start = time.perf_counter()
    rows = compare_estimators(plated_model, plated_guide, PLATED_DATA, max_plate_nesting=1,
                              estimators=("arsm", "rloo", "rloo:2", "ar", "tracegraph"),
                              num_draws=NUM_DRAWS)
    assert_seconds_fit_the_wall_clock(rows, time.perf_counter() - start)
    by_name = {r["estimator"]: r for r in rows}
    assert list(by_name) == ["arsm", "rloo", "rloo:2", "ar", "tracegraph"]
    # ARSM, with up to C(C-1)/2 + 1 = 7 evaluations, beats single-sample TraceGraph on variance
    assert by_name["arsm"]["variance"] < by_name["tracegraph"]["variance"]
    assert 2 <= by_name["arsm"]["evaluations"] <= 7
    assert by_name["rloo"]["evaluations"] <= 7 and by_name["rloo:2"]["evaluations"] <= 2
    assert by_name["tracegraph"]["evaluations"] == 1
    # the param store is untouched
    for k, v in pyro.get_param_store().items():
        assert torch.equal(v.detach(), before[k])
    # the variance is over every parameter the model and guide use (phi and locs)
    draws = gradient_draws(ARSM_ELBO(max_plate_nesting=1), plated_model, plated_guide,
                           ["phi", "locs"], 10 * NUM_DRAWS, PLATED_DATA)
    assert_variance_matches(by_name["arsm"]["variance"], draws)
    # split into the guide's parameters (phi) and the model's (locs)
    num_phi = pyro.param("phi").numel()
    assert_variance_matches(by_name["arsm"]["guide_variance"], draws[:, :num_phi])
    assert_variance_matches(by_name["arsm"]["model_variance"], draws[:, num_phi:])
    for r in rows:
        assert r["guide_variance"] + r["model_variance"] == pytest.approx(r["variance"])


@pytest.mark.slow  # eager NumPyro gradients; the Pyro table test is quick
def test_numpyro_compare_estimators_table():
    pytest.importorskip("numpyro")
    from numpyro_exact import gradient_draws
    from numpyro_models import PLATED, PLATED_DATA, plated_guide, plated_model

    from numpyro_arsm import ARSM_ELBO, compare_estimators

    start = time.perf_counter()
    rows = compare_estimators(plated_model, plated_guide, PLATED, PLATED_DATA,
                              estimators=("arsm", "rloo:2", "ar", "tracegraph"),
                              num_draws=NUM_DRAWS)
    assert_seconds_fit_the_wall_clock(rows, time.perf_counter() - start, "compile_seconds")
    by_name = {r["estimator"]: r for r in rows}
    # counted when traced: 1 + C for C = 4 (the plate's cost is element-separable: C columns)
    assert by_name["arsm"]["evaluations"] == 5
    assert by_name["rloo:2"]["evaluations"] == 2
    assert by_name["ar"]["evaluations"] == 1
    assert by_name["arsm"]["variance"] < by_name["tracegraph"]["variance"]
    # the first call of each jitted gradient (which compiles it) is timed apart from the estimates
    assert all(r["compile_seconds"] > r["seconds"] for r in rows)
    draws = gradient_draws(ARSM_ELBO(), plated_model, plated_guide, PLATED, ["phi", "locs"],
                           10 * NUM_DRAWS, PLATED_DATA, seed_=1)
    assert_variance_matches(by_name["arsm"]["variance"], draws)
