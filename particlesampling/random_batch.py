"""Random-batch Stein direction (Li, Li, Liu & Liu 2020, "A stochastic version of Stein variational
gradient descent for efficient sampling").

A fresh uniform permutation per step (:func:`particlesampling.random.permutation`, a pure function of
``(seed, step)``) splits the ``n`` particles into ``m = max(n // b, 1)`` batches of near-equal size
(``numpy.array_split``), so every batch has between ``b`` and ``2b - 1`` particles (never a lone
particle without interactions). Writing the SVGD sum as the self term plus the interactions,
particle ``i`` in batch ``C`` moves along

    phi_i = (1/n) k(x_i, x_i) s_i
            + (n - 1) / (n (|C| - 1)) sum_{j in C, j != i} [k(x_j, x_i) s_j + r grad_{x_j} k(x_j, x_i)],

with ``r`` the repulsion weight: an unbiased estimate of the full direction (Liu & Wang 2016, eq. 8) for a fixed bandwidth (a
bandwidth rule is applied within each batch). Cost ``O(n b d)`` time and ``O(b^2)`` memory per batch.
"""

from __future__ import annotations

import numpy as np

from ._backend import device_of, namespace
from .random import permutation
from .stein_terms import stein_terms

__all__ = ["random_batch_direction"]


def random_batch_direction(particles, scores, batch_size: int, *, seed: int, step: int, kernel=None,
                           bandwidth=None, repulsion: float = 1.0):
    """Random-batch Stein direction (module docstring).

    Parameters
    ----------
    particles, scores : arrays, shape (n, d)
    batch_size : int >= 2
        ``b``; the batches hold between ``b`` and ``2b - 1`` particles.
    seed, step : int
        Select the permutation of this step.
    kernel, bandwidth, repulsion :
        As for :func:`particlesampling.stein_direction`.

    Returns
    -------
    phi : array, shape (n, d)
    bandwidth : 0-d array, the mean over batches of the bandwidth used
    mean_kernel : 0-d array, the mean over batches of the mean off-diagonal kernel value
    """
    xp = namespace(particles, scores)
    n = particles.shape[0]
    m = max(n // batch_size, 1)
    perm = permutation(seed, step, n)
    dev = device_of(particles)
    parts, hs, mks = [], [], []
    for idx_np in np.array_split(perm, m):
        idx = xp.asarray(idx_np, device=dev)
        xb, sb = xp.take(particles, idx, axis=0), xp.take(scores, idx, axis=0)
        t = stein_terms(xb, sb, kernel, bandwidth)
        self_term = t.kernel_diagonal[:, None] * sb
        size = xb.shape[0]
        inter = t.driving + repulsion * t.repulsion - self_term
        scale = (n - 1) / (n * (size - 1))
        parts.append(self_term / float(n) + scale * inter)
        hs.append(xp.mean(t.bandwidth))
        mks.append(t.mean_kernel)
    phi_perm = xp.concat(parts, axis=0)
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(n)
    phi = xp.take(phi_perm, xp.asarray(inverse, device=dev), axis=0)
    return phi, xp.mean(xp.stack(hs)), xp.mean(xp.stack(mks))
