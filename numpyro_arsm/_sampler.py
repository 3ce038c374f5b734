"""The randomness of a particle: per-site noise keys, the messenger that samples the guide's
categorical and Bernoulli sites from their ARSM augmentation, and what every pass of guide and
model starts from (the particle's keys and call, a fresh copy of the parameter state).

Common random numbers come from the handler order: the guide runs as
``substitute(seed(guide, key), data={site: pseudo_value})`` under the same key at every pseudo
action, so every other site draws the same noise (``seed`` hands out keys before ``substitute``
sets the value). Sites upstream of or independent of the site therefore come out identical to the
real pass, and sites downstream of it are re-sampled from the same noise at the new value.
"""

import hashlib
from collections import namedtuple
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import random
from jax.lax import stop_gradient
from numpyro.primitives import Messenger

from numpyro_arsm import estimators as est
from numpyro_arsm._checks import guide_enumeration_message
from numpyro_arsm._sites import arsm_kind, element_shape_of, site_logits
from numpyro_arsm.config import site_estimator

# What the sampler learns about one ARSM site of the guide (as in the Pyro package, without its
# RNG state: JAX keys are explicit).
#   kind: "categorical" | "bernoulli"
#   noise: log pi [*elements, C] (categorical) or u [*elements] (Bernoulli)
#   logits: logits (no gradient) broadcast to [*elements, C] or [*elements]
_SiteNoise = namedtuple("_SiteNoise", ["kind", "noise", "logits"])


class _Particle(NamedTuple):
    """One particle's call of guide and model, the same at every pass (real and pseudo): the
    arguments of ``ARSM_ELBO._run`` before its substitutions."""

    keys: tuple  # (model_key, guide_key, noise_key)
    param_map: dict
    model: Callable
    guide: Callable
    args: tuple
    kwargs: dict


def _fresh(param_map):
    """``param_map`` with new containers at every level (``numpyro.mutable`` values are updated
    in place, and ``substitute`` copies only the top-level dict): each pass of guide and model,
    real, pseudo or provenance, starts from the state passed in, no update of one pass leaks
    into another (or leaks a vmap tracer), and the state returned is the real pass's."""
    return {k: jax.tree.map(lambda x: x, v) for k, v in param_map.items()}


def _site_key(noise_key, name):
    """The key of the noise of site ``name``: ``noise_key`` folded in with a 64-bit digest of
    the name (stable across processes, unlike ``hash()``). Two sites must never share noise:
    with a 31-bit crc32, "z_24" and "obs_27851_x" did, and drew identical values (a biased
    gradient); a guide of 10^5 sites had about two such pairs. At 64 bits collisions are as
    unlikely as those of the keys themselves."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    for i in (0, 4):
        noise_key = random.fold_in(noise_key, int.from_bytes(digest[i:i + 4], "little"))
    return noise_key


class _ARSMSampler(Messenger):
    """Samples the guide's categorical / Bernoulli sites from their ARSM augmentation.

    A categorical site gets ``pi ~ Dir(1_C)`` and ``argmin(log pi - logits)``; a Bernoulli site
    gets ``u ~ U(0, 1)`` and ``1[u < sigmoid(logits)]``. The noise comes from ``noise_key``
    folded in with a digest of the site's name (:func:`_site_key`): the same at every pass, so a
    downstream discrete site re-sampled at a pseudo action shares its noise with the real pass,
    and different at every site. Must wrap ``seed`` from outside, so that ``seed`` still hands a
    key to the site (keeping the other sites' keys).

    Sites marked for enumeration (``infer={"enumerate": "parallel"}``, e.g. by
    ``config_enumerate``) are recorded in ``enumerated``; with ``enumerate_guide`` they are left
    to the enumeration handler outside, else (the first real pass, which finds the marks) they
    are sampled and the mark is dropped from the message, so that replaying the guide trace
    does not mark the model site. Any other mark is an error naming the site.
    With ``check_finite``, ``finite`` maps each site to whether its logits are finite (a traced
    boolean, no host callback here: the ELBO checks all flags once per loss call).
    """

    def __init__(self, fn, noise_key, check_finite=True, enumerate_guide=False):
        super().__init__(fn)
        self.enumerate_guide = enumerate_guide
        self.noise_key = noise_key
        self.check_finite = check_finite
        self.noise = {}
        self.finite = {}
        self.enumerated = {}

    def process_message(self, msg):
        if msg["type"] != "sample" or msg.get("is_observed"):
            return
        name = msg["name"]
        infer = msg.get("infer") or {}
        if infer.get("enumerate"):
            site_estimator(name, infer, None, None)  # (raises if it names one too)
            if infer["enumerate"] != "parallel":
                raise ValueError(guide_enumeration_message(name, infer["enumerate"]))
            self.enumerated[name] = infer["enumerate"]
            if self.enumerate_guide:
                return  # (summed out by the enumeration handler outside)
            msg["infer"] = {k: v for k, v in infer.items() if k != "enumerate"}
        if msg["value"] is not None:
            return
        kind, base = arsm_kind(msg["fn"])
        if kind is None:
            return
        element_shape = element_shape_of(kind, msg["fn"])
        logits = stop_gradient(site_logits(kind, base, element_shape))
        if self.check_finite:
            self.finite[name] = jnp.all(jnp.isfinite(logits))
        key = _site_key(self.noise_key, name)
        if kind == "bernoulli":
            noise = est.sample_uniform(key, element_shape, dtype=logits.dtype)
            action = est.bernoulli_pair(noise, logits)[0]
        else:
            noise = est.sample_log_pi(key, element_shape, logits.shape[-1], dtype=logits.dtype)
            action = est.categorical_from_log_pi(noise, logits)
        # NumPyro's value is the action itself: the index (Categorical) or 0/1 (Bernoulli)
        msg["value"] = jnp.asarray(action).astype(jnp.int32)
        self.noise[name] = _SiteNoise(kind, noise, logits)
