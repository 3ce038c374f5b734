"""ARSM_ELBO beside model-side enumeration: sites marked ``infer={"enumerate": "parallel"}`` in the
model are summed out exactly (as TraceEnum_ELBO sums them), the guide's discrete sites get the
ELBO's estimator on the contracted cost.

Every z-test is against :func:`pyro_exact.enumerated_brute_force_gradient` (the guide's sites
summed by brute force, the model's enumerated ones by TraceEnum_ELBO with nothing left to
sample), at the 5% rule.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate
from pyro_exact import (
    assert_unbiased,
    count_passes,
    enumerated_brute_force_gradient,
    flat_grad,
    gradient_draws,
    param_tensors,
)

from pyro_arsm import ARSM_ELBO, JitARSM_ELBO, _enum

pytestmark = pytest.mark.usefixtures("fresh_param_store")

X = torch.tensor([0.3, -1.2, 2.0, 0.8])
SHIFT = torch.tensor([-0.5, 0.7])


def global_sampled_model(x):
    """A global sampled cluster ``c`` over per-datum enumerated assignments ``y_n``."""
    loc = pyro.param("loc", torch.tensor([-1.0, 0.0, 1.5]))
    w = pyro.param("w", torch.tensor([0.2, -0.3]))
    c = pyro.sample("c", dist.Categorical(logits=torch.zeros(3)))
    with pyro.plate("data", len(x)):
        y = pyro.sample("y", dist.Categorical(logits=w), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(loc[c] + SHIFT[y], 1.0), obs=x)


def global_sampled_guide(x):
    pyro.sample("c", dist.Categorical(logits=pyro.param("phi", torch.tensor([0.3, -0.2, 0.1]))))


def coupled_model(x):
    """A global enumerated ``y`` coupling a plate of sampled ``z_n``: the contracted
    ``log sum_y p(y) prod_n p(x_n | y, z_n)`` is a cost shared by every element of ``z``."""
    m = pyro.param("m", torch.tensor([-0.7, 0.9]))
    a = pyro.param("a", torch.tensor([0.0, 1.0, -1.0]))
    y = pyro.sample("y", dist.Categorical(logits=torch.tensor([0.1, -0.1])),
                    infer={"enumerate": "parallel"})
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
        pyro.sample("x", dist.Normal(m[y] + a[z], 1.0), obs=x)


def coupled_guide(x):
    phi = pyro.param("phi", torch.tensor([0.2, -0.1, 0.0]).expand(len(x), 3).clone())
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Categorical(logits=phi))


def local_model(x):
    """Per-datum sampled ``z_n`` and per-datum enumerated ``y_n``: every contraction stays inside
    the plate, so ``z``'s cost is element-separable."""
    a = pyro.param("a", torch.tensor([0.0, 1.0, -1.0]))
    w = pyro.param("w", torch.tensor([0.2, -0.3]))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
        y = pyro.sample("y", dist.Categorical(logits=w), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(a[z] + SHIFT[y], 1.0), obs=x)


def chain_model(ys):
    """An enumerated hidden chain (``pyro.markov``) whose emissions a sampled ``.to_event``
    Bernoulli code ``b`` shifts: the whole contracted chain is ``b``'s cost."""
    trans = pyro.param("trans", torch.tensor([[0.7, 0.3], [0.4, 0.6]]),
                       constraint=dist.constraints.simplex)
    locs = pyro.param("locs", torch.tensor([-0.5, 0.8]))
    weights = pyro.param("weights", torch.tensor([0.6, -0.4]))
    b = pyro.sample("b", dist.Bernoulli(torch.full((2,), 0.5)).to_event(1))
    shift = (b * weights).sum(-1)
    x = 0
    for t in pyro.markov(range(len(ys))):
        x = pyro.sample(f"x_{t}", dist.Categorical(trans[x]), infer={"enumerate": "parallel"})
        pyro.sample(f"y_{t}", dist.Normal(locs[x] + shift, 1.0), obs=ys[t])


def chain_guide(ys):
    pyro.sample("b", dist.Bernoulli(logits=pyro.param("beta", torch.tensor([0.3, -0.2])))
                .to_event(1))


MODELS = {
    "global_sampled": (global_sampled_model, global_sampled_guide, ["phi", "loc", "w"]),
    "coupled": (coupled_model, coupled_guide, ["phi", "m", "a"]),
    "local": (local_model, coupled_guide, ["phi", "a", "w"]),
    "chain": (chain_model, chain_guide, ["beta", "trans", "locs", "weights"]),
}


def _init(model, guide):
    model(X)
    guide(X)


def _unbiased(name, num_draws=40, **kwargs):
    """The z-test of ``name``'s gradient; 50 vectorized particles x ``num_draws`` draws put every
    standard error under 4% of the largest exact component (AR, one evaluation, needs 800)."""
    model, guide, names = MODELS[name]
    _init(model, guide)
    nesting = 0 if name == "chain" else 1
    exact, _ = enumerated_brute_force_gradient(model, guide, names, nesting, X)
    label = f"{name} {kwargs}"
    cls = JitARSM_ELBO if kwargs.pop("compiled", False) else ARSM_ELBO
    elbo = cls(num_particles=50, vectorize_particles=True, max_plate_nesting=nesting + 1,
               **kwargs)
    draws = gradient_draws(elbo, model, guide, names, num_draws, X)
    assert_unbiased(draws, exact, label=label)


SLOW = pytest.mark.slow


@pytest.mark.parametrize("name, kwargs", [
    pytest.param("global_sampled", {}, marks=SLOW),
    ("coupled", {}),
    pytest.param("local", {}, marks=SLOW),
    ("local", {"estimator": "local"}),
    ("chain", {}),
    pytest.param("chain", {"estimator": "rloo"}, marks=SLOW),
    pytest.param("global_sampled", {"estimator": "rloo"}, marks=SLOW),
    pytest.param("global_sampled", {"estimator": "ars"}, marks=SLOW),
    pytest.param("global_sampled", {"vectorize_pseudo": False}, marks=SLOW),
    pytest.param("coupled", {"estimator": "rloo"}, marks=SLOW),
    pytest.param("coupled", {"estimator": "ars"}, marks=SLOW),
    pytest.param("coupled", {"estimator": "ar", "num_draws": 800}, marks=SLOW),
    pytest.param("coupled", {"vectorize_pseudo": False}, marks=SLOW),
    pytest.param("local", {"estimator": "rloo"}, marks=SLOW),
    pytest.param("coupled", {"compiled": True}, marks=[
        SLOW,  # (as in test_pyro_jit.py: torch's deprecation of jit.trace, the tracer's notes)
        pytest.mark.filterwarnings(r"ignore:`torch\.jit\.trace` is deprecated:DeprecationWarning"),
        pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]),
], ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items()))
def test_gradient_is_unbiased(name, kwargs):
    _unbiased(name, **kwargs)


def test_loss_is_the_negative_elbo_with_enumerated_sites_summed():
    model, guide, names = MODELS["coupled"]
    _init(model, guide)
    _, exact = enumerated_brute_force_gradient(model, guide, names, 1, X)
    elbo = ARSM_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=2)
    losses = torch.tensor([elbo.loss(model, guide, X) for _ in range(5)])
    se = losses.std() / 5 ** 0.5
    assert abs(losses.mean() - exact) < 5 * se + 1e-4 * abs(exact), (losses, exact)


def test_a_global_enumerated_site_makes_the_plated_cost_shared():
    # "local" needs an element-separable cost: the global y couples the elements of z, so it
    # warns once and uses ARSM (unbiased: the z-test above of "coupled" with the default)
    model, guide, names = MODELS["coupled"]
    _init(model, guide)
    elbo = ARSM_ELBO(max_plate_nesting=1, estimator="local")
    with pytest.warns(UserWarning, match="guide site 'z' is not element-separable"):
        elbo.differentiable_loss(model, guide, X)


def test_pseudo_actions_are_evaluated_in_one_batched_pass(monkeypatch):
    # the enumerated dims sit left of the pseudo-action plate: no fallback to one pass per action
    model, guide, _ = MODELS["coupled"]
    _init(model, guide)
    calls = count_passes(monkeypatch)
    elbo = ARSM_ELBO(max_plate_nesting=1)
    for _ in range(3):
        elbo.differentiable_loss(model, guide, X)
    assert calls["batched"] == 4 and calls["sequential"] == 1  # (the first step's check)


def _fully_enumerated_model(x):
    w = pyro.param("w", torch.tensor([0.2, -0.3]))
    m = pyro.sample("m", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        y = pyro.sample("y", dist.Categorical(logits=w), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(m + SHIFT[y], 1.0), obs=x)


def _delta_guide(x):
    pyro.sample("m", dist.Delta(pyro.param("m_map", torch.tensor(0.4))))


def test_nothing_sampled_equals_trace_enum_elbo():
    # every discrete site enumerated, the continuous one a Delta: loss and gradient are
    # TraceEnum_ELBO's to float rounding
    _fully_enumerated_model(X)
    _delta_guide(X)
    params = param_tensors(["w", "m_map"])
    ours = ARSM_ELBO(max_plate_nesting=1).differentiable_loss(_fully_enumerated_model,
                                                              _delta_guide, X)
    theirs = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(_fully_enumerated_model,
                                                                     _delta_guide, X)
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    assert torch.allclose(flat_grad(ours, params), flat_grad(theirs, params), atol=1e-6)
    loss = ARSM_ELBO(max_plate_nesting=1).loss(_fully_enumerated_model, _delta_guide, X)
    assert loss == pytest.approx(theirs.item(), rel=1e-6)


def test_max_plate_nesting_is_guessed_once_as_trace_enum_elbo_guesses_it():
    model, guide, names = MODELS["coupled"]
    _init(model, guide)
    params = param_tensors(names)
    elbo = ARSM_ELBO()
    elbo.differentiable_loss(model, guide, X)  # guesses, and passes again with enumeration
    assert elbo.max_plate_nesting == 1
    pyro.set_rng_seed(3)
    guessed = flat_grad(elbo.differentiable_loss(model, guide, X), params)
    pyro.set_rng_seed(3)
    given = flat_grad(ARSM_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, X),
                      params)
    assert torch.equal(guessed, given)


def test_sequential_enumeration_is_an_error_naming_the_site():
    def model(x):
        y = pyro.sample("y", dist.Bernoulli(0.3), infer={"enumerate": "sequential"})
        pyro.sample("x", dist.Normal(y, 1.0), obs=x[0])

    with pytest.raises(ValueError, match="model site 'y' is marked for sequential enumeration"):
        ARSM_ELBO(max_plate_nesting=1).differentiable_loss(model, lambda x: None, X)


def test_a_plate_nesting_that_cannot_be_guessed_is_an_error_with_the_fix():
    # without max_plate_nesting the first pass runs the model without enumeration (as
    # TraceEnum_ELBO's guess does); a model that cannot run so keeps its error, with the fix
    def model(x):
        y = pyro.sample("y", dist.Bernoulli(0.3), infer={"enumerate": "parallel"})
        assert y.dim() > 0, "this model needs its enumerated dim"
        pyro.sample("x", dist.Normal(y, 1.0), obs=x[0])

    with pytest.raises(AssertionError, match="this model needs its enumerated dim") as caught:
        ARSM_ELBO().differentiable_loss(model, lambda x: None, X)
    assert "ARSM_ELBO(max_plate_nesting=...)" in caught.value.__notes__[0]
    ARSM_ELBO(max_plate_nesting=0).differentiable_loss(model, lambda x: None, X)  # (the fix)


def test_score_function_guide_site_beside_enumeration_is_an_error():
    def model(x):
        n = pyro.sample("n", dist.Poisson(3.0))
        y = pyro.sample("y", dist.Bernoulli(0.3), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(y + n.clamp(max=5) * 0.1, 1.0), obs=x[0])

    def guide(x):
        pyro.sample("n", dist.Poisson(pyro.param("rate", torch.tensor(2.0),
                                                 constraint=dist.constraints.positive)))

    elbo = ARSM_ELBO(max_plate_nesting=1, warn_score_function=False)
    with pytest.raises(NotImplementedError, match="guide site 'n' .*score-function term"):
        elbo.differentiable_loss(model, guide, X)


def test_harness_detects_a_dropped_shared_cost(monkeypatch):
    # a test that cannot fail is a defect: dropping the contracted global term from z's cost
    # (what TraceEnum_ELBO's DiCE does with it) must be rejected by the same z-test
    original_cost = _enum.enumerated_pass_cost

    def inside_the_plate(model_trace, component, owner=None):
        return [(frames, term) for frames, term in _enum._contract_now(model_trace, component)
                if any(f.name == "data" for f in frames)]

    def dropping(*args, **kwargs):
        with monkeypatch.context() as patch:
            patch.setattr(_enum, "_contract", inside_the_plate)
            return original_cost(*args, **kwargs)

    monkeypatch.setattr(_enum, "enumerated_pass_cost", dropping)
    with pytest.raises(AssertionError, match="biased"):
        _unbiased("coupled")


# ---------------------------------------------------------------------------------------------
# Models written for TraceEnum_ELBO elsewhere, rewritten here, only the loss swapped
# ---------------------------------------------------------------------------------------------


def test_gmm_tutorial_model_with_an_auto_delta_guide_is_trace_enum_elbo():
    # the model of Pyro's GMM tutorial (global weights, scale and locs; per-datum assignments
    # enumerated in the model) with an AutoDelta guide over the globals: nothing discrete is
    # sampled, so loss and gradient are TraceEnum_ELBO's
    from pyro.infer import config_enumerate
    from pyro.infer.autoguide import AutoDelta

    data = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0])

    @config_enumerate
    def model(data):
        weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(2)))
        scale = pyro.sample("scale", dist.LogNormal(0.0, 2.0))
        with pyro.plate("components", 2):
            locs = pyro.sample("locs", dist.Normal(0.0, 10.0))
        with pyro.plate("data", len(data)):
            assignment = pyro.sample("assignment", dist.Categorical(weights))
            pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)

    guide = AutoDelta(pyro.poutine.block(model, expose=["weights", "locs", "scale"]))
    guide(data)
    params = [p.unconstrained() for p in pyro.get_param_store().values()]
    ours = ARSM_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, data)
    theirs = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, data)
    assert torch.allclose(ours, theirs, rtol=1e-6)
    for a, b in zip(torch.autograd.grad(ours, params), torch.autograd.grad(theirs, params),
                    strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def hmm_model_1(sequence):
    """The model_1 of Pyro's examples/hmm.py (a hidden state chain, enumerated with markov, and
    Bernoulli emissions of a binary vector per step), small, with one extra sampled discrete site:
    a global ``tempo`` that picks which of two transition matrices the chain uses."""
    probs_x = pyro.param("probs_x", torch.tensor([[[0.8, 0.2], [0.3, 0.7]],
                                                  [[0.5, 0.5], [0.6, 0.4]]]),
                         constraint=dist.constraints.simplex)
    probs_y = pyro.param("probs_y", torch.tensor([[0.2, 0.7, 0.5], [0.9, 0.1, 0.4]]),
                         constraint=dist.constraints.unit_interval)
    tempo = pyro.sample("tempo", dist.Categorical(logits=torch.zeros(2)))
    tones = pyro.plate("tones", 3, dim=-1)
    x = 0
    for t in pyro.markov(range(len(sequence))):
        x = pyro.sample(f"x_{t}", dist.Categorical(probs_x[tempo, x]),
                        infer={"enumerate": "parallel"})
        with tones:
            pyro.sample(f"y_{t}", dist.Bernoulli(probs_y[x.squeeze(-1)]), obs=sequence[t])


def hmm_guide(sequence):
    pyro.sample("tempo", dist.Categorical(logits=pyro.param("tempo_logits",
                                                            torch.tensor([0.3, -0.3]))))


def test_hmm_example_model_with_a_sampled_site_is_unbiased():
    sequence = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    names = ["tempo_logits", "probs_x", "probs_y"]
    hmm_model_1(sequence)
    hmm_guide(sequence)
    exact, _ = enumerated_brute_force_gradient(hmm_model_1, hmm_guide, names, 1, sequence)
    elbo = ARSM_ELBO(num_particles=50, vectorize_particles=True, max_plate_nesting=2)
    draws = gradient_draws(elbo, hmm_model_1, hmm_guide, names, 40, sequence)
    assert_unbiased(draws, exact, label="hmm model_1 + sampled tempo")


# ---------------------------------------------------------------------------------------------
# Guide-side enumeration (config_enumerate on the guide)
# ---------------------------------------------------------------------------------------------


def upstream_model(x):
    locs = pyro.param("locs", torch.tensor([-1.0, 0.0, 1.5]))
    c = pyro.sample("c", dist.Categorical(logits=torch.zeros(3)))
    with pyro.plate("data", len(x)):
        y = pyro.sample("y", dist.Bernoulli(0.4))
        pyro.sample("x", dist.Normal(locs[c] + 0.8 * y, 1.0), obs=x)


def upstream_guide(x):
    """A sampled global ``c`` upstream of per-datum ``y_n`` that the guide enumerates."""
    c = pyro.sample("c", dist.Categorical(logits=pyro.param("phi",
                                                            torch.tensor([0.2, -0.1, 0.3]))))
    w = pyro.param("w", torch.tensor([0.5, -0.5, 0.1]))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Bernoulli(logits=w[c] + pyro.param("v", torch.zeros(len(x)))),
                    infer={"enumerate": "parallel"})


@pytest.mark.slow  # one particle per draw (see below): 800 draws for a standard error under 5%
@pytest.mark.parametrize("estimator", ["arsm", "rloo"])
def test_a_sampled_site_upstream_of_guide_enumerated_sites_is_unbiased(estimator):
    # y is summed out with its guide weights (TraceEnum_ELBO's expectation); c's cost, at each
    # pseudo action, is that whole expectation with y's weights recomputed (one number for the
    # whole pass, so vectorized particles would share it: one particle per draw here)
    from pyro_exact import brute_force_gradient

    names = ["phi", "w", "v", "locs"]
    _init(upstream_model, upstream_guide)
    exact = brute_force_gradient(upstream_model, upstream_guide, names, X)
    elbo = ARSM_ELBO(max_plate_nesting=1, estimator=estimator)
    draws = gradient_draws(elbo, upstream_model, upstream_guide, names, 800, X)
    assert_unbiased(draws, exact, label=f"guide-enumerated y below a sampled c, {estimator}")


def below_model(x):
    y = pyro.sample("y", dist.Bernoulli(0.4))
    with pyro.plate("data", len(x)):
        c = pyro.sample("c", dist.Categorical(logits=torch.zeros(3)))
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(c + y - 1.0 + 0.3 * w, 1.0), obs=x)


def below_guide(x):
    """A global ``y`` that the guide enumerates over per-datum sampled ``c_n`` whose logits depend
    on it, and a reparameterized ``w_n`` below both."""
    y = pyro.sample("y", dist.Bernoulli(logits=pyro.param("v", torch.tensor(0.3))),
                    infer={"enumerate": "parallel"})
    phi = pyro.param("phi", torch.tensor([[0.2, -0.3, 0.1], [-0.4, 0.5, 0.0]]))
    with pyro.plate("data", len(x)):
        # (y's enumerated value has a dim left of the plate, so the logits get one too)
        c = pyro.sample("c", dist.Categorical(logits=phi[y.long()] + pyro.param(
            "u", torch.zeros(len(x), 3))))
        pyro.sample("w", dist.Normal(pyro.param("m", torch.zeros(len(x))) + 0.5 * c, 1.0))


@pytest.mark.slow  # one particle per draw (see above): 800 draws for a standard error under 5%
@pytest.mark.parametrize("estimator", ["arsm", "rloo"])
def test_a_sampled_site_below_a_guide_enumerated_one_is_unbiased(estimator):
    # c's batch shape holds y's enumeration dim: one estimate per value of y, each on the whole
    # pass's expectation (y's weights included); w is pathwise. The reference is TraceEnum_ELBO
    # with c enumerated too (only w sampled: its own standard error enters the z-test)
    names = ["v", "phi", "u", "m"]
    x = X[:3]
    below_model(x)
    below_guide(x)
    reference = TraceEnum_ELBO(max_plate_nesting=1, num_particles=1000, vectorize_particles=True)
    draws = gradient_draws(reference, below_model, config_enumerate(below_guide), names, 40, x)
    exact, exact_se = draws.mean(0), draws.std(0) / 40 ** 0.5
    elbo = ARSM_ELBO(max_plate_nesting=1, estimator=estimator)
    draws = gradient_draws(elbo, below_model, below_guide, names, 800, x)
    assert_unbiased(draws, exact, exact_se,
                    label=f"sampled c below guide-enumerated y, {estimator}")


def test_a_guide_site_marked_for_sequential_enumeration_is_an_error_naming_the_site():
    def guide(x):
        pyro.sample("y", dist.Bernoulli(logits=pyro.param("v", torch.tensor(0.3))),
                    infer={"enumerate": "sequential"})

    def model(x):
        y = pyro.sample("y", dist.Bernoulli(0.4))
        pyro.sample("x", dist.Normal(y, 1.0), obs=x[0])

    with pytest.raises(ValueError, match=r"guide site 'y' is marked infer=\{'enumerate': "
                                         r"'sequential'\}.*Mark it 'parallel'"):
        ARSM_ELBO(max_plate_nesting=0).differentiable_loss(model, guide, X)

def test_a_sampled_site_below_a_guide_enumerated_one_gets_one_estimate_per_value():
    # deterministic: no warning, y summed out (its enumeration dim in c's batch shape), c's
    # logits and estimate one row per value of y
    elbo = ARSM_ELBO(max_plate_nesting=1)
    x = X[:3]
    below_model(x)
    below_guide(x)
    particle = next(elbo._get_traces(below_model, below_guide, (x,), {}))
    assert particle.guide_enumerated
    assert particle.guide_trace.nodes["y"]["value"].shape == (2, 1)
    assert particle.guide_trace.nodes["c"]["fn"].batch_shape == (2, 3)
    loss = elbo.differentiable_loss(below_model, below_guide, x)
    loss.backward()
    assert pyro.param("phi").grad.abs().min() > 0  # both rows of phi: both values of y
