"""Data-parallel training of a categorical VAE with NumPyro and ``ARSM_ELBO`` on several devices.

The batch is split along the ``data`` plate over a 1-D device mesh (``jax.sharding``); the
parameters and optimizer state are replicated. ``jax.jit`` partitions the whole ARSM step (real
and pseudo passes), so model, guide and ``ARSM_ELBO`` are unchanged: only where the arrays live
changes, and the loss and gradient are those of one device (up to float rounding).

Model: 20 categorical latents with 10 classes (MLP encoder/decoder 64-128-200), on the 8x8
digits bundled with scikit-learn, binarized at pixel value > 7; 300 images held out for test.

    python examples/numpyro_sharded_vae.py --devices 4     # 4 host (CPU) devices
    python examples/numpyro_sharded_vae.py                  # all devices jax sees (GPUs, ...)

``--devices N`` sets ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before jax is
imported (it only affects the CPU platform); ``--batch-size`` must be a multiple of N.
"""

import argparse
import os
import time

import numpy as np
from sklearn.datasets import load_digits

NUM_LATENTS, NUM_CLASSES, HIDDEN, NUM_TEST = 20, 10, 128, 300


def load_data(seed=0):
    images = (load_digits().data > 7).astype(np.float32)  # [1797, 64]
    order = np.random.RandomState(seed).permutation(len(images))
    return images[order[NUM_TEST:]], images[order[:NUM_TEST]]


def make_model_guide(num_pixels, seed):
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    rng = np.random.RandomState(seed)
    code = NUM_LATENTS * NUM_CLASSES
    layers = {"encoder": [(num_pixels, HIDDEN), (HIDDEN, code)],
              "decoder": [(code, HIDDEN), (HIDDEN, num_pixels)]}
    init = {(name, i): rng.uniform(-1, 1, shape).astype(np.float32) / np.sqrt(shape[0])
            for name, shapes in layers.items() for i, shape in enumerate(shapes)}

    def mlp(name, h):
        for i in range(len(layers[name])):
            w = numpyro.param(f"{name}{i}_w", jnp.asarray(init[name, i]))
            b = numpyro.param(f"{name}{i}_b", jnp.zeros(init[name, i].shape[1]))
            h = h @ w + b
            h = jax.nn.leaky_relu(h, 0.2) if i < len(layers[name]) - 1 else h
        return h

    def model(x):
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Categorical(
                logits=jnp.zeros((NUM_LATENTS, NUM_CLASSES))).to_event(1))
            h = jax.nn.one_hot(z, NUM_CLASSES).reshape(z.shape[:-1] + (code,))
            logits = mlp("decoder", h)
            numpyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(x):
        logits = mlp("encoder", x)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", dist.Categorical(
                logits=logits.reshape(x.shape[:-1] + (NUM_LATENTS, NUM_CLASSES))).to_event(1))

    return model, guide


def main(args):
    if args.devices:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}"
    import jax
    import optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from numpyro.infer import SVI, Trace_ELBO

    from numpyro_arsm import ARSM_ELBO

    devices = jax.devices()[:args.devices] if args.devices else jax.devices()
    if args.devices and len(devices) < args.devices:
        raise SystemExit(f"asked for {args.devices} devices, jax sees {jax.devices()}")
    if args.batch_size % len(devices):
        raise SystemExit(f"--batch-size {args.batch_size} is not a multiple of {len(devices)}")
    mesh = Mesh(np.array(devices), ("batch",))
    split = NamedSharding(mesh, PartitionSpec("batch"))  # along the leading (plate) axis
    replicated = NamedSharding(mesh, PartitionSpec())

    train, test = load_data()
    model, guide = make_model_guide(train.shape[1], args.seed)
    svi = SVI(model, guide, optax.adam(args.lr), loss=ARSM_ELBO())
    rng = np.random.RandomState(args.seed)
    batches = (train[rng.choice(len(train), args.batch_size, replace=False)]
               for _ in range(args.steps))
    first = jax.device_put(next(batches), split)
    state = jax.device_put(svi.init(jax.random.PRNGKey(args.seed), first), replicated)
    update = jax.jit(svi.update)
    print(f"{len(devices)} device(s): {devices}; global batch {args.batch_size}, "
          f"{args.batch_size // len(devices)} per device")

    start = time.perf_counter()
    state, loss = update(state, first)
    loss.block_until_ready()
    print(f"compile + first step: {time.perf_counter() - start:.1f} s")
    start, done = time.perf_counter(), 0
    for step, batch in enumerate(batches, 2):
        state, loss = update(state, jax.device_put(batch, split))
        done += args.batch_size
        if step % args.print_every == 0 or step == args.steps:
            loss = float(loss) / args.batch_size  # blocks until the step is done
            rate = done / (time.perf_counter() - start)
            print(f"step {step:5d}  -ELBO/image {loss:7.2f}  {rate:8.0f} examples/s")

    params = svi.get_params(state)
    test_loss = jax.jit(lambda p, x: Trace_ELBO(num_particles=10).loss(
        jax.random.PRNGKey(1), p, model, guide, x))
    test_x = jax.device_put(test, split if len(test) % len(devices) == 0 else replicated)
    print(f"test -ELBO/image {float(test_loss(params, test_x)) / len(test):.2f}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=0,
                        help="number of host devices to split each batch over (0: all devices)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=120)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--print-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
