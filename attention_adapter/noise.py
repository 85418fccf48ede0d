"""Gaussian noise for the SPOS variants: one explicit ``torch.Generator`` per step, same on every rank.

The noise of step ``t`` is drawn from a fresh ``torch.Generator`` on the gradients' device, seeded with
``step_seed(seed, t)`` (a 63-bit hash of ``(seed, t)`` computed by the core's counter-based hash,
``ps.random.uniform_bits``). Within a step the particle groups draw, in the adapter's fixed group
order, ``torch.randn((M, P), generator=g)`` one after the other (one generator per
device). Consequences:

* the noise is a pure function of ``(seed, step)``: resuming from ``state_dict()`` reproduces it, and
  the global torch RNG (dropout, data order) is neither used nor disturbed;
* under DistributedDataParallel every rank builds the same groups in the same order from the same
  ``(seed, step)``, hence draws the *same* noise, so replicas stay identical after the step;
* the same seed on a CUDA and a CPU device gives different (equally valid) streams.
"""

from __future__ import annotations

from typing import Dict

import torch

import particlesampling as ps

__all__ = ["step_seed", "StepNoise"]


def step_seed(seed: int, step: int) -> int:
    """63-bit seed of step ``step`` for the base ``seed`` (both non-negative ints)."""
    return int(ps.random.uniform_bits(seed, step, 1, 1)[0, 0]) & (2**63 - 1)


class StepNoise:
    """Standard normal draws for one step; ``draw(like)`` returns noise of ``like``'s shape.

    Parameters
    ----------
    seed, step : int
        The generator of each device is seeded with :func:`step_seed` ``(seed, step)``.
    """

    def __init__(self, seed: int, step: int):
        self._seed = step_seed(seed, step)
        self._gens: Dict[torch.device, torch.Generator] = {}

    def draw(self, like: torch.Tensor, dtype: torch.dtype = None) -> torch.Tensor:
        dev = like.device
        g = self._gens.get(dev)
        if g is None:
            g = torch.Generator(device=dev)
            g.manual_seed(self._seed)
            self._gens[dev] = g
        return torch.randn(like.shape, generator=g, device=dev, dtype=dtype or like.dtype)
