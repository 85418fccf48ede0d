"""The pieces of the Stein direction that the untiled, tiled and random-batch paths share.

The direction itself, ``phi = (K S + repulsion R) / n`` (Liu & Wang 2016, eq. 8), is stated in
:mod:`particlesampling.stein`. This module holds the input check, :func:`stein_terms` (``K S``,
``R``, ``diag K`` without the ``1/n``) and :func:`assemble_direction` (``phi`` and its
:class:`SteinInfo`); :mod:`particlesampling.stein` (untiled), :mod:`particlesampling.tiled` (row blocks)
and :mod:`particlesampling.random_batch` build on them.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

from ._backend import centred, check_same_shape, device_of, exp_neg_scaled, namespace, sqdist
from .bandwidths import get_bandwidth
from .kernels import RBF, Kernel, get_kernel, offdiagonal_mean_from_sums, rbf_driving_and_repulsion

__all__ = ["SteinInfo", "SteinTerms", "check_stein_inputs", "check_repulsion", "stein_terms", "assemble_direction"]


class SteinInfo(NamedTuple):
    """Side information of one evaluation of the Stein direction (0-d arrays, no host sync)."""

    bandwidth: Any  #: h used (0-d, or (d,) per dimension)
    mean_kernel: Any  #: mean off-diagonal kernel value (1 when n = 1)
    driving_norm: Any  #: RMS over particles of |K S / n|_2
    repulsion_norm: Any  #: RMS over particles of |repulsion R / n|_2


class SteinTerms(NamedTuple):
    """Unnormalised pieces of the Stein direction (see :func:`stein_terms`)."""

    driving: Any  #: (n, d) ``K S``
    repulsion: Any  #: (n, d) ``R`` (unweighted)
    kernel_diagonal: Any  #: (n,) ``k(x_i, x_i)``
    bandwidth: Any  #: h used
    mean_kernel: Any  #: mean off-diagonal kernel value (1 when n = 1)


def check_stein_inputs(particles, scores, repulsion):
    """Check ``particles`` and ``scores`` (same ``(n, d)`` shape, real floating, ``n, d >= 1``) and
    ``repulsion`` (a finite real number); return the namespace. No device synchronisation."""
    xp = namespace(particles, scores)
    shape = tuple(particles.shape)
    if len(shape) != 2:
        raise ValueError(f"expected particles of shape (n, d), received shape {shape}")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"expected particles with n >= 1 and d >= 1, received shape {shape}")
    if not xp.isdtype(particles.dtype, "real floating"):
        raise TypeError(f"expected particles of a real floating dtype, received {particles.dtype}")
    check_same_shape(particles, scores, "particles", "scores")
    check_repulsion(repulsion)
    return xp


def check_repulsion(repulsion) -> float:
    """The repulsion weight as a float; TypeError unless a finite real number (NumPy scalars included)."""
    if isinstance(repulsion, bool) or not isinstance(repulsion, numbers.Real) or not math.isfinite(repulsion):
        raise TypeError(f"expected repulsion as a finite real number, received {repulsion!r}")
    return float(repulsion)


def stein_terms(particles, scores, kernel=None, bandwidth=None, *, sq=None) -> SteinTerms:
    """``K S``, ``R``, ``diag(K)``, the bandwidth and the mean kernel value, without the ``1/n``.

    ``sq`` may pass a precomputed ``sqdist(particles)`` to share it with other computations of the
    same step. For the RBF kernel with a scalar bandwidth, ``K X``, ``K S`` and the row sums of ``K``
    come from one product ``K [Xc | S | 1]`` (:func:`particlesampling.kernels.rbf_driving_and_repulsion`).
    """
    xp = check_stein_inputs(particles, scores, 1.0)
    kern: Kernel = get_kernel(kernel)
    n = particles.shape[0]
    if kern.uses_bandwidth:
        if sq is None:
            sq = sqdist(particles, xp=xp)
        h = get_bandwidth(bandwidth)(particles, sq, scores)
    else:
        h = xp.ones((), dtype=particles.dtype, device=device_of(particles))
    if type(kern) is RBF and h.ndim == 0:
        k = exp_neg_scaled(xp, sq, h)
        xc = centred(xp, particles)
        driving, rep, rowsum = rbf_driving_and_repulsion(xp, k, xc, xc, scores, h)
        diag = xp.linalg.diagonal(k)
        return SteinTerms(driving, rep, diag, h, offdiagonal_mean_from_sums(xp, xp.sum(rowsum), xp.sum(diag), n, like=particles))
    k, r = kern.gram_and_repulsion(particles, h, sq)
    diag = xp.linalg.diagonal(k)
    return SteinTerms(k @ scores, r, diag, h, offdiagonal_mean_from_sums(xp, xp.sum(k), xp.sum(diag), n, like=particles))


def assemble_direction(xp, driving, repulsion_term, repulsion: float, bandwidth, mean_kernel):
    """``phi = (K S + repulsion R) / n`` and its :class:`SteinInfo` from the unnormalised terms."""
    n = driving.shape[0]
    phi = (driving + repulsion * repulsion_term) / float(n)
    info = SteinInfo(
        bandwidth=bandwidth,
        mean_kernel=mean_kernel,
        driving_norm=xp.sqrt(xp.mean(xp.sum(driving * driving, axis=1))) / float(n),
        repulsion_norm=abs(repulsion) * xp.sqrt(xp.mean(xp.sum(repulsion_term * repulsion_term, axis=1))) / float(n),
    )
    return phi, info
