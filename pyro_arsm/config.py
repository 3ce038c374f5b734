"""The estimator of each guide site: chosen per site in its ``infer`` dict, or for a whole guide
with :func:`config_estimator`, in the idiom of Pyro's ``config_enumerate`` (the NumPyro package has
the same functions)."""

import functools

from pyro.poutine import infer_config

from pyro_arsm._sites import arsm_kind
from pyro_arsm.estimators import ESTIMATORS

__all__ = ["config_estimator", "site_estimator"]

#: The keys of a guide site's ``infer`` dict that choose its estimator.
ESTIMATOR_KEYS = ("estimator", "num_samples")


def config_estimator(fn=None, estimator="arsm", *, num_samples=None, predicate=None):
    """Chooses the estimator of a guide's discrete sites, in the style of ``config_enumerate``.

    Sets ``infer={"estimator": estimator}`` (and ``"num_samples"`` for ``"rloo"``) on every
    categorical or Bernoulli sample site of ``fn`` for which ``predicate(site)`` holds (default:
    all), overriding the ELBO's ``estimator`` for those sites. A site's own
    ``infer={"estimator": ...}`` does the same for one site. Usable as a decorator, with or
    without arguments::

        @config_estimator(estimator="rloo", num_samples=8,
                          predicate=lambda site: site["name"].startswith("code"))
        def guide(data):
            ...

    :param str estimator: an estimator name (``estimators.ESTIMATORS``).
    :param int num_samples: RLOO's samples per site (``estimator="rloo"`` only).
    :param callable predicate: ``site -> bool``, the sites to configure.
    """
    _check_choice("config_estimator", estimator, num_samples)
    if fn is None:
        return functools.partial(config_estimator, estimator=estimator, num_samples=num_samples,
                                 predicate=predicate)

    def config_fn(site):
        if site["type"] != "sample" or site["is_observed"] or arsm_kind(site["fn"])[0] is None:
            return {}
        if predicate is not None and not predicate(site):
            return {}
        config = {"estimator": estimator}
        if num_samples is not None:
            config["num_samples"] = num_samples
        return config

    return infer_config(fn, config_fn)


def site_estimator(name, infer, estimator, num_samples):
    """``(estimator, num_samples)`` of guide site ``name``: those its ``infer`` dict names, else
    the ELBO's ``estimator`` and ``num_samples`` (its ``num_rloo_samples``).

    A ``"num_samples"`` without an ``"estimator"`` is left to whoever set it (``TraceEnum_ELBO``
    reads it too); with one, it must go with ``"rloo"``. Errors name the site."""
    if "estimator" not in infer:
        return estimator, num_samples
    if infer.get("enumerate"):
        raise ValueError(
            f"ARSM_ELBO: guide site '{name}' is marked both for enumeration "
            f"(infer={{'enumerate': {infer['enumerate']!r}}}) and with an estimator "
            f"({infer['estimator']!r}); a site is either summed out or estimated: drop one.")
    _check_choice(f"guide site '{name}'", infer["estimator"], infer.get("num_samples"))
    return infer["estimator"], infer.get("num_samples", num_samples)


def _check_choice(where, estimator, num_samples):
    if estimator not in ESTIMATORS:
        raise ValueError(f"ARSM_ELBO: {where}: unknown estimator {estimator!r}; the estimators "
                         f"are {ESTIMATORS}")
    if num_samples is not None and estimator != "rloo":
        raise ValueError(f"ARSM_ELBO: {where}: num_samples applies to estimator='rloo' only, "
                         f"not {estimator!r}")
    if num_samples is not None and num_samples < 2:
        raise ValueError(f"ARSM_ELBO: {where}: num_samples must be at least 2, got "
                         f"{num_samples}")
