"""How the step cost of each estimator grows with the number of categories C and data points N.

A 1-D Gaussian mixture with N points and C components: the guide has local assignment logits
``[N, C]`` (one plated ``Categorical`` site ``z`` in ``plate("data", N)``), the model has the
component locations ``locs`` as a param. For each backend (Pyro, NumPyro) and estimator
(``ARSM_ELBO`` with ``estimator="arsm"``, ``"ars"``, ``"rloo"`` with ``num_rloo_samples=8``,
``"local"``, and the package's ``TraceGraph_ELBO``) it measures

* ms per step: Pyro ``elbo.loss_and_grads(model, guide, data)`` (``max_plate_nesting=1``), median
  of 5 after one warm-up step; NumPyro a jitted ``SVI.update`` (``optax.adam``), median of 5 after
  compilation (the compile seconds are reported separately);
* peak memory: each (backend, estimator, C, N) cell runs in a fresh subprocess (``--cell``) that
  reports ``ru_maxrss`` at its end, so the peaks are independent of each other;
* Pyro's ``elbo.last_num_pseudo_evaluations`` (model evaluations in pseudo passes per step).

Everything runs on one thread. A curve (backend, estimator) is cut short ("skipped") once a
step takes longer than ``--max-step-s`` or a cell longer than ``--cell-timeout``.

Usage::

    python benchmarks/scale.py                       # both backends, C = 2..256 at N = 500,
                                                     # N = 100, 500, 2000 at C = 32
    python benchmarks/scale.py --backend pyro --estimators arsm,rloo
    python benchmarks/scale.py --quick               # smoke run, a few seconds per cell

Writes ``benchmarks/results/scale.md`` (the printed tables), ``scale.json`` (all cells) and
``scale.png`` (log-log ms/step against C and against N) unless ``--out`` says otherwise.
"""

import os

# one thread, before torch / jax are imported (also inherited by the --cell subprocesses)
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                           " intra_op_parallelism_threads=1").strip()
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

ESTIMATORS = ("arsm", "ars", "rloo", "local", "tracegraph")
DEFAULT_C = (2, 4, 8, 16, 32, 64, 128, 256)
DEFAULT_N = (100, 500, 2000)
QUICK_C = (2, 4, 8)
QUICK_N = (50, 100)
NUM_REPEATS = 5


def _label(estimator, rloo_samples):
    return f"rloo({rloo_samples})" if estimator == "rloo" else estimator


def _max_rss_mb():
    """Peak RSS of this process in MB. Linux keeps ``ru_maxrss`` across ``exec``, so a fresh
    subprocess would report at least its parent's RSS at fork time; ``VmHWM`` (the peak of this
    process's own address space) does not have that floor. ``ru_maxrss`` where that is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _rss_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _reset_peak():
    """Resets ``VmHWM`` to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _data(n, seed=0):
    """N points from four well-separated unit-variance clusters (numpy, shared by both)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centers = np.array([-6.0, -2.0, 2.0, 6.0])
    return (centers[rng.integers(0, 4, n)] + rng.standard_normal(n)).astype(np.float32)


def _init_logits(n, c, seed=1):
    import numpy as np

    return (0.1 * np.random.default_rng(seed).standard_normal((n, c))).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# One cell, in its own process
# ---------------------------------------------------------------------------------------------


def _time_steps(step, max_step_s, budget_s, start):
    """Median ms of up to NUM_REPEATS calls of ``step``, stopping early past the budgets."""
    times = []
    for _ in range(NUM_REPEATS):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        if times[-1] > max_step_s or time.perf_counter() - start > budget_s:
            break
    return 1000.0 * statistics.median(times), [round(1000.0 * t, 4) for t in times]


def _cell_pyro(estimator, c, n, rloo_samples, max_step_s, budget_s, start):
    import torch

    torch.set_num_threads(1)
    import pyro
    import pyro.distributions as dist
    from pyro.infer import TraceGraph_ELBO

    from pyro_arsm import ARSM_ELBO

    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    data = torch.from_numpy(_data(n))
    init_logits = torch.from_numpy(_init_logits(n, c))

    def model(data):
        locs = pyro.param("locs", torch.linspace(-1.0, 1.0, c))
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(c)))
            pyro.sample("obs", dist.Normal(locs[z], 1.0), obs=data)

    def guide(data):
        logits = pyro.param("assignment_logits", init_logits.clone())
        with pyro.plate("data", n):
            pyro.sample("z", dist.Categorical(logits=logits))

    if estimator == "tracegraph":
        elbo = TraceGraph_ELBO(max_plate_nesting=1)
    else:
        kwargs = {"num_rloo_samples": rloo_samples} if estimator == "rloo" else {}
        elbo = ARSM_ELBO(max_plate_nesting=1, estimator=estimator, **kwargs)

    def step():
        elbo.loss_and_grads(model, guide, data)
        for p in pyro.get_param_store().values():  # no gradient accumulation across steps
            p.grad = None

    base_mb, setup_peak_mb = _rss_mb(), _max_rss_mb()
    reset = _reset_peak()
    t0 = time.perf_counter()
    step()  # warm-up (also the provenance tracking and batched-pass check of a new structure)
    warmup_s = time.perf_counter() - t0
    result = {"warmup_s": warmup_s, "base_mb": base_mb, "setup_peak_mb": setup_peak_mb,
              "peak_reset": reset}
    if warmup_s > max_step_s:
        result.update(ms=1000.0 * warmup_s, repeats=0)
    else:
        result["ms"], result["times_ms"] = _time_steps(step, max_step_s, budget_s, start)
        result["repeats"] = len(result["times_ms"])
    result["pseudo_evaluations"] = getattr(elbo, "last_num_pseudo_evaluations", None)
    return result


def _cell_numpyro(estimator, c, n, rloo_samples, max_step_s, budget_s, start):
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    import optax
    from numpyro.infer import SVI, TraceGraph_ELBO

    from numpyro_arsm import ARSM_ELBO

    data = jnp.asarray(_data(n))
    init_logits = jnp.asarray(_init_logits(n, c))

    def model(data):
        locs = numpyro.param("locs", jnp.linspace(-1.0, 1.0, c))
        with numpyro.plate("data", n):
            z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros(c)))
            numpyro.sample("obs", dist.Normal(locs[z], 1.0), obs=data)

    def guide(data):
        logits = numpyro.param("assignment_logits", init_logits)
        with numpyro.plate("data", n):
            numpyro.sample("z", dist.Categorical(logits=logits))

    if estimator == "tracegraph":
        loss = TraceGraph_ELBO()
    else:
        kwargs = {"num_rloo_samples": rloo_samples} if estimator == "rloo" else {}
        try:
            loss = ARSM_ELBO(estimator=estimator, **kwargs)
        except (ValueError, TypeError) as e:  # e.g. an estimator this version does not have
            return {"na": f"{type(e).__name__}: {e}"}

    svi = SVI(model, guide, optax.adam(1e-2), loss=loss)
    state = svi.init(jax.random.PRNGKey(0), data)
    base_mb, setup_peak_mb = _rss_mb(), _max_rss_mb()
    reset = _reset_peak()
    t0 = time.perf_counter()
    update = jax.jit(svi.update).lower(state, data).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def step():
        holder["state"], value = update(holder["state"], data)
        jax.block_until_ready((holder["state"], value))

    t0 = time.perf_counter()
    step()  # warm-up
    warmup_s = time.perf_counter() - t0
    result = {"compile_s": compile_s, "warmup_s": warmup_s, "base_mb": base_mb,
              "setup_peak_mb": setup_peak_mb, "peak_reset": reset}
    if warmup_s > max_step_s:
        result.update(ms=1000.0 * warmup_s, repeats=0)
    else:
        result["ms"], result["times_ms"] = _time_steps(step, max_step_s, budget_s, start)
        result["repeats"] = len(result["times_ms"])
    return result


def run_cell(args):
    start = time.perf_counter()
    backend, estimator, c, n = args.cell
    c, n = int(c), int(n)
    caught = []
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fn = _cell_pyro if backend == "pyro" else _cell_numpyro
        result = fn(estimator, c, n, args.rloo_samples, args.max_step_s,
                    0.8 * args.cell_timeout, start)
        caught = sorted({str(x.message)[:300] for x in w})
    peak = _max_rss_mb()
    if result.get("peak_reset"):  # the peak since the reset, or before it if that was higher
        peak = max(peak, result["setup_peak_mb"])
    result.update(backend=backend, estimator=estimator, C=c, N=n, peak_mb=peak,
                  step_peak_mb=_max_rss_mb() if result.get("peak_reset") else None,
                  ru_maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                  cell_s=time.perf_counter() - start, warnings=caught)
    print("CELL " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


def _spawn(backend, estimator, c, n, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--cell", backend, estimator, str(c), str(n),
           "--rloo-samples", str(args.rloo_samples), "--max-step-s", str(args.max_step_s),
           "--cell-timeout", str(args.cell_timeout)]
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env, cwd=ROOT)
        killed = None
        while proc.poll() is None:  # a watchdog on time and memory (the machine is shared)
            time.sleep(0.1)
            if time.perf_counter() - t0 > args.cell_timeout:
                killed = f"cell over {args.cell_timeout:g} s"
            elif _child_rss_mb(proc.pid) > args.max_mb:
                killed = f"cell over {args.max_mb:g} MB"
            if killed:
                proc.kill()
                proc.wait()
                return {"skipped": killed, "cell_s": time.perf_counter() - t0}
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = [ln for ln in stdout.splitlines() if ln.startswith("CELL ")]
    if proc.returncode != 0 or not lines:
        tail = (stderr or stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail), "cell_s": time.perf_counter() - t0}
    return json.loads(lines[-1][5:])


def _child_rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return 0.0


def _curve(backend, estimator, points, args, done):
    """Cells along one curve [(C, N), ...], in order of cost; later ones skipped past a limit."""
    results, stop, na = {}, None, None
    label = _label(estimator, args.rloo_samples)
    for c, n in points:
        key = (backend, estimator, c, n)
        if stop is not None:
            res = {"skipped": stop}
        elif na is not None:  # this backend does not have the estimator: no more processes
            res = done[key] = {"na": na}
        elif key in done:
            res = done[key]
        else:
            res = _spawn(backend, estimator, c, n, args)
            done[key] = res
        results[(c, n)] = res
        print(f"  {backend:7s} {label:10s} C={c:<4d} N={n:<5d} {_fmt_cell(res, verbose=True)}",
              flush=True)
        for msg in res.get("warnings", []):
            print(f"      warning: {msg}", flush=True)
        na = res.get("na", na)
        if stop is None and "skipped" in res:
            stop = "after a slower cell"
        elif stop is None and "ms" in res and res["ms"] > 1000.0 * args.max_step_s:
            stop = f"after a step over {args.max_step_s:g} s"
    return results


def _fmt_ms(ms):
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _fmt_cell(res, verbose=False):
    if res is None:
        return ""
    if "na" in res:
        return "n/a" + (f" ({res['na'][:120]})" if verbose else "")
    if "skipped" in res:
        return "skipped" + (f" ({res['skipped']})" if verbose else "")
    if "error" in res:
        return "error" + (f" ({res['error'][:300]})" if verbose else "")
    s = f"{_fmt_ms(res['ms'])} ms / {res['peak_mb']:.0f} MB"
    if verbose:
        s += f" (fastest {_fmt_ms(_min_ms(res))} ms)"
    if res.get("repeats", NUM_REPEATS) < NUM_REPEATS:
        s += f" ({res['repeats']} timed)" if res.get("repeats") else " (warm-up only)"
    if verbose:
        if res.get("pseudo_evaluations") is not None:
            s += f", {res['pseudo_evaluations']} evals"
        if "compile_s" in res:
            s += f", compile {res['compile_s']:.2f} s"
        s += f", RSS before the steps {res['base_mb']:.0f} MB"
        if res.get("step_peak_mb") is not None:
            s += f", peak in the steps {res['step_peak_mb']:.0f} MB"
        s += f", cell {res['cell_s']:.1f} s"
    return s


def _table(rows, columns, col_name, cell_fn):
    out = ["| backend | estimator | " + " | ".join(f"{col_name}={v}" for v in columns) + " |",
           "|---|---|" + "---|" * len(columns)]
    for (backend, label), cells in rows:
        out.append(f"| {backend} | {label} | " + " | ".join(cell_fn(cells.get(v)) for v in columns)
                   + " |")
    return "\n".join(out)


def _min_ms(res):
    return min(res.get("times_ms") or [res["ms"]])


def _slope(curve, lo, hi, stat=lambda r: r["ms"]):
    pts = [(math.log(c), math.log(stat(r))) for (c, _), r in curve.items()
           if lo <= c <= hi and r and "ms" in r]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    return (sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts),
            min(math.exp(x) for x, _ in pts), max(math.exp(x) for x, _ in pts))


def _header(args):
    from importlib.metadata import PackageNotFoundError, version

    def ver(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=ROOT).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=ROOT).stdout.strip()
        commit += " (+ uncommitted changes)" if dirty else ""
    except OSError:
        commit = ""
    commit = args.source_note or commit or f"{ROOT} (not a git checkout)"
    return [
        f"- machine: {cpu}, {os.cpu_count()} cores visible (shared), run on 1 thread; "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}",
        f"- torch {ver('torch')}, pyro-ppl {ver('pyro-ppl')}, jax {ver('jax')} (jaxlib "
        f"{ver('jaxlib')}), numpyro {ver('numpyro')}, optax {ver('optax')}; ppl-arsm at {commit}",
        f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- settings: 1-D Gaussian mixture, guide logits [N, C] on one plated Categorical site; "
        f"C in {list(args.C)} at N={args.n_fixed}; N in {list(args.N)} at C={args.c_fixed}; "
        f"estimators {', '.join(_label(e, args.rloo_samples) for e in args.estimators)}; "
        f"median of {NUM_REPEATS} steps after 1 warm-up (NumPyro: after compile); "
        f"a curve stops after a step > {args.max_step_s:g} s or a cell > {args.cell_timeout:g} s "
        f"or {args.max_mb:g} MB",
        "- Pyro: ms per `elbo.loss_and_grads(model, guide, data)` (`max_plate_nesting=1`); "
        "NumPyro: ms per `jax.jit(svi.update)` call (`optax.adam`); "
        "MB: peak RSS (`VmHWM`, as `ru_maxrss` but without the parent's RSS that Linux carries "
        "over `exec`) of a fresh process running one cell, imports and setup included",
    ]


def _plot(path, rows_c, rows_n, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    colors = {e: f"C{i}" for i, e in enumerate(ESTIMATORS)}
    styles = {"pyro": ("-", "o"), "numpyro": ("--", "s")}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, rows, axis, fixed in ((axes[0], rows_c, 0, f"N = {args.n_fixed}"),
                                  (axes[1], rows_n, 1, f"C = {args.c_fixed}")):
        for (backend, estimator), curve in rows:
            pts = sorted((k[axis], r["ms"]) for k, r in curve.items() if r and "ms" in r)
            if not pts:
                continue
            ls, marker = styles[backend]
            ax.plot(*zip(*pts, strict=True), ls=ls, marker=marker, color=colors[estimator], ms=4,
                    label=f"{backend} {_label(estimator, args.rloo_samples)}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ticks = sorted(args.C if axis == 0 else args.N)
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("categories C" if axis == 0 else "data points N")
        ax.set_ylabel("ms per step (1 thread)")
        ax.set_title(f"step time against {'C' if axis == 0 else 'N'} ({fixed})")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("pyro", "numpyro", "both"), default="both")
    parser.add_argument("--C", default=None, help="comma-separated C values at fixed N "
                        f"(default {','.join(map(str, DEFAULT_C))})")
    parser.add_argument("--N", default=None, help="comma-separated N values at fixed C "
                        f"(default {','.join(map(str, DEFAULT_N))})")
    parser.add_argument("--n-fixed", type=int, default=None, help="N of the C sweep (500)")
    parser.add_argument("--c-fixed", type=int, default=None, help="C of the N sweep (32)")
    parser.add_argument("--estimators", default=",".join(ESTIMATORS),
                        help=f"comma-separated subset of {','.join(ESTIMATORS)}")
    parser.add_argument("--rloo-samples", type=int, default=8)
    parser.add_argument("--max-step-s", type=float, default=20.0,
                        help="stop a curve after a step slower than this")
    parser.add_argument("--cell-timeout", type=float, default=120.0,
                        help="kill a cell (and stop its curve) after this many seconds")
    parser.add_argument("--max-mb", type=float, default=6000.0,
                        help="kill a cell (and stop its curve) whose RSS passes this many MB")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--out", default=os.path.join(HERE, "results"),
                        help="folder for scale.md, scale.json, scale.png ('' to write nothing)")
    parser.add_argument("--source-note", default=None,
                        help="what ppl-arsm source was measured, for the header (default: the "
                        "git commit of the checkout this script is in)")
    parser.add_argument("--cell", nargs=4, metavar=("BACKEND", "ESTIMATOR", "C", "N"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cell:
        return run_cell(args)

    args.C = tuple(int(v) for v in args.C.split(",")) if args.C else (
        QUICK_C if args.quick else DEFAULT_C)
    args.N = tuple(int(v) for v in args.N.split(",")) if args.N else (
        QUICK_N if args.quick else DEFAULT_N)
    args.n_fixed = args.n_fixed or (100 if args.quick else 500)
    args.c_fixed = args.c_fixed or (4 if args.quick else 32)
    args.estimators = tuple(e.strip() for e in args.estimators.split(",") if e.strip())
    bad = set(args.estimators) - set(ESTIMATORS)
    if bad:
        parser.error(f"unknown estimators {sorted(bad)}; choose from {ESTIMATORS}")
    backends = ("pyro", "numpyro") if args.backend == "both" else (args.backend,)

    header = _header(args)
    print("\n".join(header), flush=True)
    done, rows_c, rows_n = {}, [], []
    t_start = time.perf_counter()
    for backend in backends:
        for estimator in args.estimators:
            print(f"{backend} {_label(estimator, args.rloo_samples)}:", flush=True)
            rows_c.append(((backend, estimator), _curve(
                backend, estimator, [(c, args.n_fixed) for c in sorted(args.C)], args, done)))
            rows_n.append(((backend, estimator), _curve(
                backend, estimator, [(args.c_fixed, n) for n in sorted(args.N)], args, done)))

    def by(rows, axis):
        return [((b, _label(e, args.rloo_samples)), {k[axis]: r for k, r in curve.items()})
                for (b, e), curve in rows]

    lines = ["# Step time and peak memory against C and N", ""] + header + [
        f"- total benchmark time {time.perf_counter() - t_start:.0f} s", "",
        f"## ms per step / peak RSS MB against C (N = {args.n_fixed})", "",
        _table(by(rows_c, 0), sorted(args.C), "C", _fmt_cell), "",
        f"## ms per step / peak RSS MB against N (C = {args.c_fixed})", "",
        _table(by(rows_n, 1), sorted(args.N), "N", _fmt_cell), ""]
    if "pyro" in backends:
        lines += [f"## Pyro: model evaluations in pseudo passes per step "
                  f"(`last_num_pseudo_evaluations`, N = {args.n_fixed})", "",
                  _table([r for r in by(rows_c, 0) if r[0][0] == "pyro"], sorted(args.C), "C",
                         lambda r: str(r.get("pseudo_evaluations", ""))
                         if r and "ms" in r else ""), ""]
    if "numpyro" in backends:
        lines += [f"## NumPyro: compile seconds (N = {args.n_fixed})", "",
                  _table([r for r in by(rows_c, 0) if r[0][0] == "numpyro"], sorted(args.C), "C",
                         lambda r: f"{r['compile_s']:.2f}" if r and "compile_s" in r
                         else "n/a" if r and "na" in r else ""), ""]
    lines += ["## Log-log slope of ms/step against C (least squares over the C range shown)", "",
              "Of the medians; of the fastest of the timed steps in parentheses (less sensitive to "
              "other jobs on the machine). 1 is linear, 2 quadratic.", ""]
    hi_c = max(args.C)
    lo_c = 16 if any(16 <= c < hi_c for c in args.C) else min(args.C)
    for (backend, estimator), curve in rows_c:
        fit, fit_min = _slope(curve, lo_c, hi_c), _slope(curve, lo_c, hi_c, _min_ms)
        if fit:
            lines.append(f"- {backend} {_label(estimator, args.rloo_samples)}: slope "
                         f"{fit[0]:.2f} ({fit_min[0]:.2f}), C = {fit[1]:.0f}..{fit[2]:.0f}")
    ratio_c = 128 if 128 in args.C else max(args.C)
    ratios = []
    for backend in backends:
        curves = {e: cv for (b, e), cv in rows_c if b == backend}
        a = curves.get("arsm", {}).get((ratio_c, args.n_fixed))
        r = curves.get("rloo", {}).get((ratio_c, args.n_fixed))
        if a and r and "ms" in a and "ms" in r:
            ratios.append(f"- {backend}: ARSM / RLOO({args.rloo_samples}) step at C = {ratio_c}, "
                          f"N = {args.n_fixed}: {a['ms'] / r['ms']:.1f} (medians; fastest "
                          f"steps: {_min_ms(a) / _min_ms(r):.1f})")
    if ratios:
        lines += ["", "## ARSM step relative to RLOO", ""] + ratios
    text = "\n".join(lines) + "\n"
    print("\n" + text, flush=True)

    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "scale.md"), "w") as f:
            f.write(text)
        with open(os.path.join(args.out, "scale.json"), "w") as f:
            json.dump({"header": header, "cells": [
                dict(r, backend=k[0], estimator=k[1], C=k[2], N=k[3]) for k, r in done.items()]},
                f, indent=1)
        _plot(os.path.join(args.out, "scale.png"), rows_c, rows_n, args)
        print(f"wrote {args.out}/scale.md, scale.json, scale.png", flush=True)


if __name__ == "__main__":
    main()
