"""Per-head gates on the concatenated head outputs: DropHead, pruning masks, importance, outputs.

Each *gate site* is a module whose input is the concatenation of an attention module's ``M`` head
outputs, ``(B, T, M d)`` (BERT's ``attention.output.dense``; the self-attentive encoder's
``heads_out``). A forward pre-hook multiplies head ``h``'s slice by a gate ``g_h``:

* ``mask``: a fixed 0/1 vector ``(M,)`` per site (pruned heads are 0), as in Michel et al. (2019);
* ``drop_prob`` ``p`` (training only): DropHead (Zhou et al. 2020), each head of each example
  dropped with probability ``p`` and the kept ones rescaled by ``M / (number kept)`` (the paper's
  rescaling; its scheduled drop rate is replaced by a constant ``p``);
* ``importance``: gates of ones that require grad, so that ``|dL / dg_h|`` accumulated over a data
  set is the head importance of Michel et al. (2019, eq. 2);
* ``keep_outputs``: the gated head outputs ``(B, T, M, d)`` are kept, in the graph, in
  ``outputs[site]`` (the disagreement regulariser reads them).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["HeadGates"]


class HeadGates:
    """Context manager installing the gates on ``sites`` = ``[(name, module, M)]`` (``model.gate_sites()``)."""

    def __init__(self, sites: Sequence[Tuple[str, nn.Module, int]], *, drop_prob: float = 0.0,
                 masks: Optional[Dict[str, torch.Tensor]] = None, importance: bool = False,
                 keep_outputs: bool = False, generator: Optional[torch.Generator] = None):
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"expected drop_prob in [0, 1), received {drop_prob!r}")
        self.sites = list(sites)
        names = {n for n, _, _ in self.sites}
        for n, mask in (masks or {}).items():
            if n not in names:
                raise ValueError(f"expected mask keys among the gate sites {sorted(names)}, received {n!r}")
        self.drop_prob = float(drop_prob)
        self.masks = dict(masks or {})
        self.keep_outputs = keep_outputs
        self.generator = generator
        self.gates: Dict[str, torch.Tensor] = {}
        if importance:
            self.gates = {n: torch.ones(m, requires_grad=True) for n, _, m in self.sites}
        self.outputs: Dict[str, torch.Tensor] = {}
        self._handles: List = []

    def _hook(self, name: str, m: int):
        def hook(module, args):
            x = args[0]
            if x.shape[-1] % m:
                raise ValueError(f"gate site {name}: expected a last dimension divisible by {m} heads, "
                                 f"received {tuple(x.shape)}")
            heads = x.reshape(*x.shape[:-1], m, x.shape[-1] // m)  # (B, T, M, d)
            gate = None
            if name in self.masks:
                gate = self.masks[name].to(x.dtype).reshape(1, 1, m)
            if name in self.gates:
                g = self.gates[name].to(x.dtype).reshape(1, 1, m)
                gate = g if gate is None else gate * g
            if self.drop_prob > 0 and module.training:
                # drawn on the CPU (the generator's device), then moved to the activations' device
                keep = (torch.rand(x.shape[0], 1, m, generator=self.generator) >= self.drop_prob).to(x.device, x.dtype)
                keep = keep * (m / keep.sum(-1, keepdim=True).clamp_min(1.0))
                gate = keep if gate is None else gate * keep
            if gate is not None:
                heads = heads * gate.unsqueeze(-1)
            if self.keep_outputs:
                self.outputs[name] = heads
            return (heads.reshape(x.shape),) + tuple(args[1:])

        return hook

    def __enter__(self) -> "HeadGates":
        for name, module, m in self.sites:
            self._handles.append(module.register_forward_pre_hook(self._hook(name, m)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
