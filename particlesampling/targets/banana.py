"""Twisted Gaussian ("banana") target of Haario, Saksman & Tamminen (1999).

Haario et al. (Computational Statistics 14, 1999, Sec. 4; also Roberts & Rosenthal 2009,
"Examples of adaptive MCMC") twist ``f = N(0, diag(σ₁², 1, ..., 1))`` in ``R^d`` by
``φ_b(x) = (x₁, x₂ + b x₁² - b σ₁², x₃, ..., x_d)`` and take ``p = f ∘ φ_b``.  Since ``φ_b`` has
unit Jacobian, ``p`` is normalised:

``log p(x) = -x₁²/(2σ₁²) - y₂²/2 - Σ_{k>2} x_k²/2 - (d/2) log 2π - log σ₁``,
with ``y₂ = x₂ + b x₁² - b σ₁²``, and

``∇ log p(x) = (-x₁/σ₁² - 2 b x₁ y₂, -y₂, -x₃, ..., -x_d)``.

Exact samples: ``y ~ f`` then ``x = φ_b⁻¹(y) = (y₁, y₂ - b y₁² + b σ₁², y₃, ...)``.
Exact moments (with ``E y₁² = σ₁²``, ``Var y₁² = 2σ₁⁴``, ``Cov(y₁, y₁²) = 0``):
``mean = 0``, ``cov = diag(σ₁², 1 + 2 b² σ₁⁴, 1, ..., 1)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import validation
from .base import Target

__all__ = ["Banana"]


class Banana(Target):
    """Haario et al. twisted Gaussian (normalised ``log_prob``).

    Parameters
    ----------
    dim : int
        Dimension ``d >= 2`` (default 2; Haario et al. use 8).
    b : float
        Twist ``b >= 0`` (default 0.03, Haario's "moderately twisted" case; 0.1 is strongly
        twisted; 0 is a Gaussian).
    sigma1 : float
        Standard deviation of the first coordinate (default 10, as in Haario et al.).

    Notes
    -----
    Initial particles: ``N(0, I_d)``.  ``bounds`` (d = 2): ``x₁ ∈ ±4 σ₁`` and
    ``x₂ ∈ [-15 b σ₁² - 4, b σ₁² + 4]``.
    """

    name = "banana"
    description = "twisted Gaussian of Haario et al. 1999 (sigma1=10, b=0.03), exact moments"
    normalised = True

    def __init__(self, dim: int = 2, b: float = 0.03, sigma1: float = 10.0) -> None:
        dim = validation.check_int("dim", dim, minimum=2)
        b = float(b)
        sigma1 = float(sigma1)
        if not np.isfinite(b) or b < 0:
            raise ValueError(f"b: expected a finite value >= 0, got {b}")
        if not np.isfinite(sigma1) or sigma1 <= 0:
            raise ValueError(f"sigma1: expected a finite value > 0, got {sigma1}")
        self.dim = int(dim)
        self.b = b
        self.sigma1 = sigma1
        self._shift = b * sigma1**2
        self._log_norm = -0.5 * self.dim * np.log(2 * np.pi) - np.log(sigma1)
        self.mean = np.zeros(self.dim)
        self.cov = np.eye(self.dim)
        self.cov[0, 0] = sigma1**2
        self.cov[1, 1] = 1.0 + 2.0 * b**2 * sigma1**4
        if self.dim == 2:
            self.bounds = np.array(
                [[-4 * sigma1, 4 * sigma1], [-15 * self._shift - 4.0, self._shift + 4.0]]
            )

    def _y2(self, xp: Any, x: Any) -> Any:
        x1 = x[:, 0]
        return x[:, 1] + self._const(xp, x, "b", self.b) * x1 * x1 - self._const(xp, x, "shift", self._shift)

    def _log_prob(self, xp: Any, x: Any) -> Any:
        x1 = x[:, 0]
        y2 = self._y2(xp, x)
        out = self._const(xp, x, "lognorm", self._log_norm) - 0.5 * (
            x1 * x1 * self._const(xp, x, "inv_s1sq", 1.0 / self.sigma1**2) + y2 * y2
        )
        if self.dim > 2:
            rest = x[:, 2:]
            out = out - 0.5 * xp.sum(rest * rest, axis=1)
        return out

    def _score(self, xp: Any, x: Any) -> Any:
        x1 = x[:, 0]
        y2 = self._y2(xp, x)
        s1 = -x1 * self._const(xp, x, "inv_s1sq", 1.0 / self.sigma1**2) - self._const(
            xp, x, "two_b", 2.0 * self.b
        ) * x1 * y2
        head = xp.stack([s1, -y2], axis=1)
        if self.dim == 2:
            return head
        return xp.concat([head, -x[:, 2:]], axis=1)

    def _sample_numpy(self, rng: np.random.Generator, n: int) -> np.ndarray:
        y = rng.standard_normal((n, self.dim))
        y[:, 0] *= self.sigma1
        x = y.copy()
        x[:, 1] = y[:, 1] - self.b * y[:, 0] ** 2 + self._shift
        return x
