"""The Stein variational direction (Liu & Wang 2016, eq. 8), as a pure function.

.. math::

    \\phi(x_i) = \\frac{1}{n} \\sum_j \\big[ k(x_j, x_i) \\nabla \\log p(x_j)
                 + \\alpha \\nabla_{x_j} k(x_j, x_i) \\big]
               = \\frac{1}{n} (K S + \\alpha R)_i

with ``K`` the Gram matrix, ``S`` the scores, ``R`` the repulsion (see :mod:`particlesampling.kernels`)
and ``alpha`` the ``repulsion`` weight (1 for SVGD proper; the repulsive-attention paper uses 0.01).
One Gram matrix, two matrix products and a row sum: ``O(n^2 d)`` time and ``O(n^2 + n d)`` memory.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from ._backend import check_same_shape, device_of, namespace, sqdist
from .bandwidths import get_bandwidth
from .kernels import RBF, Kernel, _centred, _exp_neg_scaled, get_kernel

__all__ = ["stein_direction", "stein_direction_with_info", "stein_terms", "SteinInfo", "SteinTerms"]


class SteinInfo(NamedTuple):
    """Side information of one evaluation of the Stein direction (0-d arrays, no host sync)."""

    bandwidth: Any  #: h used (0-d, or (d,) per dimension)
    mean_kernel: Any  #: mean off-diagonal kernel value (1 when n = 1)
    driving_norm: Any  #: RMS over particles of |K S / n|_2
    repulsion_norm: Any  #: RMS over particles of |alpha R / n|_2


def _check_inputs(particles, scores, repulsion):
    xp = namespace(particles, scores)
    shape = tuple(particles.shape)
    if len(shape) != 2:
        raise ValueError(f"expected particles of shape (n, d), received shape {shape}")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"expected particles with n >= 1 and d >= 1, received shape {shape}")
    if not xp.isdtype(particles.dtype, "real floating"):
        raise TypeError(f"expected particles of a real floating dtype, received {particles.dtype}")
    check_same_shape(particles, scores, "particles", "scores")
    if isinstance(repulsion, bool) or not isinstance(repulsion, (int, float)) or not math.isfinite(repulsion):
        raise TypeError(f"expected repulsion as a finite real number, received {repulsion!r}")
    return xp


class SteinTerms(NamedTuple):
    """Unnormalised pieces of the Stein direction (see :func:`stein_terms`)."""

    driving: Any  #: (n, d) ``K S``
    repulsion: Any  #: (n, d) ``R`` (unweighted)
    kernel_diagonal: Any  #: (n,) ``k(x_i, x_i)``
    bandwidth: Any  #: h used
    mean_kernel: Any  #: mean off-diagonal kernel value (1 when n = 1)


def stein_terms(particles, scores, kernel=None, bandwidth=None, *, sq=None) -> SteinTerms:
    """``K S``, ``R``, ``diag(K)``, the bandwidth and the mean kernel value, without the ``1/n``.

    The building block of :func:`stein_direction` and of random-batch SVGD. ``sq`` may pass a
    precomputed ``sqdist(particles)`` to share it with other computations of the same step.
    """
    xp = _check_inputs(particles, scores, 1.0)
    kern: Kernel = get_kernel(kernel)
    n = particles.shape[0]
    if kern.uses_bandwidth:
        if sq is None:
            sq = sqdist(particles, xp=xp)
        h = get_bandwidth(bandwidth)(particles, sq, scores)
    else:
        h = xp.ones((), dtype=particles.dtype, device=device_of(particles))
    if type(kern) is RBF and h.ndim == 0:
        return _rbf_terms(xp, particles, scores, h, sq)
    k, r = kern.gram_and_repulsion(particles, h, sq)
    diag = xp.linalg.diagonal(k)
    if n > 1:
        mean_k = (xp.sum(k) - xp.sum(diag)) / float(n * (n - 1))
    else:
        mean_k = xp.ones((), dtype=particles.dtype, device=device_of(particles))
    return SteinTerms(k @ scores, r, diag, h, mean_k)


def _rbf_terms(xp, x, s, h, sq) -> SteinTerms:
    """Fast path of :func:`stein_terms` for the RBF kernel and a scalar ``h`` (same values to rounding).

    ``K = exp(-D2 / h)`` is built in place from ``D2`` (two passes), and ``K X``, ``K S`` and the row
    sums of ``K`` come from one matrix product ``K [Xc | S | 1]`` (Xc the centred particles), so the
    step is the ``D2`` product, one ``n x n`` by ``n x (2d + 1)`` product and O(n^2) elementwise work.
    """
    n, d = x.shape
    k = _exp_neg_scaled(xp, sq, h)
    ones = xp.ones((n, 1), dtype=x.dtype, device=device_of(x))
    xc = _centred(xp, x)
    prod = k @ xp.concat([xc, s, ones], axis=1)
    rowsum = prod[:, 2 * d]
    r = (rowsum[:, None] * xc - prod[:, :d]) * (2.0 / h)
    diag = xp.linalg.diagonal(k)
    if n > 1:
        mean_k = (xp.sum(rowsum) - xp.sum(diag)) / float(n * (n - 1))
    else:
        mean_k = xp.ones((), dtype=x.dtype, device=device_of(x))
    return SteinTerms(prod[:, d:2 * d], r, diag, h, mean_k)


def _needs_tiling(particles, memory_budget) -> bool:
    """Whether the untiled path's ``n x n`` temporaries (about three: D2, K, one more) exceed the budget."""
    if memory_budget is None:
        return False
    n = particles.shape[0]
    itemsize = 4 if str(particles.dtype).endswith("float32") else 8
    return 3 * n * n * itemsize > memory_budget


def stein_direction_with_info(particles, scores, kernel=None, bandwidth=None, repulsion: float = 1.0,
                              *, sq=None, memory_budget=None):
    """Stein direction and :class:`SteinInfo`; see :func:`stein_direction` for the arguments.

    ``sq`` may pass a precomputed ``sqdist(particles)`` to share it with other computations of the
    same step (a KSD, say).
    """
    xp = _check_inputs(particles, scores, repulsion)
    if sq is None and _needs_tiling(particles, memory_budget):
        from .tiled import tiled_stein_direction_with_info  # lazy: tiled imports this module

        return tiled_stein_direction_with_info(particles, scores, kernel, bandwidth, repulsion,
                                               memory_budget=memory_budget)
    n = particles.shape[0]
    t = stein_terms(particles, scores, kernel, bandwidth, sq=sq)
    phi = (t.driving + repulsion * t.repulsion) / float(n)
    info = SteinInfo(
        bandwidth=t.bandwidth,
        mean_kernel=t.mean_kernel,
        driving_norm=xp.sqrt(xp.mean(xp.sum(t.driving * t.driving, axis=1))) / float(n),
        repulsion_norm=abs(repulsion) * xp.sqrt(xp.mean(xp.sum(t.repulsion * t.repulsion, axis=1))) / float(n),
    )
    return phi, info


def stein_direction(particles, scores, kernel=None, bandwidth=None, repulsion: float = 1.0, *,
                    memory_budget=None):
    """The SVGD direction ``phi = (K S + repulsion * R) / n`` (Liu & Wang 2016, eq. 8).

    Parameters
    ----------
    particles : array, shape (n, d)
        Current particles, any Array-API namespace (NumPy, PyTorch CPU/GPU, array_api_strict, ...).
    scores : array, shape (n, d)
        ``grad log p`` at each particle, same namespace, dtype and device.
    kernel : None, str or Kernel
        ``None`` or ``"rbf"`` (default), ``"imq"``, ``"linear"``, ``"rff"``, or a kernel object.
    bandwidth : None, str, float > 0 or BandwidthRule
        ``None`` is the default median rule (``"liu_wang"``); a name picks a median convention; a
        number ``h`` fixes the bandwidth of ``k(x, y) = exp(-|x - y|^2 / h)`` for RBF.
    repulsion : float
        Weight ``alpha`` of the repulsive term (1 for SVGD).
    memory_budget : int, optional
        Bytes allowed for ``n x n`` temporaries. ``None`` (default): untiled. If the untiled path
        would need more (about ``3 n^2`` numbers), the rows are processed in blocks that fit the
        budget (:mod:`particlesampling.tiled`: same result to float rounding, ``O(n * tile)``
        memory, radial kernels and scalar median / fixed bandwidths).

    Returns
    -------
    phi : array, shape (n, d), same namespace, dtype and device as ``particles``.
    """
    return stein_direction_with_info(particles, scores, kernel, bandwidth, repulsion,
                                     memory_budget=memory_budget)[0]
