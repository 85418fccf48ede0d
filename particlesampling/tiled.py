"""Tiled (blocked) evaluation of the Stein direction, the median bandwidth and the KSD: O(n * tile) memory.

The untiled path (:func:`particlesampling.stein_direction`) holds the ``n x n`` matrices ``D2`` and
``K``: 3.2 GB each at n = 20,000 in float64. Here the rows are processed in blocks of ``tile`` rows:
each block's ``D2[I, :]`` comes from the Gram trick on the (centred) particles, is turned into
``K[I, :]`` in place, and is consumed at once by the product ``K[I, :] [X | S | 1]``. Peak memory is
``O(n * tile + n * d)``; the time is the same ``O(n^2 d)`` with one extra ``D2`` product per
selection pass (below). ``tile`` is chosen from a memory budget in bytes (:func:`tile_rows`).

**Exact median of n^2 numbers in O(n * tile) memory.** A median bandwidth needs an order statistic
of all ``n^2`` (or ``n(n-1)/2``) squared distances, which are never stored. For non-negative IEEE
floats the integer view of the bits is monotone in the value, so the ``k``-th smallest value is
found digit by digit on its bit pattern, most significant 16 bits first (a radix selection):

1. pass over the blocks, histogram the top 16 bits (65,536 bins); the cumulative counts give the bin
   holding rank ``k`` and the rank of ``k`` inside it;
2. pass again, histogram the next 16 bits of the values in that bin only; and so on. For float32 two
   passes pin all 32 bits, i.e. the exact value; for float64, as soon as the bin holds at most
   ``collect_limit`` values (after two passes in practice) one more pass collects them and a
   selection finishes.

Every pass recomputes the blocks in the same way (same shapes, same order), so the values counted
are the same floats in every pass, and the result is the exact order statistic of the blocked
``D2``. Those entries equal the untiled ``sqdist`` entries up to float rounding (the untiled matrix
is also symmetrised), so the bandwidth agrees with the untiled one to rounding. For NumPy and
PyTorch (CPU or CUDA) the counting runs in the array's own library and on its device; for other
namespaces each block is copied to NumPy for the counting only.

Bandwidths supported: every scalar median convention of :class:`~particlesampling.bandwidths.Median`
(``"liu_wang"``, ``"an2020"``, ``"blackjax"``, ``"numpyro"``), fixed bandwidths (scalar or per
dimension) and :class:`~particlesampling.bandwidths.Scaled` versions of those. Not supported (a
``ValueError`` says so): Pyro's per-dimension median (d separate selections over n^2 values),
:class:`~particlesampling.bandwidths.MaxKSD` and plain callables, which need the full ``D2``.
Kernels: radial kernels (``RBF``, ``IMQ``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._backend import check_same_shape, device_of, exp_neg_scaled, finfo_eps, is_torch_array, namespace, to_numpy
from .bandwidths import Fixed, Median, Scaled, get_bandwidth
from .kernels import RBF, get_kernel
from .stein_terms import SteinInfo, check_stein_inputs

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "tile_rows",
    "tiled_bandwidth",
    "tiled_order_statistics",
    "tiled_stein_direction",
    "tiled_stein_direction_with_info",
    "tiled_ksd_squared",
]

#: default budget for the O(n * tile) temporaries, in bytes
DEFAULT_MEMORY_BUDGET = 256 * 2**20

_DIGIT = 16  # bits per radix-selection pass
_BINS = 1 << _DIGIT


def needs_tiling(particles, memory_budget) -> bool:
    """Whether the untiled path's ``n x n`` temporaries (about three: D2, K, one more) exceed
    ``memory_budget`` bytes (``None``: no budget, never)."""
    if memory_budget is None:
        return False
    n = particles.shape[0]
    return 3 * n * n * _itemsize(particles) > memory_budget


def tile_rows(n: int, d: int, itemsize: int, memory_budget: int | float = DEFAULT_MEMORY_BUDGET) -> int:
    """Rows per block so that the block temporaries fit ``memory_budget`` bytes.

    A block of ``t`` rows holds about ``5 n t`` numbers of ``itemsize`` bytes (``D2``/``K``, the
    kernel derivative or the Stein-kernel terms, the integer bit view and its shifted copy used by
    the selection) plus ``t (2d + 1)`` for the product. The ``O(n d)`` arrays (particles, scores,
    result) are outside the budget. Returns an integer in ``[1, n]``.
    """
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float)) or not (
        memory_budget > 0 and math.isfinite(memory_budget)
    ):
        raise ValueError(f"expected memory_budget as a positive number of bytes, received {memory_budget!r}")
    per_row = itemsize * (5 * n + 2 * d + 1) + 8 * n
    return int(max(1, min(n, memory_budget // per_row)))


# --------------------------------------------------------------------------------------------------
# blocks of D2
# --------------------------------------------------------------------------------------------------


def _blocks(xp, xc, xx, tile):
    """Yield ``(a, b, D2[a:b, :])`` of the centred particles ``xc`` (``xx = |xc_i|^2``).

    Same Gram trick as :func:`particlesampling._backend.sqdist`: clamped at 0, exact zero diagonal.
    """
    n = xc.shape[0]
    xt = xp.matrix_transpose(xc)
    dev = device_of(xc)
    for a in range(0, n, tile):
        b = min(n, a + tile)
        if array_api_compat.is_torch_array(xc) and not xc.requires_grad:
            # one block temporary: the product is accumulated into |x_i|^2 + |x_j|^2 (as sqdist)
            d2 = xx[a:b, None] + xx[None, :]
            d2.addmm_(xc[a:b, :], xt, alpha=-2.0)
            d2.clamp_(min=0.0)
            d2[:, a:b].fill_diagonal_(0.0)
        elif array_api_compat.is_numpy_array(xc):
            d2 = xc[a:b, :] @ xt
            d2 *= -2.0
            d2 += xx[a:b, None] + xx[None, :]
            np.maximum(d2, 0.0, out=d2)
            np.fill_diagonal(d2[:, a:b], 0.0)
        else:
            d2 = xx[a:b, None] + xx[None, :] - 2.0 * (xc[a:b, :] @ xt)
            d2 = xp.clip(d2, min=0.0)
            cols = xp.arange(n, device=dev)
            on_diag = (cols[None, :] - a) == xp.arange(b - a, device=dev)[:, None]
            d2 = xp.where(on_diag, xp.zeros_like(d2), d2)
        yield a, b, d2


def _centre(xp, x):
    xc = x - xp.mean(x, axis=0)
    return xc, xp.sum(xc * xc, axis=1)


# --------------------------------------------------------------------------------------------------
# exact radix selection over blocks
# --------------------------------------------------------------------------------------------------


class _Counter:
    """Bit views, histograms and selections in the block's own library (NumPy / torch), or NumPy."""

    def __init__(self, xp, dtype_name: str):
        self.xp = xp
        self.nbits = 32 if dtype_name == "float32" else 64
        if dtype_name not in ("float32", "float64"):
            raise TypeError(f"tiled selection supports float32 and float64, received {dtype_name}")

    def ints(self, block):
        """Flat integer view of a non-negative float block, sign bit cleared (so -0.0 == +0.0)."""
        if array_api_compat.is_torch_array(block):
            import torch

            v = block.reshape(-1).view(torch.int32 if self.nbits == 32 else torch.int64)
            return v & (2 ** (self.nbits - 1) - 1)
        v = np.ascontiguousarray(np.asarray(block if array_api_compat.is_numpy_array(block)
                                            else np.from_dlpack(block))).reshape(-1)
        return v.view(np.int32 if self.nbits == 32 else np.int64) & (2 ** (self.nbits - 1) - 1)

    @staticmethod
    def bincount(digits):
        if array_api_compat.is_torch_array(digits):
            import torch

            return torch.bincount(digits.to(torch.int64), minlength=_BINS).cpu().numpy()
        return np.bincount(digits, minlength=_BINS)

    def to_float(self, value: int):
        """The float whose bit pattern is ``value``."""
        arr = np.array([value], dtype=np.int32 if self.nbits == 32 else np.int64)
        return float(arr.view(np.float32 if self.nbits == 32 else np.float64)[0])


def _select(xp, blocks_fn, ks, dtype_name: str, collect_limit: int = 1 << 20):
    """Exact ``k``-th smallest (0-based) values, for each ``k`` in ``ks``, of all entries yielded by
    ``blocks_fn()`` (an iterable of non-negative float blocks, identical on every call).

    Radix selection on the bit patterns, 16 bits per pass (module docstring). Ranks that share a
    bin share the passes (the two ranks of a midpoint median almost always do).
    """
    cnt = _Counter(xp, dtype_name)
    nb = cnt.nbits
    # per rank k: [prefix, prefix_bits, rank inside the prefix's bin, collect?]
    state = {k: [0, 0, k, False] for k in sorted(set(ks))}
    result: dict[int, float] = {}
    while len(result) < len(state):
        active = {k: st for k, st in state.items() if k not in result}
        groups = sorted({(st[0], st[1], st[3]) for st in active.values()})
        hist = {g: np.zeros(_BINS, dtype=np.int64) for g in groups if not g[2]}
        kept: dict = {g: [] for g in groups if g[2]}
        for block in blocks_fn():
            v = cnt.ints(block)
            for g in groups:
                p, pb, collect = g
                sel = v if pb == 0 else v[(v >> (nb - pb)) == p]
                if collect:
                    kept[g].append(sel)
                    continue
                width = min(_DIGIT, nb - pb)
                hist[g] += cnt.bincount((sel >> (nb - pb - width)) & ((1 << width) - 1))
        for k, st in active.items():
            p, pb, r, collect = st
            if collect:
                vals = _concat(kept[(p, pb, True)])
                result[k] = cnt.to_float(int(np.partition(vals, r)[r]))
                continue
            counts = hist[(p, pb, False)]
            width = min(_DIGIT, nb - pb)
            cum = np.cumsum(counts)
            j = int(np.searchsorted(cum, r, side="right"))
            below = int(cum[j - 1]) if j > 0 else 0
            st[:] = [(p << width) | j, pb + width, r - below, int(counts[j]) <= collect_limit]
            if st[1] >= nb:  # every bit fixed: that is the value
                result[k] = cnt.to_float(st[0])
    return [result[k] for k in ks]


def _bracket_select(xp, xc, blocks_fn, ks, dtype_name: str, sample: int = 1 << 18):
    """One-pass exact selection when a sample brackets the ranks (Floyd–Rivest); else ``None``.

    ``sample`` pseudo-random pairs (fixed seed) give the squared distances whose quantiles bracket
    the wanted ranks with a margin of 5 binomial standard deviations; one pass over the blocks counts
    the entries below the bracket and keeps those inside (about 1 % of them), and a selection on
    those finishes. The answer is verified by the counts, so it is exact whatever the sample.
    """
    n = xc.shape[0]
    big_n = n * n
    if big_n < 4 * sample:
        return None
    rng = np.random.default_rng(n)
    dev = device_of(xc)
    i = xp.asarray(rng.integers(0, n, size=sample), device=dev)
    j = xp.asarray(rng.integers(0, n, size=sample), device=dev)
    diff = xp.take(xc, i, axis=0) - xp.take(xc, j, axis=0)
    vals = np.sort(_to_numpy(xp.sum(diff * diff, axis=1)))
    slack = 5.0 * math.sqrt(sample * 0.25) + 2.0
    i_lo = int(math.floor(min(ks) / big_n * sample - slack))
    i_hi = int(math.ceil(max(ks) / big_n * sample + slack))
    if i_lo <= 0 or i_hi >= sample - 1:
        return None
    lo, hi = float(vals[i_lo]), float(vals[i_hi])
    below, kept = 0, []
    for block in blocks_fn():
        v = _to_numpy(block).reshape(-1) if not array_api_compat.is_torch_array(block) else block.reshape(-1)
        below += int((v < lo).sum())
        kept.append(v[(v >= lo) & (v <= hi)])
    cand = np.sort(_concat(kept)) if kept else np.zeros(0)
    if not all(below <= k < below + cand.shape[0] for k in ks):
        return None
    return [float(cand[k - below]) for k in ks]


def _to_numpy(a):
    if array_api_compat.is_torch_array(a):
        return a.detach().cpu().numpy()
    if array_api_compat.is_numpy_array(a):
        return a
    return np.from_dlpack(a)


def _concat(parts):
    parts = [q.cpu().numpy() if hasattr(q, "cpu") else np.asarray(q) for q in parts]
    return np.concatenate(parts)


def tiled_order_statistics(particles, ks, *, tile: int | None = None,
                           memory_budget: int | float = DEFAULT_MEMORY_BUDGET):
    """Exact order statistics (0-based ranks ``ks``) of the ``n^2`` entries of ``sqdist(particles)``
    (diagonal zeros included), in ``O(n * tile)`` memory. Returns Python floats."""
    xp = namespace(particles)
    n, d = particles.shape
    if tile is None:
        tile = tile_rows(n, d, _itemsize(particles), memory_budget)
    xc, xx = _centre(xp, particles)
    return _select(xp, lambda: (blk for _, _, blk in _blocks(xp, xc, xx, tile)), list(ks),
                   _dtype_name(particles))


def _dtype_name(x) -> str:
    return str(x.dtype).split(".")[-1]


def _itemsize(x) -> int:
    return 4 if _dtype_name(x) == "float32" else 8


# --------------------------------------------------------------------------------------------------
# bandwidth
# --------------------------------------------------------------------------------------------------


def tiled_bandwidth(particles, bandwidth=None, *, tile: int | None = None,
                    memory_budget: int | float = DEFAULT_MEMORY_BUDGET):
    """The bandwidth ``get_bandwidth(bandwidth)(particles, sqdist(particles))``, without the n x n matrix.

    Same conventions, guards and floor as :class:`~particlesampling.bandwidths.Median` (see the
    module docstring for what is supported). Returns a 0-d array (or ``(d,)`` for a fixed
    per-dimension ``h``) of the particles' namespace, dtype and device.
    """
    xp = namespace(particles)
    n, d = particles.shape
    if tile is None:
        tile = tile_rows(n, d, _itemsize(particles), memory_budget)
    rule = get_bandwidth(bandwidth)
    return _rule_value(xp, rule, particles, tile)


def _rule_value(xp, rule, x, tile):
    dev = device_of(x)
    if isinstance(rule, Fixed):
        return rule(x, None)
    if isinstance(rule, Scaled):
        return rule.factor * _rule_value(xp, rule.rule, x, tile)
    if not isinstance(rule, Median) or rule.convention == "pyro":
        raise ValueError(
            f"tiled evaluation supports the scalar median conventions ('liu_wang', 'an2020', 'blackjax', "
            f"'numpyro'), fixed bandwidths and Scaled versions of those; received {rule!r}"
        )
    n = x.shape[0]
    if n == 1:
        return xp.ones((), dtype=x.dtype, device=dev)
    big_n, pairs = n * n, n * (n - 1) // 2
    c = rule.convention
    if c in ("liu_wang", "numpyro"):
        ks = [big_n // 2] if big_n % 2 == 1 else [big_n // 2 - 1, big_n // 2]
    elif c == "an2020":
        ks = [(big_n - 1) // 2]
    else:  # blackjax: pair median = elements n + P - 1 and n + P of the full sorted list
        ks = [n + pairs - 1, n + pairs]
    xc, xx = _centre(xp, x)
    blocks = lambda: (blk for _, _, blk in _blocks(xp, xc, xx, tile))  # noqa: E731
    vals = _bracket_select(xp, xc, blocks, ks, _dtype_name(x))
    if vals is None:  # the sample missed (rare) or n is small: radix selection, 2-3 passes
        vals = _select(xp, blocks, ks, _dtype_name(x))
    v = [xp.asarray(t, dtype=x.dtype, device=dev) for t in vals]
    if c == "liu_wang":
        h = (v[0] if len(v) == 1 else 0.5 * (v[0] + v[1])) / math.log(n + 1)
    elif c == "an2020":
        h = v[0] / math.log(n + 1)
    elif c == "blackjax":
        h = (0.5 * (xp.sqrt(v[0]) + xp.sqrt(v[1]))) ** 2 / math.log(n)
    else:  # numpyro
        med = xp.sqrt(v[0]) if len(v) == 1 else 0.5 * (xp.sqrt(v[0]) + xp.sqrt(v[1]))
        h = med**2 / math.log(n) + finfo_eps(xp, x)
    # floor at eps * mean off-diagonal D2 (bandwidths._floor), with sum(D2) = 2 n sum|xc|^2
    mean_off = 2.0 * float(n) * xp.sum(xx) / float(n * (n - 1))
    h = xp.maximum(h, finfo_eps(xp, x) * mean_off)
    return xp.where(h > 0, h, xp.ones_like(h))


# --------------------------------------------------------------------------------------------------
# Stein direction
# --------------------------------------------------------------------------------------------------


def tiled_stein_direction_with_info(particles, scores, kernel=None, bandwidth=None, repulsion: float = 1.0,
                                    *, tile: int | None = None,
                                    memory_budget: int | float = DEFAULT_MEMORY_BUDGET):
    """:func:`~particlesampling.stein_direction_with_info` in ``O(n * tile)`` memory.

    Same arguments and results (to float rounding) as the untiled function, plus ``tile`` (rows per
    block) or ``memory_budget`` (bytes for the block temporaries; used when ``tile`` is None).
    Radial kernels only (``RBF``, ``IMQ``); bandwidths as in the module docstring.
    """
    xp = check_stein_inputs(particles, scores, repulsion)
    n, d = particles.shape
    kern = get_kernel(kernel)
    if not getattr(kern, "is_radial", False):
        raise ValueError(f"tiled evaluation supports radial kernels (RBF, IMQ), received {type(kern).__name__}")
    if tile is None:
        tile = tile_rows(n, d, _itemsize(particles), memory_budget)
    elif isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"expected tile as a positive integer, received {tile!r}")
    dev = device_of(particles)
    h = _rule_value(xp, get_bandwidth(bandwidth), particles, tile)
    h = xp.asarray(h, dtype=particles.dtype, device=dev)
    xc, _ = _centre(xp, particles)
    # per-dimension h: distances of x / sqrt(h) are U directly; scalar h: U = D2 / h
    xs = xc if h.ndim == 0 else xc / xp.sqrt(h)
    xx = xp.sum(xs * xs, axis=1)
    ones = xp.ones((n, 1), dtype=particles.dtype, device=dev)
    rbf = type(kern) is RBF
    z = xp.concat([xc, scores, ones], axis=1) if rbf else None
    driving_parts, rep_parts = [], []
    ksum = xp.zeros((), dtype=particles.dtype, device=dev)
    for a, b, d2 in _blocks(xp, xs, xx, tile):
        if rbf:
            k = exp_neg_scaled(xp, d2, h) if h.ndim == 0 else xp.exp(-d2)
            prod = k @ z  # [K Xc | K S | rowsum K]
            rowsum = prod[:, 2 * d]
            driving_parts.append(prod[:, d:2 * d])
            rep_parts.append((rowsum[:, None] * xc[a:b, :] - prod[:, :d]) * (2.0 / h))
        else:
            k, k1 = kern._value_and_slope(d2 / h if h.ndim == 0 else d2)
            rowsum = xp.sum(k, axis=1)
            driving_parts.append(k @ scores)
            rep_parts.append((k1 @ xc - xp.sum(k1, axis=1)[:, None] * xc[a:b, :]) * (2.0 / h))
        ksum = ksum + xp.sum(rowsum)
    driving = xp.concat(driving_parts, axis=0)
    rep = xp.concat(rep_parts, axis=0)
    phi = (driving + repulsion * rep) / float(n)
    k0 = kern.value(xp.zeros((), dtype=particles.dtype, device=dev))
    if n > 1:
        mean_k = (ksum - float(n) * k0) / float(n * (n - 1))
    else:
        mean_k = xp.ones((), dtype=particles.dtype, device=dev)
    info = SteinInfo(
        bandwidth=h,
        mean_kernel=mean_k,
        driving_norm=xp.sqrt(xp.mean(xp.sum(driving * driving, axis=1))) / float(n),
        repulsion_norm=abs(repulsion) * xp.sqrt(xp.mean(xp.sum(rep * rep, axis=1))) / float(n),
    )
    return phi, info


def tiled_stein_direction(particles, scores, kernel=None, bandwidth=None, repulsion: float = 1.0, *,
                          tile: int | None = None, memory_budget: int | float = DEFAULT_MEMORY_BUDGET):
    """The SVGD direction ``(K S + repulsion R) / n`` in ``O(n * tile)`` memory; see
    :func:`tiled_stein_direction_with_info`."""
    return tiled_stein_direction_with_info(particles, scores, kernel, bandwidth, repulsion, tile=tile,
                                           memory_budget=memory_budget)[0]


# --------------------------------------------------------------------------------------------------
# KSD
# --------------------------------------------------------------------------------------------------


def tiled_ksd_squared(particles, scores, kernel="imq", bandwidth=1.0, statistic: str = "v", *,
                      tile: int | None = None, memory_budget: int | float = DEFAULT_MEMORY_BUDGET):
    """:func:`particlesampling.diagnostics.ksd_squared` (V- or U-statistic) in ``O(n * tile)`` memory.

    Same Gram-form Stein kernel (see :mod:`particlesampling.diagnostics.ksd`), summed block by block:
    per block three products (``D2``, ``S S^T``, and ``S X^T`` with its transpose block ``X S^T``).
    Scalar bandwidths only: a number, a 0-d array, or a rule supported by :func:`tiled_bandwidth`.
    Returns a 0-d array of the particles' namespace.
    """
    xp = namespace(particles, scores)
    check_same_shape(particles, scores, "particles", "scores")
    if statistic not in ("v", "u"):
        raise ValueError(f"expected statistic 'v' (V-statistic) or 'u' (U-statistic), received {statistic!r}")
    n, d = particles.shape
    if statistic == "u" and n < 2:
        raise ValueError("the U-statistic needs n >= 2 particles, received n = 1")
    kern = get_kernel(kernel)
    if not getattr(kern, "is_radial", False):
        raise TypeError(f"expected a radial kernel for the KSD, received {type(kern).__name__}")
    if tile is None:
        tile = tile_rows(n, d, _itemsize(particles), memory_budget)
    dev = device_of(particles)
    if hasattr(bandwidth, "shape") and hasattr(bandwidth, "dtype"):
        h = xp.asarray(bandwidth, dtype=particles.dtype, device=dev)
    else:
        h = xp.asarray(_rule_value(xp, get_bandwidth(bandwidth), particles, tile), dtype=particles.dtype,
                       device=dev)
    if h.ndim != 0:
        raise ValueError("tiled_ksd_squared supports a scalar bandwidth only")
    xc, xx = _centre(xp, particles)
    a_diag = xp.sum(scores * xc, axis=1)
    st = xp.matrix_transpose(scores)
    xt = xp.matrix_transpose(xc)
    total = xp.zeros((), dtype=particles.dtype, device=dev)
    for a, b, d2 in _blocks(xp, xc, xx, tile):
        u = d2 / h
        f, f1, f2 = kern.profile(u)
        ss = scores[a:b, :] @ st
        cross = scores[a:b, :] @ xt + xc[a:b, :] @ st - a_diag[a:b, None] - a_diag[None, :]
        hmat = f * ss + (2.0 / h) * (f1 * (cross - float(d)) - 2.0 * (u * f2))
        total = total + xp.sum(hmat)
    if statistic == "v":
        return xp.asarray(total / float(n * n))  # xp.asarray: a 0-d array, not a NumPy scalar
    # diagonal u_p(x_i, x_i) = f(0) |s_i|^2 - (2/h) f'(0) d  (U = 0, C_ii = 0)
    f0, f10, _ = kern.profile(xp.zeros((), dtype=particles.dtype, device=dev))
    diag = f0 * xp.sum(scores * scores) - (2.0 / h) * f10 * float(d * n)
    return xp.asarray((total - diag) / float(n * (n - 1)))
