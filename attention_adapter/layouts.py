"""Head layouts: where each attention head lives inside an attention module's tensors.

A *layout* says, for one attention module, which tensors hold the per-head blocks of the query, key,
value and output projections, along which axis the heads are stacked, and how many heads there are.
From a layout the adapter *gathers* a role's tensor (or its gradient) into an ``(M, p)`` matrix with
one row per head, and *scatters* an ``(M, p)`` matrix back into the same positions:

* a projection ``W`` of torch layout ``out x in`` (``nn.Linear``) stores head ``h`` in the rows
  ``[h d_head, (h + 1) d_head)``: axis 0;
* GPT-2's ``Conv1D`` stores ``in x out``: the same heads are columns, axis 1;
* packed tensors (``nn.MultiheadAttention.in_proj_weight`` is ``[W_q; W_k; W_v]``, GPT-2's
  ``c_attn`` is ``[W_q | W_k | W_v]``) are described by an offset ``start`` and a ``size`` along the
  axis;
* the output projection ``W_o`` (``out x in``) reads head ``h`` from its *columns*
  ``[h d_head, (h + 1) d_head)``: axis 1 (axis 0 for ``Conv1D``).

Row ``h`` of a gathered matrix is built only from head ``h``'s block, so the particles are
head-aligned by construction (two of the authors' four experiments reshaped weights so that a
"particle" mixed all heads; see "Differences from the authors' code" in ``docs/attention_adapter.md``).

Fused tensors whose heads are interleaved (GPT-NeoX/Bloom ``[q_h, k_h, v_h]`` per head, Falcon's
``[q_{g r}, .., q_{g r + r - 1}, k_g, v_g]`` per key/value group) are described by
``TensorBlock(units, period, slot)``. Under grouped-query attention (Ainslie et al. 2023) and
multi-query attention (Shazeer 2019) Q has ``M`` heads and K, V have ``G`` (``HeadLayout.num_kv_heads``).

Users describe their own modules with :class:`HeadLayout` and :class:`TensorBlock` (see
:mod:`attention_adapter.discovery` for registration); built-in factories cover
``torch.nn.MultiheadAttention`` (hence ``nn.Transformer*``), Hugging Face BERT-family self- and
cross-attention (``query``/``key``/``value`` Linear layers) and GPT-2 attention (``c_attn`` Conv1D),
and :func:`structural_layout` / :func:`wrapper_layout` read any module with separate or fused Q/K/V
projections from its structure and config; :func:`attention_kind` labels a site self, cross or
decoder self-attention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from .sharding import ShardingError, describe, is_sharded, unshard

__all__ = [
    "TensorBlock",
    "HeadLayout",
    "ResolvedBlock",
    "ResolvedLayout",
    "ROLES",
    "KV_ROLES",
    "ATTENTION_KINDS",
    "WEIGHT_ROLES",
    "BIAS_ROLES",
    "resolve_layout",
    "multihead_attention_layout",
    "bert_attention_layout",
    "bert_self_attention_layout",
    "gpt2_attention_layout",
    "LayoutNotFound",
    "structural_layout",
    "wrapper_layout",
    "looks_like_attention",
    "attention_kind",
]

#: projection roles whose weights can be particles, in gather order
WEIGHT_ROLES: Tuple[str, ...] = ("q", "k", "v", "out")
#: per-head bias roles (the output projection's bias is shared by all heads, so it has none)
BIAS_ROLES: Tuple[str, ...] = ("q_bias", "k_bias", "v_bias")
ROLES: Tuple[str, ...] = WEIGHT_ROLES + BIAS_ROLES
#: roles whose heads are the key/value heads (``G`` of them under grouped-query attention)
KV_ROLES: Tuple[str, ...] = ("k", "v", "k_bias", "v_bias")
#: what an attention module attends to: its own sequence ("self"), another sequence ("cross": the
#: decoder's encoder-decoder attention), or the decoder's own sequence in an encoder-decoder model
#: ("decoder_self"; decoder-only models such as GPT-2 or Llama have "self" attention)
ATTENTION_KINDS: Tuple[str, ...] = ("self", "cross", "decoder_self")


@dataclass(frozen=True)
class TensorBlock:
    """The per-head part of one tensor of an attention module.

    Parameters
    ----------
    tensor : str
        Dotted name of the parameter relative to the attention module, e.g. ``"query.weight"`` or
        ``"in_proj_weight"``.
    axis : int
        Axis along which the heads are stacked (0 for ``nn.Linear`` Q/K/V weights and for biases,
        1 for an ``nn.Linear`` output projection or a GPT-2 ``Conv1D`` Q/K/V weight).
    start : int
        Offset along ``axis`` where this role begins (non-zero for packed tensors).
    size : int or None
        Length along ``axis`` covering all heads of this role; ``None`` means "to the end of the
        axis". It must be divisible by the number of heads.
    units, period, slot : int, optional
        Interleaved (fused) layouts. ``units=None`` (default): the role's heads are contiguous,
        head ``h`` at ``[start + h d, start + (h + 1) d)``. Otherwise the region ``[start, start +
        size)`` is ``units`` repeating units of ``period`` head-sized slots each (``size = units *
        period * d``) and this role occupies the slots ``[slot, slot + c)`` of every unit,
        ``c = heads / units``; head ``u c + j`` is slot ``slot + j`` of unit ``u``. Per-head
        interleaved ``[q_h, k_h, v_h]`` (GPT-NeoX, Bloom): ``units=H, period=3, slot=0/1/2``;
        Falcon's grouped ``[q_{g r}, ..., q_{g r + r - 1}, k_g, v_g]``: ``units=G, period=r + 2``,
        ``slot=0`` (Q), ``r`` (K), ``r + 1`` (V).
    """

    tensor: str
    axis: int = 0
    start: int = 0
    size: Optional[int] = None
    units: Optional[int] = None
    period: int = 1
    slot: int = 0

    def __post_init__(self):
        if not isinstance(self.tensor, str) or not self.tensor:
            raise TypeError(f"expected TensorBlock.tensor as a non-empty parameter name, received {self.tensor!r}")
        for name in ("axis", "start"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"expected TensorBlock.{name} as an int, received {v!r}")
        if self.start < 0:
            raise ValueError(f"expected TensorBlock.start >= 0, received {self.start}")
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1):
            raise ValueError(f"expected TensorBlock.size as a positive int or None, received {self.size!r}")
        if self.units is not None and (isinstance(self.units, bool) or not isinstance(self.units, int)
                                       or self.units < 1):
            raise ValueError(f"expected TensorBlock.units as a positive int or None, received {self.units!r}")
        for name, low in (("period", 1), ("slot", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"expected TensorBlock.{name} as an int >= {low}, received {v!r}")
        if self.units is None and (self.period != 1 or self.slot != 0):
            raise ValueError(f"expected TensorBlock.period/slot only with units (an interleaved layout); received "
                             f"period={self.period}, slot={self.slot} with units=None")


BlockSpec = Union[TensorBlock, str, Tuple[str, int], None]


def _as_block(role: str, spec: BlockSpec) -> Optional[TensorBlock]:
    if spec is None or isinstance(spec, TensorBlock):
        return spec
    if isinstance(spec, str):
        return TensorBlock(spec, axis=0)
    if isinstance(spec, tuple) and 2 <= len(spec) <= 7 and isinstance(spec[0], str):
        return TensorBlock(*spec)
    raise TypeError(
        f"expected role {role!r} as a TensorBlock, a parameter name, a (name, axis[, start, size]) tuple "
        f"or None; received {spec!r}"
    )


@dataclass(frozen=True)
class HeadLayout:
    """Description of the heads of one attention module, in a few lines.

    Parameters
    ----------
    num_heads : int, str or callable
        Number of (query) heads ``M``: an int, the name of an attribute of the module
        (``"num_heads"``), or a callable ``module -> int``.
    num_kv_heads : int, str, callable or None
        Number of key/value heads ``G`` (grouped-query attention, Ainslie et al. 2023; multi-query
        attention, Shazeer 2019: ``G = 1``); ``None`` (default) means ``G = M``. ``M`` must be a
        multiple of ``G``; query head ``h`` attends with key/value head ``h // (M / G)``.
    q, k, v : TensorBlock, str or (name, axis[, start, size]) tuple
        The query, key and value projection weights. A bare string means axis 0, whole tensor
        (``nn.Linear`` layout ``out x in``).
    out : optional
        The output projection weight (its per-head *input* columns: axis 1 for ``nn.Linear``).
    q_bias, k_bias, v_bias : optional
        Per-head biases of the Q/K/V projections (axis 0).

    Examples
    --------
    >>> layout = HeadLayout(num_heads="n_heads", q="wq.weight", k="wk.weight", v="wv.weight",
    ...                     out=("wo.weight", 1))
    """

    num_heads: Union[int, str, Callable[[nn.Module], int]]
    q: BlockSpec = None
    k: BlockSpec = None
    v: BlockSpec = None
    out: BlockSpec = None
    q_bias: BlockSpec = None
    k_bias: BlockSpec = None
    v_bias: BlockSpec = None
    #: free text shown in the discovery report (e.g. "nn.MultiheadAttention, packed in_proj_weight")
    kind: str = "custom"
    num_kv_heads: Union[None, int, str, Callable[[nn.Module], int]] = None
    #: "self", "cross" or "decoder_self" (:data:`ATTENTION_KINDS`); ``None``: decided by discovery
    attention: Optional[str] = None

    def __post_init__(self):
        for role in ROLES:
            object.__setattr__(self, role, _as_block(role, getattr(self, role)))
        if all(getattr(self, r) is None for r in ("q", "k", "v")):
            raise ValueError("expected a HeadLayout with at least one of q, k, v; received none")
        nh = self.num_heads
        if isinstance(nh, bool) or not (isinstance(nh, (int, str)) or callable(nh)):
            raise TypeError(f"expected num_heads as an int, an attribute name or a callable, received {nh!r}")
        kv = self.num_kv_heads
        if kv is not None and (isinstance(kv, bool) or not (isinstance(kv, (int, str)) or callable(kv))):
            raise TypeError(f"expected num_kv_heads as None, an int, an attribute name or a callable, received {kv!r}")
        if self.attention is not None and self.attention not in ATTENTION_KINDS:
            raise ValueError(f"expected attention in {ATTENTION_KINDS} or None, received {self.attention!r}")

    def blocks(self) -> Dict[str, TensorBlock]:
        """The roles that are present, in :data:`ROLES` order."""
        return {r: getattr(self, r) for r in ROLES if getattr(self, r) is not None}


@dataclass(frozen=True, eq=False)
class ResolvedBlock:
    """A :class:`TensorBlock` bound to an actual parameter, validated against its shape.

    Attributes
    ----------
    param : torch.nn.Parameter
    name : str
        Full dotted name of the parameter in the model (for messages).
    axis, start, size : int
        Heads occupy ``param.narrow(axis, start, size)``, ``size = M * head_size`` (contiguous) or
        ``units * period * head_size`` (interleaved).
    num_heads, head_size : int
        ``num_heads`` is this role's count: ``M`` for Q and the output projection, ``G`` for K, V.
    units, period, slot : int or None, int, int
        Interleaved layout, see :class:`TensorBlock` (``units=None``: contiguous).
    """

    param: nn.Parameter
    name: str
    axis: int
    start: int
    size: int
    num_heads: int
    head_size: int
    units: Optional[int] = None
    period: int = 1
    slot: int = 0

    @property
    def numel_per_head(self) -> int:
        """Entries of one head's block: ``head_size * (numel / shape[axis])``."""
        rest = self.param.numel() // self.param.shape[self.axis]
        return self.head_size * rest

    def key(self) -> Tuple:
        """Identity of the region (parameter id, axis, start, size, units, period, slot)."""
        return (id(self.param), self.axis, self.start, self.size, self.units, self.period, self.slot)

    def axis_mask(self) -> torch.Tensor:
        """Boolean mask (CPU) of the positions along ``axis`` that hold this role's heads."""
        mask = torch.zeros(self.param.shape[self.axis], dtype=torch.bool)
        region = mask.narrow(0, self.start, self.size)
        if self.units is None:
            region.fill_(True)
        else:
            c = self.num_heads // self.units
            region.view(self.units, self.period, self.head_size)[:, self.slot:self.slot + c] = True
        return mask

    def _region(self, t: torch.Tensor) -> torch.Tensor:
        # (num_heads, head_size, *rest) view: head h's block, heads stacked along the first axis
        r = t.narrow(self.axis, self.start, self.size).movedim(self.axis, 0)
        if self.units is None:
            return r.unflatten(0, (self.num_heads, self.head_size))
        c = self.num_heads // self.units
        r = r.unflatten(0, (self.units, self.period, self.head_size))[:, self.slot:self.slot + c]
        return r  # (units, c, head_size, *rest): head u c + j at [u, j]

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Rows per head of ``t`` (the parameter, its ``.grad`` or any tensor of its shape).

        Returns an ``(M, numel_per_head)`` tensor; a view of ``t`` when the layout allows (heads along
        axis 0 of a contiguous tensor), otherwise a copy. Differentiable. A sharded ``t`` (FSDP2
        ``DTensor``) is all-gathered first (a collective, see :mod:`attention_adapter.sharding`).
        """
        return self._region(unshard(t)).reshape(self.num_heads, -1)

    def scatter(self, t: torch.Tensor, rows: torch.Tensor) -> None:
        """Write ``rows`` ``(num_heads, numel_per_head)`` into the head positions of ``t``, in place."""
        if is_sharded(t):
            raise ShardingError(
                f"expected a full tensor to write the heads of {self.name!r} into, received a sharded "
                f"{describe(t)}; write into FullTensors.grad_target(...) and commit() (attention_adapter.sharding)"
            )
        region = self._region(t)
        region.copy_(rows.reshape(region.shape))


@dataclass(frozen=True, eq=False)
class ResolvedLayout:
    """A :class:`HeadLayout` bound to one module of a model.

    Attributes
    ----------
    name : str
        Module name in the model (``""`` for the root).
    module : nn.Module
    num_heads : int
        ``M``, the number of query heads.
    blocks : dict role -> ResolvedBlock
    kind : str
        Free text describing the layout.
    attention : str
        ``"self"``, ``"cross"`` or ``"decoder_self"`` (:data:`ATTENTION_KINDS`).
    num_kv_heads : int
        ``G``, the number of key/value heads (``M`` unless grouped-/multi-query attention).
    """

    name: str
    module: nn.Module
    num_heads: int
    blocks: Mapping[str, ResolvedBlock] = field(default_factory=dict)
    kind: str = "custom"
    attention: str = "self"
    num_kv_heads: Optional[int] = None

    def __post_init__(self):
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)

    def heads_text(self) -> str:
        """``"4 heads"``, or ``"4 query / 2 key-value heads"`` under grouped-query attention."""
        if self.num_kv_heads == self.num_heads:
            return f"{self.num_heads} heads"
        return f"{self.num_heads} query / {self.num_kv_heads} key-value heads"

    def describe(self) -> str:
        """One line per role: parameter, shape, axis, region and head size."""
        lines = []
        for role, b in self.blocks.items():
            inter = "" if b.units is None else f" interleaved({b.units} units x {b.period} slots, slot {b.slot})"
            lines.append(
                f"    {role:<6} {b.name} {tuple(b.param.shape)} axis={b.axis} "
                f"[{b.start}:{b.start + b.size}]{inter} -> {b.num_heads} x {b.numel_per_head}"
                + ("" if b.param.requires_grad else "  (frozen)")
            )
        return "\n".join(lines)


def _num_heads_of(module: nn.Module, spec, where: str) -> int:
    if isinstance(spec, str):
        if not hasattr(module, spec):
            raise ValueError(f"{where}: expected the module to have attribute {spec!r} giving the number of heads")
        value = getattr(module, spec)
    elif callable(spec):
        value = spec(module)
    else:
        value = spec
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: expected a positive integer number of heads, received {value!r}")
    return value


def _get_param(module: nn.Module, dotted: str, where: str) -> nn.Parameter:
    obj: Any = module
    for part in dotted.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{where}: expected a parameter {dotted!r} in {type(module).__name__}, found none")
        obj = getattr(obj, part)
    if not isinstance(obj, nn.Parameter):
        raise TypeError(f"{where}: expected {dotted!r} to be an nn.Parameter, received {type(obj).__name__}")
    return obj


def resolve_layout(name: str, module: nn.Module, layout: HeadLayout, attention: Optional[str] = None) -> ResolvedLayout:
    """Bind ``layout`` to ``module`` and check every block against the parameter shapes.

    ``attention`` (``"self"``, ``"cross"``, ``"decoder_self"``) labels the site; the layout's own
    ``attention`` wins, ``None`` for both means ``"self"``.

    Raises
    ------
    ValueError
        If a tensor is missing, an axis is out of range, a region runs past the end of its axis,
        the number of heads does not divide a region's length, the key/value head count does not
        divide the query head count, or Q and K heads differ in size.
    """
    if not isinstance(layout, HeadLayout):
        raise TypeError(f"expected a HeadLayout for module {name!r}, received {type(layout).__name__}")
    where = f"attention module {name or '<root>'!r} ({type(module).__name__})"
    m = _num_heads_of(module, layout.num_heads, where)
    g = m if layout.num_kv_heads is None else _num_heads_of(module, layout.num_kv_heads, where + " (key/value heads)")
    if m % g != 0:
        raise ValueError(f"{where}: expected a number of key/value heads dividing the {m} query heads, received {g}")
    kind_of_attention = layout.attention or attention or "self"
    if kind_of_attention not in ATTENTION_KINDS:
        raise ValueError(f"{where}: expected attention in {ATTENTION_KINDS}, received {kind_of_attention!r}")
    blocks: Dict[str, ResolvedBlock] = {}
    for role, blk in layout.blocks().items():
        n = g if role in KV_ROLES else m
        p = _get_param(module, blk.tensor, where)
        if not (-p.dim() <= blk.axis < p.dim()):
            raise ValueError(
                f"{where}: role {role!r} tensor {blk.tensor!r} of shape {tuple(p.shape)} has no axis {blk.axis}"
            )
        axis = blk.axis % p.dim()
        length = p.shape[axis]
        size = length - blk.start if blk.size is None else blk.size
        if size < 1 or blk.start + size > length:
            raise ValueError(
                f"{where}: role {role!r} region [{blk.start}:{blk.start + size}] of {blk.tensor!r} runs past "
                f"its axis {axis} of length {length}"
            )
        full = f"{name}.{blk.tensor}" if name else blk.tensor
        if blk.units is None:
            if size % n != 0:
                raise ValueError(
                    f"{where}: {n} heads do not divide role {role!r} of {blk.tensor!r}: expected a length "
                    f"divisible by {n} along axis {axis}, received {size}"
                )
            blocks[role] = ResolvedBlock(p, full, axis, blk.start, size, n, size // n)
            continue
        u, per = blk.units, blk.period
        if n % u != 0 or size % (u * per) != 0 or blk.slot + n // u > per:
            raise ValueError(
                f"{where}: role {role!r} of {blk.tensor!r}: expected {n} heads in {u} interleaved units of "
                f"{per} slots (slots [{blk.slot}:{blk.slot + n // max(u, 1)}] of each) over a length divisible "
                f"by {u * per}; received length {size}"
            )
        blocks[role] = ResolvedBlock(p, full, axis, blk.start, size, n, size // (u * per), u, per, blk.slot)
    hs = {r: b.head_size for r, b in blocks.items() if r in ("q", "k")}
    if len(set(hs.values())) > 1:
        counts = {r: blocks[r].num_heads for r in hs}
        raise ValueError(f"{where}: expected q and k of the same head size, received head sizes {hs} for head "
                         f"counts {counts} (grouped-query attention: give HeadLayout(num_kv_heads=...))")
    return ResolvedLayout(name, module, m, blocks, layout.kind, kind_of_attention, g)


# ----------------------------------------------------------------------------------------------
# built-in layouts
# ----------------------------------------------------------------------------------------------


def multihead_attention_layout(module: nn.MultiheadAttention) -> HeadLayout:
    """Layout of ``torch.nn.MultiheadAttention`` (either ``batch_first``).

    With equal embedding sizes the projections are packed in ``in_proj_weight`` (``3E x E``, rows
    ``[W_q; W_k; W_v]``); with ``kdim``/``vdim`` different from ``embed_dim`` they are the separate
    ``q_proj_weight`` (``E x E``), ``k_proj_weight`` (``E x kdim``), ``v_proj_weight`` (``E x vdim``).
    ``in_proj_bias`` (``3E``) holds the per-head biases; ``out_proj.weight`` (``E x E``) reads head
    ``h`` from columns ``[h d, (h+1) d)``. ``bias_k``/``bias_v`` (``add_bias_kv``) are not particles.
    """
    e = module.embed_dim
    has_bias = module.in_proj_bias is not None
    bias = {}
    if has_bias:
        bias = dict(q_bias=TensorBlock("in_proj_bias", 0, 0, e), k_bias=TensorBlock("in_proj_bias", 0, e, e),
                    v_bias=TensorBlock("in_proj_bias", 0, 2 * e, e))
    if module._qkv_same_embed_dim:
        return HeadLayout(
            num_heads="num_heads",
            q=TensorBlock("in_proj_weight", 0, 0, e),
            k=TensorBlock("in_proj_weight", 0, e, e),
            v=TensorBlock("in_proj_weight", 0, 2 * e, e),
            out=TensorBlock("out_proj.weight", 1),
            kind="nn.MultiheadAttention (packed in_proj_weight)",
            **bias,
        )
    return HeadLayout(
        num_heads="num_heads",
        q="q_proj_weight",
        k="k_proj_weight",
        v="v_proj_weight",
        out=TensorBlock("out_proj.weight", 1),
        kind="nn.MultiheadAttention (separate q/k/v weights)",
        **bias,
    )


def _linear_bias(prefix: str, lin: nn.Module) -> Optional[TensorBlock]:
    return TensorBlock(f"{prefix}.bias", 0) if getattr(lin, "bias", None) is not None else None


def bert_self_attention_layout(module: nn.Module, prefix: str = "") -> HeadLayout:
    """Layout of a Hugging Face BERT-family self/cross-attention (``query``/``key``/``value`` Linear).

    Each of ``query.weight``, ``key.weight``, ``value.weight`` is ``all_head_size x hidden``
    (``nn.Linear``), head ``h`` in rows ``[h d, (h+1) d)``.
    """
    pre = f"{prefix}." if prefix else ""
    return HeadLayout(
        num_heads=lambda m: _attr(m, prefix).num_attention_heads,
        q=f"{pre}query.weight",
        k=f"{pre}key.weight",
        v=f"{pre}value.weight",
        q_bias=_linear_bias(f"{pre}query", module.query),
        k_bias=_linear_bias(f"{pre}key", module.key),
        v_bias=_linear_bias(f"{pre}value", module.value),
        kind="BERT-family attention (query/key/value Linear)",
    )


def bert_attention_layout(module: nn.Module) -> HeadLayout:
    """Layout of a Hugging Face ``BertAttention``-like wrapper: ``.self`` plus ``.output.dense``.

    As :func:`bert_self_attention_layout`, with the output projection ``output.dense.weight``
    (``hidden x all_head_size``, head ``h`` in columns ``[h d, (h+1) d)``).
    """
    inner = bert_self_attention_layout(module.self, prefix="self")
    return HeadLayout(
        num_heads=inner.num_heads,
        q=inner.q, k=inner.k, v=inner.v,
        out=TensorBlock("output.dense.weight", 1),
        q_bias=inner.q_bias, k_bias=inner.k_bias, v_bias=inner.v_bias,
        kind="BERT-family attention (query/key/value Linear, output.dense)",
    )


def gpt2_attention_layout(module: nn.Module) -> HeadLayout:
    """Layout of Hugging Face GPT-2 attention (``Conv1D`` weights are ``in x out``).

    Self-attention: ``c_attn.weight`` is ``E x 3E``, columns ``[W_q | W_k | W_v]``, so Q, K and V
    are blocks of axis 1 at offsets 0, E, 2E; ``c_attn.bias`` (``3E``) likewise on axis 0.
    Cross-attention (``q_attn`` present): ``q_attn`` holds Q and ``c_attn`` (``E x 2E``) holds
    ``[W_k | W_v]``. ``c_proj.weight`` (``E x E``, ``in x out``) reads head ``h`` from *rows*
    ``[h d, (h+1) d)``: axis 0.
    """
    e = module.embed_dim
    common = dict(num_heads="num_heads", out=TensorBlock("c_proj.weight", 0))
    if hasattr(module, "q_attn"):
        return HeadLayout(
            q=TensorBlock("q_attn.weight", 1),
            k=TensorBlock("c_attn.weight", 1, 0, e),
            v=TensorBlock("c_attn.weight", 1, e, e),
            q_bias=TensorBlock("q_attn.bias", 0),
            k_bias=TensorBlock("c_attn.bias", 0, 0, e),
            v_bias=TensorBlock("c_attn.bias", 0, e, e),
            kind="GPT-2 cross-attention (q_attn + fused c_attn Conv1D, in x out)",
            **common,
        )
    return HeadLayout(
        q=TensorBlock("c_attn.weight", 1, 0, e),
        k=TensorBlock("c_attn.weight", 1, e, e),
        v=TensorBlock("c_attn.weight", 1, 2 * e, e),
        q_bias=TensorBlock("c_attn.bias", 0, 0, e),
        k_bias=TensorBlock("c_attn.bias", 0, e, e),
        v_bias=TensorBlock("c_attn.bias", 0, 2 * e, e),
        kind="GPT-2 attention (fused c_attn Conv1D, in x out)",
        **common,
    )


def _attr(module: nn.Module, dotted: str) -> Any:
    obj: Any = module
    for part in filter(None, dotted.split(".")):
        obj = getattr(obj, part)
    return obj


# ----------------------------------------------------------------------------------------------
# structural layouts: any module with Q/K/V projections, from its own structure and config
# ----------------------------------------------------------------------------------------------


class LayoutNotFound(ValueError):
    """A module looks like attention but its head layout could not be determined (message: why)."""


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
#: fused QKV projections (one Linear or Conv1D producing Q, K and V)
FUSED_NAMES: Tuple[str, ...] = ("c_attn", "qkv", "query_key_value", "Wqkv", "qkv_proj", "W_pack", "to_qkv")
#: output projections next to a fused QKV projection
FUSED_OUT_NAMES: Tuple[str, ...] = ("c_proj", "dense", "o_proj", "out_proj", "proj", "Wo", "out", "o")
#: attributes giving the number of (query) heads, on the module, then on its/the model's config
HEAD_ATTRS: Tuple[str, ...] = ("num_heads", "num_attention_heads", "n_heads", "n_head")
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


def _proj(module: nn.Module, name: str):
    """``(out_features, heads axis, in_features)`` of a Linear (``out x in``) or Conv1D (``in x out``)."""
    m = getattr(module, name, None)
    if isinstance(m, nn.Linear):
        return m.out_features, 0, m.in_features
    w = getattr(m, "weight", None)
    if isinstance(m, nn.Module) and type(m).__name__ == "Conv1D" and isinstance(w, nn.Parameter) and w.dim() == 2:
        return w.shape[1], 1, w.shape[0]
    return None


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


def _out_block(module: nn.Module, names, width: int) -> Tuple[Optional[TensorBlock], str]:
    """The output projection among ``names`` whose input is ``width`` wide (per-head columns)."""
    for o in names:
        pr = _proj(module, o)
        if pr is not None and pr[2] == width:
            return TensorBlock(f"{o}.weight", 1 - pr[1]), o
    return None, ""


def structural_layout(module: nn.Module, config: Any = None, prefix: str = "") -> HeadLayout:
    """The :class:`HeadLayout` of ``module`` read from its structure and its (or the model's) config.

    Parameters
    ----------
    module : nn.Module
        An attention module with separate Q/K/V projections (:data:`SEPARATE_SCHEMES`) or one fused
        QKV projection (:data:`FUSED_NAMES`); ``nn.Linear`` (``out x in``, heads along axis 0) or
        ``Conv1D`` (``in x out``, heads along axis 1).
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
    * otherwise blocked ``[Q; K; V]`` (GPT-2 ``c_attn``, MPT/ModernBERT ``Wqkv``, ViT-style ``qkv``,
      Phi-3 ``qkv_proj``, Falcon multi-query).

    Raises
    ------
    LayoutNotFound
        With the reason (no head count, widths inconsistent with it, projections that are not
        ``nn.Linear``/``Conv1D``).
    """
    pre = f"{prefix}." if prefix else ""
    where = f"{type(module).__name__}"
    children = dict(module.named_children())
    scheme = next(((q, k, v, outs) for q, k, v, outs in SEPARATE_SCHEMES
                   if q in children and k in children and v in children), None)
    if scheme is not None:
        q, k, v, outs = scheme
        projs = {r: _proj(module, n) for r, n in (("q", q), ("k", k), ("v", v))}
        bad = [f"{n} ({type(children[n]).__name__})" for r, n in (("q", q), ("k", k), ("v", v)) if projs[r] is None]
        if bad:
            raise LayoutNotFound(f"{where}: expected nn.Linear or Conv1D projections, received {', '.join(bad)}")
        h, d, g, src = _counts(module, config, where)
        lq, lk, lv = projs["q"][0], projs["k"][0], projs["v"][0]
        if d is None:
            if lq % h:
                raise LayoutNotFound(f"{where}: {h} heads ({src}) do not divide the {lq} outputs of {q}")
            d = lq // h
        if lq != h * d:
            raise LayoutNotFound(f"{where}: expected {q} with {h} x {d} = {h * d} outputs ({src}), received {lq}")
        if g is None:
            if lk % d:
                raise LayoutNotFound(f"{where}: head size {d} does not divide the {lk} outputs of {k}")
            g = lk // d
        if lk != g * d or h % g:
            raise LayoutNotFound(f"{where}: expected {k} with G x {d} outputs, G dividing {h} heads ({src}); "
                                 f"received {lk} outputs (G = {lk / d:g})")
        if lv % g:
            raise LayoutNotFound(f"{where}: {g} key/value heads do not divide the {lv} outputs of {v}")
        out, oname = _out_block(module, outs, h * (lv // g))
        blocks = {r: TensorBlock(f"{pre}{n}.weight", projs[r][1]) for r, n in (("q", q), ("k", k), ("v", v))}
        biases = {f"{r}_bias": TensorBlock(f"{pre}{n}.bias", 0) for r, n in (("q", q), ("k", k), ("v", v))
                  if _bias(module, n)}
        if out is not None:
            out = TensorBlock(pre + out.tensor, out.axis)
        return HeadLayout(num_heads=h, num_kv_heads=g, out=out, **blocks, **biases,
                          kind=f"separate {q}/{k}/{v}" + (f"/{oname}" if oname else "")
                          + (" Conv1D (in x out)" if projs["q"][1] == 1 else " Linear"))
    fused = next((f for f in FUSED_NAMES if f in children), None)
    if fused is None:
        raise LayoutNotFound(f"{where}: expected Q/K/V projections named as in {[s[:3] for s in SEPARATE_SCHEMES]} "
                             f"or a fused projection named one of {FUSED_NAMES}; found children {sorted(children)}")
    pr = _proj(module, fused)
    if pr is None:
        raise LayoutNotFound(f"{where}: expected {fused} as nn.Linear or Conv1D, "
                             f"received {type(children[fused]).__name__}")
    width, axis, _ = pr
    h, d, g, src = _counts(module, config, where)
    if "q_attn" in children:  # GPT-2-style cross-attention: q_attn holds Q, the fused projection [K | V]
        qp = _proj(module, "q_attn")
        if qp is None or width % 2:
            raise LayoutNotFound(f"{where}: expected q_attn and an even-width {fused} ([K | V]), "
                                 f"received width {width}")
        half = width // 2
        w, b = f"{pre}{fused}.weight", f"{pre}{fused}.bias"
        out, _ = _out_block(module, FUSED_OUT_NAMES, qp[0])
        biases = {}
        if _bias(module, fused):
            biases = dict(k_bias=TensorBlock(b, 0, 0, half), v_bias=TensorBlock(b, 0, half, half))
        if _bias(module, "q_attn"):
            biases["q_bias"] = TensorBlock(f"{pre}q_attn.bias", 0)
        return HeadLayout(num_heads=h, num_kv_heads=g, q=TensorBlock(f"{pre}q_attn.weight", qp[1]),
                          k=TensorBlock(w, axis, 0, half), v=TensorBlock(w, axis, half, half),
                          out=None if out is None else TensorBlock(pre + out.tensor, out.axis), **biases,
                          kind=f"cross-attention q_attn + fused {fused} [K | V]")
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
    has_bias = _bias(module, fused)
    r = h // g
    if _flag(module, config, "new_decoder_architecture"):
        order = f"grouped [q x {r}, k, v] per key/value head"
        spec = {"q": (g, r + 2, 0), "k": (g, r + 2, r), "v": (g, r + 2, r + 1)}
    elif _model_type(module, config) in PER_HEAD_INTERLEAVED_MODEL_TYPES and g == h:
        order = "per-head interleaved [q_h, k_h, v_h]"
        spec = {"q": (h, 3, 0), "k": (h, 3, 1), "v": (h, 3, 2)}
    else:
        order = "blocked [Q; K; V]"
        spec = None
    if spec is None:
        offs = {"q": (0, h * d), "k": (h * d, g * d), "v": ((h + g) * d, g * d)}
        blocks = {role: TensorBlock(w, axis, o, n) for role, (o, n) in offs.items()}
        biases = {f"{role}_bias": TensorBlock(b, 0, o, n) for role, (o, n) in offs.items()} if has_bias else {}
    else:
        blocks = {role: TensorBlock(w, axis, 0, None, *s) for role, s in spec.items()}
        biases = {f"{role}_bias": TensorBlock(b, 0, 0, None, *s) for role, s in spec.items()} if has_bias else {}
    out, oname = _out_block(module, FUSED_OUT_NAMES, h * d)
    return HeadLayout(num_heads=h, num_kv_heads=g, out=None if out is None else TensorBlock(pre + out.tensor, out.axis),
                      **blocks, **biases,
                      kind=f"fused {fused} {'Conv1D (in x out)' if axis == 1 else 'Linear'}, {order}"
                      + (f", {oname}" if oname else ""))


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
                          v_bias=lay.v_bias, kind=lay.kind + f" in .{inner_name}, output.dense")
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
