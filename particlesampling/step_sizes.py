"""Step-size rules in the style of Optax: ``(init, update)`` pairs over explicit state.

A rule turns an ascent direction ``g`` (n x d) into a particle increment: ``delta, state =
rule.update(g, state)`` and the sampler sets ``x <- x + delta``. The learning rate ``lr`` is a
positive float or a schedule ``lr(step) -> float`` (step counts from 0).

* :func:`constant`: ``delta = lr_t * g``. The exact path for sampling: with SPOS or SGLD it gives the
  discretised diffusion whose stationary law is the target (up to step-size bias).
* :func:`adagrad_momentum`: the rule of the original SVGD code (Liu & Wang 2016):
  ``v <- g^2`` at the first step, then ``v <- decay v + (1 - decay) g^2`` (the original code's
  ``alpha``, renamed here: in this project ``alpha`` is only the repulsion weight of An et al.);
  ``delta = lr * g / (fudge + sqrt(v))``.
* :func:`adam`: Kingma & Ba (2015) with bias correction.

Adaptive rules keep ``phi = 0`` as a fixed point of SVGD (so the SVGD fixed points are unchanged),
but they rescale each coordinate. For SPOS and SGLD the samplers add the Langevin noise *outside*
the rule, scaled by the base ``lr``; the preconditioned drift then no longer matches that noise,
so the chain does not target ``p`` exactly. Use :func:`constant` when exact sampling matters.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple, Union

from ._backend import namespace

__all__ = ["StepRule", "constant", "adagrad_momentum", "adam", "get_step_rule"]

LearningRate = Union[float, Callable[[int], float]]


class StepRule(NamedTuple):
    """A step-size rule: ``init(particles) -> state``; ``update(g, state) -> (delta, state)``."""

    name: str
    init: Callable[[Any], Any]
    update: Callable[[Any, Any], tuple]
    learning_rate: Callable[[Any], float]  #: ``learning_rate(state) -> lr`` at the next update
    config: dict


class ConstantState(NamedTuple):
    count: int


class AdagradMomentumState(NamedTuple):
    count: int
    sq_avg: Any  #: (n, d) running average of g^2


class AdamState(NamedTuple):
    count: int
    m: Any
    v: Any


def _check_lr(lr: LearningRate):
    if callable(lr):
        return lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"expected a learning rate > 0 (finite) or a schedule callable, received {lr!r}")
    return float(lr)


def _lr_at(lr: LearningRate, count: int) -> float:
    if not callable(lr):
        return lr
    value = float(lr(count))
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"learning-rate schedule returned {value!r} at step {count}; expected > 0")
    return value


def constant(lr: LearningRate = 1e-2) -> StepRule:
    """``delta = lr_t * g``."""
    lr = _check_lr(lr)

    def init(particles):
        return ConstantState(count=0)

    def update(g, state):
        return _lr_at(lr, state.count) * g, ConstantState(count=state.count + 1)

    return StepRule("constant", init, update, lambda s: _lr_at(lr, s.count), {"lr": lr})


def adagrad_momentum(lr: LearningRate = 1e-3, decay: float = 0.9, fudge: float = 1e-6) -> StepRule:
    """AdaGrad with momentum as in the original SVGD code (see module docstring)."""
    lr = _check_lr(lr)
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"expected decay in [0, 1), received {decay!r}")
    if not fudge > 0:
        raise ValueError(f"expected fudge > 0, received {fudge!r}")

    def init(particles):
        xp = namespace(particles)
        return AdagradMomentumState(count=0, sq_avg=xp.zeros_like(particles))

    def update(g, state):
        xp = namespace(g)
        if isinstance(state.count, numbers.Integral):
            v = state.sq_avg + g * g if state.count == 0 else decay * state.sq_avg + (1.0 - decay) * (g * g)
        else:  # a counter that is an array (traced by jax.jit): the same choice, made on the device
            v = xp.where(state.count == 0, state.sq_avg + g * g, decay * state.sq_avg + (1.0 - decay) * (g * g))
        delta = _lr_at(lr, state.count) * g / (fudge + xp.sqrt(v))
        return delta, AdagradMomentumState(count=state.count + 1, sq_avg=v)

    return StepRule("adagrad_momentum", init, update, lambda s: _lr_at(lr, s.count),
                    {"lr": lr, "decay": decay, "fudge": fudge})


def adam(lr: LearningRate = 1e-2, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> StepRule:
    """Adam (Kingma & Ba 2015) on the ascent direction, with bias correction."""
    lr = _check_lr(lr)
    for name, b in (("b1", b1), ("b2", b2)):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"expected {name} in [0, 1), received {b!r}")
    if not eps > 0:
        raise ValueError(f"expected eps > 0, received {eps!r}")

    def init(particles):
        xp = namespace(particles)
        return AdamState(count=0, m=xp.zeros_like(particles), v=xp.zeros_like(particles))

    def update(g, state):
        xp = namespace(g)
        t = state.count + 1
        m = b1 * state.m + (1.0 - b1) * g
        v = b2 * state.v + (1.0 - b2) * (g * g)
        m_hat = m / (1.0 - b1**t)
        v_hat = v / (1.0 - b2**t)
        delta = _lr_at(lr, state.count) * m_hat / (xp.sqrt(v_hat) + eps)
        return delta, AdamState(count=t, m=m, v=v)

    return StepRule("adam", init, update, lambda s: _lr_at(lr, s.count),
                    {"lr": lr, "b1": b1, "b2": b2, "eps": eps})


#: step-size rules by name (one name each)
_RULES = {"constant": constant, "adagrad_momentum": adagrad_momentum, "adam": adam}


def get_step_rule(spec: Any, lr: LearningRate | None = None) -> StepRule:
    """Resolve a step rule from a :class:`StepRule`, a float/schedule (constant), or a name."""
    if isinstance(spec, StepRule):
        return spec
    if isinstance(spec, str):
        key = spec.lower().replace("-", "_")
        if key not in _RULES:
            raise ValueError(f"unknown step-size rule {spec!r}; expected one of {sorted(_RULES)}")
        return _RULES[key]() if lr is None else _RULES[key](lr)
    if callable(spec) or isinstance(spec, (int, float)):
        return constant(spec)
    raise TypeError(f"expected a StepRule, a learning rate or a rule name, received {type(spec).__name__}")
