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

Gram form (derivation). Let ``k(x, y) = f(u)`` with ``u = sum_a (x_a - y_a)^2 w_a`` and ``w = 1/h``
(``h`` a scalar or a ``(d,)`` vector of per-dimension bandwidths). Then, with ``r = x - y``,

* ``grad_x k = 2 f'(u) (w * r)``, ``grad_y k = -2 f'(u) (w * r)``;
* ``d^2 k / dx_a dy_b = -4 f''(u) (w_a r_a)(w_b r_b) - 2 f'(u) w_a delta_ab``, so
  ``tr grad_x grad_y k = -4 f''(u) |w * r|^2 - 2 f'(u) sum_a w_a``;
* the two cross terms add up to ``2 f'(u) C_ij`` with ``C_ij = -(w * (s_i - s_j)) . (x_i - x_j)
  = A_ij + A_ji - a_i - a_j``, where ``A = (S * w) X^T`` and ``a_i = A_ii``.

Hence, with ``K = f(U)``, ``K' = f'(U)``, ``K'' = f''(U)`` elementwise on ``U``,

.. math::

    H = K \\odot S S^T + 2 K' \\odot (C - \\textstyle\\sum_a w_a) - 4 K'' \\odot D_w,
    \\qquad D_w[i, j] = |w \\odot (x_i - x_j)|^2 .

For a scalar ``h`` this is ``H = K * (S S^T) + (2/h) [K' * (C0 - d) - 2 U * K'']`` with
``U = D2 / h`` and ``C0`` the unweighted ``C``: three ``n x n`` Gram products (``D2``, ``S S^T``,
``S X^T``) and elementwise work, ``O(n^2 d)`` time and ``O(n^2)`` memory; no ``n x n x d`` tensor.
A per-dimension ``h`` needs one more distance matrix (``D_w``). Note that rescaling coordinates
``x~ = x / sqrt(h)``, ``s~ = s * sqrt(h)`` and using ``h = 1`` does *not* give the same statistic:
it weights the ``a``-th coordinate's contribution by ``h_a``; the formula above is the exact one.

Defaults follow Gorham & Mackey (2017, Sec. 3): the IMQ kernel ``(1 + |x - y|^2)^(-1/2)``
(``c = 1``, ``beta = -1/2``, ``h = 1``), whose KSD detects non-convergence for distantly dissipative
targets, whereas KSDs with light-tailed kernels such as the RBF can fail to in ``d >= 3``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._backend import check_particles, check_same_shape, device_of, namespace, sqdist
from ..kernels import get_kernel

__all__ = ["ksd", "ksd_squared", "stein_kernel_matrix", "stein_gram_stats", "SteinGramStats"]

_STATISTICS = ("v", "u")


def _check_statistic(statistic: Any) -> str:
    key = statistic.lower() if isinstance(statistic, str) else statistic
    if key not in _STATISTICS:
        raise ValueError(f"expected statistic 'v' (V-statistic) or 'u' (U-statistic), received {statistic!r}")
    return key


def _radial_kernel(kernel: Any):
    kern = get_kernel(kernel)
    if not getattr(kern, "is_radial", False) or not hasattr(kern, "profile"):
        raise TypeError(
            "expected a radial kernel k(x, y) = f(|x - y|^2 / h) with a profile (e.g. 'imq', 'rbf') for "
            f"the KSD, received {type(kern).__name__}"
        )
    return kern


def _cross(xp, x, s):
    """``C[i, j] = -(s_i - s_j) . (x_i - x_j) = A_ij + A_ji - a_i - a_j`` with ``A = S X^T``."""
    a_mat = s @ xp.matrix_transpose(x)
    a = xp.sum(s * x, axis=1)
    return a_mat + xp.matrix_transpose(a_mat) - a[:, None] - a[None, :]


def _reduce(xp, hmat, statistic: str):
    """V- or U-statistic of an ``(n, n)`` Stein kernel matrix."""
    n = hmat.shape[0]
    total = xp.sum(hmat)
    if statistic == "v":
        return total / float(n * n)
    return (total - xp.sum(xp.linalg.diagonal(hmat))) / float(n * (n - 1))


class SteinGramStats(NamedTuple):
    """Bandwidth-independent Gram products of the Stein kernel, for a scalar bandwidth.

    Built once by :func:`stein_gram_stats`; :meth:`stein_matrix` and :meth:`ksd_squared` then cost
    one elementwise ``n x n`` pass per (kernel, bandwidth), which is what an adaptive bandwidth rule
    scanning a grid of ``h`` needs (:class:`particlesampling.bandwidths.MaxKSD`).
    """

    sq: Any  #: (n, n) squared distances ``|x_i - x_j|^2``
    ss: Any  #: (n, n) ``S S^T``
    cross: Any  #: (n, n) ``C[i, j] = -(s_i - s_j) . (x_i - x_j)``
    dim: int  #: d

    def stein_matrix(self, kernel, h):
        """Stein kernel matrix ``H[i, j] = u_p(x_i, x_j)`` for a radial kernel and scalar ``h``.

        Parameters
        ----------
        kernel : str or radial Kernel
        h : float or 0-d array, ``> 0``

        Returns
        -------
        H : array, shape (n, n)
        """
        kern = _radial_kernel(kernel)
        xp = namespace(self.sq)
        h = xp.asarray(h, dtype=self.sq.dtype, device=device_of(self.sq))
        if h.ndim != 0:
            raise ValueError(
                "SteinGramStats handles a scalar bandwidth only; received h of shape "
                f"{tuple(h.shape)} (use ksd_squared(..., bandwidth=h) for per-dimension bandwidths)"
            )
        u = self.sq / h
        f, f1, f2 = kern.profile(u)
        return f * self.ss + (2.0 / h) * (f1 * (self.cross - float(self.dim)) - 2.0 * (u * f2))

    def ksd_squared(self, kernel, h, statistic: str = "v"):
        """Squared KSD (V- or U-statistic) for a radial kernel and scalar ``h``; a 0-d array."""
        statistic = _check_statistic(statistic)
        if statistic == "u" and self.sq.shape[0] < 2:
            raise ValueError("the U-statistic needs n >= 2 particles, received n = 1")
        return _reduce(namespace(self.sq), self.stein_matrix(kernel, h), statistic)


def stein_gram_stats(particles, scores, sq=None) -> SteinGramStats:
    """Gram products shared by the Stein kernel matrices of every scalar bandwidth.

    Parameters
    ----------
    particles : array, shape (n, d)
    scores : array, shape (n, d)
        ``grad log p`` at the particles.
    sq : array, shape (n, n), optional
        Precomputed ``sqdist(particles)``.

    Returns
    -------
    SteinGramStats
    """
    xp = namespace(particles, scores)
    check_same_shape(particles, scores, "particles", "scores")
    # The Stein kernel depends on x only through differences: centring is exact and keeps the Gram
    # products well conditioned when the particles sit far from the origin.
    xc = particles - xp.mean(particles, axis=0)
    if sq is None:
        sq = sqdist(xc, xp=xp)
    ss = scores @ xp.matrix_transpose(scores)
    return SteinGramStats(sq=sq, ss=ss, cross=_cross(xp, xc, scores), dim=int(particles.shape[1]))


def _check_inputs(particles, scores, statistic):
    xp = namespace(particles, scores)
    check_particles(particles, "particles", xp=xp)
    check_particles(scores, "scores", xp=xp)
    check_same_shape(particles, scores, "particles", "scores")
    statistic = _check_statistic(statistic)
    if statistic == "u" and particles.shape[0] < 2:
        raise ValueError(
            f"the U-statistic needs n >= 2 particles, received particles of shape {tuple(particles.shape)}"
        )
    return xp, statistic


def _bandwidth(xp, spec, particles, sq, scores):
    """Bandwidth ``h`` (0-d or ``(d,)``) from a number, a sequence, an array, a name or a rule.

    An array (e.g. the ``bandwidth`` a sampler reported in its step info) is used as is, after a
    shape check and a positivity check (one device synchronisation, as for the finiteness check);
    anything else goes through :func:`particlesampling.bandwidths.get_bandwidth`.
    """
    d = particles.shape[1]
    from_array = hasattr(spec, "shape") and hasattr(spec, "dtype")
    if from_array:
        h = xp.asarray(spec, dtype=particles.dtype, device=device_of(particles))
    else:
        from ..bandwidths import get_bandwidth  # lazy: bandwidths imports this module lazily too

        h = get_bandwidth(spec)(particles, sq, scores)
        h = xp.asarray(h, dtype=particles.dtype, device=device_of(particles))
    if not (h.ndim == 0 or (h.ndim == 1 and h.shape[0] == d)):
        raise ValueError(f"expected a bandwidth of shape () or ({d},), received shape {tuple(h.shape)}")
    if from_array and not bool(xp.all(h > 0)):
        raise ValueError("expected a positive, finite bandwidth h, received an array with entries <= 0 or nan")
    return h


def _stein_matrix(particles, scores, kernel, bandwidth, xp):
    """``(H, h)``: Stein kernel matrix and the bandwidth used."""
    kern = _radial_kernel(kernel)
    xc = particles - xp.mean(particles, axis=0)
    sq = sqdist(xc, xp=xp)
    h = _bandwidth(xp, bandwidth, particles, sq, scores)
    if h.ndim == 0:
        ss = scores @ xp.matrix_transpose(scores)
        stats = SteinGramStats(sq=sq, ss=ss, cross=_cross(xp, xc, scores), dim=int(particles.shape[1]))
        return stats.stein_matrix(kern, h), h
    # per-dimension bandwidth: u = sum_a w_a (x_a - y_a)^2 with w = 1/h (see module docstring)
    w = 1.0 / h
    u = sqdist(xc * xp.sqrt(w), xp=xp)
    d_w = sqdist(xc * w, xp=xp)
    cross_w = _cross(xp, xc, scores * w)
    f, f1, f2 = kern.profile(u)
    ss = scores @ xp.matrix_transpose(scores)
    hmat = f * ss + 2.0 * (f1 * (cross_w - xp.sum(w)) - 2.0 * (f2 * d_w))
    return hmat, h


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
    value = xp.asarray(_reduce(xp, hmat, statistic))
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
