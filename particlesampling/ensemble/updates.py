"""Updates of a :class:`~particlesampling.ensemble.ParticleEnsemble`: deep ensemble, SVGD, SPOS, SGLD.

Each update turns one minibatch into an ascent *drift* ``(n, D)`` on the particles, with the core's
Stein direction (:func:`particlesampling.stein_direction`) where the method has one, and a Langevin
noise variance per unit step:

================  =========================================  =======================
update            drift                                      noise variance / step
================  =========================================  =======================
DeepEnsemble      ``s_i`` (each model ascends its own        0
                  log posterior: MAP training, no interaction)
SVGD              ``phi_i = (1/n) sum_j [k_ji s_j + grad_j k_ji]``  0
                  (Liu & Wang 2016, eq. 8)
SPOS              ``phi_i + s_i / beta``                     ``2 / beta``
                  (Zhang et al. 2020, eq. 4)
SGLD              ``s_i``                                    ``2 T``
                  (Welling & Teh 2011)
================  =========================================  =======================

with ``s_i`` particle ``i``'s score (:meth:`ParticleEnsemble.scores`, one backward pass for all).
Two ways to apply it:

* :meth:`EnsembleUpdate.fill_grad` writes ``-(drift + sqrt(v / lr) xi)`` into
  ``ensemble.particles.grad`` (``v`` the noise variance per unit step, ``lr`` the optimiser's
  learning rate), so that any ``torch.optim`` optimiser applies it, as Pyro and NumPyro apply Adam
  or Adagrad to the Stein direction. With ``torch.optim.SGD`` at ``lr`` this is exactly the
  method's update ``x + lr drift + sqrt(v lr) xi``; an adaptive optimiser (Adam, Adagrad) keeps
  SVGD's fixed points but preconditions the noise too, so SPOS and SGLD then no longer sample
  the posterior exactly (they become noisy optimisers).
* :class:`CoreStepper` applies the core's step rules (:func:`particlesampling.constant`,
  :func:`particlesampling.adagrad_momentum`, :func:`particlesampling.adam`) as the core samplers
  do: ``x + rule(drift) + sqrt(v lr) xi`` with the noise outside the rule (exact with
  ``constant``).

The noise is :func:`particlesampling.random.normal_noise` of ``(seed, step)`` by default, so a run
restored from ``state_dict`` continues bit for bit. Dropout masks come from torch's global
generator (save ``torch.get_rng_state()`` too if the model has dropout). A new method is a subclass
that implements :meth:`EnsembleUpdate.drift` (and sets ``noise_variance``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from ..random import normal_noise
from ..stein import stein_direction_with_info
from ..step_sizes import get_step_rule
from .ensemble import ParticleEnsemble, Scores

__all__ = ["UpdateInfo", "EnsembleUpdate", "DeepEnsemble", "SVGD", "SPOS", "SGLD", "CoreStepper"]


class UpdateInfo(NamedTuple):
    """What one update computed (tensors, no host synchronisation)."""

    log_posterior: Any  #: (n,) N/B-scaled log posterior of each particle on the batch
    drift_norm: Any  #: RMS over particles of |drift_i|
    score_norm: Any  #: RMS over particles of |s_i|
    bandwidth: Any = None  #: the kernel bandwidth (Stein updates), else None
    mean_kernel: Any = None  #: mean off-diagonal kernel value (Stein updates), else None


def _rms(a):
    return torch.sqrt(torch.mean(torch.sum(a * a, dim=1)))


def _positive(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"expected {name} > 0 (finite), received {v!r}")
    return float(v)


class EnsembleUpdate:
    """Base of the updates: ``drift`` from a batch; ``fill_grad`` for torch optimisers; a step counter.

    Parameters
    ----------
    ensemble : ParticleEnsemble
    seed : int
        Seed of the Langevin noise (a pure function of ``(seed, step)``).
    noise : callable ``(seed, step, like) -> tensor``, optional
        Noise source, as for :func:`particlesampling.spos`; default
        :func:`particlesampling.random.normal_noise`.
    """

    name = "update"
    noise_variance = 0.0  #: variance of the Langevin noise per unit step (0: deterministic)

    def __init__(self, ensemble: ParticleEnsemble, *, seed: int = 0, noise=None) -> None:
        if not isinstance(ensemble, ParticleEnsemble):
            raise TypeError(f"expected a ParticleEnsemble, received {type(ensemble).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"expected a non-negative integer seed, received {seed!r}")
        if noise is not None and not callable(noise):
            raise TypeError(f"expected noise to be None or a callable (seed, step, like) -> tensor, "
                            f"received {type(noise).__name__}")
        self.ensemble, self.seed, self.noise, self.step = ensemble, seed, noise, 0

    # subclasses implement this
    def drift_from_scores(self, particles, sc: Scores, inputs, targets):
        """``(drift (n, D), bandwidth, mean_kernel)`` given the scores at ``particles``."""
        raise NotImplementedError

    def drift(self, inputs, targets, particles=None):
        """Ascent drift ``(n, D)`` and :class:`UpdateInfo` on one batch (no noise, no step counted)."""
        x = (self.ensemble.particles if particles is None else particles).detach()
        sc = self.ensemble.scores(inputs, targets, x)
        d, h, mk = self.drift_from_scores(x, sc, inputs, targets)
        return d, UpdateInfo(sc.log_posterior, _rms(d), _rms(sc.scores), h, mk)

    def draw_noise(self, like):
        """Standard normal ``(n, D)`` noise of the current step."""
        source = self.noise or normal_noise
        return source(self.seed, self.step, like)

    def fill_grad(self, inputs, targets, lr: float | None = None) -> UpdateInfo:
        """Set ``ensemble.particles.grad = -(drift + sqrt(noise_variance / lr) xi)`` and count a step.

        ``lr``: the optimiser's learning rate, needed by the noisy methods (SPOS, SGLD) so that
        ``SGD(lr)`` takes the exact step ``x + lr drift + sqrt(noise_variance lr) xi``.
        """
        d, info = self.drift(inputs, targets)
        if self.noise_variance:
            if lr is None:
                raise ValueError(f"{self.name}: fill_grad needs the optimiser's learning rate lr to scale the "
                                 f"Langevin noise (sqrt(noise_variance / lr) xi), received lr=None")
            d = d + math.sqrt(self.noise_variance / _positive("lr", lr)) * self.draw_noise(d)
        p = self.ensemble.particles
        p.grad = (-d).to(p.dtype)
        self.step += 1
        return info

    def state_dict(self) -> dict:
        return {"name": self.name, "step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"state of update {state.get('name')!r} given to a {self.name!r} update")
        self.step, self.seed = int(state["step"]), int(state["seed"])


class DeepEnsemble(EnsembleUpdate):
    """Every model ascends its own log posterior (MAP; Lakshminarayanan et al. 2017): drift ``s_i``."""

    name = "ensemble"

    def drift_from_scores(self, particles, sc, inputs, targets):
        return sc.scores, None, None


class _SteinSettings(EnsembleUpdate):
    def __init__(self, ensemble, *, kernel=None, bandwidth=None, repulsion: float = 1.0, seed: int = 0,
                 noise=None) -> None:
        super().__init__(ensemble, seed=seed, noise=noise)
        self.kernel, self.bandwidth, self.repulsion = kernel, bandwidth, repulsion

    def stein(self, particles, scores):
        phi, info = stein_direction_with_info(particles, scores, self.kernel, self.bandwidth, self.repulsion)
        return phi, info.bandwidth, info.mean_kernel


class SVGD(_SteinSettings):
    """Weight-space SVGD (Liu & Wang 2016, eq. 8) with the core's direction; ``kernel``, ``bandwidth``,
    ``repulsion`` as for :func:`particlesampling.stein_direction` (default RBF, Liu-Wang median)."""

    name = "svgd"

    def drift_from_scores(self, particles, sc, inputs, targets):
        return self.stein(particles, sc.scores)


class SPOS(_SteinSettings):
    """SPOS (Zhang et al. 2020, eq. 4): drift ``phi + s / beta``, noise variance ``2 / beta`` per unit step."""

    name = "spos"

    def __init__(self, ensemble, *, beta: float = 1.0, **settings) -> None:
        super().__init__(ensemble, **settings)
        self.beta = _positive("beta", beta)
        self.noise_variance = 2.0 / self.beta

    def drift_from_scores(self, particles, sc, inputs, targets):
        phi, h, mk = self.stein(particles, sc.scores)
        return phi + sc.scores / self.beta, h, mk


class SGLD(EnsembleUpdate):
    """Independent Langevin chains (Welling & Teh 2011): drift ``s_i``, noise variance ``2 T`` per unit step."""

    name = "sgld"

    def __init__(self, ensemble, *, temperature: float = 1.0, seed: int = 0, noise=None) -> None:
        super().__init__(ensemble, seed=seed, noise=noise)
        self.temperature = _positive("temperature", temperature)
        self.noise_variance = 2.0 * self.temperature

    def drift_from_scores(self, particles, sc, inputs, targets):
        return sc.scores, None, None


class CoreStepper:
    """An update applied with one of the core's step rules, as the core samplers apply them.

    ``x <- x + rule(drift) + sqrt(noise_variance * lr) xi`` (noise outside the rule, ``lr`` the
    rule's base learning rate: exact Langevin with :func:`particlesampling.constant`), written into
    ``ensemble.particles`` in place.

    Parameters
    ----------
    update : EnsembleUpdate
    step_size : float, StepRule or name
        As for :func:`particlesampling.svgd`: a number is a constant step.
    """

    def __init__(self, update: EnsembleUpdate, step_size=1e-3) -> None:
        if not isinstance(update, EnsembleUpdate):
            raise TypeError(f"expected an EnsembleUpdate, received {type(update).__name__}")
        self.update = update
        self.rule = get_step_rule(step_size)
        self.rule_state = self.rule.init(update.ensemble.particles.detach())

    def step(self, inputs, targets) -> UpdateInfo:
        """One step on the batch ``(inputs, targets)``; returns its :class:`UpdateInfo`."""
        u = self.update
        d, info = u.drift(inputs, targets)
        lr = self.rule.learning_rate(self.rule_state)
        delta, self.rule_state = self.rule.update(d, self.rule_state)
        if u.noise_variance:
            delta = delta + math.sqrt(u.noise_variance * lr) * u.draw_noise(d)
        with torch.no_grad():
            u.ensemble.particles.add_(delta)
        u.step += 1
        return info

    def state_dict(self) -> dict:
        """The update's counter and seed and the step rule's state (tensors cloned)."""
        rs = self.rule_state
        fields = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in rs._asdict().items()}
        return {"update": self.update.state_dict(), "rule": self.rule.name, "rule_state": fields}

    def load_state_dict(self, state: dict) -> None:
        if state.get("rule") != self.rule.name:
            raise ValueError(f"state of step rule {state.get('rule')!r} given to a {self.rule.name!r} stepper")
        self.update.load_state_dict(state["update"])
        self.rule_state = type(self.rule_state)(**{k: (v.clone() if isinstance(v, torch.Tensor) else v)
                                                   for k, v in state["rule_state"].items()})
