"""Stein variational gradient descent (Liu & Wang 2016, Algorithm 1).

``x_i <- x_i + eps * phi(x_i)`` with ``phi`` the Stein direction of eq. 8
(:func:`particlesampling.stein_direction`); with a non-constant step rule the increment is the rule's
preconditioned ``eps * phi`` (:mod:`particlesampling.step_sizes`). Deterministic: the state's seed
matters only for random batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .._backend import namespace
from ..step_sizes import get_step_rule
from ..stein_terms import check_repulsion
from ..memory_budget import AUTO, check_memory_budget
from ._common import (
    ParticleState,
    SteinSampler,
    check_batch_size,
    check_score_fn,
)

__all__ = ["SVGD", "svgd"]


@dataclass(frozen=True)
class SVGD(SteinSampler):
    """SVGD; build it with :func:`svgd`."""

    name: ClassVar[str] = "svgd"

    def step(self, state: ParticleState):
        """One update; returns ``(new_state, SteinStepInfo)``. ``score_fn`` is called once."""
        xp = namespace(state.particles)
        s = self.scores(state.particles)
        phi, h, mean_k = self._direction(state, s)
        new, delta = self._move(state, phi)
        return new, self._stein_info(xp, s, new.particles, delta, h, mean_k)


def svgd(score_fn=None, step_size=1e-2, *, kernel=None, bandwidth=None, repulsion: float = 1.0,
         batch_size: int | None = None, memory_budget=AUTO, log_prob=None) -> SVGD:
    """Stein variational gradient descent (Liu & Wang 2016).

    Parameters
    ----------
    score_fn : callable, (n, d) array -> (n, d) array of ``grad log p``
        Or pass ``log_prob`` instead (exactly one of the two).
    step_size : float, schedule ``step -> float``, or StepRule
        A float or schedule gives :func:`~particlesampling.step_sizes.constant`.
    kernel, bandwidth, repulsion : see :func:`~particlesampling.stein_direction`.
    batch_size : int, optional
        Random-batch SVGD (:mod:`particlesampling.random_batch`): interactions only within random
        batches of this size.
    memory_budget : "auto", int or None
        Bytes allowed for the ``n x n`` temporaries of the direction; above it the direction is
        evaluated in row blocks (:mod:`particlesampling.tiled`, same result to rounding). The
        default ``"auto"`` derives the budget from the machine, ``None`` never tiles
        (:mod:`particlesampling.memory_budget`).
    log_prob : callable, (d,) array -> 0-d array, optional
        The log-density of one particle instead of ``score_fn``: the score is then its gradient by
        automatic differentiation, batched over particles (PyTorch ``torch.func.grad`` under
        ``vmap``, JAX ``jax.grad`` under ``vmap``; :mod:`particlesampling.log_density`). NumPy has
        no automatic differentiation: a TypeError at the first step says to pass ``score_fn``.

    Returns
    -------
    SVGD : ``init(particles, seed=0) -> ParticleState`` and ``step(state) -> (state, SteinStepInfo)``.
    """
    return SVGD(check_score_fn(score_fn, log_prob), get_step_rule(step_size), kernel=kernel, bandwidth=bandwidth,
                repulsion=check_repulsion(repulsion), batch_size=check_batch_size(batch_size),
                memory_budget=check_memory_budget(memory_budget))
