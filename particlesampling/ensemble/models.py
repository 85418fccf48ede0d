"""Log-likelihoods and priors of a :class:`~particlesampling.ensemble.ParticleEnsemble`, batched over particles.

Each takes the ``n`` models' outputs (or weights) at once and returns one value per particle and
row. A likelihood or prior may own per-particle parameters (a learnt noise precision, a learnt
weight precision); they are extra columns of the particles, sampled with the weights.

The log posterior of particle ``i`` on a minibatch of ``B`` of the ``N`` training rows is
(stochastic-gradient form, Welling & Teh 2011; Liu & Wang 2016, Sec. 5.2)::

    log p_i = (N / B) sum_b log p(y_b | f_i(x_b), eta_i) + log p(eta_i) + log p(w_i | lambda_i) + log p(lambda_i)

with ``w_i`` the network weights, ``eta_i`` the likelihood's and ``lambda_i`` the prior's own
parameters. With ``B = N`` it is the full-data log posterior up to a constant.
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = ["Likelihood", "GaussianLikelihood", "CategoricalLikelihood", "Prior", "GaussianPrior",
           "HierarchicalGaussianPrior", "get_likelihood"]

_LOG_2PI = math.log(2 * math.pi)


def _positive(name, v):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"expected {name} > 0 (finite), received {v!r}")
    return float(v)


class Likelihood:
    """``log p(y | f, eta)`` for a stack of models; ``num_params`` per-particle parameters ``eta``."""

    num_params: int = 0
    param_names: tuple = ()

    def log_prob(self, outputs, targets, params):
        """Per particle and row: ``outputs`` ``(n, B, ...)``, ``targets`` ``(B, ...)``, ``params``
        ``(n, num_params)``; returns ``(n, B)``."""
        raise NotImplementedError

    def log_prior(self, params):
        """Log density of the likelihood's own parameters, ``(n,)`` (0 if there are none)."""
        return params.new_zeros(params.shape[0])

    def init_params(self, n: int, like):
        """Initial ``(n, num_params)`` values (dtype and device of ``like``)."""
        return like.new_zeros((n, self.num_params))


def _regression_pair(outputs, targets):
    """``outputs`` ``(n, B, 1)`` against ``targets`` ``(B,)`` drop the trailing 1; shapes must then match."""
    if outputs.dim() == targets.dim() + 2 and outputs.shape[-1] == 1:
        outputs = outputs[..., 0]
    if tuple(outputs.shape[1:]) != tuple(targets.shape):
        raise ValueError(f"Gaussian likelihood: expected outputs of shape (n, *targets.shape) = "
                         f"(n, {', '.join(map(str, targets.shape))}) (or with a trailing 1), received "
                         f"{tuple(outputs.shape)}")
    return outputs


class GaussianLikelihood(Likelihood):
    """``y ~ N(f(x), sigma^2)`` per output coordinate; ``sigma`` fixed or learnt per particle.

    Parameters
    ----------
    noise_std : float > 0 or None
        A fixed noise standard deviation (units of ``y``), or ``None`` to learn it: each particle
        then carries ``log gamma``, the log of its noise precision ``gamma = 1 / sigma^2``, with a
        ``Gamma(a0, rate b0)`` prior on ``gamma`` (Hernandez-Lobato & Adams 2015; Liu & Wang 2016),
        whose log density in ``log gamma`` includes the Jacobian ``+ log gamma`` and drops the
        constant ``a0 log b0 - log Gamma(a0)``.
    a0, b0 : float > 0
        Shape and rate of that Gamma prior (1 and 0.1 as in Liu & Wang 2016).
    init_log_precision : float
        Initial ``log gamma`` of every particle when learnt (0: unit noise on standardised targets).

    Rows with more than one output coordinate sum the coordinates' log densities.
    """

    def __init__(self, noise_std: float | None = 1.0, *, a0: float = 1.0, b0: float = 0.1,
                 init_log_precision: float = 0.0) -> None:
        self.learnt = noise_std is None
        self.noise_std = None if self.learnt else _positive("noise_std", noise_std)
        self.a0, self.b0 = _positive("a0", a0), _positive("b0", b0)
        self.init_log_precision = float(init_log_precision)
        self.num_params = 1 if self.learnt else 0
        self.param_names = ("likelihood.log_precision",) if self.learnt else ()

    def log_precision(self, params):
        """``(n,)`` log noise precision of each particle."""
        if self.learnt:
            return params[:, 0]
        return params.new_full((params.shape[0],), -2.0 * math.log(self.noise_std))

    def log_prob(self, outputs, targets, params):
        f = _regression_pair(outputs, targets)
        lg = self.log_precision(params)
        shape = (-1,) + (1,) * (f.dim() - 1)
        r2 = (f - targets) ** 2
        lp = 0.5 * (lg.reshape(shape) - _LOG_2PI) - 0.5 * torch.exp(lg).reshape(shape) * r2
        return lp.reshape(lp.shape[0], lp.shape[1], -1).sum(-1)

    def log_prior(self, params):
        if not self.learnt:
            return params.new_zeros(params.shape[0])
        lg = params[:, 0]
        return (self.a0 - 1) * lg - self.b0 * torch.exp(lg) + lg

    def init_params(self, n, like):
        return like.new_full((n, self.num_params), self.init_log_precision)


class CategoricalLikelihood(Likelihood):
    """``y ~ Categorical(softmax(f(x)))``: ``outputs`` ``(n, B, C)`` logits, ``targets`` ``(B,)`` class indices."""

    def log_prob(self, outputs, targets, params):
        if outputs.dim() != 3 or outputs.shape[1] != targets.shape[0] or targets.dim() != 1:
            raise ValueError(f"categorical likelihood: expected logits of shape (n, B, C) and integer targets "
                             f"of shape (B,), received {tuple(outputs.shape)} and {tuple(targets.shape)}")
        if targets.is_floating_point():
            raise TypeError(f"categorical likelihood: expected integer class indices, received {targets.dtype}")
        logp = torch.log_softmax(outputs, dim=-1)
        idx = targets.to(torch.long).reshape(1, -1, 1).expand(outputs.shape[0], -1, 1)
        return torch.gather(logp, -1, idx)[..., 0]


def get_likelihood(spec) -> Likelihood:
    """``"gaussian"`` (unit noise), ``"gaussian-learnt"`` (learnt noise), ``"categorical"``, or a Likelihood."""
    if isinstance(spec, Likelihood):
        return spec
    names = {"gaussian": lambda: GaussianLikelihood(1.0), "gaussian-learnt": lambda: GaussianLikelihood(None),
             "categorical": CategoricalLikelihood}
    if isinstance(spec, str) and spec.lower() in names:
        return names[spec.lower()]()
    raise ValueError(f"unknown likelihood {spec!r}; expected one of {sorted(names)} or a Likelihood instance")


class Prior:
    """``log p(w, lambda)`` of the network weights ``w`` ``(n, P)`` with ``num_params`` own parameters."""

    num_params: int = 0
    param_names: tuple = ()

    def log_prob(self, weights, params):
        """``(n,)`` log prior density of each particle's weights and own parameters."""
        raise NotImplementedError

    def init_params(self, weights):
        return weights.new_zeros((weights.shape[0], self.num_params))


class GaussianPrior(Prior):
    """Independent ``N(0, scale^2)`` on every network weight (biases included).

    ``log p(w) = -|w|^2 / (2 scale^2) - P (log scale + log(2 pi) / 2)``.
    """

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = _positive("scale", scale)

    def log_prob(self, weights, params):
        P = weights.shape[1]
        return (-0.5 / self.scale ** 2) * (weights * weights).sum(1) - P * (math.log(self.scale) + 0.5 * _LOG_2PI)


class HierarchicalGaussianPrior(Prior):
    """``w ~ N(0, 1/lambda)`` with a learnt precision ``lambda ~ Gamma(a0, rate b0)`` per particle.

    The model of Hernandez-Lobato & Adams (2015) and Liu & Wang (2016): each particle carries
    ``log lambda`` (one column), whose density includes the Jacobian ``+ log lambda``::

        log p = P/2 (log lambda - log 2 pi) - lambda |w|^2 / 2 + (a0 - 1) log lambda - b0 lambda + log lambda

    Initial ``log lambda``: ``-log mean(w^2)`` of the particle's initial weights.
    """

    num_params = 1
    param_names = ("prior.log_precision",)

    def __init__(self, a0: float = 1.0, b0: float = 0.1) -> None:
        self.a0, self.b0 = _positive("a0", a0), _positive("b0", b0)

    def log_prob(self, weights, params):
        ll = params[:, 0]
        lam = torch.exp(ll)
        P = weights.shape[1]
        return (0.5 * P * (ll - _LOG_2PI) - 0.5 * lam * (weights * weights).sum(1)
                + (self.a0 - 1) * ll - self.b0 * lam + ll)

    def init_params(self, weights):
        return -torch.log((weights * weights).mean(1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny))
