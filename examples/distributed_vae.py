"""Data-parallel training of a categorical VAE with ``ARSM_ELBO`` and PyTorch's
``DistributedDataParallel`` (DDP).

Model and guide are ``torch.nn.Module`` s, so ``ARSM_ELBO(...)(model, guide)`` is a module whose
forward returns ``differentiable_loss`` (a tensor whose gradient is the ARSM estimate), and DDP
wraps it like any other module: one process per CPU group (gloo) or per GPU (nccl), each scoring
its shard of every global batch; DDP averages the gradients during ``backward``. Each shard sits
in ``pyro.plate("data", N, subsample=idx)``, so every rank's loss is an unbiased estimate of the
full-data ``-ELBO`` and so is their average (``tests/test_pyro_ddp.py`` checks this against the
exact gradient). The ARSM noise is seeded per rank; the global batches are the same on all ranks.

Data: the 1797 images of ``sklearn.datasets.load_digits()`` binarized at > 7; latent code 20
categorical variables x 10 classes, as in ``examples/quickstart.py``.

    python examples/distributed_vae.py --num-processes 2            # CPU, gloo, 1 thread each
    python examples/distributed_vae.py --device cuda                # one process per GPU, nccl
    torchrun --nproc-per-node 2 examples/distributed_vae.py         # or any torchrun launch

It prints the loss (-ELBO per image, averaged over ranks) and the throughput in images/s (median
step time after ``--warmup`` steps) on rank 0; ``--json PATH`` writes rank 0's step times (wall
and CPU) too.
"""

import argparse
import json
import os
import socket
import statistics
import time

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pyro_arsm import ARSM_ELBO

NUM_LATENTS, NUM_CLASSES, NUM_PIXELS, HIDDEN_SIZE = 20, 10, 64, 128


def mlp(in_features, out_features):
    # layers act on the last dim: ARSM_ELBO's batched pass adds dims on the left
    return nn.Sequential(nn.Linear(in_features, HIDDEN_SIZE), nn.LeakyReLU(0.2),
                         nn.Linear(HIDDEN_SIZE, out_features))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.decoder = mlp(NUM_LATENTS * NUM_CLASSES, NUM_PIXELS)

    def forward(self, x, idx, num_data):
        prior = x.new_zeros(NUM_LATENTS, NUM_CLASSES)
        with pyro.plate("data", num_data, subsample=idx):  # scales the shard by num_data/len(idx)
            z = pyro.sample("z", dist.OneHotCategorical(logits=prior).to_event(1))
            pixel_logits = self.decoder(z.reshape(z.shape[:-2] + (-1,)))
            pyro.sample("x", dist.Bernoulli(logits=pixel_logits).to_event(1), obs=x)


class Guide(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = mlp(NUM_PIXELS, NUM_LATENTS * NUM_CLASSES)

    def forward(self, x, idx, num_data):
        with pyro.plate("data", num_data, subsample=idx):
            logits = self.encoder(x).reshape(x.shape[:-1] + (NUM_LATENTS, NUM_CLASSES))
            pyro.sample("z", dist.OneHotCategorical(logits=logits).to_event(1))


def train(rank, world_size, local_rank, args):
    if args.device == "cuda":
        device, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
        torch.set_num_threads(args.threads)
    torch_dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP checks)
        images = torch.tensor(load_digits().data > 7, dtype=torch.float32, device=device)
        elbo = ARSM_ELBO(max_plate_nesting=1, estimator=args.estimator)
        vae = DistributedDataParallel(elbo(Model(), Guide()).to(device),
                                      device_ids=[local_rank] if args.device == "cuda" else None)
        optimizer = torch.optim.Adam(vae.parameters(), lr=args.lr)
        pyro.set_rng_seed(args.seed + 1 + rank)  # ARSM noise: independent across ranks
        batches = np.random.RandomState(args.seed)  # global batches: the same on every rank
        shard = args.batch_size // world_size
        step_times, cpu_times = [], []
        for step in range(args.steps):
            start, cpu_start = time.perf_counter(), time.process_time()
            batch = batches.choice(len(images), args.batch_size, replace=False)
            idx = torch.as_tensor(batch[rank * shard:(rank + 1) * shard], device=device)
            loss = vae(images[idx], idx, len(images))  # -ELBO estimate for all the data
            optimizer.zero_grad()
            loss.backward()  # DDP all-reduces the gradients here
            optimizer.step()
            if args.device == "cuda":
                torch.cuda.synchronize()
            step_times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
            if step % args.print_every == 0 or step == args.steps - 1:
                mean_loss = loss.detach().clone()
                torch_dist.all_reduce(mean_loss)  # only for the printout
                if rank == 0:
                    per_image = mean_loss.item() / world_size / len(images)
                    print(f"step {step:5d}  loss {per_image:8.3f} nats/image", flush=True)
        if rank == 0:
            timed = step_times[args.warmup:] or step_times
            median = statistics.median(timed)
            print(f"{world_size} process(es) on {args.device}, global batch {args.batch_size}: "
                  f"median step {1e3 * median:.1f} ms, {args.batch_size / median:.0f} images/s")
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"world_size": world_size, "batch_size": args.batch_size,
                               "device": args.device, "threads": args.threads,
                               "warmup": args.warmup, "step_times": step_times,
                               "cpu_times": cpu_times, "images_per_s": args.batch_size / median}, f)
    finally:
        torch_dist.destroy_process_group()


def spawned(rank, world_size, args):
    train(rank, world_size, rank, args)


def main(args):
    if "RANK" in os.environ:  # launched by torchrun: one process each, rendezvous env set
        world_size = int(os.environ["WORLD_SIZE"])
    else:
        world_size = args.num_processes or (
            torch.cuda.device_count() if args.device == "cuda" else 2)
    if args.batch_size % world_size:
        raise ValueError(f"--batch-size {args.batch_size} is not a multiple of {world_size}")
    if "RANK" in os.environ:
        train(int(os.environ["RANK"]), world_size, int(os.environ["LOCAL_RANK"]), args)
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read by the spawned processes
    mp.spawn(spawned, args=(world_size, args), nprocs=world_size, join=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-processes", type=int, default=None,
                        help="processes (default: 2 on CPU, every GPU with --device cuda)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per CPU process")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    parser.add_argument("--batch-size", type=int, default=200, help="global batch size")
    parser.add_argument("--estimator", default="arsm", choices=["arsm", "ars", "ar"])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--print-every", type=int, default=50)
    parser.add_argument("--json", default=None, help="write the step times to this file")
    main(parser.parse_args())
