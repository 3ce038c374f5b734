"""The example modules the benchmarks share with ``examples/``: the categorical VAE
(``examples/vae_models.py``) and its data (``examples/_vae_data.py``), loaded by file path with
:mod:`importlib` (``sys.path`` is left alone), each once per process.

    from _examples import vae_data, vae_models
"""

import importlib.util
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    """The module ``examples/<name>.py``, registered in ``sys.modules`` under ``name`` (so a
    script or test that imported it from ``examples/`` shares the same module object)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


vae_data = load_example("_vae_data")
vae_models = load_example("vae_models")
