"""SVGD, SPOS and SGLD as pure ``init`` / ``step`` functions over explicit state (BlackJAX style).

Each constructor returns a :class:`Sampler` with

* ``state = sampler.init(particles, seed=0)``: validates the particles (n x d, floating, finite) and
  builds the state, and
* ``state, info = sampler.step(state)``: one update; ``score_fn`` is evaluated exactly once (n
  scores), ``state`` is not modified.

Updates (``s_i = grad log p(x_i)``, ``phi`` the Stein direction of :func:`stein_direction`,
``xi_i ~ N(0, I)`` independent per particle and step, ``eps`` the step size):

* SVGD (Liu & Wang 2016, eq. 8):  ``x_i <- x_i + eps * phi(x_i)``
* SPOS (Zhang, Zhang, Carin & Chen 2020, arXiv:1809.01293, eq. (4), written with ``F = -log p``):
  ``x_i <- x_i + eps * [beta^-1 s_i + phi(x_i)] + sqrt(2 eps / beta) * xi_i``.
  Both the Langevin part and the SVGD part leave ``p`` invariant, so ``p`` is the target for every
  ``beta > 0``; small ``beta`` weights Langevin more, ``beta -> inf`` recovers SVGD.
* SGLD (Welling & Teh 2011, written as a Langevin discretisation):
  ``x_i <- x_i + eps * s_i + sqrt(2 eps * temperature) * xi_i``.

With a non-constant step rule (AdaGrad, Adam) the drift ``eps * (...)`` is replaced by the rule's
preconditioned increment while the noise keeps the base step ``eps``; see :mod:`.step_sizes` for what
this means for exactness.

Noise: ``xi`` comes from :func:`particlesampling.random.normal_noise`, a pure function of ``(seed,
particle, step)``, so resumed runs are exact. SPOS and SGLD accept ``noise=`` to draw it from
elsewhere, e.g. a fast seeded device generator (:func:`particlesampling.random.generator_noise`);
such a source keeps its own state, and exact resume is then the caller's business.

Random-batch SVGD (Li, Li, Liu & Liu 2020): with ``batch_size=b`` the particles are split into random
batches of ``b`` each step and the Stein direction is taken within each batch (``O(n b d)``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from ._backend import check_particles, device_of, namespace
from .random import normal_noise, permutation
from .step_sizes import StepRule, get_step_rule
from .stein import stein_direction_with_info

__all__ = ["Sampler", "SamplerState", "StepInfo", "svgd", "spos", "sgld", "get_sampler", "METHODS"]


class SamplerState(NamedTuple):
    """Explicit sampler state. ``step`` counts completed steps; noise depends on ``(seed, i, step)``."""

    particles: Any  #: (n, d) array
    step_state: Any  #: the step rule's state
    step: int
    seed: int


class StepInfo(NamedTuple):
    """Per-step information (0-d arrays of the particles' namespace; no host synchronisation)."""

    bandwidth: Any  #: kernel bandwidth used (NaN for SGLD)
    mean_kernel: Any  #: mean off-diagonal kernel value (NaN for SGLD)
    update_norm: Any  #: RMS over particles of |x_new - x_old|
    score_norm: Any  #: RMS over particles of |s_i|
    finite: Any  #: 0-d bool: all scores and new particles finite


@dataclass(frozen=True)
class Sampler:
    """A particle sampler: ``init(particles, seed)`` and ``step(state)``; see the module docstring."""

    method: str
    score_fn: Callable[[Any], Any]
    step_rule: StepRule
    kernel: Any = None
    bandwidth: Any = None
    repulsion: float = 1.0
    beta: float = 1.0  #: SPOS inverse temperature weight of the Langevin part
    temperature: float = 1.0  #: SGLD temperature
    batch_size: int | None = None  #: random-batch SVGD/SPOS
    memory_budget: int | None = None  #: bytes for n x n temporaries; tiled evaluation above it
    config: dict = field(default_factory=dict)
    #: SPOS/SGLD noise source ``(seed, step, like) -> N(0, 1) array shaped like like``; None: normal_noise
    noise: Callable[[int, int, Any], Any] | None = None

    @property
    def uses_stein(self) -> bool:
        return self.method in ("svgd", "spos")

    @property
    def uses_noise(self) -> bool:
        return self.method in ("spos", "sgld")

    def init(self, particles, seed: int = 0) -> SamplerState:
        """Validate ``particles`` (n x d, floating, finite) and build the initial state."""
        check_particles(particles, "initial particles")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"expected a non-negative integer seed, received {seed!r} ({type(seed).__name__})")
        return SamplerState(particles, self.step_rule.init(particles), 0, int(seed))

    def scores(self, particles):
        """Evaluate ``score_fn`` once and check the result's shape and type."""
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

    def draw_noise(self, state: SamplerState):
        """Standard normal noise for ``state`` (``(n, d)``, the particles' type, dtype and device)."""
        x = state.particles
        if self.noise is None:
            return normal_noise(state.seed, state.step, x)
        xi = self.noise(state.seed, state.step, x)
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

    def _stein(self, xp, x, s, step: int, seed: int):
        if self.batch_size is None or self.batch_size >= x.shape[0]:
            phi, info = stein_direction_with_info(x, s, self.kernel, self.bandwidth, self.repulsion,
                                                  memory_budget=self.memory_budget)
            return phi, info.bandwidth, info.mean_kernel
        return _random_batch_direction(self, xp, x, s, step, seed)

    def step(self, state: SamplerState):
        """One update; returns ``(new_state, StepInfo)``."""
        x = state.particles
        xp = namespace(x)
        s = self.scores(x)
        nan = xp.asarray(math.nan, dtype=x.dtype, device=device_of(x))
        if self.method == "svgd":
            drift, h, mk = self._stein(xp, x, s, state.step, state.seed)
        elif self.method == "spos":
            phi, h, mk = self._stein(xp, x, s, state.step, state.seed)
            drift = phi + s / self.beta
        else:
            drift, h, mk = s, nan, nan
        lr = self.step_rule.learning_rate(state.step_state)
        delta, step_state = self.step_rule.update(drift, state.step_state)
        if self.uses_noise:
            var = 2.0 * lr / self.beta if self.method == "spos" else 2.0 * lr * self.temperature
            delta = delta + math.sqrt(var) * self.draw_noise(state)
        x_new = x + delta
        finite = xp.all(xp.isfinite(s)) & xp.all(xp.isfinite(x_new))
        info = StepInfo(
            bandwidth=h,
            mean_kernel=mk,
            update_norm=xp.sqrt(xp.mean(xp.sum(delta * delta, axis=1))),
            score_norm=xp.sqrt(xp.mean(xp.sum(s * s, axis=1))),
            finite=finite,
        )
        return SamplerState(x_new, step_state, state.step + 1, state.seed), info


def _random_batch_direction(sampler: Sampler, xp, x, s, step: int, seed: int):
    """Random-batch Stein direction (Li, Li, Liu & Liu 2020, "A stochastic version of SVGD").

    A fresh uniform permutation per step splits the n particles into ``m = max(n // b, 1)`` batches
    of near-equal size (``numpy.array_split``), so every batch has between ``b`` and ``2b - 1``
    particles (never a lone particle without interactions). Writing the SVGD sum as the self term plus the
    interactions, particle ``i`` in batch ``C`` moves along

        phi_i = (1/n) k(x_i, x_i) s_i
                + (n - 1) / (n (|C| - 1)) sum_{j in C, j != i} [k(x_j, x_i) s_j + alpha grad_{x_j} k(x_j, x_i)],

    an unbiased estimate of the full direction for a fixed bandwidth (the bandwidth rule is applied
    within each batch). Cost O(n b d) time and O(b^2) memory per batch. Returns the direction, the
    mean bandwidth and the mean kernel value over batches.
    """
    import numpy as np

    from .stein import stein_terms

    n = x.shape[0]
    m = max(n // sampler.batch_size, 1)
    perm = permutation(seed, step, n)
    dev = device_of(x)
    parts, hs, mks = [], [], []
    for idx_np in np.array_split(perm, m):
        idx = xp.asarray(idx_np, device=dev)
        xb, sb = xp.take(x, idx, axis=0), xp.take(s, idx, axis=0)
        t = stein_terms(xb, sb, sampler.kernel, sampler.bandwidth)
        self_term = t.kernel_diagonal[:, None] * sb
        size = xb.shape[0]
        inter = t.driving + sampler.repulsion * t.repulsion - self_term
        scale = (n - 1) / (n * (size - 1))
        parts.append(self_term / float(n) + scale * inter)
        hs.append(xp.mean(t.bandwidth))
        mks.append(t.mean_kernel)
    phi_perm = xp.concat(parts, axis=0)
    inverse = xp.asarray(_inverse_permutation(perm), device=dev)
    phi = xp.take(phi_perm, inverse, axis=0)
    return phi, xp.mean(xp.stack(hs)), xp.mean(xp.stack(mks))


def _inverse_permutation(perm):
    import numpy as np

    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.shape[0])
    return inv


def _check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"expected {name} > 0 (finite), received {value!r}")
    return float(value)


def _check_batch(batch_size):
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"expected batch_size as an integer >= 2 (particles interact within a batch) "
                         f"or None, received {batch_size!r}")
    return batch_size


def _check_budget(memory_budget):
    if memory_budget is None:
        return None
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float)) or not (
        math.isfinite(memory_budget) and memory_budget > 0
    ):
        raise ValueError(f"expected memory_budget as a positive number of bytes or None, received {memory_budget!r}")
    return memory_budget


def _check_score_fn(score_fn):
    if not callable(score_fn):
        raise TypeError(f"expected score_fn to be callable (particles -> scores), received {type(score_fn).__name__}")
    return score_fn


def svgd(score_fn, step_size=1e-2, *, kernel=None, bandwidth=None, repulsion: float = 1.0,
         batch_size: int | None = None, memory_budget: int | None = None) -> Sampler:
    """Stein variational gradient descent (Liu & Wang 2016).

    Parameters
    ----------
    score_fn : callable, (n, d) array -> (n, d) array of ``grad log p``
    step_size : float, schedule ``step -> float``, StepRule or rule name
        Plain float gives :func:`~particlesampling.step_sizes.constant`.
    kernel, bandwidth, repulsion : see :func:`~particlesampling.stein_direction`.
    batch_size : int, optional
        Random-batch SVGD: interactions only within random batches of this size.
    memory_budget : int, optional
        Bytes allowed for the ``n x n`` temporaries of the direction; above it the direction is
        evaluated in row blocks (:mod:`particlesampling.tiled`, same result to rounding).
    """
    return Sampler("svgd", _check_score_fn(score_fn), get_step_rule(step_size), kernel, bandwidth,
                   float(repulsion), batch_size=_check_batch(batch_size),
                   memory_budget=_check_budget(memory_budget),
                   config={"kernel": repr(kernel), "bandwidth": repr(bandwidth), "repulsion": repulsion,
                           "batch_size": batch_size})


def spos(score_fn, step_size=1e-2, *, beta: float = 1.0, kernel=None, bandwidth=None,
         repulsion: float = 1.0, batch_size: int | None = None, memory_budget: int | None = None,
         noise=None) -> Sampler:
    """Stochastic particle-optimisation sampling (Zhang et al. 2020); update in the module docstring.

    ``beta > 0`` weights the Langevin part (drift ``s / beta``, noise variance ``2 eps / beta``).
    ``memory_budget``: as for :func:`svgd`. ``noise``: see the module docstring (default: the
    counter-based :func:`~particlesampling.random.normal_noise`).
    """
    beta = _check_positive("beta", beta)
    return Sampler("spos", _check_score_fn(score_fn), get_step_rule(step_size), kernel, bandwidth,
                   float(repulsion), beta=beta, batch_size=_check_batch(batch_size),
                   memory_budget=_check_budget(memory_budget),
                   config={"kernel": repr(kernel), "bandwidth": repr(bandwidth), "repulsion": repulsion,
                           "beta": beta, "batch_size": batch_size, "noise": _noise_name(noise)},
                   noise=_check_noise(noise))


def sgld(score_fn, step_size=1e-2, *, temperature: float = 1.0, noise=None) -> Sampler:
    """Langevin dynamics baseline: ``x <- x + eps s + sqrt(2 eps T) xi`` for every particle.

    ``noise``: as for :func:`spos`.
    """
    temperature = _check_positive("temperature", temperature)
    return Sampler("sgld", _check_score_fn(score_fn), get_step_rule(step_size), temperature=temperature,
                   config={"temperature": temperature, "noise": _noise_name(noise)}, noise=_check_noise(noise))


def _check_noise(noise):
    if noise is not None and not callable(noise):
        raise TypeError(f"expected noise to be None or a callable (seed, step, like) -> array, "
                        f"received {type(noise).__name__}")
    return noise


def _noise_name(noise) -> str:
    return "counter-based" if noise is None else getattr(noise, "__name__", repr(noise))


METHODS = {"svgd": svgd, "spos": spos, "sgld": sgld}


def get_sampler(method: str, score_fn, step_size=1e-2, **options) -> Sampler:
    """Build a sampler by name (``"svgd"``, ``"spos"``, ``"sgld"``)."""
    key = str(method).lower()
    if key not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    return METHODS[key](score_fn, step_size, **options)
