"""ARSM_ELBO under torch DistributedDataParallel: two CPU processes (gloo), one shard each.

Model and guide are ``torch.nn.Module`` s, ``ARSM_ELBO(...)(model, guide)`` is a module whose
forward is ``differentiable_loss``, and DDP wraps that module. Each step draws one global batch
of ``GLOBAL_BATCH`` of the ``N`` data points (the same permutation on every rank); rank ``r``
takes its disjoint half and scores it under ``pyro.plate("data", N, subsample=idx)``, so its loss
is by itself an unbiased estimate of the full-data ``-ELBO`` and DDP's average over ranks is one
too, from twice the data. The ARSM noise differs between ranks (seed + rank).

Checks, on the gradients the two processes return:

* the gradient DDP leaves in ``.grad`` is bit-identical on both ranks and equals the mean of the
  ranks' local gradients (taken with ``torch.autograd.grad`` before ``backward``, which does not
  fire DDP's hooks), while those local gradients differ: so the test fails without the all-reduce;
* its Monte Carlo mean over ``NUM_DRAWS`` steps (parameters fixed) z-tests against the exact
  full-data gradient from TraceEnum_ELBO with the guide enumerated (``pyro_exact``), as does
  each rank's local gradient.
"""

import os
import socket

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from pyro.infer import TraceEnum_ELBO, config_enumerate
from pyro_exact import assert_unbiased
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pyro_arsm import ARSM_ELBO

# two spawned processes import torch and Pyro afresh: seconds before the first step
pytestmark = pytest.mark.slow

WORLD_SIZE = 2
DATA = torch.tensor([-1.3, 0.2, 2.1, 0.9, -0.4, 1.7, 3.0, -2.2])
N = len(DATA)
GLOBAL_BATCH = 4  # each rank scores GLOBAL_BATCH // WORLD_SIZE points per step
NUM_DRAWS = 350
NUM_PARTICLES = 16  # vectorized, per rank and step: less ARSM noise per draw at no extra time
BATCH_SEED = 1  # the global batches: the same stream on every rank
NOISE_SEED = 10  # the ARSM noise: NOISE_SEED + rank
NUM_CLUSTERS = 3


class MixtureModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.locs = nn.Parameter(torch.tensor([-1.0, 0.5, 2.0]))

    def forward(self, idx):
        with pyro.plate("data", N, subsample=idx):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(NUM_CLUSTERS)))
            pyro.sample("x", dist.Normal(self.locs[z], 1.0), obs=DATA[idx])


class MixtureGuide(nn.Module):
    def __init__(self):
        super().__init__()
        init = torch.linspace(-1.0, 1.0, N * NUM_CLUSTERS).reshape(N, NUM_CLUSTERS).sin() * 2
        self.phi = nn.Parameter(init)

    def forward(self, idx):
        with pyro.plate("data", N, subsample=idx):
            pyro.sample("z", dist.Categorical(logits=self.phi[idx]))


def flat(grads):
    return torch.cat([g.reshape(-1) for g in grads])


def exact_full_data_gradient():
    model, guide = MixtureModel(), MixtureGuide()
    params = list(model.parameters()) + list(guide.parameters())
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    loss = elbo.differentiable_loss(model, config_enumerate(guide, "parallel"), torch.arange(N))
    return flat(torch.autograd.grad(loss, params))


def worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        pyro.set_rng_seed(NOISE_SEED + rank)
        pyro.enable_validation(False)  # a third of the time of a step this small
        elbo = ARSM_ELBO(num_particles=NUM_PARTICLES, vectorize_particles=True,
                         max_plate_nesting=1)
        ddp = DistributedDataParallel(elbo(MixtureModel(), MixtureGuide()))
        params = list(ddp.parameters())
        batches = torch.Generator().manual_seed(BATCH_SEED)
        per_rank = GLOBAL_BATCH // WORLD_SIZE
        local, synced = [], []
        for _ in range(NUM_DRAWS):
            order = torch.randperm(N, generator=batches)
            idx = order[rank * per_rank:(rank + 1) * per_rank]
            for p in params:
                p.grad = None
            loss = ddp(idx)
            local.append(flat(torch.autograd.grad(loss, params, retain_graph=True)))
            loss.backward()  # DDP all-reduces (averages) the gradients here
            synced.append(flat([p.grad for p in params]))
        torch.save({"local": torch.stack(local), "synced": torch.stack(synced)},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch_dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rank_gradients(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("ddp"))
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned processes
    try:
        mp.spawn(worker, args=(free_port(), out_dir), nprocs=WORLD_SIZE, join=True)
    finally:
        if old is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = old
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD_SIZE)]


def test_ddp_all_reduces_arsm_gradients(rank_gradients):
    r0, r1 = rank_gradients
    # the shards differ, so the local gradients do: a missing all-reduce cannot pass below
    assert not torch.allclose(r0["local"], r1["local"])
    assert torch.equal(r0["synced"], r1["synced"])
    mean_local = (r0["local"] + r1["local"]) / WORLD_SIZE
    torch.testing.assert_close(r0["synced"], mean_local, rtol=1e-6, atol=1e-6)


def test_ddp_gradient_unbiased_for_full_data(rank_gradients):
    exact = exact_full_data_gradient()
    assert_unbiased(rank_gradients[0]["synced"], exact,
                    label=f"DDP over {WORLD_SIZE} ranks, batch {GLOBAL_BATCH} of {N}")
    # each rank's own estimate is unbiased too (its subsample scaled by N / len(idx))
    for rank, grads in enumerate(rank_gradients):
        assert_unbiased(grads["local"], exact, label=f"rank {rank} alone")
