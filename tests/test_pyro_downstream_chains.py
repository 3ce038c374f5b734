"""Exact-gradient suite for guides with downstream chains of mixed kinds.

Every path of the pseudo-action passes (``vectorize_pseudo="auto"``, ``True``, ``False``, and the
automatic fallback of ``"auto"`` to one pass per pseudo action) x the structures of
``pyro_chain_models`` (discrete -> discrete -> continuous, continuous -> discrete, a categorical
and a Bernoulli site in either order, an independent continuous site between a discrete site and
a continuous site downstream of it), Bernoulli and Categorical (``C = 3``), every estimator.

Each test compares the Monte Carlo mean of ``ARSM_ELBO``'s gradient with the exact gradient (the
closed-form ``-ELBO`` of ``pyro_chain_models`` differentiated by autograd, or TraceEnum_ELBO /
brute force for the purely discrete structures): a z-test with fixed seeds, the standard error
below 5% of the largest exact component (``assert_unbiased``; the draws below keep it at most 4%).
Run with ``-s`` to see each test's worst z.
"""

import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro_chain_models import (
    CHAIN_DATA,
    KINDS,
    STRUCTURE_PARAMS,
    bern_cat_guide,
    c_d_exact_loss,
    cat_bern_guide,
    expect_warnings,
    init_params,
    pair_model,
    structure,
)
from pyro_exact import (
    assert_unbiased,
    brute_force_gradient,
    enum_gradient,
    flat_grad,
    gradient_draws,
    param_tensors,
)

from pyro_arsm import ARSM_ELBO

pytestmark = pytest.mark.usefixtures("fresh_param_store")

PATHS = ["auto", True, False]
ESTIMATORS = ["arsm", "ars", "ar", "rloo", "local"]
CONTINUOUS = ["dd_c", "c_d", "d_c_c"]
PAIRS = {"cat_bern": cat_bern_guide, "bern_cat": bern_cat_guide}

FALLBACK = r"batched pseudo-action pass for guide site 'b0' failed.*correct, slower"
NOT_SEPARABLE = r"guide site '{}' is not element-separable"


def draws_for(kind, estimator):
    """``(particles, draws)``: a standard error of at most 3% (AR: 4%) of the largest exact
    component (AR, one evaluation per site, has the largest variance)."""
    if estimator == "ar":
        return (800 if kind == "categorical" else 300), 50
    return 150, 50


def arsm_draws(model, guide, names, args, kind, estimator, vectorize_pseudo, particles=None,
               draws=None):
    k, d = draws_for(kind, estimator)
    elbo = ARSM_ELBO(num_particles=particles or k, vectorize_particles=True,
                     max_plate_nesting=1, estimator=estimator, vectorize_pseudo=vectorize_pseudo)
    return gradient_draws(elbo, model, guide, names, draws or d, *args)


def exact_gradient(exact_loss, names, *args):
    return flat_grad(exact_loss(*args), param_tensors(names))


def _cases():
    """structure x kind x path x estimator; AR needs no pseudo pass, so it runs once (on the
    default path). The quick stage runs ARSM on the default and the sequential path of every
    structure and kind; the other paths and estimators run in the full stage."""
    cases = []
    for name in CONTINUOUS + list(PAIRS):
        kinds = KINDS if name in CONTINUOUS else ["mixed"]
        for kind in kinds:
            for path in PATHS:
                for estimator in ESTIMATORS:
                    if estimator == "ar" and path != "auto":
                        continue
                    fast = estimator == "arsm" and path is not True
                    marks = () if fast else (pytest.mark.slow,)
                    cases.append(pytest.param(name, kind, path, estimator, marks=marks,
                                              id=f"{name}-{kind}-{path}-{estimator}"))
    return cases


# ---------------------------------------------------------------------------------------------
# The exact references
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", CONTINUOUS)
def test_closed_form_reference_matches_trace_elbo(name, kind):
    # sanity of the closed forms: Trace_ELBO (score function for the discrete sites, pathwise
    # for the Normal ones) is unbiased for the same gradient
    model, guide, exact_loss = structure(name)
    names = STRUCTURE_PARAMS[name]
    init_params(guide, CHAIN_DATA, kind)
    exact = exact_gradient(exact_loss, names, CHAIN_DATA, kind)
    elbo = Trace_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1)
    draws = gradient_draws(elbo, model, guide, names, 40, CHAIN_DATA, kind)
    assert_unbiased(draws, exact, label=f"Trace_ELBO vs closed form, {name}, {kind}")


@pytest.mark.parametrize("kind", KINDS)
def test_quadrature_reference_is_converged(kind):
    # c_d's reference integrates over z by Gauss-Hermite quadrature: 64 nodes agree with 128
    _, guide, _ = structure("c_d")
    names = STRUCTURE_PARAMS["c_d"]
    init_params(guide, CHAIN_DATA, kind)
    g64 = exact_gradient(c_d_exact_loss, names, CHAIN_DATA, kind, 64)
    g128 = exact_gradient(c_d_exact_loss, names, CHAIN_DATA, kind, 128)
    assert torch.allclose(g64, g128, rtol=1e-5, atol=1e-5)
    assert torch.allclose(c_d_exact_loss(CHAIN_DATA, kind, 64),
                          c_d_exact_loss(CHAIN_DATA, kind, 128), rtol=1e-6)


@pytest.mark.parametrize("order", list(PAIRS))
def test_pair_references_agree(order):
    # the two exact references of the purely discrete pairs agree
    guide = PAIRS[order]
    y = CHAIN_DATA[:3]
    init_params(guide, y)
    names = STRUCTURE_PARAMS[order]
    enum, _ = enum_gradient(pair_model, guide, names, 1, y)
    brute = brute_force_gradient(pair_model, guide, names, y)
    assert torch.allclose(enum, brute, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Every structure x kind x path x estimator
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, kind, path, estimator", _cases())
def test_downstream_chain_unbiased(name, kind, path, estimator):
    names = STRUCTURE_PARAMS[name]
    if name in PAIRS:
        model, guide = pair_model, PAIRS[name]
        args = (CHAIN_DATA,)
        init_params(guide, *args)
        exact, _ = enum_gradient(model, guide, names, 1, *args)
    else:
        model, guide, exact_loss = structure(name)
        args = (CHAIN_DATA, kind)
        init_params(guide, *args)
        exact = exact_gradient(exact_loss, names, *args)
    with expect_warnings():  # every term lies in the plate: separable, batched pass right
        draws = arsm_draws(model, guide, names, args, kind, estimator, path)
    assert_unbiased(draws, exact, label=f"{name}, {kind}, vectorize_pseudo={path}, {estimator}")


# ---------------------------------------------------------------------------------------------
# The automatic fallback
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", [
    "arsm", "rloo", "local",
    pytest.param("ars", marks=pytest.mark.slow),
])
@pytest.mark.parametrize("kind", KINDS)
def test_automatic_fallback_is_unbiased(kind, estimator):
    # dd_c_flat's guide torch.cats along dim 1: the batched pass of b0 fails, "auto" warns once
    # and evaluates b0's pseudo actions one at a time (b1's batched pass is fine)
    model, guide, exact_loss = structure("dd_c_flat")
    names = STRUCTURE_PARAMS["dd_c_flat"]
    args = (CHAIN_DATA, kind)
    init_params(guide, *args)
    exact = exact_gradient(exact_loss, names, *args)
    with expect_warnings(FALLBACK) as caught:
        draws = arsm_draws(model, guide, names, args, kind, estimator, "auto")
    assert len(caught) == 1
    assert_unbiased(draws, exact, label=f"automatic fallback, {kind}, {estimator}")


@pytest.mark.parametrize("kind", KINDS)
def test_fallback_model_fails_the_batched_path(kind):
    # the same model raises on vectorize_pseudo=True (so "auto" above did fall back), and runs
    # without a warning on vectorize_pseudo=False
    model, guide, _ = structure("dd_c_flat")
    args = (CHAIN_DATA, kind)
    init_params(guide, *args)
    elbo = ARSM_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1,
                     vectorize_pseudo=True)
    with pytest.raises(ValueError, match="site 'b0'.*vectorize_pseudo=False"):
        elbo.differentiable_loss(model, guide, *args)
    elbo = ARSM_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1,
                     vectorize_pseudo=False)
    with expect_warnings():
        elbo.differentiable_loss(model, guide, *args)


# ---------------------------------------------------------------------------------------------
# "local" on a cost that is not element-separable
# ---------------------------------------------------------------------------------------------


def _non_separable_cases():
    """Each order on each path; one order per path in the quick stage."""
    quick = {("bern_cat", False), ("cat_bern", "auto"), ("bern_cat", True)}
    return [pytest.param(order, path, id=f"{order}-{path}",
                         marks=() if (order, path) in quick else pytest.mark.slow)
            for order in PAIRS for path in PATHS]


@pytest.mark.parametrize("order, path", _non_separable_cases())
def test_local_on_non_separable_chain_falls_back_to_arsm(order, path):
    # pair_model's "total" lies outside the plate and sums over it: neither site's cost is
    # element-separable, so "local" warns (once per site) and uses ARSM, still unbiased
    guide = PAIRS[order]
    y, total = CHAIN_DATA[:3], torch.tensor(1.7)
    init_params(guide, y, total)
    names = STRUCTURE_PARAMS[order]
    exact = brute_force_gradient(pair_model, guide, names, y, total)
    with expect_warnings(NOT_SEPARABLE.format("c"), NOT_SEPARABLE.format("b")) as caught:
        draws = arsm_draws(pair_model, guide, names, (y, total), "mixed", "local", path)
    assert len(caught) == 2
    assert_unbiased(draws, exact, label=f"local -> arsm, non-separable {order}, "
                                        f"vectorize_pseudo={path}")


def test_fallback_warning_is_once_per_elbo():
    # a second call of the same ELBO on the same model does not warn again
    model, guide, _ = structure("dd_c_flat")
    args = (CHAIN_DATA, "bernoulli")
    init_params(guide, *args)
    elbo = ARSM_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    with expect_warnings(FALLBACK):
        elbo.differentiable_loss(model, guide, *args)
    with expect_warnings():
        elbo.differentiable_loss(model, guide, *args)
