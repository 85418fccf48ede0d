"""Annealed SVGD (D'Angelo & Fortuin 2021, "Annealed Stein Variational Gradient Descent"; NumPyro's ``ASVGD``).

The driving term of the Stein direction is weighted by an annealing schedule ``gamma(t)`` in ``[0, 1]``
(:mod:`particlesampling.annealing`), the repulsion is not:

.. math::

    \\phi_t(x_i) = \\frac{1}{n} \\sum_j \\big[ \\gamma(t)\\, k(x_j, x_i) \\nabla \\log p(x_j)
                   + r\\, \\nabla_{x_j} k(x_j, x_i) \\big], \\qquad x_i \\leftarrow x_i + \\epsilon \\phi_t(x_i),

i.e. SVGD on the tempered target ``p^gamma(t)``. While ``gamma`` is small the repulsion spreads the
particles over the space (exploration); as it reaches 1 they concentrate on the modes they found,
which is how annealing counters SVGD's tendency to spread particles evenly over the modes it reaches
first. Since ``K (gamma S) = gamma K S``, the direction is the core's Stein direction
(:func:`particlesampling.stein_direction`, its tiled and random-batch forms included) evaluated at
the scaled scores ``gamma(t) S``; bandwidth rules that read the scores (``MaxKSD``) are refused,
since they would see the scaled scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from .._backend import namespace
from ..annealing import CyclicalAnnealing, annealing_value, check_schedule
from ..bandwidths import get_bandwidth
from ..kernels import get_kernel
from ..memory_budget import AUTO, check_memory_budget
from ..step_sizes import get_step_rule
from ..stein_terms import check_repulsion
from ._common import ParticleState, SteinSampler, check_batch_size, check_score_fn

__all__ = ["AnnealedSVGD", "annealed_svgd"]


@dataclass(frozen=True)
class AnnealedSVGD(SteinSampler):
    """Annealed SVGD; build it with :func:`annealed_svgd`."""

    schedule: Callable[[int], float] = None  #: ``step -> gamma`` in ``[0, 1]``

    name: ClassVar[str] = "annealed_svgd"

    def step(self, state: ParticleState):
        """One update; returns ``(new_state, SteinStepInfo)``. ``score_fn`` is called once."""
        xp = namespace(state.particles)
        s = self.scores(state.particles)
        gamma = annealing_value(self.schedule, state.step)
        phi, h, mean_k = self._direction(state, gamma * s)
        new, delta = self._move(state, phi)
        return new, self._stein_info(xp, s, new.particles, delta, h, mean_k)


def annealed_svgd(score_fn=None, step_size=1e-2, *, schedule: Any = None, num_steps: int | None = None,
                  kernel=None, bandwidth=None, repulsion: float = 1.0, batch_size: int | None = None,
                  memory_budget=AUTO, log_prob=None) -> AnnealedSVGD:
    """Annealed SVGD; update in the module docstring.

    Parameters
    ----------
    score_fn, step_size, kernel, bandwidth, repulsion, batch_size, memory_budget, log_prob :
        As for :func:`~particlesampling.svgd`. The bandwidth must not read the scores.
    schedule : callable ``step -> gamma`` in [0, 1], optional
        :class:`~particlesampling.annealing.CyclicalAnnealing` (the paper's eq. 4),
        :class:`~particlesampling.annealing.LinearAnnealing`, or any callable. Default:
        ``CyclicalAnnealing(num_steps)`` with 10 cycles (num_steps if fewer) and power 10, the defaults
        of NumPyro's ``ASVGD``.
    num_steps : int, optional
        The annealing length ``T`` for the default schedule (required when ``schedule`` is None).

    Returns
    -------
    AnnealedSVGD : ``init(particles, seed=0) -> ParticleState`` and ``step(state) -> (state, SteinStepInfo)``.
    """
    if schedule is None:
        if num_steps is None:
            raise ValueError("expected schedule (a callable step -> gamma in [0, 1]) or num_steps (the annealing "
                             "length of the default cyclical schedule), received neither")
        schedule = CyclicalAnnealing(num_steps, num_cycles=min(10, int(num_steps)) if isinstance(num_steps, int) else 10)
    elif num_steps is not None:
        raise ValueError("expected either schedule or num_steps (the default schedule's length), received both")
    get_kernel(kernel)
    if get_bandwidth(bandwidth).needs_scores:
        raise ValueError(f"annealed SVGD evaluates the Stein direction at the scaled scores gamma * S, so a "
                         f"bandwidth rule that reads the scores would see them scaled; expected a median, "
                         f"fixed or scaled median bandwidth, received {bandwidth!r}")
    return AnnealedSVGD(check_score_fn(score_fn, log_prob), get_step_rule(step_size), kernel=kernel,
                        bandwidth=bandwidth, repulsion=check_repulsion(repulsion),
                        batch_size=check_batch_size(batch_size), memory_budget=check_memory_budget(memory_budget),
                        schedule=check_schedule(schedule))
