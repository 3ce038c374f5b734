"""pyro_arsm.AutoCategorical: unbiased ARSM gradients through it, composition, errors."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, TraceEnum_ELBO
from pyro.infer.autoguide import AutoDelta, AutoGuideList
from pyro.ops.indexing import Vindex
from pyro.optim import Adam
from pyro_exact import assert_unbiased, brute_force_gradient, enum_gradient, gradient_draws

from pyro_arsm import ARSM_ELBO, AutoCategorical, discrete_latent_sites

pytestmark = pytest.mark.usefixtures("fresh_param_store")

DATA = torch.tensor([-1.3, 0.2, 2.1, 0.8])


def mixed_model(data):
    """Global continuous latent, plated categorical and Bernoulli latents."""
    loc = pyro.sample("loc", dist.Normal(torch.zeros(3), 2.0).to_event(1))
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(logits=torch.tensor([0.2, -0.4, 0.1])))
        b = pyro.sample("b", dist.Bernoulli(probs=0.3))
        pyro.sample("x", dist.Normal(Vindex(loc)[..., z] + 1.5 * b, 1.0), obs=data)


def combined_guide(model):
    guide = AutoGuideList(model)
    guide.append(AutoDelta(poutine.block(model, hide=["z", "b"])))
    guide.append(AutoCategorical(poutine.block(model, expose=["z", "b"]), init="uniform"))
    return guide


def init_params(model, guide, *args):
    guide_trace = poutine.trace(guide).get_trace(*args)
    poutine.replay(model, trace=guide_trace)(*args)
    # move the logits away from their initial values so the gradient has structure
    with torch.no_grad():
        for _, value in pyro.get_param_store().named_parameters():
            value.add_(0.5 * torch.randn_like(value))
    return list(pyro.get_param_store().keys())


def arsm_draws(model, guide, names, args, mpn, particles=200, draws=40, **kwargs):
    elbo = ARSM_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=mpn,
                     **kwargs)
    return gradient_draws(elbo, model, guide, names, draws, *args)


def test_discrete_latent_sites_lists_only_discrete_latents():
    assert discrete_latent_sites(mixed_model, DATA) == ["z", "b"]


def test_unbiased_local_logits_in_auto_guide_list():
    guide = combined_guide(mixed_model)
    names = init_params(mixed_model, guide, DATA)
    assert any(".logits.z" in n for n in names) and any(".logits.b" in n for n in names)
    exact, _ = enum_gradient(mixed_model, guide, names, 1, DATA)
    draws = arsm_draws(mixed_model, guide, names, (DATA,), 1)
    assert_unbiased(draws, exact, label="AutoGuideList(AutoDelta, AutoCategorical)")


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.z = torch.nn.Linear(1, 3)
        self.w = torch.nn.Linear(1, 2 * 3)

    def forward(self, data):
        x = data.unsqueeze(-1)
        return {"z": self.z(x), "w": self.w(x.mean(0)).reshape(2, 3)}


def amortized_model(data):
    locs = pyro.param("locs", torch.tensor([-1.0, 0.5, 2.0]))
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
        pyro.sample("x", dist.Normal(locs[z], 1.0), obs=data)
    # a non-separable pair of one-hot codes (.to_event): the cost depends on both jointly
    w = pyro.sample("w", dist.OneHotCategorical(logits=torch.zeros(2, 3)).to_event(1))
    pyro.sample("y", dist.Normal((w[..., 0, :] * w[..., 1, :]).sum(-1) * 2.0, 0.5),
                obs=torch.tensor(1.0))


def test_unbiased_amortized_logits_and_one_hot_to_event():
    torch.manual_seed(3)
    guide = AutoCategorical(amortized_model, network=Encoder())
    data = DATA[:2]
    names = init_params(amortized_model, guide, data)
    assert any("network" in n for n in names), names
    assert not any(".logits." in n for n in names), "amortized sites must not get local logits"
    exact = brute_force_gradient(amortized_model, guide, names, data)
    draws = arsm_draws(amortized_model, guide, names, (data,), 1)
    assert_unbiased(draws, exact, label="amortized AutoCategorical, one-hot to_event")


def test_subsampled_plate_uses_full_size_logits():
    data = torch.arange(10.0)

    def model(data):
        with pyro.plate("data", len(data), subsample_size=4) as idx:
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
            pyro.sample("x", dist.Normal(z.float(), 1.0), obs=data[idx])

    guide = AutoCategorical(model)
    svi = SVI(model, guide, Adam({"lr": 0.1}), ARSM_ELBO(max_plate_nesting=1))
    for _ in range(3):
        assert torch.isfinite(torch.tensor(svi.step(data)))
    logits = pyro.get_param_store()["AutoCategorical.logits.z"]
    assert logits.shape == (10, 3)
    # only the rows of the subsamples seen moved; the mode is returned for the full plate
    assert guide.median(data)["z"].shape == (10,)


def test_prior_initialization_copies_model_logits():
    prior = torch.tensor([1.0, -2.0, 0.5])

    def model():
        with pyro.plate("p", 2):
            pyro.sample("z", dist.Categorical(logits=prior))

    guide = AutoCategorical(model)
    guide()
    logits = pyro.get_param_store()["AutoCategorical.logits.z"]
    assert torch.allclose(logits, prior.log_softmax(-1).expand(2, 3))


def test_svi_learns_bernoulli_posterior():
    # exact posterior of b given x: enough steps of ARSM_ELBO with the autoguide get close
    def model(x):
        b = pyro.sample("b", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(2.0 * b, 1.0), obs=x)

    x = torch.tensor(1.6)
    guide = AutoCategorical(model, init="uniform")
    svi = SVI(model, guide, Adam({"lr": 0.1}), ARSM_ELBO(num_particles=8, vectorize_particles=True))
    for _ in range(250):
        svi.step(x)
    logit = pyro.get_param_store()["AutoCategorical.logits.b"].item()
    exact = (dist.Normal(2.0, 1.0).log_prob(x) - dist.Normal(0.0, 1.0).log_prob(x)).item()
    assert abs(logit - exact) < 0.25, (logit, exact)


def test_error_on_continuous_site_names_the_fix():
    with pytest.raises(ValueError, match=r"site 'loc'.*continuous.*AutoGuideList"):
        AutoCategorical(mixed_model)(DATA)


def test_error_on_model_enumerated_site():
    def model():
        pyro.sample("z", dist.Categorical(logits=torch.zeros(3)), infer={"enumerate": "parallel"})

    with pytest.raises(ValueError, match=r"site 'z' is enumerated in the model"):
        AutoCategorical(model)()


def test_error_on_unsupported_discrete_distribution():
    def model():
        pyro.sample("n", dist.Poisson(3.0))

    with pytest.raises(NotImplementedError, match=r"site 'n'.*Poisson"):
        AutoCategorical(model)()


def test_sites_argument_equals_block_expose():
    guide = AutoGuideList(mixed_model)
    guide.append(AutoDelta(poutine.block(mixed_model, hide=["z", "b"])))
    guide.append(AutoCategorical(mixed_model, sites=["z", "b"]))
    assert set(guide(DATA)) == {"loc", "z", "b"}
    with pytest.raises(ValueError, match=r"\['q'\] are not latent sample sites"):
        AutoCategorical(mixed_model, sites=["z", "q"])(DATA)


def test_network_must_return_a_dict():
    def model():
        pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))

    with pytest.raises(TypeError, match="must return a dict"):
        AutoCategorical(model, network=lambda: torch.zeros(3))()


def test_trace_enum_still_works_with_the_same_guide_enumerated():
    # AutoCategorical also serves as the guide of TraceEnum_ELBO with guide-side enumeration
    from pyro.infer import config_enumerate

    guide = combined_guide(mixed_model)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    loss = elbo.loss(mixed_model, config_enumerate(guide, "parallel"), DATA)
    assert torch.isfinite(torch.tensor(loss))


def test_svi_with_auto_normal_and_auto_categorical():
    # a sampled continuous guide (AutoNormal) upstream of the ARSM sites: trains without errors
    from pyro.infer.autoguide import AutoNormal

    guide = AutoGuideList(mixed_model)
    guide.append(AutoNormal(poutine.block(mixed_model, hide=["z", "b"])))
    guide.append(AutoCategorical(mixed_model, sites=["z", "b"]))
    svi = SVI(mixed_model, guide, Adam({"lr": 0.05}),
              ARSM_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1))
    losses = [svi.step(DATA) for _ in range(30)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.isfinite(p).all() for p in pyro.get_param_store().values())
