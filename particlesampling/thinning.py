"""Stein thinning (Riabiz, Chen, Cockayne, Swietach, Niederer, Mackey & Oates 2022, "Optimal Thinning of
MCMC Output", JRSS B): choose ``m`` of ``N`` given points greedily so that the kernelized Stein
discrepancy of the chosen set is as small as possible.

With the Stein kernel ``u_p`` of :mod:`particlesampling.stein_kernel` (the KSD's, here with the IMQ
kernel ``k(x, y) = (1 + |x - y|^2 / h)^(-1/2)``, i.e. Riabiz et al.'s preconditioner ``Gamma = h I``),
the ``t``-th point is

.. math::

    \\pi_t \\in \\arg\\min_{i = 1..N} \\; \\frac{u_p(x_i, x_i)}{2} + \\sum_{j < t} u_p(x_{\\pi_j}, x_i)

(their Algorithm 1; points may be chosen more than once; ties go to the first index, as in their
``stein_thinning`` package). Each step adds one column ``u_p(x_., x_{\\pi_{t-1}})``, ``O(N d)``, so
the whole run costs ``O(m N d)`` time and ``O(N d)`` memory, never an ``N x N`` matrix. The column
is :func:`particlesampling.stein_kernel.stein_kernel_block` on a block of one column, the same code
as the KSD's. ``h``: ``"med"`` (the squared median distance between points), ``"sclmed"`` (that over
``log min(N, 1000)``), ``"id"`` (``h = 1``) or a number; the median is taken over at most 1,000
points spread evenly along the chain, as in the authors' package.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ._backend import centred, check_particles, check_same_shape, constant, device_of, namespace, sqdist
from .kernels import IMQ
from .selection import order_statistics
from .stein_kernel import stein_kernel_block

__all__ = ["stein_thinning", "thinning_bandwidth", "THINNING_BANDWIDTHS"]

THINNING_BANDWIDTHS = ("med", "sclmed", "id")
_MEDIAN_POINTS = 1000


def thinning_bandwidth(points, spec="sclmed"):
    """``h`` of Riabiz et al.'s preconditioner ``Gamma = h I`` for ``points`` (``(N, d)``): a 0-d array.

    ``"med"``: the squared midpoint median of the Euclidean distances between pairs of at most 1,000
    points spread evenly over the rows; ``"sclmed"``: that over ``log(min(N, 1000))``; ``"id"``: 1; a
    positive number: itself.
    """
    xp = namespace(points)
    if isinstance(spec, numbers.Real) and not isinstance(spec, bool):
        if not math.isfinite(spec) or spec <= 0:
            raise ValueError(f"expected a bandwidth > 0 (finite), received {spec!r}")
        return constant(xp, float(spec), points)
    if spec not in THINNING_BANDWIDTHS:
        raise ValueError(f"expected bandwidth as one of {THINNING_BANDWIDTHS} or a number > 0, received {spec!r}")
    if spec == "id":
        return constant(xp, 1.0, points)
    n = points.shape[0]
    if n < 2:
        raise ValueError(f"the {spec!r} bandwidth needs at least 2 points, received {n}")
    m = min(n, _MEDIAN_POINTS)
    rows = xp.asarray(np.linspace(0, n - 1, m, dtype=np.int64), device=device_of(points))
    sub = xp.take(points, rows, axis=0)
    dist = xp.reshape(xp.sqrt(sqdist(sub, xp=xp)), (-1,))
    # sorted, the m zeros of the diagonal come first; the m (m - 1) pair distances (each pair twice,
    # which leaves the midpoint median unchanged) follow
    half = m * (m - 1) // 2
    lo, hi = order_statistics(dist, [m + half - 1, m + half], xp=xp)
    med2 = (0.5 * (lo + hi)) ** 2
    if float(med2) <= 0:
        raise ValueError(f"the {spec!r} bandwidth is 0: most points coincide; pass a number instead")
    return med2 / math.log(m) if spec == "sclmed" else med2


def stein_thinning(points, scores, m: int, *, bandwidth="sclmed"):
    """Indices of ``m`` points chosen greedily to minimise the KSD (module docstring).

    Parameters
    ----------
    points : array, shape (N, d)
        E.g. an MCMC chain, one state per row; any Array-API namespace (the selection runs there).
    scores : array, shape (N, d)
        ``grad log p`` at each point; same namespace, dtype and device.
    m : int >= 1
        Number of points to choose (repeats allowed, so ``m > N`` is fine).
    bandwidth : "sclmed" (default), "med", "id" or float > 0
        ``h`` of the IMQ kernel ``(1 + |x - y|^2 / h)^(-1/2)`` (:func:`thinning_bandwidth`).

    Returns
    -------
    indices : numpy.ndarray of int64, shape (m,)
        Rows of ``points`` in the order chosen; ``points[indices]`` is the thinned set. One host
        synchronisation per chosen point (its index).
    """
    xp = namespace(points, scores)
    check_particles(points, "points", xp=xp)
    check_particles(scores, "scores", xp=xp)
    check_same_shape(points, scores, "points", "scores")
    if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 1:
        raise ValueError(f"expected m as a positive integer, received {m!r}")
    h = thinning_bandwidth(points, bandwidth)
    kernel = IMQ(c=1.0, beta=-0.5)
    n, d = points.shape
    points = centred(xp, points)  # the Stein kernel is translation invariant; centring keeps float32 accurate
    xx = xp.sum(points * points, axis=1)
    sx = xp.sum(scores * points, axis=1)  # a_i = s_i . x_i
    # u_p(x_i, x_i) = f(0) |s_i|^2 - (2/h) f'(0) d: the column formula at distance 0
    objective = 0.5 * stein_kernel_block(kernel, xp.zeros_like(xx), xp.sum(scores * scores, axis=1),
                                         xp.zeros_like(xx), h, d)
    chosen = []
    for _ in range(int(m)):
        j = int(xp.argmin(objective))
        chosen.append(j)
        xj, sj = points[j, :], scores[j, :]
        sq = xp.clip(xx + xx[j] - 2.0 * (points @ xj), min=0.0)
        cross = scores @ xj + points @ sj - sx - sx[j]  # -(s_i - s_j) . (x_i - x_j)
        objective = objective + stein_kernel_block(kernel, sq, scores @ sj, cross, h, d)
    return np.asarray(chosen, dtype=np.int64)
