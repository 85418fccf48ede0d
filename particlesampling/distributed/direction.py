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
for its kernel rows anyway). A radix selection on the bit patterns
(:func:`particlesampling.selection.blocked_order_statistics` with ``combine``) histograms each rank's
block and sums the 65,536-bin histograms over the ranks (one all-reduce per pass: 2 passes for
float32, 4 for float64); every rank then takes the same decisions, so all of them obtain the exact
order statistics of the union of the blocks, i.e. of all ``n^2`` entries. The entries themselves are
computed as by :mod:`particlesampling.tiled` (Gram trick on the particles centred on their common
mean), so the bandwidth equals the single-process one to float rounding, with the same conventions,
guards and floor (:mod:`particlesampling.bandwidths`). No approximation is offered.

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
* a median bandwidth: one all-reduce of ``G x 65,536`` int64 counts per radix pass (``G`` = 1, or
  2 when the two ranks of a midpoint median fall in different bins): ``524,288 G`` bytes per pass,
  2 passes (float32) or 4 (float64); none for a fixed bandwidth;
* the information (mean kernel value, norms): one all-reduce of 3 numbers (``3 b`` bytes).

A ring all-gather moves ``(W - 1) / W`` of the received bytes over each link and a ring all-reduce
``2 (W - 1) / W`` times its payload, so per rank and step the traffic is about
``2 n d b + passes * (0.5 to 1) MiB``: it does not shrink as ranks are added (every rank needs every
particle), while the arithmetic, ``O(n^2 d / W)`` per rank, does. ``docs/distributed.md`` states the
resulting model of time per step against ``W``.
"""

from __future__ import annotations

from typing import Any

from .._backend import check_same_shape, device_of, is_torch_array, namespace, sqdist_block
from ..bandwidths import get_bandwidth
from ..kernels import get_kernel, offdiagonal_mean_from_sums
from ..selection import blocked_order_statistics
from ..stein_terms import assemble_direction, check_repulsion, squared_norm_total
from ..tiled import block_stein_terms, centre, check_blocked_rule, rule_value, scaled_for_distances
from ._comm import ShardLayout, all_gather_rows, all_reduce_sum, counts_combiner, shard_layout

__all__ = ["sharded_stein_direction", "sharded_stein_direction_with_info", "check_shard"]


def check_shard(particles, scores, repulsion):
    """Check this rank's rows: torch tensors ``(n_r, d)`` of one real floating dtype and device,
    ``n_r >= 0``, ``d >= 1``, and a finite ``repulsion``; return the namespace."""
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
    if particles.device != scores.device:
        raise ValueError(f"expected scores on the particles' device {particles.device}, received {scores.device}")
    check_repulsion(repulsion)
    return xp


def sharded_stein_direction_with_info(particles, scores, kernel=None, bandwidth=None, repulsion: float = 1.0, *,
                                      group: Any = None, layout: ShardLayout | None = None):
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
    a, b = layout.offset, layout.offset + particles.shape[0]
    xc, xx = centre(xp, x_all)
    d2_of_xc = []

    def order_statistics(ks):  # exact, over the blocks of all ranks
        d2_of_xc.append(sqdist_block(xp, xc[a:b, :], xx[a:b], xc, xx, diagonal_at=a))
        dtype_name = str(particles.dtype).split(".")[-1]
        return blocked_order_statistics(lambda: (d2_of_xc[0],), ks, dtype_name,
                                        combine=counts_combiner(device_of(particles), group))

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
                            group: Any = None, layout: ShardLayout | None = None):
    """This rank's rows ``(n_r, d)`` of the Stein direction of particles spread over the ranks; see
    :func:`sharded_stein_direction_with_info`."""
    return sharded_stein_direction_with_info(particles, scores, kernel, bandwidth, repulsion, group=group,
                                             layout=layout)[0]
