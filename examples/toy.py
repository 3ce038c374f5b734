"""The univariate toy problem of Yin, Yue & Zhou (ICML 2019, section 4.1, Figure 1).

One categorical variable ``z`` over ``C`` categories with logits ``phi``; maximize

    E_{z ~ Cat(softmax(phi))}[f(z)],    f(z) = 0.5 + (z + 1) / (C R),   z = 0..C-1,

with ``C = R = 30``. The optimum puts all mass on ``z = C-1`` (``E[f] = 0.5 + 1/R``); the values
of ``f`` differ by only ``1/(C R)``, so the signal is small next to the sampling noise. As in the
paper's ``toy/ARSM_Univariate.py``, ``phi`` starts at 0 and follows plain gradient ascent,
``phi <- phi + lr * g``, with ``lr = 1`` for 5000 iterations.

Estimators, each a separate run from ``phi = 0`` with its own generator:

    true        p * (f - p.f), the exact gradient
    arsm        ARSM (Augment-REINFORCE-Swap-Merge), up to C(C-1)/2 + 1 evaluations of f
    ars         ARS, one uniformly drawn reference category, up to C evaluations
    ar          AR (Augment-REINFORCE), one evaluation
    reinforce   REINFORCE, one sample, no baseline: f(z) (onehot(z) - p)
    rloo_n2     REINFORCE with leave-one-out baselines, n = 2 samples
    rloo_n436   the same with n = C(C-1)/2 + 1, ARSM's worst-case evaluation budget

Every ``--variance-every`` iterations the gradient variance at the current ``phi`` is estimated
from ``--variance-draws`` independent estimates (a separate generator, so the training
trajectory does not depend on these settings): the trace of their covariance and the variance of
the ``phi_{C-1}`` component. Evaluations of ``f`` per iteration are counted as the distinct
pseudo actions for ARSM and ARS, ``n`` for RLOO, 1 for AR and REINFORCE, and ``C`` for the true
gradient (it sums over all categories).

Run from the repository root:

    python examples/toy.py                      # paper setting, a few minutes on 2 cores
    python examples/toy.py --iterations 500     # quicker look

It prints a table and writes ``toy.png`` (three panels: E[f], p(z = C-1) and gradient
variance against iteration) and ``toy.json`` (all curves) to ``--out``.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: only files are written
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyro_arsm.estimators import arsm_gradient, num_swap_rows  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # the progress bar is optional
    tqdm = None

DTYPE = torch.float64  # f differs by 1/(C R) ~ 1e-3 between categories; keep the sums exact
VARIANCE_SEED_OFFSET = 1000  # variance draws use seed + k + offset, apart from the training draws


def toy_values(num_categories, r):
    """``f(z) = 0.5 + (z + 1) / (C R)`` for ``z = 0..C-1``, shape ``[C]``."""
    z = torch.arange(num_categories, dtype=DTYPE)
    return 0.5 + (z + 1) / (num_categories * r)


def true_gradient(logits, f_values):
    """Exact ``d E[f] / d phi = p * (f - p.f)``; ``logits`` ``[..., C]``."""
    p = logits.softmax(-1)
    return p * (f_values - (p * f_values).sum(-1, keepdim=True))


def reinforce_gradient(logits, f_values, generator):
    """Textbook REINFORCE, one sample and no baseline: ``f(z) (onehot(z) - p)``."""
    p = logits.softmax(-1)
    z = torch.multinomial(p.reshape(-1, p.shape[-1]), 1, generator=generator).reshape(p.shape[:-1])
    one_hot = torch.nn.functional.one_hot(z, p.shape[-1]).to(p.dtype)
    return f_values[z].unsqueeze(-1) * (one_hot - p)


def make_estimators(num_categories):
    """Ordered ``{name: (label, estimate)}``; ``estimate(logits, f_values, generator)`` returns
    ``(g, evaluations)`` with ``g`` of the shape of ``logits`` (``[C]`` or ``[draws, C]``)."""
    big_n = num_swap_rows(num_categories)

    def exact(logits, f_values, generator):
        return true_gradient(logits, f_values), num_categories

    def reinforce(logits, f_values, generator):
        return reinforce_gradient(logits, f_values, generator), 1

    def via_arsm_gradient(estimator, num_samples=None):
        def estimate(logits, f_values, generator):
            evaluations = []

            def f(actions):
                if estimator in ("arsm", "ars"):
                    # f is only evaluated at distinct pseudo actions; repeated swaps are free.
                    evaluations.append(torch.unique(actions).numel())
                else:
                    evaluations.append(actions.shape[0])
                return f_values[actions]

            g = arsm_gradient(logits, f, estimator, num_samples=num_samples, generator=generator)
            return g, evaluations[0]

        return estimate

    return {
        "true": ("true gradient", exact),
        "arsm": ("ARSM", via_arsm_gradient("arsm")),
        "ars": ("ARS", via_arsm_gradient("ars")),
        "ar": ("AR", via_arsm_gradient("ar")),
        "reinforce": ("REINFORCE", reinforce),
        "rloo_n2": ("RLOO n=2", via_arsm_gradient("rloo", 2)),
        f"rloo_n{big_n}": (f"RLOO n={big_n}", via_arsm_gradient("rloo", big_n)),
    }


def gradient_draws(name, estimate, phi, f_values, draws, generator):
    """``draws`` independent estimates at ``phi``, shape ``[draws, C]``."""
    if name == "ars":
        # arsm_gradient draws one reference category per call and shares it across a batch, so
        # a batched call would not give independent ARS estimates; draw them one at a time.
        return torch.stack([estimate(phi, f_values, generator)[0] for _ in range(draws)])
    return estimate(phi.expand(draws, phi.shape[-1]), f_values, generator)[0]


def run_estimator(name, estimate, f_values, args, seed, progress=None):
    """Gradient ascent from ``phi = 0``; returns the recorded curves as plain lists."""
    C = f_values.shape[0]
    generator = torch.Generator().manual_seed(seed)
    variance_generator = torch.Generator().manual_seed(seed + VARIANCE_SEED_OFFSET)
    phi = torch.zeros(C, dtype=DTYPE)
    phis = [phi]
    evaluations = []
    variance_iterations, variance_trace, variance_last = [], [], []
    start = time.perf_counter()
    for t in range(args.iterations + 1):
        if t % args.variance_every == 0:
            draws = gradient_draws(name, estimate, phi, f_values, args.variance_draws,
                                   variance_generator)
            variances = draws.var(0)  # unbiased, per component
            variance_iterations.append(t)
            variance_trace.append(variances.sum().item())
            variance_last.append(variances[-1].item())
        if t == args.iterations:
            break
        g, count = estimate(phi, f_values, generator)
        phi = phi + args.lr * g  # ascent: g estimates d E[f] / d phi
        phis.append(phi)
        evaluations.append(count)
        if progress is not None:
            progress.update(1)
    seconds = time.perf_counter() - start
    p = torch.stack(phis).softmax(-1)  # [iterations + 1, C]
    expected_f = p @ f_values
    return {
        "seed": seed,
        "expected_f": expected_f.tolist(),
        "p_last": p[:, -1].tolist(),
        "variance_iterations": variance_iterations,
        "variance_trace": variance_trace,
        "variance_last_logit": variance_last,
        "mean_evaluations": sum(evaluations) / max(len(evaluations), 1),
        "final_expected_f": expected_f[-1].item(),
        "final_p_last": p[-1, -1].item(),
        "median_variance_trace": statistics.median(variance_trace),
        "median_variance_last_logit": statistics.median(variance_last),
        "seconds": seconds,
    }


def plot(results, optimum, path):
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (name, record) in enumerate(results["estimators"].items()):
        style = {"label": record["label"], "color": colors[k % len(colors)], "linewidth": 1}
        iterations = range(len(record["expected_f"]))
        axes[0].plot(iterations, record["expected_f"], **style)
        axes[1].plot(iterations, record["p_last"], **style)
        if name != "true":  # the exact gradient has zero variance: nothing to draw on a log axis
            # A run that has collapsed onto one category has exactly zero variance there (e.g.
            # REINFORCE); leave a gap instead of a spike to the bottom of the log axis.
            variance = [v if v > 0 else float("nan") for v in record["variance_trace"]]
            axes[2].plot(record["variance_iterations"], variance, marker=".", **style)
    axes[0].axhline(optimum, color="black", linestyle="--", linewidth=1,
                    label=f"optimum {optimum:.4f}")
    axes[0].set_ylabel("E[f(z)]")
    axes[1].set_ylabel("p(z = C-1)")
    axes[2].set_ylabel("gradient variance (trace of covariance)")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    config = results["config"]
    fig.suptitle(f"Univariate toy: C={config['categories']}, R={config['R']}, "
                 f"lr={config['lr']}, seed={config['seed']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(results):
    header = (f"{'estimator':<14}{'final E[f]':>12}{'final p(C-1)':>14}{'evals/iter':>12}"
              f"{'median var (trace)':>20}{'median var (phi_C-1)':>22}")
    print(header)
    print("-" * len(header))
    for record in results["estimators"].values():
        print(f"{record['label']:<14}{record['final_expected_f']:>12.5f}"
              f"{record['final_p_last']:>14.4f}{record['mean_evaluations']:>12.1f}"
              f"{record['median_variance_trace']:>20.3e}"
              f"{record['median_variance_last_logit']:>22.3e}")
    print(f"optimum E[f] = {results['optimum']:.5f}, initial E[f] = {results['initial']:.5f}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--categories", type=int, default=30, help="C")
    parser.add_argument("--R", type=float, default=30.0, help="f(z) = 0.5 + (z+1)/(C R)")
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--lr", type=float, default=1.0, help="gradient-ascent step size")
    parser.add_argument("--seed", type=int, default=5,
                        help="estimator k uses generator seed + k (the paper's seed is 5)")
    parser.add_argument("--out", type=Path, default=Path("examples/out"))
    parser.add_argument("--variance-every", type=int, default=100)
    parser.add_argument("--variance-draws", type=int, default=100)
    args = parser.parse_args(argv)
    if args.categories < 2:
        parser.error(f"--categories must be at least 2, got {args.categories}")
    if args.variance_draws < 2:
        parser.error(f"--variance-draws must be at least 2 for a variance, "
                     f"got {args.variance_draws}")
    if args.variance_every < 1:
        parser.error(f"--variance-every must be positive, got {args.variance_every}")
    return args


def main(argv=None):
    """Run every estimator, write ``toy.png`` and ``toy.json`` to ``--out``, print the table and
    return the results dict (the content of ``toy.json``)."""
    args = parse_args(argv)
    C, R = args.categories, args.R
    f_values = toy_values(C, R)
    estimators = make_estimators(C)
    results = {
        "config": {"categories": C, "R": R, "iterations": args.iterations, "lr": args.lr,
                   "seed": args.seed, "variance_every": args.variance_every,
                   "variance_draws": args.variance_draws},
        "optimum": 0.5 + C / (C * R),
        "initial": f_values.mean().item(),  # 0.5 + (C+1)/(2 C R) under uniform p
        "estimators": {},
    }
    progress = None
    if tqdm is not None:
        progress = tqdm(total=len(estimators) * args.iterations, desc="toy", disable=None)
    start = time.perf_counter()
    for k, (name, (label, estimate)) in enumerate(estimators.items()):
        if progress is not None:
            progress.set_postfix_str(label)
        record = run_estimator(name, estimate, f_values, args, args.seed + k, progress)
        results["estimators"][name] = {"label": label, **record}
    if progress is not None:
        progress.close()
    results["seconds"] = time.perf_counter() - start

    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "toy.json", "w") as handle:
        json.dump(results, handle)
    plot(results, results["optimum"], args.out / "toy.png")
    print_table(results)
    print(f"{results['seconds']:.1f} s; wrote {args.out / 'toy.png'} and {args.out / 'toy.json'}")
    return results


if __name__ == "__main__":
    main()
