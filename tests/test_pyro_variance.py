"""ARSM_ELBO has lower gradient variance than TraceGraph_ELBO (single-sample REINFORCE with
provenance Rao-Blackwellization) on the same models.

Variance is the trace of the covariance of the guide-logit gradient of one particle, estimated
from ``M`` draws of the mean of ``K`` vectorized particles (``K * var(mean)``).
"""

import pytest
import torch
from pyro.infer import TraceGraph_ELBO
from pyro_exact import gradient_draws
from pyro_models import (
    PLATED_DATA,
    init,
    onehot_guide,
    onehot_model,
    plated_guide,
    plated_model,
    to_event_guide,
    to_event_model,
)

from pyro_arsm import ARSM_ELBO

pytestmark = pytest.mark.usefixtures("fresh_param_store")

K, M = 100, 200


def per_particle_variance(elbo, model, guide, names, args):
    draws = gradient_draws(elbo, model, guide, names, M, *args)
    return (draws.var(0) * K).sum().item()


@pytest.mark.slow
@pytest.mark.parametrize(
    "label, model, guide, args, mpn, bound",
    [
        ("to_event", to_event_model, to_event_guide, (torch.tensor(0.4),), 0, 0.45),
        ("plate", plated_model, plated_guide, (PLATED_DATA,), 1, 0.30),
        ("one-hot plate", onehot_model, onehot_guide, (torch.tensor([0.3, 1.8]),), 1, 0.30),
    ],
)
def test_arsm_variance_below_tracegraph(label, model, guide, args, mpn, bound):
    init(model, guide, *args)
    kwargs = dict(num_particles=K, vectorize_particles=True, max_plate_nesting=mpn)
    arsm = per_particle_variance(ARSM_ELBO(**kwargs), model, guide, ["phi"], args)
    tracegraph = per_particle_variance(TraceGraph_ELBO(**kwargs), model, guide, ["phi"], args)
    ratio = arsm / tracegraph
    print(f"\n[variance {label}] ARSM {arsm:.3f} / TraceGraph {tracegraph:.3f} = {ratio:.3f}")
    assert ratio <= bound
