"""Per-model comparison of gradient estimators: how a user picks ARSM or RLOO honestly.

Dong, Mnih & Tucker (NeurIPS 2021) report that ARSM often loses to REINFORCE with leave-one-out
baselines (RLOO) at an equal number of function evaluations; which one wins depends on the model.
:func:`compare_estimators` measures it on *your* model at its current parameters.
"""

import statistics
import time
from typing import Callable, Optional, Sequence

import pyro.poutine as poutine
import torch
from pyro.infer import TraceGraph_ELBO

from pyro_arsm.elbo import ARSM_ELBO
from pyro_arsm.estimators import ESTIMATORS

__all__ = ["compare_estimators", "format_table"]

# every estimator but "local" (exact only on element-separable sites), and Pyro's own
DEFAULT_ESTIMATORS = tuple(n for n in ESTIMATORS if n != "local") + ("tracegraph",)


def _make_elbo(name, max_plate_nesting, elbo_kwargs):
    if name == "tracegraph":
        return TraceGraph_ELBO(max_plate_nesting=max_plate_nesting)
    if name.startswith("rloo"):
        # "rloo" (the ARSM budget) or "rloo:n" (n samples per site)
        n = int(name.split(":")[1]) if ":" in name else None
        return ARSM_ELBO(estimator="rloo", num_rloo_samples=n,
                         max_plate_nesting=max_plate_nesting, **elbo_kwargs)
    return ARSM_ELBO(estimator=name, max_plate_nesting=max_plate_nesting, **elbo_kwargs)


def compare_estimators(model: Callable, guide: Callable, *args,
                       estimators: Sequence[str] = DEFAULT_ESTIMATORS, num_draws: int = 30,
                       max_plate_nesting: float = float("inf"), print_table: bool = True,
                       elbo_kwargs: Optional[dict] = None, **kwargs) -> list:
    """Gradient variance and cost of each estimator on ``model`` / ``guide`` at the current
    parameters (the param store is not changed).

    For each estimator, ``num_draws`` gradient estimates of all parameters the model and guide use
    (unconstrained, as an optimizer sees them) are drawn after one untimed warm-up call.

    :param estimators: names among ``"arsm"``, ``"ars"``, ``"ar"``, ``"local"`` (the exact local
        expectation, for element-separable sites), ``"rloo"`` (RLOO with the ARSM budget),
        ``"rloo:n"`` (RLOO with ``n`` samples per site) and ``"tracegraph"``
        (:class:`~pyro.infer.TraceGraph_ELBO`).
    :param int num_draws: gradient estimates per estimator.
    :param max_plate_nesting: passed to every ELBO.
    :param dict elbo_kwargs: extra arguments for :class:`~pyro_arsm.ARSM_ELBO`.
    :returns: a list of dicts, one per estimator: ``estimator``, ``variance`` (trace of the
        covariance of the gradient), ``guide_variance`` and ``model_variance`` (the same for the
        guide's parameters, e.g. an encoder, and for the model's others, e.g. a decoder),
        ``seconds`` (median seconds per estimate),
        ``variance_x_seconds`` (lower is better: variance reached per second of compute),
        ``evaluations`` (model evaluations in the last estimate: the real passes plus the
        distinct pseudo actions).
    """
    elbo_kwargs = elbo_kwargs or {}
    with poutine.trace(param_only=True) as capture:
        ARSM_ELBO(max_plate_nesting=max_plate_nesting, **elbo_kwargs).loss(
            model, guide, *args, **kwargs)
    params = [site["value"].unconstrained() for site in capture.trace.nodes.values()]
    guide_names = _guide_param_names(guide, args, kwargs)
    in_guide = torch.tensor([name in guide_names for name in capture.trace.nodes
                             for _ in range(capture.trace.nodes[name]["value"].numel())],
                            dtype=torch.bool)
    saved = [p.grad for p in params]
    rows = []
    try:
        for name in estimators:
            elbo = _make_elbo(name, max_plate_nesting, elbo_kwargs)
            draws, seconds = _gradient_draws(elbo, params, num_draws, model, guide, args, kwargs)
            per_coordinate = draws.var(0)
            variance = per_coordinate.sum().item()
            median = statistics.median(seconds)
            rows.append({
                "estimator": name,
                "variance": variance,
                "guide_variance": per_coordinate[in_guide].sum().item(),
                "model_variance": per_coordinate[~in_guide].sum().item(),
                "seconds": median,
                "variance_x_seconds": variance * median,
                # model evaluations per estimate: the real passes plus the pseudo passes
                "evaluations": elbo.num_particles + getattr(elbo, "last_num_pseudo_evaluations",
                                                            0),
            })
    finally:
        for p, g in zip(params, saved, strict=True):
            p.grad = g
    if print_table:
        print(format_table(rows))
    return rows


def _guide_param_names(guide, args, kwargs):
    """The names of the parameters the guide uses (the model's are the rest)."""
    with torch.no_grad(), poutine.trace(param_only=True) as capture:
        poutine.block(guide, hide_types=["sample"])(*args, **kwargs)
    return set(capture.trace.nodes)


def _gradient_draws(elbo, params, num_draws, model, guide, args, kwargs):
    """``num_draws`` flattened gradients ``[num_draws, D]`` of ``params`` and the seconds each
    took, after one untimed warm-up call (first-call costs: dependency analysis, caches)."""
    draws, seconds = [], []
    for i in range(num_draws + 1):
        for p in params:
            p.grad = None
        start = time.perf_counter()
        elbo.loss_and_grads(model, guide, *args, **kwargs)
        elapsed = time.perf_counter() - start
        if i == 0:
            continue
        seconds.append(elapsed)
        draws.append(torch.cat([
            (torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in params]))
    return torch.stack(draws), seconds


def format_table(rows: list) -> str:
    """A markdown table of :func:`compare_estimators`' rows."""
    lines = ["| estimator | gradient variance | guide | model | ms per estimate "
             "| variance × seconds | model evaluations |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['estimator']} | {r['variance']:.4g} | {r['guide_variance']:.4g} "
                     f"| {r['model_variance']:.4g} | {1000 * r['seconds']:.2f} "
                     f"| {r['variance_x_seconds']:.4g} | {r['evaluations']} |")
    return "\n".join(lines)
