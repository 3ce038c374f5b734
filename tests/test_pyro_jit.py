"""JitARSM_ELBO: unbiased like ARSM_ELBO on the models its restrictions allow, compiled once, and
clear errors on models it cannot compile."""


import pyro
import pyro.distributions as dist
import pyro_models
import pytest
import torch
from pyro.infer import SVI
from pyro_exact import assert_unbiased, brute_force_gradient, enum_gradient, gradient_draws
from pyro_models import (
    PLATED_DATA,
    VAE_DATA,
    VAE_PARAMS,
    bernoulli_guide,
    bernoulli_model,
    chain_guide,
    chain_model,
    init,
    plated_guide,
    plated_model,
    to_event_guide,
    to_event_model,
)

from pyro_arsm import JitARSM_ELBO

pytestmark = [
    pytest.mark.usefixtures("fresh_param_store"),
    # torch.jit.trace is deprecated in torch 2.13 (it still works)
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.trace` is deprecated:DeprecationWarning"),
    # tracing warns at every Python bool, len() or torch.tensor of a traced value (Pyro's own
    # JitTrace_ELBO silences these with ignore_jit_warnings=True)
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]


def jit_draws(model, guide, names, args, mpn, particles=200, draws=40, model_kwargs=None,
              **kwargs):
    elbo = JitARSM_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=mpn,
                        **kwargs)
    return gradient_draws(elbo, model, guide, names, draws, *args, **(model_kwargs or {}))


def test_unbiased_to_event_non_separable():
    # whole-site swaps, no deduplication: all C(C-1)/2 + 1 rows every step
    x = torch.tensor(0.4)
    init(to_event_model, to_event_guide, x)
    names = ["phi", "scale"]
    exact = brute_force_gradient(to_event_model, to_event_guide, names, x)
    assert_unbiased(jit_draws(to_event_model, to_event_guide, names, (x,), 0), exact,
                    label="jit, to_event")


@pytest.mark.parametrize("estimator", ["arsm", "local", "rloo"])
def test_unbiased_plate_under_poutine_scale(estimator):
    init(plated_model, plated_guide, PLATED_DATA)
    names = ["phi", "locs"]
    exact, _ = enum_gradient(plated_model, plated_guide, names, 1, PLATED_DATA)
    # non-tensor inputs through **kwargs, as Pyro's Jit*_ELBO require
    draws = jit_draws(plated_model, plated_guide, names, (PLATED_DATA,), 1,
                      model_kwargs={"scale": 2.5}, estimator=estimator)
    assert_unbiased(draws, 2.5 * exact, label=f"jit, plate + poutine.scale, {estimator}")


def test_unbiased_chained_categoricals():
    x = torch.tensor(1.3)
    init(chain_model, chain_guide, x)
    names = ["phi1", "phi2", "locs"]
    exact, _ = enum_gradient(chain_model, chain_guide, names, 0, x)
    assert_unbiased(jit_draws(chain_model, chain_guide, names, (x,), 0), exact,
                    label="jit, chained categoricals")


def test_unbiased_bernoulli_plate():
    data = torch.tensor([0.0, 1.0, 2.5, -1.0])
    init(bernoulli_model, bernoulli_guide, data)
    names = ["alpha", "w"]
    exact, _ = enum_gradient(bernoulli_model, bernoulli_guide, names, 1, data)
    assert_unbiased(jit_draws(bernoulli_model, bernoulli_guide, names, (data,), 1), exact,
                    label="jit, Bernoulli plate (DisARM)")


def test_unbiased_model_and_guide_networks():
    pyro_models.make_vae_networks(seed=1)
    model, guide = pyro_models.vae_model, pyro_models.vae_guide
    init(model, guide, VAE_DATA)
    exact, _ = enum_gradient(model, guide, VAE_PARAMS, 1, VAE_DATA)
    assert_unbiased(jit_draws(model, guide, VAE_PARAMS, (VAE_DATA,), 1), exact,
                    label="jit, encoder and decoder weights")


def test_compiled_once_and_python_not_rerun():
    calls = []

    def model(data):
        calls.append("model")
        plated_model(data)

    elbo = JitARSM_ELBO(max_plate_nesting=1)
    svi = SVI(model, plated_guide, pyro.optim.Adam({"lr": 0.01}), loss=elbo)
    losses = [svi.step(PLATED_DATA) for _ in range(6)]
    runs_after_compiling = len(calls)
    losses += [svi.step(PLATED_DATA) for _ in range(6)]
    assert len(calls) == runs_after_compiling  # the model's Python no longer runs
    assert len(set(losses)) > 1  # fresh randomness on every compiled step
    assert all(torch.isfinite(torch.tensor(losses)))
    compiled = [state.compiled for state in elbo._programs._states.values() if state.compiled]
    assert len(compiled) == 1 and len(compiled[0].compiled) == 1


class _Program:
    def model(self, data):
        plated_model(data)

    def guide(self, data):
        plated_guide(data)


def test_bound_methods_compile_once():
    """``obj.model`` is a new object on every access: the program is still compiled once."""
    obj = _Program()
    elbo = JitARSM_ELBO(max_plate_nesting=1)
    for _ in range(4):
        elbo.loss_and_grads(obj.model, obj.guide, PLATED_DATA)
    compiled = [state.compiled for state in elbo._programs._states.values() if state.compiled]
    assert len(elbo._programs) == 1 and len(compiled) == 1 and len(compiled[0].compiled) == 1


def test_estimator_ars_is_refused():
    with pytest.raises(NotImplementedError, match="estimator='ars'"):
        JitARSM_ELBO(estimator="ars")
    with pytest.raises(ValueError, match="vectorize_pseudo"):
        JitARSM_ELBO(vectorize_pseudo=False)


def first_element_model(data):
    locs = pyro.param("locs", torch.tensor([-1.0, 0.0, 1.0, 2.0]))
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(logits=torch.zeros(4)))
        # z[0] reads the first element along the leftmost dim: wrong under a batched pass
        shift = z.reshape(-1)[0].float()
        pyro.sample("x", dist.Normal(locs[z] + shift, 1.0), obs=data)


def test_model_that_needs_the_sequential_path_gets_a_clear_error():
    elbo = JitARSM_ELBO(max_plate_nesting=1)
    init(first_element_model, plated_guide, PLATED_DATA)
    with pytest.warns(UserWarning, match="batched pseudo-action pass for guide site 'z'"):
        with pytest.raises(NotImplementedError, match="guide site 'z'.*one at a time"):
            elbo.differentiable_loss(first_element_model, plated_guide, PLATED_DATA)


def poisson_guide(data):
    rate = pyro.param("rate", torch.tensor(2.0), constraint=dist.constraints.positive)
    pyro.sample("n", dist.Poisson(rate))
    plated_guide(data)


def poisson_model(data):
    pyro.sample("n", dist.Poisson(3.0))
    plated_model(data)


def test_score_function_site_gets_a_clear_error():
    elbo = JitARSM_ELBO(max_plate_nesting=1, warn_score_function=False)
    with pytest.raises(NotImplementedError, match="score-function sites"):
        elbo.loss_and_grads(poisson_model, poisson_guide, PLATED_DATA)


def test_nan_logits_are_reported_after_the_compiled_step():
    svi = SVI(plated_model, plated_guide, pyro.optim.Adam({"lr": 0.01}),
              loss=JitARSM_ELBO(max_plate_nesting=1))
    svi.step(PLATED_DATA)
    svi.step(PLATED_DATA)
    with torch.no_grad():
        pyro.param("phi").unconstrained()[1, 2] = float("nan")
    with pytest.raises(ValueError, match="guide site 'z' has NaN or infinite logits"):
        svi.step(PLATED_DATA)


@pytest.mark.parametrize("estimator", ["arsm", "rloo"])
def test_unbiased_with_model_grads_from_every_evaluation(estimator):
    # the closed-form KL (the default) and the model gradient averaged over the pseudo rows
    init(to_event_model, to_event_guide, torch.tensor(0.4))
    names = ["phi", "scale"]
    exact = brute_force_gradient(to_event_model, to_event_guide, names, torch.tensor(0.4))
    draws = jit_draws(to_event_model, to_event_guide, names, (torch.tensor(0.4),), 0,
                      estimator=estimator, model_grads="all")
    assert_unbiased(draws, exact, label=f"jit, model_grads all, {estimator}")
