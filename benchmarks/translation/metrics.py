"""BLEU and chrF (sacrebleu), and head diversity per attention kind."""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch

from attention_adapter import head_diversity

from .data import PAD
from .model import KINDS

__all__ = ["corpus_scores", "diversity_by_kind"]


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> Dict:
    """Corpus BLEU (Papineni et al. 2002) and chrF (Popović 2015) with sacrebleu's defaults (13a).

    Returns ``{"bleu", "chrf", "bleu_signature", "chrf_signature", "bleu_detail"}`` (scores in 0-100).
    """
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"expected as many hypotheses as references, received {len(hypotheses)} and {len(references)}")
    bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
    b = bleu.corpus_score(list(hypotheses), [list(references)])
    c = chrf.corpus_score(list(hypotheses), [list(references)])
    return {"bleu": float(b.score), "chrf": float(c.score), "bleu_signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature()), "bleu_detail": str(b)}


def diversity_by_kind(model, src: torch.Tensor, tgt_in: torch.Tensor) -> Dict[str, Dict[str, float]]:
    """Mean over the modules of each attention kind of the head-output cosine and the map JS divergence.

    :func:`attention_adapter.head_diversity` in eval mode on one batch; query positions are the
    non-padding source tokens for encoder self-attention and the non-padding target tokens for the
    decoder's two kinds. Returns ``{kind: {"output_cos", "map_js", "modules"}}``.
    """
    model.eval()
    out: Dict[str, Dict[str, float]] = {}
    for kinds, mask in ((("self",), src != PAD), (("decoder_self", "cross"), tgt_in != PAD)):
        heads = model.head_selection(kinds=kinds).build(model, skip_frozen=False)
        with torch.no_grad():
            res = head_diversity(heads, lambda: model(src, tgt_in), mask=mask.long())
        kind_of = {s.name: s.attention for s in heads.sites}
        for k in kinds:
            rows = [d.summary() for n, d in res.items() if kind_of[n] == k]
            out[k] = {"output_cos": float(np.mean([r["output_cos"] for r in rows])),
                      "map_js": float(np.mean([r["map_js"] for r in rows])), "modules": len(rows)}
    return out
