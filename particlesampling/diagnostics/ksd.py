"""Kernelized Stein discrepancy (KSD) for radial kernels, in Gram-matrix form.

For a target ``p`` with score ``s = grad log p`` and a kernel ``k``, the Stein kernel is
(Liu, Lee & Jordan 2016, Sec. 3; Chwialkowski, Strathmann & Gretton 2016; Gorham & Mackey 2017,
with the Langevin Stein operator)

.. math::

    u_p(x, y) = s(x)^T s(y) k(x, y) + s(x)^T \\nabla_y k(x, y) + \\nabla_x k(x, y)^T s(y)
                + \\operatorname{tr} \\nabla_x \\nabla_y k(x, y),

and for particles ``x_1..x_n`` the squared KSD is estimated by the V-statistic
``(1/n^2) sum_{i,j} u_p(x_i, x_j)`` (the squared KSD between ``p`` and the empirical measure; always
``>= 0``) or the U-statistic ``1/(n(n-1)) sum_{i != j} u_p(x_i, x_j)`` (unbiased for the population
value; can be negative).

The Stein kernel is evaluated in Gram-matrix form (derivation in :mod:`particlesampling.stein_kernel`):
three ``n x n`` Gram products and elementwise work, ``O(n^2 d)`` time and ``O(n^2)`` memory; a
per-dimension ``h`` needs one more distance matrix. Note that rescaling coordinates
``x~ = x / sqrt(h)``, ``s~ = s * sqrt(h)`` and using ``h = 1`` does *not* give the same statistic:
it weights the ``a``-th coordinate's contribution by ``h_a``; the formula used is the exact one.

Defaults follow Gorham & Mackey (2017, Sec. 3): the IMQ kernel ``(1 + |x - y|^2)^(-1/2)``
(``c = 1``, ``beta = -1/2``, ``h = 1``), whose KSD detects non-convergence for distantly dissipative
targets, whereas KSDs with light-tailed kernels such as the RBF can fail to in ``d >= 3``.
"""

from __future__ import annotations

from .._backend import centred, check_particles, check_same_shape, namespace, sqdist
from ..bandwidths import bandwidth_value
from ..stein_kernel import (
    SteinGramStats,
    check_statistic,
    cross_term,
    radial_kernel,
    reduce_statistic,
    stein_gram_stats,
    weighted_stein_kernel_block,
)

__all__ = ["ksd", "ksd_squared", "stein_kernel_matrix", "stein_gram_stats", "SteinGramStats"]


def _check_inputs(particles, scores, statistic):
    xp = namespace(particles, scores)
    check_particles(particles, "particles", xp=xp)
    check_particles(scores, "scores", xp=xp)
    check_same_shape(particles, scores, "particles", "scores")
    statistic = check_statistic(statistic)
    if statistic == "u" and particles.shape[0] < 2:
        raise ValueError(
            f"the U-statistic needs n >= 2 particles, received particles of shape {tuple(particles.shape)}"
        )
    return xp, statistic


def _stein_matrix(particles, scores, kernel, bandwidth, xp):
    """``(H, h)``: Stein kernel matrix and the bandwidth used."""
    kern = radial_kernel(kernel)
    xc = centred(xp, particles)
    sq = sqdist(xc, xp=xp)
    h = bandwidth_value(bandwidth, particles, sq, scores)
    if h.ndim == 0:
        return stein_gram_stats(particles, scores, sq).stein_matrix(kern, h), h
    # per-dimension bandwidth: u = sum_a w_a (x_a - y_a)^2 with w = 1/h
    w = 1.0 / h
    u = sqdist(xc * xp.sqrt(w), xp=xp)
    d_w = sqdist(xc * w, xp=xp)
    cross_w = cross_term(xp, xc, scores * w)
    ss = scores @ xp.matrix_transpose(scores)
    return weighted_stein_kernel_block(kern, u, ss, cross_w, d_w, xp.sum(w)), h


def stein_kernel_matrix(particles, scores, kernel="imq", bandwidth=1.0):
    """Stein kernel matrix ``H[i, j] = u_p(x_i, x_j)`` (Liu, Lee & Jordan 2016, Sec. 3).

    Parameters
    ----------
    particles : array, shape (n, d)
    scores : array, shape (n, d)
        ``grad log p(particles)``; same namespace, dtype and device.
    kernel : str or radial Kernel
        ``"imq"`` (default, ``c = 1``, ``beta = -1/2``) or ``"rbf"``, or a kernel object with a
        ``profile``.
    bandwidth : float, sequence of d floats, array, str, BandwidthRule or None
        ``h`` in ``k = f(|x - y|^2 / h)``; default ``1.0``; a ``(d,)`` value is a per-dimension
        bandwidth; a name or rule is evaluated on the particles (``None`` is the library default
        median rule).

    Returns
    -------
    H : array, shape (n, n), symmetric.
    """
    xp, _ = _check_inputs(particles, scores, "v")
    return _stein_matrix(particles, scores, kernel, bandwidth, xp)[0]


def ksd_squared(particles, scores, kernel="imq", bandwidth=1.0, statistic="v", return_matrix=False):
    """Squared kernelized Stein discrepancy, the raw V- or U-statistic.

    .. math::

        \\mathrm{KSD}^2_V = \\frac{1}{n^2} \\sum_{i, j} u_p(x_i, x_j), \\qquad
        \\mathrm{KSD}^2_U = \\frac{1}{n(n-1)} \\sum_{i \\ne j} u_p(x_i, x_j)

    (Liu, Lee & Jordan 2016, Sec. 3; Gorham & Mackey 2017, Sec. 2). The V-statistic is the exact
    squared KSD of the empirical measure and is ``>= 0`` (up to rounding); the U-statistic is
    unbiased for the population ``KSD^2(q, p)`` of the sampling distribution ``q`` and can be
    negative. For exact samples from ``p``: ``E[U] = 0`` and
    ``E[V] = E_p[u_p(x, x)] / n = (f(0) E|s|^2 - 2 f'(0) sum_a 1/h_a) / n``, so the KSD of exact
    samples shrinks like ``1/sqrt(n)``.

    Parameters
    ----------
    particles : array, shape (n, d)
        Any Array-API namespace (NumPy, PyTorch CPU/GPU, array_api_strict). Must be finite.
    scores : array, shape (n, d)
        ``grad log p`` at each particle; same namespace, dtype and device. Must be finite.
    kernel : str or radial Kernel
        ``"imq"`` (default: ``(1 + u)^(-1/2)``, Gorham & Mackey's choice, which detects
        non-convergence) or ``"rbf"``; any kernel with ``is_radial`` and ``profile``.
    bandwidth : float, sequence of d floats, array, str, BandwidthRule or None
        ``h`` in ``k = f(|x - y|^2 / h)``; default ``1.0``. A ``(d,)`` value is per dimension
        (``u = sum_a (x_a - y_a)^2 / h_a``). A name (``"liu_wang"``, ``"blackjax"``, ...) or rule is
        evaluated on the particles; ``None`` is the library default median rule. Note that a KSD
        with a data-dependent bandwidth is no longer a fixed discrepancy across particle sets.
    statistic : {"v", "u"}
        V-statistic (default) or U-statistic (needs ``n >= 2``).
    return_matrix : bool
        Also return the Stein kernel matrix ``H`` (``(n, n)``).

    Returns
    -------
    ksd2 : 0-d array
        Same namespace, dtype and device as ``particles`` (no host synchronisation).
    H : array, shape (n, n)
        Only if ``return_matrix``.

    Raises
    ------
    ValueError
        Shape mismatch, non-finite values, unknown statistic, ``n < 2`` for the U-statistic.
    TypeError
        Non-floating or mismatched dtypes, mixed array libraries, a non-radial kernel.

    Notes
    -----
    Cost ``O(n^2 d)`` time and ``O(n^2)`` memory (a few ``n x n`` temporaries).
    """
    xp, statistic = _check_inputs(particles, scores, statistic)
    hmat, _ = _stein_matrix(particles, scores, kernel, bandwidth, xp)
    n = hmat.shape[0]
    value = xp.asarray(reduce_statistic(xp, xp.sum(hmat), xp.sum(xp.linalg.diagonal(hmat)), n, statistic))
    return (value, hmat) if return_matrix else value


def ksd(particles, scores, kernel="imq", bandwidth=1.0, statistic="v", return_matrix=False):
    """Kernelized Stein discrepancy ``sqrt(max(KSD^2, 0))``.

    Same arguments as :func:`ksd_squared`. With ``statistic="v"`` (default) this is the KSD between
    ``p`` and the empirical measure of the particles (the V-statistic is non-negative; the clamp
    only absorbs rounding). With ``statistic="u"`` the unbiased U-statistic is clamped at zero before
    the square root, which makes the result biased upwards; use :func:`ksd_squared` for the raw,
    possibly negative, unbiased value (e.g. to average over replicates).

    Returns
    -------
    ksd : 0-d array
        Same namespace, dtype and device as ``particles``.
    H : array, shape (n, n)
        Only if ``return_matrix``.
    """
    xp = namespace(particles, scores)
    out = ksd_squared(particles, scores, kernel, bandwidth, statistic, return_matrix)
    value, hmat = out if return_matrix else (out, None)
    value = xp.asarray(xp.sqrt(xp.clip(value, min=0.0)))  # xp.asarray: 0-d array, not a NumPy scalar
    return (value, hmat) if return_matrix else value
