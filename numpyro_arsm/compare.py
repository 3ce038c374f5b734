"""Per-model comparison of gradient estimators (NumPyro twin of ``pyro_arsm.compare``).

Dong, Mnih & Tucker (NeurIPS 2021) report that ARSM often loses to REINFORCE with leave-one-out
baselines (RLOO) at an equal number of function evaluations; which one wins depends on the model.
:func:`compare_estimators` measures it on *your* model at given parameters.
"""

import statistics
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np
from numpyro.handlers import seed, substitute, trace
from numpyro.infer import TraceGraph_ELBO

from numpyro_arsm.elbo import ARSM_ELBO
from numpyro_arsm.estimators import ESTIMATORS

__all__ = ["compare_estimators", "format_table"]

# every estimator but "local" (exact only on element-separable sites), and NumPyro's own
DEFAULT_ESTIMATORS = tuple(n for n in ESTIMATORS if n != "local") + ("tracegraph",)


def _make_elbo(name, elbo_kwargs):
    if name == "tracegraph":
        # NB: NumPyro 0.22's TraceGraph_ELBO counts handlers.scale / subsampling twice
        return TraceGraph_ELBO()
    if name.startswith("rloo"):
        n = int(name.split(":")[1]) if ":" in name else None
        return ARSM_ELBO(estimator="rloo", num_rloo_samples=n, **elbo_kwargs)
    return ARSM_ELBO(estimator=name, **elbo_kwargs)


def compare_estimators(model: Callable, guide: Callable, params: dict, *args,
                       rng_key: Optional[jax.Array] = None,
                       estimators: Sequence[str] = DEFAULT_ESTIMATORS, num_draws: int = 30,
                       print_table: bool = True, elbo_kwargs: Optional[dict] = None,
                       **kwargs) -> list:
    """Gradient variance and cost of each estimator on ``model`` / ``guide`` at ``params`` (a
    dict of constrained parameter values, e.g. ``svi.get_params(state)``).

    Each estimator's gradient function is jitted; its first call (compile) is timed separately
    and ``num_draws`` further calls give the variance and the median seconds per estimate.

    :param estimators: names among ``"arsm"``, ``"ars"``, ``"ar"``, ``"local"``, ``"rloo"``,
        ``"rloo:n"`` and
        ``"tracegraph"`` (NumPyro's TraceGraph_ELBO).
    :param dict elbo_kwargs: extra arguments for every :class:`~numpyro_arsm.ARSM_ELBO` (e.g.
        ``analytic_kl``, ``model_grads``).
    :returns: a list of dicts: ``estimator``, ``variance`` (trace of the covariance of the
        gradient w.r.t. ``params``), ``guide_variance`` and ``model_variance`` (the same for the
        parameters the guide uses, e.g. an encoder, and for the others, the model's, e.g. a
        decoder), ``seconds``, ``variance_x_seconds``, ``evaluations`` (model evaluations per
        estimate), ``compile_seconds``.
    """
    elbo_kwargs = elbo_kwargs or {}
    rng_key = jax.random.PRNGKey(0) if rng_key is None else rng_key
    guide_names = _guide_param_names(guide, params, rng_key, args, kwargs)
    in_guide = None
    rows = []
    for name in estimators:
        elbo = _make_elbo(name, elbo_kwargs)
        grad = jax.jit(jax.grad(
            lambda p, k, elbo=elbo: elbo.loss(k, p, model, guide, *args, **kwargs)))
        keys = jax.random.split(jax.random.fold_in(rng_key, len(rows)), num_draws + 1)
        start = time.perf_counter()
        jax.block_until_ready(grad(params, keys[0]))
        compile_seconds = time.perf_counter() - start
        draws, seconds = [], []
        for key in keys[1:]:
            start = time.perf_counter()
            g = jax.block_until_ready(grad(params, key))
            seconds.append(time.perf_counter() - start)
            draws.append(np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g)]))
        if in_guide is None:  # which coordinates are the guide's, in the gradient's layout
            in_guide = _in_guide(g, guide_names)
        per_coordinate = np.var(np.stack(draws), axis=0, ddof=1)
        variance = float(per_coordinate.sum())
        median = statistics.median(seconds)
        rows.append({
            "estimator": name,
            "variance": variance,
            "guide_variance": float(per_coordinate[in_guide].sum()),
            "model_variance": float(per_coordinate[~in_guide].sum()),
            "seconds": median,
            "variance_x_seconds": variance * median,
            # the real passes and the pseudo passes, counted by the ELBO when the loss was
            # traced (compiled) above
            "evaluations": (1 if name == "tracegraph" else
                            elbo.num_particles + elbo.last_num_pseudo_evaluations),
            "compile_seconds": compile_seconds,
        })
    if print_table:
        print(format_table(rows))
    return rows


def _guide_param_names(guide, params, rng_key, args, kwargs):
    """The names of the parameters the guide uses (the model's are the rest), from one traced
    run of the guide at ``params``."""
    guide_trace = trace(seed(substitute(guide, data=params), rng_key)).get_trace(*args, **kwargs)
    return {n for n, s in guide_trace.items() if s["type"] == "param"}


def _in_guide(grads, guide_names):
    """A boolean mask over the flattened gradient (``tree_leaves`` order): the coordinates of
    the parameters in ``guide_names`` (the top-level keys of ``grads``)."""
    mask = [np.full(np.size(leaf), bool(path) and getattr(path[0], "key", None) in guide_names)
            for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]]
    return np.concatenate(mask) if mask else np.zeros(0, dtype=bool)


def format_table(rows: list) -> str:
    """A markdown table of :func:`compare_estimators`' rows."""
    lines = ["| estimator | gradient variance | guide | model | ms per estimate "
             "| variance × seconds | model evaluations | compile s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['estimator']} | {r['variance']:.4g} | {r['guide_variance']:.4g} "
                     f"| {r['model_variance']:.4g} | {1000 * r['seconds']:.2f} "
                     f"| {r['variance_x_seconds']:.4g} | {r['evaluations']} "
                     f"| {r['compile_seconds']:.2f} |")
    return "\n".join(lines)

