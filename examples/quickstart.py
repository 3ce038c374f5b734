"""Quick start: a categorical VAE on scikit-learn's 8x8 digits, trained with ``ARSM_ELBO``.

The latent code is 20 categorical variables with 10 classes each, as in the categorical VAE of
Yin, Yue & Zhou (ICML 2019, section 4.2), but with small MLPs to suit 8x8 images:

    encoder  64 -> 128 -> 20*10 logits          q(z | x) = prod_k OneHotCategorical(z_k | logits_k)
    decoder  20*10 (one-hot) -> 128 -> 64       p(x | z) = prod_d Bernoulli(x_d | logits_d)
    prior    p(z) = prod_k OneHotCategorical(z_k | uniform)

Data: the 1797 images of ``sklearn.datasets.load_digits()`` (bundled, no download), binarized at
pixel value > 7; 297 images are held out as a test split with a fixed seed.

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
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from pyro.infer import SVI, Trace_ELBO  # noqa: E402
from pyro.optim import Adam  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch import nn  # noqa: E402

from pyro_arsm import ARSM_ELBO  # noqa: E402

NUM_LATENTS = 20
NUM_CLASSES = 10
NUM_PIXELS = 64
HIDDEN_SIZE = 128
NUM_TEST = 297
DATA_SPLIT_SEED = 0  # fixed, so the test split does not move with --seed
BATCH_SIZE = 100
PRINT_EVERY = 25
TEST_PARTICLES = 10


def load_binarized_digits():
    """Return (train, test) float tensors of shape [N, 64] with entries in {0, 1}."""
    pixels = load_digits().data  # [1797, 64], integer values 0..16
    images = torch.as_tensor(pixels > 7, dtype=torch.get_default_dtype())
    order = torch.as_tensor(np.random.RandomState(DATA_SPLIT_SEED).permutation(len(images)))
    return images[order[NUM_TEST:]], images[order[:NUM_TEST]]


def mlp(in_features, out_features):
    # nn.Linear acts on the last dim, so extra batch dims on the left pass straight through.
    return nn.Sequential(
        nn.Linear(in_features, HIDDEN_SIZE),
        nn.LeakyReLU(0.2),
        nn.Linear(HIDDEN_SIZE, out_features),
    )


class CategoricalVAE:
    """Model and guide for a VAE with NUM_LATENTS one-hot categorical latents.

    Both broadcast on the left: ``ARSM_ELBO`` evaluates all pseudo actions of a step in one batched
    pass by adding a dimension to the left of the plates, so ``z`` may arrive as
    ``[..., batch, NUM_LATENTS, NUM_CLASSES]``. Hence ``reshape(z.shape[:-2] + (-1,))``, never
    ``z.view(batch, -1)``.
    """

    def __init__(self):
        self.encoder = mlp(NUM_PIXELS, NUM_LATENTS * NUM_CLASSES)
        self.decoder = mlp(NUM_LATENTS * NUM_CLASSES, NUM_PIXELS)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        uniform_logits = x.new_zeros(NUM_LATENTS, NUM_CLASSES)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.OneHotCategorical(logits=uniform_logits).to_event(1))
            pixel_logits = self.decoder(z.reshape(z.shape[:-2] + (-1,)))
            pyro.sample("x", dist.Bernoulli(logits=pixel_logits).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            logits = self.encoder(x).reshape(x.shape[:-1] + (NUM_LATENTS, NUM_CLASSES))
            pyro.sample("z", dist.OneHotCategorical(logits=logits).to_event(1))


def minibatches(images, batch_size, generator):
    """Yield shuffled minibatches forever, one pass over ``images`` per epoch."""
    while True:
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images) - batch_size + 1, batch_size):
            yield images[order[start : start + batch_size]]


def negative_elbo_per_image(vae, images):
    """A TEST_PARTICLES-sample estimate of -ELBO, in nats per image."""
    elbo = Trace_ELBO(num_particles=TEST_PARTICLES, vectorize_particles=True, max_plate_nesting=1)
    return elbo.loss(vae.model, vae.guide, images) / len(images)


def independent_pixel_nll(train_images, test_images):
    """-log p(x) per test image under independent per-pixel Bernoullis fit to the training set.

    A model that ignores ``z`` can do no better than this, so a -ELBO below it means the
    categorical code carries information about the image.
    """
    pixel_probs = train_images.mean(0).clamp(1e-3, 1 - 1e-3)
    return -dist.Bernoulli(probs=pixel_probs).log_prob(test_images).sum(-1).mean().item()


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

    train_images, test_images = load_binarized_digits()
    vae = CategoricalVAE()
    svi = SVI(vae.model, vae.guide, Adam({"lr": args.lr}),
              loss=ARSM_ELBO(max_plate_nesting=1, estimator=args.estimator))
    print(f"ARSM_ELBO(estimator={args.estimator!r}): {len(train_images)} train / "
          f"{len(test_images)} test images, {NUM_LATENTS}x{NUM_CLASSES} categorical latents, "
          f"batch {BATCH_SIZE}, {args.steps} steps")

    # Losses are -ELBO in nats per image; each printed value averages the last PRINT_EVERY steps.
    losses = []
    batches = minibatches(train_images, BATCH_SIZE, torch.Generator().manual_seed(args.seed))
    for step in range(1, args.steps + 1):
        batch = next(batches)
        losses.append(svi.step(batch) / len(batch))
        if step % PRINT_EVERY == 0 or step == args.steps:
            recent = losses[-PRINT_EVERY:]
            print(f"step {step:5d}  train loss {sum(recent) / len(recent):8.3f}")

    test_loss = negative_elbo_per_image(vae, test_images)
    csv_path, png_path = save_loss_curve(losses, args.estimator, args.out)
    print(f"test -ELBO per image ({TEST_PARTICLES}-particle estimate): {test_loss:.3f} nats")
    print(f"reference, independent pixels ignoring z: "
          f"{independent_pixel_nll(train_images, test_images):.3f} nats")
    print(f"wrote {csv_path} and {png_path}")
    print(f"elapsed {time.perf_counter() - start_time:.1f} s")


if __name__ == "__main__":
    main()
