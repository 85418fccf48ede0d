"""Ring target: ``p(x) ∝ exp(-(|x| - r)² / (2 s²))`` on ``R²``.

Normalising constant (polar coordinates, ``u = ρ - r``, ``Φ`` the standard normal CDF):
``Z = 2π J₁`` with ``J_k = ∫_0^∞ ρ^k exp(-(ρ - r)²/(2s²)) dρ``, which reduce to the truncated
Gaussian moments ``I_m = ∫_{-r}^∞ u^m exp(-u²/(2s²)) du``:

* ``I₀ = s √(2π) Φ(r/s)``, ``I₁ = s² e``, ``I₂ = s² I₀ - r s² e``, ``I₃ = (r² s² + 2 s⁴) e``,
  with ``e = exp(-r²/(2s²))``;
* ``J₁ = I₁ + r I₀`` and ``J₃ = I₃ + 3r I₂ + 3r² I₁ + r³ I₀``.

The law is rotation invariant, so ``mean = 0`` and ``cov = (E|x|²/2) I`` with
``E|x|² = J₃ / J₁`` (exact closed form; the unit tests check it against numerical quadrature).

Score: ``∇ log p(x) = -(|x| - r)/s² · x/|x|``; the density has a cone point at ``x = 0`` where the
gradient does not exist, and ``score`` returns 0 there.

Exact sampling: the angle is uniform; the radius has density ``∝ ρ exp(-(ρ - r)²/(2s²))`` on
``ρ > 0``.  With ``u = ρ - r`` it is drawn by exact rejection from the proposal
``∝ (r + |u|) exp(-u²/(2s²))`` on ``R`` (a mixture of ``N(0, s²)`` with weight ``r s √(2π)`` and
a signed Rayleigh(s) with weight ``2 s²``), accepting with probability
``1[u > -r] (r + u)/(r + |u|)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import Target

__all__ = ["Ring"]


def _ring_integrals(r: float, s: float) -> tuple[float, float]:
    """Closed-form ``J₁`` and ``J₃`` (see module docstring)."""
    e = math.exp(-(r * r) / (2 * s * s))
    i0 = s * math.sqrt(2 * math.pi) * 0.5 * (1.0 + math.erf(r / (s * math.sqrt(2.0))))
    i1 = s * s * e
    i2 = s * s * i0 - r * s * s * e
    i3 = (r * r * s * s + 2 * s**4) * e
    j1 = i1 + r * i0
    j3 = i3 + 3 * r * i2 + 3 * r * r * i1 + r**3 * i0
    return j1, j3


class Ring(Target):
    """2-D ring of radius ``r`` and radial width ``s`` (normalised ``log_prob``).

    Parameters
    ----------
    radius : float
        Ring radius ``r >= 0`` (default 2).
    width : float
        Radial standard deviation ``s > 0`` (default 0.3).

    Notes
    -----
    Initial particles: ``N(0, I₂)``.  ``bounds``: ``± (r + 5 s)`` on both axes.
    """

    name = "ring"
    description = "2-D ring exp(-(|x|-2)^2/(2*0.3^2)), exact moments and samples"
    normalised = True

    def __init__(self, radius: float = 2.0, width: float = 0.3) -> None:
        radius = float(radius)
        width = float(width)
        if not np.isfinite(radius) or radius < 0:
            raise ValueError(f"radius: expected a finite value >= 0, got {radius}")
        if not np.isfinite(width) or width <= 0:
            raise ValueError(f"width: expected a finite value > 0, got {width}")
        self.dim = 2
        self.radius = radius
        self.width = width
        j1, j3 = _ring_integrals(radius, width)
        self._log_norm = -math.log(2 * math.pi * j1)
        self.mean_sq_radius = j3 / j1
        self.mean = np.zeros(2)
        self.cov = 0.5 * self.mean_sq_radius * np.eye(2)
        edge = radius + 5.0 * width
        self.bounds = np.array([[-edge, edge], [-edge, edge]])

    def _norm(self, xp: Any, x: Any) -> Any:
        return xp.sqrt(xp.sum(x * x, axis=1))

    def _log_prob(self, xp: Any, x: Any) -> Any:
        dev = self._norm(xp, x) - self._const(xp, x, "r", self.radius)
        return self._const(xp, x, "lognorm", self._log_norm) - dev * dev * self._const(
            xp, x, "half_prec", 0.5 / self.width**2
        )

    def _score(self, xp: Any, x: Any) -> Any:
        norm = self._norm(xp, x)
        one = self._const(xp, x, "one", 1.0)
        safe = xp.where(norm > 0, norm, one)
        coef = (self._const(xp, x, "r", self.radius) - norm) / (
            safe * self._const(xp, x, "s2", self.width**2)
        )
        return xp.expand_dims(coef, axis=1) * x

    def _sample_radius(self, rng: np.random.Generator, n: int) -> np.ndarray:
        r, s = self.radius, self.width
        w_gauss = r * s * math.sqrt(2 * math.pi)
        p_gauss = w_gauss / (w_gauss + 2 * s * s)
        out = np.empty(n)
        filled = 0
        while filled < n:
            m = 2 * (n - filled) + 16
            gauss = rng.random(m) < p_gauss
            u = np.where(
                gauss,
                s * rng.standard_normal(m),
                s * np.sqrt(-2.0 * np.log1p(-rng.random(m))) * rng.choice([-1.0, 1.0], size=m),
            )
            num = np.maximum(r + u, 0.0)
            accept = rng.random(m) * (r + np.abs(u)) < num
            acc = r + u[accept]
            take = min(acc.shape[0], n - filled)
            out[filled : filled + take] = acc[:take]
            filled += take
        return out

    def _sample_numpy(self, rng: np.random.Generator, n: int) -> np.ndarray:
        rho = self._sample_radius(rng, n)
        theta = rng.uniform(0.0, 2 * np.pi, size=n)
        return np.stack([rho * np.cos(theta), rho * np.sin(theta)], axis=1)
