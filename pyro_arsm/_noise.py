"""Common random numbers between the real pass and the pseudo passes of the guide.

Every guide site that draws random numbers draws them from a stream of its own (one seed per site
of a particle, :class:`SiteStreams`); all other randomness (subsample indices, dropout) keeps to
torch's global stream, which a site's draw leaves untouched. A pseudo pass that re-samples a
downstream site therefore gives it the random numbers it had in the real pass, whatever the order
and kind of the sites before it and whether they drew anything in this pass (a replayed site
draws nothing; a discrete site re-uses its noise).

On the batched path a re-sampled site has an extra pseudo-action dim. :class:`BroadcastNoise`
draws its parameter-free noise (``normal_``, ``uniform_``, ``rand`` ...) once at the real pass's
shape and broadcasts it over that dim, so that every pseudo action gets the real pass's noise too.
Noise whose law depends on the parameters (``_standard_gamma``, ``poisson``, ``binomial``) cannot be
shared that way: it is drawn for the whole batch from the site's stream (each pseudo action still
gets a draw from the site's own distribution, independent of the other sites; only the exact
common random numbers are lost).
"""

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["BroadcastNoise", "SiteStreams"]

# torch's CPU generator (mt19937) takes a 32-bit seed; the sites of one particle get consecutive
# seeds from a random start, so no two of them can share a stream.
_SEED_RANGE = 2 ** 32


class SiteStreams:
    """The random streams of one particle's guide sites.

    Site ``name`` draws from the stream seeded with ``start + i``, ``i`` the order in which the
    real pass met it (a site first met in a pseudo pass, in a model of dynamic structure, gets
    the next number); ``start`` is drawn from torch's global stream. The real pass and its pseudo
    passes share one ``SiteStreams``, so a site gets the same stream in all of them."""

    def __init__(self):
        self.start = int(torch.randint(_SEED_RANGE, (), dtype=torch.int64).item())
        self._index = {}

    def seed(self, name):
        index = self._index.setdefault(name, len(self._index))
        return (self.start + index) % _SEED_RANGE

    @contextlib.contextmanager
    def stream(self, name):
        """Runs the body on site ``name``'s stream (CPU, and the current CUDA device when CUDA
        is in use), then puts the global stream back where it was."""
        cpu = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None
        seed = self.seed(name)
        torch.default_generator.manual_seed(seed)
        if cuda is not None:
            torch.cuda.manual_seed(seed)
        try:
            yield
        finally:
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state(cuda)


_aten = torch.ops.aten
# In-place fills whose law does not depend on the tensor's values: the numbers drawn depend only
# on the number of elements, so a draw at the real pass's shape reproduces the real pass's noise.
_INPLACE_FILLS = frozenset({
    _aten.normal_, _aten.uniform_, _aten.exponential_, _aten.cauchy_, _aten.log_normal_,
    _aten.geometric_, _aten.random_,
})
_FACTORIES = frozenset({_aten.rand.default, _aten.randn.default})


class BroadcastNoise(TorchDispatchMode):
    """While one site is re-sampled in a batched pseudo pass: parameter-free random fills of the
    site's pseudo-batched shape are drawn at the real pass's shape and broadcast over the
    ``size`` pseudo actions at position ``-dim_from_right``.

    :param int size: number of pseudo actions.
    :param int dim_from_right: position of the pseudo-action dim, counted from the right of the
        site's value (pseudo plate nesting plus the site's event dims).
    :param real_shape: the site's value shape in the real pass.
    """

    def __init__(self, size, dim_from_right, real_shape):
        super().__init__()
        self.size, self.dim_from_right = size, dim_from_right
        self.real_shape = [d for d in real_shape if d != 1]

    def _reduced(self, shape):
        """``shape`` with the pseudo dim set to 1, if it is the site's pseudo-batched shape."""
        shape = list(shape)
        if len(shape) < self.dim_from_right or shape[-self.dim_from_right] != self.size:
            return None
        shape[-self.dim_from_right] = 1
        return shape if [d for d in shape if d != 1] == self.real_shape else None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in _INPLACE_FILLS:
            target = args[0]
            reduced = self._reduced(target.shape)
            if reduced is not None:
                small = torch.empty(reduced, dtype=target.dtype, device=target.device)
                func(small, *args[1:], **kwargs)
                return target.copy_(small.expand(target.shape))
        elif func in _FACTORIES:
            reduced = self._reduced(args[0])
            if reduced is not None:
                return func(reduced, *args[1:], **kwargs).expand(list(args[0])).contiguous()
        return func(*args, **kwargs)
