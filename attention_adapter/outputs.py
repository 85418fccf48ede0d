"""Function-space head particles: what the heads compute on a seeded subsample of the batch's tokens.

:class:`OutputParticles` puts forward hooks on the attention modules of one function-space particle
system per module (:mod:`attention_adapter.spaces`). At every forward pass with gradients enabled
(in training mode: ``model.eval()`` or ``torch.no_grad()`` records nothing) it records, for each module,
the head features on ``tokens`` (query) token positions drawn without replacement from the batch
(seeded by ``(seed, step, module index)`` through :func:`attention_adapter.noise.step_seed`, so a run
is reproducible and every data-parallel rank draws the same positions of its own batch). Positions
are drawn from every (sentence, position) slot of the batch, padded slots included: a query at a
padded position still attends to the sentence's keys, so its features are finite, but the task's
loss usually ignores them (masked pooling), and with much padding a share of the ``tokens`` goes
to them. ``features``
chooses them (Wang et al., ICLR 2019, compare network *outputs*; a head has two):

* ``"outputs"`` (default): the matrix ``F`` (``M x m``) whose row ``h`` is head ``h``'s output vectors
  ``W_o^h o_h(x_t)`` (``d_model`` per token), its term of the output projection's sum, where ``o_h`` is
  the attention-weighted value of head ``h`` (the output projection's input, split into heads) and
  ``W_o^h`` its columns of the output projection; ``o_h`` alone where the module declares no output
  projection (then the module's first output, split into heads: Lin et al.'s hops);
* ``"maps"``: the matrix ``A`` (``M x m'``) whose row ``h`` is head ``h``'s attention rows
  ``a_h(x_t) = softmax(q_h(x_t)^T k_h(x_.) / sqrt(d) + mask)`` (``S`` key positions per token) at the
  same positions: the probabilities the module computes (after its attention dropout in training);
* ``"both"``: the two, as two parts of one particle.

Under grouped-query attention a particle is a key/value head with its ``r`` query heads (as in
circuit space), its row the concatenation of theirs.

The parts keep their autograd graph. What happens to them is the owner's ``consume(group, parts,
params)`` callback: :class:`~attention_adapter.RepulsiveHeads` computes the core's Stein terms on them
and pulls them back to the heads' parameters at once (one vector-Jacobian product per module, with
the graph kept for the loss's own backward), :class:`~attention_adapter.HeadRepulsionPenalty` keeps
them to put its kernel similarity into the loss. Two parts are joined by :func:`joined_features`:
each divided by the square root of its own bandwidth, so that the kernel on the joined rows is
``f(|f_i - f_j|^2 / h_f + |a_i - a_j|^2 / h_a)`` (for the RBF kernel, the product of the two parts'
kernels) and neither part's scale swamps the other's.

Where the features are read: the head outputs at the input of the output projection's module (a
forward pre-hook; Hugging Face layouts, user layouts with an ``out`` block inside a called
sub-module), or a module's first output where it has no output projection; the maps at output
position ``HeadLayout.attention_map`` of the module (Hugging Face's ``(attn_output, attn_weights)``),
which only eager attention fills: PyTorch's fused ``scaled_dot_product_attention`` and flash kernels
never form the maps, and a module that returns none raises at the first forward pass, naming it.
``nn.MultiheadAttention`` computes its heads inside one functional call, so its hook recomputes the
per-head maps and values from the call's inputs (as :class:`~attention_adapter.HeadCapture` does,
here with gradients). Other modules are refused when the space is chosen, with an error naming them.

Under FSDP2 the forward pass runs on unsharded parameters that FSDP registers on the module for the
duration of its forward; the hooks read those (the pull-back then gives full-size gradients). Under
gradient checkpointing a forward pass is recomputed inside the backward pass: a recomputation of a
recorded forward pass is not recorded again, and a forward pass run without gradients (reentrant
checkpointing) is recorded when it is recomputed with them.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import particlesampling as ps
from particlesampling import validation

from .noise import step_seed
from .particles import ParticleGroup
from .update import compute_dtype

__all__ = ["OutputParticles", "rows_of", "FEATURES", "check_features", "joined_features", "gather_columns",
           "sum_over_ranks"]


def rows_of(group: ParticleGroup, tensors: Dict[int, torch.Tensor]) -> torch.Tensor:
    """``(M, P)`` rows of ``group`` read from ``tensors[id(param)]`` (tensors of the parameters'
    shapes, e.g. a pulled-back direction), exactly as :meth:`ParticleGroup.gather` reads the
    parameters."""
    parts = []
    m = group.num_particles
    for b in group.blocks:
        g = b.gather(tensors[id(b.param)])
        parts.append(g if b.num_heads == m else g.reshape(m, -1))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _mha_heads(module: nn.MultiheadAttention, call: dict):
    """Per-head outputs ``o_h`` ``(N, L, M, d)`` and attention maps ``(N, M, L, S)`` of an
    ``nn.MultiheadAttention`` call, with gradients."""
    _, maps = module(**{**call, "need_weights": True, "average_attn_weights": False})
    if maps.dim() == 3:
        maps = maps.unsqueeze(0)
    e = module.embed_dim
    value = call["value"]
    w = module.in_proj_weight[2 * e:] if module._qkv_same_embed_dim else module.v_proj_weight
    b = None if module.in_proj_bias is None else module.in_proj_bias[2 * e:]
    if value.dim() == 2:
        value = value.unsqueeze(0 if module.batch_first else 1)
    if not module.batch_first:
        value = value.transpose(0, 1)
    v = F.linear(value, w, b)
    n, s, _ = v.shape
    v = v.reshape(n, s, module.num_heads, module.head_dim).transpose(1, 2)
    if v.shape[2] != maps.shape[-1]:
        raise ValueError("expected nn.MultiheadAttention without add_bias_kv / add_zero_attn in function space")
    return torch.matmul(maps, v).transpose(1, 2), maps


def joined_features(values: Sequence[torch.Tensor], bandwidth=None):
    """Factors ``c_p`` and a bandwidth for joining feature parts into one particle matrix.

    One part: ``((1.0,), bandwidth)``, the part as it is with the caller's bandwidth. Several parts
    ``values[p]`` (``(n, m_p)``, detached): ``c_p = h_p^{-1/2}`` with ``h_p`` the core's bandwidth rule
    ``bandwidth`` evaluated on part ``p`` alone, and bandwidth 1 for the joined rows
    ``[c_1 f^1_i, c_2 f^2_i, ...]``, whose squared distances are ``sum_p |f^p_i - f^p_j|^2 / h_p``.
    With a fixed bandwidth ``h`` this is the plain concatenation with bandwidth ``h``.

    Returns
    -------
    scales : tuple of 0-d tensors (or ``(1.0,)``)
    bandwidth : the spec for the joined rows
    """
    if len(values) == 1:
        return (1.0,), bandwidth
    rule = ps.get_bandwidth(bandwidth)
    if rule.needs_scores:
        raise ValueError(f"features='both' evaluates the bandwidth rule on each part without scores; received "
                         f"{rule!r}, which needs scores")
    scales = []
    for v in values:
        h = torch.as_tensor(rule(v, ps.sqdist(v), None), dtype=v.dtype, device=v.device)
        if h.ndim != 0:
            raise ValueError(f"features='both' needs a scalar bandwidth per part; received {rule!r}, which gives "
                             f"one of shape {tuple(h.shape)}")
        scales.append(torch.rsqrt(h))
    return tuple(scales), 1.0


def _world() -> int:
    d = torch.distributed
    return d.get_world_size() if d.is_available() and d.is_initialized() else 1


def gather_columns(values: torch.Tensor):
    """``(full, start)``: the ``(n, m_r)`` matrices of every data-parallel rank joined along the columns
    (rank order; ranks may hold different ``m_r``), and where this rank's columns start.

    Without an initialised ``torch.distributed`` process group of several ranks: ``(values, 0)``. A
    collective (two all-gathers): every rank must call it, in the same order.
    """
    world = _world()
    if world == 1:
        return values, 0
    dist = torch.distributed
    n, m = values.shape
    size = torch.tensor([m], dtype=torch.int64, device=values.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    padded = values.new_zeros((n, max(sizes)))
    padded[:, :m] = values
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    rank = dist.get_rank()
    return torch.cat([p[:, :s] for p, s in zip(parts, sizes)], dim=1), sum(sizes[:rank])


def sum_over_ranks(tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Each tensor summed over the data-parallel ranks, in its own dtype and shape.

    One all-reduce of all of them joined (in the promoted compute dtype: float32 for float16/bfloat16,
    so a sum of low-precision groups is not rounded rank by rank), then each cast back to its own
    dtype. Without an initialised ``torch.distributed`` process group of several ranks: the tensors
    themselves. A collective: every rank must call it with tensors of the same shapes and dtypes.
    """
    tensors = list(tensors)
    if _world() == 1 or not tensors:
        return tensors
    dtype = compute_dtype(tensors[0].dtype)
    for a in tensors[1:]:
        dtype = torch.promote_types(dtype, compute_dtype(a.dtype))
    flat = torch.cat([a.reshape(-1).to(dtype) for a in tensors])
    torch.distributed.all_reduce(flat)
    out, offset = [], 0
    for a in tensors:
        out.append(flat[offset:offset + a.numel()].reshape(a.shape).to(a.dtype))
        offset += a.numel()
    return out


#: what a head's function-space particle is made of (``RepulsiveHeads(space="outputs", features=...)``)
FEATURES = ("outputs", "maps", "both")


def check_features(features) -> str:
    """``features`` if it is one of :data:`FEATURES`, else ValueError."""
    if features not in FEATURES:
        raise ValueError(f"expected features in {FEATURES}, received {features!r}")
    return features


def _in_backward() -> bool:
    """Whether autograd is executing a backward pass now (a gradient-checkpointing recomputation runs
    the forward there; ``torch.utils.checkpoint`` asks the same question)."""
    current = getattr(torch._C, "_current_graph_task_id", None)
    return current is not None and current() != -1


def _relative(site, block) -> Optional[str]:
    """``block``'s parameter name relative to ``site.module``, or None when the parameter does not
    live under the site (e.g. an output projection in a sibling module): the caller then uses
    ``block.param`` itself."""
    if not site.name:
        return block.name
    prefix = site.name + "."
    return block.name[len(prefix):] if block.name.startswith(prefix) else None


class OutputParticles:
    """Forward hooks that hand each module's head features (``M x m`` parts, with gradients) to a callback.

    Parameters
    ----------
    groups : sequence of ParticleGroup
        One group per attention module (joint blocks of its heads).
    consume : callable
        ``consume(group, parts, params)`` at each forward pass in training mode with gradients
        enabled: ``parts`` a tuple of ``(num_particles, m_p)`` tensors (the outputs, the maps, or
        both in that order), ``params`` the group's parameter tensors as the forward pass used them
        (under FSDP2 the unsharded parameters, otherwise ``group.params``), in the order of
        ``group.params``.
    tokens : int >= 1
        Token positions per module and forward pass (all of them when the batch has fewer).
    seed : int >= 0
        Base seed of the token subsample.
    features : {"outputs", "maps", "both"}
        What is read (module docstring).
    """

    def __init__(self, groups: Sequence[ParticleGroup], consume: Callable, *, tokens: int = 64, seed: int = 0,
                 features: str = "outputs"):
        tokens = validation.check_int("tokens", tokens, minimum=1)
        self.features = check_features(features)
        self.groups = list(groups)
        self.consume = consume
        self.tokens = tokens
        self.seed = seed
        self.step = 0
        #: set False to pause recording (the hooks stay in place)
        self.enabled = True
        self._handles: List = []
        self._busy = False
        self._pending: Dict[int, torch.Tensor] = {}
        self._forward_records: Dict[int, int] = {}
        for index, g in enumerate(self.groups):
            self._handles += self._install(index, g)

    def reset(self) -> None:
        """Start a new optimizer step (called by the owner after using the records)."""
        self._forward_records = {}

    # -- where the features are read -----------------------------------------------------------
    def _install(self, index: int, g: ParticleGroup) -> list:
        site = g.site
        mod = site.module
        outputs, maps = self.features in ("outputs", "both"), self.features in ("maps", "both")
        if isinstance(mod, nn.MultiheadAttention):
            names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
                     "average_attn_weights", "is_causal")

            def mha_hook(module, args, kwargs, output):
                if self._busy or not self._active(g):
                    return None
                call = dict(zip(names, args))
                call.update(kwargs)
                self._busy = True  # only around the module's own re-run (a recomputation must run all of this hook)
                try:
                    heads, probs = _mha_heads(module, call)
                finally:
                    self._busy = False
                self._record(index, g, heads if outputs else None, probs if maps else None)
                return None

            return [mod.register_forward_hook(mha_hook, with_kwargs=True)]
        if maps and site.attention_map is None:
            raise ValueError(f"attention module {site.name!r} ({type(mod).__name__}): its layout says it returns no "
                             f"attention maps (HeadLayout(attention_map=None)), so features={self.features!r} cannot "
                             "read them; use features='outputs'")
        handles = []
        out_mod = site.head_output_module() if outputs else None
        if outputs and out_mod is None:
            if "out" in site.blocks:
                raise ValueError(f"attention module {site.name!r} ({type(mod).__name__}): its output projection "
                                 f"{site.blocks['out'].name!r} is not a called sub-module, so the heads' outputs "
                                 "cannot be read in function space; use space='weights' or 'circuits', or "
                                 "features='maps'")
            if site.head_outputs != "module_output":
                raise ValueError(f"attention module {site.name!r} ({type(mod).__name__}): its layout names no output "
                                 "projection and does not say its output is the heads' outputs "
                                 "(HeadLayout(head_outputs='module_output')), so they cannot be read in function "
                                 "space; use space='weights' or 'circuits', or features='maps'")
        if out_mod is not None:
            def pre_hook(module, args):
                if self._active(g) and args and isinstance(args[0], torch.Tensor) and args[0].dim() == 3:
                    x = args[0]
                    heads = x.reshape(*x.shape[:-1], site.num_heads, -1)
                    if maps:  # the maps come with the module's output, after this
                        self._pending[index] = heads
                    else:
                        self._record(index, g, heads, None)
                return None

            handles.append(out_mod.register_forward_pre_hook(pre_hook))
        if maps or out_mod is None:
            def out_hook(module, args, output):
                if not self._active(g):
                    return None
                items = output if isinstance(output, (tuple, list)) else (output,)
                heads = self._pending.pop(index, None)
                if outputs and out_mod is None:
                    x = items[0] if items else None
                    if not (isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[-1] % site.num_heads == 0):
                        return None
                    heads = x.reshape(*x.shape[:-1], site.num_heads, -1)
                probs = None
                if maps:
                    probs = items[site.attention_map] if site.attention_map < len(items) else None
                    if not (isinstance(probs, torch.Tensor) and probs.dim() == 4 and probs.shape[1] == site.num_heads):
                        got = type(probs).__name__ if not isinstance(probs, torch.Tensor) else \
                            f"a tensor of shape {tuple(probs.shape)}"
                        raise ValueError(
                            f"attention module {site.name!r} ({type(mod).__name__}): expected its per-head attention "
                            f"maps (B, {site.num_heads}, T, S) at output position {site.attention_map} for "
                            f"features={self.features!r}, received {got}. Fused attention kernels (PyTorch SDPA, "
                            "flash attention) never form the maps: load a Hugging Face model with "
                            "attn_implementation='eager' (some eager modules, DeBERTa's, return them only when "
                            "called with output_attentions=True), or use features='outputs'")
                if outputs and heads is None:
                    return None
                self._record(index, g, heads, probs)
                return None

            handles.append(mod.register_forward_hook(out_hook))
        return handles

    def _active(self, g: ParticleGroup) -> bool:
        # training forward passes only: evaluation (model.eval(), torch.no_grad()) records nothing
        return (self.enabled and g.site.module.training and torch.is_grad_enabled()
                and any(p.requires_grad for p in g.params))

    def _current(self, site, block) -> torch.Tensor:
        """The tensor the forward pass uses for ``block``'s parameter: under FSDP2 the unsharded
        parameter FSDP registers on the module during its forward, otherwise the parameter itself."""
        name = _relative(site, block)
        if name is None:
            return block.param
        try:
            return site.module.get_parameter(name)
        except AttributeError:
            return block.param

    def _positions(self, index: int, n: int, device) -> Optional[torch.Tensor]:
        """The seeded subsample of ``n`` token positions (None: all of them)."""
        if n <= self.tokens:
            return None
        gen = torch.Generator().manual_seed(step_seed(step_seed(self.seed, self.step), index))
        return torch.randperm(n, generator=gen)[:self.tokens].sort().values.to(device)

    def _record(self, index: int, g: ParticleGroup, heads: Optional[torch.Tensor],
                probs: Optional[torch.Tensor]) -> None:
        """``heads`` ``(..., M, d)`` and/or ``probs`` ``(B, M, T, S)``: subsample the positions, apply
        ``W_o^h`` to the heads, hand the parts over."""
        site = g.site
        m = site.num_heads
        current = {id(b.param): self._current(site, b) for b in g.blocks}
        parts = []
        if heads is not None:
            flat = heads.reshape(-1, m, heads.shape[-1])  # (positions, M, d)
            idx = self._positions(index, flat.shape[0], flat.device)
            if idx is not None:
                flat = flat.index_select(0, idx)
            out = site.blocks.get("out")
            if out is not None:
                w = out.gather(self._current(site, out)).reshape(m, out.head_size, -1)  # (M, d, d_out): (W_o^h)^T
                f = torch.einsum("tmd,mde->mte", flat, w.to(flat.dtype))
            else:
                f = flat.transpose(0, 1)  # (M, positions, d)
            parts.append(f.reshape(g.num_particles, -1))
        if probs is not None:
            rows = probs.transpose(1, 2).reshape(-1, m, probs.shape[-1])  # (B T query positions, M, S)
            idx = self._positions(index, rows.shape[0], rows.device)
            if idx is not None:
                rows = rows.index_select(0, idx)
            parts.append(rows.transpose(0, 1).reshape(g.num_particles, -1))
        # gradient checkpointing: a recomputation (inside backward) of a forward pass that was recorded
        # is not recorded again; a forward pass without gradients (reentrant checkpointing) is recorded
        # when it is recomputed with them
        if _in_backward():
            if self._forward_records.get(index, 0):
                return
        else:
            self._forward_records[index] = self._forward_records.get(index, 0) + 1
        self.consume(g, tuple(parts), tuple(current[id(p)] for p in g.params))

    def remove(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []
