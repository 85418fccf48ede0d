"""Bandwidth rules for radial kernels ``k(x, y) = f(|x - y|^2 / h)``.

Every rule is a callable ``rule(particles, sq, scores=None) -> h`` returning ``h > 0`` as a 0-d array
(or a ``(d,)`` array for per-dimension rules) on the particles' device, where ``sq = sqdist(particles)``
is the ``(n, n)`` matrix of squared distances the caller already has (it is never recomputed).

The median heuristic has several incompatible conventions in use, which differ by 1.2-3x for the
few particles of attention heads. All of them are offered by name; with ``med`` the stated median,
in our convention ``k = exp(-D2 / h)``:

=================  ===============================================  =====================  ===========================
name               median taken over                                 h                      used by
=================  ===============================================  =====================  ===========================
``"liu_wang"``     all n^2 entries of D2 (zero diagonal included),   med / log(n + 1)       original SVGD code, PyMC
                   midpoint median
``"an2020"``       all n^2 entries of D2, lower median               med / log(n + 1)       repulsive-attention code
``"blackjax"``     distances |x_i - x_j| over pairs i < j,           med^2 / log(n)         BlackJAX ``svgd``
                   midpoint median, then squared
``"numpyro"``      all n^2 distances (zero diagonal included),      med^2 / log(n) + eps   NumPyro ``RBFKernel``
                   midpoint median, then squared (eps: dtype's)
``"pyro"``         per dimension k, (x_ik - x_jk)^2 over i < j,      med_k / log(n + 1)     Pyro ``RBFSteinKernel``
                   lower median                                      (a (d,) array)
=================  ===============================================  =====================  ===========================

The default is ``"liu_wang"`` (the original SVGD paper's rule); ``"pymc"`` is accepted as its
other name, since PyMC's SVGD uses the same rule. Each convention is written once, as the ranks of
the order statistics it needs in the sorted list of all ``n^2`` entries of ``D2``
(:func:`median_ranks`) and the map from those values to ``h`` (:func:`median_from_order_statistics`);
the untiled rule and the tiled one (:mod:`particlesampling.tiled`) both use them. Guards: with ``n = 1`` there are no
pairs and ``h = 1`` (the direction then equals the score whatever ``h`` is); ``log(n)`` conventions
at ``n = 1`` use the same guard; when most particles coincide the median is 0 and ``h`` is floored at
``eps * mean off-diagonal D2``; when all coincide, ``h = 1`` (then ``K = 1`` and ``R = 0`` for any h).

**Stacks of systems.** The rules of this module (``batchable = True``) also take a stack of ``B``
independent systems, particles ``(B, n, d)`` and ``sq`` ``(B, n, n)``, and return one bandwidth
per system, ``(B,)`` (``(B, d)`` for ``"pyro"``): each system's own median, by a selection along
the last axis, the same values as ``B`` separate calls. :func:`rule_bandwidth` applies any rule to
a stack, system by system for rules that are not batchable (plain callables, rules defined
elsewhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ._backend import batch_shape, centred, device_of, finfo_eps, is_traced, namespace, to_numpy
from .kernels import get_kernel
from .selection import order_statistics, symmetric_order_statistics
from .stein_kernel import stein_gram_stats

__all__ = [
    "BandwidthRule",
    "Median",
    "Fixed",
    "Scaled",
    "MaxKSD",
    "get_bandwidth",
    "MEDIAN_CONVENTIONS",
    "DEFAULT_BANDWIDTH",
    "median_ranks",
    "median_from_order_statistics",
    "mean_offdiagonal_sqdist",
    "bandwidth_value",
    "rule_bandwidth",
    "ArrayBandwidth",
    "READS",
    "rule_reads",
    "check_reads",
]

DEFAULT_BANDWIDTH = "liu_wang"

MEDIAN_CONVENTIONS = ("liu_wang", "an2020", "blackjax", "numpyro", "pyro")
#: names accepted for each convention: its own, and ``"pymc"`` (PyMC's SVGD uses Liu & Wang's rule)
_NAMES = {**{c: c for c in MEDIAN_CONVENTIONS}, "pymc": "liu_wang"}


#: what a rule reads of the squared distances ``D2`` (:attr:`BandwidthRule.reads`), from least to most
READS = ("nothing", "order_statistics", "upper_triangle", "matrix")


class BandwidthRule:
    """Base class: ``rule(particles, sq, scores=None) -> h``.

    Besides ``needs_scores`` and ``batchable``, a rule declares in :attr:`reads` what it reads of
    ``sq``, which decides where it can be evaluated:

    * ``"nothing"``: it ignores ``sq`` (the blocked paths pass ``None``) and works in ``O(n d)``
      memory (a fixed bandwidth). Evaluated everywhere.
    * ``"order_statistics"``: it is a function of order statistics of the ``n^2`` entries of ``D2``
      and implements :meth:`order_statistic_ranks` and :meth:`from_order_statistics` (the scalar
      median rules). Evaluated everywhere: the tiled and sharded paths select those entries exactly
      in blocks, without the matrix.
    * ``"upper_triangle"``: it reads ``sq`` only through its upper block triangle
      (:func:`particlesampling.selection.symmetric_order_statistics` does), so on the CPU the Stein
      step passes it that triangle packed (:class:`particlesampling._backend.UpperBlockRows`, which
      has no indexing), elsewhere the matrix. Untiled only (Pyro's per-dimension median, which
      builds its own ``n x n`` differences).
    * ``"matrix"`` (the default): it needs the ``(n, n)`` matrix as an array. Untiled only.

    The tiled and sharded paths refuse a rule that reads more than order statistics with a
    ``ValueError`` naming what it reads (:func:`check_reads`), before any work.
    """

    #: whether the rule needs the scores (adaptive rules do)
    needs_scores: bool = False
    #: whether the rule takes a stack ``(B, n, d)`` and returns ``(B,)`` / ``(B, d)`` (module
    #: docstring); rules that do not are applied system by system by :func:`rule_bandwidth`
    batchable: bool = False
    #: what the rule reads of ``D2``: one of :data:`READS` (class docstring)
    reads: str = "matrix"

    def __call__(self, particles, sq, scores=None):  # pragma: no cover - interface
        raise NotImplementedError

    def order_statistic_ranks(self, n: int) -> list:
        """0-based ranks, among all ``n^2`` entries of ``D2``, of the order statistics the rule
        needs (rules that read ``"order_statistics"``; may be empty, e.g. for ``n = 1``)."""
        raise NotImplementedError(f"{type(self).__name__} declares reads={self.reads!r} but does not implement "
                                  "order_statistic_ranks(n)")

    def from_order_statistics(self, xp, values, particles):
        """``h`` on ``particles`` (``(n, d)``) from the entries ``values`` (0-d arrays of the particles'
        dtype and device) of :meth:`order_statistic_ranks` ``(n)``."""
        raise NotImplementedError(f"{type(self).__name__} declares reads={self.reads!r} but does not implement "
                                  "from_order_statistics(xp, values, particles)")


def rule_reads(rule) -> str:
    """``rule.reads``, checked to be one of :data:`READS` (a TypeError otherwise)."""
    reads = getattr(rule, "reads", "matrix")
    if reads not in READS:
        raise TypeError(f"expected {type(rule).__name__}.reads to be one of {READS}, received {reads!r}")
    return reads


def check_reads(rule, allowed, where: str) -> str:
    """``rule_reads(rule)``, or a ValueError naming ``where`` unless it is one of ``allowed``."""
    reads = rule_reads(rule)
    if reads not in allowed:
        raise ValueError(
            f"{where} supports the scalar median conventions ('liu_wang', 'an2020', 'blackjax', 'numpyro'), "
            f"fixed bandwidths (numbers or arrays), Scaled versions of those, and any BandwidthRule whose reads is "
            f"{' or '.join(repr(a) for a in allowed)}; received {rule!r}, which reads {reads!r}"
        )
    return reads


def median_ranks(convention: str, n: int) -> list:
    """0-based ranks, in the sorted list of all ``n^2`` entries of ``D2`` (``n`` diagonal zeros
    included), of the order statistics a scalar median convention needs (``n >= 2``)."""
    big_n = n * n
    if convention in ("liu_wang", "numpyro"):  # midpoint median of all n^2 entries
        return [big_n // 2] if big_n % 2 == 1 else [big_n // 2 - 1, big_n // 2]
    if convention == "an2020":  # lower median of all n^2 entries
        return [(big_n - 1) // 2]
    if convention == "blackjax":
        # midpoint median of the P = n(n-1)/2 pairs: the n diagonal zeros sort first, then every
        # pair twice, so it is the midpoint of elements n + P - 1 and n + P
        pairs = n * (n - 1) // 2
        return [n + pairs - 1, n + pairs]
    raise ValueError(f"expected a scalar median convention {MEDIAN_CONVENTIONS[:4]}, received {convention!r}")


def mean_offdiagonal_sqdist(xp, particles):
    """Mean off-diagonal entry of ``D2 = sqdist(particles)`` without the matrix, in ``O(n d)``:
    ``sum_ij |x_i - x_j|^2 = 2 n sum_i |x_i - mean|^2``, over ``n (n - 1)`` pairs (``n >= 2``).
    ``particles`` ``(n, d)`` gives a 0-d array, a stack ``(B, n, d)`` gives ``(B,)``."""
    n = particles.shape[-2]
    xc = centred(xp, particles)
    return 2.0 * float(n) * xp.sum(xp.sum(xc * xc, axis=-1), axis=-1) / float(n * (n - 1))


def median_from_order_statistics(xp, convention: str, values, n: int, mean_offdiagonal, like):
    """The bandwidth ``h`` of a scalar median convention (module table) from its order statistics.

    Parameters
    ----------
    values : list of 0-d arrays
        The entries of ``D2`` at :func:`median_ranks` ``(convention, n)``.
    n : int >= 2
    mean_offdiagonal : 0-d array
        Mean off-diagonal ``D2`` (:func:`mean_offdiagonal_sqdist`); ``h`` is floored at ``eps * mean_offdiagonal`` (coincident
        particles), and ``h = 1`` when every particle coincides.
    like : array
        Gives the dtype for ``eps``.
    """
    mid = values[0] if len(values) == 1 else 0.5 * (values[0] + values[1])
    if convention in ("liu_wang", "an2020"):
        h = mid / math.log(n + 1)
    elif convention == "blackjax":
        h = (0.5 * (xp.sqrt(values[0]) + xp.sqrt(values[1]))) ** 2 / math.log(n)
    elif convention == "numpyro":
        med = xp.sqrt(values[0]) if len(values) == 1 else 0.5 * (xp.sqrt(values[0]) + xp.sqrt(values[1]))
        h = med**2 / math.log(n) + finfo_eps(xp, like)
    else:
        raise ValueError(f"expected a scalar median convention {MEDIAN_CONVENTIONS[:4]}, received {convention!r}")
    h = xp.maximum(h, finfo_eps(xp, like) * mean_offdiagonal)
    return xp.where(h > 0, h, xp.ones_like(h))


@dataclass(frozen=True)
class Median(BandwidthRule):
    """Median heuristic in one of :data:`MEDIAN_CONVENTIONS` (see the module table).

    Called as ``rule(particles, sq)`` with ``sq = sqdist(particles)`` (exactly symmetric, zero
    diagonal). On the CPU the selection reads only its upper block triangle
    (:func:`particlesampling.selection.symmetric_order_statistics`), so the Stein step passes just
    that half, packed (:class:`particlesampling._backend.UpperBlockRows`); on other devices the
    whole matrix.
    """

    convention: str = DEFAULT_BANDWIDTH
    batchable = True

    @property
    def reads(self):  # type: ignore[override]
        # Pyro's per-dimension median reads no D2 but builds n x n differences per dimension itself
        return "upper_triangle" if self.convention == "pyro" else "order_statistics"

    def order_statistic_ranks(self, n: int) -> list:
        return [] if n == 1 else median_ranks(self.convention, n)

    def from_order_statistics(self, xp, values, particles):
        n = particles.shape[-2]
        if n == 1:
            return xp.ones(batch_shape(particles), dtype=particles.dtype, device=device_of(particles))
        return median_from_order_statistics(xp, self.convention, values, n,
                                            mean_offdiagonal_sqdist(xp, particles), particles)

    def __post_init__(self):
        key = str(self.convention).lower().replace("-", "_")
        if key not in _NAMES:
            raise ValueError(
                f"unknown bandwidth convention {self.convention!r}; expected one of "
                f"{sorted(_NAMES)} or 'maxksd', a positive number, or a BandwidthRule"
            )
        object.__setattr__(self, "convention", _NAMES[key])

    def __call__(self, particles, sq, scores=None):
        xp = namespace(particles)
        lead = batch_shape(particles)
        n = particles.shape[-2]
        if n == 1:
            shape = lead + ((particles.shape[-1],) if self.convention == "pyro" else ())
            return xp.ones(shape, dtype=particles.dtype, device=device_of(particles))
        if self.convention == "pyro":
            return self._pyro(xp, particles)
        ranks = self.order_statistic_ranks(n)
        values = (symmetric_order_statistics(sq, ranks, xp=xp) if not lead
                  else order_statistics(sq, ranks, xp=xp, batch_dims=len(lead)))
        return self.from_order_statistics(xp, values, particles)

    @staticmethod
    def _pyro(xp, x):
        """Per-dimension lower median of ``(x_ik - x_jk)^2`` over ``i < j``, divided by log(n + 1).

        Built one dimension at a time (``n x n`` memory), since Pyro's rule is per dimension.
        """
        n, d = x.shape[-2:]
        lead = batch_shape(x)
        # the lower median of the N = n(n-1)/2 pairs is element n + 2 ((N - 1) // 2) of the full
        # sorted n x n list (n diagonal zeros first, then every pair twice): no index gather.
        k_pairs = n + 2 * ((n * (n - 1) // 2 - 1) // 2)
        meds = []
        for k in range(d):
            col = x[..., :, k]
            diff2 = (col[..., :, None] - col[..., None, :]) ** 2
            meds.append(order_statistics(diff2, [k_pairs], xp=xp, batch_dims=len(lead))[0])
        h = xp.stack(meds, axis=-1) / math.log(n + 1)
        # floor per dimension at eps * (mean squared pair difference); coincident -> 1
        var = xp.mean((x - xp.mean(x, axis=-2, keepdims=True)) ** 2, axis=-2) * (2.0 * n / (n - 1))
        h = xp.maximum(h, finfo_eps(xp, x) * var)
        return xp.where(h > 0, h, xp.ones_like(h))


@dataclass(frozen=True)
class Fixed(BandwidthRule):
    """A fixed bandwidth ``h`` (float > 0, or a sequence of ``d`` positive floats)."""

    h: Any = 1.0
    batchable = True
    reads = "nothing"

    def __post_init__(self):
        vals = list(self.h) if isinstance(self.h, (list, tuple)) else [self.h]
        for v in vals:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"expected a bandwidth h > 0 (finite), received {self.h!r}")
        if isinstance(self.h, list):
            object.__setattr__(self, "h", tuple(self.h))

    def __call__(self, particles, sq, scores=None):
        xp = namespace(particles)
        h = xp.asarray(self.h, dtype=particles.dtype, device=device_of(particles))
        if h.ndim == 1 and h.shape[0] != particles.shape[-1]:
            raise ValueError(
                f"expected {particles.shape[-1]} per-dimension bandwidths, received {h.shape[0]}"
            )
        return _per_system(xp, h, particles)


@dataclass(frozen=True)
class Scaled(BandwidthRule):
    """``factor * rule(...)``: scale any rule by a positive constant."""

    rule: Any = DEFAULT_BANDWIDTH
    factor: float = 1.0

    def __post_init__(self):
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)) or not (
            math.isfinite(self.factor) and self.factor > 0
        ):
            raise ValueError(f"expected a scale factor > 0, received {self.factor!r}")
        object.__setattr__(self, "rule", get_bandwidth(self.rule))

    @property
    def needs_scores(self):  # type: ignore[override]
        return self.rule.needs_scores

    @property
    def batchable(self):  # type: ignore[override]
        return self.rule.batchable

    @property
    def reads(self):  # type: ignore[override]
        return rule_reads(self.rule)

    def order_statistic_ranks(self, n: int) -> list:
        return self.rule.order_statistic_ranks(n)

    def from_order_statistics(self, xp, values, particles):
        return self._scale(self.rule.from_order_statistics(xp, values, particles))

    def __call__(self, particles, sq, scores=None):
        return self._scale(self.rule(particles, sq, scores))

    def _scale(self, h):
        xp = namespace(h)
        return xp.asarray(self.factor * h, dtype=h.dtype, device=device_of(h))


@dataclass(frozen=True)
class MaxKSD(BandwidthRule):
    """Adaptive rule: the ``h`` on a grid around a base rule that maximises the squared KSD.

    For a step ``x <- x + eps * phi_h`` along the SVGD direction with kernel ``k_h``, the KL
    divergence of the particles' law ``q`` falls at the rate ``eps * KSD_h(q, p)^2`` to first order
    (Liu & Wang 2016, Theorem 3.3). This rule picks, among ``factor * h_base`` for ``factor`` in
    ``factors``, the bandwidth with the steepest descent, estimating ``KSD_h(q, p)^2`` by the
    unbiased U-statistic. (The V-statistic is not used: its diagonal terms ``(|s|^2 - 2 d f'(0)/h)/n``
    grow without bound as ``h -> 0``, so it would always pick the smallest h, where ``K = I`` and
    the repulsion vanishes.) It costs one extra ``n x n`` elementwise pass per grid point (the Gram
    products are shared). With ``n = 1`` it returns the base bandwidth.

    Requires ``scores`` and a radial kernel (the kernel used by the direction is passed by the
    caller; defaults to RBF). On a stack of systems each system picks its own factor.
    """

    base: Any = DEFAULT_BANDWIDTH
    factors: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0)
    kernel: Any = None
    needs_scores = True

    @property
    def batchable(self):  # type: ignore[override]
        return self.base.batchable

    def __post_init__(self):
        fs = tuple(float(f) for f in self.factors)
        if not fs or any(not (math.isfinite(f) and f > 0) for f in fs):
            raise ValueError(f"expected a non-empty sequence of positive factors, received {self.factors!r}")
        object.__setattr__(self, "factors", fs)
        object.__setattr__(self, "base", get_bandwidth(self.base))

    def __call__(self, particles, sq, scores=None):
        if scores is None:
            raise ValueError("MaxKSD bandwidth needs the scores; received scores=None")
        xp = namespace(particles, scores)
        h0 = self.base(particles, sq, scores)
        lead = batch_shape(particles)
        if h0.ndim != len(lead):
            raise ValueError("MaxKSD needs a scalar base bandwidth; received a per-dimension one")
        if particles.shape[-2] < 2:
            return h0
        kernel = get_kernel(self.kernel)
        stats = stein_gram_stats(particles, scores, sq)
        values = [stats.ksd_squared(kernel, f * h0, "u") for f in self.factors]
        best = xp.argmax(xp.stack(values, axis=-1), axis=-1)
        factors = xp.asarray(self.factors, dtype=particles.dtype, device=device_of(particles))
        return xp.reshape(xp.take(factors, xp.reshape(best, (-1,))) * xp.reshape(h0, (-1,)), lead)


def get_bandwidth(spec: Any = None) -> BandwidthRule:
    """Resolve a bandwidth rule.

    Parameters
    ----------
    spec : None, str, positive number, sequence of positive numbers, callable or BandwidthRule
        ``None`` gives the default ``Median("liu_wang")``; a name gives that median convention (or
        ``"maxksd"`` for :class:`MaxKSD`); a number ``h > 0`` gives :class:`Fixed`; a plain callable
        ``f(particles, sq, scores)`` is used as is.
    """
    if spec is None:
        return Median(DEFAULT_BANDWIDTH)
    if isinstance(spec, BandwidthRule):
        return spec
    if isinstance(spec, str):
        key = spec.lower().replace("-", "_")
        if key == "maxksd":
            return MaxKSD()
        return Median(key)
    if isinstance(spec, bool):
        raise TypeError("expected a bandwidth name, a positive number or a BandwidthRule, received a bool")
    if isinstance(spec, (int, float, list, tuple)):
        return Fixed(spec)
    if hasattr(spec, "shape") and hasattr(spec, "dtype"):  # an array: 0-d h or (d,) per dimension
        return ArrayBandwidth(spec)
    if callable(spec):
        return _CallableRule(spec)
    raise TypeError(
        f"expected a bandwidth name, a positive number or a BandwidthRule, received {type(spec).__name__}"
    )


@dataclass(frozen=True)
class _CallableRule(BandwidthRule):
    fn: Callable = None  # type: ignore[assignment]

    def __call__(self, particles, sq, scores=None):
        return self.fn(particles, sq, scores)


@dataclass(frozen=True)
class ArrayBandwidth(BandwidthRule):
    """A bandwidth given as an array (0-d, or (d,) per dimension), for example a previous step's h.

    On a stack of systems the same ``h`` serves every system. The positivity check reads the values
    (one device synchronisation); inside ``jax.jit`` pass a concrete array (closed over): a traced
    one raises a TypeError."""

    h: Any = None
    batchable = True
    reads = "nothing"

    def __call__(self, particles, sq, scores=None):
        xp = namespace(particles)
        if is_traced(self.h):
            raise TypeError("expected a bandwidth array with values (a number, or an array closed over by the "
                            "jitted function); received one traced by jax.jit, whose positivity cannot be checked")
        h = xp.asarray(self.h, dtype=particles.dtype, device=device_of(particles))
        d = particles.shape[-1]
        if h.ndim > 1 or (h.ndim == 1 and h.shape[0] != d):
            raise ValueError(f"expected a 0-d bandwidth or one of shape ({d},), "
                             f"received shape {tuple(h.shape)}")
        if is_traced(particles) or is_traced(h):  # inside jax.jit: the given concrete values, on the host
            positive = bool((to_numpy(self.h) > 0).all())
        else:  # NaN fails too; one device synchronisation
            positive = bool(xp.all(h > 0))
        if not positive:
            raise ValueError("expected a positive bandwidth array, received entries <= 0 or NaN")
        return _per_system(xp, h, particles)


def _per_system(xp, h, particles):
    """A fixed ``h`` (0-d or ``(d,)``) repeated for every system of a stack (unchanged for one system)."""
    lead = batch_shape(particles)
    return h if not lead else xp.broadcast_to(h, lead + tuple(h.shape))


def rule_bandwidth(rule: BandwidthRule, particles, sq, scores=None):
    """``rule(particles, sq, scores)`` for one system ``(n, d)`` or a stack ``(B, n, d)``.

    A stack goes to the rule in one call when it is batchable, else system by system (``B`` calls,
    results stacked), so every rule (a plain callable too) serves a stack. Returns ``h`` of shape
    ``()`` / ``(d,)``, or ``(B,)`` / ``(B, d)`` for a stack.
    """
    lead = batch_shape(particles)
    if not lead or rule.batchable:
        return rule(particles, sq, scores)
    if len(lead) != 1:
        raise ValueError(f"expected particles (n, d) or (B, n, d), received shape {tuple(particles.shape)}")
    xp = namespace(particles)
    hs = [rule(particles[b, ...], sq[b, ...], None if scores is None else scores[b, ...]) for b in range(lead[0])]
    return xp.stack([xp.asarray(h, dtype=particles.dtype, device=device_of(particles)) for h in hs], axis=0)


def bandwidth_value(spec, particles, sq, scores=None):
    """The bandwidth ``h`` (0-d or ``(d,)``) that ``spec`` gives on these particles.

    ``spec``: a number, a sequence of ``d`` numbers, a name or rule (through :func:`get_bandwidth`),
    or an array, e.g. the ``bandwidth`` a sampler reported in its step info, used as is after the
    shape and positivity checks of :func:`get_bandwidth`'s array rule. ``sq`` is ``sqdist(particles)``.
    """
    xp = namespace(particles)
    d = particles.shape[1]
    h = xp.asarray(get_bandwidth(spec)(particles, sq, scores), dtype=particles.dtype, device=device_of(particles))
    if not (h.ndim == 0 or (h.ndim == 1 and h.shape[0] == d)):
        raise ValueError(f"expected a bandwidth of shape () or ({d},), received shape {tuple(h.shape)}")
    return h
