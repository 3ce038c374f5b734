"""A discrete autoguide for ARSM: a learnable categorical / Bernoulli guide site per discrete
latent.

NumPyro has no discrete autoguide (its autoguides reject discrete latent sites).
:class:`AutoCategorical` gives every discrete latent site of the model a guide site of the same
family (``Categorical`` or ``Bernoulli``) parameterized by unconstrained logits: one free vector per
plate element ("local") or the output of a network of the model's arguments ("amortized").

Continuous latents are not its job. Combine it with NumPyro's autoguides in an
:class:`~numpyro.infer.autoguide.AutoGuideList` whose own model has the discrete sites blocked
(NumPyro's ``AutoGuideList`` initializes the model it is given, which fails on discrete latents),
and name the sites for ``AutoCategorical`` with ``sites=`` rather than ``block(..., expose=...)``
(which in NumPyro also hides the plates, and with them their full sizes)::

    discrete = discrete_latent_sites(model, data)
    guide = AutoGuideList(handlers.block(model, hide=discrete))
    guide.append(AutoNormal(handlers.block(model, hide=discrete)))
    guide.append(AutoCategorical(model, sites=discrete))
    svi = SVI(model, guide, optax.adam(1e-2), loss=ARSM_ELBO())
"""

from contextlib import ExitStack
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.infer.autoguide import AutoGuide

from numpyro_arsm._sites import arsm_kind, element_shape_of

__all__ = ["AutoCategorical", "discrete_latent_sites"]


def _latent_sites(trace):
    return [
        (name, site)
        for name, site in trace.items()
        if site["type"] == "sample" and not site["is_observed"]
    ]


def _trace_model(model, rng_key, *args, **kwargs):
    if rng_key is None:
        rng_key = jax.random.PRNGKey(0)
    with handlers.block():
        return handlers.trace(handlers.seed(model, rng_key)).get_trace(*args, **kwargs)


def discrete_latent_sites(model: Callable, *args, **kwargs) -> list:
    """Names of the model's latent (unobserved) sample sites with discrete support.

    Runs the model once (a fixed seed; its sample statements draw from the prior) and returns the
    names in execution order: what to ``handlers.block(model, expose=...)`` for
    :class:`AutoCategorical` and ``hide=...`` for a continuous autoguide.
    """
    trace = _trace_model(model, None, *args, **kwargs)
    return [name for name, site in _latent_sites(trace) if site["fn"].support.is_discrete]


def _guided_kind(name, site):
    """``(kind, base)`` of a model site AutoCategorical guides; a clear error for any other."""
    fn = site["fn"]
    if site["infer"].get("enumerate"):
        raise ValueError(
            f"AutoCategorical: site '{name}' is enumerated in the model "
            f"(infer={{'enumerate': {site['infer']['enumerate']!r}}}); a guide must not "
            "sample it. Either keep enumerating it (TraceEnum_ELBO, and block it from this "
            "guide with "
            f"handlers.block(model, hide=['{name}'])) or remove the enumerate flag / "
            "config_enumerate from the model to sample it with ARSM."
        )
    kind, base = arsm_kind(fn)
    if kind is None:
        if not fn.support.is_discrete:
            raise ValueError(
                f"AutoCategorical: site '{name}' ({type(fn).__name__}) is continuous; "
                "AutoCategorical only guides discrete latents. Combine guides: "
                "discrete = numpyro_arsm.discrete_latent_sites(model, *args); "
                "guide = AutoGuideList(handlers.block(model, hide=discrete)); "
                "guide.append(AutoNormal(handlers.block(model, hide=discrete))); "
                "guide.append(AutoCategorical(model, sites=discrete))."
            )
        raise NotImplementedError(
            f"AutoCategorical: site '{name}' has a discrete distribution "
            f"{type(fn).__name__} that is not supported (Categorical and "
            "Bernoulli are); write its guide site by hand."
        )
    return kind, base


class AutoCategorical(AutoGuide):
    """Mean-field discrete guide: one learnable logits array per discrete latent site.

    Each discrete latent site of ``model`` is matched by a guide site of the same family
    (``Categorical`` or ``Bernoulli``, with the model's ``.to_event`` dims) parameterized by
    unconstrained logits, so that :class:`~numpyro_arsm.ARSM_ELBO` can differentiate through them.
    Guide sites are independent of each other given the logits.

    *Local* logits (the default) are a ``numpyro.param`` named ``"{prefix}_{site}_logits"`` with
    one row per plate element, initialized from the model's prior (``init="prior"``) or to zeros
    (``init="uniform"``). Subsampled plates keep full-size parameters and use the rows of the
    current subsample (NumPyro's plates slice params declared with ``event_dim``).

    *Amortized* logits come from ``network(*args, **kwargs)``, called inside the guide with the
    model's arguments; it returns a dict ``{site_name: logits}`` and declares its own weights with
    ``numpyro.param`` (or ``numpyro.contrib.module``) so that SVI trains them. Logits must broadcast
    to the site's batch shape (plus the category dim for ``Categorical``); a dim that matches a
    subsampled plate's full size is subsampled like data (:func:`numpyro.subsample`). Sites the
    network does not return get local logits.

    Masks in the model are not copied (they usually depend on the data): masked elements are
    sampled too, add only their own ``log q`` to the loss and do not change any other gradient.

    Only discrete latents are handled (see the module docstring for combining it with continuous
    autoguides). Sites that the model enumerates (``infer={"enumerate": ...}``) are an error.

    :param callable model: a NumPyro model.
    :param sites: names of the latent sites to guide (default: every latent site of the model,
        which must then all be discrete); other latent sites are left to other guides.
    :param callable network: optional amortization network (see above).
    :param str init: ``"prior"`` or ``"uniform"`` initial local logits.
    :param str prefix: prefix of the param names.
    :param callable create_plates: as for other autoguides (for data subsampling).
    """

    def __init__(self, model: Callable, *, sites: Optional[Sequence[str]] = None,
                 network: Optional[Callable] = None, init: str = "prior", prefix: str = "auto",
                 create_plates: Optional[Callable] = None) -> None:
        if init not in ("prior", "uniform"):
            raise ValueError(f"AutoCategorical: init must be 'prior' or 'uniform', got {init!r}")
        self.site_names = None if sites is None else list(sites)
        self.network = network
        self.init = init
        self._sites = {}
        super().__init__(model, prefix=prefix, create_plates=create_plates)

    def _network_logits(self, *args, **kwargs):
        if self.network is None:
            return {}
        out = self.network(*args, **kwargs)
        if not isinstance(out, dict):
            raise TypeError(
                "AutoCategorical: network(*args, **kwargs) must return a dict {site_name: logits}, "
                f"got {type(out).__name__}"
            )
        return out

    def _param_name(self, name):
        return f"{self.prefix}_{name}_logits"

    def _setup_prototype(self, *args, **kwargs):
        self.prototype_trace = _trace_model(self.model, numpyro.prng_key(), *args, **kwargs)
        self._prototype_frames = {}
        self._prototype_frame_full_sizes = {}
        for name, site in self.prototype_trace.items():
            if site["type"] == "plate":
                self._prototype_frame_full_sizes[name] = site["args"][0]
        self._sites = {}
        latent = dict(_latent_sites(self.prototype_trace))
        if self.site_names is not None:
            missing = [n for n in self.site_names if n not in latent]
            if missing:
                raise ValueError(
                    f"AutoCategorical: sites {missing} are not latent sample sites of the model "
                    f"(latent sites: {list(latent)})"
                )
            latent = {n: latent[n] for n in self.site_names}
        for name, site in latent.items():
            fn = site["fn"]
            kind, base = _guided_kind(name, site)
            value = jnp.asarray(site["value"])
            if kind == "categorical":
                shape = value.shape + jnp.shape(base.logits)[-1:]
                event_dim = fn.event_dim + 1
            else:
                shape = value.shape
                event_dim = fn.event_dim
            frames = list(site["cond_indep_stack"])
            for frame in frames:
                if frame.name not in self._prototype_frame_full_sizes:
                    raise ValueError(
                        f"AutoCategorical: the plate '{frame.name}' of site '{name}' is hidden "
                        "from the guide, so its full size (and any subsampling) is unknown. In "
                        "NumPyro handlers.block(model, expose=[...]) hides plates too: pass the "
                        "model "
                        f"itself with AutoCategorical(model, sites=['{name}', ...]), or block with "
                        "hide=[...] instead."
                    )
                self._prototype_frames[frame.name] = frame
            init = self._init_logits(kind, base, shape, event_dim, frames)
            self._sites[name] = dict(
                kind=kind, event_dim=event_dim, reinterpreted=fn.event_dim - base.event_dim,
                element_shape=element_shape_of(kind, fn), frames=frames, init=init,
            )

    def _init_logits(self, kind, base, shape, event_dim, frames):
        """Initial logits: the prior's (``init="prior"``) or zeros; subsampled plates keep one
        row per element of the full plate (the prior's rows repeated periodically)."""
        full_shape = list(shape)
        for frame in frames:
            full_size = self._prototype_frame_full_sizes[frame.name]
            dim = len(shape) + frame.dim - event_dim
            if full_size != frame.size and 0 <= dim:
                full_shape[dim] = full_size
        if self.init != "prior":
            return jnp.zeros(full_shape)
        prior = jax.nn.log_softmax(base.logits, -1) if kind == "categorical" else base.logits
        init = jnp.broadcast_to(prior, shape)
        for dim, (n, m) in enumerate(zip(full_shape, shape, strict=True)):
            if n != m:
                init = jnp.take(init, jnp.arange(n) % m, axis=dim)
        return init

    def _site_dist(self, name, logits):
        """The guide distribution of a site: its family over the site's elements, with the
        model's ``.to_event`` dims."""
        info = self._sites[name]
        shape = info["element_shape"]
        if info["kind"] == "categorical":
            d = dist.CategoricalLogits(jnp.broadcast_to(logits, shape + jnp.shape(logits)[-1:]))
        else:
            d = dist.BernoulliLogits(jnp.broadcast_to(logits, shape))
        return d.to_event(info["reinterpreted"]) if info["reinterpreted"] else d

    def _logits(self, name, network_logits):
        info = self._sites[name]
        if name in network_logits:
            return numpyro.subsample(network_logits[name], event_dim=info["event_dim"])
        return numpyro.param(self._param_name(name), info["init"], event_dim=info["event_dim"])

    def __call__(self, *args, **kwargs):
        """Sample every discrete latent site; returns ``{site_name: value}``."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        network_logits = self._network_logits(*args, **kwargs)
        result = {}
        for name, info in self._sites.items():
            with ExitStack() as stack:
                for frame in info["frames"]:
                    stack.enter_context(plates[frame.name])
                logits = self._logits(name, network_logits)
                result[name] = numpyro.sample(name, self._site_dist(name, logits))
        return result

    def sample_posterior(self, rng_key, params, *args, sample_shape=(), **kwargs):
        """Draws of every discrete latent site from the guide with ``params``."""

        def one(key):
            guide = handlers.substitute(handlers.seed(self, key), data=params)
            return guide(*args, **kwargs)

        num = int(jnp.prod(jnp.array(sample_shape))) if sample_shape else 1
        keys = jax.random.split(rng_key, num)
        draws = jax.vmap(one)(keys)
        if not sample_shape:
            return jax.tree_util.tree_map(lambda x: x[0], draws)
        return jax.tree_util.tree_map(lambda x: x.reshape(tuple(sample_shape) + x.shape[1:]), draws)

    def median(self, params):
        """The mode of each *local* guide site: ``argmax`` of its logits (``logits > 0`` for
        Bernoulli), for the full plate. Amortized sites need the data: use the network directly."""
        result = {}
        for name, info in self._sites.items():
            key = self._param_name(name)
            if key not in params:
                continue
            logits = params[key]
            if info["kind"] == "categorical":
                result[name] = jnp.argmax(logits, -1)
            else:
                result[name] = (logits > 0).astype(jnp.result_type(float))
        return result
