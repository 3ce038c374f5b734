"""``examples/ss_vae.py``'s model with its guide under ``config_enumerate(guide, "parallel")``, as
the example's ``--loss arsm-enum`` runs it: ARSM_ELBO sums the label ``y`` out with its guide
probabilities, as TraceEnum_ELBO does, so both give the same estimator of the gradient (Monte
Carlo over ``z`` only). A tiny SS-VAE (the example's classes, broadcasting networks) on random
binary images: no MNIST, no mlxtend.
"""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate
from pyro_exact import assert_unbiased, flat_grad, gradient_draws, param_tensors
from ss_vae import SSVAE

from pyro_arsm import ARSM_ELBO

pytestmark = pytest.mark.usefixtures("fresh_param_store")

NUM_PIXELS, BATCH = 6, 3


def tiny_vae(cls=SSVAE, name="tiny"):
    """The example's SS-VAE, small, its networks registered; with a batch of random images."""
    torch.manual_seed(0)
    vae = cls(name, num_pixels=NUM_PIXELS, z_dim=2, hidden_sizes=(8,), broadcast=True)
    pyro.module(name, vae)
    xs = torch.bernoulli(torch.full((BATCH, NUM_PIXELS), 0.5))
    return vae, xs


def param_names(*networks):
    return [n for n in pyro.get_param_store().keys() if n.split("$$$")[1].split(".")[0]
            in networks]


class DeltaZ(SSVAE):
    """The guide's ``z`` at its location, a deterministic function of the parameters and ``y``:
    every estimator sees the same ``z``, so their losses and gradients are exact."""

    def guide(self, xs, ys=None):
        with pyro.plate("data", xs.shape[0]):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(logits=self.encoder_y(xs)))
            loc, _ = self.encoder_z([xs, ys])
            pyro.sample("z", dist.Delta(loc, event_dim=1))


def test_with_z_fixed_the_loss_and_gradient_are_trace_enum_elbos():
    vae, xs = tiny_vae(DeltaZ)
    guide = config_enumerate(vae.guide, "parallel", expand=True)
    names = list(pyro.get_param_store().keys())
    expected = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(vae.model, guide, xs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        elbo = ARSM_ELBO(max_plate_nesting=1)
        loss = elbo.differentiable_loss(vae.model, guide, xs)
    assert not caught, [str(w.message) for w in caught]
    assert elbo.last_num_pseudo_evaluations == 0  # nothing sampled that ARSM would estimate
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)
    grad = flat_grad(loss, param_tensors(names))
    expected_grad = flat_grad(expected, param_tensors(names))
    assert expected_grad.abs().max() > 0
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=0)


@pytest.mark.slow  # (two-sample z-test, 2 x 200 draws; the equality check above stays quick)
def test_the_gradient_is_unbiased_for_trace_enum_elbos_with_no_warning():
    # both Monte Carlo over z (reparameterized), y summed out: a two-sample z-test over the
    # guide's y-network and the decoder
    vae, xs = tiny_vae()
    guide = config_enumerate(vae.guide, "parallel", expand=True)
    names = param_names("encoder_y", "decoder")
    num_draws = 200
    pyro.set_rng_seed(1)
    reference = gradient_draws(TraceEnum_ELBO(max_plate_nesting=1), vae.model, guide, names,
                               num_draws, xs)
    exact, exact_se = reference.mean(0), reference.std(0) / num_draws ** 0.5
    pyro.set_rng_seed(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        draws = gradient_draws(ARSM_ELBO(max_plate_nesting=1), vae.model, guide, names,
                               num_draws, xs)
    assert not caught, [str(w.message) for w in caught]
    assert_unbiased(draws, exact, exact_se, label="SS-VAE, y enumerated in the guide")
