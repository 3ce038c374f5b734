"""Every Pyro internal that ``pyro_arsm`` relies on, in one place.

Pyro does not promise these names across releases; ``pyproject.toml`` bounds ``pyro-ppl`` to the
tested range and ``tests/test_packaging.py`` checks that each still exists and behaves as used
here. A Pyro release that moves one fails at import with a message naming it.
"""

try:
    from pyro.distributions.distribution import Distribution
    from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
    from pyro.infer.autoguide.guides import prototype_hide_fn
    from pyro.infer.traceenum_elbo import _compute_dice_elbo
    from pyro.infer.tracegraph_elbo import TrackNonReparam
    from pyro.infer.tracegraph_elbo import _compute_elbo as _tracegraph_compute_elbo
    from pyro.ops.provenance import get_provenance, track_provenance
    from pyro.poutine.subsample_messenger import _Subsample
except ImportError as e:  # pragma: no cover - only with an untested Pyro release
    raise ImportError(
        f"pyro_arsm needs Pyro internals that this pyro-ppl release lacks ({e}); pyro_arsm is "
        "tested with pyro-ppl>=1.9.2,<1.10") from e

__all__ = ["TrackNonReparam", "TrackScored", "dice_elbo", "is_subsample",
           "partially_reparameterized", "prototype_hide_fn", "tracegraph_elbo"]


def dice_elbo(model_trace, guide_trace):
    """TraceEnum_ELBO's differentiable ELBO of one particle's packed traces (enumerated sites
    summed with their weights, DiCE factors for the sampled ones)."""
    return _compute_dice_elbo(model_trace, guide_trace)


def tracegraph_elbo(model_trace, guide_trace):
    """``(elbo, surrogate_loss)`` of TraceGraph_ELBO for one particle's traces (its
    provenance-based Rao-Blackwellization and baselines for score-function sites)."""
    return _tracegraph_compute_elbo(model_trace, guide_trace)


def is_subsample(fn):
    """Whether a site's distribution is the subsample-index site of a ``pyro.plate``."""
    return isinstance(fn, _Subsample)


def partially_reparameterized(fn):
    """Whether a distribution has ``rsample`` and a score-function part besides (``Rejector``
    and its kin override ``score_parts``); TraceGraph_ELBO drops that part, Trace_ELBO keeps it."""
    while isinstance(fn, (MaskedDistribution, ExpandedDistribution)):
        fn = fn.base_dist
    return (getattr(fn, "has_rsample", False)
            and type(fn).score_parts is not Distribution.score_parts)


class TrackScored(TrackNonReparam):
    """:class:`TrackNonReparam` that also tracks partially reparameterized sites, so that their
    score-function terms get their downstream costs in TraceGraph's ``_compute_elbo``.

    With ``score_parts`` (a pass that samples), such a site's score parts are computed from the
    value it sampled before the value is wrapped for tracking (``ShapeAugmentedGamma`` computes
    them from a cache keyed on that very tensor), with the site's own name in the provenance of
    its log-probability."""

    def __init__(self, score_parts=True):
        super().__init__()
        self.score_parts = score_parts

    def _pyro_post_sample(self, msg):
        super()._pyro_post_sample(msg)
        if (msg["type"] != "sample" or msg["is_observed"] or is_subsample(msg["fn"])
                or not partially_reparameterized(msg["fn"])):
            return
        name = frozenset({msg["name"]})
        if self.score_parts:
            parts = msg["fn"].score_parts(msg["value"], *msg["args"], **msg["kwargs"])
            msg["unscaled_log_prob"] = parts.log_prob
            parts = parts.scale_and_mask(msg["scale"], msg["mask"])
            log_prob = track_provenance(parts.log_prob, name | get_provenance(parts.log_prob))
            msg["score_parts"] = parts._replace(log_prob=log_prob)
            msg["log_prob"] = log_prob
            msg["log_prob_sum"] = log_prob.sum()
        msg["value"] = track_provenance(msg["value"], name)
