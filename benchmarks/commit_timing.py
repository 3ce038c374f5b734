"""ms per training step of the categorical VAE at two commits of ``pyro_arsm`` / ``numpyro_arsm``,
measured side by side: did a refactoring change the speed?

Both commits are checked out as git worktrees; each timing runs in a fresh process whose
``PYTHONPATH`` puts that worktree's packages first (the process prints which file it imported).
The model, data and initial weights are this tree's (``examples/vae_models.py``,
``examples/_vae_data.py``), so only the packages differ. The two commits alternate, round after
round, so that drifts in the machine's load fall on both alike.

Setting: one stochastic layer of 20 x 10 categoricals, encoder D-512-256-200, decoder
200-256-512-D, the training split of ``--dataset`` (``digits``, D = 64, or ``mnist5k``, D = 784,
binarized at 0.5), batch ``--batch``, Adam(1e-3), ``ARSM_ELBO()`` with
its defaults. Pyro: ``SVI.step``. NumPyro: ``jax.jit(svi.update)`` (compiled before timing).

Usage, from the repository root::

    python benchmarks/commit_timing.py --base f1e7950 --head HEAD --rounds 6 --steps 20

Prints a markdown table (median ms/step per commit and backend, head / base) and writes it with
the raw step times to ``--out``.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WARMUP_STEPS = 3


def child(backend, steps, batch, seed, dataset_name):
    """Run in the timing process: ``steps`` timed steps after ``WARMUP_STEPS`` untimed ones;
    prints one JSON line."""
    import numpy as np
    from _examples import vae_data, vae_models  # this tree's model and data

    dataset = vae_data.load_dataset(dataset_name)
    images = (dataset.train > 0.5).astype(np.float32)  # mnist5k's are probabilities
    weights = vae_models.initial_weights(dataset.num_pixels, layers=1, seed=seed)
    rng = np.random.default_rng(seed)
    batches = [images[rng.choice(len(images), batch, replace=False)]
               for _ in range(WARMUP_STEPS + steps)]
    step = (_pyro_step(weights, seed) if backend == "pyro" else
            _numpyro_step(weights, seed, batch, dataset.num_pixels))
    times = []
    for i, x in enumerate(batches):
        start = time.perf_counter()
        step(x)
        if i >= WARMUP_STEPS:
            times.append(1000 * (time.perf_counter() - start))
    package = sys.modules["pyro_arsm" if backend == "pyro" else "numpyro_arsm"]
    print(json.dumps({"ms": times, "package": package.__file__}))


def _pyro_step(weights, seed):
    import pyro
    import torch
    from _examples import vae_models
    from pyro.infer import SVI
    from pyro.optim import Adam

    from pyro_arsm import ARSM_ELBO

    torch.set_num_threads(1)
    pyro.set_rng_seed(seed)
    vae = vae_models.PyroVAE(weights, layers=1)
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), loss=ARSM_ELBO(max_plate_nesting=1))
    return lambda x: svi.step(torch.as_tensor(x))


def _numpyro_step(weights, seed, batch, num_pixels):
    import jax
    import jax.numpy as jnp
    import numpyro.infer
    import optax
    from _examples import vae_models

    from numpyro_arsm import ARSM_ELBO

    model, guide = vae_models.numpyro_vae(weights, layers=1)
    svi = numpyro.infer.SVI(model, guide, optax.adam(1e-3), loss=ARSM_ELBO())
    example = jnp.zeros((batch, num_pixels), jnp.float32)
    state = [svi.init(jax.random.PRNGKey(seed), example)]
    update = jax.jit(svi.update).lower(state[0], example).compile()

    def step(x):
        state[0], loss = update(state[0], jnp.asarray(x))
        loss.block_until_ready()

    return step


def worktree(commit, parent):
    """A detached worktree of ``commit`` under ``parent``; returns its path and full hash."""
    full = subprocess.run(["git", "-C", str(ROOT), "rev-parse", commit], check=True,
                          capture_output=True, text=True).stdout.strip()
    path = Path(parent) / full[:10]
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(path), full],
                   check=True, capture_output=True)
    return path, full


def time_once(tree, backend, args):
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1",
               XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    out = subprocess.run([sys.executable, __file__, "--child", backend, "--steps",
                          str(args.steps), "--batch", str(args.batch), "--seed", str(args.seed),
                          "--dataset", args.dataset],
                         env=env, check=True, capture_output=True, text=True, cwd=tree).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if not result["package"].startswith(str(tree)):
        raise RuntimeError(f"the timing process imported {result['package']}, not {tree}")
    return result["ms"]


def table(results, commits, args):
    lines = [f"Categorical VAE step, {args.dataset}, batch {args.batch}, ARSM_ELBO() defaults, one "
             f"thread; {args.rounds} alternating rounds x {args.steps} steps per commit; "
             f"{platform.machine()} with {os.cpu_count()} CPUs, load average "
             f"{os.getloadavg()[0]:.1f} at the end; {time.strftime('%Y-%m-%d')}", "",
             f"| backend | base {commits['base'][:7]} ms/step | head {commits['head'][:7]} "
             "ms/step | head / base | per-round medians base | per-round medians head |",
             "|---|---|---|---|---|---|"]
    for backend, by_commit in results.items():
        medians = {side: statistics.median(sum(rounds, [])) for side, rounds in by_commit.items()}
        per_round = {side: ", ".join(f"{statistics.median(r):.1f}" for r in rounds)
                     for side, rounds in by_commit.items()}
        lines.append(f"| {backend} | {medians['base']:.1f} | {medians['head']:.1f} | "
                     f"{medians['head'] / medians['base']:.3f} | {per_round['base']} | "
                     f"{per_round['head']} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="f1e7950", help="the earlier commit")
    parser.add_argument("--head", default="HEAD", help="the later commit")
    parser.add_argument("--backends", default="pyro,numpyro")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", choices=["digits", "mnist5k"], default="digits")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument("--child", choices=["pyro", "numpyro"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.steps, args.batch, args.seed, args.dataset)

    backends = args.backends.split(",")
    results = {b: {"base": [], "head": []} for b in backends}
    with tempfile.TemporaryDirectory() as parent:
        trees, commits = {}, {}
        for side in ("base", "head"):
            trees[side], commits[side] = worktree(getattr(args, side), parent)
        try:
            for round_index in range(args.rounds):
                order = ("base", "head") if round_index % 2 == 0 else ("head", "base")
                for backend in backends:
                    for side in order:
                        ms = time_once(trees[side], backend, args)
                        results[backend][side].append(ms)
                        print(f"round {round_index + 1} {backend} {side}: median "
                              f"{statistics.median(ms):.1f} ms", flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(tree)], capture_output=True)
    text = table(results, commits, args)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"commit_timing_{args.dataset}_{commits['base'][:7]}_{commits['head'][:7]}"
    stem.with_suffix(".md").write_text(text + "\n")
    stem.with_suffix(".json").write_text(json.dumps(
        {"commits": commits, "args": {k: str(v) for k, v in vars(args).items()},
         "ms": results}, indent=1))
    print(f"wrote {stem.with_suffix('.md')}")


if __name__ == "__main__":
    main()
