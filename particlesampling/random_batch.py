"""Random-batch Stein direction (Li, Li, Liu & Liu 2020, "A stochastic version of Stein variational
gradient descent for efficient sampling").

A fresh uniform permutation per step (:func:`particlesampling.random.permutation`, a pure function of
``(seed, step)``) splits the ``n`` particles into ``m = max(n // b, 1)`` batches of near-equal size
(``numpy.array_split``: with ``n = q m + r``, the first ``r`` batches hold ``q + 1`` particles and
the other ``m - r`` hold ``q``), so every batch has between ``b`` and ``2b - 1`` particles (never a
lone particle without interactions). Writing the SVGD sum as the self term plus the interactions,
particle ``i`` in batch ``C`` moves along

    phi_i = (1/n) k(x_i, x_i) s_i
            + (n - 1) / (n (|C| - 1)) sum_{j in C, j != i} [k(x_j, x_i) s_j + r grad_{x_j} k(x_j, x_i)],

with ``r`` the repulsion weight: an unbiased estimate of the full direction (Liu & Wang 2016, eq. 8) for a fixed bandwidth (a
bandwidth rule is applied within each batch). Cost ``O(n b d)`` time and ``O(n b)`` memory per step.

Vectorised: the batches of one size are stacked as ``(m_size, size, d)`` and their terms come from one
call of the batched :func:`particlesampling.stein_terms.stein_terms` (batched matrix products, one
bandwidth per batch), so a step makes at most two such calls whatever the number of batches; there is
no Python loop over batches (except inside bandwidth rules and kernels that are not batchable, which
:func:`~particlesampling.stein_terms.stein_terms` applies batch by batch).
"""

from __future__ import annotations

import numpy as np

from ._backend import device_of, namespace
from .random import permutation
from .stein_terms import check_finite_inputs, stein_terms

__all__ = ["random_batch_direction", "batch_layout"]


def batch_layout(n: int, batch_size: int):
    """The batches of ``numpy.array_split(range(n), max(n // batch_size, 1))`` as at most two blocks
    of equal-size batches: a list of ``(start, count, size)``, meaning positions
    ``start .. start + count * size - 1`` form ``count`` consecutive batches of ``size``."""
    m = max(n // batch_size, 1)
    q, r = divmod(n, m)
    blocks = []
    if r:
        blocks.append((0, r, q + 1))
    if m - r:
        blocks.append((r * (q + 1), m - r, q))
    return blocks


def random_batch_direction(particles, scores, batch_size: int, *, seed: int, step: int, kernel=None,
                           bandwidth=None, repulsion: float = 1.0, check_finite: bool = True):
    """Random-batch Stein direction (module docstring).

    Parameters
    ----------
    particles, scores : arrays, shape (n, d)
    batch_size : int >= 2
        ``b``; the batches hold between ``b`` and ``2b - 1`` particles.
    seed, step : int
        Select the permutation of this step.
    kernel, bandwidth, repulsion, check_finite :
        As for :func:`particlesampling.stein_direction`.

    Returns
    -------
    phi : array, shape (n, d)
    bandwidth : 0-d array, the mean over batches of the bandwidth used (of its mean over dimensions
        for per-dimension bandwidths)
    mean_kernel : 0-d array, the mean over batches of the mean off-diagonal kernel value
    """
    xp = namespace(particles, scores)
    if not isinstance(check_finite, bool):
        raise TypeError(f"expected check_finite as a bool, received {check_finite!r}")
    if check_finite:
        check_finite_inputs(xp, particles, scores, where="the random-batch Stein direction")
    n, d = particles.shape
    perm = permutation(seed, step, n)
    dev = device_of(particles)
    parts, hs, mks = [], [], []
    for start, count, size in batch_layout(n, batch_size):
        idx = xp.asarray(perm[start:start + count * size], device=dev)
        xb = xp.reshape(xp.take(particles, idx, axis=0), (count, size, d))
        sb = xp.reshape(xp.take(scores, idx, axis=0), (count, size, d))
        t = stein_terms(xb, sb, kernel, bandwidth)
        self_term = t.kernel_diagonal[..., None] * sb
        inter = t.driving + repulsion * t.repulsion_term - self_term
        scale = (n - 1) / (n * (size - 1))
        parts.append(xp.reshape(self_term / float(n) + scale * inter, (count * size, d)))
        hs.append(t.bandwidth if t.bandwidth.ndim == 1 else xp.mean(t.bandwidth, axis=-1))
        mks.append(t.mean_kernel)
    phi_perm = xp.concat(parts, axis=0)
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(n)
    phi = xp.take(phi_perm, xp.asarray(inverse, device=dev), axis=0)
    return phi, xp.mean(xp.concat(hs, axis=0)), xp.mean(xp.concat(mks, axis=0))
