"""Moment-based diagnostics of a particle set: mean and covariance errors, marginal variance, modes.

All functions take particles ``x`` of shape ``(n, d)`` in any Array-API namespace and return arrays
of that namespace, dtype and device (0-d for scalars; no host synchronisation except where stated).
Reference values (``true_mean``, ``true_cov``, mode ``centers``) may be given as NumPy arrays or
sequences; they are moved to the particles' namespace, dtype and device.
"""

from __future__ import annotations

from typing import Any

from .._backend import check_particles, device_of, sqdist
from .. import validation

__all__ = ["mean_error", "cov_error", "marginal_variance", "mode_fractions", "sample_cov"]


def _reference(xp, value, like, name: str, shape: tuple):
    """``value`` as an array of ``like``'s namespace, dtype and device, checked for shape and finiteness."""
    try:
        arr = xp.asarray(value, dtype=like.dtype, device=device_of(like))
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise TypeError(
            f"expected {name} convertible to an array of dtype {like.dtype}, received "
            f"{type(value).__name__} ({exc})"
        ) from None
    if tuple(arr.shape) != shape:
        raise ValueError(f"expected {name} of shape {shape}, received shape {tuple(arr.shape)}")
    if not bool(xp.all(xp.isfinite(arr))):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def _check_ddof(ddof: Any, n: int) -> int:
    ddof = validation.check_int("ddof", ddof, minimum=0)
    if n - ddof < 1:
        raise ValueError(f"expected more than ddof = {ddof} particles, received n = {n}")
    return ddof


def _norm(xp, v):
    return xp.sqrt(xp.sum(v * v))


def mean_error(particles, true_mean, relative: bool = False):
    """Error of the particle mean: ``|mean(x) - m|_2`` (or divided by ``|m|_2`` if ``relative``).

    Parameters
    ----------
    particles : array, shape (n, d)
    true_mean : array-like, shape (d,)
    relative : bool
        Divide by the Euclidean norm of ``true_mean`` (``inf``/``nan`` if that is 0).

    Returns
    -------
    err : 0-d array
    """
    xp = check_particles(particles)
    d = particles.shape[1]
    m = _reference(xp, true_mean, particles, "true_mean", (d,))
    err = _norm(xp, xp.mean(particles, axis=0) - m)
    if relative:
        err = err / _norm(xp, m)
    return xp.asarray(err)


def sample_cov(particles, ddof: int = 1):
    """Sample covariance ``(X - mean)^T (X - mean) / (n - ddof)``, shape ``(d, d)``."""
    xp = check_particles(particles)
    n = particles.shape[0]
    ddof = _check_ddof(ddof, n)
    xc = particles - xp.mean(particles, axis=0)
    return (xp.matrix_transpose(xc) @ xc) / float(n - ddof)


def cov_error(particles, true_cov, ddof: int = 1, relative: bool = True):
    """Relative Frobenius error of the particle covariance, ``|C_hat - C|_F / |C|_F``.

    Parameters
    ----------
    particles : array, shape (n, d)
    true_cov : array-like, shape (d, d)
    ddof : int
        ``C_hat = Xc^T Xc / (n - ddof)``; default 1 (unbiased), needs ``n > ddof``.
    relative : bool
        If false, return the absolute error ``|C_hat - C|_F``.

    Returns
    -------
    err : 0-d array
    """
    xp = check_particles(particles)
    d = particles.shape[1]
    c = _reference(xp, true_cov, particles, "true_cov", (d, d))
    err = _norm(xp, sample_cov(particles, ddof) - c)
    if relative:
        err = err / _norm(xp, c)
    return xp.asarray(err)


def marginal_variance(particles, ddof: int = 1):
    """Dimension-averaged marginal variance ``(1/d) sum_k Var(x_k)``.

    The variance-collapse diagnostic of Ba et al. (ICLR 2022, "Understanding the variance collapse of
    SVGD in high dimensions"): for the target ``N(0, I_d)`` the truth is 1, and SVGD with few
    particles in high dimension drives it well below 1.

    Parameters
    ----------
    particles : array, shape (n, d)
    ddof : int
        Per-coordinate variance ``sum_i (x_ik - mean_k)^2 / (n - ddof)``; default 1 (unbiased).

    Returns
    -------
    v : 0-d array
    """
    xp = check_particles(particles)
    n = particles.shape[0]
    ddof = _check_ddof(ddof, n)
    xc = particles - xp.mean(particles, axis=0)
    return xp.asarray(xp.mean(xp.sum(xc * xc, axis=0)) / float(n - ddof))


def mode_fractions(particles, modes: Any, num_modes: int | None = None):
    """Fraction of particles assigned to each mode.

    Parameters
    ----------
    particles : array, shape (n, d)
    modes : array-like of shape (K, d), or callable
        Either mode centres (each particle goes to the nearest centre in Euclidean distance; ties
        go to the lower index), or a function ``assign(particles) -> labels`` returning integer
        labels of shape ``(n,)`` in the particles' namespace. Labels outside ``[0, K)`` (e.g. ``-1``
        for "no mode") are counted in no mode, so the weights then sum to less than 1.
    num_modes : int, optional
        ``K`` for a callable ``modes``. If omitted it is ``max(labels) + 1``, which reads one number
        back from the device.

    Returns
    -------
    weights : array, shape (K,), same namespace, dtype and device as ``particles``.
    """
    xp = check_particles(particles)
    n, d = particles.shape
    dev = device_of(particles)
    if callable(modes):
        labels = modes(particles)
        if tuple(labels.shape) != (n,):
            raise ValueError(f"expected mode labels of shape ({n},), received shape {tuple(labels.shape)}")
        if not xp.isdtype(labels.dtype, "integral"):
            raise TypeError(f"expected integer mode labels, received dtype {labels.dtype}")
        if num_modes is None:
            num_modes = int(xp.max(labels)) + 1
    else:
        centers = modes if hasattr(modes, "shape") else xp.asarray(modes, dtype=particles.dtype, device=dev)
        if len(tuple(centers.shape)) != 2 or centers.shape[1] != d:
            raise ValueError(f"expected mode centers of shape (K, {d}), received shape {tuple(centers.shape)}")
        centers = _reference(xp, centers, particles, "mode centers", tuple(centers.shape))
        if num_modes is not None and num_modes != centers.shape[0]:
            raise ValueError(f"num_modes = {num_modes} disagrees with {centers.shape[0]} mode centers")
        num_modes = centers.shape[0]
        shift = xp.mean(particles, axis=0)  # the Gram trick is accurate for centred inputs
        labels = xp.argmin(sqdist(particles - shift, centers - shift, xp=xp), axis=1)
    num_modes = validation.check_int("num_modes", num_modes, minimum=1)
    ks = xp.arange(num_modes, dtype=labels.dtype, device=dev)
    hits = xp.astype(labels[:, None] == ks[None, :], particles.dtype)
    return xp.sum(hits, axis=0) / float(n)

