"""ARSM_ELBO beside model-side enumeration against TraceEnum_ELBO, at the same number of model
evaluations: gradient variance of the sampled site's logits and ms per step (Pyro).

Two models, each with enumerated sites in the model and one sampled discrete site in the guide:

* ``mixture``: a global sampled regime ``c`` (C categories, shifting every component's location)
  over N per-datum enumerated assignments ``y_n`` (K components);
* ``hmm``: a hidden chain ``x_t`` (S states, enumerated with ``pyro.markov``) whose emissions a
  sampled ``.to_event`` Bernoulli code ``b`` (D bits) shifts.

``TraceEnum_ELBO`` sums the same enumerated sites and gives the sampled site its DiCE score
function (no baseline), with ``num_particles`` (vectorized) equal to ARSM's model evaluations per
step (the real pass plus ``last_num_pseudo_evaluations``). One process, the two ELBOs alternated
in rounds; the variance is the trace of the covariance of the sampled site's logit gradient over
``--draws`` estimates at the initial parameters.

    python benchmarks/enum_bench.py --out benchmarks/results
"""

import argparse
import json
import os
import platform
import statistics
import time
from datetime import date

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import TraceEnum_ELBO

from pyro_arsm import ARSM_ELBO

# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def make_mixture(N=200, C=4, K=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(N, generator=g) + 1.5 * (torch.arange(N) % K).float() - 1.0

    def model(x):
        locs = pyro.param("locs", torch.linspace(-1.0, 1.0, K))
        regime = pyro.param("regime", torch.linspace(-0.5, 0.5, C))
        c = pyro.sample("c", dist.Categorical(logits=torch.zeros(C)))
        with pyro.plate("data", N, dim=-1):
            y = pyro.sample("y", dist.Categorical(logits=torch.zeros(K)),
                            infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(locs[y] + regime[c], 1.0), obs=x)

    def guide(x):
        pyro.sample("c", dist.Categorical(logits=pyro.param("phi", torch.zeros(C))))

    return model, guide, data, "phi", 1


def make_hmm(T=30, S=3, D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(T, generator=g) + (torch.arange(T) % S).float()

    def model(ys):
        trans = pyro.param("trans", torch.full((S, S), 1.0 / S) + 0.5 * torch.eye(S),
                           constraint=dist.constraints.simplex)
        locs = pyro.param("locs", torch.linspace(-1.0, 1.0, S))
        weights = pyro.param("weights", torch.linspace(-0.3, 0.3, D))
        b = pyro.sample("b", dist.Bernoulli(torch.full((D,), 0.5)).to_event(1))
        shift = (b * weights).sum(-1)
        x = 0
        for t in pyro.markov(range(T)):
            x = pyro.sample(f"x_{t}", dist.Categorical(trans[x]),
                            infer={"enumerate": "parallel"})
            pyro.sample(f"y_{t}", dist.Normal(locs[x] + shift, 1.0), obs=ys[t])

    def guide(ys):
        pyro.sample("b", dist.Bernoulli(logits=pyro.param("beta", torch.zeros(D))).to_event(1))

    return model, guide, data, "beta", 0


MODELS = {"mixture": make_mixture, "hmm": make_hmm}


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


def _logit_grad(elbo, model, guide, data, name):
    param = pyro.param(name).unconstrained()
    loss = elbo.differentiable_loss(model, guide, data)
    return torch.autograd.grad(loss, param)[0].reshape(-1)


def _step_ms(elbo, model, guide, data, steps):
    params = [p.unconstrained() for p in pyro.get_param_store().values()]
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = elbo.differentiable_loss(model, guide, data)
        torch.autograd.grad(loss, params, allow_unused=True)
        times.append(1000 * (time.perf_counter() - start))
    return times


def run(name, draws, steps, rounds):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide, data, logits_name, nesting = MODELS[name]()
    model(data)
    guide(data)
    arsm = ARSM_ELBO(max_plate_nesting=nesting)
    _logit_grad(arsm, model, guide, data, logits_name)  # first step: dependencies, checks
    evaluations = 1 + arsm.last_num_pseudo_evaluations
    enum = TraceEnum_ELBO(max_plate_nesting=nesting + 1, num_particles=evaluations,
                          vectorize_particles=True)
    elbos = {"ARSM_ELBO": arsm, f"TraceEnum_ELBO, {evaluations} particles": enum}
    result = {}
    for label, elbo in elbos.items():
        grads = torch.stack([_logit_grad(elbo, model, guide, data, logits_name)
                             for _ in range(draws)])
        result[label] = {"variance": float(grads.var(0).sum()), "ms": [],
                         "mean_grad": grads.mean(0).tolist()}
    for _ in range(rounds):
        for label, elbo in elbos.items():
            result[label]["ms"] += _step_ms(elbo, model, guide, data, steps)
    for r in result.values():
        r["ms_median"] = statistics.median(r["ms"])
    return evaluations, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mixture,hmm")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lines = [f"Pyro, one thread, {platform.machine()} with {os.cpu_count()} CPUs, load average "
             f"{os.getloadavg()[0]:.1f} at the start; {date.today()}; `python "
             f"benchmarks/enum_bench.py --draws {args.draws} --steps {args.steps} --rounds "
             f"{args.rounds}`", "",
             "| model | ELBO | evaluations/step | logit-gradient variance | ms/step (median) "
             "| variance ratio | time ratio |", "|---|---|---|---|---|---|---|"]
    out = {}
    for name in args.models.split(","):
        evaluations, result = run(name, args.draws, args.steps, args.rounds)
        out[name] = {"evaluations": evaluations, **result}
        (arsm_label, arsm), (enum_label, enum) = result.items()
        for label, r in result.items():
            ratio = r["variance"] / enum["variance"]
            time_ratio = r["ms_median"] / enum["ms_median"]
            lines.append(f"| {name} | {label} | {evaluations} | {r['variance']:.4g} "
                         f"| {r['ms_median']:.1f} | {ratio:.3g} | {time_ratio:.2f} |")
        print("\n".join(lines[-2:]), flush=True)
    lines.append(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    table = "\n".join(lines)
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "enum_bench.md"), "w") as handle:
            handle.write(table + "\n")
        with open(os.path.join(args.out, "enum_bench.json"), "w") as handle:
            json.dump(out, handle, indent=1)
    return out


if __name__ == "__main__":
    main()
