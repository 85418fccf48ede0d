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

A layout also says what :class:`~attention_adapter.HeadCapture` reads in a forward pass: where the
per-head attention probabilities are in the module's outputs (:attr:`HeadLayout.attention_map`) and
where the per-head outputs are (:attr:`HeadLayout.head_outputs`), so that no tensor is taken for
another because its shape fits.

This module is what a layout *is* and how it binds to tensors (:func:`resolve_layout`). Users
describe their own modules with :class:`HeadLayout` and :class:`TensorBlock` (see
:mod:`attention_adapter.discovery` for registration); how the layouts of ``torch`` and Hugging Face
model families are read from a module's structure is :mod:`attention_adapter.families`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from particlesampling import validation

from ._compat import warn_renamed
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
    "HEAD_OUTPUTS",
    "resolve_layout",
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
#: where :class:`~attention_adapter.HeadCapture` reads the per-head outputs (``HeadLayout.head_outputs``):
#: the input of the module owning the ``out`` block, or the module's own first output
HEAD_OUTPUTS: Tuple[str, ...] = ("out_projection_input", "module_output")


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
        for name, low, optional in (("axis", None, False), ("start", 0, False), ("size", 1, True),
                                    ("units", 1, True), ("period", 1, False), ("slot", 0, False)):
            object.__setattr__(self, name, validation.check_int(f"TensorBlock.{name}", getattr(self, name),
                                                                minimum=low, optional=optional))
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
    description : str
        Free text shown in reports (e.g. ``"nn.MultiheadAttention (packed in_proj_weight)"``).
        ``kind=`` is its deprecated alias.
    attention : {"self", "cross", "decoder_self"} or None
        What the module attends to (:data:`ATTENTION_KINDS`); ``None``: decided by discovery.
    attention_map : int or None
        Position, in the tuple the module returns, of its per-head attention probabilities
        ``(B, M, T, S)`` (for :class:`~attention_adapter.HeadCapture`). Default 1, Hugging Face's
        ``(attn_output, attn_weights)``; T5's ``(attn_output, position_bias, attn_weights)`` is 2;
        ``None``: the module returns none. Only a 4-D tensor with ``M`` on axis 1 found there is
        recorded (eager attention; SDPA returns ``None``).
    head_outputs : {"out_projection_input", "module_output"} or None
        Where the per-head outputs (attention-weighted values before the output projection) are:
        the input of the module that owns ``out`` (the default when ``out`` is given), or the
        module's own first output ``(B, T, M d_v)`` when the module has no output projection
        (a BERT-style ``.self``). ``None`` (without ``out``): not recorded, since an output that
        may already be projected cannot be split into heads.

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
    description: str = "custom"
    num_kv_heads: Union[None, int, str, Callable[[nn.Module], int]] = None
    #: "self", "cross" or "decoder_self" (:data:`ATTENTION_KINDS`); ``None``: decided by discovery
    attention: Optional[str] = None
    #: index of the attention probabilities in the module's outputs (``None``: none)
    attention_map: Optional[int] = 1
    #: where the per-head outputs are (:data:`HEAD_OUTPUTS`); ``None``: from ``out``, else nowhere
    head_outputs: Optional[str] = None
    #: deprecated alias of ``description``
    kind: Optional[str] = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.kind is not None:
            if self.description != "custom":
                raise TypeError("HeadLayout: expected description= only, received both description= and its "
                                "deprecated alias kind=")
            warn_renamed("HeadLayout(kind=...)", "description=...", stacklevel=4)
            object.__setattr__(self, "description", self.kind)
            object.__setattr__(self, "kind", None)
        if not isinstance(self.description, str):
            raise TypeError(f"expected description as a str, received {self.description!r}")
        object.__setattr__(self, "attention_map", validation.check_int("attention_map", self.attention_map,
                                                                       minimum=0, optional=True))
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
        if self.head_outputs is None:
            object.__setattr__(self, "head_outputs", None if self.out is None else "out_projection_input")
        if self.head_outputs is not None and self.head_outputs not in HEAD_OUTPUTS:
            raise ValueError(f"expected head_outputs in {HEAD_OUTPUTS} or None, received {self.head_outputs!r}")
        if self.head_outputs == "out_projection_input" and self.out is None:
            raise ValueError("expected an out block with head_outputs='out_projection_input', received out=None")

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
    description : str
        Free text describing the layout (``kind`` is its deprecated alias).
    attention : str
        ``"self"``, ``"cross"`` or ``"decoder_self"`` (:data:`ATTENTION_KINDS`).
    num_kv_heads : int
        ``G``, the number of key/value heads (``M`` unless grouped-/multi-query attention).
    attention_map, head_outputs :
        What :class:`~attention_adapter.HeadCapture` reads, see :class:`HeadLayout`.
    """

    name: str
    module: nn.Module
    num_heads: int
    blocks: Mapping[str, ResolvedBlock] = field(default_factory=dict)
    description: str = "custom"
    attention: str = "self"
    num_kv_heads: Optional[int] = None
    attention_map: Optional[int] = 1
    head_outputs: Optional[str] = None

    def __post_init__(self):
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)

    @property
    def kind(self) -> str:
        """Deprecated alias of :attr:`description`."""
        warn_renamed("ResolvedLayout.kind", "ResolvedLayout.description")
        return self.description

    def head_output_module(self) -> Optional[nn.Module]:
        """The sub-module whose input is the concatenation of the head outputs, ``(..., M d_v)``.

        With ``head_outputs="out_projection_input"``: the module owning the ``out`` block (the
        output projection, e.g. ``output.dense``, ``c_proj``, ``to_out.0``); ``None`` otherwise, or
        when the block is a parameter of the attention module itself (no sub-module is called).
        """
        blk = self.blocks.get("out")
        if blk is None or self.head_outputs != "out_projection_input":
            return None
        rel = blk.name[len(self.name) + 1:] if self.name else blk.name
        if "." not in rel:
            return None
        try:
            return self.module.get_submodule(rel.rsplit(".", 1)[0])
        except AttributeError:
            return None

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
    return validation.check_int(f"the number of heads of {where}", value, minimum=1)


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
    return ResolvedLayout(name, module, m, blocks, layout.description, kind_of_attention, g,
                          layout.attention_map, layout.head_outputs)
