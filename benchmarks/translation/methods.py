"""The study's arms on the translation model: the classification study's methods, reused.

Each arm is one of :data:`benchmarks.attention.methods.METHODS`, set up by its ``activate`` on the
translation model (whose ``head_selection()`` holds the attention kinds the arm acts on, default all
three: encoder self-attention, decoder causal self-attention, cross-attention, every module's Q, K
and V as separate particle groups as in An et al. 2020); :data:`ARMS` lists the arms and their knob
grids (three values each, tuned on dev BLEU). The posterior modes read ``N`` as the number of training
target tokens (``</s>`` included), since the loss is a mean per target token.

The head-space arm :data:`SPACE_ARM` (``spos_outputs``: SPOS with An et al.'s preset, knob ``alpha``,
the head particles in function space, ``RepulsiveHeads(space="outputs")``) is the one of the
classification study's head-to-head (:mod:`benchmarks.attention.spaces_study`, :data:`SPACE_CELL`) with
the largest point estimate of the test-accuracy gain over the baseline among :data:`SPACE_CANDIDATES`;
the report recomputes that comparison from the classification records. In function space a head is its
output vectors ``W_o^h o_h(x_t)`` on 64 seeded token positions of the batch per module and step, and each
attention module is *one* particle system over its heads (the kernel of the outputs, pulled back to the
module's Q, K and V rows), not three: the forward hooks re-run each ``nn.MultiheadAttention`` call with
its masks (key padding, causal) to read the per-head outputs (:mod:`attention_adapter.outputs`).
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from benchmarks.attention.methods import METHODS, Active
from benchmarks.attention.methods import activate as _activate

__all__ = ["ARMS", "SPACE_ARM", "SPACE_CANDIDATES", "SPACE_CELL", "activate"]

#: the head-space arms of the classification study's head-to-head, in circuit and function space
SPACE_CANDIDATES = ("svgd_circuits", "spos_circuits", "svgd_outputs", "spos_outputs")
#: the one of them this study runs (largest point estimate of the accuracy gain, :data:`SPACE_CELL`)
SPACE_ARM = "spos_outputs"
#: (data set, model) of the classification study where the head-space arms were compared
SPACE_CELL = ("mr", "transformer")

#: arm -> knob grid (empty: no knob)
ARMS: Dict[str, tuple] = {
    "baseline": (),
    "svgd": METHODS["svgd"].grid,
    "spos": METHODS["spos"].grid,
    "svgd_posterior": METHODS["svgd_posterior"].grid,
    "spos_posterior": METHODS["spos_posterior"].grid,
    "disagreement": METHODS["disagreement"].grid,
    "drophead": METHODS["drophead"].grid,
    SPACE_ARM: METHODS[SPACE_ARM].grid,
}


def activate(name: str, value: Optional[float], model: nn.Module, *, train_tokens: int, seed: int,
             optimizer: torch.optim.Optimizer) -> Active:
    """Set up arm ``name`` with knob ``value`` on the translation ``model``."""
    if name not in ARMS:
        raise ValueError(f"expected an arm in {tuple(ARMS)}, received {name!r}")
    return _activate(name, value, model, train_size=train_tokens, seed=seed, optimizer=optimizer)
