"""Exact references and Monte Carlo z-tests for the Pyro estimators.

Every unbiasedness test compares the Monte Carlo mean of a gradient estimator with an exact
gradient: either TraceEnum_ELBO with the guide's discrete sites enumerated (exact over them; any
continuous sites are still sampled, so the reference then has its own standard error), or a brute
force sum over every joint value of the guide's discrete sites.

Where the batched pseudo pass does not fit a model, :func:`assert_falls_back_to_sequential`
checks the default path's decision deterministically (its warning, which passes ran, gradients
equal bit for bit to ``vectorize_pseudo=False`` from the same seed), so one z-test of the
sequential path covers both.
"""

import itertools
import re

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate
from pyro.poutine.subsample_messenger import _Subsample

from pyro_arsm import ARSM_ELBO
from pyro_arsm._pseudo import _PseudoPass

Z_MAX = 5.0


def param_tensors(names):
    return [pyro.param(n).unconstrained() for n in names]


def flat_grad(loss, params):
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                      for g, p in zip(grads, params, strict=True)])


def gradient_draws(elbo, model, guide, names, num_draws, *args, **kwargs):
    """``num_draws`` independent gradient estimates ``[num_draws, D]`` of the loss."""
    params = param_tensors(names)
    if not hasattr(elbo, "differentiable_loss"):  # TraceGraph_ELBO: read .grad
        draws = []
        for _ in range(num_draws):
            for p in params:
                p.grad = None
            elbo.loss_and_grads(model, guide, *args, **kwargs)
            draws.append(torch.cat([
                (torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in params]))
            for p in params:
                p.grad = None
        return torch.stack(draws)
    draws = [flat_grad(elbo.differentiable_loss(model, guide, *args, **kwargs), params)
             for _ in range(num_draws)]
    return torch.stack(draws)


def enum_gradient(model, guide, names, max_plate_nesting, *args, num_draws=1, **kwargs):
    """TraceEnum_ELBO gradient with the guide's discrete sites enumerated in parallel.

    Returns ``(mean, standard_error)``; the error is zero when nothing else is sampled.
    """
    elbo = TraceEnum_ELBO(max_plate_nesting=max_plate_nesting)
    draws = gradient_draws(elbo, model, config_enumerate(guide, "parallel"), names, num_draws,
                           *args, **kwargs)
    if num_draws == 1:
        return draws[0], torch.zeros_like(draws[0])
    return draws.mean(0), draws.std(0) / num_draws ** 0.5


def brute_force_gradient(model, guide, names, *args, **kwargs):
    """Exact gradient of ``-ELBO`` by summing over every joint value of the guide's discrete
    sites (``sum_z q(z) (log q(z) - log p(x, z))``), for guides with only discrete latents."""
    params = param_tensors(names)
    proto = poutine.trace(guide).get_trace(*args, **kwargs)
    sites = [(n, s) for n, s in proto.nodes.items()
             if s["type"] == "sample" and not s["is_observed"]
             and not isinstance(s["fn"], _Subsample)]
    supports = []
    for _, site in sites:
        fn = site["fn"]
        support = fn.enumerate_support(expand=False) if fn.event_shape == () else None
        value_shape = site["value"].shape
        if support is not None:
            elem_values = support.reshape(-1).tolist()
            num = site["value"].numel()
            supports.append([torch.tensor(v, dtype=site["value"].dtype).reshape(value_shape)
                             for v in itertools.product(elem_values, repeat=num)])
        else:  # .to_event / one-hot: enumerate the base distribution elementwise
            base = fn
            while hasattr(base, "base_dist"):
                base = base.base_dist
            if isinstance(base, torch.distributions.OneHotCategorical):
                C = value_shape[-1]
                num = site["value"].numel() // C
                eye = torch.eye(C, dtype=site["value"].dtype)
                supports.append([eye[list(idx)].reshape(value_shape)
                                 for idx in itertools.product(range(C), repeat=num)])
            else:
                elem_values = base.enumerate_support(expand=False).reshape(-1).unique().tolist()
                num = site["value"].numel()
                supports.append([torch.tensor(v, dtype=site["value"].dtype).reshape(value_shape)
                                 for v in itertools.product(elem_values, repeat=num)])
    total = 0.0
    for values in itertools.product(*supports):
        part = poutine.Trace()
        for (name, site), v in zip(sites, values, strict=True):
            part.add_node(name, **{**site, "value": v})
        guide_trace = poutine.trace(poutine.replay(guide, trace=part)).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs)
        log_q = guide_trace.log_prob_sum()
        log_p = model_trace.log_prob_sum()
        total = total + log_q.exp() * (log_q - log_p)
    return flat_grad(total, params)


_FALLBACK = r"batched pseudo-action pass for guide site '{}' (failed|gives other costs)"


def enumerated_brute_force_gradient(model, guide, names, max_plate_nesting, *args):
    """Exact gradient of ``-ELBO`` for a model with enumerated sites and a guide of discrete
    sites only: ``sum_z q(z) (log q(z) - log p(x, z))`` over every joint value ``z`` of the
    guide's sites, where ``log p(x, z) = log sum_y p(x, y, z)`` sums the model's enumerated
    sites out (``TraceEnum_ELBO`` on the model conditioned on ``z``, with an empty guide: no
    sampled site is left, so that is exact)."""
    params = param_tensors(names)
    proto = poutine.trace(guide).get_trace(*args)
    sites = [(n, s) for n, s in proto.nodes.items()
             if s["type"] == "sample" and not s["is_observed"]
             and not isinstance(s["fn"], _Subsample)]
    supports = []
    for _, site in sites:
        base = site["fn"]
        while hasattr(base, "base_dist"):  # (.to_event: enumerate the elements)
            base = base.base_dist
        values = base.enumerate_support(expand=False).reshape(-1).unique().tolist()
        shape, dtype = site["value"].shape, site["value"].dtype
        supports.append([torch.tensor(v, dtype=dtype).reshape(shape)
                         for v in itertools.product(values, repeat=site["value"].numel())])
    enum = TraceEnum_ELBO(max_plate_nesting=max_plate_nesting)
    total = 0.0
    for values in itertools.product(*supports):
        data = {name: v for (name, _), v in zip(sites, values, strict=True)}
        log_q = poutine.trace(poutine.condition(guide, data)).get_trace(*args).log_prob_sum()
        neg_log_p = enum.differentiable_loss(poutine.condition(model, data), _empty_guide,
                                             *args)
        total = total + log_q.exp() * (log_q + neg_log_p)
    return flat_grad(total, params), total.detach()


def _empty_guide(*args, **kwargs):
    pass


def count_passes(monkeypatch):
    """Counts the calls of the batched and the sequential pseudo pass."""
    calls = {"batched": 0, "sequential": 0}
    for name in calls:
        original = getattr(_PseudoPass, name)

        def counted(self, actions, replay_all=False, _name=name, _original=original):
            calls[_name] += 1
            return _original(self, actions, replay_all)

        monkeypatch.setattr(_PseudoPass, name, counted)
    return calls


def _gradient(elbo, model, guide, names, *args):
    return flat_grad(elbo.differentiable_loss(model, guide, *args), param_tensors(names))


def assert_falls_back_to_sequential(monkeypatch, sites, model, guide, names, *args, match="",
                                    num_particles=4):
    """Two steps of the default path: the first warns once per site in ``sites`` (each message
    matching ``match`` too) and tries each site's batched pass once (the check), the second
    warns no more and runs no batched pass; both steps' gradients equal those of
    ``vectorize_pseudo=False`` from the same seed, bit for bit."""
    calls = count_passes(monkeypatch)
    elbo = ARSM_ELBO(num_particles=num_particles)
    pattern = _FALLBACK.format("(?:" + "|".join(map(re.escape, sites)) + ")")
    pyro.set_rng_seed(5)
    with pytest.warns(UserWarning, match=pattern) as caught:
        first = _gradient(elbo, model, guide, names, *args)
    messages = [str(w.message) for w in caught]
    assert sorted(m.split("guide site ")[1].split("'")[1] for m in messages) == sorted(sites)
    assert all(re.search(match, m) for m in messages), messages
    assert calls["batched"] == len(sites)
    sequential_before = calls["sequential"]
    second = _gradient(elbo, model, guide, names, *args)  # warnings are errors here
    assert calls["batched"] == len(sites) and calls["sequential"] > sequential_before
    reference = ARSM_ELBO(num_particles=num_particles, vectorize_pseudo=False)
    pyro.set_rng_seed(5)
    expected = [_gradient(reference, model, guide, names, *args) for _ in range(2)]
    assert torch.equal(torch.stack([first, second]), torch.stack(expected))


def z_scores(draws, exact, exact_se=None):
    """``|mean - exact| / se`` per component (two-sample when the reference has an error)."""
    mean = draws.mean(0)
    se = draws.std(0) / draws.shape[0] ** 0.5
    if exact_se is not None:
        se = (se ** 2 + exact_se ** 2).sqrt()
    # float32 round-off floor: some components are deterministic (e.g. DisARM at logit 0)
    floor = 1e-5 * exact.abs().max().clamp_min(1.0)
    return (mean - exact).abs() / (se ** 2 + floor ** 2).sqrt(), se


def assert_unbiased(draws, exact, exact_se=None, power=0.05, label=""):
    """z-test of the Monte Carlo mean against the exact gradient.

    ``power``: the largest standard error must be below ``power * max|exact|``, so the test could
    see a bias of ``Z_MAX * power`` of the gradient's scale (a test that cannot fail is a defect).
    Returns the worst z (printed with ``-s``).
    """
    z, se = z_scores(draws, exact, exact_se)
    scale = exact.abs().max()
    assert se.max() < power * scale, (
        f"{label}: standard error {se.max():.3g} too large to test against |exact| {scale:.3g}")
    worst = z.max().item()
    print(f"\n[{label}] worst z = {worst:.2f} over {exact.numel()} components, "
          f"{draws.shape[0]} draws, standard error {se.max() / scale:.1%} of max|exact|")
    assert worst < Z_MAX, (
        f"{label}: biased? worst z {worst:.2f}\nmean  {draws.mean(0)}\nexact {exact}")
    return worst
