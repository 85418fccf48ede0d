"""The translation model: ``torch.nn.Transformer`` with per-head access, greedy and beam-search decoding.

:class:`Seq2SeqTransformer` is a pre-norm ``nn.Transformer`` (Vaswani et al. 2017; pre-norm as in
Wang et al. 2019 for stable short training), ``batch_first``, with one embedding table shared by the
source, the target and the output projection (the vocabulary is joint; Press & Wolf 2017), scaled by
``sqrt(d_model)``, and sinusoidal positions. Its attention modules are :class:`HeadwiseAttention`, a
subclass of ``nn.MultiheadAttention`` with the same parameters and the same function whose output
projection is *called as a module* on the concatenated head outputs, so a forward pre-hook on
``out_proj`` sees each head (DropHead, the disagreement regulariser); ``attention_adapter`` discovers
them as ``nn.MultiheadAttention`` and tells the three kinds apart (encoder ``"self"``, decoder
``"decoder_self"``, ``"cross"``).

Decoding: :func:`greedy_decode` and :func:`beam_search` (``<pad>`` and ``<s>`` never generated; beam ``k``,
finished hypotheses ranked by ``log p / length ** length_penalty``, fairseq's convention with its default
1.0), both incremental: :func:`next_token_logits` keeps each decoder layer's keys and values
(:class:`DecoderState`).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from attention_adapter import HeadSelection

from .data import BOS, EOS, PAD

__all__ = ["HeadwiseAttention", "Seq2SeqTransformer", "KINDS", "DecoderState", "next_token_logits", "greedy_decode",
           "beam_search", "max_output_length"]

#: the adapter's names of the three attention kinds of an encoder-decoder
KINDS = ("self", "decoder_self", "cross")


class HeadwiseAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` (``batch_first``, packed projections) computed head by head in Python.

    Same parameters and result as the parent (scaled dot-product attention, Vaswani et al. 2017,
    eq. 1), but ``out_proj`` is called as a module on the concatenated head outputs ``(B, T, M d)``,
    and ``need_weights=True, average_attn_weights=False`` returns the per-head maps ``(B, M, T, S)``.
    """

    @classmethod
    def from_module(cls, mha: nn.MultiheadAttention) -> "HeadwiseAttention":
        if not (mha.batch_first and mha._qkv_same_embed_dim and mha.bias_k is None and not mha.add_zero_attn):
            raise ValueError("expected a batch_first nn.MultiheadAttention with packed projections and no bias_kv")
        new = cls(mha.embed_dim, mha.num_heads, dropout=mha.dropout, bias=mha.in_proj_bias is not None,
                  batch_first=True)
        new.load_state_dict(mha.state_dict())
        return new

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if query.dim() != 3:
            raise ValueError(f"expected batched (B, T, E) inputs, received query of shape {tuple(query.shape)}")
        b, t, e = query.shape
        s = key.shape[1]
        m, d = self.num_heads, self.head_dim
        w, bias = self.in_proj_weight, self.in_proj_bias
        bq, bk, bv = (None, None, None) if bias is None else (bias[:e], bias[e:2 * e], bias[2 * e:])
        q = F.linear(query, w[:e], bq).reshape(b, t, m, d).transpose(1, 2)
        k = F.linear(key, w[e:2 * e], bk).reshape(b, s, m, d).transpose(1, 2)
        v = F.linear(value, w[2 * e:], bv).reshape(b, s, m, d).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)  # (B, M, T, S)
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(t, s, dtype=torch.bool, device=query.device).triu(1)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(attn_mask, float("-inf"))
            else:
                scores = scores + attn_mask
        if key_padding_mask is not None:
            if key_padding_mask.dtype == torch.bool:
                scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
            else:
                scores = scores + key_padding_mask[:, None, None, :]
        p = torch.softmax(scores, dim=-1)
        p_drop = F.dropout(p, self.dropout, self.training) if self.dropout > 0 else p
        heads = torch.matmul(p_drop, v)  # (B, M, T, d)
        out = self.out_proj(heads.transpose(1, 2).reshape(b, t, e))
        if not need_weights:
            return out, None
        return out, (p.mean(1) if average_attn_weights else p)


def sinusoid(length: int, width: int) -> torch.Tensor:
    """Vaswani et al. (2017, sec. 3.5) positional encodings ``(length, width)``."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    i = torch.arange(0, width, 2, dtype=torch.float32)
    angle = pos / torch.pow(10000.0, i / width)
    pe = torch.zeros(length, width)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder translation model; ``forward(src, tgt_in) -> logits (B, T, V)``.

    ``src`` ``(B, S)`` and ``tgt_in`` ``(B, T)`` are int64 ids padded with 0; ``tgt_in`` starts with
    ``<s>``. ``repulse_kinds``: the attention kinds :meth:`head_selection` returns by default (the
    ones the adapter acts on).
    """

    def __init__(self, vocab_size: int, *, d_model: int = 256, heads: int = 4, encoder_layers: int = 3,
                 decoder_layers: int = 3, ffn: int = 1024, dropout: float = 0.1, max_len: int = 512,
                 repulse_kinds: Sequence[str] = KINDS):
        super().__init__()
        bad = [k for k in repulse_kinds if k not in KINDS]
        if bad or not repulse_kinds:
            raise ValueError(f"expected repulse_kinds a non-empty subset of {KINDS}, received {tuple(repulse_kinds)}")
        if d_model % heads:
            raise ValueError(f"expected heads dividing d_model={d_model}, received heads={heads}")
        self.vocab_size, self.d_model, self.max_len = vocab_size, d_model, max_len
        self.repulse_kinds = tuple(repulse_kinds)
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=PAD)
        nn.init.normal_(self.embed.weight, 0.0, d_model ** -0.5)
        with torch.no_grad():
            self.embed.weight[PAD].zero_()
        self.register_buffer("positions", sinusoid(max_len, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(d_model, heads, ffn, dropout, batch_first=True, norm_first=True)
        encoder = nn.TransformerEncoder(layer, encoder_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.transformer = nn.Transformer(d_model, heads, encoder_layers, decoder_layers, ffn, dropout,
                                          custom_encoder=encoder, batch_first=True, norm_first=True)
        for layer in self.transformer.encoder.layers:
            layer.self_attn = HeadwiseAttention.from_module(layer.self_attn)
        for layer in self.transformer.decoder.layers:
            layer.self_attn = HeadwiseAttention.from_module(layer.self_attn)
            layer.multihead_attn = HeadwiseAttention.from_module(layer.multihead_attn)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.max_len:
            raise ValueError(f"expected sequences of at most {self.max_len} tokens, received {ids.shape[1]}")
        return self.dropout(self.embed(ids) * math.sqrt(self.d_model) + self.positions[:ids.shape[1]])

    def encode(self, src: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        pad = src == PAD
        return self.transformer.encoder(self._embed(src), src_key_padding_mask=pad), pad

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, memory_pad: torch.Tensor,
               last_only: bool = False) -> torch.Tensor:
        """Logits ``(B, T, V)``, or ``(B, V)`` of the last position only with ``last_only``."""
        t = tgt_in.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=tgt_in.device).triu(1)
        h = self.transformer.decoder(self._embed(tgt_in), memory, tgt_mask=causal, tgt_key_padding_mask=tgt_in == PAD,
                                     memory_key_padding_mask=memory_pad)
        if last_only:
            h = h[:, -1]
        return F.linear(h, self.embed.weight)  # tied output projection

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, pad = self.encode(src)
        return self.decode(tgt_in, memory, pad)

    # --- what the study's methods act on --------------------------------------------------------
    def head_selection(self, kinds="configured", **kw) -> HeadSelection:
        """The heads as particles: the kinds in ``repulse_kinds`` unless ``kinds`` says otherwise."""
        return HeadSelection(kinds=self.repulse_kinds if kinds == "configured" else kinds, **kw)

    def attention_modules(self) -> List[Tuple[str, str, HeadwiseAttention]]:
        """``[(name, kind, module)]`` of all attention modules, encoder first."""
        out = [(f"encoder.{i}.self_attn", "self", l.self_attn) for i, l in enumerate(self.transformer.encoder.layers)]
        for i, l in enumerate(self.transformer.decoder.layers):
            out += [(f"decoder.{i}.self_attn", "decoder_self", l.self_attn),
                    (f"decoder.{i}.cross_attn", "cross", l.multihead_attn)]
        return out

    def gate_sites(self) -> List[Tuple[str, nn.Module, int]]:
        """``[(name, out_proj, M)]`` for the attention modules of the repulsed kinds (DropHead, disagreement)."""
        return [(n, a.out_proj, a.num_heads) for n, k, a in self.attention_modules() if k in self.repulse_kinds]


def max_output_length(src_len: int) -> int:
    """Decoding budget in subword tokens for a source of ``src_len`` tokens: ``1.5 src_len + 10``."""
    return int(1.5 * src_len) + 10


def _strip(seq: Sequence[int]) -> List[int]:
    out = []
    for x in seq:
        if x == EOS:
            break
        if x not in (PAD, BOS):
            out.append(int(x))
    return out


class DecoderState:
    """Key/value cache of incremental decoding: per decoder layer, the self-attention keys and values
    of the tokens so far and the cross-attention keys and values of the encoder memory, ``(N, M, L, d)``."""

    def __init__(self, model: "Seq2SeqTransformer", memory: torch.Tensor, memory_pad: torch.Tensor):
        self.model, self.memory_pad, self.length = model, memory_pad, 0
        self.self_kv: List[Optional[Tuple[torch.Tensor, torch.Tensor]]] = []
        self.cross_kv: List[Tuple[torch.Tensor, torch.Tensor]] = []
        for layer in model.transformer.decoder.layers:
            a = layer.multihead_attn
            e = a.embed_dim
            self.cross_kv.append((_split(a, memory, e, 2 * e), _split(a, memory, 2 * e, 3 * e)))
            self.self_kv.append(None)

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep rows ``rows`` (beam search's surviving hypotheses), in that order."""
        self.memory_pad = self.memory_pad[rows]
        self.cross_kv = [(k[rows], v[rows]) for k, v in self.cross_kv]
        self.self_kv = [None if kv is None else (kv[0][rows], kv[1][rows]) for kv in self.self_kv]


def _split(a: nn.MultiheadAttention, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Rows ``lo:hi`` of the packed projection applied to ``x`` ``(N, L, E)``, as heads ``(N, M, L, d)``."""
    b = None if a.in_proj_bias is None else a.in_proj_bias[lo:hi]
    y = F.linear(x, a.in_proj_weight[lo:hi], b)
    return y.reshape(x.shape[0], x.shape[1], a.num_heads, a.head_dim).transpose(1, 2)


def _attend(a: nn.MultiheadAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            key_pad: Optional[torch.Tensor] = None) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(a.head_dim)
    if key_pad is not None:
        scores = scores.masked_fill(key_pad[:, None, None, :], float("-inf"))
    heads = torch.matmul(torch.softmax(scores, -1), v)  # (N, M, 1, d)
    return a.out_proj(heads.transpose(1, 2).reshape(q.shape[0], 1, a.embed_dim))


@torch.no_grad()
def next_token_logits(state: DecoderState, tokens: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, V)`` of the token after ``tokens`` ``(N,)``, appended to the cached prefix.

    The same function as :meth:`Seq2SeqTransformer.decode` on the whole prefix (pre-norm layers, eval
    mode), computed for the new position only; every earlier position is visible to it, none later exists.
    """
    model = state.model
    if model.training:
        raise RuntimeError("incremental decoding is for eval mode (no dropout); call model.eval() first")
    pos = state.length
    x = model.embed(tokens[:, None]) * math.sqrt(model.d_model) + model.positions[pos:pos + 1]
    for i, layer in enumerate(model.transformer.decoder.layers):
        a = layer.self_attn
        e = a.embed_dim
        h = layer.norm1(x)
        k, v = _split(a, h, e, 2 * e), _split(a, h, 2 * e, 3 * e)
        if state.self_kv[i] is not None:
            k = torch.cat([state.self_kv[i][0], k], 2)
            v = torch.cat([state.self_kv[i][1], v], 2)
        state.self_kv[i] = (k, v)
        x = x + _attend(a, _split(a, h, 0, e), k, v)
        c = layer.multihead_attn
        h = layer.norm2(x)
        x = x + _attend(c, _split(c, h, 0, e), *state.cross_kv[i], key_pad=state.memory_pad)
        x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
    state.length += 1
    x = model.transformer.decoder.norm(x)
    return F.linear(x[:, 0], model.embed.weight)


def _forbid_specials(scores: torch.Tensor) -> torch.Tensor:
    """``<pad>`` and ``<s>`` are never generated (their scores set to ``-inf``, without renormalising)."""
    scores = scores.clone()
    scores[:, [PAD, BOS]] = float("-inf")
    return scores


@torch.no_grad()
def greedy_decode(model: Seq2SeqTransformer, src: torch.Tensor, max_len: Optional[int] = None) -> List[List[int]]:
    """Most probable next token at every step; returns the ids of each sentence (no specials)."""
    model.eval()
    memory, pad = model.encode(src)
    b = src.shape[0]
    n = max_len if max_len is not None else max_output_length(src.shape[1])
    state = DecoderState(model, memory, pad)
    ys = torch.full((b, 1), BOS, dtype=torch.long, device=src.device)
    done = torch.zeros(b, dtype=torch.bool, device=src.device)
    for _ in range(n):
        nxt = _forbid_specials(next_token_logits(state, ys[:, -1])).argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
        ys = torch.cat([ys, nxt[:, None]], 1)
        done |= nxt == EOS
        if bool(done.all()):
            break
    return [_strip(r.tolist()) for r in ys[:, 1:]]


@torch.no_grad()
def beam_search(model: Seq2SeqTransformer, src: torch.Tensor, beam: int = 4, length_penalty: float = 1.0,
                max_len: Optional[int] = None) -> List[List[int]]:
    """Beam search over a batch; each hypothesis scored ``sum log p / length ** length_penalty``.

    ``length`` counts the tokens including ``</s>``. As in fairseq, a candidate ending in ``</s>`` is
    finished only if it ranks among the top ``beam`` candidates of its step, the ``beam`` best others
    stay live, and a sentence stops once it has ``beam`` finished hypotheses; at ``max_len``
    (:func:`max_output_length`) the live beams are scored as they stand if none has finished.
    """
    if beam < 1:
        raise ValueError(f"expected beam >= 1, received {beam}")
    model.eval()
    b = src.shape[0]
    n = max_len if max_len is not None else max_output_length(src.shape[1])
    memory, pad = model.encode(src)
    state = DecoderState(model, memory.repeat_interleave(beam, 0), pad.repeat_interleave(beam, 0))
    dev = src.device
    ys = torch.full((b * beam, 1), BOS, dtype=torch.long, device=dev)
    scores = torch.zeros(b, beam, device=dev)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep one
    finished: List[List[Tuple[float, List[int]]]] = [[] for _ in range(b)]
    closed = [False] * b
    v = model.vocab_size
    for step in range(1, n + 1):
        logp = _forbid_specials(torch.log_softmax(next_token_logits(state, ys[:, -1]).float(), -1)).view(b, beam, v)
        cand = (scores.unsqueeze(-1) + logp).view(b, -1)  # (B, beam * V)
        top, idx = cand.topk(min(2 * beam, cand.shape[1]), dim=-1)
        top_l, origin_l, token_l = top.tolist(), (idx // v).tolist(), (idx % v).tolist()
        new_scores = torch.full((b, beam), float("-inf"))
        new_origin = torch.zeros(b, beam, dtype=torch.long)
        new_tok = torch.full((b, beam), PAD, dtype=torch.long)
        for i in range(b):
            kept = 0
            for j in range(len(top_l[i])):
                if closed[i]:
                    break
                sc, o, tk = top_l[i][j], origin_l[i][j], token_l[i][j]
                if sc == float("-inf"):
                    break
                if tk == EOS:
                    if j < beam:  # fairseq: an EOS counts only among the top `beam` candidates
                        hyp = ys[i * beam + o, 1:].tolist()
                        finished[i].append((sc / (step ** length_penalty), hyp))
                    continue
                new_scores[i, kept] = sc
                new_tok[i, kept] = tk
                new_origin[i, kept] = o
                kept += 1
                if kept == beam:
                    break
            if not closed[i] and len(finished[i]) >= beam:
                closed[i] = True
        if all(closed):
            break
        rows = (torch.arange(b)[:, None] * beam + new_origin).reshape(-1).to(dev)
        ys = torch.cat([ys[rows], new_tok.reshape(-1, 1).to(dev)], 1)
        state.reorder(rows)
        scores = new_scores.to(dev)
    out = []
    for i in range(b):
        hyps = list(finished[i])
        if not hyps:  # nothing finished within max_len: the live beams as they stand
            for k in range(beam):
                if scores[i, k] > float("-inf"):
                    norm = (ys.shape[1] - 1) ** length_penalty
                    hyps.append((float(scores[i, k]) / norm, ys[i * beam + k, 1:].tolist()))
        best = max(hyps, key=lambda h: h[0])[1]
        out.append(_strip(best))
    return out
