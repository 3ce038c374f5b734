"""Where a Pyro ``ARSM_ELBO`` step's time goes, on the benchmark VAE (``vae_bench.py``).

Profiles ``--steps`` SVI steps with :mod:`cProfile` after warm-up and reports the cumulative time
per step of the parts of the step: the real pass (guide and model traced, log-probs), Pyro's
``_compute_elbo``, the ARSM sites (of which the batched pseudo pass and the estimator
arithmetic), the backward pass and the optimizer; the same for ``JitARSM_ELBO`` (compiled call,
backward) and the hand-written step. cProfile adds its own per-call overhead, so the shares
matter more than the absolute times (which ``vae_bench.py`` measures without a profiler).

Usage::

    python benchmarks/profile_pyro_step.py --batch 100 --steps 20 [--device cuda]
"""

import argparse
import cProfile
import os
import pstats

import pyro
import torch
from pyro.infer import SVI
from vae_bench import HandARSM, load_digits_binarized, make_vae

from pyro_arsm import ARSM_ELBO, JitARSM_ELBO

# (label, file fragment, function name): cumulative time of that function
PARTS = {
    "arsm": [
        ("whole step", "svi.py", "step"),
        ("real pass (trace guide + model, log-probs)", "pyro_arsm/elbo.py", "_real_pass"),
        ("Pyro _compute_elbo", "tracegraph_elbo.py", "_compute_elbo"),
        ("ARSM sites (all of _site_grad)", "pyro_arsm/elbo.py", "_site_grad"),
        ("  batched pseudo pass", "pyro_arsm/_pseudo.py", "batched"),
        ("  estimator arithmetic (arsm_grad)", "pyro_arsm/estimators.py", "arsm_grad"),
        ("  pseudo actions", "pyro_arsm/estimators.py", "pseudo_actions"),
        ("backward", "pyro/infer/util.py", "torch_backward"),
        ("optimizer", "pyro/optim/optim.py", "__call__"),
    ],
    "jit-arsm": [
        ("whole step", "svi.py", "step"),
        ("compiled loss and surrogate", "pyro/ops/jit.py", "__call__"),
        ("backward", "torch/_tensor.py", "backward"),
        ("optimizer", "pyro/optim/optim.py", "__call__"),
    ],
    "hand-arsm": [
        ("whole step", "vae_bench.py", "step"),
        ("surrogate (forward, 46 swap rows)", "vae_bench.py", "surrogate"),
        ("backward", "torch/_tensor.py", "backward"),
    ],
}


def cumulative(stats, fragment, name):
    total = 0.0
    for (file, _, func), (_, _, _, cum, _) in stats.stats.items():
        if func == name and fragment in file.replace(os.sep, "/"):
            total = max(total, cum)  # the outermost entry (recursion counted once)
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    data = load_digits_binarized(device)
    x = data[: args.batch]
    rows = []
    for method, parts in PARTS.items():
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = make_vae(method, data.shape[1], device)
        if method == "hand-arsm":
            step = HandARSM(vae, 1e-3).step
        else:
            elbo = (JitARSM_ELBO(max_plate_nesting=1, ignore_jit_warnings=True)
                    if method == "jit-arsm" else ARSM_ELBO(max_plate_nesting=1))
            svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), loss=elbo)
            step = svi.step
        for _ in range(3):
            step(x)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.steps):
            step(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        profiler.disable()
        stats = pstats.Stats(profiler)
        whole = cumulative(stats, *parts[0][1:])
        for label, fragment, name in parts:
            t = cumulative(stats, fragment, name)
            rows.append((method, label, 1000 * t / args.steps, 100 * t / whole if whole else 0))
    print(f"batch {args.batch}, device {args.device}, {torch.get_num_threads()} threads, "
          f"{args.steps} profiled steps (cProfile overhead included)\n")
    print("| method | part | ms/step | share of the step |")
    print("|---|---|---|---|")
    for method, label, ms, share in rows:
        print(f"| {method} | {label} | {ms:.1f} | {share:.0f}% |")


if __name__ == "__main__":
    main()
