"""The Stein variational direction (Liu & Wang 2016, eq. 8), as a pure function.

.. math::

    \\phi(x_i) = \\frac{1}{n} \\sum_j \\big[ k(x_j, x_i) \\nabla \\log p(x_j)
                 + r \\nabla_{x_j} k(x_j, x_i) \\big]
               = \\frac{1}{n} (K S + r R)_i

with ``K`` the Gram matrix, ``S`` the scores, ``R`` the repulsion (see :mod:`particlesampling.kernels`)
and ``r`` the ``repulsion`` weight (1 for SVGD proper; the repulsive-attention paper's ``alpha`` = 0.01).
One Gram matrix, two matrix products and a row sum: ``O(n^2 d)`` time and ``O(n^2 + n d)`` memory;
above a memory budget the rows are processed in blocks (:mod:`particlesampling.tiled`).

:func:`stein_direction_batched` computes the direction of ``B`` independent systems stacked as
``(B, n, d)`` in one pass of batched matrix products (``O(B n^2 d)`` time, ``O(B n^2)`` memory), each
system with its own bandwidth: the same result as ``B`` calls of :func:`stein_direction`.
"""

from __future__ import annotations

from .stein_terms import SteinInfo, assemble_direction, check_repulsion, check_stein_inputs, stein_terms
from .tiled import needs_tiling, tiled_stein_direction_with_info

__all__ = ["stein_direction", "stein_direction_with_info", "stein_direction_batched",
           "stein_direction_batched_with_info", "SteinInfo"]


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


def stein_direction_batched_with_info(particles, scores, kernel=None, bandwidth=None, repulsion: float = 1.0):
    """Stein directions of a stack of systems and their :class:`SteinInfo`; see
    :func:`stein_direction_batched`. Each info field has a leading ``(B,)`` axis: ``bandwidth``
    ``(B,)`` (``(B, d)`` per dimension), ``mean_kernel``, ``driving_norm``, ``repulsion_norm`` ``(B,)``."""
    xp = check_stein_inputs(particles, scores, repulsion, batched=True)
    repulsion = check_repulsion(repulsion)
    t = stein_terms(particles, scores, kernel, bandwidth)
    return assemble_direction(xp, t.driving, t.repulsion, repulsion, t.bandwidth, t.mean_kernel)


def stein_direction_batched(particles, scores, kernel=None, bandwidth=None, repulsion: float = 1.0):
    """The SVGD direction of ``B`` independent particle systems at once (Liu & Wang 2016, eq. 8).

    For every system ``b``: ``phi[b] = (K_b S_b + repulsion * R_b) / n``, ``K_b`` the Gram matrix of
    ``particles[b]`` with the bandwidth ``h_b`` that the rule gives on ``particles[b]`` alone (its
    own median, say), exactly as ``stein_direction(particles[b], scores[b], ...)``, but in one pass
    of batched matrix products instead of a loop (the attention adapter's groups of heads, random
    batches of :mod:`particlesampling.random_batch`).

    Parameters
    ----------
    particles : array, shape (B, n, d)
        ``B`` systems of ``n`` particles in ``d`` dimensions, any Array-API namespace.
    scores : array, shape (B, n, d)
        ``grad log p_b`` at each particle of system ``b``; same namespace, dtype and device.
    kernel, bandwidth, repulsion :
        As for :func:`stein_direction`, shared by the systems. Every built-in kernel and bandwidth
        rule is evaluated batched; a kernel or rule defined elsewhere (a plain callable bandwidth,
        say) is applied system by system, with the same results.

    Returns
    -------
    phi : array, shape (B, n, d), same namespace, dtype and device as ``particles``.
    """
    return stein_direction_batched_with_info(particles, scores, kernel, bandwidth, repulsion)[0]
