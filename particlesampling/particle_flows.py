"""Two other discretisations of the Wasserstein gradient flow of KL(q | p): GFSF and Blob.

The flow moves particles along ``v = grad log p - grad log q``; the methods differ in how they
estimate ``grad log q`` from the particles (Liu, Zhuo, Cheng, Zhang, Zhu & Carin, ICML 2019,
"Understanding and Accelerating Particle-Based Variational Inference", Sec. 3 and Table 1). With
``K[i, j] = k(x_i, x_j)`` and the repulsion ``R_i = sum_j grad_{x_j} k(x_j, x_i)``
(:mod:`particlesampling.kernels`, shared with SVGD):

* **GFSF** (gradient flow with smoothed functions; Liu et al. 2019, eq. 12, as used by Wang, Ren,
  Zhu & Zhang, ICLR 2019): ``grad log q(x_i) ~ -[(K + lambda I)^-1 R]_i``, so

  .. math:: v = S + (K + \\lambda I)^{-1} R ,

  a ridge ``lambda`` keeping the solve well posed when particles come close;
* **Blob** (Chen, Zhang, Wang, Li & Chen 2018, "A Unified Particle-Optimization Framework for
  Scalable Bayesian Sampling", w-Blob; Liu et al. 2019, Table 1): ``grad log q`` of the kernel
  density estimate, symmetrised,

  .. math:: v_i = s_i - \\sum_j \\frac{\\nabla_{x_i} k(x_i, x_j)}{\\sum_l k(x_i, x_l)}
                     - \\sum_j \\frac{\\nabla_{x_i} k(x_i, x_j)}{\\sum_l k(x_j, x_l)} ,

  which for a radial kernel (``grad_{x_i} k(x_i, x_j) = -grad_{x_j} k(x_j, x_i)``) is
  ``v = S + R / rowsum(K) + R_w`` with ``R_w`` the repulsion whose pair weights ``K'[i, j]`` are
  divided by ``rowsum(K)_j`` (:meth:`particlesampling.kernels.RadialKernel.gram_and_slope`,
  :func:`particlesampling.kernels.radial_repulsion`).

Both update ``x <- x + eps v`` (:mod:`particlesampling.samplers.gfsf`, :mod:`particlesampling.samplers.blob`).
Unlike SVGD's, neither direction is smoothed by the kernel: the score enters at each particle
alone. ``O(n^2 d)`` time (GFSF adds an ``n x n`` solve, ``O(n^3)``), ``O(n^2)`` memory.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

from ._backend import centred, device_of, namespace, sqdist
from .bandwidths import get_bandwidth, rule_bandwidth
from .kernels import get_kernel, offdiagonal_mean_from_sums, radial_repulsion
from .stein_kernel import radial_kernel
from .stein_terms import check_stein_inputs

__all__ = ["FlowInfo", "gfsf_direction", "blob_direction", "check_ridge"]


class FlowInfo(NamedTuple):
    """Side information of a GFSF or Blob direction (0-d arrays, no host sync)."""

    bandwidth: Any  #: h used (0-d, or (d,) per dimension)
    mean_kernel: Any  #: mean off-diagonal kernel value (1 when n = 1)


def check_ridge(ridge) -> float:
    if isinstance(ridge, bool) or not isinstance(ridge, numbers.Real) or not math.isfinite(ridge) or ridge < 0:
        raise ValueError(f"expected ridge >= 0 (finite), received {ridge!r}")
    return float(ridge)


def _gram_setup(particles, scores, kernel, bandwidth):
    xp = check_stein_inputs(particles, scores, 1.0)
    kern = get_kernel(kernel)
    sq = sqdist(particles, xp=xp)
    if kern.uses_bandwidth:
        h = rule_bandwidth(get_bandwidth(bandwidth), particles, sq, scores)
    else:
        h = xp.ones((), dtype=particles.dtype, device=device_of(particles))
    return xp, kern, sq, h


def _info(xp, k, h, like):
    n = k.shape[0]
    return FlowInfo(h, offdiagonal_mean_from_sums(xp, xp.sum(k), xp.sum(xp.linalg.diagonal(k)), n, like=like))


def gfsf_direction(particles, scores, kernel=None, bandwidth=None, ridge: float = 1e-3):
    """GFSF direction ``v = S + (K + ridge I)^-1 R`` (module docstring) and its :class:`FlowInfo`.

    Parameters
    ----------
    particles, scores : arrays, shape (n, d)
        Same namespace, dtype and device (NumPy, PyTorch, JAX, array_api_strict).
    kernel, bandwidth :
        As for :func:`particlesampling.stein_direction` (every kernel; every bandwidth rule).
    ridge : float >= 0
        ``lambda``, added to the diagonal of ``K`` before the solve.

    Returns
    -------
    v : array, shape (n, d)
    info : FlowInfo
    """
    ridge = check_ridge(ridge)
    xp, kern, sq, h = _gram_setup(particles, scores, kernel, bandwidth)
    k, r = kern.gram_and_repulsion(particles, h, sq)
    n = particles.shape[0]
    eye = xp.eye(n, dtype=particles.dtype, device=device_of(particles))
    return scores + xp.linalg.solve(k + ridge * eye, r), _info(xp, k, h, particles)


def blob_direction(particles, scores, kernel=None, bandwidth=None):
    """Blob direction ``v = S + R / rowsum(K) + R_w`` (module docstring) and its :class:`FlowInfo`.

    Parameters
    ----------
    particles, scores : arrays, shape (n, d)
    kernel : None, str or radial Kernel
        RBF by default; any radial kernel (TypeError otherwise).
    bandwidth :
        As for :func:`particlesampling.stein_direction`.

    Returns
    -------
    v : array, shape (n, d)
    info : FlowInfo
    """
    radial_kernel(kernel)
    xp, kern, sq, h = _gram_setup(particles, scores, kernel, bandwidth)
    k, slope = kern.gram_and_slope(particles, h, sq)
    xc = centred(xp, particles)
    rowsum = xp.sum(k, axis=1)
    rep = radial_repulsion(xp, slope, xc, xc, h)
    rep_w = radial_repulsion(xp, slope / rowsum[None, :], xc, xc, h)
    return scores + rep / rowsum[:, None] + rep_w, _info(xp, k, h, particles)
