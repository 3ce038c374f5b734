"""compare_estimators: per-model variance and cost tables in both packages."""

import pytest


def test_pyro_compare_estimators_table():
    pytest.importorskip("torch")
    import pyro
    import torch

    from pyro_arsm import compare_estimators
    from test_pyro_unbiased import PLATED_DATA, init, plated_guide, plated_model

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    init(plated_model, plated_guide, PLATED_DATA)
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    rows = compare_estimators(plated_model, plated_guide, PLATED_DATA, max_plate_nesting=1,
                              estimators=("arsm", "rloo", "rloo:2", "ar", "tracegraph"),
                              num_draws=40)
    by_name = {r["estimator"]: r for r in rows}
    assert list(by_name) == ["arsm", "rloo", "rloo:2", "ar", "tracegraph"]
    for r in rows:
        assert r["variance"] > 0 and r["seconds"] > 0
        assert r["variance_x_seconds"] == pytest.approx(r["variance"] * r["seconds"])
    # ARSM, with up to C(C-1)/2 + 1 = 7 evaluations, beats single-sample TraceGraph on variance
    assert by_name["arsm"]["variance"] < by_name["tracegraph"]["variance"]
    assert 2 <= by_name["arsm"]["evaluations"] <= 7
    assert by_name["rloo"]["evaluations"] <= 7 and by_name["rloo:2"]["evaluations"] <= 2
    assert by_name["tracegraph"]["evaluations"] == 1
    # the param store is untouched
    for k, v in pyro.get_param_store().items():
        assert torch.equal(v.detach(), before[k])


def test_numpyro_compare_estimators_table():
    pytest.importorskip("numpyro")
    from numpyro_arsm import compare_estimators
    from test_numpyro_unbiased import PLATED, PLATED_DATA, plated_guide, plated_model

    rows = compare_estimators(plated_model, plated_guide, PLATED, PLATED_DATA,
                              estimators=("arsm", "rloo:2", "ar", "tracegraph"), num_draws=40)
    by_name = {r["estimator"]: r for r in rows}
    # counted when traced: 1 + C for C = 4 (the plate's cost is element-separable: C columns)
    assert by_name["arsm"]["evaluations"] == 5
    assert by_name["rloo:2"]["evaluations"] == 2
    assert by_name["ar"]["evaluations"] == 1
    assert by_name["arsm"]["variance"] < by_name["tracegraph"]["variance"]
    assert all(r["compile_seconds"] > 0 and r["seconds"] > 0 for r in rows)
