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

from numpyro_arsm._costs import _CostSpec, _model_part, _site_cost
from numpyro_arsm._enum import enumerated_site_cost
from numpyro_arsm._guide_enum import dice_pass_cost
from numpyro_arsm._sampler import _Particle


class _PseudoCosts(NamedTuple):
    """What evaluating ``U`` pseudo actions of a site gives."""

    costs: jax.Array  # [U, *cost_shape]
    finite: dict  # guide site -> [U] whether its logits were finite in each pass
    num_evaluations: int  # U, static
    model_parts: Optional[jax.Array] = None  # [U] or [U, *batch_shape] (model_part), or None


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
    # model_grads="all": also the model's part of the cost, with its gradient to the model's
    # parameters ("total": a scalar per pass, "element": per element), the particle's guide
    # parameters then under stop_gradient; "": not (today's passes)
    model_part: str = ""

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
        cost = self.cost_of(model_trace, guide_trace)
        if not self.model_part:
            return cost, sampler.finite
        part = _model_part(model_trace, guide_trace, self.spec,
                           per_element=self.model_part == "element")
        return cost, sampler.finite, part

    def costs(self, actions):
        """The costs at actions ``[U, *elements]``, with the passes' flags and count (and the
        model's parts of the costs, with ``model_part``)."""
        if self.pseudo_map == "map":
            out = jax.lax.map(self._evaluate, actions, batch_size=self.batch_size)
        else:
            out = jax.vmap(self._evaluate)(actions)
        return _PseudoCosts(out[0], out[1], actions.shape[0], *out[2:])
