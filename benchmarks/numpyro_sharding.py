"""Throughput of NumPyro ``ARSM_ELBO`` with the batch sharded over 1, 2, 4 host devices.

The model is the categorical VAE of ``examples/numpyro_sharded_vae.py`` (20 latents x 10 classes,
MLPs 64-128-200, 45 whole-site swaps per step) on scikit-learn's digits. For each device count a
fresh process (``XLA_FLAGS=--xla_force_host_platform_device_count=N``, ``JAX_PLATFORMS=cpu``)
shards a fixed global batch along the ``data`` plate over a 1-D mesh, replicates the parameters,
and times ``jax.jit(svi.update)``: compile, ``--warmup`` steps, then the median of ``--steps``
steps (each waited for with ``block_until_ready``). Prints a markdown table and writes it, with
the machine and settings, to ``benchmarks/results/numpyro_sharding.md``.

    python benchmarks/numpyro_sharding.py
    python benchmarks/numpyro_sharding.py --devices 1 2 4 8 --batch-sizes 120 480 --steps 20
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "numpyro_sharding.md"


def load_example():
    path = ROOT / "examples" / "numpyro_sharded_vae.py"
    spec = importlib.util.spec_from_file_location("numpyro_sharded_vae", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def worker(num_devices, batch_size, warmup, steps):
    """One cell, in a process whose jax sees ``num_devices`` host devices: prints JSON."""
    import jax
    import numpy as np
    import optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from numpyro.infer import SVI

    from numpyro_arsm import ARSM_ELBO

    example = load_example()
    assert jax.device_count() == num_devices, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    split = NamedSharding(mesh, PartitionSpec("batch"))
    train, _ = example.load_data()
    model, guide = example.make_model_guide(train.shape[1], seed=0)
    svi = SVI(model, guide, optax.adam(1e-3), loss=ARSM_ELBO())
    rng = np.random.RandomState(0)
    batches = [jax.device_put(train[rng.choice(len(train), batch_size, replace=False)], split)
               for _ in range(4)]
    state = jax.device_put(svi.init(jax.random.PRNGKey(0), batches[0]),
                           NamedSharding(mesh, PartitionSpec()))
    update = jax.jit(svi.update)
    start = time.perf_counter()
    compiled = update.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - start
    for i in range(warmup):
        state, loss = compiled(state, batches[i % len(batches)])
    jax.block_until_ready(state)
    times = []
    for i in range(steps):
        start = time.perf_counter()
        state, loss = compiled(state, batches[i % len(batches)])
        jax.block_until_ready((state, loss))
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    print(json.dumps({
        "devices": num_devices, "batch": batch_size, "compile_s": compile_s,
        "step_ms": 1e3 * step_s, "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times),
        "examples_per_s": batch_size / step_s, "loss": float(loss) / batch_size,
        "data_devices": len(batches[0].sharding.device_set),
        "versions": {"jax": jax.__version__, "numpyro": __import__("numpyro").__version__},
    }))


def run_cell(num_devices, batch_size, args):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}")
    cmd = [sys.executable, __file__, "--worker", str(num_devices), str(batch_size),
           "--warmup", str(args.warmup), "--steps", str(args.steps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return names[0]
    except (OSError, IndexError):
        return platform.processor() or platform.machine()


def table(rows):
    lines = ["| batch | devices | per device | compile s | ms/step (median; min-max) | examples/s "
             "| vs 1 device |", "|---|---|---|---|---|---|---|"]
    base = {r["batch"]: r["examples_per_s"] for r in rows if r["devices"] == 1}
    for r in rows:
        ratio = r["examples_per_s"] / base[r["batch"]] if r["batch"] in base else float("nan")
        lines.append(
            f"| {r['batch']} | {r['devices']} | {r['batch'] // r['devices']} "
            f"| {r['compile_s']:.1f} | {r['step_ms']:.1f} ({r['min_ms']:.1f}-{r['max_ms']:.1f}) "
            f"| {r['examples_per_s']:.0f} | {ratio:.2f}x |")
    return "\n".join(lines)


def main(args):
    rows, started = [], time.time()
    load_before = os.getloadavg()
    for batch_size in args.batch_sizes:
        for n in args.devices:
            if batch_size % n:
                continue
            rows.append(run_cell(n, batch_size, args))
            print(f"batch {batch_size}, {n} device(s): {rows[-1]['step_ms']:.1f} ms/step, "
                  f"{rows[-1]['examples_per_s']:.0f} examples/s", flush=True)
    load_after = os.getloadavg()
    text = table(rows)
    print(text)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = rows[0]["versions"]
    header = [
        "# NumPyro ARSM_ELBO: throughput against the number of host devices", "",
        f"- machine: {cpu_name()}, {cores} CPU cores visible, "
        "**shared with other jobs** (load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after the run); Python "
        f"{platform.python_version()}, jax {versions['jax']}, numpyro {versions['numpyro']}; "
        f"ppl-arsm at {commit}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"total {time.time() - started:.0f} s",
        "- settings: `python benchmarks/numpyro_sharding.py "
        f"--devices {' '.join(map(str, args.devices))} "
        f"--batch-sizes {' '.join(map(str, args.batch_sizes))} --warmup {args.warmup} "
        f"--steps {args.steps}`; categorical VAE of `examples/numpyro_sharded_vae.py` "
        "(20 x 10 latents, 45 whole-site swaps per step), `ARSM_ELBO()`, `optax.adam`; global "
        "batch sharded along the plate (`NamedSharding(mesh, P('batch'))`), state replicated; "
        "time of one compiled `jax.jit(svi.update)` step, data already on the devices",
        f"- host devices are one process's threads on the same {cores} cores (a single device "
        "already uses them for its larger ops): the table measures what partitioning the step "
        "costs or gains here, not how it scales on real accelerators.",
        "",
    ]
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text("\n".join(header) + "\n" + text + "\n")
    print(f"wrote {RESULT.relative_to(ROOT)}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[120, 480])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--worker", type=int, nargs=2, metavar=("DEVICES", "BATCH"),
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    if args.worker:
        worker(*args.worker, args.warmup, args.steps)
    else:
        main(args)
