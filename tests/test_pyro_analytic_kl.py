"""``analytic_kl`` and ``model_grads="all"`` of ARSM_ELBO against exact gradients.

``analytic_kl=True`` takes a discrete guide site's own ``E_q[log q(z) - log p(z)]`` in closed form
and out of every sampled cost; ``model_grads="all"`` averages the model-parameter gradient over
every evaluated action. Both must leave the gradient unbiased (z-tests against a brute-force sum
over the guide's discrete values) on learned priors, priors that depend on an upstream sampled
site, ``.to_event`` and Bernoulli sites, score-function sites upstream, and the pattern where the
prior depends on the site itself through another guide site (sampled term kept).
"""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro_exact import assert_unbiased, brute_force_gradient, gradient_draws
from pyro_models import init

from pyro_arsm import ARSM_ELBO

pytestmark = pytest.mark.usefixtures("fresh_param_store")

DATA = torch.tensor([-1.0, 0.3, 1.8])
W_EVENT = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.3, -0.7], [-1.5, 0.8, 0.2]])


# --- models ----------------------------------------------------------------------------------

def kl_only_model(x):
    prior = pyro.param("prior", torch.tensor([0.2, -0.3, 0.5, 0.0]))
    pyro.sample("z", dist.Categorical(logits=prior))
    pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)


def kl_only_guide(x):
    phi = pyro.param("phi", torch.tensor([0.3, -0.5, 1.0, 0.0]))
    pyro.sample("z", dist.Categorical(logits=phi))


def learned_prior_model(data):
    prior = pyro.param("prior", torch.tensor([0.4, -0.2, 0.0, 0.7]))
    locs = pyro.param("locs", torch.tensor([-1.0, 0.0, 1.0, 2.0]))
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(logits=prior))
        pyro.sample("x", dist.Normal(locs[z], 1.0), obs=data)


def learned_prior_guide(data):
    phi = pyro.param("phi", torch.tensor([[0.5, -0.5, 0.0, 0.2], [0.0, 1.0, -1.0, 0.0],
                                          [-0.5, 0.0, 0.5, 1.0]]))
    with pyro.plate("data", len(data)):
        pyro.sample("z", dist.Categorical(logits=phi))


def upstream_prior_model(x):
    w = pyro.param("w", torch.tensor([[0.5, -0.5, 0.0], [-1.0, 1.0, 0.3], [0.2, 0.0, -0.8]]))
    locs = pyro.param("locs", torch.tensor([-1.0, 0.5, 1.5]))
    u = pyro.sample("u", dist.Categorical(logits=torch.zeros(3)))
    z = pyro.sample("z", dist.Categorical(logits=w[u]))  # the prior of z depends on u
    pyro.sample("x", dist.Normal(locs[z] + 0.5 * u, 1.0), obs=x)


def upstream_prior_guide(x):
    a = pyro.param("a", torch.tensor([0.3, -0.4, 0.8]))
    b = pyro.param("b", torch.tensor([[0.0, 0.6, -0.3], [0.7, -0.2, 0.1], [-0.5, 0.4, 0.9]]))
    u = pyro.sample("u", dist.Categorical(logits=a))
    pyro.sample("z", dist.Categorical(logits=b[u]))


def to_event_model(x):
    prior = pyro.param("prior", torch.tensor([[0.0, 0.5, -0.5], [0.3, 0.0, 0.0],
                                              [-0.2, 0.4, 0.1]]))
    z = pyro.sample("z", dist.Categorical(logits=prior).to_event(1))
    h = torch.gather(W_EVENT.expand(z.shape + (3,)), -1, z.unsqueeze(-1)).squeeze(-1)
    mean = torch.tanh(h.sum(-1)) + 0.5 * h[..., 0] * h[..., 1] * h[..., 2]
    pyro.sample("x", dist.Normal(mean, 0.5), obs=x)


def to_event_guide(x):
    phi = pyro.param("phi", torch.tensor([[0.2, -0.4, 0.1], [1.0, 0.0, -0.5], [-0.3, 0.6, 0.0]]))
    pyro.sample("z", dist.Categorical(logits=phi).to_event(1))


def bernoulli_model(data):
    prior = pyro.param("prior", torch.tensor(-0.4))
    v = pyro.param("v", torch.tensor(1.5))
    with pyro.plate("data", len(data)):
        b = pyro.sample("b", dist.Bernoulli(logits=prior.expand(len(data))))
        pyro.sample("x", dist.Normal(v * b - 0.5, 1.0), obs=data)


def bernoulli_guide(data):
    alpha = pyro.param("alpha", torch.tensor([0.5, -0.3, 1.0]))
    with pyro.plate("data", len(data)):
        pyro.sample("b", dist.Bernoulli(logits=alpha))


def two_layer_model(x):
    """The prior of z1 depends on z2, which the guide draws from z1: z1's KL has no closed
    form given the guide, so it keeps its sampled term (z2's prior is fixed: closed form)."""
    w = pyro.param("w", torch.tensor([[0.8, -0.4, 0.0], [-0.6, 0.9, 0.2], [0.1, 0.0, -0.7]]))
    locs = pyro.param("locs", torch.tensor([-1.2, 0.3, 1.4]))
    z2 = pyro.sample("z2", dist.Categorical(logits=torch.zeros(3)))
    z1 = pyro.sample("z1", dist.Categorical(logits=w[z2]))
    pyro.sample("x", dist.Normal(locs[z1], 1.0), obs=x)


def two_layer_guide(x):
    a = pyro.param("a", torch.tensor([0.4, -0.2, 0.6]))
    b = pyro.param("b", torch.tensor([[0.5, 0.0, -0.5], [0.0, 0.8, -0.1], [-0.6, 0.2, 0.7]]))
    z1 = pyro.sample("z1", dist.Categorical(logits=a))
    pyro.sample("z2", dist.Categorical(logits=b[z1]))


def score_function_model(x):
    w = pyro.param("w", torch.tensor([[0.5, -0.5, 0.0], [-1.0, 1.0, 0.3], [0.2, 0.0, -0.8]]))
    locs = pyro.param("locs", torch.tensor([-1.0, 0.5, 1.5]))
    n = pyro.sample("n", dist.Binomial(2, torch.tensor(0.5)))
    z = pyro.sample("z", dist.Categorical(logits=w[n.long()]))
    pyro.sample("x", dist.Normal(locs[z] + 0.3 * n, 1.0), obs=x)


def score_function_guide(x):
    p = pyro.param("p", torch.tensor(0.35), constraint=dist.constraints.unit_interval)
    b = pyro.param("b", torch.tensor([[0.0, 0.6, -0.3], [0.7, -0.2, 0.1], [-0.5, 0.4, 0.9]]))
    n = pyro.sample("n", dist.Binomial(2, p))
    pyro.sample("z", dist.Categorical(logits=b[n.long()]))


def reparameterized_model(x):
    locs = pyro.param("locs", torch.tensor([-1.0, 0.5, 1.5]))
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
    pyro.sample("x", dist.Normal(locs[z] + w, 1.0), obs=x)


def reparameterized_guide(x):
    m = pyro.param("m", torch.tensor(0.2))
    s = pyro.param("s", torch.tensor(0.8), constraint=dist.constraints.positive)
    phi = pyro.param("phi", torch.tensor([0.3, -0.5, 1.0]))
    pyro.sample("w", dist.Normal(m, s))
    pyro.sample("z", dist.Categorical(logits=phi))


# name, model, guide, params, data, max_plate_nesting, estimators
CASES = {
    "learned_prior": (learned_prior_model, learned_prior_guide, ["prior", "locs", "phi"], DATA,
                      1, ["arsm", "ars", "rloo", "ar", "local"]),
    "upstream_prior": (upstream_prior_model, upstream_prior_guide, ["w", "locs", "a", "b"],
                       torch.tensor(0.7), 0, ["arsm", "ars", "rloo", "ar"]),
    "to_event": (to_event_model, to_event_guide, ["prior", "phi"], torch.tensor(0.3), 0,
                 ["arsm", "ars", "rloo"]),
    "bernoulli": (bernoulli_model, bernoulli_guide, ["prior", "v", "alpha"], DATA, 1,
                  ["arsm", "rloo", "ar", "local"]),
    "two_layer": (two_layer_model, two_layer_guide, ["w", "locs", "a", "b"], torch.tensor(0.4),
                  0, ["arsm", "rloo"]),
    "score_function_upstream": (score_function_model, score_function_guide,
                                ["w", "locs", "p", "b"], torch.tensor(0.9), 0, ["arsm", "rloo"]),
}

QUICK = {("learned_prior", "arsm", "real"), ("upstream_prior", "rloo", "all"),
         ("bernoulli", "arsm", "all")}


def _cases():
    for name, (*_, estimators) in CASES.items():
        for estimator in estimators:
            for model_grads in ("real", "all"):
                marks = () if (name, estimator, model_grads) in QUICK else (pytest.mark.slow,)
                yield pytest.param(name, estimator, model_grads,
                                   id=f"{name}-{estimator}-{model_grads}", marks=marks)


def _particle(elbo, model, guide, *args):
    return next(iter(elbo._get_traces(model, guide, args, {})))


# --- tests -----------------------------------------------------------------------------------

@pytest.mark.parametrize("estimator", ["arsm", "ars", "rloo", "ar", "local"])
def test_closed_form_kl_is_the_whole_gradient_when_nothing_else_depends_on_the_site(estimator):
    """With a likelihood that ignores z, the gradient is -grad KL(q || p) exactly on every
    draw, and the loss is -log p(x) + KL; with the sampled KL it is a noisy estimate."""
    x = torch.tensor(0.5)
    init(kl_only_model, kl_only_guide, x)
    exact = brute_force_gradient(kl_only_model, kl_only_guide, ["prior", "phi"], x)
    elbo = ARSM_ELBO(estimator=estimator)
    draws = gradient_draws(elbo, kl_only_model, kl_only_guide, ["prior", "phi"], 5, x)
    assert torch.allclose(draws, exact.expand_as(draws), atol=1e-6)
    q = dist.Categorical(logits=pyro.param("phi"))
    p = dist.Categorical(logits=pyro.param("prior"))
    kl = torch.distributions.kl_divergence(q, p)
    expected = -dist.Normal(0.0, 1.0).log_prob(x) + kl
    assert elbo.loss(kl_only_model, kl_only_guide, x) == pytest.approx(expected.item(), rel=1e-6)
    sampled = gradient_draws(ARSM_ELBO(estimator=estimator, analytic_kl=False), kl_only_model,
                             kl_only_guide, ["prior", "phi"], 5, x)
    assert sampled.std(0).max() > 1e-3


def test_sites_whose_prior_depends_on_them_through_the_guide_keep_the_sampled_term():
    x = torch.tensor(0.4)
    init(two_layer_model, two_layer_guide, x)
    particle = _particle(ARSM_ELBO(), two_layer_model, two_layer_guide, x)
    assert particle.analytic == frozenset({"z2"})
    init(upstream_prior_model, upstream_prior_guide, x)
    particle = _particle(ARSM_ELBO(), upstream_prior_model, upstream_prior_guide, x)
    assert particle.analytic == frozenset({"u", "z"})
    assert _particle(ARSM_ELBO(analytic_kl=False), upstream_prior_model, upstream_prior_guide,
                     x).analytic == frozenset()


def test_sites_scaled_or_masked_unlike_the_model_keep_the_sampled_term():
    def model(x):
        with poutine.scale(scale=2.0):
            pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    def guide(x):
        pyro.sample("z", dist.Categorical(logits=pyro.param("phi", torch.zeros(3))))

    x = torch.tensor(0.1)
    init(model, guide, x)
    assert _particle(ARSM_ELBO(), model, guide, x).analytic == frozenset()


@pytest.mark.parametrize("name,estimator,model_grads", list(_cases()))
def test_unbiased_with_analytic_kl(name, estimator, model_grads):
    model, guide, names, data, mpn, _ = CASES[name]
    init(model, guide, data)
    exact = brute_force_gradient(model, guide, names, data)
    elbo = ARSM_ELBO(estimator=estimator, model_grads=model_grads, num_particles=200,
                     vectorize_particles=True, max_plate_nesting=mpn,
                     warn_score_function=False)  # (the Binomial site of one case)
    draws = gradient_draws(elbo, model, guide, names, 40, data)
    assert_unbiased(draws, exact, label=f"analytic KL {name} {estimator} {model_grads}")


def test_model_grads_all_leaves_the_guide_gradient_as_it_is():
    """Same seed, same real pass: the guide's gradient (a reparameterized site upstream of the
    pseudo passes included) is the same with and without model_grads='all'; the model's is
    another estimate."""
    x = torch.tensor(0.6)
    init(reparameterized_model, reparameterized_guide, x)
    grads = {}
    for model_grads in ("real", "all"):
        pyro.set_rng_seed(3)
        loss = ARSM_ELBO(model_grads=model_grads, estimator="rloo").differentiable_loss(
            reparameterized_model, reparameterized_guide, x)
        params = [pyro.param(n).unconstrained() for n in ("m", "s", "phi", "locs")]
        grads[model_grads] = torch.autograd.grad(loss, params)
    for real, every in zip(grads["real"][:3], grads["all"][:3], strict=True):
        assert torch.allclose(real, every, atol=1e-6)
    assert not torch.allclose(grads["real"][3], grads["all"][3])


@pytest.mark.slow  # (10 s or more: the quick stage has no room)
def test_model_grads_all_is_unbiased_with_a_reparameterized_guide_site():
    x = torch.tensor(0.6)
    init(reparameterized_model, reparameterized_guide, x)
    names = ["locs", "m", "s", "phi"]
    exact_elbo = pyro.infer.TraceEnum_ELBO(num_particles=20000, vectorize_particles=True,
                                           max_plate_nesting=0)
    pyro.set_rng_seed(0)
    exact_guide = pyro.infer.config_enumerate(reparameterized_guide, "parallel")
    reference = gradient_draws(exact_elbo, reparameterized_model, exact_guide, names, 10, x)
    elbo = ARSM_ELBO(model_grads="all", num_particles=200, vectorize_particles=True,
                     max_plate_nesting=0)
    draws = gradient_draws(elbo, reparameterized_model, reparameterized_guide, names, 40, x)
    assert_unbiased(draws, reference.mean(0), exact_se=reference.std(0) / 10 ** 0.5,
                    label="model_grads all, reparameterized guide site")


def test_model_grads_must_be_real_or_all():
    with pytest.raises(ValueError, match="model_grads must be one of"):
        ARSM_ELBO(model_grads="every")
