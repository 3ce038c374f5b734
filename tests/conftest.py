"""Shared test configuration.

The suite runs under ``pytest -n 2`` on two cores: one intra-op thread per worker process. With
torch's default (one thread per core) the workers' OpenMP threads compete, and the many tiny ops
of the Pyro tests ran up to 8x slower.
"""

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(__file__))  # the shared test helpers (pyro_exact, ...)

try:
    import torch
except ImportError:  # the NumPyro-only tests do not need it
    torch = None
if torch is not None:
    torch.set_num_threads(1)
