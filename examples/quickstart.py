"""Quick start: a categorical VAE on scikit-learn's 8x8 digits, trained with ``ARSM_ELBO``.

The latent code is 20 categorical variables with 10 classes each, as in the categorical VAE of
Yin, Yue & Zhou (ICML 2019, section 4.2): the model and guide of ``categorical_vae.py``
(``vae_models.PyroVAE``), with small MLPs to suit 8x8 images:

    encoder  64 -> 128 -> 20*10 logits          q(z | x) = prod_k OneHotCategorical(z_k | logits_k)
    decoder  20*10 (one-hot) -> 128 -> 64       p(x | z) = prod_d Bernoulli(x_d | logits_d)
    prior    p(z) = prod_k OneHotCategorical(z_k | uniform)

Data: the 1797 images of ``sklearn.datasets.load_digits()`` (bundled, no download), binarized at
pixel value > 7; 297 images are held out as a test split with a fixed seed (``_vae_data.py``).

Run from the repository root:

    python examples/quickstart.py                  # ARSM, 300 steps
    python examples/quickstart.py --estimator ars  # or ar

It prints the training loss every 25 steps, then the test-set -ELBO per image next to the
-log-likelihood of independent per-pixel Bernoullis (what a model that ignores z can reach),
and writes the loss curve as CSV and PNG to ``--out``.
"""

import argparse
import csv
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: only files are written
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from _vae_data import load_dataset  # noqa: E402
from pyro.infer import SVI, Trace_ELBO  # noqa: E402
from pyro.optim import Adam  # noqa: E402
from vae_models import NUM_CLASSES, NUM_LATENTS, PyroVAE, initial_weights  # noqa: E402

from pyro_arsm import ARSM_ELBO  # noqa: E402

HIDDEN_SIZE = 128
BATCH_SIZE = 100
PRINT_EVERY = 25
TEST_PARTICLES = 10


def negative_elbo_per_image(vae, images):
    """A TEST_PARTICLES-sample estimate of -ELBO, in nats per image."""
    elbo = Trace_ELBO(num_particles=TEST_PARTICLES, vectorize_particles=True, max_plate_nesting=1)
    return elbo.loss(vae.model, vae.guide, images) / len(images)


def save_loss_curve(losses, estimator, out_dir):
    """Write the per-step training loss as CSV and PNG; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / f"quickstart_{estimator}.csv"
    png_path = out_dir / f"quickstart_{estimator}.png"
    running_mean = np.convolve(losses, np.ones(PRINT_EVERY) / PRINT_EVERY, mode="valid")

    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "train_loss_per_image"])
        writer.writerows((step, f"{loss:.6f}") for step, loss in enumerate(losses, start=1))

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="per step")
    if len(running_mean):
        ax.plot(steps[PRINT_EVERY - 1 :], running_mean, color="tab:blue",
                label=f"mean of last {PRINT_EVERY}")
    ax.set_xlabel("step")
    ax.set_ylabel("train -ELBO per image (nats)")
    ax.set_title(f"Categorical VAE on 8x8 digits, ARSM_ELBO(estimator={estimator!r})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return csv_path, png_path


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="SVI steps (default: 300)")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default: 1e-2)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for initialization and sampling (default: 0)")
    parser.add_argument("--estimator", choices=["arsm", "ars", "ar"], default="arsm",
                        help="ARSM_ELBO(estimator=...) for the categorical site (default: arsm)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out",
                        help="folder for the loss curve CSV and PNG (default: examples/out)")
    return parser.parse_args()


def main():
    args = parse_args()
    start_time = time.perf_counter()
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()

    data = load_dataset("digits")  # numpy arrays, [N, 64] in {0, 1}
    weights = initial_weights(data.num_pixels, seed=args.seed, encoder_hidden=(HIDDEN_SIZE,),
                              decoder_hidden=(HIDDEN_SIZE,))
    vae = PyroVAE(weights)
    svi = SVI(vae.model, vae.guide, Adam({"lr": args.lr}),
              loss=ARSM_ELBO(max_plate_nesting=1, estimator=args.estimator))
    print(f"ARSM_ELBO(estimator={args.estimator!r}): {len(data.train)} train / "
          f"{len(data.test)} test images, {NUM_LATENTS}x{NUM_CLASSES} categorical latents, "
          f"batch {BATCH_SIZE}, {args.steps} steps")

    # Losses are -ELBO in nats per image; each printed value averages the last PRINT_EVERY steps.
    losses = []
    batches = data.minibatches(BATCH_SIZE, args.seed)
    for step in range(1, args.steps + 1):
        batch = torch.as_tensor(next(batches))
        losses.append(svi.step(batch) / len(batch))
        if step % PRINT_EVERY == 0 or step == args.steps:
            recent = losses[-PRINT_EVERY:]
            print(f"step {step:5d}  train loss {sum(recent) / len(recent):8.3f}")

    test_loss = negative_elbo_per_image(vae, torch.as_tensor(data.test))
    csv_path, png_path = save_loss_curve(losses, args.estimator, args.out)
    print(f"test -ELBO per image ({TEST_PARTICLES}-particle estimate): {test_loss:.3f} nats")
    print(f"reference, independent pixels ignoring z: {data.pixel_nll():.3f} nats")
    print(f"wrote {csv_path} and {png_path}")
    print(f"elapsed {time.perf_counter() - start_time:.1f} s")


if __name__ == "__main__":
    main()
