"""Capture per-head attention maps and head outputs during a forward pass (for diversity metrics).

``with HeadCapture(sites) as cap: model(x)`` records, for every attention module:

* ``cap.maps[name]``: attention probabilities, ``(B, M, T, S)``;
* ``cap.outputs[name]``: per-head outputs (attention-weighted values before the output projection),
  ``(B, T, M, d_head)``.

How they are obtained:

* ``nn.MultiheadAttention``: a forward hook re-runs the module on the same inputs with
  ``need_weights=True, average_attn_weights=False`` (per-head maps ``A_h``) and forms
  ``A_h V_h`` from the value projection. The ``nn.TransformerEncoderLayer`` inference fast path
  bypasses the attention module; :meth:`HeadCapture.run` therefore runs the forward with autograd
  enabled (the recorded tensors are detached).
* Every other module: what its layout says (:class:`~attention_adapter.HeadLayout`). The maps are
  output number ``attention_map`` of the module (Hugging Face's ``(attn_output, attn_weights)``:
  1; T5's ``(attn_output, position_bias, attn_weights)``: 2), recorded when it is a
  ``(B, M, T, S)`` tensor (eager attention; SDPA returns ``None``). The head outputs are, with
  ``head_outputs="out_projection_input"``, the input of the module owning the ``out`` block
  (``output.dense`` for BERT, ``c_proj`` for GPT-2, ``to_out.0`` for diffusers), or, with
  ``"module_output"``, the module's first output (a module without an output projection), split
  into heads; with ``None`` they are not recorded.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layouts import ResolvedLayout

__all__ = ["HeadCapture"]


def _mha_value_heads(module: nn.MultiheadAttention, value: torch.Tensor) -> torch.Tensor:
    """Per-head projected values ``(N, M, S, d)`` of an ``nn.MultiheadAttention`` input."""
    e = module.embed_dim
    if module._qkv_same_embed_dim:
        w = module.in_proj_weight[2 * e:]
    else:
        w = module.v_proj_weight
    b = None if module.in_proj_bias is None else module.in_proj_bias[2 * e:]
    if value.dim() == 2:  # unbatched (S, E)
        value = value.unsqueeze(0 if module.batch_first else 1)
    if not module.batch_first:
        value = value.transpose(0, 1)
    v = F.linear(value, w, b)  # (N, S, E)
    n, s, _ = v.shape
    return v.reshape(n, s, module.num_heads, module.head_dim).transpose(1, 2)


class HeadCapture:
    """Context manager recording per-head maps and outputs of the given attention modules.

    Parameters
    ----------
    sites : sequence of ResolvedLayout
        E.g. ``HeadParticles(model).sites`` or ``find_attention(model)``.
    """

    def __init__(self, sites: Sequence[ResolvedLayout]):
        self.sites = list(sites)
        self.maps: Dict[str, torch.Tensor] = {}
        self.outputs: Dict[str, torch.Tensor] = {}
        self._maps: Dict[str, List[torch.Tensor]] = {}
        self._outs: Dict[str, List[torch.Tensor]] = {}
        self._handles: List[Any] = []
        self._busy = False

    # --- hooks -------------------------------------------------------------------------------
    def _mha_hook(self, site: ResolvedLayout):
        def hook(module, args, kwargs, output):
            if self._busy:
                return None
            names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
                     "average_attn_weights", "is_causal")
            call = dict(zip(names, args))
            call.update({k: v for k, v in kwargs.items()})
            call["need_weights"] = True
            call["average_attn_weights"] = False
            self._busy = True
            try:
                with torch.no_grad():
                    _, maps = module(**call)
                    if maps.dim() == 3:  # unbatched input
                        maps = maps.unsqueeze(0)
                    v = _mha_value_heads(module, call["value"])
                    self._maps.setdefault(site.name, []).append(maps.detach())
                    if v.shape[2] == maps.shape[-1]:  # not with add_bias_kv / add_zero_attn
                        out = torch.matmul(maps, v)  # (N, M, L, d)
                        self._outs.setdefault(site.name, []).append(out.transpose(1, 2).detach())
            finally:
                self._busy = False
            return None

        return hook

    def _output_hook(self, site: ResolvedLayout):
        m, index = site.num_heads, site.attention_map
        own_output = site.head_outputs == "module_output"

        def hook(module, args, output):
            items = output if isinstance(output, (tuple, list)) else (output,)
            if index is not None and index < len(items):
                t = items[index]
                if isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[1] == m:
                    self._maps.setdefault(site.name, []).append(t.detach())
            if own_output and items and isinstance(items[0], torch.Tensor) and items[0].dim() == 3:
                ctx = items[0]
                if ctx.shape[-1] % m == 0:
                    self._outs.setdefault(site.name, []).append(
                        ctx.detach().reshape(*ctx.shape[:-1], m, ctx.shape[-1] // m))
            return None

        return hook

    def _out_proj_hook(self, site: ResolvedLayout):
        m = site.num_heads

        def hook(module, args):
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[-1] % m == 0:
                self._outs.setdefault(site.name, []).append(x.detach().reshape(*x.shape[:-1], m, x.shape[-1] // m))
            return None

        return hook

    # --- context manager ---------------------------------------------------------------------
    def __enter__(self) -> "HeadCapture":
        self._maps, self._outs = {}, {}
        for site in self.sites:
            mod = site.module
            if isinstance(mod, nn.MultiheadAttention):
                self._handles.append(mod.register_forward_hook(self._mha_hook(site), with_kwargs=True))
                continue
            self._handles.append(mod.register_forward_hook(self._output_hook(site)))
            out_mod = site.head_output_module()
            if out_mod is not None:
                self._handles.append(out_mod.register_forward_pre_hook(self._out_proj_hook(site)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.maps = {k: torch.cat(v, 0) for k, v in self._maps.items()}
        self.outputs = {k: torch.cat(v, 0) for k, v in self._outs.items()}

    def run(self, forward: Callable[[], Any]) -> "HeadCapture":
        """Run ``forward()`` (e.g. ``lambda: model(x)``) with the hooks in place and autograd enabled."""
        with self, torch.enable_grad():
            forward()
        return self
