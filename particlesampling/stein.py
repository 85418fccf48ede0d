"""The Stein variational direction (Liu & Wang 2016, eq. 8), as a pure function.

.. math::

    \\phi(x_i) = \\frac{1}{n} \\sum_j \\big[ k(x_j, x_i) \\nabla \\log p(x_j)
                 + r \\nabla_{x_j} k(x_j, x_i) \\big]
               = \\frac{1}{n} (K S + r R)_i

with ``K`` the Gram matrix, ``S`` the scores, ``R`` the repulsion (see :mod:`particlesampling.kernels`)
and ``r`` the ``repulsion`` weight (1 for SVGD proper; the repulsive-attention paper's ``alpha`` = 0.01).
One Gram matrix, two matrix products and a row sum: ``O(n^2 d)`` time and ``O(n^2 + n d)`` memory;
above a memory budget the rows are processed in blocks (:mod:`particlesampling.tiled`).
"""

from __future__ import annotations

from .stein_terms import SteinInfo, assemble_direction, check_repulsion, check_stein_inputs, stein_terms
from .tiled import needs_tiling, tiled_stein_direction_with_info

__all__ = ["stein_direction", "stein_direction_with_info", "SteinInfo"]


def stein_direction_with_info(particles, scores, kernel=None, bandwidth=None, repulsion: float = 1.0,
                              *, sq=None, memory_budget=None):
    """Stein direction and :class:`SteinInfo`; see :func:`stein_direction` for the arguments.

    ``sq`` may pass a precomputed ``sqdist(particles)`` to share it with other computations of the
    same step (a KSD, say).
    """
    xp = check_stein_inputs(particles, scores, repulsion)
    repulsion = check_repulsion(repulsion)
    if sq is None and needs_tiling(particles, memory_budget):
        return tiled_stein_direction_with_info(particles, scores, kernel, bandwidth, repulsion,
                                               memory_budget=memory_budget)
    t = stein_terms(particles, scores, kernel, bandwidth, sq=sq)
    return assemble_direction(xp, t.driving, t.repulsion, repulsion, t.bandwidth, t.mean_kernel)


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
        Weight of the repulsive term (1 for SVGD).
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
