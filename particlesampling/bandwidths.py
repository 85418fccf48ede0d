"""Bandwidth rules for radial kernels ``k(x, y) = f(|x - y|^2 / h)``.

Every rule is a callable ``rule(particles, sq, scores=None) -> h`` returning ``h > 0`` as a 0-d array
(or a ``(d,)`` array for per-dimension rules) on the particles' device, where ``sq = sqdist(particles)``
is the ``(n, n)`` matrix of squared distances the caller already has (it is never recomputed).

The median heuristic has several incompatible conventions in use (DESIGN §2). All of them are
offered by name; with ``med`` the stated median, in our convention ``k = exp(-D2 / h)``:

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

The default is ``"liu_wang"`` (the original SVGD paper's rule). Guards: with ``n = 1`` there are no
pairs and ``h = 1`` (the direction then equals the score whatever ``h`` is); ``log(n)`` conventions
at ``n = 1`` use the same guard; when most particles coincide the median is 0 and ``h`` is floored at
``eps * mean off-diagonal D2``; when all coincide, ``h = 1`` (then ``K = 1`` and ``R = 0`` for any h).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ._backend import device_of, finfo_eps, lower_median, midpoint_median, namespace, order_statistics

__all__ = [
    "BandwidthRule",
    "Median",
    "Fixed",
    "Scaled",
    "MaxKSD",
    "get_bandwidth",
    "MEDIAN_CONVENTIONS",
    "DEFAULT_BANDWIDTH",
]

DEFAULT_BANDWIDTH = "liu_wang"

_ALIASES = {
    "liu_wang": "liu_wang",
    "median": "liu_wang",
    "svgd": "liu_wang",
    "pymc": "liu_wang",
    "an2020": "an2020",
    "repulsive_attention": "an2020",
    "blackjax": "blackjax",
    "numpyro": "numpyro",
    "pyro": "pyro",
}
MEDIAN_CONVENTIONS = ("liu_wang", "an2020", "blackjax", "numpyro", "pyro")


class BandwidthRule:
    """Base class: ``rule(particles, sq, scores=None) -> h``."""

    #: whether the rule needs the scores (adaptive rules do)
    needs_scores: bool = False

    def __call__(self, particles, sq, scores=None):  # pragma: no cover - interface
        raise NotImplementedError


def _floor(xp, h, sq):
    """Floor ``h`` at ``eps * mean off-diagonal D2``; ``h = 1`` when every particle coincides."""
    n = sq.shape[0]
    mean_off = xp.sum(sq) / float(n * (n - 1))
    floor = finfo_eps(xp, sq) * mean_off
    h = xp.maximum(h, floor)
    return xp.where(h > 0, h, xp.ones_like(h))


@dataclass(frozen=True)
class Median(BandwidthRule):
    """Median heuristic in one of :data:`MEDIAN_CONVENTIONS` (see the module table)."""

    convention: str = DEFAULT_BANDWIDTH

    def __post_init__(self):
        key = str(self.convention).lower().replace("-", "_")
        if key not in _ALIASES:
            raise ValueError(
                f"unknown bandwidth convention {self.convention!r}; expected one of "
                f"{sorted(_ALIASES)}, a positive number, or a BandwidthRule"
            )
        object.__setattr__(self, "convention", _ALIASES[key])

    def __call__(self, particles, sq, scores=None):
        xp = namespace(particles)
        n = particles.shape[0]
        if n == 1:
            shape = (particles.shape[1],) if self.convention == "pyro" else ()
            return xp.ones(shape, dtype=particles.dtype, device=device_of(particles))
        c = self.convention
        if c == "liu_wang":
            h = midpoint_median(sq, xp=xp) / math.log(n + 1)
        elif c == "an2020":
            h = lower_median(sq, xp=xp) / math.log(n + 1)
        elif c == "blackjax":
            # median of the N = n(n-1)/2 pair distances, read off the full sorted list (n zeros from
            # the diagonal, then every pair twice): elements n + N - 1 and n + N (no host sync).
            big_n = n * (n - 1) // 2
            lo, hi = order_statistics(xp.sqrt(sq), [n + big_n - 1, n + big_n], xp=xp)
            h = (0.5 * (lo + hi)) ** 2 / math.log(n)
        elif c == "numpyro":
            h = midpoint_median(xp.sqrt(sq), xp=xp) ** 2 / math.log(n) + finfo_eps(xp, sq)
        else:  # pyro
            return self._pyro(xp, particles)
        return _floor(xp, h, sq)

    @staticmethod
    def _pyro(xp, x):
        """Per-dimension lower median of ``(x_ik - x_jk)^2`` over ``i < j``, divided by log(n + 1).

        Built one dimension at a time (``n x n`` memory), since Pyro's rule is per dimension.
        """
        n, d = x.shape
        # the lower median of the N = n(n-1)/2 pairs is element n + 2 ((N - 1) // 2) of the full
        # sorted n x n list (n diagonal zeros first, then every pair twice): no index gather.
        k_pairs = n + 2 * ((n * (n - 1) // 2 - 1) // 2)
        meds = []
        for k in range(d):
            col = x[:, k]
            diff2 = (col[:, None] - col[None, :]) ** 2
            meds.append(order_statistics(diff2, [k_pairs], xp=xp)[0])
        h = xp.stack(meds) / math.log(n + 1)
        # floor per dimension at eps * (mean squared pair difference); coincident -> 1
        var = xp.mean((x - xp.mean(x, axis=0)) ** 2, axis=0) * (2.0 * n / (n - 1))
        h = xp.maximum(h, finfo_eps(xp, x) * var)
        return xp.where(h > 0, h, xp.ones_like(h))


@dataclass(frozen=True)
class Fixed(BandwidthRule):
    """A fixed bandwidth ``h`` (float > 0, or a sequence of ``d`` positive floats)."""

    h: Any = 1.0

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
        if h.ndim == 1 and h.shape[0] != particles.shape[1]:
            raise ValueError(
                f"expected {particles.shape[1]} per-dimension bandwidths, received {h.shape[0]}"
            )
        return h


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

    def __call__(self, particles, sq, scores=None):
        h = self.rule(particles, sq, scores)
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
    caller; defaults to RBF).
    """

    base: Any = DEFAULT_BANDWIDTH
    factors: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0)
    kernel: Any = None
    needs_scores = True

    def __post_init__(self):
        fs = tuple(float(f) for f in self.factors)
        if not fs or any(not (math.isfinite(f) and f > 0) for f in fs):
            raise ValueError(f"expected a non-empty sequence of positive factors, received {self.factors!r}")
        object.__setattr__(self, "factors", fs)
        object.__setattr__(self, "base", get_bandwidth(self.base))

    def __call__(self, particles, sq, scores=None):
        if scores is None:
            raise ValueError("MaxKSD bandwidth needs the scores; received scores=None")
        from .diagnostics.ksd import stein_gram_stats  # lazy: diagnostics imports bandwidths
        from .kernels import get_kernel

        xp = namespace(particles, scores)
        h0 = self.base(particles, sq, scores)
        if h0.ndim != 0:
            raise ValueError("MaxKSD needs a scalar base bandwidth; received a per-dimension one")
        if particles.shape[0] < 2:
            return h0
        kernel = get_kernel(self.kernel)
        stats = stein_gram_stats(particles, scores, sq)
        values = [stats.ksd_squared(kernel, f * h0, "u") for f in self.factors]
        best = xp.argmax(xp.stack(values))
        factors = xp.asarray(self.factors, dtype=particles.dtype, device=device_of(particles))
        return xp.reshape(xp.take(factors, xp.reshape(best, (1,))) * h0, ())


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
        if key in ("maxksd", "max_ksd"):
            return MaxKSD()
        return Median(key)
    if isinstance(spec, bool):
        raise TypeError("expected a bandwidth name, a positive number or a BandwidthRule, received a bool")
    if isinstance(spec, (int, float, list, tuple)):
        return Fixed(spec)
    if hasattr(spec, "shape") and hasattr(spec, "dtype"):  # an array: 0-d h or (d,) per dimension
        return _ArrayRule(spec)
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
class _ArrayRule(BandwidthRule):
    """A bandwidth given as an array (0-d, or (d,) per dimension), for example a previous step's h."""

    h: Any = None

    def __call__(self, particles, sq, scores=None):
        xp = namespace(particles)
        h = xp.asarray(self.h, dtype=particles.dtype, device=device_of(particles))
        if h.ndim > 1 or (h.ndim == 1 and h.shape[0] != particles.shape[1]):
            raise ValueError(f"expected a 0-d bandwidth or one of shape ({particles.shape[1]},), received shape {tuple(h.shape)}")
        if not bool(xp.all(h > 0)):
            raise ValueError("expected a positive bandwidth array, received non-positive values")
        return h
