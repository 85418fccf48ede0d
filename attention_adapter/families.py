"""Built-in layouts: the :class:`~attention_adapter.layouts.HeadLayout` of a model family's attention module.

What a layout is and how it binds to tensors is :mod:`attention_adapter.layouts`; this module reads
layouts from modules, one route per family, and changes with every new model family:

========================================  =========================================================
family                                    route
========================================  =========================================================
``torch.nn.MultiheadAttention``           :func:`multihead_attention_layout` (``nn.Transformer*``)
Hugging Face GPT-2 (``Conv1D``, in x out) :func:`gpt2_attention_layout`, matched by
                                          :func:`is_gpt2_attention` (self- and cross-attention)
a wrapper with ``.output.dense``          :func:`wrapper_layout` (BERT family, DeBERTa-v2, Swin)
any module with ``nn.Linear`` Q/K/V       :func:`structural_layout`: separate, fused or GPT-2-style
                                          cross-attention projections, head counts from the
                                          module's attributes and config
========================================  =========================================================

Discovery (:mod:`attention_adapter.discovery`) tries :data:`BUILTIN_LAYOUTS` first, then
:func:`wrapper_layout`, then :func:`structural_layout` for modules that
:func:`looks_like_attention`; :func:`attention_kind` labels each site self, cross or decoder
self-attention.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

from torch import nn

from .layouts import HeadLayout, TensorBlock, resolve_layout

__all__ = [
    "LayoutNotFound",
    "BUILTIN_LAYOUTS",
    "multihead_attention_layout",
    "is_gpt2_attention",
    "gpt2_attention_layout",
    "structural_layout",
    "wrapper_layout",
    "looks_like_attention",
    "attention_kind",
    "SEPARATE_SCHEMES",
    "FUSED_NAMES",
    "FUSED_OUT_NAMES",
    "HEAD_ATTRS",
    "HEAD_DIM_ATTRS",
    "KV_HEAD_ATTRS",
    "PER_HEAD_INTERLEAVED_MODEL_TYPES",
    "POSITION_BIAS_MODEL_TYPES",
    "CROSS_NAMES",
]


class LayoutNotFound(ValueError):
    """A module looks like attention but its head layout could not be determined (message: why)."""


# ----------------------------------------------------------------------------------------------
# torch.nn.MultiheadAttention
# ----------------------------------------------------------------------------------------------


def multihead_attention_layout(module: nn.MultiheadAttention) -> HeadLayout:
    """Layout of ``torch.nn.MultiheadAttention`` (either ``batch_first``).

    With equal embedding sizes the projections are packed in ``in_proj_weight`` (``3E x E``, rows
    ``[W_q; W_k; W_v]``); with ``kdim``/``vdim`` different from ``embed_dim`` they are the separate
    ``q_proj_weight`` (``E x E``), ``k_proj_weight`` (``E x kdim``), ``v_proj_weight`` (``E x vdim``).
    ``in_proj_bias`` (``3E``) holds the per-head biases; ``out_proj.weight`` (``E x E``) reads head
    ``h`` from columns ``[h d, (h+1) d)``. ``bias_k``/``bias_v`` (``add_bias_kv``) are not particles.
    The module returns head-averaged maps by default, so :class:`~attention_adapter.HeadCapture`
    re-runs it for per-head maps (``attention_map=None`` here).
    """
    e = module.embed_dim
    bias = {}
    if module.in_proj_bias is not None:
        bias = dict(q_bias=TensorBlock("in_proj_bias", 0, 0, e), k_bias=TensorBlock("in_proj_bias", 0, e, e),
                    v_bias=TensorBlock("in_proj_bias", 0, 2 * e, e))
    common = dict(num_heads="num_heads", out=TensorBlock("out_proj.weight", 1), attention_map=None, **bias)
    if module._qkv_same_embed_dim:
        return HeadLayout(q=TensorBlock("in_proj_weight", 0, 0, e), k=TensorBlock("in_proj_weight", 0, e, e),
                          v=TensorBlock("in_proj_weight", 0, 2 * e, e),
                          description="nn.MultiheadAttention (packed in_proj_weight)", **common)
    return HeadLayout(q="q_proj_weight", k="k_proj_weight", v="v_proj_weight",
                      description="nn.MultiheadAttention (separate q/k/v weights)", **common)


# ----------------------------------------------------------------------------------------------
# Hugging Face GPT-2 (Conv1D: in x out)
# ----------------------------------------------------------------------------------------------


def _is_conv1d(m: Any) -> bool:
    """Hugging Face's ``Conv1D`` (a Linear stored ``in x out``), recognised by name and weight."""
    w = getattr(m, "weight", None)
    return isinstance(m, nn.Module) and type(m).__name__ == "Conv1D" and isinstance(w, nn.Parameter) and w.dim() == 2


def is_gpt2_attention(m: nn.Module) -> bool:
    """Whether ``m`` is GPT-2 attention: ``Conv1D`` ``c_attn`` (``E x 3E``, or ``E x 2E`` beside a
    ``q_attn`` for cross-attention) and ``c_proj``, with int ``embed_dim`` and ``num_heads``."""
    if not (_is_conv1d(getattr(m, "c_attn", None)) and _is_conv1d(getattr(m, "c_proj", None))):
        return False
    e = getattr(m, "embed_dim", None)
    if not isinstance(e, int) or not isinstance(getattr(m, "num_heads", None), int):
        return False
    width = 2 * e if hasattr(m, "q_attn") else 3 * e
    return tuple(m.c_attn.weight.shape) == (e, width)


def gpt2_attention_layout(module: nn.Module) -> HeadLayout:
    """Layout of Hugging Face GPT-2 attention (``Conv1D`` weights are ``in x out``).

    Self-attention: ``c_attn.weight`` is ``E x 3E``, columns ``[W_q | W_k | W_v]``, so Q, K and V
    are blocks of axis 1 at offsets 0, E, 2E; ``c_attn.bias`` (``3E``) likewise on axis 0.
    Cross-attention (``q_attn`` present): ``q_attn`` holds Q and ``c_attn`` (``E x 2E``) holds
    ``[W_k | W_v]``. ``c_proj.weight`` (``E x E``, ``in x out``) reads head ``h`` from *rows*
    ``[h d, (h+1) d)``: axis 0. The module returns ``(attn_output, attn_weights)``.
    """
    e = module.embed_dim
    common = dict(num_heads="num_heads", out=TensorBlock("c_proj.weight", 0))
    if hasattr(module, "q_attn"):
        return HeadLayout(
            q=TensorBlock("q_attn.weight", 1), k=TensorBlock("c_attn.weight", 1, 0, e),
            v=TensorBlock("c_attn.weight", 1, e, e), q_bias=TensorBlock("q_attn.bias", 0),
            k_bias=TensorBlock("c_attn.bias", 0, 0, e), v_bias=TensorBlock("c_attn.bias", 0, e, e),
            description="GPT-2 cross-attention (q_attn + fused c_attn Conv1D, in x out)", **common)
    return HeadLayout(
        q=TensorBlock("c_attn.weight", 1, 0, e), k=TensorBlock("c_attn.weight", 1, e, e),
        v=TensorBlock("c_attn.weight", 1, 2 * e, e), q_bias=TensorBlock("c_attn.bias", 0, 0, e),
        k_bias=TensorBlock("c_attn.bias", 0, e, e), v_bias=TensorBlock("c_attn.bias", 0, 2 * e, e),
        description="GPT-2 attention (fused c_attn Conv1D, in x out)", **common)


#: built-in (matcher, layout factory) pairs for the families with a class of their own, tried in
#: this order after the user's layouts (the wrapper and structural rules, which also read the
#: model's config, come after these)
BUILTIN_LAYOUTS: Tuple[Tuple[Callable[[nn.Module], bool], Callable[[nn.Module], HeadLayout]], ...] = (
    (lambda m: isinstance(m, nn.MultiheadAttention), multihead_attention_layout),
    (is_gpt2_attention, gpt2_attention_layout),
)


# ----------------------------------------------------------------------------------------------
# structural layouts: any module with nn.Linear Q/K/V projections, from its structure and config
# ----------------------------------------------------------------------------------------------

#: separate projections: (q, k, v, output-projection candidates), tried in order
SEPARATE_SCHEMES: Tuple[Tuple[str, str, str, Tuple[str, ...]], ...] = (
    ("q_proj", "k_proj", "v_proj", ("o_proj", "out_proj", "dense", "c_proj", "proj")),
    ("query_proj", "key_proj", "value_proj", ("out_proj", "o_proj", "dense")),
    ("q", "k", "v", ("o", "out", "proj")),
    ("q_lin", "k_lin", "v_lin", ("out_lin",)),
    ("query", "key", "value", ("dense", "out", "o_proj", "out_proj")),
    ("Wq", "Wk", "Wv", ("Wo",)),
    ("wq", "wk", "wv", ("wo",)),
    ("W_q", "W_k", "W_v", ("W_o",)),
    ("to_q", "to_k", "to_v", ("to_out",)),
    ("q_linear", "k_linear", "v_linear", ("out_linear", "o_linear")),
    ("linear_q", "linear_k", "linear_v", ("linear_out",)),
)
#: fused QKV projections (one Linear producing Q, K and V)
FUSED_NAMES: Tuple[str, ...] = ("c_attn", "qkv", "query_key_value", "Wqkv", "qkv_proj", "W_pack", "to_qkv")
#: output projections next to a fused QKV projection
FUSED_OUT_NAMES: Tuple[str, ...] = ("c_proj", "dense", "o_proj", "out_proj", "proj", "Wo", "out", "o")
#: attributes giving the number of (query) heads, on the module, then on its/the model's config
#: (``heads``: diffusers' ``Attention``)
HEAD_ATTRS: Tuple[str, ...] = ("num_heads", "num_attention_heads", "n_heads", "n_head", "heads")
#: attributes giving the head size
HEAD_DIM_ATTRS: Tuple[str, ...] = ("head_dim", "attention_head_size", "head_size", "key_value_proj_dim", "d_head",
                                   "d_kv")
#: attributes giving the number of key/value heads
KV_HEAD_ATTRS: Tuple[str, ...] = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_head_kv",
                                  "multi_query_group_num")
#: ``config.model_type`` values whose fused ``query_key_value`` is interleaved per head,
#: ``[q_0, k_0, v_0, q_1, ...]`` (their modeling files view it as ``(..., H, 3, d)`` or
#: ``(..., H, 3 d)``); every other fused projection is blocked ``[Q; K; V]``
PER_HEAD_INTERLEAVED_MODEL_TYPES = frozenset({"gpt_neox", "gpt_neox_japanese", "bloom", "persimmon", "falcon"})
#: ``config.model_type`` values whose attention returns ``(attn_output, position_bias, attn_weights)``
#: (T5 and the models built on its attention): the maps are output 2, not 1
POSITION_BIAS_MODEL_TYPES = frozenset({"t5", "mt5", "longt5", "switch_transformers", "pop2piano", "udop",
                                       "pix2struct_text_model"})


def _pos_int(v: Any) -> Optional[int]:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _first_attr(objs, names) -> Tuple[Optional[int], str]:
    for label, obj in objs:
        if obj is None:
            continue
        for a in names:
            v = _pos_int(getattr(obj, a, None))
            if v is not None:
                return v, f"{label}.{a}"
    return None, ""


def _linear(module: nn.Module, name: str) -> Optional[Tuple[nn.Linear, str]]:
    """The ``nn.Linear`` child ``name`` of ``module`` and its dotted path, else ``None``.

    A container whose first element is the Linear and whose other elements hold no parameters
    (diffusers' ``to_out = ModuleList([Linear, Dropout])``) resolves to that Linear (``to_out.0``).
    """
    m = getattr(module, name, None)
    if isinstance(m, nn.Linear):
        return m, name
    if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) > 0 and isinstance(m[0], nn.Linear) \
            and not any(True for rest in list(m)[1:] for _ in rest.parameters()):
        return m[0], f"{name}.0"
    return None


def _conv1d_hint(children) -> str:
    if any(_is_conv1d(c) for c in children):
        return ("; Conv1D is read only as GPT-2 attention (c_attn/c_proj Conv1D with int embed_dim and num_heads, "
                "see is_gpt2_attention), describe other modules with HeadLayout")
    return ""


def _bias(module: nn.Module, name: str) -> bool:
    return isinstance(getattr(getattr(module, name, None), "bias", None), nn.Parameter)


def looks_like_attention(module: nn.Module) -> Optional[str]:
    """The projection names that make ``module`` look like attention (``None`` if it does not).

    A module looks like attention if it has a child for each of Q, K, V under one of
    :data:`SEPARATE_SCHEMES`, or a child named as in :data:`FUSED_NAMES` next to an output projection or
    a head-count attribute.
    """
    children = dict(module.named_children())
    for q, k, v, _ in SEPARATE_SCHEMES:
        if q in children and k in children and v in children:
            return f"{q}/{k}/{v}"
    for f in FUSED_NAMES:
        if f in children and (any(o in children for o in FUSED_OUT_NAMES)
                              or _first_attr([("module", module)], HEAD_ATTRS)[0] is not None):
            return f
    return None


def _configs(module: nn.Module, config: Any):
    own = getattr(module, "config", None)
    return [("module", module)] + ([("module.config", own)] if own is not None else []) + (
        [("config", config)] if config is not None and config is not own else [])


def _counts(module: nn.Module, config: Any, where: str):
    """``(H, d or None, G or None, source text)`` from attributes of the module and the configs."""
    objs = _configs(module, config)
    h, h_src = _first_attr(objs, HEAD_ATTRS)
    if h is None:
        raise LayoutNotFound(f"{where}: no number of heads: expected an attribute {'/'.join(HEAD_ATTRS)} on the "
                             "module, its .config or the model's config")
    d, d_src = _first_attr(objs, HEAD_DIM_ATTRS)
    g, g_src = _first_attr(objs[:1], KV_HEAD_ATTRS)
    if g is None:
        groups = _pos_int(getattr(module, "num_key_value_groups", None))
        if groups is not None and h % groups == 0:
            g, g_src = h // groups, "module.num_key_value_groups"
    if g is None:
        g, g_src = _first_attr(objs[1:], KV_HEAD_ATTRS)
    if g is None and any(getattr(o, "multi_query", False) is True for _, o in objs if o is not None):
        g, g_src = 1, "multi_query=True"
    return h, d, g, ", ".join(x for x in (h_src, d_src, g_src) if x)


def _model_type(module: nn.Module, config: Any) -> str:
    for _, o in _configs(module, config)[1:]:
        t = getattr(o, "model_type", None)
        if isinstance(t, str):
            return t
    return ""


def _flag(module: nn.Module, config: Any, name: str) -> bool:
    return any(getattr(o, name, None) is True for _, o in _configs(module, config))


def _out_block(module: nn.Module, names, width: int, pre: str) -> Tuple[Optional[TensorBlock], str]:
    """The output projection among ``names`` whose input is ``width`` wide (per-head columns, axis 1)."""
    for o in names:
        found = _linear(module, o)
        if found is not None and found[0].in_features == width:
            return TensorBlock(f"{pre}{found[1]}.weight", 1), o
    return None, ""


def _capture(module: nn.Module, config: Any, out: Optional[TensorBlock], projections) -> Dict[str, Any]:
    """What :class:`~attention_adapter.HeadCapture` reads: the maps' output index and, without an
    output projection, the module's own output as the head outputs only when nothing but the Q/K/V
    ``projections`` holds parameters (so that output cannot have been projected)."""
    attention_map = 2 if _model_type(module, config) in POSITION_BIAS_MODEL_TYPES else 1
    if out is not None:
        return dict(attention_map=attention_map)
    others = [n for n, c in module.named_children() if n not in projections and any(True for _ in c.parameters())]
    own = [n for n, _ in module.named_parameters(recurse=False)]
    return dict(attention_map=attention_map, head_outputs=None if others or own else "module_output")


def _head_size(where: str, h: int, d: Optional[int], width: int, what: str, src: str) -> int:
    if d is None:
        if width % h:
            raise LayoutNotFound(f"{where}: {h} heads ({src}) do not divide the {width} outputs of {what}")
        d = width // h
    if width != h * d:
        raise LayoutNotFound(f"{where}: expected {what} with {h} x {d} = {h * d} outputs ({src}), received {width}")
    return d


def _separate_layout(module, config, where, pre, scheme) -> HeadLayout:
    """Separate Q, K, V projections (``q_proj``/``k_proj``/``v_proj`` and the other schemes)."""
    q, k, v, outs = scheme
    children = dict(module.named_children())
    lins = {r: _linear(module, n) for r, n in (("q", q), ("k", k), ("v", v))}
    bad = [f"{n} ({type(children[n]).__name__})" for r, n in (("q", q), ("k", k), ("v", v)) if lins[r] is None]
    if bad:
        raise LayoutNotFound(f"{where}: expected nn.Linear projections, received {', '.join(bad)}"
                             + _conv1d_hint(children[n] for n in (q, k, v)))
    h, d, g, src = _counts(module, config, where)
    lq, lk, lv = (lins[r][0].out_features for r in ("q", "k", "v"))
    d = _head_size(where, h, d, lq, q, src)
    if g is None:
        if lk % d:
            raise LayoutNotFound(f"{where}: head size {d} does not divide the {lk} outputs of {k}")
        g = lk // d
    if lk != g * d or h % g:
        raise LayoutNotFound(f"{where}: expected {k} with G x {d} outputs, G dividing {h} heads ({src}); "
                             f"received {lk} outputs (G = {lk / d:g})")
    if lv % g:
        raise LayoutNotFound(f"{where}: {g} key/value heads do not divide the {lv} outputs of {v}")
    out, oname = _out_block(module, outs, h * (lv // g), pre)
    blocks = {r: TensorBlock(f"{pre}{n}.weight", 0) for r, n in (("q", q), ("k", k), ("v", v))}
    biases = {f"{r}_bias": TensorBlock(f"{pre}{n}.bias", 0) for r, n in (("q", q), ("k", k), ("v", v))
              if _bias(module, n)}
    return HeadLayout(num_heads=h, num_kv_heads=g, out=out, **blocks, **biases,
                      description=f"separate {q}/{k}/{v}" + (f"/{oname}" if oname else "") + " Linear",
                      **_capture(module, config, out, (q, k, v)))


def _cross_attention_layout(module, config, where, pre, fused, width, h, g) -> HeadLayout:
    """GPT-2-style cross-attention with ``nn.Linear``: ``q_attn`` holds Q, the fused projection ``[K | V]``."""
    qp = _linear(module, "q_attn")
    if qp is None or width % 2:
        raise LayoutNotFound(f"{where}: expected q_attn as nn.Linear and an even-width {fused} ([K | V]), "
                             f"received width {width}")
    half = width // 2
    w, b = f"{pre}{fused}.weight", f"{pre}{fused}.bias"
    out, _ = _out_block(module, FUSED_OUT_NAMES, qp[0].out_features, pre)
    biases = {}
    if _bias(module, fused):
        biases = dict(k_bias=TensorBlock(b, 0, 0, half), v_bias=TensorBlock(b, 0, half, half))
    if _bias(module, "q_attn"):
        biases["q_bias"] = TensorBlock(f"{pre}q_attn.bias", 0)
    return HeadLayout(num_heads=h, num_kv_heads=g, q=TensorBlock(f"{pre}q_attn.weight", 0),
                      k=TensorBlock(w, 0, 0, half), v=TensorBlock(w, 0, half, half), out=out, **biases,
                      description=f"cross-attention q_attn + fused {fused} [K | V]",
                      **_capture(module, config, out, ("q_attn", fused)))


def _fused_layout(module, config, where, pre, fused) -> HeadLayout:
    """One fused QKV projection: blocked ``[Q; K; V]``, per-head interleaved or Falcon's grouped order."""
    children = dict(module.named_children())
    lin = _linear(module, fused)
    if lin is None:
        raise LayoutNotFound(f"{where}: expected {fused} as nn.Linear, received {type(children[fused]).__name__}"
                             + _conv1d_hint([children[fused]]))
    width = lin[0].out_features
    h, d, g, src = _counts(module, config, where)
    if "q_attn" in children:
        return _cross_attention_layout(module, config, where, pre, fused, width, h, g)
    if d is None:
        kv = h if g is None else g
        if width % (h + 2 * kv):
            raise LayoutNotFound(f"{where}: {fused} width {width} is not (H + 2G) x head size for H = {h}, "
                                 f"G = {kv} ({src})")
        d = width // (h + 2 * kv)
    if width % d:
        raise LayoutNotFound(f"{where}: head size {d} ({src}) does not divide the {width} outputs of {fused}")
    if g is None:
        if (width // d - h) % 2:
            raise LayoutNotFound(f"{where}: {fused} has {width // d} head-sized slots, expected H + 2G with H = {h}")
        g = (width // d - h) // 2
    if g < 1 or h % g or width != (h + 2 * g) * d:
        raise LayoutNotFound(f"{where}: expected {fused} of width (H + 2G) d with H = {h}, G dividing H, d = {d} "
                             f"({src}); received width {width}")
    w, b = f"{pre}{fused}.weight", f"{pre}{fused}.bias"
    r = h // g
    if _flag(module, config, "new_decoder_architecture"):
        order = f"grouped [q x {r}, k, v] per key/value head"
        spec = {"q": (g, r + 2, 0), "k": (g, r + 2, r), "v": (g, r + 2, r + 1)}
        regions = {role: (0, None, *s) for role, s in spec.items()}
    elif _model_type(module, config) in PER_HEAD_INTERLEAVED_MODEL_TYPES and g == h:
        order = "per-head interleaved [q_h, k_h, v_h]"
        spec = {"q": (h, 3, 0), "k": (h, 3, 1), "v": (h, 3, 2)}
        regions = {role: (0, None, *s) for role, s in spec.items()}
    else:
        order = "blocked [Q; K; V]"
        regions = {"q": (0, h * d), "k": (h * d, g * d), "v": ((h + g) * d, g * d)}
    blocks = {role: TensorBlock(w, 0, *where_) for role, where_ in regions.items()}
    biases = {f"{role}_bias": TensorBlock(b, 0, *where_) for role, where_ in regions.items()} \
        if _bias(module, fused) else {}
    out, oname = _out_block(module, FUSED_OUT_NAMES, h * d, pre)
    return HeadLayout(num_heads=h, num_kv_heads=g, out=out, **blocks, **biases,
                      description=f"fused {fused} Linear, {order}" + (f", {oname}" if oname else ""),
                      **_capture(module, config, out, (fused,)))


def structural_layout(module: nn.Module, config: Any = None, prefix: str = "") -> HeadLayout:
    """The :class:`HeadLayout` of ``module`` read from its structure and its (or the model's) config.

    Parameters
    ----------
    module : nn.Module
        An attention module with separate Q/K/V projections (:data:`SEPARATE_SCHEMES`) or one fused
        QKV projection (:data:`FUSED_NAMES`), each an ``nn.Linear`` (``out x in``, heads along axis 0;
        GPT-2's ``Conv1D`` has a route of its own, :func:`gpt2_attention_layout`). An output
        projection may sit first in a container of parameter-free layers (diffusers'
        ``to_out = ModuleList([Linear, Dropout])``).
    config : optional
        The model's config, consulted after the module's attributes and its own ``.config``.
    prefix : str
        Dotted path of ``module`` inside the module the layout is for (wrappers).

    The head counts come from attributes (:data:`HEAD_ATTRS`, :data:`HEAD_DIM_ATTRS`,
    :data:`KV_HEAD_ATTRS`, ``num_key_value_groups``, ``multi_query``) and are checked against the
    projection widths: ``|Q| = H d``, ``|K| = |V| = G d_v`` with ``G`` dividing ``H``; without a
    key/value count, ``G = |K| / d``. Fused projections hold ``H + 2G`` head-sized slots in one of
    three orders, decided as follows (the modeling files of the models named):

    * Falcon's ``new_decoder_architecture`` (module or config flag): per key/value group
      ``[q_{g r} .. q_{g r + r - 1}, k_g, v_g]``, ``r = H / G``;
    * ``config.model_type`` in :data:`PER_HEAD_INTERLEAVED_MODEL_TYPES` and ``G = H``: per head
      ``[q_h, k_h, v_h]`` (GPT-NeoX / Pythia, Bloom, Persimmon, Falcon without multi-query);
    * otherwise blocked ``[Q; K; V]`` (GPTBigCode ``c_attn``, MPT/ModernBERT ``Wqkv``, ViT-style
      ``qkv``, Phi-3 ``qkv_proj``, Falcon multi-query).

    A ``q_attn`` next to the fused projection makes it GPT-2-style cross-attention (``[K | V]``).
    The attention maps are output 1 of the module (``(attn_output, attn_weights)``), output 2 for
    :data:`POSITION_BIAS_MODEL_TYPES`.

    Raises
    ------
    LayoutNotFound
        With the reason (no head count, widths inconsistent with it, projections that are not
        ``nn.Linear``).
    """
    pre = f"{prefix}." if prefix else ""
    where = f"{type(module).__name__}"
    children = dict(module.named_children())
    scheme = next(((q, k, v, outs) for q, k, v, outs in SEPARATE_SCHEMES
                   if q in children and k in children and v in children), None)
    if scheme is not None:
        return _separate_layout(module, config, where, pre, scheme)
    fused = next((f for f in FUSED_NAMES if f in children), None)
    if fused is None:
        raise LayoutNotFound(f"{where}: expected Q/K/V projections named as in {[s[:3] for s in SEPARATE_SCHEMES]} "
                             f"or a fused projection named one of {FUSED_NAMES}; found children {sorted(children)}")
    return _fused_layout(module, config, where, pre, fused)


#: children holding the inner attention of a wrapper whose output projection is ``output.dense``
WRAPPER_INNER_NAMES: Tuple[str, ...] = ("self", "attention")


def wrapper_layout(module: nn.Module, config: Any = None) -> Optional[HeadLayout]:
    """Layout of a BERT-style wrapper (``.self`` or ``.attention`` + ``.output.dense``), or ``None``.

    The inner module's layout (:func:`structural_layout`) plus the output projection
    ``output.dense.weight`` (``hidden x H d_v``, head ``h`` in columns ``[h d_v, (h+1) d_v)``), when
    its input width is ``H d_v``. BERT, RoBERTa, ELECTRA, DeBERTa-v2, Swin, ...
    """
    out = getattr(module, "output", None)
    dense = getattr(out, "dense", None)
    if not isinstance(dense, nn.Linear):
        return None
    for inner_name in WRAPPER_INNER_NAMES:
        inner = getattr(module, inner_name, None)
        if not isinstance(inner, nn.Module) or looks_like_attention(inner) is None:
            continue
        try:
            lay = structural_layout(inner, config, prefix=inner_name)
        except LayoutNotFound:
            return None
        if lay.out is not None or lay.v is None:
            return None
        try:
            dv = resolve_layout("", module, lay).blocks["v"].head_size
        except ValueError:
            return None
        if dense.in_features != lay.num_heads * dv:
            return None
        return HeadLayout(num_heads=lay.num_heads, num_kv_heads=lay.num_kv_heads, q=lay.q, k=lay.k, v=lay.v,
                          out=TensorBlock("output.dense.weight", 1), q_bias=lay.q_bias, k_bias=lay.k_bias,
                          v_bias=lay.v_bias, description=lay.description + f" in .{inner_name}, output.dense",
                          attention_map=lay.attention_map)
    return None


#: last name segments of cross-attention modules (encoder-decoder attention)
CROSS_NAMES = frozenset({"crossattention", "cross_attention", "cross_attn", "encoder_attn", "encdecattention",
                         "multihead_attn", "encoder_decoder_attention", "src_attn", "enc_dec_attn"})


def attention_kind(name: str, module: nn.Module, config: Any = None, parent: Optional[nn.Module] = None,
                   encoder_decoder: bool = False) -> str:
    """``"cross"``, ``"decoder_self"`` or ``"self"`` for the attention module ``name``.

    Cross: ``module.is_cross_attention is True``, or a last name segment in :data:`CROSS_NAMES`
    (BERT/GPT-2 ``crossattention``, T5 ``EncDecAttention``, BART/Marian/Whisper ``encoder_attn``,
    ``nn.TransformerDecoderLayer.multihead_attn``). Decoder self-attention: in an encoder-decoder
    model (``config.is_encoder_decoder``, ``nn.Transformer``, or a parent
    ``nn.TransformerDecoderLayer``), a module under a name segment starting with ``decoder`` or with
    ``module.is_decoder is True``. Everything else, decoder-only models included, is ``"self"``.
    """
    last = name.rsplit(".", 1)[-1].lower()
    if getattr(module, "is_cross_attention", None) is True or last in CROSS_NAMES:
        return "cross"
    in_decoder_layer = isinstance(parent, nn.TransformerDecoderLayer)
    if encoder_decoder or in_decoder_layer or getattr(config, "is_encoder_decoder", False) is True:
        if in_decoder_layer or getattr(module, "is_decoder", None) is True or any(
                seg.lower().startswith("decoder") for seg in name.split(".")):
            return "decoder_self"
    return "self"
