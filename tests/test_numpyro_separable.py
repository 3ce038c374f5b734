"""NumPyro element-separable sites: the C-column table, ARSM read off it, and the
exact local expectation (``estimator="local"``), against exact gradients."""

import warnings

import pytest

jax = pytest.importorskip("jax")
numpyro = pytest.importorskip("numpyro")

import jax.numpy as jnp  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro_exact import check_unbiased, exact_gradient, flatten, gradient_draws  # noqa: E402
from numpyro_models import (  # noqa: E402
    BERN,
    BERN_DATA,
    EVENT,
    PLATED,
    PLATED_DATA,
    SINGLE,
    SUB,
    SUB_DATA,
    bernoulli_guide,
    bernoulli_model,
    plated_guide,
    plated_model,
    single_guide,
    single_model,
    subsampled_guide,
    subsampled_model,
    to_event_guide,
    to_event_model,
)

from numpyro_arsm import ARSM_ELBO  # noqa: E402

# two documents of two tokens, vocabulary 4, 3 topics (the Pyro test's LDA-style model, smaller:
# the exact reference enumerates all 3^4 joint assignments by hand)
WORDS = jnp.array([[0, 1], [3, 2]])
LDA = {"topic_words": jnp.array([[0.5, 0.2, 0.2, 0.1], [0.1, 0.6, 0.2, 0.1],
                                 [0.1, 0.1, 0.3, 0.5]]),
       "doc_topics": jnp.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]]),
       "phi": jnp.array([[[0.4, -0.2, 0.1], [0.0, 0.5, -0.5]],
                         [[-0.3, 0.1, 0.6], [0.3, 0.0, -0.1]]])}


def lda_model(words):
    topic_words = numpyro.param("topic_words", LDA["topic_words"],
                                constraint=dist.constraints.simplex)
    doc_topics = numpyro.param("doc_topics", LDA["doc_topics"],
                               constraint=dist.constraints.simplex)
    with numpyro.plate("docs", 2, dim=-2), numpyro.plate("tokens", 2, dim=-1):
        z = numpyro.sample("z", dist.Categorical(doc_topics[:, None, :]))
        numpyro.sample("w", dist.Categorical(topic_words[z]), obs=words)


def lda_guide(words):
    phi = numpyro.param("phi", LDA["phi"])
    with numpyro.plate("docs", 2, dim=-2), numpyro.plate("tokens", 2, dim=-1):
        numpyro.sample("z", dist.Categorical(logits=phi))


@pytest.mark.parametrize("estimator", ["arsm", "local"])
def test_unbiased_mixture_plate(estimator):
    check_unbiased(plated_model, plated_guide, PLATED, ["phi", "locs"], (PLATED_DATA,),
                   estimator=estimator, label=f"numpyro mixture plate, {estimator}")


@pytest.mark.parametrize("estimator", ["arsm", "local"])
def test_unbiased_lda_token_plates(estimator):
    check_unbiased(lda_model, lda_guide, LDA, ["phi", "topic_words", "doc_topics"], (WORDS,),
                   estimator=estimator, label=f"numpyro LDA token plates, {estimator}")


@pytest.mark.parametrize("estimator", ["arsm", "local"])
def test_unbiased_plate_under_handlers_scale(estimator):
    check_unbiased(plated_model, plated_guide, PLATED, ["phi", "locs"], (PLATED_DATA, 2.5),
                   exact_args=(PLATED_DATA,), scale=2.5, estimator=estimator,
                   label=f"numpyro handlers.scale(2.5), {estimator}")


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["arsm", "local"])
def test_unbiased_subsampled_plate(estimator):
    # the full-data gradient (exact over all 6 elements) from subsamples of 2
    check_unbiased(subsampled_model, subsampled_guide, SUB, ["phi", "locs"], (SUB_DATA, 2),
                   exact_args=(SUB_DATA,), particles=50, draws=300, estimator=estimator,
                   label=f"numpyro subsample_size=2 of 6, {estimator}")


def test_unbiased_bernoulli_plate_local():
    check_unbiased(bernoulli_model, bernoulli_guide, BERN, ["alpha", "w"], (BERN_DATA,),
                   estimator="local", label="numpyro Bernoulli plate, local")


@pytest.mark.slow  # (tests/test_mirror.py counts evaluations in the quick stage)
def test_separable_site_costs_C_evaluations():
    for estimator, expected in [("arsm", 4), ("local", 4)]:
        elbo = ARSM_ELBO(estimator=estimator)
        elbo.loss(jax.random.PRNGKey(0), PLATED, plated_model, plated_guide, PLATED_DATA)
        assert elbo.last_num_pseudo_evaluations == expected  # C = 4 columns, not C(C-1)/2
    elbo = ARSM_ELBO()
    elbo.loss(jax.random.PRNGKey(0), EVENT, to_event_model, to_event_guide, jnp.array(0.4))
    assert elbo.last_num_pseudo_evaluations == 3  # .to_event: the C(C-1)/2 whole-site swaps


def test_local_has_zero_variance_on_a_single_site():
    x = jnp.array(0.7)
    exact, _ = exact_gradient(single_model, single_guide, SINGLE, ["phi"], x)
    draws = gradient_draws(ARSM_ELBO(estimator="local"), single_model, single_guide, SINGLE,
                           ["phi"], 10, x)
    assert jnp.allclose(draws, exact, atol=1e-5)
    assert (draws.std(0) < 1e-6).all()


def test_local_on_a_non_separable_site_warns_once_and_uses_arsm():
    x = jnp.array(0.4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_unbiased(to_event_model, to_event_guide, EVENT, ["phi", "scale"], (x,),
                       estimator="local", label="numpyro local on .to_event (ARSM)")
    messages = [str(w.message) for w in caught if "not element-separable" in str(w.message)]
    assert len(messages) == 1 and "site 'z'" in messages[0]


@pytest.mark.slow  # (10 s or more: the quick stage has no room)
def test_local_gradient_matches_under_jit_and_without():
    elbo = ARSM_ELBO(estimator="local")

    def grad(params, key):
        return flatten(jax.grad(lambda p: elbo.loss(key, p, plated_model, plated_guide,
                                                    PLATED_DATA))(params), ["phi"])

    key = jax.random.PRNGKey(3)
    assert jnp.allclose(grad(PLATED, key), jax.jit(grad)(PLATED, key), atol=1e-5)
