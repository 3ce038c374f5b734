"""NumPyro ARSM_ELBO (jitted ``SVI.update``) against Pyro ARSM_ELBO (``SVI.step``) on the
categorical VAE of ``vae_bench.py``: same network (20 x 10 latents, 64-512-256-200 encoder,
200-256-512-64 decoder, leaky ReLU 0.2), same initial weights, same minibatches (digits, batch
200), Adam(1e-3). Steps are interleaved, so both see the same machine load; the NumPyro step's
first call (tracing + XLA compilation) is reported separately.

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
import numpyro.distributions as npdist
import optax
import pyro
import torch
from numpyro.infer import SVI as NumPyroSVI
from vae_bench import VAE, C, K, load_digits_binarized, make_step

from numpyro_arsm import ARSM_ELBO as NumPyroARSM


def numpyro_vae(torch_vae):
    """The same VAE in NumPyro, initialized with the torch networks' weights."""

    def linear_params(seq, prefix):
        layers = [m for m in seq if isinstance(m, torch.nn.Linear)]
        return {f"{prefix}{i}_{kind}": jnp.asarray(
                    (layer.weight.detach().numpy().T if kind == "w"
                     else layer.bias.detach().numpy()))
                for i, layer in enumerate(layers) for kind in ("w", "b")}

    enc_init = linear_params(torch_vae.encoder, "enc")
    dec_init = linear_params(torch_vae.decoder, "dec")

    def mlp(params, prefix, h, n):
        for i in range(n):
            h = h @ params[f"{prefix}{i}_w"] + params[f"{prefix}{i}_b"]
            if i < n - 1:
                h = jax.nn.leaky_relu(h, 0.2)
        return h

    def model(x):
        dec = {k: numpyro.param(k, v) for k, v in dec_init.items()}
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", npdist.Categorical(logits=jnp.zeros((K, C))).to_event(1))
            h = jax.nn.one_hot(z, C).reshape(z.shape[:-1] + (K * C,))
            numpyro.sample("x", npdist.Bernoulli(logits=mlp(dec, "dec", h, 3)).to_event(1),
                           obs=x)

    def guide(x):
        enc = {k: numpyro.param(k, v) for k, v in enc_init.items()}
        with numpyro.plate("data", x.shape[0]):
            logits = mlp(enc, "enc", x, 3).reshape(x.shape[:-1] + (K, C))
            numpyro.sample("z", npdist.Categorical(logits=logits).to_event(1))

    return model, guide


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
    torch_vae = VAE(data.shape[1], "cpu", prefix="pyro/")
    model, guide = numpyro_vae(torch_vae)  # copy the initial weights before training
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
