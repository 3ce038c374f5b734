"""Pseudo passes: the cost of one ARSM site at pseudo actions, guide and model re-run at each.

:class:`_PseudoPass` evaluates a site's pseudo actions with one ``jax.vmap`` of guide and model
(static shapes), or with ``jax.lax.map`` in chunks (``pseudo_map="map"``, less memory). Each pass
runs through the ELBO's one runner (``ARSM_ELBO._run``) with the site's value substituted and the
particle's keys: upstream and independent sites are reproduced exactly, downstream sites are
re-sampled from the real pass's noise (their own per-site keys; see :mod:`numpyro_arsm._sampler`).
The costs, the finiteness flags of the passes and the number of evaluations are returned
(:class:`_PseudoCosts`), never stored.
"""

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.lax import stop_gradient

from numpyro_arsm._costs import _CostSpec, _site_cost
from numpyro_arsm._enum import enumerated_site_cost
from numpyro_arsm._guide_enum import dice_pass_cost
from numpyro_arsm._sampler import _Particle


class _PseudoCosts(NamedTuple):
    """What evaluating ``U`` pseudo actions of a site gives."""

    costs: jax.Array  # [U, *cost_shape]
    finite: dict  # guide site -> [U] whether its logits were finite in each pass
    num_evaluations: int  # U, static


@dataclass(frozen=True)
class _PseudoPass:
    """The pseudo passes of one ARSM site of one particle."""

    run: Callable  # ARSM_ELBO._run: (*particle, substitutions=...) -> traces and sampler
    particle: _Particle
    spec: _CostSpec  # the site (spec.name) and what makes up its cost
    value_shape: tuple  # the site's value shape (batch and event dims)
    pseudo_map: str = "vmap"  # "vmap" or "map" (lax.map)
    batch_size: Optional[int] = None  # lax.map's chunk size
    enumerated: str = ""  # "model" / "guide": the model's / every marked site summed out

    def cost_of(self, model_trace, guide_trace):
        """The site's cost (no gradient) in the pass of these traces: ``[*cost_shape]``."""
        cost = {"": _site_cost, "model": enumerated_site_cost,
                "guide": dice_pass_cost}[self.enumerated]
        return stop_gradient(cost(model_trace, guide_trace, self.spec))

    def _evaluate(self, action):
        # NumPyro's value is the action itself: the index (Categorical) or 0/1 (Bernoulli)
        value = jnp.asarray(action.reshape(self.value_shape)).astype(jnp.int32)
        model_trace, guide_trace, sampler = self.run(
            *self.particle, substitutions={self.spec.name: value})
        return self.cost_of(model_trace, guide_trace), sampler.finite

    def costs(self, actions):
        """The costs at actions ``[U, *elements]``, with the passes' flags and count."""
        if self.pseudo_map == "map":
            costs, finite = jax.lax.map(self._evaluate, actions, batch_size=self.batch_size)
        else:
            costs, finite = jax.vmap(self._evaluate)(actions)
        return _PseudoCosts(costs, finite, actions.shape[0])
