"""Bayesian neural network regression posterior of Liu & Wang (2016), Sec. 5.2.

Model (Hernández-Lobato & Adams 2015; the original SVGD code, ``bayesian_nn.py``)::

    f(x) = relu(x W1 + b1) w2 + b2                      one hidden layer of H units
    y | x ~ N(f(x), 1/γ)                                 noise precision γ
    W1, b1, w2, b2 ~ N(0, 1/λ) i.i.d.                    weight precision λ
    γ ~ Gamma(a0, rate b0),  λ ~ Gamma(a0, rate b0)      a0 = 1, b0 = 0.1

A particle is the flat vector ``θ = (vec W1 (row-major, p x H), b1, w2, b2, log γ, log λ)`` of
dimension ``D = p H + 2 H + 3``; the densities of log γ and log λ include the Jacobian ``+ log γ``
(``+ log λ``), and the Gamma normalising constants ``a0 log b0 - log Γ(a0)`` are dropped.  On ``B``
rows ``(x_b, y_b)`` of a data set of ``N`` rows the log posterior, with the log likelihood scaled by
``N / B`` (``B = N``: the exact full-data posterior), is::

    log p(θ) = (N/B) Σ_b [½ (log γ - log 2π) - (γ/2) r_b²]
               + (a0 - 1) log γ - b0 γ + log γ
               + ½ P (log λ - log 2π) - (λ/2) |w|² + (a0 - 1) log λ - b0 λ + log λ,

with ``r_b = f(x_b) - y_b``, ``w`` the ``P = D - 2`` network weights.  The score is its gradient in
closed form: back-propagation written out for all ``M`` particles at once with batched matrix
products, and, for the two log precisions,

    ∂/∂ log γ = ½ N - ½ (N/B) γ Σ_b r_b² + a0 - b0 γ,    ∂/∂ log λ = ½ P - ½ λ |w|² + a0 - b0 λ.

On PyTorch the batched products are ``baddbmm``/``bmm`` and the ReLU backward is
``threshold_backward`` (fused kernels, the arithmetic of the experiments this target was written
for); on every other Array-API namespace they are ``@`` with broadcasting and ``where``.

:class:`BayesianNeuralNetwork` is built from the user's arrays ``(X, y)``; :class:`BNNDiabetes`
(registry name ``bnn-diabetes``) from scikit-learn's bundled diabetes data.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .._backend import device_of, is_array, is_numpy_array, is_torch_array, namespace, namespace_of_module, to_numpy
from .base import Target, _check_count, _check_seed, _convert
from .datasets import load_diabetes_design

__all__ = ["BNNParams", "BayesianNeuralNetwork", "BNNDiabetes"]

_LOG_2PI = math.log(2 * math.pi)


class BNNParams(NamedTuple):
    """Views of a particle matrix ``theta`` of shape ``(M, D)`` (no copies)."""

    w1: Any  # (M, p, H)
    b1: Any  # (M, H)
    w2: Any  # (M, H)
    b2: Any  # (M,)
    log_gamma: Any  # (M,)
    log_lambda: Any  # (M,)


class _TorchOps:
    """The network's batched products with PyTorch's fused kernels."""

    def __init__(self) -> None:
        import torch

        self.torch = torch

    def relu(self, z):
        return self.torch.relu(z)

    def hidden_pre(self, X, w1, b1):  # (M, B, H) = X W1 + b1
        return self.torch.baddbmm(b1[:, None, :], X.expand(w1.shape[0], -1, -1), w1)

    def output(self, hid, w2, b2):  # (M, B) = hid w2 + b2
        return self.torch.baddbmm(b2[:, None, None], hid, w2[:, :, None])[..., 0]

    def row_times(self, g, hid):  # (M, H) = g hid, per particle
        return self.torch.bmm(g[:, None, :], hid)[:, 0, :]

    def relu_backward(self, grad, hid):  # grad where hid > 0, else 0
        return self.torch.ops.aten.threshold_backward(grad, hid, 0)

    def xt_times(self, X, dpre):  # (M, p, H) = Xᵀ dpre, per particle
        return self.torch.bmm(X.T.expand(dpre.shape[0], -1, -1), dpre)


class _ArrayAPIOps:
    """The same products with Array-API operations (``@`` broadcasts over the particles)."""

    def __init__(self, xp: Any) -> None:
        self.xp = xp

    def relu(self, z):
        return self.xp.maximum(z, self.xp.zeros_like(z))

    def hidden_pre(self, X, w1, b1):
        return X @ w1 + b1[:, None, :]

    def output(self, hid, w2, b2):
        return (hid @ w2[:, :, None])[..., 0] + b2[:, None]

    def row_times(self, g, hid):
        return (g[:, None, :] @ hid)[:, 0, :]

    def relu_backward(self, grad, hid):
        return self.xp.where(hid > 0, grad, self.xp.zeros_like(grad))

    def xt_times(self, X, dpre):
        return self.xp.matrix_transpose(X) @ dpre


def _ops(xp: Any, theta: Any):
    return _TorchOps() if is_torch_array(theta) else _ArrayAPIOps(xp)


def _positive_int(name: str, v: Any) -> int:
    return _check_count(v, name)


def _host_array(name: str, a: Any) -> np.ndarray:
    """User data of any namespace (or nested lists) as a NumPy float64 array."""
    if is_array(a):
        a = to_numpy(a)
    try:
        out = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected a numeric array, got {type(a).__name__} ({exc})") from None
    return out


class BayesianNeuralNetwork(Target):
    """Posterior of a one-hidden-layer ReLU regression network on the data ``(X, y)``.

    ``log_prob`` and ``score`` use all ``N`` rows (the exact posterior, up to its normalising
    constant); :meth:`log_prob_minibatch` and :meth:`score_minibatch` the ``N / B``-scaled
    estimate on ``B`` given rows, as in stochastic-gradient training.  See the module docstring
    for the model and the layout of a particle.

    Parameters
    ----------
    X : array of shape (N, p)
        Inputs (any namespace or nested lists; stored as NumPy float64).  Liu & Wang standardise
        the columns on the training rows first; this class uses ``X`` as given.
    y : array of shape (N,)
        Targets (standardised in the paper).
    n_hidden : int
        Hidden units ``H`` (50 in Liu & Wang 2016 for the UCI data sets).
    a0, b0 : float
        Shape and rate of the Gamma priors on γ and λ (1 and 0.1).

    Notes
    -----
    Initial particles (the original code's, with ``numpy.random.default_rng(seed)``; see
    :meth:`original_initial_particles` for its ``RandomState`` stream): per particle
    ``W1 ~ N(0, 1/(p+1))``, ``w2 ~ N(0, 1/(H+1))``, biases 0, ``λ ~ gamma(shape=a0,
    scale=b0)`` (mean 0.1 although the prior has rate b0) and ``log γ = -log mean((f(x) - y)²)`` of
    the initial network on up to 1,000 rows drawn without replacement.  No exact sampler, no
    reference moments.
    """

    name = "bnn-regression"
    description = "Bayesian neural network regression (Liu & Wang 2016) on user data (X, y)"
    normalised = False

    def __init__(self, X: Any, y: Any, n_hidden: int = 50, a0: float = 1.0, b0: float = 0.1) -> None:
        x = _host_array("X", X)
        t = _host_array("y", y)
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"X: expected a 2-D array of shape (N, p) with N, p >= 1, got shape {x.shape}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"y: expected shape ({x.shape[0]},) (one target per row of X), got shape {t.shape}")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(t))):
            raise ValueError("X, y: expected finite values, got NaN or infinity")
        self.n_hidden = _positive_int("n_hidden", n_hidden)
        a0, b0 = float(a0), float(b0)
        if not (np.isfinite(a0) and a0 > 0 and np.isfinite(b0) and b0 > 0):
            raise ValueError(f"a0, b0: expected finite Gamma shape and rate > 0, got a0={a0!r}, b0={b0!r}")
        self.X, self.y = x, t
        self.a0, self.b0 = a0, b0
        self.n_data, self.n_features = x.shape
        p, H = self.n_features, self.n_hidden
        self.dim = p * H + 2 * H + 3
        self.num_weights = self.dim - 2

    # ------------------------------------------------------------------ layout
    def unpack(self, theta: Any) -> BNNParams:
        """Split particles ``theta`` ``(M, D)`` into the network's parameters (views, no copies)."""
        xp = self._check(theta)
        p, H = self.n_features, self.n_hidden
        M = theta.shape[0]
        i = p * H
        w1 = xp.reshape(theta[:, :i], (M, p, H))
        return BNNParams(w1, theta[:, i : i + H], theta[:, i + H : i + 2 * H], theta[:, i + 2 * H],
                         theta[:, i + 2 * H + 1], theta[:, i + 2 * H + 2])

    def pack(self, w1: Any, b1: Any, w2: Any, b2: Any, log_gamma: Any, log_lambda: Any) -> Any:
        """Inverse of :meth:`unpack`: shapes ``(M, p, H)``, ``(M, H)``, ``(M, H)``, ``(M,)`` x 3."""
        xp = namespace(w1, b1, w2, b2, log_gamma, log_lambda)
        M = w1.shape[0]
        expected = ((M, self.n_features, self.n_hidden), (M, self.n_hidden), (M, self.n_hidden), (M,), (M,), (M,))
        got = tuple(tuple(a.shape) for a in (w1, b1, w2, b2, log_gamma, log_lambda))
        if got != expected:
            raise ValueError(f"{self.name}: pack expected shapes {expected}, got {got}")
        return xp.concat([xp.reshape(w1, (M, -1)), b1, w2, xp.reshape(b2, (M, 1)),
                          xp.reshape(log_gamma, (M, 1)), xp.reshape(log_lambda, (M, 1))], axis=1)

    def _rows(self, xp: Any, theta: Any, X: Any, y: Any | None) -> tuple:
        """Validate data rows for ``theta``: NumPy arrays or nested lists (converted to ``theta``'s
        namespace, dtype and device) or arrays of ``theta``'s namespace and dtype (used as they are).
        Returns ``(X, y)`` (``y`` None if not given)."""
        out = []
        for name, a in (("X", X), ("y", y)):
            if a is None:
                out.append(None)
                continue
            if is_numpy_array(a) or not is_array(a):
                a = xp.asarray(_host_array(name, a), dtype=theta.dtype, device=device_of(theta))
            elif namespace(a) is xp:
                if a.dtype != theta.dtype:
                    raise TypeError(f"{self.name}: {name} must have the particles' dtype {theta.dtype}, got {a.dtype}")
            else:
                raise TypeError(f"{self.name}: {name} must be a NumPy array or an array of the particles' "
                                f"namespace ({xp.__name__}), got {type(a).__module__}.{type(a).__name__}")
            out.append(a)
        x, t = out
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != self.n_features:
            raise ValueError(f"{self.name}: expected X of shape (B, {self.n_features}) with B >= 1, got shape "
                             f"{tuple(x.shape)}")
        if t is not None and tuple(t.shape) != (x.shape[0],):
            raise ValueError(f"{self.name}: expected y of shape ({x.shape[0]},) (one target per row of X), got "
                             f"shape {tuple(t.shape)}")
        return x, t

    # ------------------------------------------------------------------ the network
    def predict(self, theta: Any, X: Any) -> Any:
        """Network outputs ``(M, n)`` of every particle at inputs ``X`` ``(n, p)``.

        ``X`` as in :meth:`log_prob_minibatch`; the result is in ``theta``'s namespace, dtype and
        device.
        """
        xp = self._check(theta)
        x, _ = self._rows(xp, theta, X, None)
        return self._forward(xp, self.unpack(theta), x)

    def _forward(self, xp: Any, prm: BNNParams, X: Any) -> Any:
        ops = _ops(xp, X)
        hid = ops.relu(X @ prm.w1 + prm.b1[:, None, :])  # (M, n, H)
        return (hid @ prm.w2[:, :, None])[..., 0] + prm.b2[:, None]

    def _log_posterior(self, xp: Any, theta: Any, X: Any, y: Any) -> Any:
        w1, b1, w2, b2, lg, ll = prm = self.unpack(theta)
        N, B = self.n_data, X.shape[0]
        r = self._forward(xp, prm, X) - y
        gam, lam = xp.exp(lg), xp.exp(ll)
        loglik = 0.5 * B * (lg - _LOG_2PI) - 0.5 * gam * xp.sum(r * r, axis=1)
        sq = xp.sum(w1 * w1, axis=(1, 2)) + xp.sum(b1 * b1, axis=1) + xp.sum(w2 * w2, axis=1) + b2 * b2
        a0, b0 = self.a0, self.b0
        prior_g = (a0 - 1) * lg - b0 * gam + lg
        prior_w = 0.5 * self.num_weights * (ll - _LOG_2PI) - 0.5 * lam * sq + (a0 - 1) * ll - b0 * lam + ll
        return loglik * (N / B) + prior_g + prior_w

    def _score_rows(self, xp: Any, theta: Any, X: Any, y: Any) -> Any:
        """Gradient of :meth:`_log_posterior` in closed form (back-propagation written out)."""
        ops = _ops(xp, theta)
        w1, b1, w2, b2, lg, ll = self.unpack(theta)
        M, B, N = theta.shape[0], X.shape[0], self.n_data
        scale = N / B
        hid = ops.relu(ops.hidden_pre(X, w1, b1))  # (M, B, H)
        r = ops.output(hid, w2, b2) - y  # (M, B)
        gam, lam = xp.exp(lg), xp.exp(ll)
        g = r * (-scale * gam)[:, None]  # d log p / d f
        dw2 = ops.row_times(g, hid)  # (M, H)
        db2 = xp.sum(g, axis=1)
        dpre = ops.relu_backward(g[:, :, None] * w2[:, None, :], hid)  # (M, B, H)
        dw1 = ops.xt_times(X, dpre)  # (M, p, H)
        db1 = xp.sum(dpre, axis=1)
        weights = theta[:, : self.num_weights]
        grad_w = xp.concat([xp.reshape(dw1, (M, -1)), db1, dw2, db2[:, None]], axis=1) - lam[:, None] * weights
        sq = xp.sum(weights * weights, axis=1)
        d_lg = 0.5 * N - 0.5 * scale * gam * xp.sum(r * r, axis=1) + self.a0 - self.b0 * gam
        d_ll = 0.5 * self.num_weights - 0.5 * lam * sq + self.a0 - self.b0 * lam
        return xp.concat([grad_w, d_lg[:, None], d_ll[:, None]], axis=1)

    # ------------------------------------------------------------------ Target contract
    def _log_prob(self, xp: Any, theta: Any) -> Any:
        return self._log_posterior(xp, theta, self._const(xp, theta, "X", self.X), self._const(xp, theta, "y", self.y))

    def _score(self, xp: Any, theta: Any) -> Any:
        return self._score_rows(xp, theta, self._const(xp, theta, "X", self.X), self._const(xp, theta, "y", self.y))

    def log_prob_minibatch(self, theta: Any, X: Any, y: Any) -> Any:
        """Log posterior with the log likelihood of the ``B`` rows ``(X, y)`` scaled by ``N / B``.

        Parameters
        ----------
        theta : array of shape (M, D)
            Particles; any Array-API namespace, float32 or float64.
        X : array of shape (B, p)
            Rows of inputs: a NumPy array or nested lists (converted to ``theta``'s namespace,
            dtype and device), or an array of ``theta``'s namespace and dtype.
        y : array of shape (B,)
            Their targets, likewise.

        Returns
        -------
        array of shape (M,)
            In ``theta``'s namespace, dtype and device.
        """
        xp = self._check(theta)
        x, t = self._rows(xp, theta, X, y)
        return self._log_posterior(xp, theta, x, t)

    def score_minibatch(self, theta: Any, X: Any, y: Any) -> Any:
        """Gradient of :meth:`log_prob_minibatch` in ``theta``, ``(M, D)``, in closed form.

        One stochastic score of stochastic-gradient training (Liu & Wang 2016, Sec. 5.2); with all
        ``N`` rows it equals :meth:`score`.  Arguments as in :meth:`log_prob_minibatch`.
        """
        xp = self._check(theta)
        x, t = self._rows(xp, theta, X, y)
        return self._score_rows(xp, theta, x, t)

    # ------------------------------------------------------------------ initial particles
    def _init_rows(self, rng: Any, n: int) -> np.ndarray:
        """The original code's initialisation; ``rng`` a ``Generator`` or a ``RandomState``."""
        p, H, N = self.n_features, self.n_hidden, self.n_data
        rows = []
        for _ in range(n):
            w1 = rng.standard_normal((p, H)) / np.sqrt(p + 1)
            b1 = np.zeros(H)
            w2 = rng.standard_normal(H) / np.sqrt(H + 1)
            b2 = 0.0
            rng.gamma(self.a0, self.b0)  # log gamma: drawn then replaced below, as in the original
            ll = np.log(rng.gamma(self.a0, self.b0))
            ridx = rng.choice(N, min(N, 1000), replace=False)
            yhat = np.maximum(self.X[ridx] @ w1 + b1, 0) @ w2 + b2
            lg = -np.log(np.mean((yhat - self.y[ridx]) ** 2))
            rows.append(np.concatenate([w1.ravel(), b1, w2, [b2, lg, ll]]))
        return np.stack(rows)

    def _initial_numpy(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self._init_rows(rng, n)

    def original_initial_particles(
        self, n: int, seed: int, *, xp: Any = None, dtype: Any = None, device: Any = None
    ) -> Any:
        """Initial particles drawn exactly as the original SVGD code does.

        Same distribution as :meth:`initial_particles`, from the stream of
        ``numpy.random.RandomState(seed)`` (the original code's generator) instead of
        ``default_rng(seed)``; arguments and result as in :meth:`initial_particles`.
        """
        n = _check_count(n, "n")
        seed = _check_seed(seed)
        ns = namespace_of_module(xp)
        return _convert(self._init_rows(np.random.RandomState(seed), n), ns, dtype, device)


class BNNDiabetes(BayesianNeuralNetwork):
    """:class:`BayesianNeuralNetwork` on scikit-learn's diabetes data (442 rows, 10 inputs).

    Inputs (raw, ``scaled=False``) and the response z-scored with their own mean and population
    standard deviation (:func:`~particlesampling.targets.datasets.load_diabetes_design`, without its
    intercept column: the network has biases).  Dimension ``10 H + 2 H + 3`` (603 for H = 50).

    Parameters
    ----------
    n_hidden, a0, b0
        As in :class:`BayesianNeuralNetwork`.
    """

    name = "bnn-diabetes"
    description = ("Bayesian neural network of Liu & Wang 2016 (50 ReLU units, Gamma(1, 0.1) precision priors), "
                   "sklearn diabetes (442x10), no reference")

    def __init__(self, n_hidden: int = 50, a0: float = 1.0, b0: float = 0.1) -> None:
        data = load_diabetes_design()
        super().__init__(data["X"][:, 1:], data["y"], n_hidden=n_hidden, a0=a0, b0=b0)
        self.feature_names = data["feature_names"][1:]
        self.x_mean, self.x_std = data["x_mean"], data["x_std"]
        self.y_mean, self.y_std = data["y_mean"], data["y_std"]
