"""Exact order statistics on the array's device: medians of arrays, and of values never stored whole.

* :func:`order_statistics` (and :func:`lower_median`, :func:`upper_median`, :func:`midpoint_median`)
  of an array: a selection where the library has one (``numpy.partition``, ``torch.kthvalue``:
  O(N), on the tensor's device), a full sort otherwise; no host round trip on accelerators.
* :func:`blocked_order_statistics` of all entries of a sequence of blocks that can be regenerated
  (the ``n^2`` squared distances of :mod:`particlesampling.tiled`, never stored whole).

Both share one bracketing step (Floyd & Rivest 1975, "Expected time bounds for selection"):
a fixed pseudo-random sample of the values brackets the wanted ranks with a margin of
:data:`BRACKET_MARGIN_SD` binomial standard deviations; one pass counts the entries below the
bracket and keeps those inside it (a few per cent), and a selection on those finishes. The counts
verify the answer, so it is exact whatever the sample; when the sample misses (probability below
1e-6) the caller falls back to a full selection.

**Radix selection over blocks.** For non-negative IEEE floats the integer view of the bits is
monotone in the value, so the ``k``-th smallest value is found digit by digit on its bit pattern,
most significant 16 bits first: pass over the blocks, histogram the top 16 bits (65,536 bins); the
cumulative counts give the bin holding rank ``k`` and the rank inside it; pass again over the values
in that bin only, and so on. For float32 two passes pin all 32 bits, i.e. the exact value; for
float64, as soon as the bin holds at most ``collect_limit`` values one more pass collects them and a
selection finishes. Every pass must see the same floats in the same blocks.
"""

from __future__ import annotations

import math

import numpy as np

from ._backend import is_numpy_array, is_torch_array, namespace, to_numpy

__all__ = ["order_statistics", "lower_median", "upper_median", "midpoint_median", "bracket_select",
           "blocked_order_statistics", "BRACKET_SAMPLE", "BRACKET_MARGIN_SD"]

#: size of the sample that brackets the wanted ranks
BRACKET_SAMPLE = 1 << 16
#: half-width of the bracket, in binomial standard deviations of the sample rank
BRACKET_MARGIN_SD = 5.0

_DIGIT = 16  # bits per radix-selection pass
_BINS = 1 << _DIGIT


def bracket_select(sample, blocks_fn, total: int, ks):
    """Exact order statistics ``ks`` (0-based) of ``total`` values, bracketed by a sorted ``sample``.

    Parameters
    ----------
    sample : 1-D NumPy array, sorted
        Values drawn uniformly (with replacement) from the ``total`` values.
    blocks_fn : callable () -> iterable of arrays
        Yields blocks (NumPy or torch) holding every value exactly once.
    total : int
    ks : list of int

    Returns
    -------
    list of Python floats, or ``None`` when the bracket misses a rank (the caller then selects
    without it).
    """
    m = sample.shape[0]
    slack = BRACKET_MARGIN_SD * math.sqrt(m * 0.25) + 2.0
    i_lo = int(math.floor(min(ks) / total * m - slack))
    i_hi = int(math.ceil(max(ks) / total * m + slack))
    if i_lo <= 0 or i_hi >= m - 1:
        return None
    lo, hi = float(sample[i_lo]), float(sample[i_hi])
    below, kept = 0, []
    for block in blocks_fn():
        v = block.reshape(-1)
        low = v < lo
        below += int(low.sum())
        kept.append(to_numpy(v[(v <= hi) & ~low]))
    cand = np.concatenate(kept) if kept else np.zeros(0)
    if not all(below <= k < below + cand.shape[0] for k in ks):
        return None
    rel = sorted({k - below for k in ks})
    part = np.partition(cand, rel)
    return [float(part[k - below]) for k in ks]


def _numpy_select(v, ks):
    """Order statistics ``ks`` of a 1-D NumPy array (values of ``v``'s dtype): bracketing for large
    arrays, ``numpy.partition`` otherwise and as the bracketing's fallback."""
    big_n = v.shape[0]
    if big_n >= 8 * BRACKET_SAMPLE:
        idx = np.random.default_rng(big_n).integers(0, big_n, size=BRACKET_SAMPLE)
        out = bracket_select(np.sort(v[idx]), lambda: (v,), big_n, ks)
        if out is not None:
            return [v.dtype.type(t) for t in out]
    part = np.partition(v, sorted(set(ks)))
    return [part[k] for k in ks]


def order_statistics(v, ks, *, xp=None, batch_dims: int = 0):
    """The ``k``-th smallest entries (0-based) of ``v`` (all entries) for each ``k`` in ``ks``, as 0-d arrays.

    Uses a selection where the library has one (``numpy.partition``, ``torch.kthvalue``: O(N) and
    on the tensor's device) and a full sort otherwise. No host round trip.

    With ``batch_dims = p > 0`` the first ``p`` axes of ``v`` index independent arrays (a stack of
    ``(n, n)`` distance matrices, say): each is selected over all its own entries, and each result
    has the shape ``v.shape[:p]``.
    """
    xp = xp or namespace(v)
    if isinstance(batch_dims, bool) or not isinstance(batch_dims, int) or not 0 <= batch_dims <= v.ndim:
        raise ValueError(f"expected batch_dims as an integer in [0, {v.ndim}], received {batch_dims!r}")
    lead = tuple(v.shape[:batch_dims])
    v = xp.reshape(v, lead + (-1,))
    n = v.shape[-1]
    if n == 0:
        raise ValueError("expected a non-empty array for an order statistic, received an empty one")
    ks = [int(k) for k in ks]
    if any(k < 0 or k >= n for k in ks):
        raise ValueError(f"expected order statistics in [0, {n}), received {ks}")
    if batch_dims:
        return _batched_order_statistics(xp, v, ks)
    if is_numpy_array(v):
        return [xp.asarray(t) for t in _numpy_select(v, ks)]
    if is_torch_array(v):
        if v.device.type == "cpu" and not v.requires_grad:
            # On the CPU the NumPy selection on a zero-copy view is 2-5x faster than torch.kthvalue
            # (measured, n^2 = 10^6) and serves every k at once; the results stay 0-d tensors.
            import torch

            return [torch.as_tensor(t) for t in _numpy_select(v.numpy(), ks)]
        return [v.kthvalue(k + 1).values for k in ks]
    s = xp.sort(v)
    return [s[k] for k in ks]


def _batched_order_statistics(xp, v, ks):
    """Order statistics ``ks`` along the last axis of ``v`` (``(..., N)``), one per leading index."""
    if is_numpy_array(v) or (is_torch_array(v) and v.device.type == "cpu" and not v.requires_grad):
        part = np.partition(v if is_numpy_array(v) else v.numpy(), sorted(set(ks)), axis=-1)
        if is_numpy_array(v):
            return [xp.asarray(part[..., k]) for k in ks]
        import torch

        return [torch.from_numpy(np.ascontiguousarray(part[..., k])) for k in ks]
    if is_torch_array(v):
        return [v.kthvalue(k + 1, dim=-1).values for k in ks]
    s = xp.sort(v, axis=-1)
    return [s[..., k] for k in ks]


def lower_median(v, *, xp=None, batch_dims: int = 0):
    """Lower median of all entries (``torch.median`` convention): element ``(N - 1) // 2`` of the sort.

    ``batch_dims``: as for :func:`order_statistics` (one median per leading index)."""
    xp = xp or namespace(v)
    n = math.prod(v.shape[batch_dims:])
    return order_statistics(v, [(n - 1) // 2], xp=xp, batch_dims=batch_dims)[0]


def upper_median(v, *, xp=None, batch_dims: int = 0):
    """Upper median of all entries: element ``N // 2`` of the sort (``batch_dims`` as above)."""
    xp = xp or namespace(v)
    n = math.prod(v.shape[batch_dims:])
    return order_statistics(v, [n // 2], xp=xp, batch_dims=batch_dims)[0]


def midpoint_median(v, *, xp=None, batch_dims: int = 0):
    """Midpoint median of all entries (``numpy.median`` convention; ``batch_dims`` as above)."""
    xp = xp or namespace(v)
    n = math.prod(v.shape[batch_dims:])
    if n % 2 == 1:
        return order_statistics(v, [n // 2], xp=xp, batch_dims=batch_dims)[0]
    lo, hi = order_statistics(v, [n // 2 - 1, n // 2], xp=xp, batch_dims=batch_dims)
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------------------------------
# selection over blocks that are regenerated on every pass
# --------------------------------------------------------------------------------------------------


class _Counter:
    """Bit views, histograms and selections in the block's own library (NumPy / torch), or NumPy."""

    def __init__(self, dtype_name: str):
        if dtype_name not in ("float32", "float64"):
            raise TypeError(f"blocked selection supports float32 and float64, received {dtype_name}")
        self.nbits = 32 if dtype_name == "float32" else 64

    def ints(self, block):
        """Flat integer view of a non-negative float block, sign bit cleared (so -0.0 == +0.0)."""
        if is_torch_array(block):
            import torch

            v = block.reshape(-1).view(torch.int32 if self.nbits == 32 else torch.int64)
            return v & (2 ** (self.nbits - 1) - 1)
        v = np.ascontiguousarray(to_numpy(block)).reshape(-1)
        return v.view(np.int32 if self.nbits == 32 else np.int64) & (2 ** (self.nbits - 1) - 1)

    @staticmethod
    def bincount(digits):
        if is_torch_array(digits):
            import torch

            return torch.bincount(digits.to(torch.int64), minlength=_BINS).cpu().numpy()
        return np.bincount(digits, minlength=_BINS)

    def to_float(self, value: int):
        """The float whose bit pattern is ``value``."""
        arr = np.array([value], dtype=np.int32 if self.nbits == 32 else np.int64)
        return float(arr.view(np.float32 if self.nbits == 32 else np.float64)[0])


def _radix_select(blocks_fn, ks, dtype_name: str, collect_limit: int = 1 << 20, combine=None):
    """Exact ``k``-th smallest values by radix selection (module docstring); Python floats.

    Ranks that share a bin share the passes (the two ranks of a midpoint median almost always do).
    ``combine``: see :func:`blocked_order_statistics`; with it no values are collected (every bit
    is fixed by histograms: 2 passes for float32, 4 for float64).
    """
    if combine is not None:
        collect_limit = 0  # a selected bin always holds >= 1 value: never collect
    cnt = _Counter(dtype_name)
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
                    kept[g].append(to_numpy(sel))
                    continue
                width = min(_DIGIT, nb - pb)
                hist[g] += cnt.bincount((sel >> (nb - pb - width)) & ((1 << width) - 1))
        if combine is not None and hist:
            keys = sorted(hist)
            summed = np.asarray(combine(np.stack([hist[g] for g in keys])))
            if summed.shape != (len(keys), _BINS):
                raise ValueError(f"combine returned shape {summed.shape}; expected {(len(keys), _BINS)}")
            hist = {g: summed[i] for i, g in enumerate(keys)}
        for k, st in active.items():
            p, pb, r, collect = st
            if collect:
                vals = np.concatenate(kept[(p, pb, True)])
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


def blocked_order_statistics(blocks_fn, ks, dtype_name: str, *, sample=None, total: int | None = None,
                             combine=None):
    """Exact order statistics ``ks`` (0-based) of all entries of non-negative float blocks.

    Parameters
    ----------
    blocks_fn : callable () -> iterable of arrays (NumPy or torch)
        Yields the same blocks (same floats) on every call.
    ks : list of int
    dtype_name : "float32" or "float64"
    sample : sorted 1-D NumPy array, optional
        A uniform sample of the values; with ``total`` it lets one bracketing pass
        (:func:`bracket_select`) replace the 2-3 radix passes. Ignored with ``combine``.
    combine : callable, optional
        For values spread over several holders (processes), each seeing only its own blocks:
        ``combine(counts) -> counts summed over the holders`` for an int64 NumPy array of shape
        ``(G, 65536)`` (one histogram per group of ranks sharing a prefix). It is called once per
        radix pass, in the same order on every holder, and every holder then makes the same
        decisions, so all of them return the exact order statistics of the union of their values.
        The ranks ``ks`` are ranks in that union. Radix passes only: 2 for float32, 4 for float64.

    Returns
    -------
    list of Python floats, one per ``k``.
    """
    if combine is not None:
        return _radix_select(blocks_fn, ks, dtype_name, combine=combine)
    if sample is not None:
        out = bracket_select(sample, blocks_fn, total, ks)
        if out is not None:
            return out
    return _radix_select(blocks_fn, ks, dtype_name)
