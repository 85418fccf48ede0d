"""Annealing schedules ``gamma(t)`` in ``[0, 1]`` for annealed SVGD (D'Angelo & Fortuin 2021).

A schedule is a callable ``schedule(step) -> float`` (``step`` counts completed steps from 0). The
two published ones:

* :class:`LinearAnnealing`: ``gamma(t) = min(1, t / T)``, the driving force switched on linearly over
  the first ``T`` steps;
* :class:`CyclicalAnnealing` (D'Angelo & Fortuin 2021, eq. 4): ``gamma(t) = (mod(t, T/C) / (T/C))^p``
  for ``t < T``, with ``C`` cycles over ``T`` annealing steps and ``p`` the speed of the transition
  between the exploration phase (``gamma`` near 0: repulsion dominates, particles spread) and the
  exploitation phase (``gamma`` near 1: plain SVGD); ``gamma = 1`` from step ``T`` on.

NumPyro's ``ASVGD`` evaluates eq. 4 one step later (``(mod(t, L) + 1) / ((T + 1) / C)`` with
``L = floor(T / C)``) and holds ``gamma = 1`` through the whole last cycle; the schedules here
follow the paper's equation.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

__all__ = ["LinearAnnealing", "CyclicalAnnealing", "check_schedule", "annealing_value"]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"expected {name} as a positive integer, received {value!r}")
    return int(value)


@dataclass(frozen=True)
class LinearAnnealing:
    """``gamma(t) = min(1, t / num_steps)``."""

    num_steps: int

    def __post_init__(self):
        _positive_int("num_steps", self.num_steps)

    def __call__(self, step: int) -> float:
        return min(1.0, step / self.num_steps)


@dataclass(frozen=True)
class CyclicalAnnealing:
    """``gamma(t) = (mod(t, T/C) / (T/C))^p`` for ``t < T`` and 1 after (D'Angelo & Fortuin 2021, eq. 4).

    Parameters
    ----------
    num_steps : int >= 1
        ``T``, the steps over which the cycles run.
    num_cycles : int >= 1
        ``C``; the paper's experiments use 10 (NumPyro's default too).
    power : float > 0
        ``p``, the transition speed; large ``p`` keeps ``gamma`` near 0 for most of each cycle
        (NumPyro's default 10).
    """

    num_steps: int
    num_cycles: int = 10
    power: float = 10.0

    def __post_init__(self):
        _positive_int("num_steps", self.num_steps)
        _positive_int("num_cycles", self.num_cycles)
        if self.num_cycles > self.num_steps:
            raise ValueError(f"expected num_cycles <= num_steps, received num_cycles={self.num_cycles} and "
                             f"num_steps={self.num_steps}")
        if (isinstance(self.power, bool) or not isinstance(self.power, numbers.Real) or not math.isfinite(self.power)
                or self.power <= 0):
            raise ValueError(f"expected power > 0 (finite), received {self.power!r}")

    def __call__(self, step: int) -> float:
        if step >= self.num_steps:
            return 1.0
        length = self.num_steps / self.num_cycles
        return (math.fmod(step, length) / length) ** float(self.power)


def check_schedule(schedule):
    """``schedule`` if callable (``step -> float in [0, 1]``); TypeError otherwise."""
    if not callable(schedule):
        raise TypeError(f"expected an annealing schedule, a callable step -> gamma in [0, 1] (e.g. "
                        f"CyclicalAnnealing(num_steps)), received {type(schedule).__name__}")
    return schedule


def annealing_value(schedule, step: int) -> float:
    """``schedule(step)`` as a float, checked to lie in ``[0, 1]`` (ValueError otherwise)."""
    value = float(schedule(step))
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"annealing schedule returned {value!r} at step {step}; expected a value in [0, 1]")
    return value
