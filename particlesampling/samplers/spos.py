"""Stochastic particle-optimisation sampling (Zhang, Zhang, Carin & Chen, AISTATS 2020,
arXiv:1809.01293, eq. (4), written with ``F = -log p``):

``x_i <- x_i + eps * [beta^-1 s_i + phi(x_i)] + sqrt(2 eps / beta) * xi_i``,  ``xi_i ~ N(0, I)``.

Both the Langevin part and the SVGD part leave ``p`` invariant, so ``p`` is the target for every
``beta > 0``; small ``beta`` weights Langevin more, ``beta -> inf`` recovers SVGD. With a
non-constant step rule the drift goes through the rule and the noise keeps the base ``eps``
(:mod:`particlesampling.step_sizes` says what that does to exactness).

Noise: by default :func:`particlesampling.random.normal_noise`, a pure function of ``(seed,
particle, step)``, so resumed runs are exact; ``noise=`` draws it from elsewhere, e.g. a fast seeded
device generator (:func:`particlesampling.random.generator_noise`), whose state is then the
caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from .._backend import namespace
from ..step_sizes import get_step_rule
from ..stein_terms import check_repulsion
from ..memory_budget import AUTO, check_memory_budget
from ._common import (
    ParticleState,
    SteinSampler,
    check_batch_size,
    check_noise,
    check_positive,
    check_score_fn,
)

__all__ = ["SPOS", "spos"]


@dataclass(frozen=True)
class SPOS(SteinSampler):
    """SPOS; build it with :func:`spos`."""

    beta: float = 1.0  #: weight of the Langevin part: drift ``s / beta``, noise variance ``2 eps / beta``
    #: noise source ``(seed, step, like) -> N(0, 1) array shaped like like``; None: normal_noise
    noise: Callable[[int, int, Any], Any] | None = None

    name: ClassVar[str] = "spos"

    def step(self, state: ParticleState):
        """One update; returns ``(new_state, SteinStepInfo)``. ``score_fn`` is called once."""
        xp = namespace(state.particles)
        s = self.scores(state.particles)
        phi, h, mean_k = self._direction(state, s)
        new, delta = self._move(state, phi + s / self.beta, 2.0 / self.beta)
        return new, self._stein_info(xp, s, new.particles, delta, h, mean_k)


def spos(score_fn=None, step_size=1e-2, *, beta: float = 1.0, kernel=None, bandwidth=None,
         repulsion: float = 1.0, batch_size: int | None = None, memory_budget=AUTO,
         noise=None, log_prob=None) -> SPOS:
    """Stochastic particle-optimisation sampling; update in the module docstring.

    Parameters
    ----------
    score_fn, step_size, kernel, bandwidth, repulsion, batch_size, memory_budget, log_prob :
        As for :func:`~particlesampling.svgd`.
    beta : float > 0
        Weight of the Langevin part (drift ``s / beta``, noise variance ``2 eps / beta``).
    noise : callable ``(seed, step, like) -> array``, optional
        Noise source (module docstring); default the counter-based
        :func:`~particlesampling.random.normal_noise`.

    Returns
    -------
    SPOS : ``init(particles, seed=0) -> ParticleState`` and ``step(state) -> (state, SteinStepInfo)``.
    """
    return SPOS(check_score_fn(score_fn, log_prob), get_step_rule(step_size), kernel=kernel, bandwidth=bandwidth,
                repulsion=check_repulsion(repulsion), batch_size=check_batch_size(batch_size),
                memory_budget=check_memory_budget(memory_budget), beta=check_positive("beta", beta),
                noise=check_noise(noise))
