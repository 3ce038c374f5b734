"""NumPyro ARSM_ELBO(analytic_kl=..., model_grads=...): unbiased against exact gradients.

``analytic_kl=True`` (the default) replaces an ARSM site's ``log p(z) - log q(z)`` by the
closed-form ``-KL``; ``model_grads="all"`` averages the model parameters' gradient over every
action an estimator evaluates. Both leave the gradient's mean unchanged: each test is a z-test of
a Monte Carlo mean against the brute-force gradient (``numpyro_exact``), which does not depend
on either option.
"""

import pytest

jax = pytest.importorskip("jax")
numpyro = pytest.importorskip("numpyro")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro import handlers  # noqa: E402
from numpyro.infer.elbo import get_nonreparam_deps  # noqa: E402
from numpyro.infer.util import get_importance_trace  # noqa: E402
from numpyro_exact import (  # noqa: E402
    assert_unbiased,
    exact_gradient,
    gradient_draws,
    quadrature_gradient,
    quick_compile,
    z_scores,
)
from numpyro_models import VAE, VAE_DATA, vae_guide, vae_model  # noqa: E402

from numpyro_arsm import ARSM_ELBO, compare_estimators  # noqa: E402
from numpyro_arsm._dependencies import _Dependencies  # noqa: E402
from numpyro_arsm._kl import analytic_kl_sites  # noqa: E402

SLOW = pytest.mark.slow


def _check(model, guide, params, names, args, particles=200, draws=40, label="", exact=None,
           **elbo_kwargs):
    """z-test of ``draws`` gradients (``particles`` each) against the exact gradient; prints the
    worst z and the standard error as a share of the largest exact component."""
    if exact is None:
        exact, _ = exact_gradient(model, guide, params, names, *args)
    elbo = ARSM_ELBO(num_particles=particles, **elbo_kwargs)
    samples = gradient_draws(elbo, model, guide, params, names, draws, *args)
    _, se = z_scores(samples, exact)
    print(f"\n[{label}] se / max|exact| = {100 * se.max() / np.abs(exact).max():.1f}%")
    return assert_unbiased(samples, exact, label=label)


def _param(*estimators, quick=()):
    """``pytest.param`` per estimator, those not in ``quick`` in the full stage only."""
    return [pytest.param(e, marks=() if e in quick else SLOW) for e in estimators]


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

# (a) a learned prior: its logits are a numpyro.param of the model
LEARNED_DATA = jnp.array([0.3, -1.2, 2.0])
LEARNED = {"prior": jnp.array([0.5, -0.4, 0.1]), "locs": jnp.array([-1.0, 0.5, 2.0]),
           "phi": jnp.array([[0.3, -0.2, 0.4], [1.0, 0.0, -0.5], [-0.3, 0.2, 0.8]])}


def learned_model(x):
    prior, locs = numpyro.param("prior", LEARNED["prior"]), numpyro.param("locs", LEARNED["locs"])
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Categorical(logits=prior))
        numpyro.sample("x", dist.Normal(locs[z], 1.0), obs=x)


def learned_guide(x):
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("z", dist.Categorical(logits=numpyro.param("phi", LEARNED["phi"])))


# (b) z's prior and guide both depend on an upstream sampled site u: u's pseudo passes
# recompute KL(q(z | u) || p(z | u)) at each pseudo value of u
UPSTREAM = {"pz": jnp.array([[1.0, -0.5, 0.0], [0.0, 0.8, -0.8], [-1.0, 0.0, 0.5]]),
            "locs": jnp.array([[-1.5, 0.0, 1.0], [0.5, 2.0, -1.0], [1.0, -2.0, 0.0]]),
            "psi": jnp.array([0.2, -0.4, 0.3]),
            "phi": jnp.array([[0.5, 0.0, -0.5], [-0.2, 0.6, 0.1], [0.0, -0.7, 0.4]])}


def upstream_model(x):
    pz, locs = numpyro.param("pz", UPSTREAM["pz"]), numpyro.param("locs", UPSTREAM["locs"])
    u = numpyro.sample("u", dist.Categorical(logits=jnp.array([0.3, 0.0, -0.3])))
    z = numpyro.sample("z", dist.Categorical(logits=pz[u]))
    numpyro.sample("x", dist.Normal(locs[u, z], 1.0), obs=x)


def upstream_guide(x):
    u = numpyro.sample("u", dist.Categorical(logits=numpyro.param("psi", UPSTREAM["psi"])))
    numpyro.sample("z", dist.Categorical(logits=numpyro.param("phi", UPSTREAM["phi"])[u]))


# (c) a .to_event(1) categorical in a plate (not element-separable: whole-site actions)
W_EVENT = jnp.array([[0.5, -1.0, 2.0], [1.0, 0.3, -0.7], [-1.5, 0.8, 0.2]])
EVENT_DATA = jnp.array([0.4, -0.6])
EVENT = {"prior": jnp.array([[0.2, 0.0, -0.3], [0.5, -0.5, 0.0], [0.0, 0.3, 0.3]]),
         "scale": jnp.array(1.0),
         "phi": jnp.array([[[0.2, -0.4, 0.1], [1.0, 0.0, -0.5], [-0.3, 0.6, 0.0]],
                           [[0.0, 0.3, -0.2], [-0.6, 0.2, 0.4], [0.5, 0.0, -0.5]]])}


def event_model(x):
    prior, scale = numpyro.param("prior", EVENT["prior"]), numpyro.param("scale", EVENT["scale"])
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Categorical(logits=prior).to_event(1))
        h = jnp.take_along_axis(jnp.broadcast_to(W_EVENT, z.shape + (3,)), z[..., None],
                                -1)[..., 0]
        mean = jnp.tanh(h.sum(-1)) + 0.5 * h[..., 0] * h[..., 1] * h[..., 2]
        numpyro.sample("x", dist.Normal(mean * scale, 0.5), obs=x)


def event_guide(x):
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("z", dist.Categorical(logits=numpyro.param("phi", EVENT["phi"]))
                       .to_event(1))


# (d) Bernoulli sites (DisARM) with a learned prior logit
BERN_DATA = jnp.array([0.0, 1.0, 2.5, -1.0])
BERN = {"prior": jnp.array(-0.4), "w": jnp.array([-1.0, 1.5]),
        "alpha": jnp.array([0.3, -1.0, 0.1, 1.2])}


def bernoulli_model(data):
    w, prior = numpyro.param("w", BERN["w"]), numpyro.param("prior", BERN["prior"])
    with numpyro.plate("data", data.shape[0]):
        b = numpyro.sample("b", dist.Bernoulli(logits=prior))
        numpyro.sample("x", dist.Normal(w[b], 1.0), obs=data)


def bernoulli_guide(data):
    with numpyro.plate("data", data.shape[0]):
        numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("alpha", BERN["alpha"])))


# (e) the two-layer pattern: guide z1 -> z2, model z2 -> z1. z2's prior does not depend on z1
# (its KL is closed-form); z1's prior depends on z2, which the guide draws from z1: z1 keeps its
# sampled terms
TWO = {"pw": jnp.array([[1.5, -1.0, 0.0], [-1.0, 1.5, 0.0], [0.0, -1.0, 1.5]]),
       "locs": jnp.array([-1.5, 0.0, 2.0]), "phi1": jnp.array([0.4, -0.3, 0.1]),
       "phi2": jnp.array([[1.0, -0.5, 0.0], [0.0, 0.8, -0.4], [-0.6, 0.0, 0.9]])}


def two_layer_model(x):
    pw, locs = numpyro.param("pw", TWO["pw"]), numpyro.param("locs", TWO["locs"])
    z2 = numpyro.sample("z2", dist.Categorical(logits=jnp.zeros(3)))
    z1 = numpyro.sample("z1", dist.Categorical(logits=pw[z2]))
    numpyro.sample("x", dist.Normal(locs[z1], 1.0), obs=x)


def two_layer_guide(x):
    z1 = numpyro.sample("z1", dist.Categorical(logits=numpyro.param("phi1", TWO["phi1"])))
    numpyro.sample("z2", dist.Categorical(logits=numpyro.param("phi2", TWO["phi2"])[z1]))




# model_grads with a continuous guide site upstream (its value carries the guide's gradient)
NORMAL_UP = {"locs": jnp.array([-1.0, 0.0, 1.5]), "pz": jnp.array([1.0, -0.5, 0.2]),
             "mu": jnp.array(0.3), "a": jnp.array([1.0, -0.5, 0.2]),
             "b": jnp.array([0.1, 0.2, -0.3])}


def normal_upstream_model(x):
    locs, pz = numpyro.param("locs", NORMAL_UP["locs"]), numpyro.param("pz", NORMAL_UP["pz"])
    u = numpyro.sample("u", dist.Normal(0.0, 1.0))
    z = numpyro.sample("z", dist.Categorical(logits=pz * u[..., None]))
    numpyro.sample("x", dist.Normal(locs[z] + u, 1.0), obs=x)


def normal_upstream_guide(x):
    u = numpyro.sample("u", dist.Normal(numpyro.param("mu", NORMAL_UP["mu"]), 0.8))
    logits = numpyro.param("a", NORMAL_UP["a"]) * u[..., None] + numpyro.param("b", NORMAL_UP["b"])
    numpyro.sample("z", dist.Categorical(logits=logits))


# ---------------------------------------------------------------------------------------------
# analytic_kl=True: unbiased
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", _param("arsm", "ars", "rloo", "ar", "local", quick=("arsm",)))
def test_learned_prior(estimator):
    _check(learned_model, learned_guide, LEARNED, ["prior", "phi", "locs"], (LEARNED_DATA,),
           draws=120 if estimator == "ar" else 40, estimator=estimator,
           label=f"analytic KL, learned prior, {estimator}")


@pytest.mark.parametrize("estimator", _param("arsm", "ars", "rloo", "ar", "local"))
def test_prior_depends_on_upstream_site(estimator):
    _check(upstream_model, upstream_guide, UPSTREAM, ["pz", "psi", "phi", "locs"],
           (jnp.array(0.8),), draws=120 if estimator == "ar" else 40, estimator=estimator,
           label=f"analytic KL, prior of z depends on u, {estimator}")


@pytest.mark.parametrize("estimator", _param("arsm", "rloo", "ars"))
def test_to_event_site_in_a_plate(estimator):
    _check(event_model, event_guide, EVENT, ["prior", "phi", "scale"], (EVENT_DATA,),
           estimator=estimator, label=f"analytic KL, to_event in a plate, {estimator}")


@pytest.mark.parametrize("estimator", _param("arsm", "ar", "rloo", "local"))
def test_bernoulli(estimator):
    _check(bernoulli_model, bernoulli_guide, BERN, ["prior", "alpha", "w"], (BERN_DATA,),
           draws=120 if estimator == "ar" else 40, estimator=estimator,
           label=f"analytic KL, Bernoulli, {estimator}")


@pytest.mark.parametrize("estimator", _param("arsm", "rloo", "ars", "local"))
def test_two_layer_pattern_keeps_the_sampled_term(estimator):
    _check(two_layer_model, two_layer_guide, TWO, ["pw", "phi1", "phi2", "locs"],
           (jnp.array(1.1),), estimator=estimator,
           label=f"analytic KL, two-layer pattern, {estimator}")


# a score-function site upstream: n ~ Binomial(2) (neither categorical nor Bernoulli), z's prior
# and guide depend on it; n's score-function cost holds -KL(q(z | n) || p(z | n))
SCORE = {"rho": jnp.array(0.3), "pz": jnp.array([[0.8, -0.4, 0.0], [0.0, 0.6, -0.6],
                                                 [-0.8, 0.0, 0.4]]),
         "phi": jnp.array([[0.5, 0.0, -0.5], [-0.2, 0.6, 0.1], [0.0, -0.7, 0.4]]),
         "locs": jnp.array([-1.0, 0.5, 2.0])}


def score_model(x):
    pz, locs = numpyro.param("pz", SCORE["pz"]), numpyro.param("locs", SCORE["locs"])
    n = numpyro.sample("n", dist.Binomial(2, probs=0.5))
    z = numpyro.sample("z", dist.Categorical(logits=pz[n]))
    numpyro.sample("x", dist.Normal(locs[z] + 0.5 * n, 1.0), obs=x)


def score_guide(x):
    rho, phi = numpyro.param("rho", SCORE["rho"]), numpyro.param("phi", SCORE["phi"])
    n = numpyro.sample("n", dist.Binomial(2, logits=rho))
    numpyro.sample("z", dist.Categorical(logits=phi[n]))


def _score_exact(params, x):
    """The exact gradient of -ELBO for ``score_model``: every (n, z), weighted by q."""
    def loss(p):
        log_qn = dist.Binomial(2, logits=p["rho"]).log_prob(jnp.arange(3))
        log_qz = jax.nn.log_softmax(p["phi"], -1)  # [n, z]
        log_pn = dist.Binomial(2, probs=0.5).log_prob(jnp.arange(3))
        log_pz = jax.nn.log_softmax(p["pz"], -1)
        log_px = dist.Normal(p["locs"][None, :] + 0.5 * jnp.arange(3)[:, None], 1.0).log_prob(x)
        elbo = log_pn[:, None] + log_pz + log_px - log_qn[:, None] - log_qz
        return -(jnp.exp(log_qn[:, None] + log_qz) * elbo).sum()

    grad = jax.grad(loss)(params)
    return jnp.concatenate([jnp.ravel(grad[n]) for n in ("rho", "pz", "phi", "locs")])


@pytest.mark.parametrize("estimator", _param("arsm", "rloo"))
def test_score_function_site_upstream(estimator):
    x = jnp.array(0.6)
    _check(score_model, score_guide, SCORE, ["rho", "pz", "phi", "locs"], (x,), draws=60,
           exact=_score_exact(SCORE, x), estimator=estimator, warn_score_function=False,
           label=f"analytic KL, score-function site upstream, {estimator}")


# ---------------------------------------------------------------------------------------------
# analytic_kl: which sites, and the closed form itself
# ---------------------------------------------------------------------------------------------


def _eligible(model, guide, params, *args):
    """The sites ``analytic_kl`` takes in closed form, from one traced (not executed) pass."""
    found = []

    def run(params):
        model_trace, guide_trace = get_importance_trace(
            handlers.seed(model, 0), handlers.seed(guide, 1), args, {}, params)
        latents = {n: s["value"] for n, s in guide_trace.items() if s["type"] == "sample"}
        deps = _Dependencies(*get_nonreparam_deps(model, guide, args, {}, params,
                                                  latents=latents))
        found.append(analytic_kl_sites(model_trace, guide_trace, list(latents), deps))
        return jnp.zeros(())

    jax.eval_shape(run, params)
    return found[0]


def test_eligible_sites():
    assert _eligible(two_layer_model, two_layer_guide, TWO, jnp.array(1.1)) == {"z2"}
    assert _eligible(upstream_model, upstream_guide, UPSTREAM, jnp.array(0.8)) == {"u", "z"}
    assert _eligible(event_model, event_guide, EVENT, EVENT_DATA) == {"z"}
    assert _eligible(bernoulli_model, bernoulli_guide, BERN, BERN_DATA) == {"b"}
    assert _eligible(score_model, score_guide, SCORE, jnp.array(0.6)) == {"z"}


def _kl_model(x, scale=1.5, guide_scale=1.5, mask=True):
    prior = numpyro.param("prior", jnp.array([0.5, -0.4, 0.1]))
    with numpyro.plate("n", 2), handlers.scale(scale=scale), handlers.mask(mask=mask):
        numpyro.sample("z", dist.Categorical(logits=prior))
    numpyro.sample("x", dist.Normal(0.0, 1.0), obs=x)  # independent of z


def _kl_guide(x, scale=1.5, guide_scale=1.5, mask=True):
    phi = numpyro.param("phi", jnp.array([[0.3, -0.2, 0.4], [1.0, 0.0, -0.5]]))
    with numpyro.plate("n", 2), handlers.scale(scale=guide_scale), handlers.mask(mask=mask):
        numpyro.sample("z", dist.Categorical(logits=phi))


def _closed_form_loss(params, x, scale=1.5, mask=True):
    log_q = jax.nn.log_softmax(params["phi"], -1)
    log_p = jax.nn.log_softmax(params["prior"], -1)
    kl = (jnp.exp(log_q) * (log_q - log_p)).sum(-1)
    kl = jnp.where(mask, kl, 0.0)
    return scale * kl.sum() - dist.Normal(0.0, 1.0).log_prob(x)


KL_PARAMS = {"prior": jnp.array([0.5, -0.4, 0.1]),
             "phi": jnp.array([[0.3, -0.2, 0.4], [1.0, 0.0, -0.5]])}


@pytest.mark.parametrize("estimator, mask", [
    pytest.param(e, m, id=f"{e}-{label}", marks=() if (e, label) == ("arsm", "masked") else SLOW)
    for e in ("arsm", "rloo", "ar")
    for m, label in ((True, "unmasked"), (jnp.array([True, False]), "masked"))])
def test_loss_and_gradient_are_the_closed_form(estimator, mask):
    # the rest of the ELBO does not depend on z: the loss is -log p(x) + scale * KL on every
    # draw, and so is its gradient (z's own cost is empty)
    x = jnp.array(0.7)
    elbo = ARSM_ELBO(estimator=estimator, num_particles=2)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)

    def both(keys):  # one program: the ELBO on each key, and the closed form
        draws = jax.vmap(jax.value_and_grad(
            lambda k, p: elbo.loss(k, p, _kl_model, _kl_guide, x, mask=mask), argnums=1),
            in_axes=(0, None))(keys, KL_PARAMS)
        return draws, jax.value_and_grad(_closed_form_loss)(KL_PARAMS, x, mask=mask)

    (losses, grads), (expected, expected_grad) = quick_compile(both, keys)(keys)
    np.testing.assert_allclose(losses, jnp.full(3, expected), rtol=1e-6)
    for name in KL_PARAMS:
        np.testing.assert_allclose(grads[name], jnp.broadcast_to(expected_grad[name],
                                                                 grads[name].shape),
                                   rtol=1e-5, atol=1e-6)


@SLOW
def test_sampled_terms_where_the_closed_form_does_not_apply():
    x = jnp.array(0.7)
    keys = jax.random.split(jax.random.PRNGKey(0), 6)

    def losses(keys):  # one program, three configurations
        def on_keys(guide_scale=1.5, **kwargs):
            elbo = ARSM_ELBO(**kwargs)
            return jax.vmap(lambda k: elbo.loss(k, KL_PARAMS, _kl_model, _kl_guide, x,
                                                guide_scale=guide_scale))(keys)

        return on_keys(), on_keys(analytic_kl=False), on_keys(guide_scale=2.0)

    closed, sampled, scaled_apart = (np.asarray(v) for v in quick_compile(losses, keys)(keys))
    assert np.ptp(closed) < 1e-5  # closed form: the same on every draw
    assert np.ptp(sampled) > 1e-2  # sampled
    assert np.ptp(scaled_apart) > 1e-2  # model and guide scale z differently: sampled


# ---------------------------------------------------------------------------------------------
# model_grads="all"
# ---------------------------------------------------------------------------------------------

MODEL_GRADS_CASES = [
    # (label, model, guide, params, model-parameter names, args, estimators, quick)
    ("vae", vae_model, vae_guide, VAE, ["dec_w", "dec_b"], (VAE_DATA,),
     ("arsm", "local", "rloo", "ars"), ("arsm",)),
    ("to_event", event_model, event_guide, EVENT, ["prior", "scale"], (EVENT_DATA,),
     ("arsm", "rloo"), ()),
    ("bernoulli", bernoulli_model, bernoulli_guide, BERN, ["prior", "w"], (BERN_DATA,),
     ("arsm", "local", "rloo"), ()),
    ("upstream", upstream_model, upstream_guide, UPSTREAM, ["pz", "locs"], (jnp.array(0.8),),
     ("arsm", "rloo"), ()),
]


def _model_grads_params():
    for label, model, guide, params, names, args, estimators, quick in MODEL_GRADS_CASES:
        for estimator in estimators:
            yield pytest.param(model, guide, params, names, args, estimator,
                               id=f"{label}-{estimator}",
                               marks=() if estimator in quick else SLOW)


@pytest.mark.parametrize("model, guide, params, names, args, estimator",
                         list(_model_grads_params()))
def test_model_grads_all_unbiased(model, guide, params, names, args, estimator):
    _check(model, guide, params, names, args, estimator=estimator, model_grads="all",
           label=f"model_grads='all', {model.__name__}, {estimator}")


@SLOW
def test_model_grads_all_with_a_continuous_guide_site():
    # u is reparameterized: its value carries the guide's gradient, so the true action's model
    # part is evaluated again with the guide held constant
    names = ["locs", "pz", "mu", "a", "b"]
    exact = quadrature_gradient(normal_upstream_model, normal_upstream_guide, NORMAL_UP, names,
                                jnp.array(0.9), sites=("u",))
    _check(normal_upstream_model, normal_upstream_guide, NORMAL_UP, names, (jnp.array(0.9),),
           draws=60, exact=exact, model_grads="all",
           label="model_grads='all', continuous upstream site")


def _grads(model, guide, params, args, **elbo_kwargs):
    elbo = ARSM_ELBO(num_particles=3, **elbo_kwargs)
    fn = jax.grad(lambda p, k: elbo.loss(k, p, model, guide, *args))
    key = jax.random.PRNGKey(3)
    return quick_compile(fn, params, key)(params, key)


@pytest.mark.parametrize("case", [
    pytest.param(("vae", "arsm"), id="columns", marks=SLOW),
    pytest.param(("upstream", "rloo"), id="actions", marks=SLOW),
    pytest.param(("normal", "arsm"), id="continuous-site"),
    pytest.param(("bernoulli", "local"), id="bernoulli-local", marks=SLOW),
    pytest.param(("to_event", "ars"), id="to_event-ars", marks=SLOW),
])
def test_model_grads_leave_the_guide_gradient_unchanged(case):
    name, estimator = case
    model, guide, params, args, guide_names = {
        "vae": (vae_model, vae_guide, VAE, (VAE_DATA,), ["enc_w", "enc_b"]),
        "upstream": (upstream_model, upstream_guide, UPSTREAM, (jnp.array(0.8),),
                     ["psi", "phi"]),
        "normal": (normal_upstream_model, normal_upstream_guide, NORMAL_UP, (jnp.array(0.9),),
                   ["mu", "a", "b"]),
        "bernoulli": (bernoulli_model, bernoulli_guide, BERN, (BERN_DATA,), ["alpha"]),
        "to_event": (event_model, event_guide, EVENT, (EVENT_DATA,), ["phi"]),
    }[name]
    real = _grads(model, guide, params, args, estimator=estimator)
    every = _grads(model, guide, params, args, estimator=estimator, model_grads="all")
    for n in guide_names:  # the same program for them: bitwise equal
        np.testing.assert_array_equal(every[n], real[n])
    model_names = [n for n in params if n not in guide_names]
    assert any(not np.allclose(every[n], real[n]) for n in model_names)


def test_options_are_checked():
    with pytest.raises(ValueError, match="model_grads must be 'real' or 'all'"):
        ARSM_ELBO(model_grads="every")
    with pytest.raises(ValueError, match="analytic_kl must be True or False"):
        ARSM_ELBO(analytic_kl="yes")


@SLOW
def test_compare_estimators_splits_guide_and_model_variance():
    rows = compare_estimators(vae_model, vae_guide, VAE, VAE_DATA, estimators=("arsm", "rloo:4"),
                              num_draws=6, print_table=False,
                              elbo_kwargs={"model_grads": "all"})
    for r in rows:
        assert r["guide_variance"] > 0 and r["model_variance"] > 0
        assert r["guide_variance"] + r["model_variance"] == pytest.approx(r["variance"],
                                                                          rel=1e-5)
    from numpyro_arsm.compare import format_table
    assert "| guide | model |" in format_table(rows)
