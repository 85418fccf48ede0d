"""The Stein direction of particles spread over processes (``torch.distributed``): each rank its rows.

Rank ``r`` holds rows ``I_r`` (``n_r`` of them, shards may be uneven or empty) of the particles ``X``
and scores ``S`` of one particle system of ``n = sum_r n_r`` particles, and computes its rows of

.. math::

    \\phi(x_i) = \\frac{1}{n} \\sum_{j=1}^{n} \\big[ k(x_j, x_i) s_j + r \\nabla_{x_j} k(x_j, x_i) \\big]
               = \\frac{1}{n} (K S + r R)_i, \\qquad i \\in I_r

(Liu & Wang 2016, eq. 8), which needs every particle and every score: they are all-gathered, and
each rank evaluates the block ``K[I_r, :]`` with the tiled path's block formulas
(:func:`particlesampling.tiled.block_stein_terms`). Time ``O(n_r n d)`` and memory ``O(n_r n + n d)``
per rank.

**Exact median bandwidth across ranks.** The median conventions need order statistics of all
``n^2`` squared distances; each rank holds the ``n_r x n`` block ``D2[I_r, :]`` (which it needs
for its kernel rows anyway), and the blocks of all ranks hold every entry once. The order
statistics of their union are found as in one process (:mod:`particlesampling.selection`), with
the counts and values exchanged over the ranks; every rank then takes the same decisions on the
same exchanged numbers and obtains the same exact values:

* ``n^2 < 8 * BRACKET_SAMPLE`` (n < 725): every rank's block is all-gathered, padded to the largest
  shard (``n^2 b`` bytes for even shards, under 2 MiB in float32 and 4 MiB in float64; up to ``W``
  times that when one rank holds every row), and selected on every rank;
* otherwise, bracketing (Floyd & Rivest 1975): each rank draws its share ``M_r`` of a sample of
  ``M = bracket_sample_size(n^2)`` entries uniformly from its own block (``M_r`` proportional to
  ``n_r``), the shares are all-gathered, and the sample brackets the wanted ranks; each rank counts
  its entries below the bracket and keeps those inside it (about ``5 n^2 / sqrt(M)`` over all ranks,
  a few per cent); the counts are all-gathered and verify the bracket, and the kept values are
  all-gathered and selected;
* if the bracket misses (probability below 1e-6), or would gather more than
  :data:`MAX_GATHERED` values (n above about 29,000), a radix selection on the bit patterns
  (:func:`particlesampling.selection.blocked_order_statistics` with ``combine``) histograms each
  rank's block and sums the 65,536-bin histograms over the ranks (one all-reduce per pass: 2
  passes for float32, 4 for float64).

The entries themselves are computed as by :mod:`particlesampling.tiled` (Gram trick on the
particles centred on their common mean), so the bandwidth equals the single-process one to float
rounding, with the same conventions, guards and floor (:mod:`particlesampling.bandwidths`). No
approximation is offered.

Supported, as for the tiled path: radial kernels (``RBF``, ``IMQ``); the scalar median conventions
(``"liu_wang"``, ``"an2020"``, ``"blackjax"``, ``"numpyro"``), fixed bandwidths (scalar or per
dimension) and ``Scaled`` versions of those. Others (``"pyro"``, ``MaxKSD``, callables; the linear
and random-feature kernels) raise a ValueError.

**Communication per call**, for ``W`` ranks, ``b`` bytes per number (4 or 8), ``m = max_r n_r``
(the padded shard) and ``d`` dimensions (collective payloads, per rank;
:func:`particlesampling.distributed.communication_volume` computes them):

* the row counts: an all-gather of one int64 per rank (receives ``8 W`` bytes);
* particles and scores: one all-gather of the padded ``(m, 2d)`` shard: sends ``2 m d b`` bytes,
  receives ``2 W m d b`` (``= 2 n d b`` for even shards);
* a median bandwidth (:func:`particlesampling.distributed.communication_volume` gives the bytes):
  below ``n = 725``, an all-gather of two int64 per rank and one of the padded blocks
  (``W max_r(n_r) n b`` bytes received); above, an all-gather of the sample shares
  (``W max_r(M_r) b`` bytes received, ``M <= 65,536``), one of two int64 per rank and one of the
  kept values padded to the largest rank's count (about ``5 n^2 / sqrt(M)`` values in all, e.g.
  1.25 million, 5 MB in float32, at n = 8,000); in the radix fallback, one all-reduce of
  ``G x 65,536`` int64 counts per pass (``G`` = 1, or 2 when the two ranks of a midpoint median
  fall in different bins); none for a fixed bandwidth;
* the information (mean kernel value, norms): one all-reduce of 3 numbers (``3 b`` bytes).

A ring all-gather moves ``(W - 1) / W`` of the received bytes over each link and a ring all-reduce
``2 (W - 1) / W`` times its payload, so per rank and step the traffic is about
``2 n d b`` plus the median's exchange: it does not shrink as ranks are added (every rank needs every
particle), while the arithmetic, ``O(n^2 d / W)`` per rank, does. ``docs/distributed.md`` states the
resulting model of time per step against ``W``.
"""

from __future__ import annotations

from typing import Any

from .._backend import check_same_shape, device_of, host_view_capable, is_torch_array, namespace, sqdist_block
from ..bandwidths import get_bandwidth
from ..kernels import get_kernel, offdiagonal_mean_from_sums
from ..selection import (BRACKET_SAMPLE, _sample_positions, blocked_order_statistics, bracket_sample_size,
                         expected_bracket_values, gathered_order_statistics)
from ..stein_terms import assemble_direction, check_finite_inputs, check_repulsion, squared_norm_total
from ..tiled import block_stein_terms, centre, check_blocked_rule, rule_value, scaled_for_distances
from ._comm import RankExchange, ShardLayout, all_gather_rows, all_reduce_sum, counts_combiner, shard_layout

__all__ = ["sharded_stein_direction", "sharded_stein_direction_with_info", "check_shard", "sample_shares",
           "median_regime", "GATHER_ALL_BELOW", "MAX_GATHERED"]

#: unions of fewer squared distances than this are all-gathered whole for the median (module docstring)
GATHER_ALL_BELOW = 8 * BRACKET_SAMPLE
#: most values the bracketing pass may gather over all ranks (expected); above, the radix passes
MAX_GATHERED = 1 << 24


def sample_shares(sizes, total_values: int) -> tuple:
    """Entries of the bracketing sample each rank draws from its block: ``m = bracket_sample_size(
    total_values)`` split in proportion to the row counts ``sizes`` (cumulative rounding: they add up
    to ``m``)."""
    m, n = bracket_sample_size(total_values), sum(sizes)
    cum = [0]
    for size in sizes:
        cum.append(cum[-1] + size)
    bounds = [m * c // n for c in cum]
    return tuple(bounds[r + 1] - bounds[r] for r in range(len(sizes)))


def median_regime(n: int) -> str:
    """How the sharded direction finds a median of ``n`` particles (module docstring): ``"gather"``
    (every value), ``"bracket"`` (a sample, the counts, the kept values) or ``"radix"``
    (histograms only: the bracket would be expected to gather more than :data:`MAX_GATHERED`
    values around the middle rank)."""
    total = n * n
    if total < GATHER_ALL_BELOW:
        return "gather"
    if expected_bracket_values(bracket_sample_size(total), total, [total // 2]) > MAX_GATHERED:
        return "radix"
    return "bracket"


def _order_statistics_over_ranks(block, ks, layout: ShardLayout, group):
    """Exact order statistics ``ks`` of the union of every rank's ``D2`` block (module docstring)."""
    import torch

    block = block.detach()  # order statistics carry no gradient
    total = layout.total * layout.total
    exchange = RankExchange(block.device, layout.rank, layout.world, group, dtype=block.dtype)
    # on the CPU the passes run on a NumPy view (faster masks than torch's); on a GPU, on the tensor
    local = block.numpy() if host_view_capable(block) else block
    regime = median_regime(layout.total)
    dtype_name = str(block.dtype).split(".")[-1]
    combine = counts_combiner(block.device, group)
    if regime == "gather":
        return gathered_order_statistics(lambda: (local,), ks, exchange)
    if regime == "radix":
        return blocked_order_statistics(lambda: (local,), ks, dtype_name, combine=combine)
    shares = sample_shares(layout.sizes, total)
    mine = shares[layout.rank]
    flat = block.reshape(-1)
    picked = flat[torch.tensor(_sample_positions(flat.shape[0], mine), device=block.device)] if mine else flat[:0]
    sample = all_gather_rows(picked.reshape(-1, 1), ShardLayout(shares, layout.rank), group).reshape(-1).cpu().numpy()
    return blocked_order_statistics(lambda: (local,), ks, dtype_name, sample=sample, total=total, combine=combine,
                                    exchange=exchange)


def check_shard(particles, scores, repulsion):
    """Check this rank's rows: torch tensors ``(n_r, d)`` of one real floating dtype and device,
    ``n_r >= 0``, ``d >= 1``, not requiring gradients, and a finite ``repulsion``; return the namespace."""
    if not (is_torch_array(particles) and is_torch_array(scores)):
        raise TypeError(f"expected particles and scores as torch tensors (the sharded direction runs on "
                        f"torch.distributed), received {type(particles).__name__} and {type(scores).__name__}")
    xp = namespace(particles, scores)
    shape = tuple(particles.shape)
    if len(shape) != 2 or shape[1] < 1:
        raise ValueError(f"expected this rank's particles of shape (n_r, d) with d >= 1, received shape {shape}")
    if not xp.isdtype(particles.dtype, "real floating"):
        raise TypeError(f"expected particles of a real floating dtype, received {particles.dtype}")
    check_same_shape(particles, scores, "particles", "scores")
    if particles.requires_grad or scores.requires_grad:
        raise ValueError("expected particles and scores outside autograd (the all-gathers of the sharded direction "
                         "carry no gradient); received tensors that require gradients: pass .detach()")
    if particles.device != scores.device:
        raise ValueError(f"expected scores on the particles' device {particles.device}, received {scores.device}")
    check_repulsion(repulsion)
    return xp


def sharded_stein_direction_with_info(particles, scores, kernel=None, bandwidth=None, repulsion: float = 1.0, *,
                                      group: Any = None, layout: ShardLayout | None = None, check_finite: bool = True):
    """This rank's rows of the Stein direction and the :class:`~particlesampling.SteinInfo` of all ``n``.

    Parameters
    ----------
    particles : torch.Tensor, shape (n_r, d)
        This rank's particles (rows ``offset .. offset + n_r - 1`` of the particle system, ranks in
        order); ``n_r`` may differ between ranks and may be 0.
    scores : torch.Tensor, shape (n_r, d)
        ``grad log p`` at this rank's particles.
    kernel, bandwidth, repulsion :
        As for :func:`particlesampling.stein_direction` (supported kernels and bandwidths: module
        docstring).
    group : torch.distributed.ProcessGroup, optional
        The ranks sharing the particle system (default: the default group).
    layout : ShardLayout, optional
        The row counts of every rank, if already known (:func:`shard_layout`); saves one all-gather.
    check_finite : bool
        As for :func:`particlesampling.stein_direction`: checked on the gathered rows, so every
        rank raises the same :class:`~particlesampling.NonFiniteError`, naming rows of the whole
        system (this rank's row ``i`` is row ``layout.offset + i``).

    Returns
    -------
    phi : torch.Tensor, shape (n_r, d)
        This rank's rows of ``phi = (K S + repulsion R) / n``.
    info : SteinInfo
        Of the whole system, the same on every rank: ``bandwidth`` (0-d or ``(d,)``),
        ``mean_kernel``, ``driving_norm``, ``repulsion_norm`` (0-d tensors).

    A collective: every rank of ``group`` must call it with the same settings. The settings are
    checked before the first collective; an error on one rank only (its own rows' shape, say) leaves
    the other ranks waiting in the first collective, as with any ``torch.distributed`` call.
    """
    xp = check_shard(particles, scores, repulsion)
    repulsion = check_repulsion(repulsion)
    if not isinstance(check_finite, bool):
        raise TypeError(f"expected check_finite as a bool, received {check_finite!r}")
    kern = get_kernel(kernel)
    if not getattr(kern, "is_radial", False):
        raise ValueError(f"the sharded direction supports radial kernels (RBF, IMQ), received {type(kern).__name__}")
    rule = get_bandwidth(bandwidth)
    check_blocked_rule(rule, "the sharded direction")  # before any collective
    if layout is None:
        layout = shard_layout(particles, group)
    elif not isinstance(layout, ShardLayout) or layout.sizes[layout.rank] != particles.shape[0]:
        raise ValueError(f"expected layout as the ShardLayout of these rows ({particles.shape[0]} on this rank), "
                         f"received {layout!r}")
    n, d = layout.total, particles.shape[1]
    if n < 1:
        raise ValueError("expected at least one particle over all ranks, received none")
    both = all_gather_rows(xp.concat([particles, scores], axis=1), layout, group)
    x_all, s_all = both[:, :d], both[:, d:]
    if check_finite:  # on the gathered rows: every rank sees the same rows and raises alike
        check_finite_inputs(xp, x_all, s_all, where="the sharded Stein direction")
    a, b = layout.offset, layout.offset + particles.shape[0]
    xc, xx = centre(xp, x_all)
    d2_of_xc = []

    def order_statistics(ks):  # exact, over the blocks of all ranks
        d2_of_xc.append(sqdist_block(xp, xc[a:b, :], xx[a:b], xc, xx, diagonal_at=a))
        return _order_statistics_over_ranks(d2_of_xc[0], ks, layout, group)

    h = rule_value(xp, rule, x_all, order_statistics, where="the sharded direction")
    h = xp.asarray(h, dtype=particles.dtype, device=device_of(particles))
    if h.ndim == 0 and d2_of_xc:
        d2 = d2_of_xc[0]
    else:
        xs = scaled_for_distances(xp, xc, h)
        xss = xp.sum(xs * xs, axis=1)
        d2 = sqdist_block(xp, xs[a:b, :], xss[a:b], xs, xss, diagonal_at=a)
    driving, rep, rowsum = block_stein_terms(xp, kern, d2, h, xc[a:b, :], xc, s_all)
    totals = all_reduce_sum(xp.stack([xp.sum(rowsum), squared_norm_total(xp, driving),
                                      squared_norm_total(xp, rep)]), group)
    k0 = kern.value(xp.zeros((), dtype=particles.dtype, device=device_of(particles)))
    mean_k = offdiagonal_mean_from_sums(xp, totals[0], float(n) * k0, n, like=particles)
    return assemble_direction(xp, driving, rep, repulsion, h, mean_k, n=n, norm_totals=(totals[1], totals[2]))


def sharded_stein_direction(particles, scores, kernel=None, bandwidth=None, repulsion: float = 1.0, *,
                            group: Any = None, layout: ShardLayout | None = None, check_finite: bool = True):
    """This rank's rows ``(n_r, d)`` of the Stein direction of particles spread over the ranks; see
    :func:`sharded_stein_direction_with_info`."""
    return sharded_stein_direction_with_info(particles, scores, kernel, bandwidth, repulsion, group=group,
                                             layout=layout, check_finite=check_finite)[0]
