"""Throughput of ARSM_ELBO training under DistributedDataParallel against the number of processes.

Runs ``examples/distributed_vae.py`` (categorical VAE, 20 latents x 10 classes, scikit-learn's
digits, ``ARSM_ELBO`` under DDP) with 1, 2, 4 CPU processes (gloo), each with one torch thread,
at a fixed global batch: every process scores ``batch / processes`` images per step. A step is
forward (``differentiable_loss``, the ARSM pseudo passes included), backward with DDP's gradient
all-reduce, and the Adam update. Reports the median step time over the steps after the warm-up,
pooled over ``--repeats`` runs that alternate between the process counts (so a change in the
load of a shared machine hits all of them), and images/s = global batch / median step.

    python benchmarks/pyro_ddp.py                      # writes benchmarks/results/pyro_ddp.md
    python benchmarks/pyro_ddp.py --processes 1 2 --steps 40 --repeats 1
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyro
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "distributed_vae.py"


def run_once(processes, args, json_path):
    command = [sys.executable, str(EXAMPLE), "--num-processes", str(processes),
               "--threads", "1", "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--batch-size", str(args.batch_size), "--estimator", args.estimator,
               "--print-every", str(10 * args.steps), "--json", json_path]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MASTER_PORT", None)
    subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    with open(json_path) as f:
        result = json.load(f)
    return result["step_times"][args.warmup:], result["cpu_times"][args.warmup:]


def quartiles(values):
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cpu, cores


def load_average():
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def main(args):
    times = {n: [] for n in args.processes}
    cpu = {n: [] for n in args.processes}
    load_before, start = load_average(), time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for n in args.processes:
                steps, cpu_steps = run_once(n, args, os.path.join(tmp, f"{n}_{repeat}.json"))
                times[n].extend(steps)
                cpu[n].extend(cpu_steps)
                print(f"repeat {repeat}, {n} process(es): median step "
                      f"{1e3 * statistics.median(steps):.1f} ms", flush=True)
    load_after, total = load_average(), time.time() - start

    base = statistics.median(times[args.processes[0]])
    rows = ["| processes | images per process and step | median step (ms) | step IQR (ms) "
            f"| images/s | relative to {args.processes[0]} process(es) "
            "| rank-0 CPU time per step (ms) |",
            "|---|---|---|---|---|---|---|"]
    for n, steps in times.items():
        median = statistics.median(steps)
        low, high = quartiles(steps)
        rows.append(f"| {n} | {args.batch_size // n} | {1e3 * median:.1f} "
                    f"| {1e3 * low:.1f} to {1e3 * high:.1f} | {args.batch_size / median:.0f} "
                    f"| {base / median:.2f}x | {1e3 * statistics.median(cpu[n]):.1f} |")
    table = "\n".join(rows)
    print(table)

    cpu_name, cores = machine()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                            capture_output=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "pyro_arsm"], cwd=ROOT, text=True,
                           capture_output=True).stdout.strip()
    if dirty:
        commit += " plus uncommitted changes to pyro_arsm/ in the working tree"
    report = f"""# ARSM_ELBO under DistributedDataParallel: throughput against processes (CPU)

- machine: {cpu_name}, {cores} cores visible to this process, **shared with other jobs** (load
  average 1 / 5 / 15 min: {load_before} before, {load_after} after); Python
  {platform.python_version()}, {platform.system()} {platform.release()}
- torch {torch.__version__}, pyro-ppl {pyro.__version__}; ppl-arsm at {commit}
- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC
- settings: `examples/distributed_vae.py` (categorical VAE, 20 latents x 10 classes, MLPs
  64-128-200 and 200-128-64, digits binarized at > 7), `ARSM_ELBO(estimator="{args.estimator}",
  max_plate_nesting=1)` under `torch.nn.parallel.DistributedDataParallel`, gloo backend, one
  torch thread per process (`OMP_NUM_THREADS=1`), global batch {args.batch_size} split evenly
  over the processes, Adam; {args.steps} steps per run of which the first {args.warmup} are
  warm-up, {args.repeats} run(s) per process count alternating between counts; step = forward
  with the ARSM pseudo passes, backward with the all-reduce, optimizer step; median and
  interquartile range over all timed steps of rank 0; images/s = global batch / median step;
  CPU time: `time.process_time()` of rank 0 over a step (median), the work one process does
- total benchmark time {total:.0f} s

{table}

Processes only run in parallel on free cores. This machine has {cores} cores and other jobs
(the load average above), so a row with more processes than free cores measures time slicing
plus the gloo all-reduce, not what DDP gives with a free core or a GPU per process. The CPU-time
column shows how the work of one process changes as its share of the batch shrinks.
"""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batch-size", type=int, default=200, help="global batch")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--estimator", default="arsm", choices=["arsm", "ars", "ar"])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pyro_ddp.md"))
    main(parser.parse_args())
