"""Tiled (blocked) evaluation of the Stein direction, the median bandwidth and the KSD: O(n * tile) memory.

The untiled path (:func:`particlesampling.stein_direction`) holds the ``n x n`` matrices ``D2`` and
``K``: 3.2 GB each at n = 20,000 in float64. Here the rows are processed in blocks of ``tile`` rows:
each block's ``D2[I, :]`` comes from the Gram trick on the (centred) particles, is turned into
``K[I, :]`` in place, and is consumed at once by the product ``K[I, :] [X | 1 | S]``. Peak memory is
``O(n * tile + n * d)``; the time is the same ``O(n^2 d)`` with one extra ``D2`` product per
selection pass (below). For the RBF kernel with a scalar bandwidth (NumPy, or torch outside
autograd) the product pass reads the upper block triangle only: block ``K[I, a:]`` adds
``K[I, a:] [X | 1 | S][a:]`` to rows ``I`` and, transposed, ``K[I, b:]^T [X | 1 | S][I]`` to the rows
below (:func:`particlesampling.kernels.rbf_upper_product`), so half of ``D2`` and of the ``exp`` is
computed. ``tile`` is chosen from a memory budget in bytes (:func:`tile_rows`).

**Exact median of n^2 numbers in O(n * tile) memory.** A median bandwidth needs order statistics
of all ``n^2`` squared distances, which are never stored. A sample of ``D2`` entries at random pairs
brackets the wanted ranks (a sample that grows until the bracket fits in the blocks' budget,
:func:`tiled_sample_size`) and one pass over the blocks finishes the selection; if the bracket misses,
a radix selection on the bit patterns takes 2-3 passes (:func:`particlesampling.selection.blocked_order_statistics`).
The passes read the upper block triangle only (``D2[I, a:]`` for the row block ``I = a..b-1``, the
part right of the diagonal square standing also for its mirror), so each costs half a ``D2``
product. Every pass recomputes the blocks in the same way (same shapes, same order), so the values
counted are the same floats in every pass, and the result is the exact order statistic of the
blocked ``D2``. The conventions themselves (which ranks, which map to ``h``, the floor) are those of
:mod:`particlesampling.bandwidths`. Those entries equal the untiled ``sqdist`` entries up to float rounding (the untiled matrix
is also symmetrised), so the bandwidth agrees with the untiled one to rounding. For NumPy and
PyTorch (CPU or CUDA) the counting runs in the array's own library and on its device; for other
namespaces each block is copied to NumPy for the counting only. Each block's ``D2``, ``K`` rows and
Stein-kernel rows come from the same functions as the untiled path (:func:`particlesampling._backend.sqdist_block`,
:func:`particlesampling.kernels.rbf_terms_from_product`, :func:`particlesampling.stein_kernel.stein_kernel_block`).

Bandwidths supported: the rules that declare they read ``"nothing"`` or ``"order_statistics"``
of ``D2`` (:attr:`~particlesampling.bandwidths.BandwidthRule.reads`): every scalar median convention
of :class:`~particlesampling.bandwidths.Median` (``"liu_wang"``, ``"an2020"``, ``"blackjax"``,
``"numpyro"``), fixed bandwidths (scalar or per dimension), :class:`~particlesampling.bandwidths.Scaled`
versions of those, and a user's rule declaring either. Not supported (a ``ValueError`` says so):
Pyro's per-dimension median (d separate selections over n^2 values),
:class:`~particlesampling.bandwidths.MaxKSD` and plain callables, which need the full ``D2``.
Kernels: radial kernels (``RBF``, ``IMQ``).
"""

from __future__ import annotations

import math

import numpy as np

from ._backend import (
    centred,
    check_same_shape,
    device_of,
    exp_neg_scaled,
    exp_neg_scaled_,
    in_place_capable,
    namespace,
    sqdist_block,
    to_numpy,
)
from .bandwidths import check_reads, get_bandwidth
from .kernels import (
    RBF,
    get_kernel,
    offdiagonal_mean_from_sums,
    radial_repulsion,
    rbf_product_columns,
    rbf_terms_from_product,
    rbf_upper_product,
)
from .memory_budget import AUTO, budget_bytes
from .selection import BRACKET_SAMPLE, blocked_order_statistics, bracket_sample_size, expected_bracket_values
from .stein_kernel import check_statistic, cross_term, radial_kernel, reduce_statistic, stein_kernel_block, \
    stein_kernel_diagonal
from .stein_terms import assemble_direction, check_finite_inputs, check_repulsion, check_stein_inputs

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "untiled_bytes",
    "tiling_supported",
    "tiling_chosen",
    "tile_rows",
    "tiled_bandwidth",
    "tiled_order_statistics",
    "tiled_stein_direction",
    "tiled_stein_direction_with_info",
    "tiled_ksd_squared",
    "rule_value",
    "check_blocked_rule",
    "BLOCKED_READS",
    "block_stein_terms",
    "scaled_for_distances",
    "centre",
]

#: default budget for the O(n * tile) temporaries, in bytes
DEFAULT_MEMORY_BUDGET = 256 * 2**20


def _dtype_name(x) -> str:
    return str(x.dtype).split(".")[-1]


def _itemsize(x) -> int:
    return 4 if _dtype_name(x) == "float32" else 8


def untiled_bytes(particles, kernel=None) -> int:
    """Bytes of the untiled path's ``n x n`` temporaries: one matrix for the RBF kernel (``D2``, turned
    into ``K`` in place block by block), three for other kernels (``D2``, ``K`` and ``K'``)."""
    n = particles.shape[-2]
    matrices = 1 if type(get_kernel(kernel)) is RBF else 3
    return matrices * n * n * _itemsize(particles)


def tiling_supported(kernel=None, bandwidth=None) -> bool:
    """Whether the row-blocked path serves this kernel and bandwidth (module docstring)."""
    if not getattr(get_kernel(kernel), "is_radial", False):
        return False
    try:
        check_blocked_rule(get_bandwidth(bandwidth), "")
    except ValueError:
        return False
    return True


def tiling_chosen(particles, kernel=None, bandwidth=None, memory_budget=AUTO) -> bool:
    """Whether a Stein step on ``particles`` takes the row-blocked path under ``memory_budget``
    (``"auto"``, bytes or ``None``; :mod:`particlesampling.memory_budget`): when the untiled
    temporaries (:func:`untiled_bytes`) exceed the budget, except that under ``"auto"`` a call the
    blocked path cannot serve stays untiled."""
    limit = budget_bytes(particles, memory_budget)
    if limit is None or untiled_bytes(particles, kernel) <= limit:
        return False
    return memory_budget != AUTO or tiling_supported(kernel, bandwidth)


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


def _blocks(xp, xc, xx, tile):
    """Yield ``(a, b, D2[a:b, :])`` of the centred particles ``xc`` (``xx = |xc_i|^2``): exact zero diagonal."""
    n = xc.shape[0]
    for a in range(0, n, tile):
        b = min(n, a + tile)
        yield a, b, sqdist_block(xp, xc[a:b, :], xx[a:b], xc, xx, diagonal_at=a)


def centre(xp, x):
    """Centred particles and their squared row norms (the Gram trick's inputs)."""
    xc = centred(xp, x)
    return xc, xp.sum(xc * xc, axis=1)


def _pair_sample(xp, xc, size: int = BRACKET_SAMPLE, chunk: int = 8192):
    """``D2`` entries at ``size`` uniformly drawn pairs ``(i, j)`` (fixed seed), as NumPy; the row
    differences are formed ``chunk`` pairs at a time (``O(chunk * d)`` memory)."""
    n = xc.shape[0]
    rng = np.random.default_rng(n)
    dev = device_of(xc)
    i = xp.asarray(rng.integers(0, n, size=size), device=dev)
    j = xp.asarray(rng.integers(0, n, size=size), device=dev)
    parts = []
    for a in range(0, size, chunk):
        diff = xp.take(xc, i[a:a + chunk], axis=0) - xp.take(xc, j[a:a + chunk], axis=0)
        parts.append(to_numpy(xp.sum(diff * diff, axis=1)))
    return np.concatenate(parts)


def _upper_blocks(xp, xc, xx, tile):
    """Yield ``(D2[a:b, a:], "upper", b - a)``: the square ``D2[a:b, a:b]`` (weight 1: it holds
    both ``(i, j)`` and ``(j, i)``) then ``D2[a:b, b:]`` (weight 2: it stands for itself and its
    mirror below the diagonal), for row blocks of ``tile`` rows (the block form of
    :func:`particlesampling.selection.bracket_select`): every one of the ``n^2`` entries of a
    symmetric ``D2`` once, from half the Gram-trick work."""
    for a, b, d2 in _upper_row_blocks(xp, xc, xx, tile):
        yield d2, "upper", b - a
        d2 = None  # not held while the next block is made


def _upper_row_blocks(xp, xc, xx, tile):
    """Yield ``(a, b, D2[a:b, a:])`` for row blocks of ``tile`` rows: the upper block triangle of
    ``D2``, one block at a time (exact zero diagonal; the squares ``D2[a:b, a:b]`` symmetric to the
    GEMM's rounding)."""
    n = xc.shape[0]
    for a in range(0, n, tile):
        b = min(n, a + tile)
        yield a, b, sqdist_block(xp, xc[a:b, :], xx[a:b], xc[a:, :], xx[a:], diagonal_at=0)


def _order_statistics(xp, xc, xx, ks, tile, dtype_name):
    """Exact order statistics ``ks`` of all ``n^2`` blocked ``D2`` entries, as Python floats: those
    of the symmetric matrix whose upper block triangle the row blocks compute (:func:`_upper_blocks`)."""
    n = xc.shape[0]
    # the values kept inside the bracket must fit where the blocks do (about 5 n * tile numbers)
    cap = n * tile
    sample = (_pair_sample(xp, xc, tiled_sample_size(n * n, ks, cap)) if n * n >= 4 * BRACKET_SAMPLE
              else None)
    return blocked_order_statistics(lambda: _upper_blocks(xp, xc, xx, tile), ks, dtype_name, sample=sample,
                                    total=n * n, max_candidates=cap)


#: most pairs the tiled selection's bracketing sample draws (their distances: O(size * d) work)
MAX_PAIR_SAMPLE = 1 << 24


def tiled_sample_size(total: int, ks, max_candidates: int) -> int:
    """Pairs in the bracketing sample of the tiled selection of ranks ``ks`` among ``total`` entries:
    :func:`~particlesampling.selection.bracket_sample_size`, doubled (while the doubled size stays
    within ``min(MAX_PAIR_SAMPLE, max_candidates)``) until the bracket is expected to keep at most
    half of ``max_candidates`` values. The bracket's width in values falls as ``total / sqrt(m)``;
    past ``max_candidates`` the selection would fall back to the radix passes, two more passes over
    the whole ``D2`` for float32 (at n = 10^5, with a 1 GiB budget, the default sample of 65,536
    pairs would keep about 2 * 10^8 values against a bound of 4 * 10^7). A sample pair costs
    ``O(d)`` work and about four numbers of memory (its two indices, its value, their copy), a pass
    ``O(n^2 d)``: the sample never grows past ``max_candidates`` pairs, so it takes no more memory
    than the values the bracket may keep (``O(n * tile)``, the blocks' budget) and never more pairs
    than there are entries; where that cannot make the bracket fit, the radix passes run."""
    m = bracket_sample_size(total)
    limit = min(MAX_PAIR_SAMPLE, max_candidates)
    while 2 * m <= limit and expected_bracket_values(m, total, ks) > max_candidates / 2:
        m *= 2
    return m


def tiled_order_statistics(particles, ks, *, tile: int | None = None,
                           memory_budget: int | float = DEFAULT_MEMORY_BUDGET):
    """Exact order statistics (0-based ranks ``ks``) of the ``n^2`` entries of ``sqdist(particles)``
    (diagonal zeros included), in ``O(n * tile)`` memory. Returns Python floats."""
    xp = namespace(particles)
    n, d = particles.shape
    if tile is None:
        tile = tile_rows(n, d, _itemsize(particles), memory_budget)
    xc, xx = centre(xp, particles)
    return _order_statistics(xp, xc, xx, list(ks), tile, _dtype_name(particles))


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
    return _rule_value(xp, get_bandwidth(bandwidth), particles, tile)


def _rule_value(xp, rule, x, tile):
    """:func:`rule_value` with the order statistics of the blocked ``D2`` of ``x``."""

    def order_statistics(ks):
        xc, xx = centre(xp, x)
        return _order_statistics(xp, xc, xx, ks, tile, _dtype_name(x))

    return rule_value(xp, rule, x, order_statistics, where="tiled evaluation")


#: what a rule may read of ``D2`` to be evaluated in blocks (:attr:`~particlesampling.bandwidths.BandwidthRule.reads`)
BLOCKED_READS = ("nothing", "order_statistics")


def check_blocked_rule(rule, where: str) -> str:
    """ValueError naming ``where`` unless ``rule`` can be evaluated without the ``n x n`` matrix: it
    declares ``reads`` ``"nothing"`` or ``"order_statistics"``
    (:class:`~particlesampling.bandwidths.BandwidthRule`). Returns what it reads."""
    return check_reads(rule, BLOCKED_READS, where)


def rule_value(xp, rule, x, order_statistics, *, where: str):
    """The bandwidth a rule gives on ``x`` (``(n, d)``) from order statistics of its ``n^2`` squared
    distances, without the ``n x n`` matrix.

    ``order_statistics(ks) -> list of floats``: the entries of rank ``ks`` (0-based) among all
    ``n^2`` entries of ``D2`` (diagonal zeros included), from wherever they are (row blocks here,
    the rows of several processes in :mod:`particlesampling.distributed`); called only when the rule
    asks for some (:meth:`~particlesampling.bandwidths.BandwidthRule.order_statistic_ranks`). Rules
    must declare ``reads`` ``"nothing"`` (called with ``sq=None``) or ``"order_statistics"``; any
    other raises a ValueError that names ``where`` (:func:`check_blocked_rule`).
    """
    if check_blocked_rule(rule, where) == "nothing":  # no distances needed
        return rule(x, None)
    ks = [int(k) for k in rule.order_statistic_ranks(x.shape[0])]
    dev = device_of(x)
    values = [xp.asarray(t, dtype=x.dtype, device=dev) for t in order_statistics(ks)] if ks else []
    return rule.from_order_statistics(xp, values, x)


# --------------------------------------------------------------------------------------------------
# Stein direction
# --------------------------------------------------------------------------------------------------


def tiled_stein_direction_with_info(particles, scores, kernel=None, bandwidth=None, repulsion: float = 1.0,
                                    *, tile: int | None = None,
                                    memory_budget: int | float = DEFAULT_MEMORY_BUDGET, check_finite: bool = True):
    """:func:`~particlesampling.stein_direction_with_info` in ``O(n * tile)`` memory.

    Same arguments and results (to float rounding) as the untiled function, plus ``tile`` (rows per
    block) or ``memory_budget`` (bytes for the block temporaries; used when ``tile`` is None).
    Radial kernels only (``RBF``, ``IMQ``); bandwidths as in the module docstring. ``check_finite``:
    as for :func:`~particlesampling.stein_direction`.
    """
    xp = check_stein_inputs(particles, scores, repulsion)
    repulsion = check_repulsion(repulsion)
    if not isinstance(check_finite, bool):
        raise TypeError(f"expected check_finite as a bool, received {check_finite!r}")
    if check_finite:
        check_finite_inputs(xp, particles, scores, where="the tiled Stein direction")
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
    xc, _ = centre(xp, particles)
    # per-dimension h: distances of x / sqrt(h) are U directly; scalar h: U = D2 / h
    xs = scaled_for_distances(xp, xc, h)
    xx = xp.sum(xs * xs, axis=1)
    rhs = rbf_product_columns(xp, xc, scores) if type(kern) is RBF else None
    k0 = kern.value(xp.zeros((), dtype=particles.dtype, device=dev))
    if rhs is not None and h.ndim == 0 and in_place_capable(xc) and in_place_capable(rhs):
        # RBF, scalar h, NumPy or torch outside autograd: the upper block triangle only (half the
        # X X^T and half the exp of the full row blocks below), each block used for its own rows
        # and, transposed, for the rows below it
        prod, _ = rbf_upper_product(xp, _upper_row_blocks(xp, xs, xx, tile), (n,), h, rhs, overwrite=True,
                                    dtype_of=xc)
        driving, rep, rowsum = rbf_terms_from_product(prod, xc, h)
        mean_k = offdiagonal_mean_from_sums(xp, xp.sum(rowsum), float(n) * k0, n, like=particles)
        return assemble_direction(xp, driving, rep, repulsion, h, mean_k)
    driving_parts, rep_parts = [], []
    ksum = xp.zeros((), dtype=particles.dtype, device=dev)
    for a, b, d2 in _blocks(xp, xs, xx, tile):
        driving, rep, rowsum = block_stein_terms(xp, kern, d2, h, xc[a:b, :], xc, scores, rhs=rhs, overwrite=True)
        d2 = None  # not held while the next block is made
        driving_parts.append(driving)
        rep_parts.append(rep)
        ksum = ksum + xp.sum(rowsum)
    mean_k = offdiagonal_mean_from_sums(xp, ksum, float(n) * k0, n, like=particles)
    return assemble_direction(xp, xp.concat(driving_parts, axis=0), xp.concat(rep_parts, axis=0), repulsion,
                              h, mean_k)


def scaled_for_distances(xp, xc, h):
    """The rows whose squared distances the block terms take: ``xc`` for a scalar ``h`` (they are
    ``D2``), ``xc / sqrt(h)`` for a per-dimension ``h`` (they are ``U`` directly)."""
    return xc if h.ndim == 0 else xc / xp.sqrt(h)


def block_stein_terms(xp, kern, d2, h, xc_rows, xc, scores, *, rhs=None, overwrite: bool = False):
    """``(K[I, :] S, R[I], rowsum K[I, :])`` for a block of rows ``I`` of a radial kernel.

    ``d2`` is the block ``(b, n)`` of squared distances between the rows :func:`scaled_for_distances`
    gives (``D2[I, :]`` for a scalar ``h``, ``U[I, :]`` for a per-dimension one); ``xc`` the centred
    particles ``(n, d)``, ``xc_rows`` their rows ``I``, ``scores`` ``(n, d)``. The same kernel
    formulas as the untiled path (:func:`~particlesampling.kernels.rbf_product_columns` and
    :func:`~particlesampling.kernels.rbf_terms_from_product`, :func:`~particlesampling.kernels.radial_repulsion`).
    For the RBF kernel ``rhs`` may pass ``rbf_product_columns(xp, xc, scores)``, built once for all
    blocks; ``d2`` is turned into the kernel block in place with ``overwrite`` (NumPy, torch without
    autograd), and never modified otherwise.
    """
    if type(kern) is RBF:
        if overwrite and h.ndim == 0 and in_place_capable(d2):
            k = exp_neg_scaled_(d2, h)  # the block is the caller's own
        else:
            k = exp_neg_scaled(xp, d2, h) if h.ndim == 0 else xp.exp(-d2)
        if rhs is None:
            rhs = rbf_product_columns(xp, xc, scores)
        return rbf_terms_from_product(k @ rhs, xc_rows, h)
    k, k1 = kern._value_and_slope(d2 / h if h.ndim == 0 else d2)
    return k @ scores, radial_repulsion(xp, k1, xc_rows, xc, h), xp.sum(k, axis=1)


def tiled_stein_direction(particles, scores, kernel=None, bandwidth=None, repulsion: float = 1.0, *,
                          tile: int | None = None, memory_budget: int | float = DEFAULT_MEMORY_BUDGET,
                          check_finite: bool = True):
    """The SVGD direction ``(K S + repulsion R) / n`` in ``O(n * tile)`` memory; see
    :func:`tiled_stein_direction_with_info`."""
    return tiled_stein_direction_with_info(particles, scores, kernel, bandwidth, repulsion, tile=tile,
                                           memory_budget=memory_budget, check_finite=check_finite)[0]


# --------------------------------------------------------------------------------------------------
# KSD
# --------------------------------------------------------------------------------------------------


def tiled_ksd_squared(particles, scores, kernel="imq", bandwidth=1.0, statistic: str = "v", *,
                      tile: int | None = None, memory_budget: int | float = DEFAULT_MEMORY_BUDGET):
    """:func:`particlesampling.ksd_squared` (V- or U-statistic) in ``O(n * tile)`` memory.

    The same Stein kernel (:func:`particlesampling.stein_kernel.stein_kernel_block`), summed block by
    block: per block three products (``D2``, ``S S^T``, and ``S X^T`` with its transpose block).
    Scalar bandwidths only: a number, a 0-d array, or a rule supported by :func:`tiled_bandwidth`.
    Returns a 0-d array of the particles' namespace.
    """
    xp = namespace(particles, scores)
    check_same_shape(particles, scores, "particles", "scores")
    statistic = check_statistic(statistic)
    n, d = particles.shape
    if statistic == "u" and n < 2:
        raise ValueError("the U-statistic needs n >= 2 particles, received n = 1")
    kern = radial_kernel(kernel)
    if tile is None:
        tile = tile_rows(n, d, _itemsize(particles), memory_budget)
    dev = device_of(particles)
    h = xp.asarray(_rule_value(xp, get_bandwidth(bandwidth), particles, tile), dtype=particles.dtype, device=dev)
    if h.ndim != 0:
        raise ValueError("tiled_ksd_squared supports a scalar bandwidth only")
    xc, xx = centre(xp, particles)
    a_diag = xp.sum(scores * xc, axis=1)
    st = xp.matrix_transpose(scores)
    total = xp.zeros((), dtype=particles.dtype, device=dev)
    for a, b, d2 in _blocks(xp, xc, xx, tile):
        cross = cross_term(xp, xc, scores, (a, b), a=a_diag)
        total = total + xp.sum(stein_kernel_block(kern, d2, scores[a:b, :] @ st, cross, h, d))
    diag = stein_kernel_diagonal(xp, kern, scores, h) if statistic == "u" else None
    return xp.asarray(reduce_statistic(xp, total, diag, n, statistic))  # a 0-d array, not a NumPy scalar
