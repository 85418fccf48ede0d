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

import functools
import math
import operator

import numpy as np

from ._backend import (SQDIST_BLOCK_ROWS, UpperBlockRows, host_view_capable, intra_op_threads_of, is_jax_array,
                       is_numpy_array, is_torch_array, namespace, pool_map, to_numpy)

__all__ = ["order_statistics", "select_ranks", "symmetric_order_statistics", "lower_median", "upper_median",
           "midpoint_median", "bracket_select", "gathered_order_statistics", "blocked_order_statistics",
           "bracket_sample_ranks", "expected_bracket_values", "bracket_sample_size", "BRACKET_SAMPLE", "BRACKET_MARGIN_SD",
           "rank_in_histogram", "jax_radix_select", "JAX_RADIX_MIN"]

#: largest size of the sample that brackets the wanted ranks (:func:`bracket_sample_size`)
BRACKET_SAMPLE = 1 << 16
#: half-width of the bracket, in binomial standard deviations of the sample rank
BRACKET_MARGIN_SD = 5.0

_DIGIT = 16  # bits per radix-selection pass
_BINS = 1 << _DIGIT


def select_ranks(values, ranks) -> dict:
    """``{k: k-th smallest of values}`` (0-based) for each ``k`` of ``ranks``, for a 1-D NumPy array.

    One single-rank ``numpy.partition`` per distinct rank, each on the part right of the previous
    rank, rather than one ``numpy.partition`` with several ranks at once, which was the slower of
    the two where it was chosen (``python benchmarks/bench_choices.py`` compares them). A last rank
    next to the previous one (the upper rank of a midpoint median) is the minimum of the part right
    of it: no second partition.
    """
    out, rest, offset = {}, values, 0
    wanted = sorted(set(int(r) for r in ranks))
    for i, k in enumerate(wanted):
        if k == offset > 0 and i == len(wanted) - 1:
            out[k] = rest.min()
            break
        part = np.partition(rest, k - offset)
        out[k] = part[k - offset]
        rest, offset = part[k - offset + 1:], k + 1
    return out


def bracket_sample_size(total: int) -> int:
    """Size ``m`` of the bracketing sample for ``total`` values: about ``(2.5 total)^(2/3)``, the
    size that balances the selection on the sample (``O(m)``) against the one on the values kept
    inside the bracket (about ``5 total / sqrt(m)`` of them), as a power of two in
    ``[4096, BRACKET_SAMPLE]``."""
    target = (2.5 * max(1, total)) ** (2.0 / 3.0)
    return int(min(BRACKET_SAMPLE, max(4096, 1 << int(round(math.log2(target))))))


def bracket_sample_ranks(m: int, total: int, ks) -> tuple:
    """Ranks ``(i_lo, i_hi)`` in a sample of ``m`` of ``total`` values whose values bracket the
    ranks ``ks`` of all values, with a margin of :data:`BRACKET_MARGIN_SD` binomial standard
    deviations (at most ``sqrt(m / 4)``) plus 2 on each side."""
    slack = BRACKET_MARGIN_SD * math.sqrt(m * 0.25) + 2.0
    return int(math.floor(min(ks) / total * m - slack)), int(math.ceil(max(ks) / total * m + slack))


def expected_bracket_values(m: int, total: int, ks) -> float:
    """Expected number of the ``total`` values inside the bracket of :func:`bracket_sample_ranks`
    (``total (i_hi - i_lo) / m``): the values the bracketing pass keeps."""
    i_lo, i_hi = bracket_sample_ranks(m, total, ks)
    return total * (i_hi - i_lo) / m


#: fewest entries of a block for which the bracketing pass splits it over the pool's threads: below
#: about a million entries the pass is shorter on one thread (the packed D2 of n = 1000, 625,216
#: entries in 256-row blocks: 0.71 ms on one thread against 1.21 ms split over two, on a 2-core machine;
#: ``benchmarks/bench_floor.py`` profiles the pass)
PARALLEL_MIN_ENTRIES = 1 << 20
#: most entries the bracketing pass counts in one piece (larger blocks are cut into row ranges)
PASS_PIECE_ENTRIES = 1 << 20


def _bracket_part(v, lo, hi, weight: int = 1, split: int | None = None):
    """``(entries < lo, arrays of the entries in [lo, hi])`` of one block (any shape), the
    entries counted ``weight`` times (the arrays listed as often); with ``split`` (a 2-D block) the
    columns before ``split`` count once and the others twice (a row block of the upper block
    triangle of a symmetric matrix: its square on the diagonal, then what stands for itself and its
    mirror). Three masks and ``numpy.extract`` (faster than boolean indexing) on a NumPy view of the
    whole contiguous block where there is one (NumPy, torch on the CPU outside autograd); torch's
    own masks otherwise (other devices), only the kept values copied to the host."""
    contiguous = host_view_capable(v) and (v.flags.c_contiguous if is_numpy_array(v) else v.is_contiguous())
    if split is not None and not contiguous:  # count the two parts for themselves
        below_sq, kept_sq = _bracket_part(v[:, :split], lo, hi, 1)
        below_off, kept_off = _bracket_part(v[:, split:], lo, hi, 2)
        return below_sq + below_off, kept_sq + kept_off
    if host_view_capable(v):
        a = v if is_numpy_array(v) else v.numpy()
        lo, hi = a.dtype.type(lo), a.dtype.type(hi)  # exact: the bounds are values of the same kind
        low = a < lo
        keep = a <= hi
        keep ^= low  # lo <= v <= hi (the values below lo are all <= hi)
        if split is None:
            return weight * int(np.count_nonzero(low)), [np.extract(keep, a)] * weight
        # every entry twice, less once for the square's
        below = 2 * int(np.count_nonzero(low)) - int(np.count_nonzero(low[:, :split]))
        at = np.flatnonzero(keep)
        inside = a.reshape(-1)[at]
        return below, [inside, inside[at % a.shape[1] >= split]]
    import torch

    low = v < lo
    keep = v <= hi
    keep ^= low
    return weight * int(torch.count_nonzero(low)), [to_numpy(v[keep])] * weight


def _row_parts(v, parts: int):
    """``v`` cut along its first axis into at most ``parts`` views of about equal size."""
    rows = v.shape[0]
    bounds = [rows * i // parts for i in range(parts + 1)]
    return [v[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _as_weighted(blocks):
    """The blocks of a pass as ``(array, weight)`` pairs: a bare array has weight 1, and a row block
    ``(array, "upper", split)`` of an upper block triangle gives its columns before ``split``
    (weight 1) and after (weight 2)."""
    for block in blocks:
        if not isinstance(block, tuple):
            yield block, 1
        elif len(block) == 3:
            v, _, split = block
            yield v[:, :split], 1
            if split < v.shape[1]:
                yield v[:, split:], 2
        else:
            yield block


def _bracket_pass(blocks, lo, hi, threads: int | None = None):
    """The bracketing pass of :func:`bracket_select` over ``blocks`` (arrays, ``(array, weight)``
    pairs or upper-triangle row blocks ``(array, "upper", split)``, :func:`_as_weighted`): the
    number of values below ``lo`` (copies counted) and the list of the kept arrays (a value of
    weight ``w`` listed ``w`` times). A block of at least :data:`PARALLEL_MIN_ENTRIES` entries is
    cut into row ranges counted in parallel (:func:`particlesampling._backend.pool_map`) by as many
    threads as the block's library uses for its own operations (torch's intra-op threads, NumPy's
    BLAS threads: :func:`particlesampling._backend.intra_op_threads_of`), or ``threads`` where the
    caller gives it (NumPy views of torch tensors: torch's count); NumPy and torch release the GIL
    in these passes, so the pass runs on the cores the GEMMs around it use."""
    below, kept = 0, []
    for block in blocks:
        if not isinstance(block, tuple):
            block = (block, 1)
        v, weight, split = (block[0], 1, block[2]) if len(block) == 3 else (block[0], block[1], None)
        size = math.prod(v.shape)
        use = (intra_op_threads_of(v) if threads is None else threads) if size >= PARALLEL_MIN_ENTRIES else 1
        # pieces of at most PASS_PIECE_ENTRIES, so that a piece's masks stay in cache while it is read
        pieces = max(use, -(-size // PASS_PIECE_ENTRIES)) if v.ndim >= 1 and v.shape[0] > 1 else 1
        count = lambda part: _bracket_part(part, lo, hi, weight, split)  # noqa: E731
        if use > 1 and pieces > 1:
            parts = pool_map(count, _row_parts(v, pieces), use)
        else:
            parts = [count(part) for part in (_row_parts(v, pieces) if pieces > 1 else [v])]
        for low, inside in parts:
            below += low
            kept.extend(inside)
        del block, v, parts  # before the next block is made: one block's temporaries at a time
    return below, kept


def bracket_select(sample, blocks_fn, total: int, ks, *, max_candidates: int | None = None, exchange=None,
                   threads: int | None = None):
    """Exact order statistics ``ks`` (0-based) of ``total`` values, bracketed by a ``sample`` of them.

    Parameters
    ----------
    sample : 1-D NumPy array
        Values drawn uniformly (with replacement) from the ``total`` values, in any order.
    blocks_fn : callable () -> iterable of arrays, of ``(array, weight)`` pairs, or of ``(array, "upper", split)``
        Yields blocks (NumPy or torch) holding every value exactly once; a block given with an
        integer ``weight`` stands for ``weight`` copies of each of its values (the upper half of a
        symmetric matrix, say, standing for both halves); ``(rows, "upper", split)`` is a row block
        of the upper block triangle of a symmetric matrix, its columns before ``split`` (the square
        on the diagonal) counted once and the others twice, in one pass over the whole block.
    total : int
        The number of values, copies included.
    ks : list of int
    max_candidates : int, optional
        Give up (return ``None``) before the pass when the bracket is expected to hold more values
        than this (``total * (i_hi - i_lo) / m``, copies included): the values kept in it are stored.
    exchange : optional
        For values spread over several holders (processes), each passing only its own blocks, the
        same ``sample`` and the ``total`` of the union: an object with ``counts(below, kept) ->
        (below, kept)`` summed over the holders (two Python ints each) and ``values(kept) -> array``,
        every holder's kept values (1-D NumPy) concatenated in one order that is the same on every
        holder. Every decision is then taken on the combined numbers, so all holders return the
        same exact order statistics of the union, or all return ``None`` (before ``values`` is called).

    Returns
    -------
    list of Python floats, or ``None`` when the bracket misses a rank or would keep too many values
    (the caller then selects without it).
    """
    m = sample.shape[0]
    i_lo, i_hi = bracket_sample_ranks(m, total, ks)
    if i_lo <= 0 or i_hi >= m - 1:
        return None
    if max_candidates is not None and expected_bracket_values(m, total, ks) > max_candidates:
        return None
    bounds = select_ranks(sample, [i_lo, i_hi])
    lo, hi = float(bounds[i_lo]), float(bounds[i_hi])
    below, kept = _bracket_pass(blocks_fn(), lo, hi, threads)
    cand = np.concatenate(kept) if kept else np.zeros(0, dtype=sample.dtype)
    n_kept = cand.shape[0]
    if exchange is not None:
        below, n_kept = exchange.counts(int(below), int(n_kept))
    if not all(below <= k < below + n_kept for k in ks):
        return None
    if exchange is not None:
        cand = np.asarray(exchange.values(cand))
    part = select_ranks(cand, [k - below for k in ks])
    return [float(part[k - below]) for k in ks]


@functools.lru_cache(maxsize=16)
def _sample_positions(total: int, size: int):
    """``size`` positions drawn uniformly from ``range(total)`` (seeded by ``total``: the same
    positions for the same size of problem, drawn once)."""
    out = np.random.default_rng(total).integers(0, total, size=size)
    out.flags.writeable = False
    return out


def _numpy_select(v, ks, threads: int | None = None):
    """Order statistics ``ks`` of a 1-D NumPy array (values of ``v``'s dtype): bracketing for large
    arrays, ``numpy.partition`` otherwise and as the bracketing's fallback. ``threads``: of the
    bracketing pass (default: NumPy's, :func:`_bracket_pass`)."""
    big_n = v.shape[0]
    if big_n >= 8 * BRACKET_SAMPLE:
        out = bracket_select(v[_sample_positions(big_n, bracket_sample_size(big_n))], lambda: (v,), big_n, ks,
                             threads=threads)
        if out is not None:
            return [v.dtype.type(t) for t in out]
    part = select_ranks(v, ks)
    return [part[k] for k in ks]


def checked_ranks(ks, n: int) -> list:
    """``ks`` as a list of Python integers, each a 0-based rank in ``[0, n)``; a non-integer rank
    (``5.5``, ``True``) or one out of range (``-1`` would not mean the largest here) is a ValueError
    naming what was received."""
    try:
        ks = list(ks)
    except TypeError:
        raise ValueError(f"expected the ranks as an iterable of integers, received {ks!r}") from None
    out = []
    for k in ks:
        if isinstance(k, bool):
            raise ValueError(f"expected integer ranks, received {ks!r}")
        try:
            out.append(operator.index(k))
        except TypeError:
            raise ValueError(f"expected integer ranks, received {ks!r}") from None
    if any(k < 0 or k >= n for k in out):
        raise ValueError(f"expected order statistics in [0, {n}), received {out}")
    return out


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
    ks = checked_ranks(ks, n)
    if batch_dims:
        return _batched_order_statistics(xp, v, ks)
    if is_numpy_array(v):
        return [xp.asarray(t) for t in _numpy_select(v, ks)]
    if is_torch_array(v):
        if v.device.type == "cpu" and not v.requires_grad:
            # On the CPU the NumPy selection on a zero-copy view (faster than torch.kthvalue:
            # benchmarks/bench_choices.py) serves every k at once; the results stay 0-d tensors.
            import torch

            return [torch.as_tensor(t) for t in _numpy_select(v.numpy(), ks, threads=intra_op_threads_of(v))]
        return [v.kthvalue(k + 1).values for k in ks]
    if _jax_radix_capable(v):
        out = jax_radix_select(v, tuple(ks))
        return [out[i] for i in range(len(ks))]
    s = xp.sort(v)
    return [s[k] for k in ks]


@functools.lru_cache(maxsize=16)
def _upper_sample_pairs(n: int, size: int):
    """Rows and columns ``(i, j)``, ``i <= j``, of ``size`` entries of an ``(n, n)`` matrix drawn
    uniformly from all ``n^2``, each moved to its mirror ``(min(i, j), max(i, j))`` in the upper
    triangle."""
    flat = _sample_positions(n * n, size)
    i, j = flat // n, flat % n
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    lo.flags.writeable = hi.flags.writeable = False
    return lo, hi


@functools.lru_cache(maxsize=16)
def _packed_sample_positions(n: int, block: int, size: int):
    """:func:`_upper_sample_pairs` as positions in the buffer of an :class:`UpperBlockRows` of ``n``
    rows in blocks of ``block``."""
    out = UpperBlockRows.flat_positions(n, block, *_upper_sample_pairs(n, size))
    out.flags.writeable = False
    return out


def symmetric_order_statistics(sq, ks, *, xp=None, block: int = SQDIST_BLOCK_ROWS):
    """:func:`order_statistics` of all ``n^2`` entries of a symmetric ``(n, n)`` matrix (a ``D2``).

    On the CPU (NumPy, torch without autograd) only the upper block triangle is read, row block by
    row block (``block`` rows): each square ``[I, I]`` on the diagonal once and each block
    ``[I, J > I]`` for itself and its mirror (weight 2): what lies below is never read, at any size.
    ``sq`` may also be that triangle packed (:class:`particlesampling._backend.UpperBlockRows`, its
    own ``block``: what the Stein step passes). Above ``8 * BRACKET_SAMPLE`` entries a sample of entries drawn
    uniformly and taken at their upper-triangle mirror brackets the ranks, and the bracketing pass
    touches half the entries with block-sized masks; below, and if the bracket misses, a selection
    runs on the upper blocks' entries (weights as copies). The result is that of
    :func:`order_statistics` when ``sq`` is exactly symmetric (as :func:`particlesampling.sqdist`
    returns it); for a matrix that is not, it is the order statistic of the matrix mirrored from its
    upper block triangle. Other libraries and devices: :func:`order_statistics` of the whole matrix.
    """
    packed = isinstance(sq, UpperBlockRows)
    n = sq.shape[-1]
    threads = intra_op_threads_of(sq.flat if packed else sq)  # torch's count for torch, before the NumPy views
    if packed:
        if not host_view_capable(sq.flat):
            raise TypeError("expected packed upper block rows on the CPU (NumPy, or torch outside autograd)")
        flat = sq.flat if is_numpy_array(sq.flat) else sq.flat.numpy()
        rows = [r if is_numpy_array(r) else r.numpy() for r in sq.rows]
        block = sq.block
    else:
        xp = xp or namespace(sq)
        if sq.ndim != 2 or sq.shape[0] != n or not host_view_capable(sq):
            return order_statistics(sq, ks, xp=xp)
        v = sq if is_numpy_array(sq) else sq.numpy()
    ks = checked_ranks(ks, n * n)

    def upper_blocks():
        for j, a in enumerate(range(0, n, block)):
            b = min(n, a + block)
            yield (rows[j] if packed else v[a:b, a:]), "upper", b - a

    out = None
    if n * n >= 8 * BRACKET_SAMPLE:
        m = bracket_sample_size(n * n)
        sample = flat[_packed_sample_positions(n, block, m)] if packed else v[_upper_sample_pairs(n, m)]
        out = bracket_select(sample, upper_blocks, n * n, ks, threads=threads)
    if out is None:  # small, or the bracket missed (probability < 1e-6): select among all the entries
        every = np.concatenate([part.reshape(-1) for blk, w in _as_weighted(upper_blocks()) for part in [blk] * w])
        out = [float(t) for t in _numpy_select(every, ks)]
    dtype = sq.dtype
    if is_numpy_array(sq.flat if packed else sq):
        return [np.asarray(dtype.type(t)) for t in out]
    import torch

    return [torch.tensor(t, dtype=dtype) for t in out]


def _batched_order_statistics(xp, v, ks):
    """Order statistics ``ks`` along the last axis of ``v`` (``(..., N)``), one per leading index."""
    if host_view_capable(v):
        part = np.partition(v if is_numpy_array(v) else v.numpy(), sorted(set(ks)), axis=-1)
        if is_numpy_array(v):
            return [xp.asarray(part[..., k]) for k in ks]
        import torch

        return [torch.from_numpy(np.ascontiguousarray(part[..., k])) for k in ks]
    if is_torch_array(v):
        return [v.kthvalue(k + 1, dim=-1).values for k in ks]
    if _jax_radix_capable(v):
        import jax

        flat = xp.reshape(v, (-1, v.shape[-1]))
        out = jax.vmap(lambda row: jax_radix_select(row, tuple(ks)))(flat)
        return [xp.reshape(out[:, i], tuple(v.shape[:-1])) for i in range(len(ks))]
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

            return torch.bincount(digits.reshape(-1), minlength=_BINS).cpu().numpy()  # int32 or int64 as is
        return np.bincount(digits, minlength=_BINS)

    def to_float(self, value: int):
        """The float whose bit pattern is ``value``."""
        arr = np.array([value], dtype=np.int32 if self.nbits == 32 else np.int64)
        return float(arr.view(np.float32 if self.nbits == 32 else np.float64)[0])


def rank_in_histogram(xp, counts, r):
    """Bin ``j`` holding the value of rank ``r`` (0-based) among values whose histogram is ``counts``
    (1-D, :data:`_BINS` bins in increasing order of value), and the number of values in the bins
    below it: ``(j, below)``, ``below <= r < below + counts[j]``. The one home of that step of the
    radix selection, for the host passes (NumPy) and the traced ones (JAX, ``r`` an array).

    Two levels of ``sqrt(_BINS)`` bins (the totals of groups of bins, then the bins of one group):
    two cumulative sums of 256 entries instead of one of 65,536, which XLA's CPU backend runs as
    slowly as a pass over the data."""
    width = 1 << (_DIGIT // 2)
    groups = xp.sum(xp.reshape(counts, (width, width)), axis=1)
    g, below_g = _searched(xp, xp.cumsum(groups), r)
    c, below_c = _searched(xp, xp.cumsum(xp.take(xp.reshape(counts, (width, width)), g, axis=0)), r - below_g)
    return g * width + c, below_g + below_c


def _searched(xp, cum, r):
    """``(j, cum[j - 1])`` (0 for ``j = 0``) with ``j`` the first index where ``cum[j] > r``."""
    j = xp.searchsorted(cum, r, side="right")
    return j, xp.where(j > 0, xp.take(cum, xp.maximum(j - 1, 0)), 0)


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
        for block, weight in _as_weighted(blocks_fn()):
            v = cnt.ints(block)
            for g in groups:
                p, pb, collect = g
                sel = v if pb == 0 else v[(v >> (nb - pb)) == p]
                if collect:
                    kept[g].extend([to_numpy(sel)] * weight)
                    continue
                width = min(_DIGIT, nb - pb)
                hist[g] += weight * cnt.bincount((sel >> (nb - pb - width)) & ((1 << width) - 1))
                del sel
            del block, v  # before the next block is made: one block's temporaries at a time
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
            j, below = (int(t) for t in rank_in_histogram(np, counts, r))
            st[:] = [(p << width) | j, pb + width, r - below, int(counts[j]) <= collect_limit]
            if st[1] >= nb:  # every bit fixed: that is the value
                result[k] = cnt.to_float(st[0])
    return [result[k] for k in ks]


def gathered_order_statistics(blocks_fn, ks, exchange):
    """Exact order statistics ``ks`` of the union of values spread over holders, by gathering them
    all (for small unions): ``blocks_fn`` as for :func:`bracket_select` (this holder's blocks),
    ``exchange`` as there (only its ``values`` is called). Python floats, the same on every holder."""
    mine = [to_numpy(b).reshape(-1) for b, w in _as_weighted(blocks_fn()) for _ in range(w)]
    every = np.asarray(exchange.values(np.concatenate(mine) if mine else np.zeros(0)))
    ks = checked_ranks(ks, every.shape[0])
    part = select_ranks(every, ks)
    return [float(part[k]) for k in ks]


def blocked_order_statistics(blocks_fn, ks, dtype_name: str, *, sample=None, total: int | None = None,
                             combine=None, max_candidates: int | None = None, exchange=None):
    """Exact order statistics ``ks`` (0-based) of all entries of non-negative float blocks.

    Parameters
    ----------
    blocks_fn : callable () -> iterable of arrays (NumPy or torch), or of ``(array, weight)`` pairs
        Yields the same blocks (same floats) on every call; a block with an integer ``weight`` stands
        for that many copies of each of its values (as in :func:`bracket_select`).
    ks : list of int
    dtype_name : "float32" or "float64"
    sample : 1-D NumPy array, optional
        A uniform sample of the values; with ``total`` it lets one bracketing pass
        (:func:`bracket_select`) replace the 2-3 radix passes. With ``combine``, used only together
        with ``exchange`` (then the same on every holder).
    max_candidates : int, optional
        Bound on the values the bracketing pass may keep (:func:`bracket_select`); above it the
        radix passes, which keep none, are used.
    combine : callable, optional
        For values spread over several holders (processes), each seeing only its own blocks:
        ``combine(counts) -> counts summed over the holders`` for an int64 NumPy array of shape
        ``(G, 65536)`` (one histogram per group of ranks sharing a prefix). It is called once per
        radix pass, in the same order on every holder, and every holder then makes the same
        decisions, so all of them return the exact order statistics of the union of their values.
        The ranks ``ks`` are ranks in that union. Radix passes: 2 for float32, 4 for float64.
    exchange : optional
        With ``combine``, ``sample`` (the same on every holder, drawn from the union) and ``total``
        (of the union): the bracketing pass first, its counts and kept values exchanged as in
        :func:`bracket_select`; the radix passes with ``combine`` only if it declines (on every
        holder alike).

    Returns
    -------
    list of Python floats, one per ``k``.
    """
    if combine is not None:
        if exchange is not None and sample is not None:
            out = bracket_select(sample, blocks_fn, total, ks, max_candidates=max_candidates, exchange=exchange)
            if out is not None:
                return out
        return _radix_select(blocks_fn, ks, dtype_name, combine=combine)
    if sample is not None:
        out = bracket_select(sample, blocks_fn, total, ks, max_candidates=max_candidates)
        if out is not None:
            return out
    return _radix_select(blocks_fn, ks, dtype_name)


# --------------------------------------------------------------------------------------------------
# selection under JAX: the radix passes with static shapes, on the device, inside jax.jit
# --------------------------------------------------------------------------------------------------

#: fewest entries for which JAX arrays take the radix selection (fewer: a sort, which costs less there)
JAX_RADIX_MIN = 1 << 12


def _jax_radix_capable(v) -> bool:
    """Whether ``v`` (1-D, or ``(..., N)``) is a JAX float32/float64 array with enough entries per
    selection for the radix passes (:func:`jax_radix_select`)."""
    return is_jax_array(v) and str(v.dtype) in ("float32", "float64") and v.shape[-1] >= JAX_RADIX_MIN


def _monotone_keys(jnp, lax, v):
    """Unsigned integers whose order is the order of the floats ``v`` (sign bit flipped for
    non-negative values, every bit flipped for negative ones; NaN after +inf, as a sort puts it)."""
    nbits = 32 if str(v.dtype) == "float32" else 64
    uint = jnp.uint32 if nbits == 32 else jnp.uint64
    bits = lax.bitcast_convert_type(v, uint)
    top = uint(1 << (nbits - 1))
    return jnp.where(bits >= top, ~bits, bits | top), nbits, uint


def _float_of_key(jnp, lax, key, nbits, uint, dtype):
    top = uint(1 << (nbits - 1))
    return lax.bitcast_convert_type(jnp.where(key >= top, key ^ top, ~key), dtype)


def _jax_radix_values(v, ks: tuple):
    """The order statistics ``ks`` of the 1-D JAX array ``v``: the radix selection of the module
    docstring with every decision on the device (no host round trip, static shapes). Each pass is
    one histogram (a scatter-add) of a 16-bit digit of the values whose higher digits match the
    rank's prefix; ranks whose prefixes agree (the two ranks of a midpoint median, almost always)
    share the histogram (a ``lax.cond`` on the prefixes, evaluated on the device). Float32: 2
    passes, float64: 4; exact, whatever the values."""
    import jax.numpy as jnp
    from jax import dtypes, lax

    key, nbits, uint = _monotone_keys(jnp, lax, v)
    mask = uint(_BINS - 1)
    prefix = [uint(0)] * len(ks)
    rank = [jnp.asarray(k, dtype=jnp.int64 if nbits == 64 else jnp.int32) for k in ks]

    def histogram(shift, p, first):
        digit = ((key >> shift) & mask).astype(jnp.int32)
        if first:
            return jnp.bincount(digit, length=_BINS)
        # the values outside the prefix's bin (nearly all) get an index past the end, dropped by the
        # scatter without a write: one extra bin taking them all would serialise the adds to it
        digit = jnp.where((key >> (shift + _DIGIT)) == p, digit, _BINS)
        return jnp.zeros(_BINS, dtype=dtypes.canonicalize_dtype(jnp.int64)).at[digit].add(1, mode="drop")

    for pass_ in range(nbits // _DIGIT):
        shift = nbits - _DIGIT * (pass_ + 1)
        counts = [histogram(shift, prefix[0], pass_ == 0)]
        for i in range(1, len(ks)):
            if pass_ == 0:
                counts.append(counts[0])
            else:
                counts.append(lax.cond(prefix[i] == prefix[0], lambda c=counts[0]: c,
                                       lambda p=prefix[i], sh=shift: histogram(sh, p, False)))
        for i in range(len(ks)):
            j, below = rank_in_histogram(jnp, counts[i], rank[i])
            rank[i] = rank[i] - below.astype(rank[i].dtype)
            prefix[i] = (prefix[i] << _DIGIT) | j.astype(uint)
    return jnp.stack([_float_of_key(jnp, lax, p, nbits, uint, v.dtype) for p in prefix])


def _host_values(a, ks):
    """The order statistics ``ks`` of the float32 NumPy array ``a`` (all entries, never written) by
    the host selection (:func:`_numpy_select`), as a float32 array: the work of both callbacks of
    :func:`_jax_host_values`.

    The selection runs on integer keys whose order is that of the floats (the bits, the 31 lower
    ones flipped for negative values; NaN after +inf, as a sort puts it): XLA runs its CPU callbacks
    with subnormals treated as zero, so comparing the floats themselves would tie every subnormal
    with 0."""
    bits = np.ascontiguousarray(a, dtype=np.float32).reshape(-1).view(np.int32)
    if bits.min() >= 0:  # no sign bit set (a D2, say): the bits are the keys
        keys = bits
    else:
        keys = bits >> 31  # -1 where the sign bit is set, 0 elsewhere
        keys &= np.int32(0x7FFFFFFF)
        keys ^= bits
    out = np.asarray([int(t) for t in _numpy_select(keys, list(ks))], dtype=np.int32)
    return np.where(out < 0, out ^ np.int32(0x7FFFFFFF), out).view(np.float32)


def _host_values_into(ctx, out, a, *, ks):
    """The callback of ``jax.experimental.buffer_callback`` in :func:`_jax_host_values`: XLA's own
    buffer of the values ``a`` read in place (a read-only NumPy view, no copy), the ``len(ks)``
    order statistics written as bits (no float arithmetic, so subnormals survive) into XLA's
    buffer ``out``."""
    del ctx
    values = np.asarray(a)
    values.flags.writeable = False  # XLA's operand: the selection must never write it
    np.asarray(out).view(np.int32)[...] = _host_values(values, ks).view(np.int32)


def _jax_host_values(v, ks: tuple, *, callback: str = "buffer"):
    """The order statistics ``ks`` of the 1-D float32 JAX array ``v`` computed by the host selection
    (:func:`_host_values`), for JAX's CPU backend, whose arrays are in host memory already (the JAX
    section of ``docs/benchmarks.md`` times it beside the radix histograms on the device). Returns a ``(len(ks),)`` float32 array; under ``jax.vmap`` one call per
    batch member (``vmap_method="sequential"``).

    ``callback="buffer"``: through ``jax.experimental.buffer_callback``, which hands the callback
    XLA's buffer of ``v`` itself: NumPy reads the values in place, no copy, no device transfer. Where
    this JAX's ``buffer_callback`` is missing or fails its check (:func:`buffer_callback_usable`), and
    with ``callback="pure"``: through ``jax.pure_callback``, which gives the callback a copy of the values
    (``4 N`` bytes written and read again before the selection starts)."""
    import jax

    if callback not in ("buffer", "pure"):
        raise ValueError(f"expected callback as 'buffer' or 'pure', received {callback!r}")
    out_type = jax.ShapeDtypeStruct((len(ks),), v.dtype)
    if callback == "buffer" and buffer_callback_usable():
        from jax.experimental.buffer_callback import buffer_callback

        return buffer_callback(functools.partial(_host_values_into, ks=ks), out_type, vmap_method="sequential")(v)
    return jax.pure_callback(functools.partial(_host_values, ks=ks), out_type, v, vmap_method="sequential")


@functools.lru_cache(maxsize=1)
def buffer_callback_usable() -> bool:
    """Whether this JAX's ``jax.experimental.buffer_callback`` (an experimental API) traces,
    compiles and runs the host selection on the CPU with the exact result, checked once per process
    on eight values (tens of milliseconds, mostly compilation): an older or changed JAX then gets ``jax.pure_callback``
    instead of an error when it traces, lowers or runs the call."""
    try:
        import jax
        import jax.numpy as jnp
        from jax.experimental.buffer_callback import buffer_callback

        values = np.asarray([3.0, -1.0, 0.5, 7.0, 2.0, -4.0, 1e-40, 0.0], dtype=np.float32)
        ks = (0, 3, 7)
        fn = buffer_callback(functools.partial(_host_values_into, ks=ks), jax.ShapeDtypeStruct((3,), jnp.float32),
                             vmap_method="sequential")
        with jax.ensure_compile_time_eval():  # run now, also when first asked inside a trace
            got = np.asarray(jax.jit(fn)(jax.device_put(values, jax.devices("cpu")[0])))
        return bool(np.array_equal(got.view(np.int32), np.sort(values)[list(ks)].view(np.int32)))
    except Exception:  # any failure of the experimental API: the pure_callback path
        return False


@functools.lru_cache(maxsize=4)
def _jax_select_fn(where: str, callback: str = "buffer"):
    """:func:`_jax_radix_values` (``where="device"``), or the host selection on JAX's CPU backend and
    the radix passes on any other (``"auto"``: ``lax.platform_dependent``), with a derivative (built
    once each, when JAX is first used). ``callback``: how the host selection is reached
    (:func:`_jax_host_values`)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    @functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
    def select(v, ks):
        if where == "device" or str(v.dtype) != "float32":
            return _jax_radix_values(v, ks)
        return lax.platform_dependent(v, cpu=lambda a: _jax_host_values(a, ks, callback=callback),
                                      default=lambda a: _jax_radix_values(a, ks))

    @select.defjvp
    def _select_jvp(ks, primals, tangents):
        (v,), (t,) = primals, tangents
        out = select(v, ks)
        # the derivative of an order statistic: that of the entries equal to it (shared equally
        # among ties, as for jnp.min), the derivative a sort gives almost everywhere
        hits = v[None, :] == out[:, None]
        return out, jnp.sum(jnp.where(hits, t[None, :], 0), axis=1) / jnp.sum(hits, axis=1).astype(t.dtype)

    return jax.jit(select, static_argnums=1)


def jax_radix_select(v, ks: tuple, *, where: str = "auto"):
    """Exact order statistics ``ks`` (0-based, a tuple) of all entries of a JAX float32/float64
    array, as a ``(len(ks),)`` array, jitted with static ranks, differentiable (an order
    statistic's derivative is that of the entry it selects), and usable under ``jax.jit``,
    ``jax.vmap`` and ``jax.grad``. A full sort, which XLA's CPU backend runs slowly on ``10^6``
    entries, is never made.

    ``where="auto"``: for float32 on JAX's CPU backend the host selection (:func:`_jax_host_values`:
    the arrays are in host memory, which NumPy reads in place through ``buffer_callback``),
    otherwise the radix passes of :func:`_jax_radix_values`, every decision on
    the device. ``where="device"``: the radix passes on every backend."""
    import jax.numpy as jnp

    if where not in ("auto", "device"):
        raise ValueError(f"expected where as 'auto' or 'device', received {where!r}")
    flat = jnp.reshape(v, (-1,))
    if flat.shape[0] == 0:
        raise ValueError("expected a non-empty array for an order statistic, received an empty one")
    ks = tuple(checked_ranks(ks, flat.shape[0]))
    if not ks:
        return jnp.zeros((0,), dtype=flat.dtype)
    return _jax_select_fn(where)(flat, ks)
