"""What ``ARSM_ELBO`` remembers about a model and guide between steps, and how it knows them again.

A program is told apart by what it runs, not by the Python object passed in: ``obj.model`` is a
new bound-method object on every attribute access, and an ``id`` is recycled once its object is
collected. The key of a callable is therefore its function (and, for a bound method, the object it
is bound to), held by weak reference where the object allows it, so that a collected program
never matches a new one and is not kept alive by the cache. The cache keeps the most recently used
programs only.
"""

import weakref
from collections import OrderedDict

__all__ = ["ProgramCache", "ProgramState"]


class ProgramState:
    """What is learnt about one model and guide pair.

    :ivar bool provenance: track provenance on every step (score-function sites, or
        ``cache_dependencies=False``) instead of reading cached dependencies.
    :ivar dict deps: structure signature -> cached dependencies of every ARSM site.
    :ivar dict pseudo_mode: ``(signature, site)`` -> ``"batched"`` or ``"sequential"``.
    :ivar bool needs_grad: the program needs autograd in its pseudo passes (it calls
        ``torch.autograd.grad``), so they run with gradient recording on.
    :ivar compiled: :class:`~pyro_arsm.JitARSM_ELBO`'s compiled loss function (``None`` until
        the first call), ``finite_names`` the sites whose finiteness flags it returns and
        ``num_pseudo_evaluations`` the pseudo-action evaluations of each of its calls.
    """

    def __init__(self, provenance):
        self.provenance = provenance
        self.deps = {}
        self.pseudo_mode = {}
        self.needs_grad = False
        self.compiled = None
        self.finite_names = []
        self.num_pseudo_evaluations = 0
        # the guide's sites marked for parallel enumeration are summed out (found on the first
        # real pass)
        self.guide_enumerated = False


class _Strong:
    """Identity key for an object that cannot be weakly referenced or hashed."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, _Strong) and other.obj is self.obj


def _ref(obj):
    try:
        ref = weakref.ref(obj)
        hash(ref)
        return ref
    except TypeError:
        return _Strong(obj)


def program_key(fn):
    """A hashable key that is equal for two callables running the same program."""
    func, obj = getattr(fn, "__func__", None), getattr(fn, "__self__", None)
    if func is not None and obj is not None:  # bound method
        return ("method", _ref(func), _ref(obj))
    return ("callable", _ref(fn))


class ProgramCache:
    """A bounded map from (model, guide) to their :class:`ProgramState`."""

    def __init__(self, maxsize=64):
        self.maxsize = maxsize
        self._states = OrderedDict()

    def __len__(self):
        return len(self._states)

    def get(self, model, guide, provenance):
        """The state of ``(model, guide)``, created with ``provenance`` if new."""
        key = (program_key(model), program_key(guide))
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = ProgramState(provenance)
            while len(self._states) > self.maxsize:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(key)
        return state
