"""Multivariate Gaussian targets N(μ, Σ).

``log p(x) = -½ (x - μ)ᵀ Σ⁻¹ (x - μ) - ½ log det(2π Σ)`` (normalised);
``∇ log p(x) = -Σ⁻¹ (x - μ)``.  Vectorised over the n particles as one ``(n, d) @ (d, d)``
matrix product.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import validation
from .base import Target

__all__ = ["Gaussian", "StandardNormal", "check_mean_cov"]

#: Default mean and covariance of the ``"gaussian"`` target: correlation 0.9/sqrt(2) ≈ 0.64,
#: unequal variances, mean away from the origin (where the initial particles are drawn).
DEFAULT_MEAN = (1.0, -1.0)
DEFAULT_COV = ((1.0, 0.9), (0.9, 2.0))


def check_mean_cov(mean: Any, cov: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate a mean vector and an SPD covariance matrix.

    Parameters
    ----------
    mean : array-like of shape (d,)
    cov : array-like of shape (d, d)
        Symmetric positive definite.

    Returns
    -------
    mean, cov, chol : numpy.ndarray
        float64 copies and the lower Cholesky factor of ``cov``.
    """
    mean = np.array(mean, dtype=np.float64, copy=True)
    cov = np.array(cov, dtype=np.float64, copy=True)
    if mean.ndim != 1 or mean.shape[0] < 1:
        raise ValueError(f"mean: expected a 1-D array of shape (d,), got shape {mean.shape}")
    d = mean.shape[0]
    if cov.shape != (d, d):
        raise ValueError(f"cov: expected shape ({d}, {d}) to match mean, got {cov.shape}")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))):
        raise ValueError("mean, cov: expected finite values, got NaN or inf")
    if not np.allclose(cov, cov.T, rtol=1e-10, atol=1e-12 * np.max(np.abs(cov))):
        raise ValueError("cov: expected a symmetric matrix, got an asymmetric one")
    cov = 0.5 * (cov + cov.T)
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        eig = np.linalg.eigvalsh(cov)
        raise ValueError(
            f"cov: expected a positive definite matrix, got smallest eigenvalue {eig[0]:.3g}"
        ) from None
    return mean, cov, chol


class Gaussian(Target):
    """Gaussian target ``N(mean, cov)`` in any dimension (normalised ``log_prob``).

    Parameters
    ----------
    mean : array-like of shape (d,), optional
        Default ``(1, -1)``.
    cov : array-like of shape (d, d), optional
        Symmetric positive definite.  Default ``[[1, 0.9], [0.9, 2]]`` (correlation ≈ 0.64).
        If only ``mean`` is given, the identity.

    Notes
    -----
    Initial particles: ``N(0, I_d)``.  ``bounds`` (for d <= 2): mean ± 4.5 marginal standard
    deviations.  Exact sampling: ``mean + L z`` with ``L`` the Cholesky factor of ``cov``.
    """

    name = "gaussian"
    description = "correlated 2-D Gaussian N((1,-1), [[1,.9],[.9,2]]) (any mean/cov accepted)"
    normalised = True

    def __init__(self, mean: Any = None, cov: Any = None) -> None:
        if mean is None and cov is None:
            mean, cov = DEFAULT_MEAN, DEFAULT_COV
        elif cov is None:
            cov = np.eye(np.asarray(mean).reshape(-1).shape[0])
        elif mean is None:
            mean = np.zeros(np.asarray(cov).shape[0])
        self.mean, self.cov, self._chol = check_mean_cov(mean, cov)
        self.dim = self.mean.shape[0]
        self.precision = np.linalg.inv(self.cov)
        self.precision = 0.5 * (self.precision + self.precision.T)
        self._log_norm = -0.5 * self.dim * np.log(2.0 * np.pi) - np.sum(np.log(np.diag(self._chol)))
        if self.dim <= 2:
            sd = np.sqrt(np.diag(self.cov))
            self.bounds = np.stack([self.mean - 4.5 * sd, self.mean + 4.5 * sd], axis=1)

    def _log_prob(self, xp: Any, x: Any) -> Any:
        diff = x - self._const(xp, x, "mean", self.mean)
        quad = xp.sum((diff @ self._const(xp, x, "prec", self.precision)) * diff, axis=1)
        return self._const(xp, x, "lognorm", self._log_norm) - 0.5 * quad

    def _score(self, xp: Any, x: Any) -> Any:
        diff = x - self._const(xp, x, "mean", self.mean)
        return -(diff @ self._const(xp, x, "prec", self.precision))

    def _sample_numpy(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.mean + rng.standard_normal((n, self.dim)) @ self._chol.T


class StandardNormal(Gaussian):
    """Standard normal ``N(0, I_d)`` (Ba et al., ICLR 2022 variance-collapse benchmark).

    Parameters
    ----------
    dim : int
        Dimension d (default 2).

    Notes
    -----
    Initial particles: ``N(0, I_d)``, i.e. exact samples, so any shrinkage of the
    dimension-averaged marginal variance below 1 is caused by the sampler.
    """

    name = "standard-normal"
    description = "standard normal N(0, I_d) (dim=2 by default; variance-collapse studies)"

    def __init__(self, dim: int = 2) -> None:
        dim = validation.check_int("dim", dim, minimum=1)
        super().__init__(np.zeros(dim), np.eye(dim))

    def _log_prob(self, xp: Any, x: Any) -> Any:
        return self._const(xp, x, "lognorm", self._log_norm) - 0.5 * xp.sum(x * x, axis=1)

    def _score(self, xp: Any, x: Any) -> Any:
        return -x
