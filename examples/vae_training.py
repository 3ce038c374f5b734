"""Training of the categorical VAE (``vae_models.py``) with one gradient estimator, timed: the
loop shared by ``categorical_vae.py`` (one estimator) and ``benchmarks/vae_compare.py`` (every
estimator for the same wall-clock budget).

Estimators (the gradient of the encoder; the decoder's is pathwise in all of them):

    arsm        ARSM_ELBO(estimator="arsm"): all C(C-1)/2 + 1 = 46 swaps, merged
    ars         ARSM_ELBO(estimator="ars"): one random reference category, C evaluations
    ar          ARSM_ELBO(estimator="ar"): augment-REINFORCE, 1 evaluation
    rloo        ARSM_ELBO(estimator="rloo"): REINFORCE with leave-one-out baselines over
                ``args.rloo_samples`` samples of each site
    tracegraph  the backend's TraceGraph_ELBO (score function, no baseline)
    gumbel      straight-through Gumbel-softmax (Pyro only): the guide samples
                RelaxedOneHotCategoricalStraightThrough(temperature 1.0), the prior is the same
                relaxation of the uniform categorical, Trace_ELBO; the decoder sees the hard
                one-hot sample, gradients flow through the relaxed one (biased)

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
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO
from pyro.optim import Adam
from tqdm.auto import tqdm
from vae_models import NUM_CLASSES, NUM_LATENTS, PyroVAE, numpyro_vae

from pyro_arsm import ARSM_ELBO

GUMBEL_TEMPERATURE = 1.0
TEST_PARTICLES = 10
RUNNING_MEAN_STEPS = 50  # train -ELBO is reported as the mean of the last this many steps

ARSM_ESTIMATORS = ("arsm", "ars", "ar", "rloo")
ESTIMATORS = {
    "pyro": ARSM_ESTIMATORS + ("tracegraph", "gumbel"),
    "numpyro": ARSM_ESTIMATORS + ("tracegraph",),
}


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
        """Decoder evaluations in the last step: the real passes plus the pseudo passes that
        ARSM_ELBO reports (after deduplicating identical whole-site actions)."""
        return (getattr(self.loss, "num_particles", 1)
                + getattr(self.loss, "last_num_pseudo_evaluations", 0))

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
        self.svi = numpyro.infer.SVI(model, guide, optax.adam(args.lr), loss=loss)
        example = jnp.zeros((args.batch, dataset.num_pixels), jnp.float32)
        self.state = self.svi.init(jax.random.PRNGKey(args.seed), example)
        start = time.perf_counter()
        self.update = jax.jit(self.svi.update).lower(self.state, example).compile()
        self.compile_seconds = time.perf_counter() - start
        # NumPyro evaluates every pseudo action (no dedupe): ARSM_ELBO counted them while
        # svi.update was traced, so the count is static
        self.static_evaluations = (getattr(loss, "num_particles", 1)
                                   + getattr(loss, "last_num_pseudo_evaluations", 0))

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


def add_training_arguments(parser, out):
    """The options of one training run that ``categorical_vae.py`` and
    ``benchmarks/vae_compare.py`` share (``out``: the default output folder)."""
    parser.add_argument("--backend", choices=["pyro", "numpyro"], default="pyro")
    parser.add_argument("--rloo-samples", type=int, default=46,
                        help="samples per site for the rloo estimator (46 = ARSM's budget)")
    parser.add_argument("--dataset", choices=["digits", "mnist5k"], default="digits")
    parser.add_argument("--layers", type=int, choices=[1, 2], default=1,
                        help="stochastic layers")
    parser.add_argument("--batch", type=int, default=None,
                        help="minibatch size (default: 200 for mnist5k, 100 for digits)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the initialization, minibatches and sampling")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="torch device (pyro only; default cpu). NumPyro runs on JAX's "
                             "default device: choose it with JAX_PLATFORMS=cpu or cuda")
    parser.add_argument("--out", type=Path, default=out, help="output folder")


def check_training_arguments(parser, args):
    """Exit with a clear message on options that do not go together; fill in ``args.batch``."""
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
