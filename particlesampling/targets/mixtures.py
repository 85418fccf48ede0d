"""Gaussian mixture targets ``p(x) = Σ_k w_k N(x; μ_k, Σ_k)``.

With ``ℓ_k(x) = log w_k + log N(x; μ_k, Σ_k)`` and responsibilities
``r_k(x) = exp(ℓ_k(x) - logsumexp_j ℓ_j(x))``:

* ``log p(x) = logsumexp_k ℓ_k(x)`` (normalised; max-shifted for stability),
* ``∇ log p(x) = -Σ_k r_k(x) Σ_k⁻¹ (x - μ_k)``.

Both are vectorised over the n particles as one batched ``(K, n, d) @ (K, d, d)`` product.
Known answers: ``mean = Σ_k w_k μ_k``, ``cov = Σ_k w_k (Σ_k + μ_k μ_kᵀ) - mean meanᵀ`` and the
mode weights ``w``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._backend import namespace
from .base import MixtureMixin, Target
from .gaussian import check_mean_cov

__all__ = ["GaussianMixture", "Mixture1D", "Mixture2D"]


class GaussianMixture(MixtureMixin, Target):
    """Mixture of K Gaussians with full covariances (normalised ``log_prob``).

    Parameters
    ----------
    weights : array-like of shape (K,)
        Positive; normalised to sum to one.
    means : array-like of shape (K, d)
    covs : array-like of shape (K, d, d)
        Each symmetric positive definite.
    init_mean, init_std : float or array-like, optional
        Initial particles are ``N(init_mean, init_std² I)`` (default ``N(0, I)``).

    Notes
    -----
    ``bounds`` (for d <= 2): the union over components of mean ± 4.5 marginal standard
    deviations.  Exact sampling: a component index from ``weights``, then a Gaussian draw.
    """

    name = "gaussian-mixture"
    description = "Gaussian mixture with full covariances (any weights, means, covs)"
    normalised = True

    def __init__(
        self, weights: Any, means: Any, covs: Any, *, init_mean: Any = 0.0, init_std: Any = 1.0
    ) -> None:
        w = np.asarray(weights, dtype=np.float64)
        mu = np.asarray(means, dtype=np.float64)
        if w.ndim != 1 or w.shape[0] < 1:
            raise ValueError(f"weights: expected a 1-D array of shape (K,), got shape {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise ValueError(f"weights: expected positive finite values, got {w}")
        k = w.shape[0]
        if mu.ndim != 2 or mu.shape[0] != k:
            raise ValueError(f"means: expected shape ({k}, d) to match weights, got {mu.shape}")
        cv = np.asarray(covs, dtype=np.float64)
        d = mu.shape[1]
        if cv.shape != (k, d, d):
            raise ValueError(f"covs: expected shape ({k}, {d}, {d}), got {cv.shape}")
        checked = [check_mean_cov(mu[j], cv[j]) for j in range(k)]
        self.dim = d
        self.mode_weights = w / np.sum(w)
        self.means = np.stack([c[0] for c in checked])
        self.covs = np.stack([c[1] for c in checked])
        self._chols = np.stack([c[2] for c in checked])
        prec = np.linalg.inv(self.covs)
        self.precisions = 0.5 * (prec + np.swapaxes(prec, 1, 2))
        logdet = 2.0 * np.sum(np.log(np.diagonal(self._chols, axis1=1, axis2=2)), axis=1)
        # log w_k - ½ log det(2π Σ_k), shape (K, 1) to broadcast against (K, n)
        self._log_coef = (np.log(self.mode_weights) - 0.5 * (d * np.log(2 * np.pi) + logdet))[:, None]
        self.mean = self.mode_weights @ self.means
        second = np.einsum("k,kij->ij", self.mode_weights, self.covs + np.einsum("ki,kj->kij", self.means, self.means))
        self.cov = second - np.outer(self.mean, self.mean)
        self._init_mean = np.broadcast_to(np.asarray(init_mean, dtype=np.float64), (d,)).copy()
        self._init_std = np.broadcast_to(np.asarray(init_std, dtype=np.float64), (d,)).copy()
        if np.any(self._init_std <= 0):
            raise ValueError(f"init_std: expected positive values, got {init_std}")
        if d <= 2:
            sd = np.sqrt(np.diagonal(self.covs, axis1=1, axis2=2))
            self.bounds = np.stack(
                [np.min(self.means - 4.5 * sd, axis=0), np.max(self.means + 4.5 * sd, axis=0)], axis=1
            )

    # ---------------------------------------------------------------- array-API evaluation
    def _component_terms(self, xp: Any, x: Any) -> tuple[Any, Any]:
        """Return ``ℓ`` of shape (K, n) and ``Σ_k⁻¹ (x - μ_k)`` of shape (K, n, d)."""
        mu = self._const(xp, x, "means", self.means[:, None, :])  # (K, 1, d)
        diff = xp.expand_dims(x, axis=0) - mu  # (K, n, d)
        pdiff = diff @ self._const(xp, x, "prec", self.precisions)  # (K, n, d)
        quad = xp.sum(pdiff * diff, axis=2)  # (K, n)
        return self._const(xp, x, "logcoef", self._log_coef) - 0.5 * quad, pdiff

    @staticmethod
    def _logsumexp0(xp: Any, ell: Any) -> Any:
        m = xp.max(ell, axis=0)
        return m + xp.log(xp.sum(xp.exp(ell - m), axis=0))

    def _log_prob(self, xp: Any, x: Any) -> Any:
        ell, _ = self._component_terms(xp, x)
        return self._logsumexp0(xp, ell)

    def _score(self, xp: Any, x: Any) -> Any:
        ell, pdiff = self._component_terms(xp, x)
        resp = xp.exp(ell - self._logsumexp0(xp, ell))  # (K, n)
        return -xp.sum(xp.expand_dims(resp, axis=2) * pdiff, axis=0)

    # ---------------------------------------------------------------- NumPy helpers
    def _responsibilities_numpy(self, x: np.ndarray) -> np.ndarray:
        ell, _ = self._component_terms(namespace(x), x)
        ell = ell - np.max(ell, axis=0)
        r = np.exp(ell)
        return (r / np.sum(r, axis=0)).T

    def _initial_numpy(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self._init_mean + self._init_std * rng.standard_normal((n, self.dim))

    def _sample_numpy(self, rng: np.random.Generator, n: int) -> np.ndarray:
        comp = rng.choice(self.mode_weights.shape[0], size=n, p=self.mode_weights)
        z = rng.standard_normal((n, self.dim))
        return self.means[comp] + np.einsum("nij,nj->ni", self._chols[comp], z)


class Mixture1D(GaussianMixture):
    """``1/3 N(-2, 1) + 2/3 N(2, 1)`` in 1-D, initial particles ``N(-10, 1)``.

    The toy example of Liu & Wang (NeurIPS 2016, Fig. 1): all particles start far to the left
    of both modes, and a correct sampler must still put 1/3 of them in the left mode.
    Known answers: mean 2/3, variance 1 + 4 - 4/9 = 41/9, mode weights (1/3, 2/3).
    """

    name = "mixture1d"
    description = "1/3 N(-2,1) + 2/3 N(2,1), particles start at N(-10,1) (Liu & Wang 2016, Fig. 1)"

    def __init__(self) -> None:
        super().__init__(
            weights=[1.0 / 3.0, 2.0 / 3.0],
            means=[[-2.0], [2.0]],
            covs=[[[1.0]], [[1.0]]],
            init_mean=-10.0,
            init_std=1.0,
        )


def _mixture2d_components() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Five elongated components on a pentagon of radius 4 with unequal weights."""
    weights = np.array([0.30, 0.25, 0.20, 0.15, 0.10])
    angles = np.pi / 2 + 2 * np.pi * np.arange(5) / 5
    means = 4.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    covs = []
    for a in angles:  # long axis (sd 0.8) radial, short axis (sd 0.4) tangential
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        covs.append(rot @ np.diag([0.8**2, 0.4**2]) @ rot.T)
    return weights, means, np.stack(covs)


class Mixture2D(GaussianMixture):
    """Five-component 2-D Gaussian mixture with unequal weights.

    Component k (k = 0..4) has weight ``(0.30, 0.25, 0.20, 0.15, 0.10)[k]``, mean
    ``4 (cos θ_k, sin θ_k)`` with ``θ_k = π/2 + 2πk/5`` (a pentagon, neighbours 4.7 apart) and
    covariance with standard deviation 0.8 along the radius and 0.4 across it.  The modes are
    separated by more than 5 standard deviations, so a sampler that mixes between them must rely
    on its repulsion/noise and the mode weights are a sharp diagnostic.  Initial particles
    ``N(0, I)`` (the empty centre).  Mean, covariance and mode weights are exact.
    """

    name = "mixture2d"
    description = "2-D mixture of 5 elongated Gaussians on a pentagon, weights .30/.25/.20/.15/.10"

    def __init__(self) -> None:
        weights, means, covs = _mixture2d_components()
        super().__init__(weights=weights, means=means, covs=covs)
