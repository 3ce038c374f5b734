"""Which model and guide sites depend on a guide site: their log-probabilities make up its cost.

NumPyro's provenance (``get_nonreparam_deps``) runs guide and model once per particle at the real
pass's latent values and maps every sample site to the non-reparameterized guide sites its
log-probability depends on; :class:`_Dependencies` holds that map and answers, for one site,
which sites of a pair of traces (real or pseudo pass) depend on it.
"""

from typing import NamedTuple

from numpyro.infer.elbo import get_nonreparam_deps

from numpyro_arsm._sampler import _fresh


class _Dependencies(NamedTuple):
    """Site name -> the guide sites its log-prob depends on, for model and guide sites; and the
    ARSM sites whose ``log p - log q`` is the closed-form ``-KL`` (``analytic_kl``)."""

    model: dict
    guide: dict
    kl: frozenset = frozenset()

    def dependent_sites(self, name, model_trace, guide_trace):
        """``(site name, sign, site)`` of every sample site whose log-prob depends on guide site
        ``name``: the model's (``+1``), then the guide's (``-1``), each in trace order."""
        for trace, sign, deps in ((model_trace, 1.0, self.model), (guide_trace, -1.0, self.guide)):
            for n, site in trace.items():
                if site["type"] == "sample" and name in deps.get(n, ()):
                    yield n, sign, site


def _dependencies(particle, guide_trace, model_trace=None):
    """The :class:`_Dependencies` of a particle (a ``_sampler._Particle``), from provenance at
    the latent values of its real pass's ``guide_trace`` (and of the model's own latent sites in
    ``model_trace``, e.g. those it enumerates: TraceEnum_ELBO's groups need them)."""
    latents = {
        n: s["value"] for tr in (model_trace or {}, guide_trace) for n, s in tr.items()
        if s["type"] == "sample" and not s.get("is_observed", False)
    }
    model_deps, guide_deps = get_nonreparam_deps(
        particle.model, particle.guide, particle.args, particle.kwargs,
        _fresh(particle.param_map), latents=latents)
    return _Dependencies(model_deps, guide_deps)
