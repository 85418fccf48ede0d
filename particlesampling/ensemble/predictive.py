"""Predictive summaries of an ensemble's per-particle predictions (torch tensors).

For class probabilities ``p`` of shape ``(n, B, C)`` (particle, row, class), the predictive
distribution is the particle mixture ``p_bar = mean_i p_i``;

* predictive entropy ``H[p_bar] = -sum_c p_bar_c log p_bar_c`` (total uncertainty),
* expected entropy ``mean_i H[p_i]`` (aleatoric part),
* mutual information ``I = H[p_bar] - mean_i H[p_i] >= 0`` between the prediction and the particle
  (epistemic part; Houlsby et al. 2011, "BALD"; Depeweg et al. 2018),

each of shape ``(B,)``, in nats. ``0 log 0`` is taken as 0.
"""

from __future__ import annotations

import torch

__all__ = ["predictive_mean", "predictive_entropy", "expected_entropy", "mutual_information",
           "gaussian_predictive"]


def _check_probs(probs):
    if not isinstance(probs, torch.Tensor) or probs.dim() != 3:
        raise ValueError(f"expected class probabilities of shape (n, B, C), received "
                         f"{tuple(getattr(probs, 'shape', ())) or type(probs).__name__}")
    if not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()):
        raise ValueError("expected finite, non-negative class probabilities")
    return probs


def _entropy(p):
    return -(torch.xlogy(p, p)).sum(-1)


def predictive_mean(probs):
    """``(B, C)``: the mixture's class probabilities ``mean_i p_i``."""
    return _check_probs(probs).mean(0)


def predictive_entropy(probs):
    """``(B,)``: entropy of the mixture ``H[mean_i p_i]``."""
    return _entropy(predictive_mean(probs))


def expected_entropy(probs):
    """``(B,)``: mean over particles of each particle's entropy."""
    return _entropy(_check_probs(probs)).mean(0)


def mutual_information(probs):
    """``(B,)``: ``H[mean_i p_i] - mean_i H[p_i]``, clamped at 0 against rounding."""
    return torch.clamp(predictive_entropy(probs) - expected_entropy(probs), min=0.0)


def gaussian_predictive(means, noise_variances):
    """Moments of the Gaussian mixture ``(1/n) sum_i N(mu_i, s_i^2)``.

    ``means`` ``(n, B)``, ``noise_variances`` ``(n,)`` or ``(n, B)``; returns ``(mean, aleatoric,
    epistemic)`` each ``(B,)``: ``mean_i mu_i``, ``mean_i s_i^2`` and ``var_i mu_i`` (population
    variance); the predictive variance is their sum.
    """
    if means.dim() != 2:
        raise ValueError(f"expected means of shape (n, B), received {tuple(means.shape)}")
    v = noise_variances if noise_variances.dim() == 2 else noise_variances[:, None].expand_as(means)
    return means.mean(0), v.mean(0), means.var(0, unbiased=False)
