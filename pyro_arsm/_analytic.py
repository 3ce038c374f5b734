"""Closed-form KL terms of ARSM guide sites (``analytic_kl=True``).

Owns: which ARSM sites of a pass get their own ``E_q[log q(z) - log p(z)]`` in closed form
(:func:`analytic_sites`), the scaled and masked KL of one site (:func:`kl_term`, as
:class:`~pyro.infer.TraceMeanField_ELBO` computes it) and its substitution into the real pass's
model trace (:func:`substitute`), so that the ELBO, the surrogate and TraceGraph_ELBO's
downstream costs of score-function sites all see ``-KL`` where they saw
``log p(z) - log q(z)``. :func:`pyro_arsm._costs.pass_cost` drops the site's own terms from its
sampled cost and puts ``-KL`` in the cost of every other site that depends on it.
"""

import torch
from pyro.distributions.util import scale_and_mask
from torch.distributions import kl_divergence

__all__ = ["analytic_sites", "kl_term", "substitute"]


def kl_term(model_site, guide_site):
    """``KL(q || p)`` of one site, scaled and masked as its log-probabilities are, with the
    guide's batch shape; ``None`` where no closed form is registered for the pair."""
    try:
        kl = kl_divergence(guide_site["fn"], model_site["fn"])
    except NotImplementedError:
        return None
    kl = scale_and_mask(kl, scale=guide_site["scale"], mask=guide_site["mask"])
    batch_shape = tuple(guide_site["fn"].batch_shape)
    if not isinstance(kl, torch.Tensor):
        return torch.full(batch_shape, float(kl))
    if tuple(kl.shape) != batch_shape:
        try:
            kl = kl.expand(batch_shape)
        except RuntimeError:
            return None
    return kl


def _same(a, b):
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        return a.shape == b.shape and bool((a == b).all())
    return a == b


def analytic_sites(model_trace, guide_trace, raw_model_trace, names, downstream_of):
    """The ARSM sites among ``names`` whose KL is taken in closed form, each with its KL
    (:func:`kl_term`): the model has the site (latent), a closed form is registered for the pair,
    model and guide scale and mask it alike, and the prior's parameters cannot depend on the site
    itself, i.e. no guide site downstream of it (``downstream_of[name]``) is sampled before it in
    the model."""
    order = [n for n, s in raw_model_trace.nodes.items() if s["type"] == "sample"]
    eligible = {}
    for name in names:
        model_site = model_trace.nodes.get(name)
        if model_site is None or model_site["is_observed"] or name not in order:
            continue
        guide_site = guide_trace.nodes[name]
        if not (_same(model_site["scale"], guide_site["scale"])
                and _same(model_site["mask"], guide_site["mask"])):
            continue
        if set(order[: order.index(name)]) & set(downstream_of[name]):
            continue
        if tuple(model_site["fn"].event_shape) != tuple(guide_site["fn"].event_shape):
            continue
        kl = kl_term(model_site, guide_site)
        if kl is not None:
            eligible[name] = kl
    return eligible


def substitute(model_trace, guide_trace, kls):
    """Replaces the model log-prob of each site of ``kls`` (name -> its KL) by
    ``-KL + log q(z)`` (the latter detached): with the guide's ``-log q(z)`` the ELBO then holds
    ``-KL`` with its pathwise gradient to the guide's and the prior's parameters."""
    for name, kl in kls.items():
        model_site = model_trace.nodes[name]
        log_prob = -kl + guide_trace.nodes[name]["log_prob"].detach()
        model_site["log_prob"] = log_prob
        model_site["log_prob_sum"] = log_prob.sum()
