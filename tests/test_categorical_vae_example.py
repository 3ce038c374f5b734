"""Smoke tests of ``examples/categorical_vae.py``: each backend, layer count and estimator runs a
few steps, writes its outputs and reports finite losses."""

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import categorical_vae  # fails loudly if the example or its deps break
import pytest
import vae_training

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def assert_finite_summary(summary):
    assert math.isfinite(summary["final_test_neg_elbo"])
    assert math.isfinite(summary["final_train_neg_elbo"])
    assert not summary["diverged"]


def assert_single_run_outputs(out, stem):
    for suffix in (".png", ".csv", ".json"):
        assert (out / (stem + suffix)).stat().st_size > 0
    with open(out / (stem + ".json")) as f:
        run = json.load(f)
    assert_finite_summary(run["summary"])
    tests = [row["test_neg_elbo"] for row in run["curve"] if row["test_neg_elbo"] is not None]
    assert len(tests) >= 2 and all(math.isfinite(t) for t in tests)
    header = (out / (stem + ".csv")).read_text().splitlines()[0]
    assert header == "step,seconds,train_neg_elbo,train_neg_elbo_running_mean,test_neg_elbo"
    return run


def test_pyro_arsm_one_layer_writes_curve(tmp_path):
    run = categorical_vae.main(["--steps", "5", "--eval-every", "2", "--out", str(tmp_path)])
    saved = assert_single_run_outputs(tmp_path, "categorical_vae_pyro_digits_1layer_arsm")
    assert saved["summary"]["steps"] == 5 == run["summary"]["steps"]
    # one real pass + at most C(C-1)/2 = 45 distinct pseudo actions per step
    assert all(1 < n <= 46 for n in run["evaluations"])


def test_pyro_two_layers_chains_a_second_site(tmp_path):
    run = categorical_vae.main(["--layers", "2", "--steps", "3", "--out", str(tmp_path)])
    assert_single_run_outputs(tmp_path, "categorical_vae_pyro_digits_2layer_arsm")
    # both categorical sites get pseudo passes: more than one site's 45 swaps
    assert max(run["evaluations"]) > 46


def test_pyro_gumbel_reports_discrete_test_elbo(tmp_path):
    gumbel = categorical_vae.main(["--estimator", "gumbel", "--steps", "3",
                                   "--out", str(tmp_path)])
    assert_single_run_outputs(tmp_path, "categorical_vae_pyro_digits_1layer_gumbel")
    # At initialization (step 0) both runs have the same weights and seed: a test -ELBO of the
    # discrete model is then the same number as an ARSM run's; the relaxed model's is not.
    arsm = categorical_vae.main(["--steps", "1", "--out", str(tmp_path / "arsm")])
    assert gumbel["curve"][0]["test_neg_elbo"] == pytest.approx(
        arsm["curve"][0]["test_neg_elbo"], rel=1e-6)


@pytest.mark.slow  # 15 s of XLA compilation; the Pyro runs smoke-test the script in the quick stage
def test_numpyro_arsm_jitted_writes_curve(tmp_path):
    pytest.importorskip("numpyro")
    run = categorical_vae.main(["--backend", "numpyro", "--steps", "3", "--out", str(tmp_path)])
    assert_single_run_outputs(tmp_path, "categorical_vae_numpyro_digits_1layer_arsm")
    # compiling svi.update is timed apart and costs more than any compiled step
    assert run["compile_seconds"] > max(run["step_ms"]) / 1000
    assert run["evaluations"] == [46, 46, 46]


@pytest.mark.slow  # a child process that imports jax
def test_numpyro_gumbel_exits_with_a_clear_message():
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "categorical_vae.py"), "--backend", "numpyro",
         "--estimator", "gumbel"], capture_output=True, text=True, timeout=120)
    assert completed.returncode != 0
    assert "NumPyro has no straight-through Gumbel-softmax" in completed.stderr


def test_eval_every_accepts_steps_or_seconds():
    assert vae_training.parse_eval_every("100") == ("steps", 100)
    assert vae_training.parse_eval_every("2.5s") == ("seconds", 2.5)
    with pytest.raises(argparse.ArgumentTypeError, match="--eval-every takes a positive number"):
        vae_training.parse_eval_every("-3")
