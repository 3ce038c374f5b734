"""A discrete autoguide for ARSM: a learnable categorical / Bernoulli guide site per discrete
latent.

Pyro's :class:`~pyro.infer.autoguide.AutoDiscreteParallel` exists to be enumerated by
``TraceEnum_ELBO``; :class:`AutoCategorical` is its counterpart for *sampling* gradient estimators
such as :class:`~pyro_arsm.ARSM_ELBO`: every discrete latent site of the model gets a guide site of
the same family (``Categorical``, ``OneHotCategorical`` or ``Bernoulli``) parameterized by
unconstrained logits, either one free vector per plate element ("local") or the output of a network
of the model's arguments ("amortized").

Continuous latents are not its job: combine it with another autoguide through
:class:`~pyro.infer.autoguide.AutoGuideList`::

    discrete = discrete_latent_sites(model, data)
    guide = AutoGuideList(model)
    guide.append(AutoNormal(poutine.block(model, hide=discrete)))
    guide.append(AutoCategorical(poutine.block(model, expose=discrete)))
    svi = SVI(model, guide, optim, loss=ARSM_ELBO(max_plate_nesting=1))
"""

import operator
from contextlib import ExitStack
from typing import Callable, Optional, Sequence

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoGuide
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn.module import PyroModule, PyroParam
from pyro.ops.tensor_utils import periodic_repeat
from torch.distributions import constraints

from pyro_arsm._pyro_internals import prototype_hide_fn
from pyro_arsm._sites import arsm_kind, element_shape_of

__all__ = ["AutoCategorical", "discrete_latent_sites"]

def discrete_latent_sites(model: Callable, *args, **kwargs) -> list:
    """Names of the model's latent (unobserved) sample sites with discrete support.

    Runs the model once (its sample statements draw from the prior) and returns the names in
    execution order: what to ``poutine.block(model, expose=...)`` for :class:`AutoCategorical` and
    ``hide=...`` for a continuous autoguide.
    """
    trace = poutine.block(poutine.trace(model).get_trace)(*args, **kwargs)
    return [
        name
        for name, site in trace.iter_stochastic_nodes()
        if not prototype_hide_fn(site) and site["fn"].support.is_discrete
    ]


def _guided_kind(name, site):
    """``(kind, base)`` of a model site AutoCategorical guides; a clear error for any other."""
    fn = site["fn"]
    if site["infer"].get("enumerate"):
        raise ValueError(
            f"AutoCategorical: site '{name}' is enumerated in the model "
            f"(infer={{'enumerate': {site['infer']['enumerate']!r}}}); a guide must not "
            "sample it. Either keep enumerating it (TraceEnum_ELBO, and block it from this "
            "guide with "
            f"poutine.block(model, hide=['{name}'])) or remove the enumerate flag / "
            "config_enumerate from the model to sample it with ARSM."
        )
    kind, base = arsm_kind(fn)
    if kind is None:
        if not fn.support.is_discrete:
            raise ValueError(
                f"AutoCategorical: site '{name}' ({type(fn).__name__}) is continuous; "
                "AutoCategorical only guides discrete latents. Combine guides: "
                "discrete = pyro_arsm.discrete_latent_sites(model, *args); "
                "guide = AutoGuideList(model); "
                "guide.append(AutoNormal(poutine.block(model, hide=discrete))); "
                "guide.append(AutoCategorical(model, sites=discrete))."
            )
        raise NotImplementedError(
            f"AutoCategorical: site '{name}' has a discrete distribution "
            f"{type(fn).__name__} that is not supported (Categorical, "
            "OneHotCategorical and Bernoulli are); write its guide site by hand."
        )
    return kind, base


class AutoCategorical(AutoGuide):
    """Mean-field discrete guide: one learnable logits tensor per discrete latent site.

    Each discrete latent site of ``model`` is matched by a guide site of the same family
    (``Categorical``, ``OneHotCategorical`` or ``Bernoulli``, with the model's ``.to_event`` dims),
    parameterized by unconstrained logits so that :class:`~pyro_arsm.ARSM_ELBO` can
    differentiate through them. Guide sites are independent of each other given the logits.

    *Local* logits (the default) are one free parameter per plate element, initialized from the
    model's prior (``init="prior"``) or to zeros (``init="uniform"``). Subsampled plates keep
    full-size parameters and use the rows of the current subsample, as
    :class:`~pyro.infer.autoguide.AutoNormal` does.

    *Amortized* logits come from ``network(*args, **kwargs)``, which takes the model's arguments and
    returns a dict ``{site_name: logits}``; an ``nn.Module`` network is registered with
    :func:`pyro.module` so that its weights are trained. Logits must broadcast to the site's batch
    shape (plus the category dim for ``Categorical``); a dim that matches a subsampled plate's full
    size is subsampled like a data tensor (:func:`pyro.subsample`). Sites the network does not
    return get local logits.

    Masks in the model (``poutine.mask``, ``.mask()``) are not copied, since they usually depend on
    the data: the guide samples masked elements too, they add only their own ``log q`` to the loss
    and do not change the gradient of anything else.

    Only discrete latents are handled: block continuous ones out and combine with another autoguide
    in :class:`~pyro.infer.autoguide.AutoGuideList` (see :func:`discrete_latent_sites`). Sites that
    the model enumerates (``infer={"enumerate": ...}``) are an error: a guide must not sample them.

    :param callable model: a Pyro model.
    :param sites: names of the latent sites to guide (default: every latent site of the model,
        which must then all be discrete); other latent sites are left to other guides. Same as
        passing ``poutine.block(model, expose=sites)``.
    :param callable network: optional amortization network (see above).
    :param str init: ``"prior"`` or ``"uniform"`` initial local logits.
    :param callable create_plates: as for other autoguides (for data subsampling).
    """

    def __init__(self, model: Callable, *, sites: Optional[Sequence[str]] = None,
                 network: Optional[Callable] = None, init: str = "prior",
                 create_plates: Optional[Callable] = None) -> None:
        if init not in ("prior", "uniform"):
            raise ValueError(f"AutoCategorical: init must be 'prior' or 'uniform', got {init!r}")
        self.init = init
        self.site_names = None if sites is None else list(sites)
        if sites is not None:
            model = poutine.block(model, expose=self.site_names)
        super().__init__(model, create_plates=create_plates)
        self.network = network

    def _network_logits(self, *args, **kwargs):
        if self.network is None:
            return {}
        if isinstance(self.network, torch.nn.Module):
            pyro.module(f"{self._pyro_name}.network", self.network)
        out = self.network(*args, **kwargs)
        if not isinstance(out, dict):
            raise TypeError(
                "AutoCategorical: network(*args, **kwargs) must return a dict {site_name: logits}, "
                f"got {type(out).__name__}"
            )
        return out

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        self._sites = {}
        self.logits = PyroModule()
        with torch.no_grad():
            amortized = set(self._network_logits(*args, **kwargs))
        if self.site_names is not None:
            found = {name for name, _ in self.prototype_trace.iter_stochastic_nodes()}
            missing = [n for n in self.site_names if n not in found]
            if missing:
                raise ValueError(
                    f"AutoCategorical: sites {missing} are not latent sample sites of the model "
                    f"(latent sites: {sorted(found)})"
                )
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            fn = site["fn"]
            kind, base = _guided_kind(name, site)
            value = site["value"]
            if kind == "categorical":
                shape = value.shape + base.logits.shape[-1:]
                event_dim = fn.event_dim + 1
            else:
                shape = value.shape
                event_dim = fn.event_dim
            self._sites[name] = dict(
                kind=kind, event_dim=event_dim, reinterpreted=fn.event_dim - base.event_dim,
                element_shape=torch.Size(element_shape_of(kind, fn)),
                frames=[f for f in site["cond_indep_stack"] if f.vectorized],
            )
            if name in amortized:
                continue
            if self.init == "prior":
                init = base.logits.detach().expand(shape)
            else:
                init = torch.zeros(shape)
            init = init.clone()
            # Subsampled plates keep one parameter row per element of the full plate.
            for frame in site["cond_indep_stack"]:
                full_size = frame.full_size or frame.size
                if full_size != frame.size:
                    init = periodic_repeat(init, full_size, frame.dim - event_dim).contiguous()
            deep_setattr(self.logits, name, PyroParam(init, constraints.real, event_dim))

    def _site_dist(self, name, logits):
        """The guide distribution of a site: its family over the site's elements, with the
        model's ``.to_event`` dims."""
        info = self._sites[name]
        shape = info["element_shape"]
        if info["kind"] == "bernoulli":
            d = dist.Bernoulli(logits=logits.expand(shape))
        else:
            family = dist.Categorical if info["kind"] == "categorical" else dist.OneHotCategorical
            d = family(logits=logits.expand(shape + logits.shape[-1:]))
        return d.to_event(info["reinterpreted"]) if info["reinterpreted"] else d

    def _logits(self, name, network_logits):
        """The site's logits: the network's (subsampled like data) or the local parameter."""
        if name in network_logits:
            return pyro.subsample(network_logits[name], event_dim=self._sites[name]["event_dim"])
        return operator.attrgetter(name)(self.logits)

    def forward(self, *args, **kwargs):
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
                fn = self._site_dist(name, self._logits(name, network_logits))
                result[name] = pyro.sample(name, fn)
        return result

    @torch.no_grad()
    def median(self, *args, **kwargs):
        """The mode of each guide site: ``argmax`` of the logits (``logits > 0`` for Bernoulli).

        Local sites return one value per element of the *full* plate (as ``AutoNormal.median``
        does); amortized sites return the network's output shape.
        """
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        network_logits = self._network_logits(*args, **kwargs)
        result = {}
        for name, info in self._sites.items():
            if name in network_logits:
                logits = network_logits[name]
            else:
                logits = operator.attrgetter(name)(self.logits).detach()
            if info["kind"] == "categorical":
                result[name] = logits.argmax(-1)
            elif info["kind"] == "onehot":
                result[name] = torch.nn.functional.one_hot(
                    logits.argmax(-1), logits.size(-1)).to(logits.dtype)
            else:
                result[name] = (logits > 0).to(logits.dtype)
        return result
