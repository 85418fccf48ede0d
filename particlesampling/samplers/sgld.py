"""Langevin dynamics baseline (Welling & Teh 2011, written as a Langevin discretisation):

``x_i <- x_i + eps * s_i + sqrt(2 eps T) * xi_i`` for every particle independently (no interaction),
``T`` the temperature. Noise as for :mod:`particlesampling.samplers.spos`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from .._backend import namespace
from ..step_sizes import get_step_rule
from ._common import (
    LangevinStepInfo,
    ParticleSampler,
    ParticleState,
    check_noise,
    check_positive,
    check_score_fn,
    finite_flag,
    rms_rows,
)

__all__ = ["SGLD", "sgld"]


@dataclass(frozen=True)
class SGLD(ParticleSampler):
    """SGLD; build it with :func:`sgld`."""

    temperature: float = 1.0
    #: noise source ``(seed, step, like) -> N(0, 1) array shaped like like``; None: normal_noise
    noise: Callable[[int, int, Any], Any] | None = None

    name: ClassVar[str] = "sgld"
    info_type: ClassVar[type] = LangevinStepInfo

    def step(self, state: ParticleState):
        """One update; returns ``(new_state, LangevinStepInfo)``. ``score_fn`` is called once."""
        xp = namespace(state.particles)
        s = self.scores(state.particles)
        new, delta = self._move(state, s, 2.0 * self.temperature)
        return new, LangevinStepInfo(update_norm=rms_rows(xp, delta), score_norm=rms_rows(xp, s),
                                     finite=finite_flag(xp, s, new.particles))


def sgld(score_fn=None, step_size=1e-2, *, temperature: float = 1.0, noise=None,
          log_prob=None) -> SGLD:
    """Langevin dynamics: ``x <- x + eps s + sqrt(2 eps T) xi`` for every particle.

    Parameters
    ----------
    score_fn, step_size, log_prob : as for :func:`~particlesampling.svgd`.
    temperature : float > 0
    noise : as for :func:`~particlesampling.spos`.

    Returns
    -------
    SGLD : ``init(particles, seed=0) -> ParticleState`` and ``step(state) -> (state, LangevinStepInfo)``.
    """
    return SGLD(check_score_fn(score_fn, log_prob), get_step_rule(step_size),
                temperature=check_positive("temperature", temperature), noise=check_noise(noise))
