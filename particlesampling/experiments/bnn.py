"""Bayesian neural network for regression, batched over particles (Liu & Wang 2016, Sec. 5.2).

Model (the original SVGD code, ``bayesian_nn.py``; Hernández-Lobato & Adams 2015)::

    f(x) = relu(x W1 + b1) w2 + b2                      one hidden layer of H units
    y | x ~ N(f(x), 1/γ)                                 noise precision γ
    W1, b1, w2, b2 ~ N(0, 1/λ) i.i.d.                    weight precision λ
    γ ~ Gamma(a0, rate b0),  λ ~ Gamma(a0, rate b0)      a0 = 1, b0 = 0.1

A particle is the flat vector ``θ = (vec W1 (row-major, p x H), b1, w2, b2, log γ, log λ)`` of
dimension ``D = p H + 2 H + 3``; the densities of log γ and log λ include the Jacobian ``+ log γ``.
The minibatch log posterior scales the log likelihood of ``B`` rows by ``N / B``::

    log p(θ) = (N/B) Σ_b [½ log γ - ½ log 2π - (γ/2) r_b²]
               + (a0 - 1) log γ - b0 γ + log γ
               + ½ P (log λ - log 2π) - (λ/2) |w|² + (a0 - 1) log λ - b0 λ + log λ,

with ``r_b = f(x_b) - y_b`` and ``P = D - 2`` network weights. :meth:`BNNRegression.score` returns its
gradient for all ``M`` particles at once, in closed form (back-propagation written out with batched
matrix products: three ``bmm``-sized products and a handful of elementwise operations), and
:meth:`BNNRegression.log_posterior` the value (used by the tests to check the score with autograd).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["BNNParams", "BNNRegression", "standardize_fit"]


class BNNParams(NamedTuple):
    """Views of a particle matrix ``theta`` of shape ``(M, D)``."""

    w1: torch.Tensor  # (M, p, H)
    b1: torch.Tensor  # (M, H)
    w2: torch.Tensor  # (M, H)
    b2: torch.Tensor  # (M,)
    log_gamma: torch.Tensor  # (M,)
    log_lambda: torch.Tensor  # (M,)


def standardize_fit(X: np.ndarray, y: np.ndarray):
    """Means and standard deviations of the original code (``np.std``, ddof 0; zero std -> 1)."""
    mx, sx = X.mean(0), X.std(0)
    sx = np.where(sx == 0, 1.0, sx)
    return mx, sx, float(np.mean(y)), float(np.std(y))


class BNNRegression:
    """One-hidden-layer ReLU regression network with Gamma priors on its two precisions.

    Parameters
    ----------
    n_features : int
        Input dimension ``p``.
    n_hidden : int
        Hidden units ``H`` (50 in Liu & Wang 2016 for the small UCI sets).
    a0, b0 : float
        Shape and rate of the Gamma priors on γ and λ (1 and 0.1).
    """

    def __init__(self, n_features: int, n_hidden: int = 50, a0: float = 1.0, b0: float = 0.1):
        for name, v in (("n_features", n_features), ("n_hidden", n_hidden)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"expected {name} to be a positive int, received {v!r}")
        if not (a0 > 0 and b0 > 0):
            raise ValueError(f"expected a0 > 0 and b0 > 0, received a0={a0!r}, b0={b0!r}")
        self.p = int(n_features)
        self.H = int(n_hidden)
        self.a0 = float(a0)
        self.b0 = float(b0)
        self.dim = self.p * self.H + 2 * self.H + 3
        self.num_weights = self.dim - 2

    # ------------------------------------------------------------------ packing
    def unpack(self, theta: torch.Tensor) -> BNNParams:
        """Split ``theta`` ``(M, D)`` into views (no copies)."""
        if theta.ndim != 2 or theta.shape[1] != self.dim:
            raise ValueError(f"expected particles of shape (M, {self.dim}), received {tuple(theta.shape)}")
        p, H = self.p, self.H
        M = theta.shape[0]
        i = 0
        w1 = theta[:, i : i + p * H].reshape(M, p, H)
        i += p * H
        b1 = theta[:, i : i + H]
        i += H
        w2 = theta[:, i : i + H]
        i += H
        return BNNParams(w1, b1, w2, theta[:, i], theta[:, i + 1], theta[:, i + 2])

    def pack(self, w1, b1, w2, b2, log_gamma, log_lambda) -> torch.Tensor:
        """Inverse of :meth:`unpack`."""
        M = w1.shape[0]
        return torch.cat(
            [w1.reshape(M, -1), b1, w2, b2.reshape(M, 1), log_gamma.reshape(M, 1), log_lambda.reshape(M, 1)],
            dim=1,
        )

    # ------------------------------------------------------------------ model
    def predict(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """Network outputs ``(M, n)`` of every particle at inputs ``X`` ``(n, p)``."""
        w1, b1, w2, b2, _, _ = self.unpack(theta)
        hid = torch.relu(torch.matmul(X, w1) + b1[:, None, :])  # (M, n, H)
        return torch.matmul(hid, w2[:, :, None])[..., 0] + b2[:, None]

    def log_posterior(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, N: int) -> torch.Tensor:
        """Minibatch estimate of the unnormalised log posterior of each particle, ``(M,)``."""
        w1, b1, w2, b2, lg, ll = self.unpack(theta)
        B = X.shape[0]
        r = self.predict(theta, X) - y
        gam, lam = torch.exp(lg), torch.exp(ll)
        log2pi = math.log(2 * math.pi)
        loglik = 0.5 * B * (lg - log2pi) - 0.5 * gam * (r * r).sum(1)
        sq = (w1 * w1).sum((1, 2)) + (b1 * b1).sum(1) + (w2 * w2).sum(1) + b2 * b2
        a0, b0 = self.a0, self.b0
        prior_g = (a0 - 1) * lg - b0 * gam + lg
        prior_w = 0.5 * self.num_weights * (ll - log2pi) - 0.5 * lam * sq + (a0 - 1) * ll - b0 * lam + ll
        return loglik * (N / B) + prior_g + prior_w

    def score(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, N: int) -> torch.Tensor:
        """Gradient of :meth:`log_posterior` with respect to ``theta``, ``(M, D)``, in closed form.

        Back-propagation written out over all ``M`` networks at once: two batched products forward,
        two backward, ReLU backward as one fused kernel; the prior terms in place.
        """
        w1, b1, w2, b2, lg, ll = self.unpack(theta)
        M, B = theta.shape[0], X.shape[0]
        scale = N / B
        pre = torch.baddbmm(b1[:, None, :], X.expand(M, -1, -1), w1)  # (M, B, H)
        hid = torch.relu(pre)
        f = torch.baddbmm(b2[:, None, None], hid, w2[:, :, None])[..., 0]  # (M, B)
        r = f - y
        gam, lam = torch.exp(lg), torch.exp(ll)
        g = r * (-scale * gam)[:, None]  # d log p / d f, (M, B)
        dw2 = torch.bmm(g[:, None, :], hid)[:, 0, :]  # (M, H)
        db2 = g.sum(1)
        dpre = torch.ops.aten.threshold_backward(g[:, :, None] * w2[:, None, :], hid, 0)  # (M, B, H)
        dw1 = torch.bmm(X.T.expand(M, -1, -1), dpre)  # (M, p, H)
        db1 = dpre.sum(1)
        out = torch.cat([dw1.reshape(M, -1), db1, dw2, db2[:, None], torch.zeros_like(theta[:, :2])], 1)
        weights = theta[:, : self.num_weights]
        out[:, : self.num_weights].sub_(lam[:, None] * weights)  # Gaussian prior on the weights
        sq = (weights * weights).sum(1)
        out[:, -2] = 0.5 * N - 0.5 * scale * gam * (r * r).sum(1) + self.a0 - self.b0 * gam
        out[:, -1] = 0.5 * self.num_weights - 0.5 * lam * sq + self.a0 - self.b0 * lam
        return out

    # ------------------------------------------------------------------ initialisation
    def init_particles(
        self,
        M: int,
        X: torch.Tensor,
        y: torch.Tensor,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> torch.Tensor:
        """Initial particles as in the original code, ``(M, D)``.

        Per particle: ``W1 ~ N(0, 1/(p+1))``, ``w2 ~ N(0, 1/(H+1))``, biases 0, ``λ ~ numpy
        gamma(shape=a0, scale=b0)`` (mean 0.1 although the prior has rate b0), and
        ``log γ = -log mean((f(x) - y)^2)`` of the initial network on up to 1,000 training rows drawn
        without replacement. ``X``, ``y`` are the standardised training data.
        """
        rng = np.random.RandomState(seed)
        p, H = self.p, self.H
        n = X.shape[0]
        rows = []
        for _ in range(M):
            w1 = rng.randn(p, H) / np.sqrt(p + 1)
            b1 = np.zeros(H)
            w2 = rng.randn(H) / np.sqrt(H + 1)
            b2 = 0.0
            _lg = np.log(rng.gamma(self.a0, self.b0))  # drawn then replaced, as in the original
            ll = np.log(rng.gamma(self.a0, self.b0))
            ridx = rng.choice(n, min(n, 1000), replace=False)
            Xr = X[torch.as_tensor(ridx)].to(torch.float64).numpy()
            yr = y[torch.as_tensor(ridx)].to(torch.float64).numpy()
            yhat = np.maximum(Xr @ w1 + b1, 0) @ w2 + b2
            lg = -np.log(np.mean((yhat - yr) ** 2))
            rows.append(np.concatenate([w1.ravel(), b1, w2, [b2, lg, ll]]))
        return torch.as_tensor(np.stack(rows), dtype=dtype)
