"""How guide sites are sampled, and the one function that runs guide and model for every pass.

Owns: :class:`_ARSMSampler` (the messenger that samples categorical, one-hot and Bernoulli guide
sites from their ARSM augmentation and every other guide site from a stream of its own),
:func:`with_pseudo_plate` (the extra plate of a batched pseudo pass) and :func:`run_pass`, which
runs the guide and then the model replayed against it, with the handlers a pass needs: the real
pass, the provenance replay, the batched and the sequential pseudo pass all go through it.
"""

import contextlib
from collections import namedtuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.ops.provenance import get_provenance, track_provenance
from pyro.poutine.messenger import Messenger

from pyro_arsm import _noise
from pyro_arsm import estimators as est
from pyro_arsm._checks import finite_logits_message, guide_enumeration_message
from pyro_arsm._pyro_internals import is_subsample
from pyro_arsm._sites import arsm_kind, element_shape_of, site_logits, value_from_action
from pyro_arsm.config import site_estimator

__all__ = ["PSEUDO_PLATE", "run_pass", "with_pseudo_plate"]

PSEUDO_PLATE = "_arsm_pseudo_actions"

# What the sampler learns about one ARSM site of the guide.
#   kind: "categorical" | "onehot" | "bernoulli"
#   noise: log pi [*elements, C] (categorical, one-hot) or u [*elements] (Bernoulli)
#   logits: detached logits broadcast to [*elements, C] or [*elements]
_SiteNoise = namedtuple("_SiteNoise", ["kind", "noise", "logits"])

# One particle: the (possibly particle-vectorized) model and guide, their traces and ARSM noise.
_Particle = namedtuple(
    "_Particle",
    ["model", "guide", "model_trace", "guide_trace", "raw_guide_trace", "raw_model_trace",
     "noise", "streams", "max_plate_nesting", "deps", "signature", "program", "finite",
     "components", "guide_enumerated", "analytic"],
    defaults=(frozenset(),),
)
# program: the ProgramState of this model and guide (cached dependencies, pseudo-pass modes)
# streams: the guide sites' random streams in this particle (None on the compiled path); a pseudo
# pass re-samples downstream sites from the same streams (common random numbers).
# deps: None (read the dependencies from provenance on the traces) or, when cached, a dict
# site -> (model_deps, guide_deps, downstream) of frozensets of site names.
# signature: the model structure (site names, types, shapes), the key of what is remembered
# about the batched pseudo pass.
# finite: (site, bool tensor) pairs of the compiled path's deferred finiteness checks.
# guide_enumerated: the guide's marked sites are enumerated (see pyro_arsm._enum)
# analytic: the ARSM sites whose KL is in closed form (see pyro_arsm._analytic)
# components: None, or for a model with enumerated sites the components of its factors
# (see pyro_arsm._enum).


def run_pass(model, guide, args, kwargs, replay=None, guide_handlers=(), handlers=(),
             model_replay=None, model_handlers=()):
    """Runs ``guide`` (replaying ``replay``, a partial trace, if given) under ``guide_handlers``,
    then ``model`` replayed against the guide's trace (plus the sites of ``model_replay``: the
    model's own subsample indices) under ``model_handlers`` (its enumeration), all under
    ``handlers``.

    :returns: ``(guide_trace, model_trace)``, raw (subsample sites kept, no log-probs).
    """
    with contextlib.ExitStack() as outer:
        for handler in handlers:
            outer.enter_context(handler)
        with contextlib.ExitStack() as inner:
            for handler in guide_handlers:
                inner.enter_context(handler)
            run_guide = guide if replay is None else poutine.replay(guide, trace=replay)
            guide_trace = poutine.trace(run_guide).get_trace(*args, **kwargs)
        replay_trace = guide_trace
        if model_replay:
            replay_trace = guide_trace.copy()
            for name, site in model_replay.items():
                replay_trace.add_node(name, **site)
        with contextlib.ExitStack() as inner:
            for handler in model_handlers:
                inner.enter_context(handler)
            model_trace = poutine.trace(poutine.replay(model, trace=replay_trace)).get_trace(
                *args, **kwargs)
    return guide_trace, model_trace


def with_pseudo_plate(fn, size, dim):
    """``fn`` under the plate of ``size`` pseudo actions at ``dim``."""
    def wrapped(*args, **kwargs):
        with pyro.plate(PSEUDO_PLATE, size, dim=dim):
            return fn(*args, **kwargs)

    return wrapped


class _ARSMSampler(Messenger):
    """Samples the guide's categorical / one-hot / Bernoulli sites from their ARSM augmentation.

    A categorical site gets ``pi ~ Dir(1_C)`` and the value ``argmin(log pi - logits)``
    (Yin et al. 2019, the augmentation); a Bernoulli site gets ``u ~ U(0, 1)`` and
    ``1[u < sigmoid(logits)]``. The noise is kept in ``self.noise``.

    With ``reuse``, sites already in ``reuse`` are drawn from that noise instead (broadcast over
    any new batch dims): in a pseudo pass this gives downstream discrete sites common random
    numbers with the real pass.

    With ``streams`` (a :class:`~pyro_arsm._noise.SiteStreams`), every site that draws draws from
    a stream of its own, so that a pseudo pass given the real pass's streams re-samples each
    downstream site from the random numbers it had in the real pass; ``broadcast`` maps the sites
    re-sampled in a batched pseudo pass to their :class:`~pyro_arsm._noise.BroadcastNoise`
    arguments. ``streams=None`` (the compiled path) draws from torch's global stream.

    ``defer_finite`` (the compiled path) keeps a boolean tensor per site in ``self.finite``
    instead of raising on logits that are not finite.
    """

    def __init__(self, reuse=None, check_finite=True, defer_finite=False, streams=None,
                 broadcast=None):
        super().__init__()
        self.check_finite = check_finite
        self.defer_finite = defer_finite
        self.finite = []
        self.noise = {}
        self.enumerated = {}  # site -> its enumeration mark
        self.reuse = reuse or {}
        self.streams = streams
        self.broadcast = broadcast or {}
        # True: sites marked for parallel enumeration are left to an EnumMessenger outside
        self.enumerate_guide = False

    def _stream(self, name):
        return contextlib.nullcontext() if self.streams is None else self.streams.stream(name)

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["done"] or msg["value"] is not None:
            return
        if is_subsample(msg["fn"]):
            return
        name = msg["name"]
        kind, base = arsm_kind(msg["fn"])
        if kind is not None and msg["infer"].get("enumerate"):
            site_estimator(name, msg["infer"], None, None)  # (raises if it names one too)
            mark = msg["infer"]["enumerate"]
            if mark != "parallel":
                raise ValueError(guide_enumeration_message(name, mark))
            self.enumerated[name] = mark
            if self.enumerate_guide:
                return  # (summed out by the EnumMessenger inside)
            # The first real pass of a program samples it, to find the marks; the flag is
            # dropped so that replaying this trace into the model does not mark the model site.
            msg["infer"] = {k: v for k, v in msg["infer"].items() if k != "enumerate"}
        if kind is None:
            self._sample_other(msg)
            return
        element_shape = element_shape_of(kind, msg["fn"])
        logits = site_logits(kind, base, element_shape).detach()
        self._check_finite(name, logits)
        noise = self._noise(name, kind, logits, element_shape)
        if kind == "bernoulli":
            value = est.bernoulli_pair(noise, logits)[0]
        else:
            action = est.categorical_from_log_pi(noise, logits)
            value = value_from_action(kind, action, logits.shape[-1], logits.dtype)
        value = value.reshape(tuple(msg["fn"].batch_shape) + tuple(msg["fn"].event_shape))
        # The value depends on whatever the logits depend on: keep that provenance, so that a
        # site sampled from logits computed from another discrete site is known to be downstream
        # of it (TrackNonReparam adds the site's own name afterwards).
        msg["value"] = track_provenance(value, get_provenance(base.logits))
        msg["done"] = True
        self.noise[name] = _SiteNoise(kind, noise, logits)

    def _sample_other(self, msg):
        """A site that is not ARSM's: sampled here, as Pyro would, on its own stream."""
        if self.streams is None:
            return
        name = msg["name"]
        shared = (_noise.BroadcastNoise(*self.broadcast[name]) if name in self.broadcast
                  else contextlib.nullcontext())
        with self._stream(name), shared:
            msg["value"] = msg["fn"](*msg["args"], **msg["kwargs"])
        msg["done"] = True

    def _check_finite(self, name, logits):
        if not self.check_finite:
            return
        if self.defer_finite:
            self.finite.append((name, torch.isfinite(logits).all()))
        elif not torch.isfinite(logits).all():
            bad = "NaN" if torch.isnan(logits).any() else "infinite"
            raise ValueError(finite_logits_message(name, bad))

    def _noise(self, name, kind, logits, element_shape):
        """The site's noise: the real pass's for a reused site, else a fresh draw."""
        if name in self.reuse:
            return self.reuse[name].noise.expand(logits.shape)
        with self._stream(name):
            if kind == "bernoulli":
                return est.sample_uniform(element_shape, dtype=logits.dtype,
                                          device=logits.device)
            return est.sample_log_pi(element_shape, logits.shape[-1], dtype=logits.dtype,
                                     device=logits.device)
