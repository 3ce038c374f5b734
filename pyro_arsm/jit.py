"""``JitARSM_ELBO``: :class:`~pyro_arsm.ARSM_ELBO` compiled with :func:`pyro.ops.jit.trace`, in
the pattern of Pyro's :class:`~pyro.infer.JitTrace_ELBO` and
:class:`~pyro.infer.JitTraceGraph_ELBO`.
"""

import weakref
from typing import Callable, Optional

import pyro.ops.jit
import torch
from pyro.util import warn_if_nan

from pyro_arsm._checks import (
    compiled_needs_cached_dependencies,
    finite_logits_message,
)
from pyro_arsm._sampler import _ARSMSampler
from pyro_arsm.elbo import ARSM_ELBO

__all__ = ["JitARSM_ELBO"]


class JitARSM_ELBO(ARSM_ELBO):
    """Like :class:`~pyro_arsm.ARSM_ELBO`, but compiles the loss and surrogate loss with
    :func:`pyro.ops.jit.trace` (``torch.jit.trace`` plus Pyro's parameter plumbing), once per
    model, guide and set of ``**kwargs``. Every later step replays the recorded tensor program, so
    Python's per-step work (tracing, replay, handlers) is paid only on the first step.

    The restrictions are those of Pyro's ``JitTrace_ELBO``:

    - model and guide have a **static structure**: the same sites, shapes and control flow on
      every step (no Python branch on sampled values or on data);
    - they depend on no global data except the param store; all **tensor inputs come through
      ``*args``**, non-tensor inputs through ``**kwargs`` (a new value of a kwarg compiles again).

    What cannot be traced happens on the first call, before compilation, and is then fixed:
    the dependency discovery (which costs depend on which site) and the check of the batched
    pseudo pass (see ``ARSM_ELBO``). The per-step work is static: every pseudo action of a site is
    evaluated (no deduplication of identical actions, whose number depends on the sample), as the
    NumPyro package does. Finite logits are checked in the compiled program and reported after
    the step.

    Not supported (an error says so): ``estimator="ars"`` (its random reference category picks
    which actions to evaluate), ``vectorize_pseudo=False``, sites whose batched pseudo pass fails
    the check (they need one pass per action), guides with score-function sites and
    ``cache_dependencies=False`` (they need provenance tracking on every step). Use
    :class:`~pyro_arsm.ARSM_ELBO` for those.

    ``loss`` (no gradient) is not compiled. Takes the arguments of ``ARSM_ELBO`` and
    ``jit_options`` (passed to :func:`torch.jit.trace`, as in Pyro's ``Jit*_ELBO``).
    """

    def __init__(self, *args, jit_options: Optional[dict] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.estimator == "ars":
            raise NotImplementedError(
                "JitARSM_ELBO does not support estimator='ars': its random reference category "
                "decides which actions are evaluated. Use 'arsm', 'rloo', 'local' or 'ar', or "
                "ARSM_ELBO.")
        if self.vectorize_pseudo is False:
            raise ValueError("JitARSM_ELBO needs the batched pseudo pass: vectorize_pseudo must "
                             "be 'auto' or True (use ARSM_ELBO for vectorize_pseudo=False)")
        self.jit_options = jit_options

    # --- the hooks of ARSM_ELBO: every step runs the same tensor ops, with no branch on values

    def _real_sampler(self):
        """Global-stream draws; finiteness kept as a tensor per site, reported after the step."""
        return _ARSMSampler(check_finite=self.check_finite, defer_finite=True)

    def _check_program(self, program):
        if program.provenance:
            raise NotImplementedError(compiled_needs_cached_dependencies(type(self).__name__))

    def _distinct_actions(self, actions):
        """Every action taken as distinct: no data-dependent ``torch.unique``."""
        return actions, None, 0

    def _pseudo_checks_finite(self):
        return False

    def _allows_sequential_pass(self):
        return False

    def _check_estimator(self, name, estimator):
        if estimator == "ars":
            raise NotImplementedError(
                f"JitARSM_ELBO: guide site '{name}' asks for estimator='ars', whose random "
                "reference category decides which actions are evaluated; use another estimator "
                "for it, or ARSM_ELBO.")

    def _jit_loss_and_surrogate_loss(self, model, guide, args, kwargs):
        # one compiled function per program (the program cache of ARSM_ELBO, which knows a bound
        # method again on the next call); it runs the model and guide it was compiled with
        program = self._programs.get(model, guide, provenance=not self.cache_dependencies)
        if program.compiled is None:
            weakself = weakref.ref(self)

            def loss_and_surrogate_loss(*args, **kwargs):
                self = weakself()
                step = self._step(model, guide, args, kwargs)
                loss, surrogate, flags = step.loss, step.surrogate_loss, step.finite
                program.finite_names = [name for name, _ in flags]
                program.num_pseudo_evaluations = step.num_pseudo_evaluations
                finite = (torch.stack([flag for _, flag in flags]) if flags
                          else torch.ones(0, dtype=torch.bool))
                return torch.as_tensor(loss), torch.as_tensor(surrogate), finite

            jit_options = dict(self.jit_options or {})
            program.compiled = pyro.ops.jit.trace(
                loss_and_surrogate_loss, ignore_warnings=self.ignore_jit_warnings,
                jit_options=jit_options)
        loss, surrogate, finite = program.compiled(*args, **kwargs)
        # (the count of the compiled program: every call evaluates the same pseudo actions)
        self.last_num_pseudo_evaluations = program.num_pseudo_evaluations
        if finite.numel() and not bool(finite.all()):
            name = program.finite_names[int((~finite).nonzero()[0, 0])]
            raise ValueError(finite_logits_message(name, owner=type(self).__name__))
        return loss, surrogate

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """Computes the ``-ELBO`` and back-propagates the ARSM surrogate loss, compiled.

        :returns: an estimate of ``-ELBO``.
        :rtype: float
        """
        loss, surrogate_loss = self._jit_loss_and_surrogate_loss(model, guide, args, kwargs)
        surrogate_loss.backward(retain_graph=self.retain_graph)
        loss = loss.item()
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model: Callable, guide: Callable, *args,
                            **kwargs) -> torch.Tensor:
        """A tensor whose value is ``-ELBO`` and whose gradient is the ARSM estimate, compiled."""
        loss, surrogate_loss = self._jit_loss_and_surrogate_loss(model, guide, args, kwargs)
        warn_if_nan(loss, "loss")
        return loss.detach() + (surrogate_loss - surrogate_loss.detach())
