"""Packaging checks: one version, typed packages, independent frameworks, Pyro internals.

pyro_arsm subclasses and calls parts of Pyro that are not public API. pyproject.toml bounds
pyro-ppl below the next minor release; the tests at the bottom of this file are the checklist for
raising that bound: each fails with a message that names the private API that changed.
"""

import importlib.metadata
import importlib.resources
import inspect
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DIST = "ppl-arsm"
PACKAGES = ("pyro_arsm", "numpyro_arsm")


def _run_python(code):
    """Run ``code`` in a fresh interpreter (a clean ``sys.modules``); return its stdout."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


# --- version ------------------------------------------------------------------------------------


def test_version_is_the_same_everywhere():
    import numpyro_arsm
    import pyro_arsm

    installed = importlib.metadata.version(DIST)
    assert pyro_arsm.__version__ == numpyro_arsm.__version__ == installed
    with open(ROOT / "pyproject.toml", "rb") as f:
        written = tomllib.load(f)["project"]["version"]
    # An editable install keeps the metadata of the last `pip install`: after a version bump in
    # pyproject.toml, reinstall (pip install -e .) to refresh it.
    assert installed == written, (
        f"installed metadata says {installed}, pyproject.toml says {written}: reinstall")


def test_version_is_written_once():
    """No module carries its own copy of the version string."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        written = tomllib.load(f)["project"]["version"]
    for package in PACKAGES:
        for path in (ROOT / package).glob("*.py"):
            assert f'"{written}"' not in path.read_text(), f"{path} repeats the version"


# --- typing markers -----------------------------------------------------------------------------


@pytest.mark.parametrize("package", PACKAGES)
def test_py_typed_is_installed(package):
    assert importlib.resources.files(package).joinpath("py.typed").is_file()


def test_wheel_contents(tmp_path):
    """The wheel holds both packages with their py.typed markers, the version and the extras.

    Built offline without build isolation (the test extra brings setuptools) from a copy of the
    sources, so that the build leaves nothing in the working tree.
    """
    pytest.importorskip("setuptools", minversion="77")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "--wheel-dir", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = zf.read(metadata_name).decode()
    for package in PACKAGES:
        assert f"{package}/py.typed" in names
        assert f"{package}/__init__.py" in names
    assert not any(n.startswith(("tests/", "examples/", "benchmarks/")) for n in names)
    assert f"\nVersion: {importlib.metadata.version(DIST)}\n" in metadata
    assert "Requires-Python: >=3.11" in metadata
    for extra in ("pyro", "numpyro", "enum", "examples", "peer", "test", "docs", "lint", "all"):
        assert f"Provides-Extra: {extra}\n" in metadata


# --- the two packages are independent ----------------------------------------------------------


@pytest.mark.parametrize("package, forbidden", [
    ("pyro_arsm", ("jax", "jaxlib", "numpyro", "optax", "numpyro_arsm")),
    ("numpyro_arsm", ("torch", "pyro", "pyro_arsm")),
])
def test_package_does_not_import_the_other_framework(package, forbidden):
    out = _run_python(
        f"import sys, {package}\n"
        f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & {set(forbidden)!r})))"
    )
    assert out.strip() == "", f"importing {package} imported {out.strip()}"


# --- Pyro internals pyro_arsm relies on (pyro_arsm/elbo.py, pyro_arsm/autoguide.py) -------------


def test_pyro_is_within_the_tested_bound():
    import pyro

    major, minor = (int(x) for x in pyro.__version__.split(".")[:2])
    assert (1, 9) <= (major, minor) < (1, 10), (
        f"pyro-ppl {pyro.__version__} is outside the range pyproject.toml allows (>=1.9.2,<1.10)")


def test_pyro_private_compute_elbo():
    """elbo.py: ``from pyro.infer.tracegraph_elbo import TrackNonReparam, _compute_elbo``;
    ``elbo, surrogate_loss = _compute_elbo(model_trace, guide_trace)``."""
    from pyro.infer import tracegraph_elbo

    assert hasattr(tracegraph_elbo, "_compute_elbo"), \
        "pyro.infer.tracegraph_elbo._compute_elbo is gone (used by pyro_arsm._costs)"
    assert hasattr(tracegraph_elbo, "TrackNonReparam"), \
        "pyro.infer.tracegraph_elbo.TrackNonReparam is gone (used by pyro_arsm.elbo)"
    params = list(inspect.signature(tracegraph_elbo._compute_elbo).parameters)
    assert params == ["model_trace", "guide_trace"], \
        f"pyro.infer.tracegraph_elbo._compute_elbo now takes {params}"


def test_pyro_private_compute_dice_elbo():
    """_enum.py (guide-side enumeration): ``traceenum_elbo._compute_dice_elbo(model_trace,
    guide_trace)`` on packed traces gives TraceEnum_ELBO's differentiable ELBO."""
    from pyro.infer import traceenum_elbo

    assert hasattr(traceenum_elbo, "_compute_dice_elbo"), \
        "pyro.infer.traceenum_elbo._compute_dice_elbo is gone (used by pyro_arsm._enum)"
    params = list(inspect.signature(traceenum_elbo._compute_dice_elbo).parameters)
    assert params == ["model_trace", "guide_trace"], \
        f"pyro.infer.traceenum_elbo._compute_dice_elbo now takes {params}"


def test_pyro_private_compute_elbo_returns_elbo_and_surrogate_loss():
    import pyro
    import pyro.distributions as dist
    import pyro.poutine as poutine
    import torch
    from pyro.infer.tracegraph_elbo import _compute_elbo

    def model():
        pyro.sample("x", dist.Normal(0.0, 1.0))

    def guide():
        pyro.sample("x", dist.Normal(torch.tensor(0.5, requires_grad=True), 1.0))

    guide_trace = poutine.trace(guide).get_trace()
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace()
    model_trace.compute_log_prob()
    guide_trace.compute_score_parts()
    out = _compute_elbo(model_trace, guide_trace)
    assert isinstance(out, tuple) and len(out) == 2, \
        "pyro.infer.tracegraph_elbo._compute_elbo no longer returns (elbo, surrogate_loss)"
    elbo, surrogate_loss = out
    expected = (model_trace.nodes["x"]["log_prob_sum"] - guide_trace.nodes["x"]["log_prob_sum"])
    assert float(elbo.detach()) == pytest.approx(float(expected.detach()))
    assert float(surrogate_loss.detach()) == pytest.approx(-float(expected.detach()))


def test_pyro_private_subsample():
    """elbo.py: ``isinstance(site["fn"], _Subsample)`` identifies subsample sites."""
    import pyro
    import pyro.poutine as poutine
    from pyro.poutine import subsample_messenger

    assert hasattr(subsample_messenger, "_Subsample"), \
        "pyro.poutine.subsample_messenger._Subsample is gone (used by pyro_arsm)"

    def model():
        with pyro.plate("data", 10, subsample_size=3):
            pass

    trace = poutine.trace(model).get_trace()
    assert isinstance(trace.nodes["data"]["fn"], subsample_messenger._Subsample), \
        "a subsampled plate's site no longer has a _Subsample fn"


def test_pyro_elbo_trace_hooks():
    """ARSM_ELBO runs its particles as ``ELBO._get_traces`` does, with two helpers of ``ELBO``:
    ``_vectorized_num_particles`` wraps a callable in the outermost particle plate, and
    ``_guess_max_plate_nesting`` sets ``max_plate_nesting`` (one more when vectorized)."""
    import pyro
    from pyro.infer.elbo import ELBO

    for name in ("_get_trace", "_vectorized_num_particles", "_guess_max_plate_nesting"):
        assert hasattr(ELBO, name), f"pyro.infer.elbo.ELBO.{name} is gone (used by ARSM_ELBO)"

    class Probe(ELBO):
        def _get_trace(self, model, guide, args, kwargs):
            raise AssertionError

    def model():
        with pyro.plate("a", 2, dim=-1), pyro.plate("b", 3, dim=-2):
            pyro.sample("x", pyro.distributions.Normal(0.0, 1.0))

    probe = Probe(num_particles=4, vectorize_particles=True)
    probe._guess_max_plate_nesting(model, model, (), {})
    assert probe.max_plate_nesting == 3, "ELBO._guess_max_plate_nesting no longer counts the " \
        "particle plate"
    trace = pyro.poutine.trace(probe._vectorized_num_particles(model)).get_trace()
    assert trace.nodes["x"]["value"].shape == (4, 3, 2), \
        "ELBO._vectorized_num_particles no longer adds the outermost particle plate"


def test_pyro_messenger_hooks():
    """_ARSMSampler and friends define ``_pyro_sample`` / ``_pyro_post_sample`` on a Messenger."""
    import pyro
    import pyro.distributions as dist
    from pyro.poutine.messenger import Messenger

    seen = []

    class Probe(Messenger):
        def _pyro_sample(self, msg):
            seen.append(("sample", msg["name"]))

        def _pyro_post_sample(self, msg):
            seen.append(("post", msg["name"]))

    with Probe():
        pyro.sample("x", dist.Normal(0.0, 1.0))
    assert seen == [("sample", "x"), ("post", "x")], \
        "Messenger no longer dispatches to _pyro_sample / _pyro_post_sample"


def test_pyro_private_autoguide_hooks():
    """AutoCategorical overrides ``AutoGuide._setup_prototype`` (and reads ``prototype_trace``),
    calls ``AutoGuide._create_plates`` and names its network ``f"{self._pyro_name}.network"``."""
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.infer.autoguide import AutoGuide

    for name in ("_setup_prototype", "_create_plates"):
        assert hasattr(AutoGuide, name), \
            f"pyro.infer.autoguide.AutoGuide.{name} is gone (used by pyro_arsm.autoguide)"

    def model():
        with pyro.plate("data", 4):
            pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))

    class Probe(AutoGuide):
        def forward(self, *args, **kwargs):
            return {}

    guide = Probe(model)
    guide._setup_prototype()
    assert guide.prototype_trace is not None and "z" in guide.prototype_trace.nodes
    plates = guide._create_plates()
    assert "data" in plates, "AutoGuide._create_plates no longer returns {name: plate}"
    assert isinstance(guide._pyro_name, str), "PyroModule._pyro_name is gone"


def test_pyro_public_helpers_pyro_arsm_imports():
    """The rest of what pyro_arsm imports from Pyro modules (not private, but not all in
    ``__all__`` either)."""
    from pyro.distributions.score_parts import ScoreParts
    from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
    from pyro.distributions.util import scale_and_mask
    from pyro.infer.autoguide.guides import prototype_hide_fn
    from pyro.infer.autoguide.utils import deep_setattr
    from pyro.infer.util import MultiFrameTensor, torch_backward, torch_item
    from pyro.ops.provenance import detach_provenance, get_provenance, track_provenance
    from pyro.ops.tensor_utils import periodic_repeat
    from pyro.poutine.util import prune_subsample_sites
    from pyro.util import check_model_guide_match, check_site_shape, warn_if_nan

    assert ScoreParts._fields == ("log_prob", "score_function", "entropy_term")
    del (ExpandedDistribution, MaskedDistribution, scale_and_mask, prototype_hide_fn, deep_setattr,
         MultiFrameTensor, torch_backward, torch_item, detach_provenance, get_provenance,
         track_provenance, periodic_repeat, prune_subsample_sites, check_model_guide_match,
         check_site_shape, warn_if_nan)


# --- NumPyro internals numpyro_arsm relies on (numpyro_arsm/_checks.py) --------------------------


def test_numpyro_private_validate_model():
    """_checks.py: ``from numpyro.util import _validate_model, check_model_guide_match``."""
    from numpyro import util

    assert hasattr(util, "_validate_model"), \
        "numpyro.util._validate_model is gone (used by numpyro_arsm._checks)"
    assert hasattr(util, "check_model_guide_match")
    params = inspect.signature(util._validate_model).parameters
    assert "plate_warning" in params, \
        "numpyro.util._validate_model no longer takes plate_warning (numpyro_arsm._checks uses it)"
