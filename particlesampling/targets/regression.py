"""Bayesian regression posteriors on real data with known (or reference) answers.

``blinreg-diabetes``: Bayesian linear regression, conjugate prior, analytic Gaussian posterior.
``blr-breast-cancer``: Bayesian logistic regression, reference moments from a long HMC run
(``scripts/make_blr_reference.py``, stored in ``particlesampling/data``).

Particles are weight vectors ``w`` (rows of an ``(m, d)`` array); the design matrix ``X`` is
``(N, d)`` with an intercept column first.  Likelihood terms are vectorised over the m particles as
``(m, d) @ (d, N)`` and ``(m, N) @ (N, d)`` matrix products.
"""

from __future__ import annotations

import importlib.resources
import json
import math
from typing import Any

import numpy as np

from .._backend import device_of, is_array, is_numpy_array, namespace, to_numpy
from .base import Target
from .datasets import load_breast_cancer_design, load_diabetes_design

__all__ = ["BayesianLinearRegression", "BayesianLogisticRegression", "log_sigmoid", "sigmoid"]

REFERENCE_FILE = "blr_breast_cancer_reference.npz"


def log_sigmoid(xp: Any, z: Any) -> Any:
    """Numerically stable ``log σ(z) = min(z, 0) - log1p(exp(-|z|))`` (never overflows)."""
    return xp.minimum(z, xp.zeros_like(z)) - xp.log1p(xp.exp(-xp.abs(z)))


def sigmoid(xp: Any, z: Any) -> Any:
    """Numerically stable logistic function ``σ(z) = 1 / (1 + exp(-z))``."""
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


class BayesianLinearRegression(Target):
    """Bayesian linear regression on scikit-learn's diabetes data (d = 11).

    Model: ``y = X w + ε``, ``ε ~ N(0, σ² I)`` with σ² KNOWN, prior ``w ~ N(0, α⁻¹ I)``.
    ``X`` (442 x 11) is the intercept plus the 10 raw features z-scored; ``y`` is the disease
    progression z-scored (so all coefficients are on a unit scale).  The noise variance is fixed
    to the unbiased OLS estimate ``σ² = |y - X ŵ_OLS|² / (N - d)`` and then held fixed (an
    empirical-Bayes plug-in; it makes the posterior exactly Gaussian).

    Posterior (Bishop 2006, eq. 3.53-3.54): precision ``A = XᵀX/σ² + α I``, ``cov = A⁻¹``,
    ``mean = cov Xᵀ y / σ²``.

    ``log_prob(w) = log N(y; X w, σ² I) + log N(w; 0, α⁻¹ I)`` is the log joint density
    (unnormalised in ``w``: subtract ``log_evidence`` to normalise), and
    ``score(w) = Xᵀ (y - X w)/σ² - α w``.

    Parameters
    ----------
    alpha : float
        Prior precision α (default 1: a unit-variance prior on standardised coefficients).
    noise_variance : float, optional
        σ²; the OLS estimate if omitted.

    Notes
    -----
    Initial particles: prior draws ``N(0, α⁻¹ I)``.  Exact samples: ``N(mean, cov)``.
    """

    name = "blinreg-diabetes"
    description = "Bayesian linear regression, sklearn diabetes (442x10 + intercept), exact Gaussian posterior"
    normalised = False

    def __init__(self, alpha: float = 1.0, noise_variance: float | None = None) -> None:
        alpha = float(alpha)
        if not np.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"alpha: expected a finite prior precision > 0, got {alpha}")
        data = load_diabetes_design()
        x, y = data["X"], data["y"]
        self.X, self.y = x, y
        self.x_mean, self.x_std = data["x_mean"], data["x_std"]
        self.y_mean, self.y_std = data["y_mean"], data["y_std"]
        self.feature_names = data["feature_names"]
        n, d = x.shape
        self.dim = d
        if noise_variance is None:
            w_ols = np.linalg.solve(x.T @ x, x.T @ y)
            noise_variance = float(np.sum((y - x @ w_ols) ** 2) / (n - d))
        noise_variance = float(noise_variance)
        if not np.isfinite(noise_variance) or noise_variance <= 0:
            raise ValueError(f"noise_variance: expected a finite value > 0, got {noise_variance}")
        self.alpha = alpha
        self.noise_variance = noise_variance
        prec = x.T @ x / noise_variance + alpha * np.eye(d)
        chol = np.linalg.cholesky(prec)
        self.precision = prec
        self.cov = np.linalg.inv(prec)
        self.cov = 0.5 * (self.cov + self.cov.T)
        self.mean = np.linalg.solve(prec, x.T @ y / noise_variance)
        self._cov_chol = np.linalg.cholesky(self.cov)
        self._const_term = -0.5 * n * math.log(2 * math.pi * noise_variance) + 0.5 * d * math.log(
            alpha / (2 * math.pi)
        )
        # log p(y) = log p(y, mean) - log N(mean; mean, cov) = log p(y, mean) + ½ log det(2π cov)
        logdet_cov = -2.0 * np.sum(np.log(np.diag(chol)))
        self.log_evidence = float(
            self.log_prob(self.mean[None, :])[0] + 0.5 * (d * math.log(2 * math.pi) + logdet_cov)
        )

    def _residuals(self, xp: Any, w: Any) -> Any:
        return self._const(xp, w, "y", self.y[None, :]) - w @ self._const(xp, w, "Xt", self.X.T)

    def _log_prob(self, xp: Any, w: Any) -> Any:
        r = self._residuals(xp, w)
        return (
            self._const(xp, w, "c", self._const_term)
            - self._const(xp, w, "half_inv_s2", 0.5 / self.noise_variance) * xp.sum(r * r, axis=1)
            - self._const(xp, w, "half_alpha", 0.5 * self.alpha) * xp.sum(w * w, axis=1)
        )

    def _score(self, xp: Any, w: Any) -> Any:
        r = self._residuals(xp, w)
        return (r @ self._const(xp, w, "X", self.X)) * self._const(
            xp, w, "inv_s2", 1.0 / self.noise_variance
        ) - self._const(xp, w, "alpha", self.alpha) * w

    def _initial_numpy(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.standard_normal((n, self.dim)) / math.sqrt(self.alpha)

    def _sample_numpy(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.mean + rng.standard_normal((n, self.dim)) @ self._cov_chol.T


def load_blr_reference() -> dict[str, Any]:
    """Load the stored HMC reference of ``blr-breast-cancer`` (see the script that made it).

    Returns
    -------
    dict
        NumPy arrays ``mean``, ``cov`` (d, d), ``map`` (the MAP), ``mcse_mean``, ``mcse_var``
        (Monte-Carlo standard errors of the mean and of the variances), ``ess_mean``, ``ess_sq``
        (effective sample sizes of each coordinate and of its centred square), ``rhat``,
        ``rhat_sq`` (split-R̂), ``train_index``, ``test_index``, ``reference_samples``
        (dequantised, float64, (2000, d)) and ``settings`` (dict of the run's settings).
    """
    res = importlib.resources.files("particlesampling").joinpath("data", REFERENCE_FILE)
    with res.open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
        raw = {k: npz[k] for k in npz.files}
    out = {k: v for k, v in raw.items() if k not in ("settings_json", "samples_hi", "samples_lo", "samples_scale")}
    out["settings"] = json.loads(str(raw["settings_json"]))
    chol = np.linalg.cholesky(raw["cov"])
    q = raw["samples_hi"].astype(np.int64) * 256 + raw["samples_lo"].astype(np.int64)
    z = q.astype(np.float64) * float(raw["samples_scale"])
    out["reference_samples"] = raw["mean"] + z @ chol.T
    return out


class BayesianLogisticRegression(Target):
    """Bayesian logistic regression on scikit-learn's breast-cancer data (d = 31).

    Model: ``y_i ~ Bernoulli(σ(x_iᵀ w))``, prior ``w ~ N(0, σ₀² I)`` with ``σ₀ = 1``.
    ``x_i`` is the intercept plus the 30 features z-scored with the mean and std of the train
    part.  Split: fixed, seeded, stratified 80/20 (456 train / 113 test rows;
    :func:`~particlesampling.targets.datasets.stratified_split` with seed 0); the row indices are
    stored with the reference so the two can never disagree.  σ₀ = 1 keeps the posterior proper and
    well conditioned even though the classes are nearly separable (with a flat prior the
    posterior would be very wide along separating directions).

    ``log_prob(w) = Σ_i log σ(t_i x_iᵀ w) + log N(w; 0, σ₀² I)`` (``t_i = 2 y_i - 1``) is the log
    joint density (unnormalised in ``w``); ``score(w) = Xᵀ (y - σ(X w)) - w/σ₀²``.

    Reference answers (``mean``, ``cov``, ``reference_samples``, ``mcse_mean``, ``mcse_var``,
    ``ess``, ``rhat``, ``map``, ``reference_settings``) come from the long HMC run of
    ``scripts/make_blr_reference.py`` (8 chains x 20000 draws); ``mcse_mean`` is the
    Monte-Carlo standard error of ``mean``, ``mcse_var`` that of ``diag(cov)``.
    ``reference_samples`` (2000 thinned draws, for MMD/energy distances) are stored quantised
    in whitened coordinates to a step of ``2⁻⁸`` posterior standard deviations (rounding error
    ≤ 0.002 sd, far below their Monte-Carlo error).

    Notes
    -----
    Initial particles: prior draws ``N(0, σ₀² I)``.  No exact sampler.
    """

    name = "blr-breast-cancer"
    description = "Bayesian logistic regression, sklearn breast_cancer (456 train x 30 + intercept), HMC reference"
    normalised = False
    prior_std = 1.0

    def __init__(self) -> None:
        ref = load_blr_reference()
        data = load_breast_cancer_design(ref["train_index"], ref["test_index"])
        settings = ref["settings"]
        if not math.isclose(data["checksum"], settings["data_checksum"], rel_tol=1e-9):
            raise RuntimeError(
                "blr-breast-cancer: scikit-learn's breast_cancer data differ from the data the "
                f"reference was made with (checksum {data['checksum']!r} vs "
                f"{settings['data_checksum']!r}); rerun scripts/make_blr_reference.py"
            )
        if settings["prior_std"] != self.prior_std:
            raise RuntimeError("blr-breast-cancer: reference was made with a different prior_std")
        self.X_train, self.y_train = data["X_train"], data["y_train"]
        self.X_test, self.y_test = data["X_test"], data["y_test"]
        self.x_mean, self.x_std = data["x_mean"], data["x_std"]
        self.feature_names = data["feature_names"]
        self.train_index, self.test_index = ref["train_index"], ref["test_index"]
        self.dim = self.X_train.shape[1]
        self.mean = ref["mean"]
        self.cov = ref["cov"]
        self.mcse_mean = ref["mcse_mean"]
        self.mcse_var = ref["mcse_var"]
        self.ess = ref["ess_mean"]
        self.rhat = ref["rhat"]
        self.map = ref["map"]
        self.reference_samples = ref["reference_samples"]
        self.reference_settings = settings
        self._signs = 2.0 * self.y_train - 1.0
        self._log_prior_const = -0.5 * self.dim * math.log(2 * math.pi * self.prior_std**2)

    def _log_prob(self, xp: Any, w: Any) -> Any:
        z = w @ self._const(xp, w, "Xt", self.X_train.T)  # (m, N)
        loglik = xp.sum(log_sigmoid(xp, z * self._const(xp, w, "t", self._signs[None, :])), axis=1)
        return (
            loglik
            - self._const(xp, w, "half_prec", 0.5 / self.prior_std**2) * xp.sum(w * w, axis=1)
            + self._const(xp, w, "c", self._log_prior_const)
        )

    def _score(self, xp: Any, w: Any) -> Any:
        z = w @ self._const(xp, w, "Xt", self.X_train.T)  # (m, N)
        resid = self._const(xp, w, "y", self.y_train[None, :]) - sigmoid(xp, z)
        return resid @ self._const(xp, w, "X", self.X_train) - w * self._const(
            xp, w, "inv_prior_var", 1.0 / self.prior_std**2
        )

    def _initial_numpy(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.prior_std * rng.standard_normal((n, self.dim))

    def predictive(self, particles: Any, X: Any = None) -> Any:
        """Posterior predictive probability of class 1 (benign), averaged over the particles.

        ``p(y = 1 | x) ≈ (1/m) Σ_j σ(xᵀ w_j)``.

        Parameters
        ----------
        particles : array of shape (m, d)
            Weight vectors; any namespace, float32 or float64.
        X : array of shape (N, d), optional
            Design rows in the target's format (intercept column first, standardised like
            ``X_train``); NumPy or the particles' namespace.  Default ``X_test``.

        Returns
        -------
        array of shape (N,)
            In the particles' namespace, dtype and device.
        """
        xp = self._check(particles)
        x = self.X_test if X is None else X
        if is_numpy_array(x) or not is_array(x):
            x = np.asarray(x, dtype=np.float64)
            if x.ndim != 2 or x.shape[1] != self.dim:
                raise ValueError(f"X: expected shape (N, {self.dim}), got {x.shape}")
            x = xp.asarray(x, dtype=particles.dtype, device=device_of(particles))
        else:
            if namespace(x) is not xp:
                raise TypeError("X: expected a NumPy array or an array of the particles' namespace")
            if x.ndim != 2 or x.shape[1] != self.dim:
                raise ValueError(f"X: expected shape (N, {self.dim}), got {tuple(x.shape)}")
            x = xp.astype(x, particles.dtype)
        if particles.shape[0] == 0:
            raise ValueError("particles: expected at least one particle, got 0")
        return xp.mean(sigmoid(xp, particles @ xp.matrix_transpose(x)), axis=0)

    def test_metrics(self, particles: Any) -> dict[str, float]:
        """Test accuracy and mean test log predictive density of the particle mixture.

        Parameters
        ----------
        particles : array of shape (m, d)

        Returns
        -------
        dict
            ``accuracy`` (fraction of test rows where the predictive probability is on the right
            side of 1/2) and ``log_likelihood`` (``(1/N) Σ_i log p(y_i | x_i)``), Python floats.
        """
        p = np.asarray(to_numpy(self.predictive(particles)), dtype=np.float64)
        y = self.y_test
        tiny = np.finfo(np.float64).tiny
        ll = np.where(y == 1, np.log(np.maximum(p, tiny)), np.log(np.maximum(1.0 - p, tiny)))
        return {"accuracy": float(np.mean((p > 0.5) == (y == 1))), "log_likelihood": float(np.mean(ll))}
