"""Categorical-VAE benchmark: ms per step and gradient variance of ARSM_ELBO against its peers.

Setting (the seed paper's nonlinear VAE, Yin et al. 2019, on scikit-learn's 8x8 digits instead of
MNIST): 20 categorical latents x 10 classes, encoder 64-512-256-200 and decoder 200-256-512-64
with leaky ReLU(0.2), uniform prior, Bernoulli likelihood on digits binarized at > 7 (the 1500
training images of the examples' split), batch 200, Adam(lr 1e-3). The VAE and the data are the
examples' (``examples/vae_models.py``, ``examples/_vae_data.py``, loaded by ``_examples.py``).

Methods, all on the same network and minibatches:

* ``arsm``            ARSM_ELBO, all pseudo actions in one batched pass (default)
* ``jit-arsm``        JitARSM_ELBO: ARSM_ELBO compiled with pyro.ops.jit.trace
* ``arsm-sequential`` ARSM_ELBO(vectorize_pseudo=False)
* ``rloo``            ARSM_ELBO(estimator="rloo"): REINFORCE with leave-one-out baselines over
                      46 samples (ARSM's worst-case budget), in the same batched pass
* ``tracegraph``      pyro.infer.TraceGraph_ELBO (score function, no baseline)
* ``tracegraph-avg``  TraceGraph_ELBO with a decaying-average baseline
* ``hand-arsm``       ARSM written directly in torch, one batched decoder call for all
                      C(C-1)/2 + 1 = 46 swap rows: the overhead reference for ARSM_ELBO

Usage::

    python benchmarks/vae_bench.py                 # CPU, writes benchmarks/out/
    python benchmarks/vae_bench.py --device cuda --steps 50
"""

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
from _examples import vae_data, vae_models
from pyro import poutine
from pyro.infer import SVI, TraceGraph_ELBO

from pyro_arsm import ARSM_ELBO, JitARSM_ELBO

K, C = vae_models.NUM_LATENTS, vae_models.NUM_CLASSES


def load_digits_binarized(device):
    """The training split of the examples' binarized digits, ``[1500, 64]`` on ``device``."""
    return torch.as_tensor(vae_data.load_dataset("digits").train, device=device)


def make_vae(method, num_pixels, device, seed=0):
    """The examples' ``PyroVAE`` (one stochastic layer), its networks named ``<method>/...`` in
    Pyro's param store; every method starts from the same weights."""
    weights = vae_models.initial_weights(num_pixels, layers=1, seed=seed)
    return vae_models.PyroVAE(weights, layers=1, device=device, prefix=method + "/")


def guide_of(method, vae):
    """The guide; for ``tracegraph-avg`` with a decaying-average baseline on its site."""
    if method != "tracegraph-avg":
        return vae.guide
    return poutine.infer_config(
        vae.guide, lambda site: {"baseline": {"use_decaying_avg_baseline": True}}
        if site["type"] == "sample" and not site["is_observed"] else {})


class HandARSM:
    """ARSM for this VAE in plain torch: the reference an ARSM_ELBO step is compared with."""

    def __init__(self, vae, lr):
        self.vae = vae
        params = list(vae.encoder.parameters()) + list(vae.decoder.parameters())
        self.optim = torch.optim.Adam(params, lr=lr)
        perms = [list(range(C))]
        for m in range(C):
            for j in range(m + 1, C):
                p = list(range(C))
                p[m], p[j] = j, m
                perms.append(p)
        self.perms = torch.tensor(perms)  # [46, C], row 0 the identity
        index = torch.zeros(C, C, dtype=torch.long)
        for r, p in enumerate(perms[1:], 1):
            m, j = [i for i in range(C) if p[i] != i]
            index[m, j] = index[j, m] = r
        self.index = index

    def surrogate(self, x):
        enc, dec = self.vae.encoder, self.vae.decoder
        B = x.shape[0]
        logits = enc(x).reshape(B, K, C)
        with torch.no_grad():
            log_q = logits.log_softmax(-1)
            eps = torch.empty_like(logits).exponential_()
            log_pi = eps.log() - eps.sum(-1, keepdim=True).log()
            swapped = log_pi[..., self.perms.to(x.device)]  # [B, K, 46, C]
            actions = torch.argmin(swapped - logits.unsqueeze(-2), -1).permute(2, 0, 1)  # [46,B,K]
            z = nn.functional.one_hot(actions, C).float()  # [46, B, K, C]
            x_logits = dec(z.reshape(z.shape[:-2] + (K * C,)))
            log_lik = dist.Bernoulli(logits=x_logits).log_prob(x).sum(-1)  # [46, B]
            own = (z * (log_q - np.log(C))).sum(-1)  # log q(z_k) - log p(z_k): [46, B, K]
            F = log_lik.unsqueeze(-1) - own  # ELBO per element [46, B, K]
            table = F[self.index.to(x.device)]  # [C(m), C(j), B, K]
            table = table - table.mean(0, keepdim=True)
            g = torch.einsum("mjbk,bkj->bkm", table, 1.0 / C - log_pi.exp())
        z_true = nn.functional.one_hot(actions[0], C).float()
        x_logits = dec(z_true.reshape(B, K * C))
        elbo = dist.Bernoulli(logits=x_logits).log_prob(x).sum()
        return -(elbo + (g * logits).sum())

    def step(self, x):
        self.optim.zero_grad()
        self.surrogate(x).backward()
        self.optim.step()


def make_step(method, vae, lr):
    if method == "hand-arsm":
        return HandARSM(vae, lr).step, None
    if method == "arsm":
        loss = ARSM_ELBO(max_plate_nesting=1)
    elif method == "jit-arsm":
        loss = JitARSM_ELBO(max_plate_nesting=1, ignore_jit_warnings=True)
    elif method == "arsm-sequential":
        loss = ARSM_ELBO(max_plate_nesting=1, vectorize_pseudo=False)
    elif method == "rloo":
        loss = ARSM_ELBO(max_plate_nesting=1, estimator="rloo")
    else:
        loss = TraceGraph_ELBO(max_plate_nesting=1)
    svi = SVI(vae.model, guide_of(method, vae), pyro.optim.Adam({"lr": lr}), loss=loss)
    return svi.step, loss  # tensors only through *args (JitARSM_ELBO compiles them)


def encoder_grad(method, vae, x, loss):
    """One gradient estimate of the loss w.r.t. the encoder parameters (flattened)."""
    params = list(vae.encoder.parameters())
    for p in params:
        p.grad = None
    if method == "hand-arsm":
        HandARSM(vae, 0.0).surrogate(x).backward()
    else:
        loss.loss_and_grads(vae.model, guide_of(method, vae), x)
        # pyro.module registered the encoder's params in the store: same tensors
    return torch.cat([p.grad.reshape(-1) for p in params]).clone()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variance-draws", type=int, default=30)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default="hand-arsm,arsm,jit-arsm,arsm-sequential,rloo,"
                                             "tracegraph,tracegraph-avg")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    device = torch.device(args.device)
    data = load_digits_binarized(device)
    gen = torch.Generator().manual_seed(0)
    batches = [data[torch.randperm(len(data), generator=gen)[: args.batch].to(device)]
               for _ in range(args.steps + args.warmup)]
    methods = args.methods.split(",")

    pyro.clear_param_store()
    steps, losses, variances = {}, {}, {}
    for method in methods:
        pyro.set_rng_seed(0)
        vae = make_vae(method, data.shape[1], device)
        steps[method], losses[method] = make_step(method, vae, args.lr)
        if method != "hand-arsm":
            # create the params in the store before reading gradients
            losses[method].loss(vae.model, guide_of(method, vae), batches[0])
        # variance at initialization, on one fixed minibatch
        grads = torch.stack([encoder_grad(method, vae, batches[0], losses[method])
                             for _ in range(args.variance_draws)])
        variances[method] = grads.var(0).sum().item()
        print(f"{method:16s} encoder gradient variance {variances[method]:.4g}", flush=True)

    # Timing: methods interleaved step by step, so that all see the same machine load.
    times = {method: [] for method in methods}
    for i, x in enumerate(batches):
        for method in methods:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            steps[method](x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times[method].append(1000 * (time.perf_counter() - t0))
    results = {}
    for method in methods:
        results[method] = {
            "ms_per_step_median": statistics.median(times[method]),
            "ms_per_step_all": times[method],
            "encoder_grad_variance": variances[method],
            "pseudo_evaluations_last_step": getattr(losses[method],
                                                    "last_num_pseudo_evaluations", None),
        }
        print(f"{method:16s} {results[method]['ms_per_step_median']:9.1f} ms/step", flush=True)

    ref = results.get("hand-arsm", {}).get("ms_per_step_median")
    tg = results.get("tracegraph", {}).get("encoder_grad_variance")
    lines = [
        f"Categorical VAE {K}x{C}, digits 8x8 binarized, batch {args.batch}, "
        f"device {args.device} ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads), torch {torch.__version__}, pyro {pyro.__version__}",
        "",
        "| method | decoder evaluations/step | ms/step (median) | × hand-written ARSM "
        "| encoder grad variance | × TraceGraph |",
        "|---|---|---|---|---|---|",
    ]
    for method, r in results.items():
        t = r["ms_per_step_median"]
        v = r["encoder_grad_variance"]
        pseudo = r["pseudo_evaluations_last_step"]
        evaluations = (pseudo + 1 if pseudo is not None
                       else 46 if method == "hand-arsm" else 1)
        lines.append(
            f"| {method} | {evaluations} | {t:.1f} | {t / ref:.2f} | {v:.4g} | {v / tg:.3g} |"
            if ref and tg else f"| {method} | {evaluations} | {t:.1f} | | {v:.4g} | |"
        )
    table = "\n".join(lines)
    print("\n" + table)
    with open(os.path.join(args.out, "vae_bench.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "vae_bench.json"), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        names = list(results)
        axes[0].bar(names, [results[n]["ms_per_step_median"] for n in names])
        axes[0].set_ylabel("ms per step (median)")
        axes[1].bar(names, [results[n]["encoder_grad_variance"] for n in names])
        axes[1].set_yscale("log")
        axes[1].set_ylabel("encoder gradient variance (trace)")
        for ax in axes:
            ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "vae_bench.png"), dpi=120)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
