"""The study's arms on the translation model: the classification study's methods, reused.

Each arm is one of :data:`benchmarks.attention.methods.METHODS`, set up by its ``activate`` on the
translation model (whose ``head_selection()`` holds the attention kinds the arm acts on, default all
three: encoder self-attention, decoder causal self-attention, cross-attention, every module's Q, K
and V as separate particle groups as in An et al. 2020); :data:`ARMS` lists the arms and their knob
grids (three values each, tuned on dev BLEU). The posterior modes read ``N`` as the number of training
target tokens (``</s>`` included), since the loss is a mean per target token.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from benchmarks.attention.methods import METHODS, Active
from benchmarks.attention.methods import activate as _activate

__all__ = ["ARMS", "activate"]

#: arm -> knob grid (empty: no knob)
ARMS: Dict[str, tuple] = {
    "baseline": (),
    "svgd": METHODS["svgd"].grid,
    "spos": METHODS["spos"].grid,
    "svgd_posterior": METHODS["svgd_posterior"].grid,
    "spos_posterior": METHODS["spos_posterior"].grid,
    "disagreement": METHODS["disagreement"].grid,
    "drophead": METHODS["drophead"].grid,
}


def activate(name: str, value: Optional[float], model: nn.Module, *, train_tokens: int, seed: int,
             optimizer: torch.optim.Optimizer) -> Active:
    """Set up arm ``name`` with knob ``value`` on the translation ``model``."""
    if name not in ARMS:
        raise ValueError(f"expected an arm in {tuple(ARMS)}, received {name!r}")
    return _activate(name, value, model, train_size=train_tokens, seed=seed, optimizer=optimizer)
