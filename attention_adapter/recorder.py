"""Keep snapshots of the head particles during training, project them by PCA and plot them.

::

    rec = HeadRecorder(heads, every=10)          # heads: RepulsiveHeads, HeadParticles or a model
    handle = rec.attach(optimizer)               # or call rec.record() yourself
    ...
    rec.plot("encoder.layers.0.self_attn:q")     # PCA trajectories of the M heads

Each snapshot stores, per group, a CPU ``float32`` copy of the ``(M, P)`` particle matrix, so the
memory is ``4 M P`` bytes per group per snapshot: restrict ``groups`` and raise ``every`` for big
models (BERT-base: 12 x 768 x 64 x 4 B ≈ 2.4 MB per group and snapshot).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .particles import HeadParticles

__all__ = ["HeadRecorder"]


def _heads_of(obj: Any) -> HeadParticles:
    if isinstance(obj, HeadParticles):
        return obj
    if hasattr(obj, "heads") and isinstance(obj.heads, HeadParticles):
        return obj.heads
    if isinstance(obj, nn.Module):
        return HeadParticles(obj, skip_frozen=False)
    raise TypeError(f"expected RepulsiveHeads, HeadParticles or an nn.Module, received {type(obj).__name__}")


class HeadRecorder:
    """Snapshots of head particles over training.

    Parameters
    ----------
    heads : RepulsiveHeads, HeadParticles or nn.Module
    every : int
        With :meth:`attach`, record after every ``every``-th optimizer step (the first step included).
    groups : sequence of str, optional
        Group names to keep (default all).
    max_snapshots : int, optional
        Keep only the most recent snapshots.
    """

    def __init__(self, heads: Any, *, every: int = 1, groups: Optional[Sequence[str]] = None,
                 max_snapshots: Optional[int] = None):
        self.heads = _heads_of(heads)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"expected every as a positive int, received {every!r}")
        if max_snapshots is not None and (isinstance(max_snapshots, bool) or not isinstance(max_snapshots, int)
                                          or max_snapshots < 1):
            raise ValueError(f"expected max_snapshots as a positive int or None, received {max_snapshots!r}")
        names = self.heads.names
        if groups is None:
            self._groups = list(self.heads.groups)
        else:
            unknown = [g for g in groups if g not in names]
            if unknown:
                raise ValueError(f"unknown group(s) {unknown}; expected names among {names}")
            self._groups = [g for g in self.heads.groups if g.name in set(groups)]
        self.every = every
        self.max_snapshots = max_snapshots
        self.steps: List[int] = []
        self._snaps: Dict[str, List[torch.Tensor]] = {g.name: [] for g in self._groups}
        self._count = 0

    @property
    def group_names(self) -> List[str]:
        return [g.name for g in self._groups]

    def __len__(self) -> int:
        return len(self.steps)

    @torch.no_grad()
    def record(self, step: Optional[int] = None) -> None:
        """Store the current particles of every kept group (``step`` defaults to a running count)."""
        self.steps.append(self._count if step is None else int(step))
        for g in self._groups:
            self._snaps[g.name].append(g.gather("data").to("cpu", torch.float32, copy=True))
        if self.max_snapshots is not None and len(self.steps) > self.max_snapshots:
            self.steps.pop(0)
            for v in self._snaps.values():
                v.pop(0)

    def attach(self, optimizer: torch.optim.Optimizer):
        """Record after every ``every``-th ``optimizer.step()``; returns a removable handle."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"expected a torch.optim.Optimizer, received {type(optimizer).__name__}")

        def _hook(opt, args, kwargs):
            if self._count % self.every == 0:
                self.record(self._count)
            self._count += 1

        return optimizer.register_step_post_hook(_hook)

    def _name(self, group: Optional[str]) -> str:
        if group is None:
            return self._groups[0].name
        if group not in self._snaps:
            raise ValueError(f"unknown group {group!r}; expected one of {self.group_names}")
        return group

    def snapshots(self, group: Optional[str] = None) -> torch.Tensor:
        """``(T, M, P)`` tensor of the recorded particles of ``group`` (default: the first group)."""
        name = self._name(group)
        if not self._snaps[name]:
            raise ValueError("no snapshot recorded yet; call record() or attach(optimizer) first")
        return torch.stack(self._snaps[name])

    def pca(self, group: Optional[str] = None, k: int = 2) -> Tuple[torch.Tensor, torch.Tensor]:
        """Project all snapshots of ``group`` on their first ``k`` principal components (fit jointly).

        Returns
        -------
        coords : (T, M, k) tensor
        explained : (k,) tensor, fraction of the variance explained by each component
        """
        snaps = self.snapshots(group)
        t, m, p = snaps.shape
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(t * m, p):
            raise ValueError(f"expected 1 <= k <= {min(t * m, p)}, received {k!r}")
        flat = snaps.reshape(t * m, p).double()
        flat = flat - flat.mean(0, keepdim=True)
        _, s, vh = torch.linalg.svd(flat, full_matrices=False)
        var = s**2
        explained = var[:k] / var.sum().clamp_min(1e-300)
        coords = (flat @ vh[:k].T).reshape(t, m, k)
        return coords.float(), explained.float()

    def plot(self, group: Optional[str] = None, ax=None):
        """Trajectories of the heads in the plane of the first two principal components.

        matplotlib is imported here (lazily). Returns the ``Axes``.
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("HeadRecorder.plot needs matplotlib (pip install matplotlib)") from exc
        name = self._name(group)
        coords, explained = self.pca(name, k=2)
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 4))
        for h in range(coords.shape[1]):
            line = ax.plot(coords[:, h, 0].numpy(), coords[:, h, 1].numpy(), lw=1, alpha=0.8)[0]
            ax.scatter(coords[0, h, 0], coords[0, h, 1], marker="o", s=12, color=line.get_color())
            ax.scatter(coords[-1, h, 0], coords[-1, h, 1], marker="*", s=40, color=line.get_color())
        ax.set_xlabel(f"PC1 ({100 * float(explained[0]):.0f}%)")
        ax.set_ylabel(f"PC2 ({100 * float(explained[1]):.0f}%)")
        ax.set_title(f"{name}: heads over {len(self.steps)} snapshots (o start, * end)")
        return ax
