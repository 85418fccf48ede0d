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

from .stein_terms import SteinInfo, assemble_direction, check_finite_inputs, check_repulsion, check_stein_inputs, \
    stein_terms
from .memory_budget import AUTO, budget_bytes
from .tiled import tiled_stein_direction_with_info, tiling_chosen

__all__ = ["stein_direction", "stein_direction_with_info", "stein_direction_batched",
           "stein_direction_batched_with_info", "SteinInfo"]


def stein_direction_with_info(particles, scores, kernel=None, bandwidth=None, repulsion: float = 1.0,
                              *, sq=None, memory_budget=AUTO, check_finite: bool = True):
    """Stein direction and :class:`SteinInfo`; see :func:`stein_direction` for the arguments.

    ``sq`` may pass a precomputed ``sqdist(particles)`` to share it with other computations of the
    same step (a KSD, say); the untiled path is then taken whatever the budget.
    """
    xp = check_stein_inputs(particles, scores, repulsion)
    repulsion = check_repulsion(repulsion)
    if _check_flag(check_finite):
        check_finite_inputs(xp, particles, scores)
    if sq is None and tiling_chosen(particles, kernel, bandwidth, memory_budget):
        return tiled_stein_direction_with_info(particles, scores, kernel, bandwidth, repulsion,
                                               memory_budget=budget_bytes(particles, memory_budget),
                                               check_finite=False)
    t = stein_terms(particles, scores, kernel, bandwidth, sq=sq)
    return assemble_direction(xp, t.driving, t.repulsion_term, repulsion, t.bandwidth, t.mean_kernel)


def _check_flag(check_finite) -> bool:
    if not isinstance(check_finite, bool):
        raise TypeError(f"expected check_finite as a bool, received {check_finite!r}")
    return check_finite


def stein_direction(particles, scores, kernel=None, bandwidth=None, repulsion: float = 1.0, *,
                    memory_budget=AUTO, check_finite: bool = True):
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
    memory_budget : "auto", int or None
        Bytes allowed for the ``n x n`` temporaries (:mod:`particlesampling.memory_budget`). The
        default ``"auto"`` derives a budget from the machine (CPU: 1/16 of the physical memory,
        between 64 MiB and 1 GiB; CUDA: a quarter of the free device memory). When the untiled path
        would need more (about one ``n x n`` matrix for the RBF kernel, three for others), the rows
        are processed in blocks that fit the budget (:mod:`particlesampling.tiled`: same result to
        float rounding, ``O(n * tile)`` memory, radial kernels and scalar median / fixed
        bandwidths; under ``"auto"`` a call those cannot serve stays untiled, under a number it
        raises). ``None``: no budget, always untiled.
    check_finite : bool
        If true (the default), NaN or infinite particles or scores raise
        :class:`~particlesampling.NonFiniteError` naming the offending rows
        (:func:`~particlesampling.stein_terms.check_finite_inputs`: one sum over each input and one
        device synchronisation; its cost is in the floor table of ``docs/benchmarks.md``). Pass
        False when the inputs are checked upstream (the samplers do: their run loop checks every
        step); non-finite inputs then propagate (NaN). Under ``jax.jit`` there are no values to
        check and the check is skipped.

    Returns
    -------
    phi : array, shape (n, d), same namespace, dtype and device as ``particles``.
    """
    return stein_direction_with_info(particles, scores, kernel, bandwidth, repulsion,
                                     memory_budget=memory_budget, check_finite=check_finite)[0]


def stein_direction_batched_with_info(particles, scores, kernel=None, bandwidth=None, repulsion: float = 1.0, *,
                                      check_finite: bool = True):
    """Stein directions of a stack of systems and their :class:`SteinInfo`; see
    :func:`stein_direction_batched`. Each info field has a leading ``(B,)`` axis: ``bandwidth``
    ``(B,)`` (``(B, d)`` per dimension), ``mean_kernel``, ``driving_norm``, ``repulsion_norm`` ``(B,)``."""
    xp = check_stein_inputs(particles, scores, repulsion, batched=True)
    repulsion = check_repulsion(repulsion)
    if _check_flag(check_finite):
        check_finite_inputs(xp, particles, scores, where="the batched Stein direction")
    t = stein_terms(particles, scores, kernel, bandwidth)
    return assemble_direction(xp, t.driving, t.repulsion_term, repulsion, t.bandwidth, t.mean_kernel)


def stein_direction_batched(particles, scores, kernel=None, bandwidth=None, repulsion: float = 1.0, *,
                            check_finite: bool = True):
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
    check_finite : bool
        As for :func:`stein_direction`; offending rows are named ``(system, row)``.

    Returns
    -------
    phi : array, shape (B, n, d), same namespace, dtype and device as ``particles``.
    """
    return stein_direction_batched_with_info(particles, scores, kernel, bandwidth, repulsion,
                                             check_finite=check_finite)[0]
