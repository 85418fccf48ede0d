"""Preconditioned SPOS: SPOS (Zhang et al., AISTATS 2020) with the diagonal RMSProp preconditioner of
pSGLD (Li, Chen, Carlson & Carin, AAAI 2016) and its correction term.

Per particle ``i`` and coordinate ``a`` (``s = grad log p``, ``phi`` the SVGD direction of
:func:`particlesampling.stein_direction`, ``xi ~ N(0, I)``):

.. math::

    V_i &\\leftarrow \\alpha V_i + (1 - \\alpha)\\, s_i \\odot s_i
          \\quad (V_i = s_i \\odot s_i \\text{ at the first step}), \\qquad
    G_i = \\operatorname{diag}\\big(1 / (\\lambda + \\sqrt{V_i})\\big), \\\\
    x_i &\\leftarrow x_i + \\epsilon \\big[ G_i (\\beta^{-1} s_i + \\phi(x_i)) + \\beta^{-1} \\Gamma_i \\big]
          + \\sqrt{2 \\epsilon / \\beta}\\; G_i^{1/2} \\xi_i ,
    \\qquad \\Gamma_{i,a} = \\frac{\\partial G_{i,aa}}{\\partial x_{i,a}}
          = -\\frac{c\\, s_{i,a}\\, \\partial_a s_{i,a}}{\\sqrt{V_{i,a}}\\,(\\lambda + \\sqrt{V_{i,a}})^2},

with ``c = 1 - alpha`` (1 at the first step) and ``d_a s_a`` the diagonal of the Hessian of
``log p``. The Langevin part ``G s / beta + Gamma / beta`` with noise covariance ``2 eps G / beta``
is pSGLD's update (their eq. 4, ``Gamma(theta) = sum_j d G_ij / d theta_j``), which leaves ``p``
invariant for any position-dependent ``G`` (the Fokker-Planck drift ``G grad log p + div G``);
without ``Gamma`` the chain targets ``p / G`` instead (pSGLD drops it, arguing it is small for
``alpha`` near 1). The Stein part ``G phi`` vanishes where ``q = p`` (``phi = 0`` there, by Stein's
identity), so ``p`` stays the target. ``Gamma`` needs the Hessian diagonal: from
``hessian_diagonal_fn``, or by automatic differentiation of ``log_prob`` (PyTorch, JAX;
:func:`particlesampling.log_density.hessian_diagonal_from_log_prob`); ``correction=False`` drops it
(pSGLD's practice; then ``p`` is the target only as ``alpha -> 1``); by default it is added whenever
a Hessian diagonal is available and dropped otherwise (``sampler.corrected`` says which).

``Gamma`` differentiates only the current score's share ``(1 - alpha) s * s`` of ``V``, as pSGLD's
does; ``V`` also depends on the particle's own recent positions through ``alpha V``, and where
particles move little over the averaging time ``1 / (1 - alpha)`` that dependence makes the chain
inexact with or without ``Gamma`` (``docs/methods.md`` measures the overdispersion on a Gaussian).
With ``decay=0`` ``G`` is a function of the current position only and ``Gamma`` is exact.

The preconditioner is this sampler's own: the step is the plain (constant or scheduled) step
size, never an adaptive rule on top.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple

from .._backend import namespace
from ..log_density import hessian_diagonal_from_log_prob
from ..memory_budget import AUTO, check_memory_budget
from ..step_sizes import get_step_rule
from ..stein_terms import check_repulsion
from ._common import ParticleState, SteinSampler, check_batch_size, check_noise, check_positive, check_score_fn

__all__ = ["PSPOS", "pspos", "PreconditionerState"]


class PreconditionerState(NamedTuple):
    """The step state of :class:`PSPOS`: the step rule's count and the running average ``V``."""

    count: Any  #: completed steps (an int; an array under ``jax.jit``)
    sq_avg: Any  #: (n, d) ``V``, the running average of ``s * s``


@dataclass(frozen=True)
class PSPOS(SteinSampler):
    """Preconditioned SPOS; build it with :func:`pspos`."""

    beta: float = 1.0
    decay: float = 0.99  #: ``alpha``
    damping: float = 1e-5  #: ``lambda``
    hessian_diagonal_fn: Callable[[Any], Any] | None = None  #: None: no correction term
    noise: Callable[[int, int, Any], Any] | None = None

    name: ClassVar[str] = "pspos"

    @property
    def corrected(self) -> bool:
        """Whether the correction term ``Gamma`` is added (the chain then targets ``p`` exactly, up to
        the step-size bias)."""
        return self.hessian_diagonal_fn is not None

    def init(self, particles, seed: int = 0) -> ParticleState:
        state = super().init(particles, seed)
        return state._replace(step_state=self.step_state_template(particles))

    def step_state_template(self, particles) -> PreconditionerState:
        """The step state at the start (also the template :func:`particlesampling.load_state` fills)."""
        return PreconditionerState(0, namespace(particles).zeros_like(particles))

    def _hessian_diagonal(self, x):
        hd = self.hessian_diagonal_fn(x)
        if type(hd) is not type(x) or tuple(hd.shape) != tuple(x.shape) or hd.dtype != x.dtype:
            raise TypeError(f"hessian_diagonal_fn returned {type(hd).__name__} of shape {tuple(getattr(hd, 'shape', ()))}"
                            f" and dtype {getattr(hd, 'dtype', None)}; expected {type(x).__name__} of shape "
                            f"{tuple(x.shape)} and dtype {x.dtype} (the particles')")
        return hd

    def step(self, state: ParticleState):
        """One update; returns ``(new_state, SteinStepInfo)``. ``score_fn`` is called once (and the
        Hessian diagonal once, with the correction)."""
        x = state.particles
        xp = namespace(x)
        s = self.scores(x)
        count, v_old = state.step_state
        ss = s * s
        if isinstance(count, numbers.Integral):
            first = count == 0
            v = ss if first else self.decay * v_old + (1.0 - self.decay) * ss
            c = 1.0 if first else 1.0 - self.decay
        else:  # a counter traced by jax.jit: the same choice, made on the device
            first = count == 0
            v = xp.where(first, ss, self.decay * v_old + (1.0 - self.decay) * ss)
            c = xp.where(first, 1.0, 1.0 - self.decay)
        root = xp.sqrt(v)
        g = 1.0 / (self.damping + root)
        phi, h, mean_k = self._direction(state, s)
        drift = g * (phi + s / self.beta)
        if self.hessian_diagonal_fn is not None:
            hd = self._hessian_diagonal(x)
            positive = root > 0  # V = 0 only where s = 0, where Gamma = 0
            safe = xp.where(positive, root, xp.ones_like(root))
            gamma = xp.where(positive, -c * s * hd / (safe * (self.damping + root) ** 2), xp.zeros_like(root))
            drift = drift + gamma / self.beta
        lr = self.step_rule.learning_rate(_RuleCount(count))
        delta = lr * drift + math.sqrt(2.0 * lr / self.beta) * xp.sqrt(g) * self._draw_noise(state)
        new = ParticleState(x + delta, PreconditionerState(count + 1, v), state.step + 1, state.seed)
        return new, self._stein_info(xp, s, new.particles, delta, h, mean_k)


class _RuleCount(NamedTuple):
    """The constant rule's state, for its learning rate at ``count``."""

    count: Any


def _check_unit_interval(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"expected {name} in [0, 1), received {value!r}")
    return float(value)


def pspos(score_fn=None, step_size=1e-2, *, beta: float = 1.0, decay: float = 0.99, damping: float = 1e-5,
          correction: bool | None = None, hessian_diagonal_fn=None, kernel=None, bandwidth=None, repulsion: float = 1.0,
          batch_size: int | None = None, memory_budget=AUTO, noise=None, log_prob=None) -> PSPOS:
    """Preconditioned SPOS; update in the module docstring.

    Parameters
    ----------
    score_fn, kernel, bandwidth, repulsion, batch_size, memory_budget, log_prob :
        As for :func:`~particlesampling.svgd`.
    step_size : float or schedule ``step -> float``
        ``eps`` (a constant step rule; adaptive rules are refused: the preconditioner is ``G``).
    beta, noise : as for :func:`~particlesampling.spos`.
    decay : float in [0, 1)
        ``alpha``, RMSProp's decay of ``V`` (pSGLD's 0.99).
    damping : float > 0
        ``lambda`` (pSGLD's 1e-5).
    correction : bool or None
        True: add ``Gamma`` (needs ``hessian_diagonal_fn``, or ``log_prob`` on PyTorch/JAX; ValueError
        otherwise). False: drop it (pSGLD's approximation). None (default): add it when a Hessian
        diagonal is available (``hessian_diagonal_fn`` or ``log_prob``), drop it otherwise (a plain
        ``score_fn``); the sampler's ``corrected`` attribute says which.
    hessian_diagonal_fn : callable, (n, d) -> (n, d), optional
        The diagonal of the Hessian of ``log p`` at each particle.

    Returns
    -------
    PSPOS : ``init(particles, seed=0) -> ParticleState`` and ``step(state) -> (state, SteinStepInfo)``.
    """
    rule = get_step_rule(step_size)
    if rule.name != "constant":
        raise ValueError(f"expected a step size (float or schedule) for pspos, whose preconditioner is its own; "
                         f"received the adaptive rule {rule.name!r}")
    if correction is not None and not isinstance(correction, bool):
        raise TypeError(f"expected correction as a bool or None, received {correction!r}")
    if correction is None:
        correction = hessian_diagonal_fn is not None or log_prob is not None
    if hessian_diagonal_fn is not None and not callable(hessian_diagonal_fn):
        raise TypeError(f"expected hessian_diagonal_fn to be callable, received {type(hessian_diagonal_fn).__name__}")
    if correction and hessian_diagonal_fn is None:
        if log_prob is None:
            raise ValueError("the correction term of pspos needs the Hessian diagonal of log p: pass "
                             "hessian_diagonal_fn, or log_prob (differentiated on PyTorch/JAX), or "
                             "correction=False (pSGLD's approximation)")
        hessian_diagonal_fn = hessian_diagonal_from_log_prob(log_prob)
    if not correction:
        hessian_diagonal_fn = None
    return PSPOS(check_score_fn(score_fn, log_prob), rule, kernel=kernel, bandwidth=bandwidth,
                 repulsion=check_repulsion(repulsion), batch_size=check_batch_size(batch_size),
                 memory_budget=check_memory_budget(memory_budget), beta=check_positive("beta", beta),
                 decay=_check_unit_interval("decay", decay), damping=check_positive("damping", damping),
                 hessian_diagonal_fn=hessian_diagonal_fn, noise=check_noise(noise))
