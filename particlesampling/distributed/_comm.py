"""The collectives of the sharded Stein direction, on ``torch.distributed`` (gloo on CPUs, NCCL on GPUs).

Each rank holds its own rows of particles. :func:`shard_layout` exchanges the row counts (one
all-gather of one int64 per rank), :func:`all_gather_rows` gathers every rank's rows (padded to the
largest shard, since an all-gather needs equal sizes), :func:`all_reduce_sum` sums a small tensor
over the ranks, :func:`counts_combiner` sums the radix-selection histograms of
:func:`particlesampling.selection.blocked_order_statistics` over the ranks and :class:`RankExchange`
exchanges the bracketing pass's counts and kept values (:func:`particlesampling.selection.bracket_select`).
Every function is a
collective: all ranks of the group must call it, in the same order. torch is imported here, inside
the functions only (``import particlesampling`` needs no torch).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Tuple

import numpy as np

__all__ = ["ShardLayout", "shard_layout", "all_gather_rows", "all_reduce_sum", "counts_combiner", "RankExchange",
           "world_of"]


class ShardLayout(NamedTuple):
    """Which rows of the ``n`` particles each rank holds: rank ``r`` holds rows
    ``offsets[r] .. offsets[r] + sizes[r] - 1`` of the particles listed rank after rank."""

    sizes: Tuple[int, ...]  #: rows per rank
    rank: int  #: this process's rank in the group

    @property
    def world(self) -> int:
        return len(self.sizes)

    @property
    def total(self) -> int:
        """``n``, the number of particles over all ranks."""
        return sum(self.sizes)

    @property
    def offset(self) -> int:
        """Index of this rank's first row among all ``n`` particles."""
        return sum(self.sizes[:self.rank])

    @property
    def padded(self) -> int:
        """Rows per rank in the all-gather (the largest shard)."""
        return max(self.sizes)


def _dist():
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("expected an initialised torch.distributed process group "
                           "(torch.distributed.init_process_group); received none")
    return dist


def world_of(group: Any = None) -> Tuple[int, int]:
    """``(rank, world size)`` of this process in ``group`` (None: the default group)."""
    dist = _dist()
    return dist.get_rank(group), dist.get_world_size(group)


def _all_gather(out, inp, group):
    dist = _dist()
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, inp, group=group)


def shard_layout(local, group: Any = None) -> ShardLayout:
    """The :class:`ShardLayout` of the rows ``local`` (``(n_r, d)``, a torch tensor) of every rank.

    One all-gather of one int64 per rank, and one device-to-host copy of the ``world`` sizes.
    """
    import torch

    rank, world = world_of(group)
    mine = torch.tensor([int(local.shape[0])], dtype=torch.int64, device=local.device)
    sizes = torch.empty(world, dtype=torch.int64, device=local.device)
    _all_gather(sizes, mine, group)
    return ShardLayout(tuple(int(v) for v in sizes.tolist()), rank)


def all_gather_rows(local, layout: ShardLayout, group: Any = None):
    """Every rank's rows, concatenated in rank order: ``(n, c)`` from this rank's ``(n_r, c)``.

    The shards are padded with zeros to :attr:`ShardLayout.padded` rows for the all-gather (which
    needs equal sizes), so each rank sends ``padded * c`` numbers and receives ``world`` times that.
    """
    import torch

    m, c = layout.padded, local.shape[1]
    if local.shape[0] < m:
        pad = torch.zeros((m - local.shape[0], c), dtype=local.dtype, device=local.device)
        local = torch.cat([local, pad], dim=0)
    out = torch.empty((layout.world * m, c), dtype=local.dtype, device=local.device)
    _all_gather(out, local.contiguous(), group)
    if all(s == m for s in layout.sizes):
        return out
    return torch.cat([out[r * m:r * m + s] for r, s in enumerate(layout.sizes)], dim=0)


def all_reduce_sum(t, group: Any = None):
    """The sum over the ranks of the tensor ``t`` (a new tensor; ``t`` is not modified)."""
    out = t.clone()
    _dist().all_reduce(out, group=group)
    return out


def counts_combiner(device, group: Any = None):
    """``combine(counts) -> counts summed over the ranks`` for int64 NumPy histograms, through a
    tensor on ``device`` (NCCL needs the GPU; gloo takes either)."""

    def combine(counts: np.ndarray) -> np.ndarray:
        import torch

        t = torch.from_numpy(np.ascontiguousarray(counts, dtype=np.int64)).to(device)
        _dist().all_reduce(t, group=group)
        return t.cpu().numpy()

    return combine


class RankExchange:
    """The ``exchange`` of :func:`particlesampling.selection.bracket_select` over the ranks of ``group``.

    ``counts(below, kept)``: one all-gather of two int64 per rank, summed (the per-rank kept counts
    are remembered for ``values``). ``values(kept)``: one all-gather of every rank's kept values,
    padded to the largest rank's count, concatenated in rank order: the same array on every rank.
    Both are collectives, called in the same order on every rank. Values travel through tensors on
    ``device`` (NCCL needs the GPU; gloo takes either), as ``dtype`` when given (every rank must send
    the same dtype: an empty holder's values would otherwise be NumPy's default float64).
    """

    def __init__(self, device, rank: int, world: int, group: Any = None, dtype=None):
        self.device, self.rank, self.world, self.group, self.dtype = device, rank, world, group, dtype
        self._sizes: Tuple[int, ...] | None = None

    def counts(self, below: int, kept: int) -> Tuple[int, int]:
        import torch

        mine = torch.tensor([[int(below), int(kept)]], dtype=torch.int64, device=self.device)
        every = all_gather_rows(mine, ShardLayout((1,) * self.world, self.rank), self.group).cpu().numpy()
        self._sizes = tuple(int(v) for v in every[:, 1])
        return int(every[:, 0].sum()), int(every[:, 1].sum())

    def values(self, kept: np.ndarray) -> np.ndarray:
        import torch

        sizes = self._sizes if self._sizes is not None else self._exchange_sizes(kept.shape[0])
        if sizes[self.rank] != kept.shape[0]:
            raise ValueError(f"expected {sizes[self.rank]} kept values on rank {self.rank}, received {kept.shape[0]}")
        self._sizes = None
        local = torch.from_numpy(np.ascontiguousarray(kept).reshape(-1, 1)).to(self.device)
        if self.dtype is not None:
            local = local.to(self.dtype)
        if max(sizes) == 0:
            return kept.reshape(-1)[:0]
        return all_gather_rows(local, ShardLayout(sizes, self.rank), self.group).reshape(-1).cpu().numpy()

    def _exchange_sizes(self, kept: int) -> Tuple[int, ...]:
        self.counts(0, kept)
        return self._sizes
