"""The Langevin Stein kernel of a radial kernel, in Gram-matrix form.

For a target ``p`` with score ``s = grad log p`` and a kernel ``k`` the Stein kernel is (Liu, Lee &
Jordan 2016, Sec. 3; Chwialkowski, Strathmann & Gretton 2016; Gorham & Mackey 2017)

.. math::

    u_p(x, y) = s(x)^T s(y) k(x, y) + s(x)^T \\nabla_y k(x, y) + \\nabla_x k(x, y)^T s(y)
                + \\operatorname{tr} \\nabla_x \\nabla_y k(x, y).

Derivation of the Gram form. Let ``k(x, y) = f(u)`` with ``u = sum_a (x_a - y_a)^2 w_a`` and
``w = 1/h`` (``h`` a scalar or a ``(d,)`` vector of per-dimension bandwidths). With ``r = x - y``:

* ``grad_x k = 2 f'(u) (w * r)``, ``grad_y k = -2 f'(u) (w * r)``;
* ``d^2 k / dx_a dy_b = -4 f''(u) (w_a r_a)(w_b r_b) - 2 f'(u) w_a delta_ab``, so
  ``tr grad_x grad_y k = -4 f''(u) |w * r|^2 - 2 f'(u) sum_a w_a``;
* the two cross terms add up to ``2 f'(u) C_ij`` with ``C_ij = -(w * (s_i - s_j)) . (x_i - x_j)
  = A_ij + A_ji - a_i - a_j``, where ``A = (S * w) X^T`` and ``a_i = A_ii``.

Hence, with ``K = f(U)``, ``K' = f'(U)``, ``K'' = f''(U)`` elementwise on ``U``,

.. math::

    H = K \\odot S S^T + 2 K' \\odot (C - \\textstyle\\sum_a w_a) - 4 K'' \\odot D_w,
    \\qquad D_w[i, j] = |w \\odot (x_i - x_j)|^2 .

(:func:`weighted_stein_kernel_block`). For a scalar ``h`` this is
``H = K * (S S^T) + (2/h) [K' * (C0 - d) - 2 U * K'']`` with ``U = D2 / h`` and ``C0`` the unweighted
``C`` (:func:`stein_kernel_block`): three Gram products (``D2``, ``S S^T``,
``S X^T``) and elementwise work, ``O(n^2 d)`` time; no ``n x n x d`` tensor. The KSD
(:mod:`particlesampling.diagnostics.ksd`), its tiled form (:mod:`particlesampling.tiled`) and the
adaptive bandwidth :class:`particlesampling.bandwidths.MaxKSD` all evaluate ``H`` through this module.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ._backend import centred, check_same_shape, device_of, namespace, sqdist
from .kernels import get_kernel

__all__ = ["radial_kernel", "cross_term", "stein_kernel_block", "weighted_stein_kernel_block", "stein_kernel_diagonal", "reduce_statistic",
           "check_statistic", "SteinGramStats", "stein_gram_stats"]

_STATISTICS = ("v", "u")


def check_statistic(statistic: Any) -> str:
    """``"v"`` (V-statistic) or ``"u"`` (U-statistic); ValueError otherwise."""
    key = statistic.lower() if isinstance(statistic, str) else statistic
    if key not in _STATISTICS:
        raise ValueError(f"expected statistic 'v' (V-statistic) or 'u' (U-statistic), received {statistic!r}")
    return key


def radial_kernel(kernel: Any):
    """Resolve ``kernel`` and check that it is radial with a profile ``(f, f', f'')``."""
    kern = get_kernel(kernel)
    if not getattr(kern, "is_radial", False) or not hasattr(kern, "profile"):
        raise TypeError(
            "expected a radial kernel k(x, y) = f(|x - y|^2 / h) with a profile (e.g. 'imq', 'rbf') for "
            f"the Stein kernel, received {type(kern).__name__}"
        )
    return kern


def cross_term(xp, x, s, rows=None, *, a=None):
    """``C[i, j] = -(s_i - s_j) . (x_i - x_j) = A_ij + A_ji - a_i - a_j`` with ``A = S X^T``, ``a_i = A_ii``.

    ``x``, ``s``: ``(n, d)``. ``rows = (lo, hi)`` gives rows ``lo .. hi - 1`` only (a ``(hi - lo, n)``
    block, two products); the whole matrix (one product and its transpose, exactly symmetric)
    otherwise. ``a`` may pass the precomputed diagonal.
    """
    if a is None:
        a = xp.sum(s * x, axis=-1)
    if rows is None:  # leading batch axes (a stack of systems) allowed here
        a_mat = s @ xp.matrix_transpose(x)
        return a_mat + xp.matrix_transpose(a_mat) - a[..., :, None] - a[..., None, :]
    lo, hi = rows
    return (s[lo:hi, :] @ xp.matrix_transpose(x) + x[lo:hi, :] @ xp.matrix_transpose(s)
            - a[lo:hi, None] - a[None, :])


def stein_kernel_block(kernel, sq, ss, cross, h, dim: int):
    """``H = f(U) * SS + (2/h) [f'(U) * (C - d) - 2 U * f''(U)]`` with ``U = sq / h`` (scalar ``h``).

    ``sq``, ``ss``, ``cross``: matching blocks of ``D2``, ``S S^T`` and ``C`` (module docstring).
    """
    u = sq / h
    f, f1, f2 = kernel.profile(u)
    return f * ss + (2.0 / h) * (f1 * (cross - float(dim)) - 2.0 * (u * f2))


def weighted_stein_kernel_block(kernel, u, ss, cross_w, d_w, w_sum):
    """``H = f(U) * SS + 2 [f'(U) * (C_w - sum_a w_a) - 2 f''(U) * D_w]`` for per-dimension weights ``w = 1/h``.

    The general form of the module docstring; ``u`` is ``U = sum_a w_a (x_a - y_a)^2``, ``cross_w``
    the weighted ``C``, ``d_w[i, j] = |w * (x_i - x_j)|^2``, ``w_sum = sum_a w_a``. With a scalar
    ``h`` it equals :func:`stein_kernel_block` (which needs one distance matrix fewer).
    """
    f, f1, f2 = kernel.profile(u)
    return f * ss + 2.0 * (f1 * (cross_w - w_sum) - 2.0 * (f2 * d_w))


def stein_kernel_diagonal(xp, kernel, scores, h):
    """Sum of the diagonal ``u_p(x_i, x_i) = f(0) |s_i|^2 - (2/h) f'(0) d`` over particles (scalar ``h``)."""
    n, d = scores.shape
    f0, f10, _ = kernel.profile(xp.zeros((), dtype=scores.dtype, device=device_of(scores)))
    return f0 * xp.sum(scores * scores) - (2.0 / h) * f10 * float(d * n)


def reduce_statistic(xp, total, diagonal_total, n: int, statistic: str):
    """V-statistic ``total / n^2`` or U-statistic ``(total - diagonal) / (n (n - 1))``."""
    if statistic == "v":
        return total / float(n * n)
    return (total - diagonal_total) / float(n * (n - 1))


class SteinGramStats(NamedTuple):
    """Bandwidth-independent Gram products of the Stein kernel, for a scalar bandwidth.

    Built once by :func:`stein_gram_stats`; :meth:`stein_matrix` and :meth:`ksd_squared` then cost
    one elementwise ``n x n`` pass per (kernel, bandwidth), which is what an adaptive bandwidth rule
    scanning a grid of ``h`` needs (:class:`particlesampling.bandwidths.MaxKSD`).
    """

    sq: Any  #: (n, n) squared distances ``|x_i - x_j|^2`` (a stack: (B, n, n), likewise below)
    ss: Any  #: (n, n) ``S S^T``
    cross: Any  #: (n, n) ``C[i, j] = -(s_i - s_j) . (x_i - x_j)``
    dim: int  #: d

    def stein_matrix(self, kernel, h):
        """Stein kernel matrix ``H[i, j] = u_p(x_i, x_j)`` for a radial kernel and scalar ``h``; ``(n, n)``.

        For a stack of systems (``sq`` of shape ``(B, n, n)``), ``h`` has shape ``(B,)`` (one per
        system) and ``H`` shape ``(B, n, n)``."""
        kern = radial_kernel(kernel)
        xp = namespace(self.sq)
        h = xp.asarray(h, dtype=self.sq.dtype, device=device_of(self.sq))
        lead = tuple(self.sq.shape[:-2])
        if tuple(h.shape) != lead:
            raise ValueError(
                f"SteinGramStats handles a scalar bandwidth per system only (shape {lead}); received h of shape "
                f"{tuple(h.shape)} (use ksd_squared(..., bandwidth=h) for per-dimension bandwidths)"
            )
        if lead:
            h = xp.reshape(h, lead + (1, 1))
        return stein_kernel_block(kern, self.sq, self.ss, self.cross, h, self.dim)

    def ksd_squared(self, kernel, h, statistic: str = "v"):
        """Squared KSD (V- or U-statistic) for a radial kernel and scalar ``h``; a 0-d array
        (for a stack of systems, shape ``(B,)``)."""
        statistic = check_statistic(statistic)
        n = self.sq.shape[-2]
        if statistic == "u" and n < 2:
            raise ValueError("the U-statistic needs n >= 2 particles, received n = 1")
        xp = namespace(self.sq)
        hmat = self.stein_matrix(kernel, h)
        lead = tuple(hmat.shape[:-2])
        total = xp.sum(xp.reshape(hmat, lead + (-1,)), axis=-1)
        return reduce_statistic(xp, total, xp.sum(xp.linalg.diagonal(hmat), axis=-1), n, statistic)


def stein_gram_stats(particles, scores, sq=None) -> SteinGramStats:
    """Gram products shared by the Stein kernel matrices of every scalar bandwidth.

    Parameters
    ----------
    particles : array, shape (n, d), or (B, n, d) for a stack of systems
    scores : array, shape (n, d) (or (B, n, d))
        ``grad log p`` at the particles.
    sq : array, shape (n, n) (or (B, n, n)), optional
        Precomputed ``sqdist(particles)``.

    Returns
    -------
    SteinGramStats
    """
    xp = namespace(particles, scores)
    check_same_shape(particles, scores, "particles", "scores")
    # The Stein kernel depends on x only through differences: centring is exact and keeps the Gram
    # products well conditioned when the particles sit far from the origin.
    xc = centred(xp, particles)
    if sq is None:
        sq = sqdist(xc, xp=xp)
    ss = scores @ xp.matrix_transpose(scores)
    return SteinGramStats(sq=sq, ss=ss, cross=cross_term(xp, xc, scores), dim=int(particles.shape[-1]))
