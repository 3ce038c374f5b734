"""What ``ARSM_ELBO`` refuses and what it warns about, and every text it says it with.

This module owns the checks of the ELBO's options, of a model/guide pair (raised at trace time),
of the logits' finiteness (one check per loss call, a single host callback under ``jit``) and
the choice of the warnings a real pass calls for. Each user-facing text is built by one
``*_message`` function here; ``ARSM_ELBO`` only decides when to raise or warn (once per site).
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.util import _validate_model, check_model_guide_match

# warn once about a site that needs more evaluations per step
_MANY_EVALUATIONS = 4096

# Under jax.sharding an unpartitioned callback runs on one device: when it raises, the other
# devices wait in the next collective until XLA aborts the process (40 s rendezvous timeout).
_PARTITIONED = ({"partitioned": True}
                if "partitioned" in inspect.signature(jax.debug.callback).parameters else {})


# ---------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------


def estimator_message(estimators, estimator):
    return f"ARSM_ELBO: estimator must be one of {estimators}, got {estimator!r}"


def pseudo_map_message(pseudo_map):
    return f"ARSM_ELBO: pseudo_map must be 'vmap' or 'map', got {pseudo_map!r}"


def num_rloo_samples_message():
    return "ARSM_ELBO: num_rloo_samples must be at least 2"


def analytic_kl_message(analytic_kl):
    return f"ARSM_ELBO: analytic_kl must be True or False, got {analytic_kl!r}"


def model_grads_message(model_grads):
    return f"ARSM_ELBO: model_grads must be 'real' or 'all', got {model_grads!r}"


def non_finite_logits_message(bad):
    """The sites ``bad`` (names) have NaN or infinite logits."""
    sites = ", ".join(f"'{n}'" for n in bad)
    return (
        f"ARSM_ELBO: guide site{'s' if len(bad) > 1 else ''} {sites} "
        f"{'have' if len(bad) > 1 else 'has'} NaN or infinite logits. ARSM needs finite "
        "logits: check the network or parameters producing them (NaN usually means a "
        "diverged optimizer), and use a large negative finite logit rather than -inf."
    )


def observed_in_guide_message(name):
    return (f"ARSM_ELBO: site '{name}' is observed in the model but sampled in the guide. "
            "Remove it from the guide (or do not observe it in the model).")


def enumerated_model_site_message(name, mark):
    return (
        f"ARSM_ELBO: model site '{name}' is marked infer={{'enumerate': {mark!r}}}; ARSM_ELBO "
        "sums out model sites marked 'parallel' only (as NumPyro's TraceEnum_ELBO does). Mark it "
        "'parallel', or add a guide site for it."
    )


def not_enumerable_message(name, fn):
    return (f"ARSM_ELBO: model site '{name}' is marked infer={{'enumerate': 'parallel'}}, but "
            f"its distribution ({type(fn).__name__}) has no enumerable support; add a guide "
            "site for it, or drop the mark.")


def missing_from_guide_message(name):
    return (f"ARSM_ELBO: latent site '{name}' of the model is missing from the guide; it would "
            "be sampled from the prior and the ELBO would be wrong. Add it to the guide.")


def guide_enumeration_message(name, mark):
    return (f"ARSM_ELBO: guide site '{name}' is marked infer={{'enumerate': {mark!r}}}; "
            "ARSM_ELBO sums out parallel enumeration only. Mark it 'parallel' "
            "(config_enumerate(guide, 'parallel'); the guide and model must then broadcast over "
            "an enumeration dim on the left) to sum it out exactly, or drop the mark to estimate "
            "its gradient with the ELBO's estimator.")


def score_function_message(name, fn):
    return (
        f"ARSM_ELBO: guide site '{name}' ({type(fn).__name__}) is neither categorical nor "
        "Bernoulli; it gets a score-function gradient with plate Rao-Blackwellization "
        "(unbiased, higher variance). Pass warn_score_function=False to silence this warning."
    )


def not_separable_message(name):
    return (f"ARSM_ELBO: the cost of guide site '{name}' is not element-separable (a term that "
            "depends on it lies outside its plates, or it has .to_event dims), so the exact "
            "local expectation does not apply; it gets ARSM instead.")


def many_evaluations_message(name, num_evaluations):
    return (
        f"ARSM_ELBO: guide site '{name}' needs {num_evaluations} model evaluations per step "
        "(whole-site swaps of a site whose cost is not element-separable). Bound the memory "
        "with pseudo_map='map' and pseudo_batch_size, or use estimator='ars' (C evaluations) "
        "or 'rloo' with a small num_rloo_samples; estimator='local' needs a separable cost."
    )


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def _check_options(estimators, estimator, pseudo_map, num_rloo_samples, analytic_kl=True,
                   model_grads="real"):
    """The ELBO's options, checked at construction."""
    if estimator not in estimators:
        raise ValueError(estimator_message(estimators, estimator))
    if not isinstance(analytic_kl, (bool, np.bool_)):
        raise ValueError(analytic_kl_message(analytic_kl))
    if model_grads not in ("real", "all"):
        raise ValueError(model_grads_message(model_grads))
    if pseudo_map not in ("vmap", "map"):
        raise ValueError(pseudo_map_message(pseudo_map))
    if num_rloo_samples is not None and num_rloo_samples < 2:
        raise ValueError(num_rloo_samples_message())


def _check_sites(model_trace, guide_trace, marked=None):
    """Errors for a model/guide pair ARSM cannot estimate (raised at trace time); ``marked``:
    the model sites absent from the guide marked for enumeration, with their marks."""
    marked = marked or {}
    for name, site in model_trace.items():
        if site["type"] != "sample":
            continue
        guide_site = guide_trace.get(name)
        if site.get("is_observed", False):
            if guide_site is not None and guide_site["type"] == "sample":
                raise ValueError(observed_in_guide_message(name))
            continue
        if guide_site is None:
            if marked.get(name) == "parallel":
                if not site["fn"].has_enumerate_support:
                    raise ValueError(not_enumerable_message(name, site["fn"]))
                continue
            if name in marked:
                raise NotImplementedError(enumerated_model_site_message(name, marked[name]))
            raise ValueError(missing_from_guide_message(name))
    # NumPyro's own checks, as TraceGraph_ELBO runs them: a warning for guide sites absent
    # from the model, an error for shapes that disagree, a warning for a missing plate
    check_model_guide_match(model_trace, guide_trace)
    _validate_model(model_trace, plate_warning="strict")


def _site_warnings(guide_trace, sampler, warn_score_function):
    """The warnings a real pass calls for, as ``[(key, message)]`` (the ELBO gives each key one
    warning): sites that get the score-function fallback (not those marked for enumeration)."""
    found = []
    if not warn_score_function:
        return found
    for name, site in guide_trace.items():
        if (site["type"] != "sample" or site.get("is_observed", False)
                or site["fn"].has_rsample or name in sampler.noise
                or name in sampler.enumerated):
            continue
        found.append((("score_function", name), score_function_message(name, site["fn"])))
    return found


def _raise_if_not_finite(names, finite):
    bad = [n for n, ok in zip(names, finite, strict=True) if not bool(ok)]
    if bad:
        raise ValueError(non_finite_logits_message(bad))


def _check_finite(flags):
    """One finiteness check per loss call: ``flags`` maps site names to boolean arrays (any
    shape: particles, pseudo actions) that must all be true. Under tracing this is a single host
    callback, whatever the number of particles and pseudo actions; it is partitioned, so that
    under ``jax.sharding`` every device runs it on the reduced (scalar, replicated) flags and
    raises."""
    if not flags:
        return
    names = sorted(flags)
    finite = [jnp.all(flags[n]) for n in names]
    if any(isinstance(ok, jax.core.Tracer) for ok in finite):
        jax.debug.callback(lambda *ok: _raise_if_not_finite(names, ok), *finite, **_PARTITIONED)
    else:
        _raise_if_not_finite(names, finite)


def _merge_flags(*flag_dicts):
    """Logical AND, per site, of finiteness flags (each reduced to a scalar)."""
    merged = {}
    for flags in flag_dicts:
        for name, ok in flags.items():
            ok = jnp.all(ok)
            merged[name] = ok if name not in merged else merged[name] & ok
    return merged
