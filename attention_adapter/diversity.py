"""Head diversity metrics, per attention layer.

Pure functions on tensors (each says its shapes), and :func:`head_diversity`, which gathers them for
every attention module of a model:

* :func:`pairwise_cosine` of head *parameters* (the particles, ``M x P``);
* the cosine similarity of head *circuits* (QK and OV, :func:`attention_adapter.spaces.circuit_similarity`,
  from ``d_head x d_head`` products), insensitive to the reparametrisations that leave a head's
  function unchanged;
* :func:`head_output_similarity`: cosine similarity of head *outputs* on a batch;
* :func:`attention_map_distance`: Jensen–Shannon divergence between heads' attention maps
  (as in Clark et al. 2019, "What does BERT look at?"), averaged over batch and query positions;
* :func:`lin_redundancy`: Lin et al. (2017)'s ``||A A^T - I||_F`` with ``A`` the ``M x S`` matrix
  stacking the heads' attention distributions of one query, averaged over batch and queries (0 for
  one-hot, mutually disjoint heads; ``sqrt(M (M - 1))`` for identical one-hot heads).

Lower similarity / higher distance means more diverse heads.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional

import torch
from torch import nn

from .capture import HeadCapture
from .particles import HeadParticles, head_particles_of
from .spaces import circuit_particles, circuit_similarity, circuit_structure

__all__ = [
    "pairwise_cosine",
    "mean_offdiagonal",
    "head_output_similarity",
    "attention_map_distance",
    "lin_redundancy",
    "parameter_similarity",
    "LayerDiversity",
    "head_diversity",
]


def _check_dim(name: str, x: Any, ndim: int, shape_text: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected {name} as a torch.Tensor {shape_text}, received {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"expected {name} of shape {shape_text}, received shape {tuple(x.shape)}")


def pairwise_cosine(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Cosine similarity of every pair of rows: ``(M, P) -> (M, M)``."""
    _check_dim("x", x, 2, "(M, P)")
    xf = x.float()
    u = xf / xf.norm(dim=1, keepdim=True).clamp_min(eps)
    return u @ u.T


def mean_offdiagonal(mat: torch.Tensor) -> torch.Tensor:
    """Mean of the off-diagonal entries of an ``(M, M)`` matrix (0 when ``M = 1``)."""
    _check_dim("mat", mat, 2, "(M, M)")
    m = mat.shape[0]
    if m < 2:
        return mat.new_zeros(())
    return (mat.sum() - mat.diagonal().sum()) / (m * (m - 1))


def head_output_similarity(outputs: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of head outputs ``(B, T, M, d) -> (M, M)`` (each head's outputs flattened)."""
    _check_dim("outputs", outputs, 4, "(B, T, M, d)")
    m = outputs.shape[2]
    return pairwise_cosine(outputs.movedim(2, 0).reshape(m, -1))


def _query_weights(maps: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    b, _, t, _ = maps.shape
    if mask is None:
        return maps.new_full((b, t), 1.0 / (b * t))
    if tuple(mask.shape) != (b, t):
        raise ValueError(f"expected mask of shape (B, T) = {(b, t)}, received {tuple(mask.shape)}")
    w = mask.to(maps.dtype)
    return w / w.sum().clamp_min(1.0)


def attention_map_distance(maps: torch.Tensor, mask: Optional[torch.Tensor] = None,
                           eps: float = 1e-12) -> torch.Tensor:
    """Jensen–Shannon divergence (nats, in ``[0, log 2]``) between heads' attention distributions.

    Parameters
    ----------
    maps : tensor, shape (B, M, T, S)
        Attention probabilities (rows sum to 1 over ``S``).
    mask : tensor, shape (B, T), optional
        Which query positions count (padding excluded).

    Returns
    -------
    (M, M) tensor: ``JS(A_i, A_j)`` averaged over batch and query positions.
    """
    _check_dim("maps", maps, 4, "(B, M, T, S)")
    p = maps.float()
    w = _query_weights(p, mask)  # (B, T)
    m = p.shape[1]
    logp = p.clamp_min(eps).log()
    ent = (p * logp).sum(-1)  # (B, M, T): -H(p_i)
    rows = []
    for i in range(m):
        mid = 0.5 * (p[:, i:i + 1] + p)  # (B, M, T, S)
        cross = (mid * mid.clamp_min(eps).log()).sum(-1)  # -H(mid)
        js = 0.5 * (ent[:, i:i + 1] + ent) - cross  # (B, M, T)
        rows.append((js * w[:, None, :]).sum(dim=(0, 2)))
    out = torch.stack(rows)
    return out.clamp_min(0.0)


def lin_redundancy(maps: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Lin et al. (2017)'s ``||A A^T - I||_F``, ``A`` = the heads' rows for one query (``M x S``).

    Parameters
    ----------
    maps : tensor, shape (B, M, T, S)
    mask : tensor, shape (B, T), optional

    Returns
    -------
    0-d tensor: the Frobenius norm averaged over batch and query positions.
    """
    _check_dim("maps", maps, 4, "(B, M, T, S)")
    a = maps.float().transpose(1, 2)  # (B, T, M, S)
    gram = a @ a.transpose(-1, -2)  # (B, T, M, M)
    eye = torch.eye(a.shape[2], dtype=gram.dtype, device=gram.device)
    norms = (gram - eye).flatten(-2).norm(dim=-1)  # (B, T)
    return (norms * _query_weights(maps.float(), mask)).sum()


def parameter_similarity(heads: HeadParticles) -> Dict[str, torch.Tensor]:
    """``{group name: (M, M) cosine similarity of the group's head particles}``."""
    return {g.name: pairwise_cosine(g.gather("data")) for g in heads.groups}


class LayerDiversity(NamedTuple):
    """Diversity of the heads of one attention module.

    Attributes
    ----------
    parameter_cosine : dict label -> (M, M)
        One entry per particle group of the module (``"q"``, ``"k"``, ``"v"`` or ``"qkv"``).
    output_cosine : (M, M) or None
    map_distance : (M, M) or None
        Jensen–Shannon divergences.
    lin_redundancy : 0-d or None
    """

    parameter_cosine: Dict[str, torch.Tensor]
    output_cosine: Optional[torch.Tensor]
    map_distance: Optional[torch.Tensor]
    lin_redundancy: Optional[torch.Tensor]
    circuit_cosine: Optional[Dict[str, torch.Tensor]] = None

    def summary(self) -> Dict[str, float]:
        """Mean off-diagonal values as floats (``param_cos_<label>``, ``circuit_cos_<label>``, ``output_cos``,
        ``map_js``, ``lin``)."""
        out = {f"param_cos_{k}": float(mean_offdiagonal(v)) for k, v in self.parameter_cosine.items()}
        for k, v in (self.circuit_cosine or {}).items():
            out[f"circuit_cos_{k}"] = float(mean_offdiagonal(v))
        if self.output_cosine is not None:
            out["output_cos"] = float(mean_offdiagonal(self.output_cosine))
        if self.map_distance is not None:
            out["map_js"] = float(mean_offdiagonal(self.map_distance))
        if self.lin_redundancy is not None:
            out["lin"] = float(self.lin_redundancy)
        return out


def head_diversity(model: Any, forward: Optional[Callable[[], Any]] = None, *,
                   mask: Optional[torch.Tensor] = None, **particle_options) -> Dict[str, LayerDiversity]:
    """Diversity metrics for every attention module.

    Parameters
    ----------
    model : nn.Module, HeadParticles or RepulsiveHeads
        Where the heads are; a model is wrapped in ``HeadParticles(model, skip_frozen=False,
        **particle_options)``.
    forward : callable, optional
        ``forward()`` runs the model on a batch (e.g. ``lambda: model(x)``); without it only the
        parameter similarities are computed. Put the model in ``eval()`` mode first if dropout
        should not affect the maps.
    mask : (B, T) tensor, optional
        Valid query positions for the map metrics.

    Returns
    -------
    dict module name -> LayerDiversity
    """
    heads = head_particles_of(model)
    if heads is None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"expected an nn.Module, HeadParticles or RepulsiveHeads, received {type(model).__name__}")
        heads = HeadParticles(model, skip_frozen=False, **particle_options)
    cap = HeadCapture(heads.sites).run(forward) if forward is not None else None
    try:  # the same heads compared by their circuits (attention_adapter.spaces)
        circuits = circuit_particles(heads, skip_frozen=False).groups
    except ValueError:  # no circuit system (e.g. a single query head with its shared key/value head)
        circuits = ()
    result: Dict[str, LayerDiversity] = {}
    for site in heads.sites:
        pc = {g.name.rsplit(":", 1)[1]: pairwise_cosine(g.gather("data")) for g in heads.groups if g.site is site}
        cc = {g.name.rsplit(":", 1)[1]: circuit_similarity(circuit_structure(g, heads.include_bias), g.gather("data"))
              for g in circuits if g.site is site} or None
        oc = md = lr = None
        if cap is not None:
            if site.name in cap.outputs:
                oc = head_output_similarity(cap.outputs[site.name])
            if site.name in cap.maps:
                md = attention_map_distance(cap.maps[site.name], mask)
                lr = lin_redundancy(cap.maps[site.name], mask)
        result[site.name] = LayerDiversity(pc, oc, md, lr, cc)
    return result
