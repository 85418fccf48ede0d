"""Principal coordinates of stacks of head particles (the plane of :class:`HeadRecorder` pictures).

A module of its own so that :mod:`attention_adapter.recorder` (which records) and
:mod:`attention_adapter.plotting` (which draws) both use it without importing each other.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from particlesampling import validation

__all__ = ["principal_coordinates"]


def principal_coordinates(snapshots: Sequence[torch.Tensor], k: int = 2) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Project stacks of head particles on the first ``k`` principal components of all of them.

    One basis is fitted to every row of every stack (centred by their joint mean), so that runs
    projected together can be compared in the same plane.

    Parameters
    ----------
    snapshots : sequence of tensors, each of shape (T_r, M, P)
        The same ``P`` for all (e.g. :meth:`HeadRecorder.snapshots` of several runs).
    k : int
        ``1 <= k <= min(sum_r T_r M, P)``.

    Returns
    -------
    coords : list of tensors, each of shape (T_r, M, k), float32
    explained : (k,) float32 tensor, fraction of the variance explained by each component
    """
    if not snapshots or any(not isinstance(s, torch.Tensor) or s.dim() != 3 for s in snapshots):
        raise ValueError("expected a non-empty sequence of (T, M, P) tensors, received "
                         f"{[tuple(getattr(s, 'shape', ())) for s in snapshots]}")
    p = snapshots[0].shape[2]
    if any(s.shape[2] != p for s in snapshots):
        raise ValueError(f"expected snapshots with the same P, received shapes {[tuple(s.shape) for s in snapshots]}")
    rows = sum(s.shape[0] * s.shape[1] for s in snapshots)
    k = validation.check_int("k", k, minimum=1)
    if k > min(rows, p):
        raise ValueError(f"expected 1 <= k <= {min(rows, p)}, received {k!r}")
    flat = torch.cat([s.reshape(-1, p) for s in snapshots]).double()
    flat = flat - flat.mean(0, keepdim=True)
    _, sv, vh = torch.linalg.svd(flat, full_matrices=False)
    var = sv**2
    explained = var[:k] / var.sum().clamp_min(1e-300)
    projected = flat @ vh[:k].T
    coords, start = [], 0
    for s in snapshots:
        n = s.shape[0] * s.shape[1]
        coords.append(projected[start:start + n].reshape(s.shape[0], s.shape[1], k).float())
        start += n
    return coords, explained.float()
