"""What ``ARSM_ELBO`` checks before it estimates anything, and every text it warns or raises with.

Owns: the validation of the ELBO's arguments, the checks of a real pass's sites (latent sites
missing from the guide, model-side enumeration, observed sites sampled in the guide, sites that
fall back to the score function), the once-per-ELBO warning registry, and one message builder per
user-facing message, so that the eager path, the compiled path and the sampler say the same thing.
"""

import warnings

from pyro_arsm._pyro_internals import is_subsample
from pyro_arsm._sites import arsm_kind
from pyro_arsm.estimators import ESTIMATORS

__all__ = ["WarnOnce", "check_arguments", "check_sites"]


class WarnOnce:
    """Warns at most once per key over the life of an ELBO."""

    def __init__(self):
        self.keys = set()

    def __call__(self, key, message, stacklevel=5):
        if key not in self.keys:
            self.keys.add(key)
            warnings.warn(message, stacklevel=stacklevel)


MODEL_GRADS = ("real", "all")


def check_arguments(estimator, num_rloo_samples, vectorize_pseudo, pseudo_batch_size,
                    model_grads="real"):
    """Raises on an argument of ``ARSM_ELBO`` outside its domain."""
    if model_grads not in MODEL_GRADS:
        raise ValueError(f"ARSM_ELBO: model_grads must be one of {MODEL_GRADS}, got "
                         f"{model_grads!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"ARSM_ELBO: estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if num_rloo_samples is not None and num_rloo_samples < 2:
        raise ValueError("ARSM_ELBO: num_rloo_samples must be at least 2")
    if vectorize_pseudo not in ("auto", True, False):
        raise ValueError("ARSM_ELBO: vectorize_pseudo must be 'auto', True or False, got "
                         f"{vectorize_pseudo!r}")
    if pseudo_batch_size is not None and pseudo_batch_size < 1:
        raise ValueError("ARSM_ELBO: pseudo_batch_size must be a positive integer or None")


def check_sites(model_trace, guide_trace, warn, warn_score_function):
    """Checks one real pass's traces: raises on a model the ELBO would get wrong, warns (once, via
    ``warn``) about score-function sites and ignored baselines."""
    for name, site in model_trace.nodes.items():
        if site["type"] == "sample" and not is_subsample(site["fn"]):
            _check_model_site(name, site, guide_trace.nodes.get(name))
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or is_subsample(site["fn"]):
            continue
        if site["is_observed"] or getattr(site["fn"], "has_rsample", False):
            continue
        kind, _ = arsm_kind(site["fn"])
        if kind is None and warn_score_function:
            warn(("score_function", name), (
                f"ARSM_ELBO: guide site '{name}' ({type(site['fn']).__name__}) is neither "
                "categorical nor Bernoulli; it gets the TraceGraph_ELBO score-function "
                "gradient (unbiased, higher variance). Pass warn_score_function=False to "
                "silence this."))
        if kind is not None and site["infer"].get("baseline"):
            warn(("baseline", name), (
                f"ARSM_ELBO: the baseline of site '{name}' is ignored: ARSM gets its "
                "variance reduction from the swap table and needs no baseline."))


def _check_model_site(name, site, guide_site):
    if site["is_observed"]:
        if guide_site is not None and guide_site["type"] == "sample":
            raise ValueError(
                f"ARSM_ELBO: site '{name}' is observed in the model but sampled in the "
                "guide. Remove it from the guide (or do not observe it in the model).")
        return
    if guide_site is not None or site["infer"].get("_enumerate_dim") is not None:
        return  # (an enumerated site is summed out)
    if site["infer"].get("enumerate") == "sequential":
        raise ValueError(
            f"ARSM_ELBO: model site '{name}' is marked for sequential enumeration, which "
            "ARSM_ELBO does not support; mark it infer={'enumerate': 'parallel'} (summed out in "
            "one vectorized pass, as TraceEnum_ELBO does).")
    if site["infer"].get("enumerate"):
        raise ValueError(
            f"ARSM_ELBO: model site '{name}' is enumerated in the model "
            f"(infer={{'enumerate': {site['infer']['enumerate']!r}}}) and absent from "
            "the guide. ARSM needs the discrete latent in the guide: add a guide site "
            f"pyro.sample('{name}', dist.Categorical(...)) and drop the model-side "
            "enumeration, or keep TraceEnum_ELBO for this model.")
    raise ValueError(
        f"ARSM_ELBO: latent site '{name}' of the model is missing from the guide; it "
        "would be sampled from the prior and the ELBO would be wrong. Add it to the guide.")


# ---------------------------------------------------------------------------------------------
# Message builders
# ---------------------------------------------------------------------------------------------


def finite_logits_message(name, bad="NaN or infinite", owner="ARSM_ELBO"):
    """A guide site's logits are NaN or infinite."""
    return (f"{owner}: guide site '{name}' has {bad} logits. ARSM needs finite logits: check the "
            "network or parameters producing them (NaN usually means a diverged optimizer), and "
            "use a large negative finite logit rather than -inf to make a category nearly "
            "impossible.")


NESTING_NOTE = ("ARSM_ELBO ran this model without enumerating its marked sites, because "
                "max_plate_nesting was not given: a model written for TraceEnum_ELBO needs "
                "ARSM_ELBO(max_plate_nesting=...), as TraceEnum_ELBO does.")


def nesting_not_guessed(error):
    return (f"ARSM_ELBO: the model enumerates sites, which needs max_plate_nesting, and guessing "
            f"it from a trace without enumeration failed ({failure(error)}). Pass "
            "ARSM_ELBO(max_plate_nesting=...), the deepest plate nesting of model and guide, as "
            "for TraceEnum_ELBO.")


def guide_messenger_message():
    return ("ARSM_ELBO does not support GuideMessenger guides (e.g. AutoNormalMessenger); use a "
            "callable guide or an AutoGuide.")


def guide_enumeration_message(name, mark):
    return (f"ARSM_ELBO: guide site '{name}' is marked infer={{'enumerate': {mark!r}}}; "
            "ARSM_ELBO sums out parallel enumeration only. Mark it 'parallel' "
            "(config_enumerate(guide, 'parallel'); the guide and model must then broadcast over "
            "an enumeration dim on the left) to sum it out exactly, or drop the mark to estimate "
            "its gradient with the ELBO's estimator.")


def not_separable_message(name):
    return (f"ARSM_ELBO: the cost of guide site '{name}' is not element-separable (a term that "
            "depends on it lies outside its plates, or it has .to_event dims), so the exact "
            "local expectation does not apply; it gets ARSM instead.")


def many_evaluations_message(name, num_evaluations):
    return (f"ARSM_ELBO: guide site '{name}' needs {num_evaluations} model evaluations per step "
            "(whole-site swaps of a site whose cost is not element-separable). Bound the memory "
            "with pseudo_batch_size, or use estimator='ars' (C evaluations) or 'rloo' with a "
            "small num_rloo_samples; estimator='local' needs a separable cost.")


def batched_failed_message(name, problem, num_actions, dim):
    """The batched pseudo pass of a site cannot be used (the start of the warning or error)."""
    return (f"ARSM_ELBO: the batched pseudo-action pass for guide site '{name}' {problem}. "
            f"ARSM_ELBO evaluates the pseudo actions of a site ({num_actions} this step) in one "
            f"pass under a plate at dim {dim}, which needs model and guide to broadcast on the "
            "left: no x.view(batch, -1), len(z), .item(), z[0] or torch.cat along a fixed dim on "
            "values that depend on a sample (use dim=-1, Vindex, and declare batch dims with "
            "pyro.plate); set max_plate_nesting if the guess was wrong.")


BATCHED_REQUIRED = (" Pass ARSM_ELBO(vectorize_pseudo=False) (or the default 'auto') to evaluate "
                    "pseudo actions one at a time.")
FALLING_BACK = (" Its pseudo actions are evaluated one at a time instead (correct, slower); pass "
                "vectorize_pseudo=False to silence this warning.")


def failure(error):
    """``failed (Type: first line of the message)``: Pyro appends whole trace-shape tables."""
    lines = str(error).strip().splitlines()
    return f"failed ({type(error).__name__}: {lines[0] if lines else ''})"


def missing_pseudo_dim_message(site, shape, size, dim):
    return (f"gives site '{site}' a log-prob of shape {tuple(shape)}, without the {size} pseudo "
            f"actions at dim {dim}")


def cost_shape_message(name, shape, expand_shape):
    return (f"ARSM_ELBO: the cost of site '{name}' has shape {tuple(shape)}, which does not "
            f"broadcast to the site's batch shape {tuple(expand_shape)}. Declare every batch "
            "dimension with pyro.plate (or use .to_event) in both model and guide.")


def compiled_needs_cached_dependencies(owner):
    return (f"{owner} needs the dependencies of every ARSM site cached once per model structure: "
            "it does not support guides with score-function sites (neither categorical, "
            "Bernoulli nor reparameterizable) or cache_dependencies=False. Use ARSM_ELBO for "
            "this model.")


def compiled_needs_batched_pass(owner, name):
    return (f"{owner}: guide site '{name}' needs its pseudo actions evaluated one at a time (see "
            "the warning above), which cannot be compiled. Make model and guide broadcast on the "
            "left, or use ARSM_ELBO.")
