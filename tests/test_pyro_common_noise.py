"""Common random numbers between the real pass and the pseudo passes, and the program cache.

A pseudo pass evaluated at a site's own sampled action must reproduce the real pass exactly:
every downstream guide site gets the value it had in the real pass (so the pseudo cost of the
true action equals the real cost), whatever the order and kind of the guide's sites, on the
batched and the sequential path. The cache of what ARSM_ELBO learns about a model and guide must
recognise a program across calls (bound methods are new objects each time) and stay bounded.
"""

import gc
import itertools
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints

from pyro_arsm import ARSM_ELBO, _costs
from pyro_arsm import estimators as est
from pyro_arsm._pseudo import _PseudoPass
from pyro_arsm._sites import arsm_kind

pytestmark = pytest.mark.usefixtures("fresh_param_store")

N = 4
DATA = torch.tensor([0.3, -1.2, 2.0, 0.7])


def _site(name, b0, seen):
    """One guide site of the chain; ``b0`` is the value of the Bernoulli site under test."""
    shift = 0.0 if b0 is None else b0
    if name == "b0":
        fn = dist.Bernoulli(logits=pyro.param("a0", torch.tensor(0.2)).expand([N]))
    elif name == "b1":  # discrete, downstream of b0
        fn = dist.Bernoulli(logits=pyro.param("a1", torch.tensor(-0.4)) + 0.7 * shift)
    elif name == "c":  # categorical, downstream of b0
        w = pyro.param("w", torch.tensor([[0.1, 0.5, -0.3], [1.0, -1.0, 0.2]]))
        fn = dist.Categorical(logits=w[torch.as_tensor(shift).long()])
    elif name == "z":  # reparameterized, downstream of b0
        fn = dist.Normal(pyro.param("m", torch.tensor(0.1)) + 0.5 * shift, 1.0)
    elif name == "e":  # exponential noise, downstream of b0
        fn = dist.Exponential(1.0 + shift)
    elif name == "g":  # parameter-dependent noise (Gamma), downstream of b0
        fn = dist.Gamma(1.0 + shift, 1.0)
    else:  # "u": independent of b0
        fn = dist.Normal(pyro.param("mu", torch.tensor(-0.3)), 1.0)
    seen[name] = value = pyro.sample(name, fn)
    return value


def make_chain(order):
    """Model and guide whose guide samples the sites of ``order`` in that order, in a plate."""
    seen = {}

    def guide():
        b0 = None
        with pyro.plate("data", N):
            for name in order:
                value = _site(name, b0, seen)
                if name == "b0":
                    b0 = value

    def model():
        with pyro.plate("data", N):
            b0 = pyro.sample("b0", dist.Bernoulli(0.5))
            total = b0
            for name in order:
                if name == "b1":
                    total = total + pyro.sample("b1", dist.Bernoulli(0.5))
                elif name == "c":
                    total = total + pyro.sample("c", dist.Categorical(torch.ones(3))).float()
                elif name in ("z", "u"):
                    total = total * pyro.sample(name, dist.Normal(0.0, 1.0))
                elif name in ("e", "g"):
                    total = total + pyro.sample(name, dist.Gamma(2.0, 1.0))
            pyro.sample("y", dist.Normal(total, 1.0), obs=DATA)

    return model, guide, seen


def _true_action(noise):
    if noise.kind == "bernoulli":
        return est.bernoulli_pair(noise.noise, noise.logits)[0]
    return est.categorical_from_log_pi(noise.noise, noise.logits)


def _pseudo_pass_at_true_action(order, path):
    """For every ARSM site: ``(name, real cost, pseudo costs [2, ...], values seen in the pseudo
    pass, values of the real pass)``; the pseudo pass evaluates the true action twice."""
    model, guide, seen = make_chain(order)
    elbo = ARSM_ELBO(max_plate_nesting=1)
    particle = next(elbo._get_traces(model, guide, (), {}))
    values = {n: s["value"] for n, s in particle.raw_guide_trace.nodes.items()
              if s["type"] == "sample" and n != "data"}
    for name, noise in particle.noise.items():
        site = particle.guide_trace.nodes[name]
        kind, _ = arsm_kind(site["fn"])
        spec, downstream = _costs.cost_spec(particle, name)
        real, cost_shape = _costs.real_cost(particle, spec, site, tuple(noise.logits.shape[
            :noise.logits.dim() - (kind != "bernoulli")]))
        pseudo = _PseudoPass(particle, spec, kind, cost_shape, downstream, (), {})
        actions = _true_action(noise).unsqueeze(0).expand((2,) + noise.logits.shape[
            :noise.logits.dim() - (kind != "bernoulli")])
        seen.clear()
        costs = pseudo.batched(actions) if path == "batched" else pseudo.sequential(actions)
        yield name, real, costs, dict(seen), values, downstream


_DOWNSTREAM = ("b1", "c", "z", "e")
_ORDERS = [
    order[:i] + ("u",) + order[i:]
    for order in (("b0",) + p for p in itertools.permutations(_DOWNSTREAM))
    for i in (0, 1, len(order))
][::5]  # 29 of the 72 orders (u first, right after b0 or last; downstream sites in any order)


@pytest.mark.parametrize("path", ["batched", "sequential"])
@pytest.mark.parametrize("order", _ORDERS, ids="-".join)
def test_true_action_reproduces_the_real_pass(order, path):
    checked = 0
    for name, real_cost, costs, seen, real, downstream in _pseudo_pass_at_true_action(order, path):
        for n in downstream:
            assert n in seen, f"{n} not re-sampled in the pseudo pass of {name}"
            value = seen[n]
            if path == "batched":  # [2, N]: both rows are the true action
                assert value.shape[0] == 2
                for row in value:
                    assert torch.equal(row.expand_as(real[n]), real[n]), (name, n)
            else:  # one pass per action: the last one's values
                assert torch.equal(value, real[n]), (name, n)
            checked += 1
        for cost in costs:
            assert torch.allclose(cost, real_cost, rtol=1e-5, atol=1e-5), (name, cost, real_cost)
    assert checked >= len(_DOWNSTREAM)  # b0's downstream sites at least


def test_parameter_dependent_noise_is_common_on_the_sequential_path():
    """A Gamma site (rejection sampling: the numbers drawn depend on the parameters) downstream
    of the site gets its real value on the sequential path; on the batched path it is drawn
    afresh for the whole batch from its own stream (not the real pass's numbers)."""
    order = ("b0", "g", "z")
    for name, real_cost, costs, seen, real, _ in _pseudo_pass_at_true_action(order, "sequential"):
        if name == "b0":
            assert torch.equal(seen["g"], real["g"]) and torch.equal(seen["z"], real["z"])
            assert torch.allclose(costs, real_cost.expand_as(costs), rtol=1e-5, atol=1e-5)
    for name, _, _, seen, real, _ in _pseudo_pass_at_true_action(order, "batched"):
        if name == "b0":
            assert torch.equal(seen["z"][0].expand_as(real["z"]), real["z"])
            assert seen["g"].shape[0] == 2 and torch.isfinite(seen["g"]).all()


def test_global_stream_is_untouched_by_the_guide_sites():
    """The draws of the guide's sites do not advance torch's global stream past one seed per
    particle, so randomness outside the sites (subsample indices) is independent of them."""
    model, guide, _ = make_chain(("b0", "z"))
    elbo = ARSM_ELBO(max_plate_nesting=1)
    torch.manual_seed(3)
    particle = next(elbo._get_traces(model, guide, (), {}))
    after = torch.rand(5)
    torch.manual_seed(3)
    torch.randint(2 ** 32, (), dtype=torch.int64)  # the start of the particle's site seeds
    assert torch.equal(after, torch.rand(5))
    assert particle.streams is not None


def test_sites_of_a_particle_never_share_a_stream():
    """Sites get consecutive seeds in the order the real pass met them: distinct for any number
    of sites (a hash of the name into torch's 32-bit seeds would let two names collide)."""
    from pyro_arsm._noise import SiteStreams

    streams = SiteStreams()
    names = [f"z_{i}" for i in range(100_000)]
    seeds = {streams.seed(n) for n in names}
    assert len(seeds) == len(names)
    assert [streams.seed(n) for n in names[:3]] == [streams.seed(n) for n in names[:3]]


# ---------------------------------------------------------------------------------------------
# The program cache
# ---------------------------------------------------------------------------------------------


class _Program:
    """A model and guide as methods of an object, as in Pyro's AIR example."""

    def __init__(self):
        self.data = DATA

    def model(self):
        with pyro.plate("data", N):
            z = pyro.sample("z", dist.Categorical(torch.ones(3)))
            pyro.sample("y", dist.Normal(z.float(), 1.0), obs=self.data)

    def guide(self):
        logits = pyro.param("logits", torch.zeros(N, 3))
        with pyro.plate("data", N):
            pyro.sample("z", dist.Categorical(logits=logits))


def test_bound_methods_share_one_cache_entry():
    obj = _Program()
    elbo = ARSM_ELBO(max_plate_nesting=1)
    for _ in range(20):
        elbo.loss_and_grads(obj.model, obj.guide)
    assert len(elbo._programs) == 1
    state = elbo._programs.get(obj.model, obj.guide, provenance=False)
    assert state.deps and state.pseudo_mode  # learnt once, found again
    other = _Program()
    elbo.loss_and_grads(other.model, other.guide)
    assert len(elbo._programs) == 2  # another object is another program


@pytest.mark.slow  # (a garbage-collection loop)
def test_a_collected_program_never_matches_a_new_one():
    elbo = ARSM_ELBO(max_plate_nesting=1)
    obj = _Program()
    elbo.loss_and_grads(obj.model, obj.guide)
    del obj
    gc.collect()
    # new objects, possibly at the recycled address of the old one
    for _ in range(5):
        obj = _Program()
        state = elbo._programs.get(obj.model, obj.guide, provenance=False)
        assert not state.deps
        del obj, state
        gc.collect()


def test_cache_is_bounded():
    elbo = ARSM_ELBO(max_plate_nesting=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(elbo._programs.maxsize + 10):
            model, guide, _ = make_chain(("b0",))  # new closures each time
            elbo.loss_and_grads(model, guide)
    assert len(elbo._programs) == elbo._programs.maxsize


def test_guide_calling_autograd_grad_runs_pseudo_passes_with_grad():
    """A guide that differentiates inside (a Newton step, as in Pyro's own
    test_svi_step_guide_uses_grad) needs autograd in its pseudo passes too."""
    def model():
        loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
        b = pyro.sample("b", dist.Bernoulli(0.5))
        with pyro.plate("data", N):
            pyro.sample("obs", dist.Normal(loc + b, 1.0), obs=DATA)

    def guide():
        p = pyro.param("p", torch.tensor(0.5), constraint=constraints.unit_interval)
        b = pyro.sample("b", dist.Bernoulli(p))
        x = torch.tensor(0.0, requires_grad=True)
        loss = ((x - DATA) ** 2).sum() / 2 + x ** 2 / 200
        g = torch.autograd.grad(loss, [x], create_graph=True)[0]
        h = torch.autograd.grad(g, [x], create_graph=True)[0]
        pyro.sample("loc", dist.Normal(x.detach() - g / h - b, 1.0))

    for vectorize_pseudo in ("auto", True, False):
        elbo = ARSM_ELBO(vectorize_pseudo=vectorize_pseudo)
        loss = elbo.loss_and_grads(model, guide)
        assert torch.isfinite(torch.tensor(loss))
        assert pyro.param("p").unconstrained().grad is not None
        state = elbo._programs.get(model, guide, provenance=False)
        assert state.needs_grad
        with torch.no_grad():  # as SVI.evaluate_loss calls it
            assert torch.isfinite(torch.tensor(elbo.loss(model, guide)))
