"""Training at equal wall-clock: every estimator of a backend trains the categorical VAE of
``examples/categorical_vae.py`` for the same number of seconds of training steps, from the same
initialization and minibatches, and is compared on the test -ELBO it reaches.

Estimators (see ``examples/vae_training.py``): Pyro ``arsm``, ``ars``, ``ar``, ``rloo`` (46
samples, ARSM's budget, unless ``--rloo-samples``), ``tracegraph``, ``gumbel``; NumPyro the same
without ``gumbel``. NumPyro's ``svi.update`` is compiled ahead of the first step, not in the
budget (``compile s``).

Usage, from the repository root::

    python benchmarks/vae_compare.py --dataset mnist5k --time-budget 60
    python benchmarks/vae_compare.py --backend numpyro --time-budget 40

Writes ``vae_compare_<backend>_<dataset>_<layers>layer.{md,json,png}`` to ``--out``: one table
(test and train -ELBO, steps, ms/step median, decoder evaluations per step) and one plot (test
-ELBO against training seconds).
"""

import argparse
import json
import sys
import textwrap
import time
import traceback
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: only files are written
import matplotlib.pyplot as plt  # noqa: E402
from _examples import load_example, vae_data, vae_models  # noqa: E402

vae_training = load_example("vae_training")
ESTIMATORS = vae_training.ESTIMATORS
RUNNING_MEAN_STEPS = vae_training.RUNNING_MEAN_STEPS
TEST_PARTICLES = vae_training.TEST_PARTICLES
make_trainer, parse_eval_every = vae_training.make_trainer, vae_training.parse_eval_every
setting, summarize = vae_training.setting, vae_training.summarize
test_points, train, y_limits = vae_training.test_points, vae_training.train, vae_training.y_limits

DEFAULT_TIME_BUDGET = 60.0  # seconds of training steps per estimator
EVAL_POINTS = 20  # test evaluations per estimator (time-scheduled)


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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    vae_training.add_training_arguments(parser, out=Path(__file__).resolve().parent / "out")
    parser.add_argument("--time-budget", type=float, default=DEFAULT_TIME_BUDGET,
                        help="seconds of training steps per estimator")
    parser.add_argument("--steps", type=int, default=None,
                        help="also stop each estimator after this many steps (default: none)")
    parser.add_argument("--eval-every", type=parse_eval_every, default=None,
                        help="test -ELBO every N steps (e.g. 100) or N training seconds (e.g. "
                             f"5s) (default: budget/{EVAL_POINTS} seconds)")
    args = parser.parse_args(argv)
    vae_training.check_training_arguments(parser, args)
    if args.eval_every is None:
        args.eval_every = ("seconds", args.time_budget / EVAL_POINTS)
    return args


def run_compare(args, dataset, weights):
    """Train every estimator of ``args.backend`` for ``args.time_budget`` seconds; print and
    write the table (markdown, JSON) and the plot. Exits non-zero if an estimator failed, after
    writing the others' results."""
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
    path_stem = args.out / (f"vae_compare_{args.backend}_{args.dataset}_{args.layers}layer")
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
    dataset = vae_data.load_dataset(args.dataset)
    weights = vae_models.initial_weights(dataset.num_pixels, args.layers, args.seed)
    result = run_compare(args, dataset, weights)
    print(f"elapsed {time.perf_counter() - start:.1f} s")
    return result


if __name__ == "__main__":
    main()
