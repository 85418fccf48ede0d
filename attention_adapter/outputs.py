"""Function-space head particles: the heads' outputs on a seeded subsample of the batch's tokens.

:class:`OutputParticles` puts forward hooks on the attention modules of one function-space particle
system per module (:mod:`attention_adapter.spaces`). At every forward pass with gradients enabled
(in training mode: ``model.eval()`` or ``torch.no_grad()`` records nothing) it records, for each module,
the matrix ``F`` (``M x m``) whose row ``h`` is head ``h``'s output
vectors on ``tokens`` token positions drawn without replacement from the batch (seeded by
``(seed, step, module index)`` through :func:`attention_adapter.noise.step_seed`, so a run is
reproducible and every data-parallel rank draws the same positions of its own batch):

* ``W_o^h o_h(x)`` (``d_model`` per token), head ``h``'s term of the output projection's sum, where
  ``o_h`` is the attention-weighted value of head ``h`` (the output projection's input, split into
  heads) and ``W_o^h`` its columns of the output projection; ``o_h`` alone where the module declares
  no output projection (then the module's first output, split into heads: Lin et al.'s hops);
* under grouped-query attention a particle is a key/value head with its ``r`` query heads (as in
  circuit space), its row the concatenation of theirs.

``F`` keeps its autograd graph. What happens to it is the owner's ``consume(group, F)`` callback:
:class:`~attention_adapter.RepulsiveHeads` computes the core's Stein terms on ``F`` and pulls them
back to the heads' parameters at once (one vector-Jacobian product per module, with the graph kept
for the loss's own backward), :class:`~attention_adapter.HeadRepulsionPenalty` keeps ``F`` to put its
kernel similarity into the loss.

Where the head outputs are read: the input of the output projection's module (a forward pre-hook;
Hugging Face layouts, user layouts with an ``out`` block inside a called sub-module);
``nn.MultiheadAttention`` computes its heads inside one functional call, so its hook recomputes
the per-head maps and values from the call's inputs (as :class:`~attention_adapter.HeadCapture`
does, here with gradients); a module without an output projection gives its first output. Other
modules are refused when the space is chosen, with an error naming them.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from particlesampling import validation

from .noise import step_seed
from .particles import ParticleGroup
from .sharding import is_sharded

__all__ = ["OutputParticles", "rows_of"]


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


def _mha_heads(module: nn.MultiheadAttention, call: dict) -> torch.Tensor:
    """Per-head outputs ``o_h`` ``(N, L, M, d)`` of an ``nn.MultiheadAttention`` call, with gradients."""
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
    return torch.matmul(maps, v).transpose(1, 2)


class OutputParticles:
    """Forward hooks that hand each module's head outputs ``F`` (``M x m``, with gradients) to a callback.

    Parameters
    ----------
    groups : sequence of ParticleGroup
        One group per attention module (joint blocks of its heads).
    consume : callable
        ``consume(group, F)`` at each forward pass in training mode with gradients enabled.
    tokens : int >= 1
        Token positions per module and forward pass (all of them when the batch has fewer).
    seed : int >= 0
        Base seed of the token subsample.
    """

    def __init__(self, groups: Sequence[ParticleGroup], consume: Callable[[ParticleGroup, torch.Tensor], None], *,
                 tokens: int = 64, seed: int = 0):
        tokens = validation.check_int("tokens", tokens, minimum=1)
        self.groups = list(groups)
        self.consume = consume
        self.tokens = tokens
        self.seed = seed
        self.step = 0
        #: set False to pause recording (the hooks stay in place)
        self.enabled = True
        self._handles: List = []
        self._busy = False
        for index, g in enumerate(self.groups):
            for b in g.blocks:
                if is_sharded(b.param):
                    raise ValueError(f"expected unsharded parameters in function space, received a sharded "
                                     f"{b.name!r} (FSDP2 is supported in weight and circuit space)")
            self._handles.append(self._install(index, g))

    # -- where the outputs are read ------------------------------------------------------------
    def _install(self, index: int, g: ParticleGroup):
        site = g.site
        mod = site.module
        if isinstance(mod, nn.MultiheadAttention):
            names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
                     "average_attn_weights", "is_causal")

            def mha_hook(module, args, kwargs, output):
                if self._busy or not self._active(g):
                    return None
                call = dict(zip(names, args))
                call.update(kwargs)
                self._busy = True
                try:
                    self._record(index, g, _mha_heads(module, call))
                finally:
                    self._busy = False
                return None

            return mod.register_forward_hook(mha_hook, with_kwargs=True)
        out_mod = site.head_output_module()
        if out_mod is not None:
            def pre_hook(module, args):
                if self._active(g) and args and isinstance(args[0], torch.Tensor) and args[0].dim() == 3:
                    x = args[0]
                    self._record(index, g, x.reshape(*x.shape[:-1], site.num_heads, -1))
                return None

            return out_mod.register_forward_pre_hook(pre_hook)
        if "out" in site.blocks:
            raise ValueError(f"attention module {site.name!r} ({type(mod).__name__}): its output projection "
                             f"{site.blocks['out'].name!r} is not a called sub-module, so the heads' outputs cannot "
                             "be read in function space; use space='weights' or 'circuits'")
        if site.head_outputs != "module_output":
            raise ValueError(f"attention module {site.name!r} ({type(mod).__name__}): its layout names no output "
                             "projection and does not say its output is the heads' outputs "
                             "(HeadLayout(head_outputs='module_output')), so they cannot be read in function space; "
                             "use space='weights' or 'circuits'")

        def out_hook(module, args, output):
            items = output if isinstance(output, (tuple, list)) else (output,)
            x = items[0] if items else None
            if self._active(g) and isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[-1] % site.num_heads == 0:
                self._record(index, g, x.reshape(*x.shape[:-1], site.num_heads, -1))
            return None

        return mod.register_forward_hook(out_hook)

    def _active(self, g: ParticleGroup) -> bool:
        # training forward passes only: evaluation (model.eval(), torch.no_grad()) records nothing
        return (self.enabled and g.site.module.training and torch.is_grad_enabled()
                and any(p.requires_grad for p in g.params))

    def _record(self, index: int, g: ParticleGroup, heads: torch.Tensor) -> None:
        """``heads`` ``(..., M, d)``: subsample the positions, apply ``W_o^h``, hand ``F`` over."""
        m = g.site.num_heads
        flat = heads.reshape(-1, m, heads.shape[-1])  # (positions, M, d)
        n = flat.shape[0]
        if n > self.tokens:
            gen = torch.Generator().manual_seed(step_seed(step_seed(self.seed, self.step), index))
            idx = torch.randperm(n, generator=gen)[:self.tokens].sort().values.to(flat.device)
            flat = flat.index_select(0, idx)
        out = g.site.blocks.get("out")
        if out is not None:
            w = out.gather(out.param).reshape(m, out.head_size, -1)  # (M, d, d_out): (W_o^h)^T
            f = torch.einsum("tmd,mde->mte", flat, w.to(flat.dtype))
        else:
            f = flat.transpose(0, 1)  # (M, positions, d)
        self.consume(g, f.reshape(g.num_particles, -1))

    def remove(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []
