"""ARSM_ELBO gradients are unbiased: Monte Carlo means against exact gradients (z-tests).

Each draw is the gradient of ``ARSM_ELBO(num_particles=K, vectorize_particles=True)``, i.e. the
mean of K independent estimates; the z-test runs over M such draws. The exact references are
TraceEnum_ELBO with the guide enumerated, or a brute-force sum over the guide's discrete values.
"""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro_exact import (
    assert_unbiased,
    brute_force_gradient,
    enum_gradient,
    gradient_draws,
)
from pyro_models import (
    PLATED_DATA,
    SUB_DATA,
    VAE_DATA,
    VAE_PARAMS,
    bernoulli_guide,
    bernoulli_model,
    chain_guide,
    chain_model,
    downstream_guide,
    downstream_model,
    init,
    make_vae_networks,
    onehot_guide,
    onehot_model,
    plated_guide,
    plated_model,
    single_guide,
    single_model,
    subsampled_guide,
    subsampled_model,
    to_event_guide,
    to_event_model,
    vae_guide,
    vae_model,
)

from pyro_arsm import ARSM_ELBO

pytestmark = pytest.mark.usefixtures("fresh_param_store")


def arsm_draws(model, guide, names, args, mpn, particles=200, draws=40, **elbo_kwargs):
    elbo = ARSM_ELBO(num_particles=particles, vectorize_particles=True,
                     max_plate_nesting=mpn, **elbo_kwargs)
    return gradient_draws(elbo, model, guide, names, draws, *args)


# ---------------------------------------------------------------------------------------------
# Models used by this module only (the shared ones are in pyro_models.py)
# ---------------------------------------------------------------------------------------------


def bernoulli_event_model(x):
    v = pyro.param("v", torch.tensor([1.0, -2.0, 0.5]))
    b = pyro.sample("b", dist.Bernoulli(0.5 * torch.ones(3)).to_event(1))
    mean = torch.tanh((b * v).sum(-1)) + b[..., 0] * b[..., 1]
    pyro.sample("x", dist.Normal(mean, 0.5), obs=x)


def bernoulli_event_guide(x):
    alpha = pyro.param("alpha", torch.tensor([0.5, -0.3, 1.0]))
    pyro.sample("b", dist.Bernoulli(logits=alpha).to_event(1))


def upstream_model(x):
    locs = pyro.param("locs", torch.tensor([-1.0, 0.0, 1.5]))
    u = pyro.sample("u", dist.Normal(0.0, 1.0))
    z = pyro.sample("z", dist.Categorical(logits=torch.stack([u, -u, 0.5 * u], -1)))
    pyro.sample("x", dist.Normal(locs[z] + u, 1.0), obs=x)


def upstream_guide(x):
    mu = pyro.param("mu", torch.tensor(0.3))
    a = pyro.param("a", torch.tensor([1.0, -0.5, 0.2]))
    b = pyro.param("b", torch.tensor([0.1, 0.2, -0.3]))
    u = pyro.sample("u", dist.Normal(mu, 0.8))
    pyro.sample("z", dist.Categorical(logits=a * u.unsqueeze(-1) + b))


MASK = torch.tensor([True, False, True, True])
MASK_DATA = torch.tensor([0.0, 1.0, 2.5, -1.0])


def masked_model(data, keep=None, how="poutine"):
    locs = pyro.param("locs", torch.tensor([-1.0, 0.0, 1.0]))
    with pyro.plate("data", len(data)):
        mask = MASK if keep is None else True
        prior = dist.Categorical(logits=torch.zeros(3))
        if how == "poutine":
            with poutine.mask(mask=mask):
                z = pyro.sample("z", prior)
                pyro.sample("x", dist.Normal(locs[z], 1.0), obs=data)
        else:
            z = pyro.sample("z", prior.mask(mask))
            pyro.sample("x", dist.Normal(locs[z], 1.0).mask(mask), obs=data)


def masked_guide(data, keep=None, how="poutine"):
    phi = pyro.param("phi", torch.tensor([[0.5, -0.5, 0.0], [0.0, 1.0, -1.0],
                                          [-0.5, 0.0, 0.5], [1.0, 0.0, 0.0]]))
    logits = phi if keep is None else phi[keep]
    with pyro.plate("data", len(data)):
        mask = MASK if keep is None else True
        if how == "poutine":
            with poutine.mask(mask=mask):
                pyro.sample("z", dist.Categorical(logits=logits))
        else:
            pyro.sample("z", dist.Categorical(logits=logits).mask(mask))


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["arsm", "ars", "rloo"])
def test_unbiased_single_categorical(estimator):
    x = torch.tensor(0.7)
    init(single_model, single_guide, x)
    names = ["phi", "locs"]
    exact, _ = enum_gradient(single_model, single_guide, names, 0, x)
    draws = arsm_draws(single_model, single_guide, names, (x,), 0, estimator=estimator)
    assert_unbiased(draws, exact, label=f"single categorical, {estimator}")


@pytest.mark.parametrize("vectorize_pseudo", [True, False])
def test_unbiased_to_event_non_separable(vectorize_pseudo):
    x = torch.tensor(0.4)
    init(to_event_model, to_event_guide, x)
    names = ["phi", "scale"]
    exact = brute_force_gradient(to_event_model, to_event_guide, names, x)
    draws = arsm_draws(to_event_model, to_event_guide, names, (x,), 0,
                       draws=40 if vectorize_pseudo else 20, vectorize_pseudo=vectorize_pseudo)
    assert_unbiased(draws, exact, label=f"to_event, vectorize_pseudo={vectorize_pseudo}")


def test_brute_force_agrees_with_trace_enum():
    # the two exact references agree where both apply
    init(plated_model, plated_guide, PLATED_DATA)
    names = ["phi", "locs"]
    brute = brute_force_gradient(plated_model, plated_guide, names, PLATED_DATA)
    enum, _ = enum_gradient(plated_model, plated_guide, names, 1, PLATED_DATA)
    assert torch.allclose(brute, enum, atol=1e-5)


def test_unbiased_plate_under_poutine_scale():
    init(plated_model, plated_guide, PLATED_DATA)
    names = ["phi", "locs"]
    # the scaled ELBO is 2.5 x the unscaled one: an exact reference independent of how any
    # estimator handles scale
    exact, _ = enum_gradient(plated_model, plated_guide, names, 1, PLATED_DATA)
    draws = arsm_draws(plated_model, plated_guide, names, (PLATED_DATA, 2.5), 1)
    assert_unbiased(draws, 2.5 * exact, label="plate + poutine.scale(2.5)")


@pytest.mark.slow
def test_unbiased_subsampled_plate_full_data_gradient():
    init(subsampled_model, subsampled_guide, SUB_DATA)
    names = ["phi", "locs"]
    exact, _ = enum_gradient(subsampled_model, subsampled_guide, names, 1, SUB_DATA)
    # one subsample per draw: few particles, many draws
    elbo = ARSM_ELBO(num_particles=50, vectorize_particles=True, max_plate_nesting=1)
    draws = gradient_draws(elbo, subsampled_model, subsampled_guide, names, 150, SUB_DATA, 2)
    assert_unbiased(draws, exact, label="subsample_size=2 of 6")


@pytest.mark.parametrize("vectorize_pseudo, cache_dependencies",
                         [(True, True), (False, True), (True, False)])
def test_unbiased_chained_categoricals(vectorize_pseudo, cache_dependencies):
    x = torch.tensor(1.3)
    init(chain_model, chain_guide, x)
    names = ["phi1", "phi2", "locs"]
    exact, _ = enum_gradient(chain_model, chain_guide, names, 0, x)
    draws = arsm_draws(chain_model, chain_guide, names, (x,), 0,
                       draws=40 if vectorize_pseudo else 20, vectorize_pseudo=vectorize_pseudo,
                       cache_dependencies=cache_dependencies)
    assert_unbiased(draws, exact, label=f"chained categoricals, vectorize={vectorize_pseudo}, "
                                        f"cache={cache_dependencies}")


@pytest.mark.parametrize("estimator", ["arsm", "ar", "rloo"])
def test_unbiased_bernoulli_plate(estimator):
    data = torch.tensor([0.0, 1.0, 2.5, -1.0])
    init(bernoulli_model, bernoulli_guide, data)
    names = ["alpha", "w"]
    exact, _ = enum_gradient(bernoulli_model, bernoulli_guide, names, 1, data)
    draws = arsm_draws(bernoulli_model, bernoulli_guide, names, (data,), 1,
                       draws=100 if estimator == "ar" else 40, estimator=estimator)
    assert_unbiased(draws, exact, label=f"Bernoulli plate, {estimator}")


def test_unbiased_bernoulli_to_event_non_separable():
    x = torch.tensor(0.3)
    init(bernoulli_event_model, bernoulli_event_guide, x)
    names = ["alpha", "v"]
    exact = brute_force_gradient(bernoulli_event_model, bernoulli_event_guide, names, x)
    draws = arsm_draws(bernoulli_event_model, bernoulli_event_guide, names, (x,), 0)
    assert_unbiased(draws, exact, label="Bernoulli to_event (DisARM, joint f)")


def test_unbiased_one_hot_categorical():
    data = torch.tensor([0.3, 1.8])
    init(onehot_model, onehot_guide, data)
    names = ["phi", "locs"]
    exact, _ = enum_gradient(onehot_model, onehot_guide, names, 1, data)
    draws = arsm_draws(onehot_model, onehot_guide, names, (data,), 1)
    assert_unbiased(draws, exact, label="OneHotCategorical plate")


def test_unbiased_reparameterized_site_upstream():
    x = torch.tensor(0.9)
    init(upstream_model, upstream_guide, x)
    names = ["mu", "a", "b", "locs"]
    exact, exact_se = _upstream_reference(names, x)
    draws = arsm_draws(upstream_model, upstream_guide, names, (x,), 0, draws=60)
    assert_unbiased(draws, exact, exact_se, label="reparameterized site upstream")


def _upstream_reference(names, x):
    # TraceEnum is exact over z and samples u: average many vectorized particles per draw
    from pyro.infer import TraceEnum_ELBO, config_enumerate
    elbo = TraceEnum_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=0)
    draws = gradient_draws(elbo, upstream_model, config_enumerate(upstream_guide, "parallel"),
                           names, 40, x)
    return draws.mean(0), draws.std(0) / draws.shape[0] ** 0.5


@pytest.mark.parametrize("vectorize_pseudo, cache_dependencies",
                         [(True, True), (False, True), (True, False)])
def test_unbiased_reparameterized_site_downstream(vectorize_pseudo, cache_dependencies):
    # w ~ q(w | z) must be re-sampled at each pseudo action; replaying it biases the gradient
    x = torch.tensor(1.2)
    init(downstream_model, downstream_guide, x)
    names = ["phi", "m", "locs"]
    from pyro.infer import TraceEnum_ELBO, config_enumerate
    elbo = TraceEnum_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=0)
    ref = gradient_draws(elbo, downstream_model, config_enumerate(downstream_guide, "parallel"),
                         names, 40, x)
    exact, exact_se = ref.mean(0), ref.std(0) / ref.shape[0] ** 0.5
    draws = arsm_draws(downstream_model, downstream_guide, names, (x,), 0,
                       draws=60 if vectorize_pseudo else 30, vectorize_pseudo=vectorize_pseudo,
                       cache_dependencies=cache_dependencies)
    assert_unbiased(draws, exact, exact_se, label=f"reparam downstream, vectorize="
                                                  f"{vectorize_pseudo}, cache={cache_dependencies}")


def test_unbiased_model_and_guide_networks():
    make_vae_networks(seed=1)
    init(vae_model, vae_guide, VAE_DATA)
    exact, _ = enum_gradient(vae_model, vae_guide, VAE_PARAMS, 1, VAE_DATA)
    draws = arsm_draws(vae_model, vae_guide, VAE_PARAMS, (VAE_DATA,), 1)
    assert_unbiased(draws, exact, label="encoder and decoder weights")


@pytest.mark.parametrize("how", ["poutine", "distribution"])
def test_unbiased_masked_elements(how):
    init(masked_model, masked_guide, MASK_DATA, None, how)
    names = ["phi", "locs"]
    keep = MASK.nonzero().squeeze(-1)
    # masked elements drop out of the ELBO: the exact gradient is that of the unmasked data
    exact, _ = enum_gradient(masked_model, masked_guide, names, 1, MASK_DATA[keep], keep, how)
    draws = arsm_draws(masked_model, masked_guide, names, (MASK_DATA, None, how), 1)
    assert (draws[:, 3:6] == 0).all()  # phi row 1 is masked out: exactly zero
    assert_unbiased(draws, exact, label=f"mask via {how}")


def probs_model(data):
    locs = pyro.param("locs", torch.tensor([-1.0, 0.5, 2.0]))
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
        b = pyro.sample("b", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(locs[z] + b, 1.0), obs=data)


def probs_guide(data):
    probs = pyro.param("probs", torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]]),
                       constraint=dist.constraints.simplex)
    p = pyro.param("p", torch.tensor([0.3, 0.8]), constraint=dist.constraints.unit_interval)
    with pyro.plate("data", len(data)):
        pyro.sample("z", dist.Categorical(probs=probs))
        pyro.sample("b", dist.Bernoulli(probs=p))


def test_unbiased_probs_parameterization():
    # Categorical(probs=...) and Bernoulli(probs=...): the gradient reaches probs via the logits
    data = torch.tensor([0.3, 1.8])
    init(probs_model, probs_guide, data)
    names = ["probs", "p", "locs"]
    exact, _ = enum_gradient(probs_model, probs_guide, names, 1, data)
    draws = arsm_draws(probs_model, probs_guide, names, (data,), 1)
    assert_unbiased(draws, exact, label="probs-parameterized Categorical and Bernoulli")


NESTED_DATA = torch.tensor([[0.3, -1.0], [2.0, 0.5]])


def nested_model(data):
    locs = pyro.param("locs", torch.tensor([-1.0, 0.5, 1.5]))
    g = pyro.sample("g", dist.Categorical(logits=torch.zeros(2)))
    with pyro.plate("rows", 2, dim=-2), pyro.plate("cols", 2, dim=-1):
        z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
        pyro.sample("x", dist.Normal(locs[z] + g.float(), 1.0), obs=data)


def nested_guide(data):
    phi = pyro.param("phi", torch.tensor([[[0.5, -0.5, 0.0], [0.0, 1.0, -1.0]],
                                          [[-0.5, 0.0, 0.5], [1.0, 0.0, 0.0]]]))
    g = pyro.sample("g", dist.Categorical(logits=pyro.param("psi", torch.tensor([0.3, -0.2]))))
    with pyro.plate("rows", 2, dim=-2), pyro.plate("cols", 2, dim=-1):
        pyro.sample("z", dist.Categorical(logits=phi + 0.5 * g.float().unsqueeze(-1)))


@pytest.mark.parametrize("mpn", [2, float("inf")])
def test_unbiased_nested_plates_under_a_global_categorical(mpn):
    # the global site's cost holds every plated term; the local sites are downstream of it
    init(nested_model, nested_guide, NESTED_DATA)
    names = ["phi", "psi", "locs"]
    exact, _ = enum_gradient(nested_model, nested_guide, names, 2, NESTED_DATA)
    draws = arsm_draws(nested_model, nested_guide, names, (NESTED_DATA,), mpn)
    assert_unbiased(draws, exact, label=f"nested plates + global categorical, mpn={mpn}")


@pytest.mark.parametrize("num_rloo_samples", [None, 8])
def test_unbiased_rloo_on_to_event_and_plates(num_rloo_samples):
    # RLOO shares the pseudo-pass machinery: independent samples instead of swaps
    x = torch.tensor(0.4)
    init(to_event_model, to_event_guide, x)
    names = ["phi", "scale"]
    exact = brute_force_gradient(to_event_model, to_event_guide, names, x)
    draws = arsm_draws(to_event_model, to_event_guide, names, (x,), 0, estimator="rloo",
                       num_rloo_samples=num_rloo_samples)
    assert_unbiased(draws, exact, label=f"RLOO({num_rloo_samples}) to_event")
    pyro.clear_param_store()
    init(onehot_model, onehot_guide, torch.tensor([0.3, 1.8]))
    names = ["phi", "locs"]
    exact, _ = enum_gradient(onehot_model, onehot_guide, names, 1, torch.tensor([0.3, 1.8]))
    draws = arsm_draws(onehot_model, onehot_guide, names, (torch.tensor([0.3, 1.8]),), 1,
                       estimator="rloo", num_rloo_samples=num_rloo_samples)
    assert_unbiased(draws, exact, label=f"RLOO({num_rloo_samples}) one-hot plate")
