"""Smoke test of ``benchmarks/budget_bench.py``: a tiny run writes its table, JSON and plot, and
counts evaluations as the ELBO does (RLOO n plus the true action again with
``model_grads="all"``)."""

import json
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

import budget_bench  # noqa: E402


@pytest.mark.slow  # (5 s: the quick stage has no room)
@pytest.mark.usefixtures("fresh_param_store")
def test_budget_bench_writes_table_json_and_plot(tmp_path, monkeypatch):
    methods = "rloo n=2 kl=closed model=real,rloo n=2 kl=sampled model=all"
    monkeypatch.setattr(sys, "argv", [
        "budget_bench.py", "--steps", "1", "--warmup", "0", "--variance-draws", "2",
        "--batch", "16", "--threads", "1", "--methods", methods, "--out", str(tmp_path)])
    budget_bench.main()
    stem = tmp_path / "budget_digits_1layer"
    results = json.loads(stem.with_suffix(".json").read_text())["results"]
    assert results["rloo n=2 kl=closed model=real"]["evaluations"] == 2
    assert results["rloo n=2 kl=sampled model=all"]["evaluations"] == 3
    assert all(r["encoder_variance"] > 0 and r["decoder_variance"] > 0
               for r in results.values())
    table = stem.with_suffix(".md").read_text()
    assert "| ppl-arsm | rloo n=2 kl=closed model=real | 2 |" in table
    assert stem.with_suffix(".png").stat().st_size > 0
