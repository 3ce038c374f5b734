"""ARSM_ELBO behaviour: particles, fallbacks, the reported loss, bad input, and test power."""

import itertools
import warnings

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, TraceEnum_ELBO, config_enumerate
from pyro_exact import (
    Z_MAX,
    assert_falls_back_to_sequential,
    assert_unbiased,
    brute_force_gradient,
    enum_gradient,
    gradient_draws,
    z_scores,
)
from pyro_models import (
    PLATED_DATA,
    downstream_guide,
    downstream_model,
    init,
    plated_guide,
    plated_model,
)

from pyro_arsm import ARSM_ELBO, _costs

pytestmark = pytest.mark.usefixtures("fresh_param_store")


@pytest.mark.slow
def test_unbiased_without_vectorized_particles():
    # the plain path: one particle per call, and a sequential loop over three particles
    init(plated_model, plated_guide, PLATED_DATA)
    names = ["phi", "locs"]
    exact, _ = enum_gradient(plated_model, plated_guide, names, 1, PLATED_DATA)
    draws = gradient_draws(ARSM_ELBO(num_particles=3), plated_model, plated_guide, names, 300,
                           PLATED_DATA)
    assert_unbiased(draws, exact, label="3 sequential particles")


def test_loss_is_the_single_sample_negative_elbo():
    init(plated_model, plated_guide, PLATED_DATA)
    exact = TraceEnum_ELBO(max_plate_nesting=1).loss(plated_model, config_enumerate(plated_guide),
                                                    PLATED_DATA)
    elbo = ARSM_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1)
    losses = torch.tensor([elbo.loss(plated_model, plated_guide, PLATED_DATA) for _ in range(20)])
    assert_unbiased(losses[:, None], torch.tensor([exact]), label="loss value")
    # loss_and_grads and differentiable_loss report the same quantity: one draw of the
    # differentiable loss lies within Z_MAX standard deviations of one loss
    value = ARSM_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1)
    assert abs(value.differentiable_loss(plated_model, plated_guide, PLATED_DATA).item()
               - exact) < Z_MAX * losses.std()


def test_elbo_module_from_call():
    init(plated_model, plated_guide, PLATED_DATA)
    module = ARSM_ELBO()(plated_model, plated_guide)
    loss = module(PLATED_DATA)
    loss.backward()
    assert pyro.param("phi").unconstrained().grad is not None


def test_num_pseudo_evaluations_at_most_unordered_pairs():
    init(plated_model, plated_guide, PLATED_DATA)
    elbo = ARSM_ELBO(num_particles=100, vectorize_particles=True, max_plate_nesting=1)
    elbo.loss_and_grads(plated_model, plated_guide, PLATED_DATA)
    # C = 4: at most C(C-1)/2 = 6 pseudo actions besides the true one, whatever the batch
    assert 1 <= elbo.last_num_pseudo_evaluations <= 6


def poisson_model(x):
    locs = pyro.param("locs", torch.tensor([-1.0, 0.5, 2.0]))
    z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
    n = pyro.sample("n", dist.Poisson(2.0))
    pyro.sample("x", dist.Normal(locs[z] + 0.3 * n, 1.0), obs=x)


def poisson_guide(x):
    phi = pyro.param("phi", torch.tensor([0.2, -0.3, 0.5]))
    rate = pyro.param("rate", torch.tensor(1.5), constraint=dist.constraints.positive)
    pyro.sample("z", dist.Categorical(logits=phi))
    pyro.sample("n", dist.Poisson(rate))


def test_score_function_fallback_for_poisson_is_unbiased_and_warned():
    x = torch.tensor(1.0)
    init(poisson_model, poisson_guide, x)
    names = ["phi", "rate", "locs"]
    # exact: sum over z and n = 0..40 (the Poisson tail beyond 40 is below 1e-30)
    params = [pyro.param(n).unconstrained() for n in names]
    total = 0.0
    for z, n in itertools.product(range(3), range(41)):
        guide_trace = poutine.trace(poutine.condition(poisson_guide, data={
            "z": torch.tensor(z), "n": torch.tensor(float(n))})).get_trace(x)
        model_trace = poutine.trace(poutine.condition(poisson_model, data={
            "z": torch.tensor(z), "n": torch.tensor(float(n))})).get_trace(x)
        log_q = guide_trace.log_prob_sum()
        total = total + log_q.exp() * (log_q - model_trace.log_prob_sum())
    exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(total, params)])
    elbo = ARSM_ELBO(num_particles=500, vectorize_particles=True, max_plate_nesting=0)
    with pytest.warns(UserWarning, match="'n'.*score-function"):
        draws = gradient_draws(elbo, poisson_model, poisson_guide, names, 80, x)
    assert_unbiased(draws, exact, label="Poisson score-function fallback")


def test_harness_detects_replayed_downstream_sites(monkeypatch):
    # a test that cannot fail is a defect: replaying w at the pseudo actions (instead of
    # re-sampling it) is the known bias, and the same z-test must reject it
    x = torch.tensor(1.2)
    init(downstream_model, downstream_guide, x)
    names = ["phi", "m", "locs"]
    elbo = TraceEnum_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=0)
    ref = gradient_draws(elbo, downstream_model, config_enumerate(downstream_guide, "parallel"),
                         names, 40, x)
    original = _costs.cost_spec
    monkeypatch.setattr(_costs, "cost_spec", lambda p, n: (original(p, n)[0], frozenset()))
    arsm = ARSM_ELBO(num_particles=200, vectorize_particles=True, max_plate_nesting=0)
    draws = gradient_draws(arsm, downstream_model, downstream_guide, names, 60, x)
    z, _ = z_scores(draws, ref.mean(0), ref.std(0) / 40 ** 0.5)
    assert z.max() > Z_MAX


@pytest.mark.slow
def test_svi_drop_in_reaches_trace_enum_optimum():
    # a 1-D mixture with guide-side assignments: ARSM_ELBO and TraceEnum_ELBO optimise the same
    # ELBO. Its optimum is -log p(x) at the best locs (q = exact posterior), which model-side
    # enumeration computes exactly.
    torch.manual_seed(3)
    true_locs = torch.tensor([-4.0, 0.0, 4.0])
    data = (true_locs[torch.arange(60) % 3] + 0.5 * torch.randn(60))

    def model(data):
        locs = pyro.param("locs", torch.tensor([-1.0, 0.1, 1.0]))
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
            pyro.sample("x", dist.Normal(locs[z], 0.5), obs=data)

    def guide(data):
        phi = pyro.param("phi", torch.zeros(len(data), 3))
        with pyro.plate("data", len(data)):
            pyro.sample("z", dist.Categorical(logits=phi))

    exact = TraceEnum_ELBO(max_plate_nesting=1)

    def train(loss, guide, steps=1500):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), loss=loss)
        for _ in range(steps):
            svi.step(data)
        neg_elbo = exact.loss(model, config_enumerate(guide), data)
        neg_log_marginal = exact.loss(config_enumerate(model), lambda data: None, data)
        return neg_elbo, neg_log_marginal, pyro.param("locs").detach()

    enum_loss, optimum, enum_locs = train(exact, config_enumerate(guide))
    arsm_loss, _, arsm_locs = train(ARSM_ELBO(max_plate_nesting=1), guide)
    print(f"\n[SVI mixture, 1500 Adam steps] exact -ELBO: TraceEnum {enum_loss:.3f}, "
          f"ARSM {arsm_loss:.3f}; optimum -log p(x) {optimum:.3f}")
    assert torch.allclose(arsm_locs, enum_locs, atol=0.05)
    assert arsm_loss - optimum < 0.02 * abs(optimum)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def _simple_model(data):
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
        pyro.sample("x", dist.Normal(z.float(), 1.0), obs=data)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_logits_raise_naming_the_site(bad):
    # with validation on, torch's own constraint check may fire first; ours names the site
    pyro.enable_validation(False)

    def guide(data):
        phi = torch.zeros(len(data), 3)
        phi[1, 2] = bad
        with pyro.plate("data", len(data)):
            pyro.sample("z", dist.Categorical(logits=phi))

    with pytest.raises(ValueError, match="site 'z'.*(NaN|infinite) logits"):
        ARSM_ELBO().loss_and_grads(_simple_model, guide, PLATED_DATA)


def test_model_enumerated_site_missing_from_guide_is_summed_out():
    # nothing is sampled: the loss is TraceEnum_ELBO's (max_plate_nesting guessed by both)
    model = config_enumerate(_simple_model)

    def guide(data):
        pass

    expected = TraceEnum_ELBO().loss(model, guide, PLATED_DATA)
    assert ARSM_ELBO().loss(model, guide, PLATED_DATA) == pytest.approx(expected, rel=1e-6)


def test_model_latent_missing_from_guide_raises():
    def guide(data):
        pass

    with pytest.raises(ValueError, match="latent site 'z' of the model is missing from the guide"):
        ARSM_ELBO().loss_and_grads(_simple_model, guide, PLATED_DATA)


def test_site_observed_in_model_but_sampled_in_guide_raises():
    def guide(data):
        with pyro.plate("data", len(data)):
            pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
            pyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="site 'x' is observed in the model but sampled"):
        ARSM_ELBO().loss_and_grads(_simple_model, guide, PLATED_DATA)


def test_unknown_estimator_raises():
    with pytest.raises(ValueError, match="estimator must be one of"):
        ARSM_ELBO(estimator="reinforce")


def _flattening_model(data):
    locs = pyro.param("locs", torch.tensor([-1.0, 0.0, 1.0]))
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
    # flattens every batch dim: breaks the batched pseudo pass
    pyro.sample("x", dist.Normal(locs[z].reshape(-1), 1.0).to_event(1), obs=data)


def _summing_model(data):
    locs = pyro.param("locs", torch.tensor([-1.0, 0.3, 1.2]))
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
    # sums every batch dim into a scalar: silently wrong if not caught (asymmetric locs, so the
    # pseudo rows cannot cancel out)
    pyro.sample("x", dist.Normal(locs[z].sum(), 1.0), obs=data.sum())


def _plain_guide(data):
    phi = pyro.param("phi", torch.tensor([[0.5, -0.5, 0.0], [0.0, 1.0, -1.0], [0.3, 0.0, 0.2]]))
    with pyro.plate("data", len(data)):
        pyro.sample("z", dist.Categorical(logits=phi))


@pytest.mark.parametrize("model", [_flattening_model, _summing_model])
def test_model_that_does_not_broadcast_raises_on_the_batched_path(model):
    with pytest.raises(ValueError, match="(?s)site 'z'.*vectorize_pseudo=False"):
        ARSM_ELBO(max_plate_nesting=1, vectorize_pseudo=True).loss_and_grads(
            model, _plain_guide, PLATED_DATA)


@pytest.mark.parametrize("model", [_flattening_model, _summing_model])
def test_model_that_does_not_broadcast_falls_back_once(model, monkeypatch):
    init(model, _plain_guide, PLATED_DATA)
    assert_falls_back_to_sequential(monkeypatch, ["z"], model, _plain_guide, ["phi", "locs"],
                                    PLATED_DATA, match="one at a time", num_particles=1)


@pytest.mark.slow
@pytest.mark.parametrize("model, num_draws", [(_flattening_model, 400), (_summing_model, 600)])
def test_model_that_does_not_broadcast_is_unbiased_on_the_sequential_path(model, num_draws):
    init(model, _plain_guide, PLATED_DATA)
    names = ["phi", "locs"]
    # brute force: enumeration would batch the model too, and these do not broadcast
    exact = brute_force_gradient(model, _plain_guide, names, PLATED_DATA)
    draws = gradient_draws(ARSM_ELBO(vectorize_pseudo=False), model, _plain_guide, names,
                           num_draws, PLATED_DATA)
    assert_unbiased(draws, exact, label=f"non-broadcasting {model.__name__}, sequential path")


def test_arsm_site_baseline_is_ignored_with_a_warning():
    def guide(data):
        with pyro.plate("data", len(data)):
            pyro.sample("z", dist.Categorical(logits=torch.zeros(3)),
                        infer={"baseline": {"use_decaying_avg_baseline": True}})

    with pytest.warns(UserWarning, match="baseline of site 'z' is ignored"):
        ARSM_ELBO().loss_and_grads(_simple_model, guide, PLATED_DATA)


def test_guide_messenger_is_rejected():
    from pyro.infer.autoguide import AutoNormalMessenger

    def model(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=data)

    with pytest.raises(NotImplementedError, match="GuideMessenger"):
        ARSM_ELBO().loss_and_grads(model, AutoNormalMessenger(model), PLATED_DATA)


def test_no_warnings_on_a_plain_categorical_model():
    init(plated_model, plated_guide, PLATED_DATA)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ARSM_ELBO().loss_and_grads(plated_model, plated_guide, PLATED_DATA)
