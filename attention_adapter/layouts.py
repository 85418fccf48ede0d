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

Users describe their own modules with :class:`HeadLayout` and :class:`TensorBlock` (see
:mod:`attention_adapter.discovery` for registration); built-in factories cover
``torch.nn.MultiheadAttention`` (hence ``nn.Transformer*``), Hugging Face BERT-family self- and
cross-attention (``query``/``key``/``value`` Linear layers) and GPT-2 attention (``c_attn`` Conv1D).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

__all__ = [
    "TensorBlock",
    "HeadLayout",
    "ResolvedBlock",
    "ResolvedLayout",
    "ROLES",
    "WEIGHT_ROLES",
    "BIAS_ROLES",
    "resolve_layout",
    "multihead_attention_layout",
    "bert_attention_layout",
    "bert_self_attention_layout",
    "gpt2_attention_layout",
]

#: projection roles whose weights can be particles, in gather order
WEIGHT_ROLES: Tuple[str, ...] = ("q", "k", "v", "out")
#: per-head bias roles (the output projection's bias is shared by all heads, so it has none)
BIAS_ROLES: Tuple[str, ...] = ("q_bias", "k_bias", "v_bias")
ROLES: Tuple[str, ...] = WEIGHT_ROLES + BIAS_ROLES


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
    """

    tensor: str
    axis: int = 0
    start: int = 0
    size: Optional[int] = None

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


BlockSpec = Union[TensorBlock, str, Tuple[str, int], None]


def _as_block(role: str, spec: BlockSpec) -> Optional[TensorBlock]:
    if spec is None or isinstance(spec, TensorBlock):
        return spec
    if isinstance(spec, str):
        return TensorBlock(spec, axis=0)
    if isinstance(spec, tuple) and 2 <= len(spec) <= 4 and isinstance(spec[0], str):
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
        Number of heads ``M``: an int, the name of an attribute of the module (``"num_heads"``), or
        a callable ``module -> int``.
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

    def __post_init__(self):
        for role in ROLES:
            object.__setattr__(self, role, _as_block(role, getattr(self, role)))
        if all(getattr(self, r) is None for r in ("q", "k", "v")):
            raise ValueError("expected a HeadLayout with at least one of q, k, v; received none")
        nh = self.num_heads
        if isinstance(nh, bool) or not (isinstance(nh, (int, str)) or callable(nh)):
            raise TypeError(f"expected num_heads as an int, an attribute name or a callable, received {nh!r}")

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
        Heads occupy ``param.narrow(axis, start, size)``, ``size = M * head_size``.
    num_heads, head_size : int
    """

    param: nn.Parameter
    name: str
    axis: int
    start: int
    size: int
    num_heads: int
    head_size: int

    @property
    def numel_per_head(self) -> int:
        """Entries of one head's block: ``head_size * (numel / shape[axis])``."""
        rest = self.param.numel() // self.param.shape[self.axis]
        return self.head_size * rest

    def key(self) -> Tuple[int, int, int, int]:
        """Identity of the region (parameter id, axis, start, size); used to detect overlaps."""
        return (id(self.param), self.axis, self.start, self.size)

    def _region(self, t: torch.Tensor) -> torch.Tensor:
        # (size, *rest): heads stacked along the first axis, head h in rows [h*hs, (h+1)*hs)
        return t.narrow(self.axis, self.start, self.size).movedim(self.axis, 0)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Rows per head of ``t`` (the parameter, its ``.grad`` or any tensor of its shape).

        Returns an ``(M, numel_per_head)`` tensor; a view of ``t`` when the layout allows (heads along
        axis 0 of a contiguous tensor), otherwise a copy. Differentiable.
        """
        return self._region(t).reshape(self.num_heads, -1)

    def scatter(self, t: torch.Tensor, rows: torch.Tensor) -> None:
        """Write ``rows`` ``(M, numel_per_head)`` into the head positions of ``t``, in place."""
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
    blocks : dict role -> ResolvedBlock
    kind : str
    """

    name: str
    module: nn.Module
    num_heads: int
    blocks: Mapping[str, ResolvedBlock] = field(default_factory=dict)
    kind: str = "custom"

    def describe(self) -> str:
        """One line per role: parameter, shape, axis, region and head size."""
        lines = []
        for role, b in self.blocks.items():
            lines.append(
                f"    {role:<6} {b.name} {tuple(b.param.shape)} axis={b.axis} "
                f"[{b.start}:{b.start + b.size}] -> {b.num_heads} x {b.numel_per_head}"
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


def resolve_layout(name: str, module: nn.Module, layout: HeadLayout) -> ResolvedLayout:
    """Bind ``layout`` to ``module`` and check every block against the parameter shapes.

    Raises
    ------
    ValueError
        If a tensor is missing, an axis is out of range, a region runs past the end of its axis,
        or the number of heads does not divide a region's length.
    """
    if not isinstance(layout, HeadLayout):
        raise TypeError(f"expected a HeadLayout for module {name!r}, received {type(layout).__name__}")
    where = f"attention module {name or '<root>'!r} ({type(module).__name__})"
    m = _num_heads_of(module, layout.num_heads, where)
    blocks: Dict[str, ResolvedBlock] = {}
    for role, blk in layout.blocks().items():
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
        if size % m != 0:
            raise ValueError(
                f"{where}: {m} heads do not divide role {role!r} of {blk.tensor!r}: expected a length "
                f"divisible by {m} along axis {axis}, received {size}"
            )
        full = f"{name}.{blk.tensor}" if name else blk.tensor
        blocks[role] = ResolvedBlock(p, full, axis, blk.start, size, m, size // m)
    hs = {r: b.head_size for r, b in blocks.items() if r in ("q", "k")}
    if len(set(hs.values())) > 1:
        raise ValueError(f"{where}: expected q and k of the same head size, received {hs}")
    return ResolvedLayout(name, module, m, blocks, layout.kind)


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
