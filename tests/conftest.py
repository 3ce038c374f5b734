"""Shared test configuration and fixtures.

The suite runs under ``pytest -n 2`` on two cores: one intra-op thread per worker process. With
torch's default (one thread per core) the workers' OpenMP threads compete, and the many tiny ops
of the Pyro tests ran up to 8x slower.

Shared helpers live next to this file and are imported as top-level modules (``pythonpath`` in
pyproject.toml puts ``tests/``, ``examples/`` and ``benchmarks/`` on the path): ``pyro_exact`` /
``numpyro_exact`` (exact references and the one z-test per backend) and ``pyro_models`` /
``numpyro_models`` (the test models used by more than one test module).

Fixtures: a Pyro test module opts in to a fresh parameter store with
``pytestmark = pytest.mark.usefixtures("fresh_param_store")``; ``torch_seed`` seeds torch's
global generator for tests of the bare estimators.
"""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
# Most NumPyro tests spend their time compiling small XLA programs, not running them: without
# XLA's optimization passes the compiles take about half as long (set before jax is imported;
# an explicit JAX_DISABLE_MOST_OPTIMIZATIONS=0 in the environment wins).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

try:
    import torch
except ImportError:  # the NumPyro-only tests do not need it
    torch = None
if torch is not None:
    torch.set_num_threads(1)


@pytest.fixture
def fresh_param_store():
    """An empty Pyro param store, Pyro's RNGs seeded with 0 and validation on; the store is
    emptied again (and validation switched back on) after the test."""
    pyro = pytest.importorskip("pyro")
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()
    pyro.enable_validation(True)


@pytest.fixture
def torch_seed():
    """torch's global generator seeded with 0."""
    pytest.importorskip("torch")
    torch.manual_seed(0)
