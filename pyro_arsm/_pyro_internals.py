"""Every Pyro internal that ``pyro_arsm`` relies on, in one place.

Pyro does not promise these names across releases; ``pyproject.toml`` bounds ``pyro-ppl`` to the
tested range and ``tests/test_packaging.py`` checks that each still exists and behaves as used
here. A Pyro release that moves one fails at import with a message naming it.
"""

try:
    from pyro.infer.autoguide.guides import prototype_hide_fn
    from pyro.infer.tracegraph_elbo import TrackNonReparam
    from pyro.infer.tracegraph_elbo import _compute_elbo as _tracegraph_compute_elbo
    from pyro.poutine.subsample_messenger import _Subsample
except ImportError as e:  # pragma: no cover - only with an untested Pyro release
    raise ImportError(
        f"pyro_arsm needs Pyro internals that this pyro-ppl release lacks ({e}); pyro_arsm is "
        "tested with pyro-ppl>=1.9.2,<1.10") from e

__all__ = ["TrackNonReparam", "is_subsample", "prototype_hide_fn", "tracegraph_elbo"]


def tracegraph_elbo(model_trace, guide_trace):
    """``(elbo, surrogate_loss)`` of TraceGraph_ELBO for one particle's traces (its
    provenance-based Rao-Blackwellization and baselines for score-function sites)."""
    return _tracegraph_compute_elbo(model_trace, guide_trace)


def is_subsample(fn):
    """Whether a site's distribution is the subsample-index site of a ``pyro.plate``."""
    return isinstance(fn, _Subsample)
