"""Costs of an ARSM site at its pseudo actions: how they are evaluated, and which path is taken.

Owns: :class:`_PseudoPass` (one site's pass of guide and model at given actions, batched under a
pseudo-action plate or one action at a time), the policy that picks the path (the check of the
batched pass on the first step of a model structure, the fallback to the sequential path with one
warning, ``pseudo_batch_size``), and the deduplication of identical whole-site actions.

Every function here returns the number of model evaluations it made beside its costs; the ELBO
adds them up per step. ``elbo`` is the :class:`~pyro_arsm.ARSM_ELBO` whose options and hooks
(``_distinct_actions``, ``_allows_sequential_pass``) decide the policy.
"""

import pyro
import pyro.poutine as poutine
import torch
from pyro.ops.provenance import detach_provenance

from pyro_arsm import _enum
from pyro_arsm import estimators as est
from pyro_arsm._checks import (
    BATCHED_REQUIRED,
    FALLING_BACK,
    batched_failed_message,
    compiled_needs_batched_pass,
    failure,
    many_evaluations_message,
)
from pyro_arsm._costs import PseudoShapeError, combine_costs, pass_cost
from pyro_arsm._pyro_internals import is_subsample
from pyro_arsm._sampler import _ARSMSampler, run_pass, with_pseudo_plate
from pyro_arsm._sites import value_from_action

__all__ = ["action_costs", "batch_nesting", "column_costs"]

_NUM_CHECK_ROWS = 4  # rows of the batched-pass check: the true action and up to 3 pseudo actions
_MANY_EVALUATIONS = 4096  # warn once about a site that needs more evaluations per step


def batch_nesting(*traces):
    """Number of batch dims used by any sample site: plate dims and undeclared batch dims (the
    pseudo-action plate goes left of them)."""
    nesting = 0
    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] != "sample":
                continue
            for frame in site["cond_indep_stack"]:
                if frame.vectorized:
                    nesting = max(nesting, -frame.dim)
            batch_shape = getattr(site["fn"], "batch_shape", ())
            nesting = max(nesting, len(batch_shape))
    return nesting


def cost_of_pass(particle):
    """The function that computes a pass's cost for ``particle``'s model and guide."""
    if particle.guide_enumerated:
        return _enum.dice_pass_cost
    if particle.components is not None:
        return _enum.enumerated_pass_cost
    return pass_cost


def column_costs(elbo, pseudo, real_cost):
    """The per-element table ``[C, *elements]`` of a separable site, the ``k``-th row evaluated
    with every element set to category ``k``; and the number of evaluations (``C``)."""
    noise = pseudo.particle.noise[pseudo.spec.name]
    if pseudo.kind == "bernoulli":
        true_action = est.bernoulli_pair(noise.noise, noise.logits)[0]
    else:
        true_action = est.categorical_from_log_pi(noise.noise, noise.logits)
    columns = est.column_actions(pseudo.num_categories, true_action.shape,
                                 device=true_action.device).to(true_action.dtype)
    costs = _pseudo_costs(elbo, pseudo, true_action, columns, real_cost)
    return costs, pseudo.num_categories


def action_costs(elbo, pseudo, actions, real_cost, separable):
    """Costs ``[R, *cost_shape]`` of whole-site actions ``[R, *elements]`` (the true action in
    row 0), and the number of evaluations.

    Each distinct action is evaluated once and the true action reuses the real pass (with
    ``pseudo.model_grads``, it is evaluated again, for its model terms with gradient); a separable
    site's costs are read off its per-element table where that takes fewer evaluations."""
    name = pseudo.spec.name
    distinct, inverse, true_index = elbo._distinct_actions(actions)
    others = [u for u in range(distinct.shape[0]) if u != true_index]
    if separable and pseudo.num_categories <= len(others):
        columns, num_evaluations = column_costs(elbo, pseudo, real_cost)
        pseudo.rows_taken(actions=actions)
        return est.costs_from_columns(columns, actions), num_evaluations
    if len(others) > _MANY_EVALUATIONS:
        elbo._warn(("many", name), many_evaluations_message(name, len(others)))
    if pseudo.model_grads:  # every distinct action, the true one too
        costs = _pseudo_costs(elbo, pseudo, distinct[true_index], distinct, real_cost)
        costs = torch.cat([costs[:true_index], real_cost.unsqueeze(0), costs[true_index + 1:]])
        pseudo.rows_taken(inverse, true_index)
        return (costs if inverse is None else costs[inverse]), distinct.shape[0]
    parts = [real_cost.unsqueeze(0)]
    if others:  # the distinct actions' costs in order, the real pass's at true_index
        costs = _pseudo_costs(elbo, pseudo, distinct[true_index], distinct[others], real_cost)
        parts = [costs[:true_index], parts[0], costs[true_index:]]
    distinct_costs = torch.cat(parts)
    return (distinct_costs if inverse is None else distinct_costs[inverse]), len(others)


def _pseudo_costs(elbo, pseudo, true_action, actions, real_cost):
    """Costs ``[U, *cost_shape]`` of a site at ``U`` pseudo actions ``[U, *elements]``.

    ``vectorize_pseudo=False``: one pass per action. Otherwise one batched pass, if the check on
    the first step of this model structure (:func:`_check_batched`) found it right; ``"auto"``
    falls back to the sequential path (with one warning) where it is not."""
    name = pseudo.spec.name
    if pseudo.particle.guide_enumerated:  # (its cost is an expectation over the whole pass)
        if not elbo._allows_sequential_pass():
            raise NotImplementedError(compiled_needs_batched_pass(type(elbo).__name__, name))
        return pseudo.sequential(actions)
    if elbo.vectorize_pseudo is False:
        return pseudo.sequential(actions)
    modes = pseudo.particle.program.pseudo_mode
    key = (pseudo.particle.signature, name)
    if key not in modes:
        check_rows = torch.cat([true_action.unsqueeze(0), actions[:_NUM_CHECK_ROWS - 1]])
        problem = _check_batched(pseudo, check_rows, real_cost)
        modes[key] = "batched" if problem is None else "sequential"
        if problem is not None:
            _batched_failed(elbo, name, problem, actions.shape[0], pseudo.dim)
    if modes[key] == "batched":
        try:
            return _batched_costs(elbo, pseudo, actions)
        except Exception as e:  # the check passed on fewer rows or another step's data
            if not elbo._allows_sequential_pass():
                raise
            modes[key] = "sequential"
            _batched_failed(elbo, name, failure(e), actions.shape[0], pseudo.dim, e)
    if not elbo._allows_sequential_pass():
        raise NotImplementedError(compiled_needs_batched_pass(type(elbo).__name__, name))
    pseudo.model_rows.clear()  # (of a batched pass that failed part-way)
    return pseudo.sequential(actions)


def _batched_costs(elbo, pseudo, actions):
    if elbo.pseudo_batch_size and actions.shape[0] > elbo.pseudo_batch_size:
        return torch.cat([pseudo.batched(chunk)
                          for chunk in actions.split(elbo.pseudo_batch_size)])
    return pseudo.batched(actions)


def _check_batched(pseudo, rows, real_cost):
    """Evaluates a few pseudo actions (the true one first) both in one batched pass and one by
    one, every other guide site replayed at its real value, so that both are deterministic
    functions of the action. Returns ``None`` if they agree, else what went wrong.

    This catches a model or guide that mixes the pseudo-action dim with others (sums or reshapes
    over all dims, ``torch.cat`` along a fixed dim, indexing ``z[0]``, shape asserts),
    downstream guide sites included."""
    try:
        batched = pseudo.batched(rows, replay_all=True)
    except Exception as e:
        if isinstance(e, PseudoShapeError):
            return str(e)
        return failure(e)
    sequential = pseudo.sequential(rows, replay_all=True)
    if not _same_costs(sequential[0], real_cost):
        # e.g. randomness outside sample sites (dropout): nothing to compare against
        return ("cannot be checked: re-evaluating the true action does not reproduce the "
                "real pass's cost (randomness outside pyro.sample sites, such as dropout?)")
    if not _same_costs(batched, sequential):
        diff = (batched - sequential).abs().max()
        return ("gives other costs than evaluating the same actions one at a time (max abs "
                f"difference {diff:.3g}): the model or guide mixes the pseudo-action dim with "
                "others, e.g. sums or reshapes over all dims, indexes sample values with "
                "z[0], or concatenates along a fixed dim")
    return None


def _batched_failed(elbo, name, problem, num_actions, dim, error=None):
    message = batched_failed_message(name, problem, num_actions, dim)
    if elbo.vectorize_pseudo is True:
        raise PseudoShapeError(message + BATCHED_REQUIRED) from error
    elbo._warn(("pseudo", name), message + FALLING_BACK)


def _same_costs(a, b):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=1e-4 * scale))


class _PseudoPass:
    """Evaluates the cost of one ARSM site at pseudo actions: batched under a pseudo-action plate
    left of ``max_plate_nesting``, or one action at a time.

    Guide sites upstream of or independent of the site are replayed (and subsample indices);
    downstream ones are re-sampled, discrete ones from the real pass's noise and the others from
    their own random streams of the real pass, on both paths (common random numbers).
    With ``replay_all``, downstream sites are replayed too (for the batched-pass check).
    In a model with enumerated sites, their dims go left of the pseudo-action plate.
    """

    def __init__(self, particle, spec, kind, cost_shape, downstream, args, kwargs,
                 check_finite=True, model_grads=False):
        self.particle, self.spec, self.kind = particle, spec, kind
        # model_grads: also keep each evaluated action's model terms of the cost, with their
        # gradient to the model's parameters (guide values detached): model_rows holds
        # (per-row sums [U], per-element costs [U, *cost_shape] or None) of each pass
        self.model_grads = model_grads
        self.model_rows = []
        self.model_spec = spec._replace(guide_deps=frozenset(),
                                        guide_names=frozenset(particle.raw_guide_trace.nodes))
        self.correction = 0.0
        self.check_finite = check_finite
        self.cost_shape, self.downstream = cost_shape, downstream
        self.args, self.kwargs = args, kwargs
        self.site = particle.guide_trace.nodes[spec.name]
        fn = self.site["fn"]
        self.batch_shape = tuple(fn.batch_shape)
        self.value_shape = self.batch_shape + tuple(fn.event_shape)
        self.n_event = len(cost_shape) - len(self.batch_shape)
        self.dim = -(particle.max_plate_nesting + 1)
        self.model_subsample = {
            n: s for n, s in particle.raw_model_trace.nodes.items()
            if s["type"] == "sample" and is_subsample(s["fn"])
            and n not in particle.raw_guide_trace.nodes
        }
        self.reuse = {n: v for n, v in particle.noise.items() if n in downstream}
        noise = particle.noise[spec.name]
        self.num_categories = noise.noise.shape[-1] if kind != "bernoulli" else 2
        self.cost_of_pass = cost_of_pass(particle)

    def _sampler(self, broadcast=None):
        """The sampler of a pseudo pass: downstream discrete sites re-use their noise, the
        others draw from their real-pass streams (``broadcast`` over the pseudo actions)."""
        sampler = _ARSMSampler(reuse=self.reuse, check_finite=self.check_finite,
                               streams=self.particle.streams, broadcast=broadcast)
        sampler.enumerate_guide = self.particle.guide_enumerated
        return sampler

    def _values(self, actions):
        dtype = self.particle.noise[self.spec.name].logits.dtype
        return value_from_action(self.kind, actions, self.num_categories, dtype)

    def _replayed(self, replay_all):
        """The guide sites to replay: all but the site (and, unless ``replay_all``, but the
        sites downstream of it)."""
        part = poutine.Trace()
        for n, s in self.particle.raw_guide_trace.nodes.items():
            if s["type"] == "sample" and n != self.spec.name and (
                    replay_all or n not in self.downstream) and (
                    s["infer"].get("_enumerate_dim") is None):  # (enumerated again)
                value = detach_provenance(s["value"])
                part.add_node(n, **{**s, "value": value.detach() if self.model_grads else value})
        return part

    def _cost(self, guide, model, part, sampler, pseudo=None, record=False):
        """``(shared, own)`` of one pass of ``guide`` and ``model`` with ``part`` replayed; with
        ``record`` (and ``model_grads``) also ``(shared, own)`` of its model terms, with their
        gradient (the guide runs without)."""
        record = record and self.model_grads

        def run():
            # enumerated dims left of the plates, and of the pseudo-action plate if batched
            nesting, offset = self.particle.max_plate_nesting, int(pseudo is not None)
            guide_handlers = (sampler,)
            if self.particle.guide_enumerated:
                guide_handlers = (sampler, _enum.guide_enumeration(nesting, offset))
            if record:
                guide_handlers = guide_handlers + (torch.no_grad(),)
            enumerating = self.particle.guide_enumerated or self.particle.components is not None
            model_handlers = _enum.enumeration(nesting, self.particle.guide_enumerated,
                                               offset) if enumerating else ()
            guide_trace, model_trace = run_pass(
                model, guide, self.args, self.kwargs, replay=part, guide_handlers=guide_handlers,
                model_replay=self.model_subsample, model_handlers=model_handlers)
            cost = self.cost_of_pass(guide_trace, model_trace, self.spec, pseudo)
            if not record:
                return cost
            return cost, pass_cost(guide_trace, model_trace, self.model_spec)

        # Pseudo values are valid by construction and the real pass was validated: skip the
        # distributions' argument checks, which cost as much as the decoder on large sites.
        with pyro.validation_enabled(False):
            if record:
                with torch.enable_grad():
                    (shared, own), model_cost = run()
                return (_detach(shared), _detach(own)), model_cost
            return self._without_grad(run), None

    def _record(self, shared, own, lead):
        """Keeps the model terms of the rows of one pass (``lead``: ``(U,) + pad`` batched,
        ``()`` for one action): their sum per row, and per element where that is the cost's
        layout (no event dims)."""
        rows = lead[:1]
        full = lead + self.batch_shape
        shared = torch.as_tensor(shared)
        shared = shared.reshape((1,) * (len(full) - shared.dim()) + tuple(shared.shape))
        # each term once, however many elements it is shared by
        total = shared.reshape(shared.shape[:len(rows)] + (-1,)).sum(-1).expand(rows)
        if isinstance(own, torch.Tensor):
            total = total + own.reshape(rows + (-1,)).sum(-1)
        elements = None
        if self.n_event == 0:
            elements = combine_costs(shared, 0.0, full, rows + self.cost_shape, 0,
                                     self.spec.name).reshape((-1,) + self.cost_shape)
        self.model_rows.append((total, elements))

    def rows_taken(self, inverse=None, true_index=0, actions=None, weights=None):
        """Sets :attr:`correction`, ``mean(model terms at the actions) - model terms at the true
        action``, from the passes recorded since the last call, and clears them: rows of
        distinct actions (``inverse`` maps the estimator's rows onto them), or with ``actions``
        (``[R, *elements]``) the estimator's rows read off recorded per-element columns, or with
        ``weights`` (``[C, *elements]``) the columns weighted per element (``actions`` then
        holds the true action alone). Each row is a draw
        from ``q`` (a swap of the Dirichlet augmentation, an RLOO sample, the antithetic draw),
        so the mean is unbiased for the model terms' gradient, with lower variance."""
        if not self.model_rows:
            return
        totals = torch.cat([t.reshape(-1) for t, _ in self.model_rows])
        if actions is None and weights is None:
            rows = totals if inverse is None else totals[inverse]
            self.correction = rows.mean() - totals[true_index]
        else:
            columns = torch.cat([e for _, e in self.model_rows])
            true_row = est.costs_from_columns(columns, actions[:1]).sum()
            if weights is not None:
                mean = (weights.to(columns.dtype) * columns).sum()
            else:
                mean = est.costs_from_columns(columns, actions).reshape(
                    actions.shape[0], -1).sum(-1).mean()
            self.correction = mean - true_row
        self.model_rows.clear()

    def batched(self, actions, replay_all=False):
        U = actions.shape[0]
        pad = (1,) * (self.particle.max_plate_nesting - len(self.batch_shape))
        part = self._replayed(replay_all)  # replayed values broadcast over the rows
        part.add_node(self.spec.name, **{
            **self.site, "value": self._values(actions).reshape((U,) + pad + self.value_shape)})
        broadcast = {n: (U, -self.dim + len(s["fn"].event_shape), s["value"].shape)
                     for n, s in self.particle.raw_guide_trace.nodes.items()
                     if n in self.downstream}
        (shared, own), model_cost = self._cost(
            with_pseudo_plate(self.particle.guide, U, self.dim),
            with_pseudo_plate(self.particle.model, U, self.dim), part, self._sampler(broadcast),
            pseudo=(U, self.dim), record=not replay_all)
        if model_cost is not None:
            model_shared, model_own = model_cost
            if not isinstance(model_own, float):
                model_own = model_own.reshape((U,) + self.cost_shape)
            self._record(model_shared, model_own, (U,) + pad)
        if not isinstance(own, float):
            own = own.reshape((U,) + self.cost_shape)
        return combine_costs(shared, own, (U,) + pad + self.batch_shape,
                             (U,) + self.cost_shape, self.n_event, self.spec.name)

    def sequential(self, actions, replay_all=False):
        part = self._replayed(replay_all)
        costs = []
        for value in self._values(actions):
            trace = poutine.Trace()
            for n, s in part.nodes.items():
                trace.add_node(n, **s)
            trace.add_node(self.spec.name,
                           **{**self.site, "value": value.reshape(self.value_shape)})
            with torch.random.fork_rng(devices=[]):
                (shared, own), model_cost = self._cost(self.particle.guide, self.particle.model,
                                                       trace, self._sampler(),
                                                       record=not replay_all)
            if model_cost is not None:
                self._record(*model_cost, ())
            costs.append(combine_costs(shared, own, self.batch_shape, self.cost_shape,
                                       self.n_event, self.spec.name))
        return torch.stack(costs)

    def _without_grad(self, run):
        """``run()`` with gradient recording off, or, for a program that needs autograd inside
        (a guide that calls ``torch.autograd.grad``), on; the costs are detached either way."""
        program = self.particle.program
        if not program.needs_grad:
            try:
                with torch.no_grad():
                    return run()
            except RuntimeError as e:
                if not needs_autograd(e):
                    raise
                program.needs_grad = True
        with torch.enable_grad():
            shared, own = run()
        return _detach(shared), _detach(own)


def needs_autograd(error):
    """Whether ``error`` is autograd's complaint about a graph that ``torch.no_grad`` removed."""
    return "does not require grad" in str(error)


def _detach(cost):
    return cost.detach() if isinstance(cost, torch.Tensor) else cost
