"""The mirror contract: what exists in both packages has the same name, the same parameters in the
same order and the same return structure, and means the same thing.

A reader of ``pyro_arsm`` knows ``numpyro_arsm`` and the other way round. Every difference is
listed here with its reason; anything else that drifts fails this test.
"""

import inspect

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as ndist  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as pdist  # noqa: E402
import torch  # noqa: E402

import numpyro_arsm  # noqa: E402
import pyro_arsm  # noqa: E402
from numpyro_arsm import _sites as numpyro_sites  # noqa: E402
from numpyro_arsm import compare as numpyro_compare  # noqa: E402
from numpyro_arsm import config as numpyro_config  # noqa: E402
from numpyro_arsm import estimators as numpyro_est  # noqa: E402
from pyro_arsm import _sites as pyro_sites  # noqa: E402
from pyro_arsm import compare as pyro_compare  # noqa: E402
from pyro_arsm import config as pyro_config  # noqa: E402
from pyro_arsm import estimators as pyro_est  # noqa: E402

# Parameters that follow each framework's convention for randomness and placement: JAX passes a
# key first; torch draws from a global or given generator and places tensors on a device.
FRAMEWORK_PARAMETERS = {"pyro": {"generator", "device"}, "numpyro": {"key"}}

# Names that exist in one package only, with the reason.
ONLY_IN = {
    "pyro": {
        "value_from_action": "Pyro has a one-hot categorical (OneHotCategorical) whose value is "
                             "not the action; every NumPyro value is the action itself",
        "JitARSM_ELBO": "NumPyro's ELBO is compiled by jax.jit as it stands",
    },
    "numpyro": {},
}

# Parameters of the mirrored public API that differ, with the reason.
SIGNATURE_DIFFERENCES = {
    "ARSM_ELBO": {
        "pyro only": {
            "vectorize_pseudo": "Pyro may have to evaluate pseudo actions one at a time (a model "
                                "that does not broadcast); NumPyro's vmap always broadcasts",
            "cache_dependencies": "Pyro finds dependencies by provenance tracking, cached per "
                                  "structure; NumPyro's come from the traced program",
            "retain_graph": "torch autograd (Pyro's ELBO argument)",
            "ignore_jit_warnings": "Pyro's ELBO argument",
            "strict_enumeration_warning": "Pyro's ELBO argument",
        },
        "numpyro only": {
            "pseudo_map": "vmap or lax.map over the pseudo actions: a JAX choice",
        },
    },
    "AutoCategorical": {
        "pyro only": {},
        "numpyro only": {"prefix": "NumPyro autoguides name their parameters with a prefix"},
    },
    "compare_estimators": {
        "pyro only": {"max_plate_nesting": "passed to every ELBO; NumPyro's goes in elbo_kwargs"},
        "numpyro only": {
            "params": "NumPyro is functional: the parameters are passed, not read from a store",
            "rng_key": "JAX randomness is explicit",
        },
    },
}


def _parameters(fn, package):
    names = [p for p in inspect.signature(fn).parameters if p != "self"]
    return [p for p in names if p not in FRAMEWORK_PARAMETERS[package]]


def _public(module):
    return {n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))
            and getattr(getattr(module, n), "__module__", None) == module.__name__}


@pytest.mark.parametrize("pair", [(pyro_est, numpyro_est), (pyro_sites, numpyro_sites),
                                  (pyro_compare, numpyro_compare), (pyro_config, numpyro_config)],
                         ids=["estimators", "_sites", "compare", "config"])
def test_mirrored_modules_have_the_same_functions_and_parameters(pair):
    pyro_module, numpyro_module = pair
    pyro_names, numpyro_names = _public(pyro_module), _public(numpyro_module)
    assert pyro_names - numpyro_names == set(ONLY_IN["pyro"]) & pyro_names
    assert numpyro_names - pyro_names == set(ONLY_IN["numpyro"]) & numpyro_names
    for name in sorted(pyro_names & numpyro_names):
        pyro_fn, numpyro_fn = getattr(pyro_module, name), getattr(numpyro_module, name)
        if name in SIGNATURE_DIFFERENCES:
            continue  # the public API, below
        assert _parameters(pyro_fn, "pyro") == _parameters(numpyro_fn, "numpyro"), name


def test_estimator_names_are_one_list_in_both():
    assert pyro_est.ESTIMATORS == numpyro_est.ESTIMATORS
    assert pyro_compare.DEFAULT_ESTIMATORS == numpyro_compare.DEFAULT_ESTIMATORS
    assert set(pyro_est.__all__) == set(numpyro_est.__all__)
    assert pyro_config.ESTIMATOR_KEYS == numpyro_config.ESTIMATOR_KEYS


def test_public_api_is_mirrored_with_the_listed_differences():
    assert set(pyro_arsm.__all__) - set(numpyro_arsm.__all__) == {"JitARSM_ELBO"}
    assert set(numpyro_arsm.__all__) <= set(pyro_arsm.__all__)
    for name, differences in SIGNATURE_DIFFERENCES.items():
        pyro_params = _parameters(getattr(pyro_arsm, name), "pyro")
        numpyro_params = _parameters(getattr(numpyro_arsm, name), "numpyro")
        only_pyro = [p for p in pyro_params if p not in numpyro_params]
        only_numpyro = [p for p in numpyro_params if p not in pyro_params]
        assert set(only_pyro) == set(differences["pyro only"]), name
        assert set(only_numpyro) == set(differences["numpyro only"]), name
        # the shared parameters come in the same order
        assert ([p for p in pyro_params if p in numpyro_params]
                == [p for p in numpyro_params if p in pyro_params]), name
    for name in ("discrete_latent_sites", "config_estimator"):
        assert (_parameters(getattr(pyro_arsm, name), "pyro")
                == _parameters(getattr(numpyro_arsm, name), "numpyro")), name


@pytest.mark.parametrize("kind, estimators", [("categorical", ["arsm", "ars", "ar", "rloo"]),
                                               ("bernoulli", ["arsm", "ar", "rloo"])])
def test_estimator_actions_return_the_same_structure(kind, estimators):
    # (actions [R, *elements] with the true action in row 0, reference) in both packages
    C, shape = 4, (3,)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=shape + ((C,) if kind == "categorical" else ()))
    if kind == "categorical":
        noise = np.log(rng.dirichlet(np.ones(C), size=shape))
        true = np.argmin(noise - logits, -1)
    else:
        noise = rng.uniform(size=shape)
        true = (noise < 1 / (1 + np.exp(-logits))).astype(np.float64)
    for estimator in estimators:
        out_t = pyro_est.estimator_actions(estimator, kind, torch.tensor(noise),
                                           torch.tensor(logits), generator=torch.Generator())
        out_j = numpyro_est.estimator_actions(jax.random.PRNGKey(0), estimator, kind,
                                              jnp.asarray(noise), jnp.asarray(logits))
        assert len(out_t) == len(out_j) == 2, estimator
        (actions_t, reference_t), (actions_j, reference_j) = out_t, out_j
        assert actions_t.shape == actions_j.shape, estimator
        np.testing.assert_array_equal(actions_t[0].numpy(), true, err_msg=estimator)
        np.testing.assert_array_equal(np.asarray(actions_j[0]), true, err_msg=estimator)
        assert (reference_t is None) == (reference_j is None) == (estimator != "ars")


def _pyro_count(guide_site, num_particles):
    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", guide_site(torch.zeros(3, 4)))
        pyro.sample("y", pdist.Normal(z.float().sum(-1, keepdim=True), 1.0), obs=torch.tensor(2.0))

    def guide():
        logits = pyro.param("logits", torch.zeros(3, 4))
        with pyro.plate("data", 3):
            pyro.sample("z", guide_site(logits))

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    elbo = pyro_arsm.ARSM_ELBO(num_particles=num_particles, max_plate_nesting=1)
    elbo.loss_and_grads(model, guide)
    return elbo.last_num_pseudo_evaluations


def _numpyro_count(guide_site, num_particles):
    def model():
        with numpyro.plate("data", 3):
            z = numpyro.sample("z", guide_site(jnp.zeros((3, 4))))
        numpyro.sample("y", ndist.Normal(z.sum(-1, keepdims=True), 1.0), obs=2.0)

    def guide():
        logits = numpyro.param("logits", jnp.zeros((3, 4)))
        with numpyro.plate("data", 3):
            numpyro.sample("z", guide_site(logits))

    elbo = numpyro_arsm.ARSM_ELBO(num_particles=num_particles)
    elbo.loss(jax.random.PRNGKey(0), {"logits": jnp.zeros((3, 4))}, model, guide)
    return elbo.last_num_pseudo_evaluations


@pytest.mark.parametrize("num_particles", [pytest.param(1, marks=pytest.mark.slow), 3])
def test_last_num_pseudo_evaluations_means_the_same(num_particles):
    # a plated categorical site whose cost is not element-separable (the observed y sums over
    # the plate): the whole-site swaps, C(C-1)/2 = 6 per particle, summed over particles; Pyro
    # evaluates (and counts) identical whole-site actions once, NumPyro's shapes are static
    pyro_count = _pyro_count(lambda logits: pdist.Categorical(logits=logits), num_particles)
    numpyro_count = _numpyro_count(lambda logits: ndist.Categorical(logits=logits),
                                   num_particles)
    assert numpyro_count == 6 * num_particles
    assert 0 < pyro_count <= numpyro_count
