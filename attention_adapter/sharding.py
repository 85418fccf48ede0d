"""Sharded head parameters (PyTorch FSDP2 ``fully_shard``, HSDP): gather full heads, write back shards.

Under ``torch.distributed.fsdp.fully_shard`` every parameter is an ``nn.Parameter`` holding a
``DTensor`` sharded along dim 0 over the ranks of a device mesh (``Shard(0)``; ``Replicate()``
on the replicate dimension of an HSDP mesh), and after ``backward()`` its ``.grad`` is a ``DTensor``
of the same placements, already reduce-scattered (averaged over the data-parallel ranks). A rank
therefore holds only some rows of a projection: for ``nn.MultiheadAttention``'s packed
``in_proj_weight`` (``[W_q; W_k; W_v]``, ``3E x E``) on 2 ranks, rank 0 holds all of ``W_q`` and
half of ``W_k``; a head block can straddle two ranks, and the output projection's heads (columns)
are split across all of them.

The adapter does not try to work on the shards. For one :meth:`RepulsiveHeads.apply`,
:class:`FullTensors` all-gathers (``DTensor.full_tensor()``) each sharded head parameter and its
gradient once, the update runs on the full ``(M, P)`` matrices exactly as in a single process
(same values on every rank, the SPOS noise included, since it is a function of ``(seed, step)``),
and :meth:`FullTensors.commit` copies each rank's own part of the new full gradient into its local
gradient shard (no communication: every rank already holds the full result). The optimizer then
steps the shards as usual, so each rank's parameters are those of a single-process run on the same
global batch.

Supported: ``DTensor`` parameters and gradients whose placements are all ``Shard(d)`` (any ``d``,
even or uneven shards) or ``Replicate()``, on any mesh (FSDP2, HSDP, any ``reshard_after_forward``,
``shard_placement_fn`` choosing another dim); plain (replicated, e.g. DDP) parameters as before.

Refused with :class:`ShardingError` (a ``ValueError``; the message names the module, the
parameter and its layout): ``FullyShardedDataParallel`` (FSDP1, flat parameters), ``Partial`` or
strided placements (tensor parallel under FSDP, unreduced gradients), a gradient whose mesh or
placements differ from its parameter's, and a plain-tensor head parameter inside a ``fully_shard``
module (an adapter built before ``fully_shard``, or ``ignored_params``, whose gradients are not
synchronised).

Every call of :func:`unshard` and :meth:`FullTensors.get` on a sharded tensor is a collective: all
ranks must make it, in the same order (the adapter does, since every rank builds the same groups).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

import torch
from torch import nn

try:  # torch.distributed is optional in some torch builds
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
except ImportError:  # pragma: no cover - builds without torch.distributed
    DTensor = Replicate = Shard = distribute_tensor = None

__all__ = ["ShardingError", "is_sharded", "unshard", "describe", "check_wrappers", "check_sharding", "FullTensors",
           "grad_version"]


class ShardingError(ValueError):
    """A head parameter (or gradient) is sharded in a way the adapter does not support."""


def is_sharded(t: Any) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (e.g. an FSDP2 parameter or gradient)."""
    return DTensor is not None and isinstance(t, DTensor)


def unshard(t: torch.Tensor) -> torch.Tensor:
    """The full tensor of a ``DTensor`` (an all-gather: a collective), ``t`` itself otherwise."""
    return t.full_tensor() if is_sharded(t) else t


def describe(t: torch.Tensor) -> str:
    """``"DTensor of global shape (48, 16), local (24, 16), mesh (2,), placements (Shard(dim=0),)"``."""
    if not is_sharded(t):
        return f"plain tensor of shape {tuple(t.shape)}"
    mesh = t.device_mesh
    names = f" {mesh.mesh_dim_names}" if mesh.mesh_dim_names else ""
    return (f"DTensor of global shape {tuple(t.shape)}, local {tuple(t.to_local().shape)}, mesh "
            f"{tuple(mesh.shape)}{names}, placements {tuple(t.placements)}")


def _unsupported_placements(t: torch.Tensor) -> list:
    return [p for p in t.placements if type(p) not in (Shard, Replicate)]


def _check_placements(t: torch.Tensor, what: str, where: str) -> None:
    bad = _unsupported_placements(t)
    if bad:
        raise ShardingError(
            f"{where}: expected {what} sharded with Shard(d) / Replicate() placements only (FSDP2 fully_shard or "
            f"HSDP), received {describe(t)}: placement(s) {', '.join(map(repr, bad))} are not supported (tensor "
            "parallel or strided sharding under FSDP, or a gradient not yet reduced)"
        )


def _where(block, module: Optional[nn.Module] = None) -> str:
    mod = "" if module is None else f" of attention module {type(module).__name__}"
    return f"parameter {block.name!r}{mod}"


def check_wrappers(model: nn.Module) -> None:
    """Refuse ``FullyShardedDataParallel`` (FSDP1) before discovery (its flat parameters hide the heads).

    Raises
    ------
    ShardingError
        A module of ``model`` is an FSDP1 ``FullyShardedDataParallel``.
    """
    if DTensor is None:  # pragma: no cover - builds without torch.distributed
        return
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP1
    except ImportError:  # pragma: no cover - FSDP1 removed
        return
    for name, m in model.named_modules():
        if isinstance(m, FSDP1):
            raise ShardingError(
                f"module {name or '<root>'!r} is wrapped in FullyShardedDataParallel (FSDP1), whose flat parameters "
                "do not keep the attention heads' layout; expected torch.distributed.fsdp.fully_shard (FSDP2) or "
                "DistributedDataParallel"
            )


def check_sharding(model: nn.Module, groups: Iterable) -> None:
    """Check, once at construction, that the head parameters are laid out in a supported way.

    Raises
    ------
    ShardingError
        A ``DTensor`` head parameter with a placement other than ``Shard``/``Replicate``; a
        plain-tensor head parameter inside a ``fully_shard`` module.
    """
    if DTensor is None:  # pragma: no cover - builds without torch.distributed
        return
    from torch.distributed.fsdp import FSDPModule

    under_fsdp2 = set()
    for m in model.modules():
        if isinstance(m, FSDPModule):
            under_fsdp2.update(id(sub) for sub in m.modules())
    for g in groups:
        for b in g.blocks:
            where = f"{_where(b, g.site.module)} at {g.site.name or '<root>'!r} (group {g.name!r})"
            if is_sharded(b.param):
                _check_placements(b.param, "the parameter", where)
            elif id(g.site.module) in under_fsdp2:
                raise ShardingError(
                    f"{where}: expected the sharded DTensor parameter of a fully_shard module, received a "
                    f"{describe(b.param)}; build RepulsiveHeads (and the optimizer) after fully_shard, outside "
                    "forward/backward, and do not pass head parameters as ignored_params (their gradients are "
                    "not synchronised across ranks)"
                )


def grad_version(grad: torch.Tensor) -> int:
    """In-place version counter of a gradient (of its local shard for a ``DTensor``)."""
    return (grad.to_local() if is_sharded(grad) else grad)._version


def _check_grad(param: torch.Tensor, grad: torch.Tensor, where: str) -> None:
    if not is_sharded(grad):
        raise ShardingError(f"{where}: expected a DTensor gradient like its parameter ({describe(param)}), "
                            f"received a {describe(grad)}")
    _check_placements(grad, "the gradient", where)
    if grad.device_mesh != param.device_mesh or tuple(grad.placements) != tuple(param.placements):
        raise ShardingError(f"{where}: expected the gradient sharded like the parameter ({describe(param)}), "
                            f"received {describe(grad)}")


class FullTensors:
    """Full values and gradients of the sharded head parameters, for one update step.

    ``get(param, source)`` returns ``param.detach()`` / ``param`` / ``param.grad`` for a plain
    parameter, and for a ``DTensor`` parameter the full tensor, all-gathered once per step and
    cached (``"param"``, the differentiable view, is not cached). Writes into the full gradient
    (:meth:`ParticleGroup.scatter_grad <attention_adapter.ParticleGroup.scatter_grad>` with
    ``full=``) reach the optimizer after :meth:`commit`, which copies each rank's shard of every
    written full gradient into its local gradient.
    """

    def __init__(self):
        self._data: Dict[int, torch.Tensor] = {}
        self._grad: Dict[int, torch.Tensor] = {}
        self._written: Dict[int, nn.Parameter] = {}

    def get(self, param: nn.Parameter, source: str, where: str = "") -> Optional[torch.Tensor]:
        if source == "grad":
            grad = param.grad
            if grad is None or not is_sharded(param):
                return grad
            full = self._grad.get(id(param))
            if full is None:
                _check_grad(param, grad, where or f"parameter of shape {tuple(param.shape)}")
                full = self._grad[id(param)] = grad.full_tensor()
            return full
        if source == "data":
            if not is_sharded(param):
                return param.detach()
            full = self._data.get(id(param))
            if full is None:
                full = self._data[id(param)] = param.detach().full_tensor()
            return full
        if source == "param":
            return unshard(param)
        raise ValueError(f"expected source 'data', 'param' or 'grad', received {source!r}")

    def grad_target(self, param: nn.Parameter, where: str = "") -> torch.Tensor:
        """The tensor to write a new gradient into: ``param.grad``, or its full tensor (see :meth:`commit`)."""
        if not is_sharded(param):
            return param.grad
        full = self.get(param, "grad", where)
        self._written[id(param)] = param
        return full

    def commit(self) -> None:
        """Copy every rank's own shard of each written full gradient into its local gradient (no communication)."""
        for key, param in self._written.items():
            grad, full = param.grad, self._grad[key]
            local = grad.to_local()
            mine = distribute_tensor(full, grad.device_mesh, grad.placements, src_data_rank=None).to_local()
            if mine.shape != local.shape:  # pragma: no cover - a DTensor whose local shard is not torch's chunk
                raise ShardingError(f"expected the local gradient shard of shape {tuple(mine.shape)} for "
                                    f"{describe(grad)}, received {tuple(local.shape)}")
            local.copy_(mine)
        self._written.clear()
