"""Accuracy, calibration, head importance and pruning curves, diversity summaries."""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attention_adapter import head_diversity

from .head_gates import HeadGates

__all__ = ["ECE_BINS", "classification_metrics", "predict", "head_importance", "pruning_curve", "diversity_summary"]

ECE_BINS = 15
Batch = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # ids, mask, labels


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
    """Accuracy, mean negative log-likelihood (nats) and expected calibration error.

    ECE (Guo et al. 2017): the confidence ``max_c p_c`` in ``ECE_BINS`` equal-width bins on ``[0, 1]``,
    ``sum_b (n_b / n) |accuracy_b - confidence_b|``.
    """
    logits = logits.double()
    logp = torch.log_softmax(logits, -1)
    nll = float(F.nll_loss(logp, labels))
    conf, pred = logp.exp().max(-1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, ECE_BINS + 1, dtype=torch.float64)
    idx = torch.bucketize(conf, edges[1:-1], right=True)
    ece = 0.0
    for b in range(ECE_BINS):
        sel = idx == b
        if sel.any():
            ece += float(sel.double().mean() * (correct[sel].mean() - conf[sel].mean()).abs())
    return {"accuracy": float(correct.mean()), "nll": nll, "ece": ece}


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[Batch], masks=None, sites=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels over ``batches`` in eval mode, optionally with heads masked (pruned)."""
    model.eval()
    out, ys = [], []
    gates = HeadGates(sites or model.gate_sites(), masks=masks) if masks else None
    if gates is not None:
        gates.__enter__()
    try:
        for ids, mask, y in batches:
            out.append(model(ids, mask))
            ys.append(y)
    finally:
        if gates is not None:
            gates.__exit__(None, None, None)
    return torch.cat(out), torch.cat(ys)


def head_importance(model: nn.Module, batches: Iterable[Batch]) -> Dict[str, torch.Tensor]:
    """Michel et al. (2019, eq. 2) importance ``E |dL/dg_h|`` of every head, normalised per layer (L2).

    Returns ``{site name: (M,) tensor}``; computed in eval mode (no dropout), gradients of the model's
    parameters are cleared afterwards.
    """
    model.eval()
    sites = model.gate_sites()
    total = {n: torch.zeros(m) for n, _, m in sites}
    with HeadGates(sites, importance=True) as gates:
        for ids, mask, y in batches:
            loss = F.cross_entropy(model(ids, mask), y)
            grads = torch.autograd.grad(loss, list(gates.gates.values()))
            for (n, _), g in zip(gates.gates.items(), grads):
                total[n] += g.abs().detach()
    model.zero_grad(set_to_none=True)
    return {n: v / v.norm().clamp_min(1e-20) for n, v in total.items()}


def pruning_ks(total_heads: int) -> List[int]:
    """``1, 2, 4, ...`` below the total number of heads."""
    ks, k = [], 1
    while k < total_heads:
        ks.append(k)
        k *= 2
    return ks


def pruning_curve(model: nn.Module, importance: Dict[str, torch.Tensor], batches: Sequence[Batch]) -> List[Dict]:
    """Test accuracy after masking the ``k`` least important heads (over all modules), ``k = 1, 2, 4, ...``."""
    names = list(importance)
    flat = torch.cat([importance[n] for n in names])
    owner = [(n, h) for n in names for h in range(len(importance[n]))]
    order = torch.argsort(flat, stable=True).tolist()
    curve = []
    for k in pruning_ks(len(owner)):
        masks = {n: torch.ones(len(importance[n])) for n in names}
        for i in order[:k]:
            n, h = owner[i]
            masks[n][h] = 0.0
        logits, y = predict(model, batches, masks=masks)
        curve.append({"k": k, **classification_metrics(logits, y)})
    return curve


def diversity_summary(model: nn.Module, batch: Batch) -> Dict[str, Dict[str, float]]:
    """Per attention module: mean off-diagonal parameter cosine per role, head-output cosine, map
    Jensen–Shannon divergence and Lin's redundancy (:func:`attention_adapter.head_diversity`), in eval mode."""
    model.eval()
    ids, mask, _ = batch
    if max(m for _, _, m in model.gate_sites()) < 2:
        return {}  # one head per module: no pair to compare
    heads = model.head_selection().build(model, skip_frozen=False)
    with torch.no_grad():
        # query positions: the tokens for a transformer; the self-attentive hops have one "query"
        query_mask = None if hasattr(model, "last_maps") else mask
        result = head_diversity(heads, lambda: model(ids, mask), mask=query_mask)
    return {name: d.summary() for name, d in result.items()}
