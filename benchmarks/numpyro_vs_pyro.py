"""NumPyro ARSM_ELBO (jitted ``SVI.update``) against Pyro ARSM_ELBO (``SVI.step``) on the
categorical VAE of ``vae_bench.py``: the examples' two definitions of one network
(``examples/vae_models.py``: 20 x 10 latents, 64-512-256-200 encoder, 200-256-512-64 decoder,
leaky ReLU 0.2), same initial weights, same minibatches (digits, batch 200), Adam(1e-3). Steps
are interleaved, so both see the same machine load; the NumPyro step's first call (tracing + XLA
compilation) is reported separately.

Usage::

    python benchmarks/numpyro_vs_pyro.py [--steps 30] [--out benchmarks/out]
"""

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax
import pyro
import torch
from _examples import vae_models
from numpyro.infer import SVI as NumPyroSVI
from vae_bench import C, K, load_digits_binarized, make_step, make_vae

from numpyro_arsm import ARSM_ELBO as NumPyroARSM


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    data = load_digits_binarized("cpu")
    gen = torch.Generator().manual_seed(0)
    batches = [data[torch.randperm(len(data), generator=gen)[: args.batch]]
               for _ in range(args.steps + args.warmup)]

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    torch_vae = make_vae("pyro", data.shape[1], "cpu")
    # the same initial weights as make_vae's
    model, guide = vae_models.numpyro_vae(vae_models.initial_weights(data.shape[1], seed=0))
    pyro_step, _ = make_step("arsm", torch_vae, 1e-3)

    svi = NumPyroSVI(model, guide, optax.adam(1e-3), loss=NumPyroARSM())
    x0 = jnp.asarray(batches[0].numpy())
    state = svi.init(jax.random.PRNGKey(0), x0)
    update = jax.jit(svi.update)
    t0 = time.perf_counter()
    state, loss = update(state, x0)
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - t0

    times = {"pyro": [], "numpyro": []}
    for i, xb in enumerate(batches):
        t0 = time.perf_counter()
        pyro_step(xb)
        t_pyro = time.perf_counter() - t0
        x = jnp.asarray(xb.numpy())
        t0 = time.perf_counter()
        state, loss = update(state, x)
        jax.block_until_ready(loss)
        t_numpyro = time.perf_counter() - t0
        if i >= args.warmup:
            times["pyro"].append(1000 * t_pyro)
            times["numpyro"].append(1000 * t_numpyro)
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [
        f"Categorical VAE {K}x{C}, digits 8x8 binarized, batch {args.batch}, CPU "
        f"({platform.machine()}, torch {torch.get_num_threads()} threads), torch "
        f"{torch.__version__}, pyro {pyro.__version__}, jax {jax.__version__}, numpyro "
        f"{numpyro.__version__}; medians over {args.steps} interleaved steps",
        "",
        "| step | ms/step (median) | × Pyro |",
        "|---|---|---|",
        f"| Pyro ARSM_ELBO, SVI.step | {med['pyro']:.1f} | 1.00 |",
        f"| NumPyro ARSM_ELBO, jitted SVI.update | {med['numpyro']:.1f} | "
        f"{med['numpyro'] / med['pyro']:.2f} |",
        "",
        f"NumPyro first call (trace + compile): {compile_s:.1f} s",
    ]
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out, "numpyro_vs_pyro.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "numpyro_vs_pyro.json"), "w") as f:
        json.dump({"args": vars(args), "ms_per_step": times, "compile_s": compile_s,
                   "final_loss_numpyro": float(loss)}, f, indent=1)
    assert np.isfinite(float(loss))


if __name__ == "__main__":
    main()
