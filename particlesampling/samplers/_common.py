"""What every particle sampler shares: the state, argument checks, the score and noise calls, and the
final ``x <- x + delta`` with its step information.

Each sampler module (:mod:`.svgd`, :mod:`.spos`, :mod:`.sgld`) defines a frozen class with only its
own settings and a pure ``step``; this module holds the pieces they all use, so none is written twice.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple

from .._backend import check_particles, device_of, namespace
from ..log_density import resolve_score_fn
from ..memory_budget import AUTO
from ..random import normal_noise
from ..random_batch import random_batch_direction
from ..stein import stein_direction_with_info
from ..step_sizes import StepRule

__all__ = ["ParticleState", "ParticleSampler", "SteinSampler", "FlowSampler", "SteinStepInfo", "LangevinStepInfo"]


class ParticleState(NamedTuple):
    """Explicit state of every sampler in this package (BlackJAX style: never modified in place).

    ``step`` counts completed steps; the default noise and the random batches are pure functions of
    ``(seed, particle, step)`` (:mod:`particlesampling.random`), so this is all the state there is.
    """

    particles: Any  #: (n, d) array
    step_state: Any  #: the step rule's state (:mod:`particlesampling.step_sizes`)
    step: int
    seed: int


def check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"expected {name} > 0 (finite), received {value!r}")
    return float(value)


def check_score_fn(score_fn, log_prob=None):
    """The score function from exactly one of ``score_fn`` and ``log_prob``
    (:func:`particlesampling.log_density.resolve_score_fn`)."""
    return resolve_score_fn(score_fn, log_prob)


def check_noise(noise):
    if noise is not None and not callable(noise):
        raise TypeError(f"expected noise to be None or a callable (seed, step, like) -> array, "
                        f"received {type(noise).__name__}")
    return noise


def rms_rows(xp, a):
    """RMS over rows of the row norms, ``sqrt(mean_i |a_i|^2)``, as a 0-d array."""
    return xp.sqrt(xp.mean(xp.sum(a * a, axis=1)))


class SteinStepInfo(NamedTuple):
    """Per-step information of SVGD and SPOS (0-d arrays of the particles' namespace; no host sync)."""

    bandwidth: Any  #: kernel bandwidth used (0-d, or (d,) per dimension; mean over random batches)
    mean_kernel: Any  #: mean off-diagonal kernel value
    update_norm: Any  #: RMS over particles of |x_new - x_old|
    score_norm: Any  #: RMS over particles of |s_i|
    finite: Any  #: 0-d bool: all scores and new particles finite


class LangevinStepInfo(NamedTuple):
    """Per-step information of SGLD (0-d arrays of the particles' namespace; no host sync)."""

    update_norm: Any  #: RMS over particles of |x_new - x_old|
    score_norm: Any  #: RMS over particles of |s_i|
    finite: Any  #: 0-d bool: all scores and new particles finite


@dataclass(frozen=True)
class ParticleSampler:
    """Base of the samplers: ``init(particles, seed)`` and a pure ``step(state) -> (state, info)``.

    Subclasses add their own settings and implement ``step``; ``name`` is the sampler's name
    (``"svgd"``, ``"spos"``, ``"sgld"``), recorded in checkpoints.
    """

    score_fn: Callable[[Any], Any]
    step_rule: StepRule

    name: ClassVar[str] = "sampler"
    #: the NamedTuple type of ``step``'s info (the run loop traces its fields except ``finite``); every
    #: sampler reports at least :class:`LangevinStepInfo`'s fields
    info_type: ClassVar[type] = LangevinStepInfo

    def init(self, particles, seed: int = 0) -> ParticleState:
        """Validate ``particles`` (n x d, floating, finite) and build the initial state."""
        check_particles(particles, "initial particles")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"expected a non-negative integer seed, received {seed!r} ({type(seed).__name__})")
        return ParticleState(particles, self.step_rule.init(particles), 0, int(seed))

    def scores(self, particles):
        """Evaluate ``score_fn`` once and check the result's type, shape and dtype."""
        s = self.score_fn(particles)
        if type(s) is not type(particles):
            raise TypeError(
                f"score_fn returned {type(s).__name__}; expected the particles' array type "
                f"{type(particles).__name__}"
            )
        if tuple(s.shape) != tuple(particles.shape):
            raise ValueError(
                f"score_fn returned shape {tuple(s.shape)}; expected the particles' shape {tuple(particles.shape)}"
            )
        if s.dtype != particles.dtype:
            raise TypeError(f"score_fn returned dtype {s.dtype}; expected the particles' dtype {particles.dtype}")
        return s

    def step(self, state: ParticleState):  # pragma: no cover - interface
        raise NotImplementedError

    def _move(self, state: ParticleState, drift, noise_variance: float = 0.0):
        """``x + rule(drift) [+ sqrt(noise_variance * lr) xi]``: the new state and the update.

        ``noise_variance`` is the noise variance per unit of the base learning rate ``lr`` (``2/beta``
        for SPOS, ``2 T`` for SGLD, 0 for SVGD); the noise is added outside the step rule.
        """
        lr = self.step_rule.learning_rate(state.step_state)
        delta, step_state = self.step_rule.update(drift, state.step_state)
        if noise_variance:
            delta = delta + math.sqrt(noise_variance * lr) * self._draw_noise(state)
        return ParticleState(state.particles + delta, step_state, state.step + 1, state.seed), delta

    def _draw_noise(self, state: ParticleState):
        """Standard normal noise for ``state`` (``(n, d)``, the particles' type, dtype and device)."""
        x = state.particles
        source = getattr(self, "noise", None)
        if source is None:
            return normal_noise(state.seed, state.step, x)
        xi = source(state.seed, state.step, x)
        if type(xi) is not type(x) or tuple(xi.shape) != tuple(x.shape) or xi.dtype != x.dtype:
            raise TypeError(
                f"noise returned {type(xi).__name__} of shape {tuple(getattr(xi, 'shape', ()))} and dtype "
                f"{getattr(xi, 'dtype', None)}; expected {type(x).__name__} of shape {tuple(x.shape)} and "
                f"dtype {x.dtype} (the particles')"
            )
        if device_of(xi) != device_of(x):
            raise ValueError(f"noise returned an array on device {device_of(xi)}; expected the particles' "
                             f"device {device_of(x)}")
        return xi


def finite_flag(xp, s, x_new):
    """0-d bool: every score and every new particle is finite (no host synchronisation)."""
    return xp.all(xp.isfinite(s)) & xp.all(xp.isfinite(x_new))


def first_nonfinite_particle(s, x_new) -> int:
    """The first particle whose score is non-finite; failing that, the first non-finite new position.

    (A NaN score spreads to every row of ``K S``, so the score, not the update, names the culprit.)
    """
    xp = namespace(s, x_new)
    bad_score = ~xp.all(xp.isfinite(s), axis=1)
    bad = bad_score if bool(xp.any(bad_score)) else ~xp.all(xp.isfinite(x_new), axis=1)
    return int(xp.argmax(xp.astype(bad, xp.int32)))


def check_batch_size(batch_size):
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"expected batch_size as an integer >= 2 (particles interact within a batch) "
                         f"or None, received {batch_size!r}")
    return batch_size


@dataclass(frozen=True)
class SteinSampler(ParticleSampler):
    """Settings of the Stein direction shared by SVGD and SPOS (see :func:`particlesampling.stein_direction`).

    ``batch_size``: random-batch direction (:func:`particlesampling.random_batch.random_batch_direction`);
    ``memory_budget``: ``"auto"`` (default), bytes or ``None`` for the ``n x n`` temporaries, tiled
    evaluation above it (:mod:`particlesampling.memory_budget`).
    """

    kernel: Any = None
    bandwidth: Any = None
    repulsion: float = 1.0
    batch_size: int | None = None
    memory_budget: int | float | str | None = AUTO

    info_type: ClassVar[type] = SteinStepInfo

    def _direction(self, state: ParticleState, s):
        """``(phi, bandwidth, mean_kernel)`` at the state's particles with scores ``s``."""
        x = state.particles
        if self.batch_size is None or self.batch_size >= x.shape[0]:
            # the run loop checks every step's particles and scores (the step's finite flag)
            phi, info = stein_direction_with_info(x, s, self.kernel, self.bandwidth, self.repulsion,
                                                  memory_budget=self.memory_budget, check_finite=False)
            return phi, info.bandwidth, info.mean_kernel
        return random_batch_direction(x, s, self.batch_size, seed=state.seed, step=state.step,
                                      kernel=self.kernel, bandwidth=self.bandwidth, repulsion=self.repulsion,
                                      check_finite=False)

    def _stein_info(self, xp, s, x_new, delta, h, mean_k) -> SteinStepInfo:
        return SteinStepInfo(bandwidth=h, mean_kernel=mean_k, update_norm=rms_rows(xp, delta),
                             score_norm=rms_rows(xp, s), finite=finite_flag(xp, s, x_new))


@dataclass(frozen=True)
class FlowSampler(ParticleSampler):
    """Settings and step shared by GFSF and Blob (:mod:`particlesampling.particle_flows`): a kernel,
    a bandwidth, and ``x <- x + rule(v)`` with ``v`` the method's direction (:meth:`_direction`)."""

    kernel: Any = None
    bandwidth: Any = None

    info_type: ClassVar[type] = SteinStepInfo

    def _direction(self, particles, s):  # pragma: no cover - interface
        """``(v, FlowInfo)``."""
        raise NotImplementedError

    def step(self, state: ParticleState):
        """One update; returns ``(new_state, SteinStepInfo)``. ``score_fn`` is called once."""
        xp = namespace(state.particles)
        s = self.scores(state.particles)
        v, info = self._direction(state.particles, s)
        new, delta = self._move(state, v)
        return new, SteinStepInfo(bandwidth=info.bandwidth, mean_kernel=info.mean_kernel,
                                  update_norm=rms_rows(xp, delta), score_norm=rms_rows(xp, s),
                                  finite=finite_flag(xp, s, new.particles))
