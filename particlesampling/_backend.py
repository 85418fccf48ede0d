"""Array-API plumbing shared by every module: namespace lookup, validation, constants, distances.

Every public function of the core calls :func:`namespace` once and then works only through the
returned namespace ``xp``, so NumPy, PyTorch (CPU or GPU), ``array_api_strict`` and JAX arrays all go
through one code path. Nothing here copies data to the host.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat

__all__ = [
    "namespace",
    "device_of",
    "check_particles",
    "check_same_shape",
    "constant",
    "sqdist",
    "lower_median",
    "midpoint_median",
    "order_statistics",
    "upper_median",
    "is_floating",
    "finfo_eps",
    "to_float",
]


def namespace(*arrays: Any):
    """Return the Array-API namespace shared by ``arrays``.

    Raises
    ------
    TypeError
        If an argument is not an array of a supported library, or if the arrays come from different
        libraries (for example a NumPy array and a torch tensor).
    """
    arrays = tuple(a for a in arrays if a is not None)
    if not arrays:
        raise TypeError("expected at least one array, received none")
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError as exc:
        kinds = ", ".join(sorted({type(a).__module__ + "." + type(a).__name__ for a in arrays}))
        raise TypeError(
            f"expected arrays of one array library (NumPy, PyTorch, array_api_strict, JAX); "
            f"received {kinds} ({exc})"
        ) from None


def device_of(x: Any):
    """Device of array ``x`` (``"cpu"`` for NumPy)."""
    return array_api_compat.device(x)


def is_floating(xp, x) -> bool:
    """Whether ``x`` has a real floating dtype."""
    return xp.isdtype(x.dtype, "real floating")


def finfo_eps(xp, x) -> float:
    """Machine epsilon of ``x``'s dtype as a Python float."""
    return float(xp.finfo(x.dtype).eps)


def constant(xp, value, like):
    """A 0-d array holding ``value`` with ``like``'s dtype and device."""
    return xp.asarray(value, dtype=like.dtype, device=device_of(like))


def check_particles(x: Any, name: str = "particles", *, finite: bool = True, xp=None):
    """Validate an ``(n, d)`` floating array with ``n >= 1`` and ``d >= 1``.

    Parameters
    ----------
    x : array, shape (n, d)
    name : str
        Name used in error messages.
    finite : bool
        If true, non-finite entries raise a ValueError naming the first offending row. This check
        synchronises with the device once; the samplers call it only at initialisation.

    Returns
    -------
    xp : the array namespace of ``x``.
    """
    if xp is None:
        xp = namespace(x)
    shape = tuple(x.shape)
    if len(shape) != 2:
        hint = " (a 1-D array of n scalars should be reshaped to (n, 1))" if len(shape) == 1 else ""
        raise ValueError(f"expected {name} of shape (n, d), received an array of shape {shape}{hint}")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"expected {name} with n >= 1 rows and d >= 1 columns, received shape {shape}")
    if not is_floating(xp, x):
        raise TypeError(f"expected {name} of a real floating dtype, received dtype {x.dtype}")
    if finite:
        ok = xp.all(xp.isfinite(x), axis=1)
        if not bool(xp.all(ok)):
            bad = int(xp.argmax(xp.astype(~ok, xp.int32)))
            raise ValueError(f"{name} contain non-finite values (first at row {bad})")
    return xp


def check_same_shape(a, b, name_a: str, name_b: str) -> None:
    """Raise ValueError unless ``a`` and ``b`` have the same shape and dtype."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"expected {name_b} of the same shape as {name_a} {tuple(a.shape)}, received {tuple(b.shape)}"
        )
    if a.dtype != b.dtype:
        raise TypeError(f"expected {name_b} of dtype {a.dtype} (as {name_a}), received {b.dtype}")


def sqdist(x, y=None, *, xp=None):
    """Pairwise squared Euclidean distances by the Gram trick.

    ``D2[i, j] = |x_i|^2 + |y_j|^2 - 2 x_i . y_j`` after subtracting the mean of ``x`` from both sets
    (translation invariance, no cancellation far from the origin), clamped at zero. When ``y`` is
    None the result is symmetric with an exact zero diagonal.

    Parameters
    ----------
    x : array, shape (n, d)
    y : array, shape (m, d), optional

    Returns
    -------
    D2 : array, shape (n, m) (or (n, n))
    """
    if xp is None:
        xp = namespace(x) if y is None else namespace(x, y)
    # Centre first: the Gram trick cancels catastrophically when the points lie far from the origin
    # compared with their spread (|x|^2 ~ 1e8 and |x - y|^2 ~ 1 loses every digit in float32).
    centre = xp.mean(x, axis=0)
    x = x - centre
    if y is not None:
        y = y - centre
    xx = xp.sum(x * x, axis=1)
    if y is None:
        d2 = xx[:, None] + xx[None, :] - 2.0 * (x @ xp.matrix_transpose(x))
        d2 = xp.clip(d2, min=0.0)
        n = x.shape[0]
        eye = xp.eye(n, dtype=xp.bool, device=device_of(x))
        d2 = xp.where(eye, xp.zeros_like(d2), d2)
        # symmetrise rounding so that D2 == D2.T exactly
        return 0.5 * (d2 + xp.matrix_transpose(d2))
    yy = xp.sum(y * y, axis=1)
    d2 = xx[:, None] + yy[None, :] - 2.0 * (x @ xp.matrix_transpose(y))
    return xp.clip(d2, min=0.0)


def order_statistics(v, ks, *, xp=None):
    """The ``k``-th smallest entries (0-based) of ``v`` for each ``k`` in ``ks``, as 0-d arrays.

    Uses a selection where the library has one (``numpy.partition``, ``torch.kthvalue``: O(N) and
    on the tensor's device) and a full sort otherwise. No host round trip.
    """
    xp = xp or namespace(v)
    v = xp.reshape(v, (-1,))
    n = v.shape[0]
    if n == 0:
        raise ValueError("expected a non-empty array for an order statistic, received an empty one")
    ks = [int(k) for k in ks]
    if any(k < 0 or k >= n for k in ks):
        raise ValueError(f"expected order statistics in [0, {n}), received {ks}")
    if array_api_compat.is_numpy_array(v):
        import numpy as np

        part = np.partition(np.asarray(v), sorted(set(ks)))
        return [xp.asarray(part[k]) for k in ks]
    if array_api_compat.is_torch_array(v):
        return [v.kthvalue(k + 1).values for k in ks]
    s = xp.sort(v)
    return [s[k] for k in ks]


def lower_median(v, *, xp=None):
    """Lower median of all entries (``torch.median`` convention): element ``(N - 1) // 2`` of the sort."""
    xp = xp or namespace(v)
    n = math.prod(v.shape)
    return order_statistics(v, [(n - 1) // 2], xp=xp)[0]


def upper_median(v, *, xp=None):
    """Upper median of all entries: element ``N // 2`` of the sort (NumPyro's convention)."""
    xp = xp or namespace(v)
    n = math.prod(v.shape)
    return order_statistics(v, [n // 2], xp=xp)[0]


def midpoint_median(v, *, xp=None):
    """Midpoint median of all entries (``numpy.median`` convention)."""
    xp = xp or namespace(v)
    n = math.prod(v.shape)
    if n % 2 == 1:
        return order_statistics(v, [n // 2], xp=xp)[0]
    lo, hi = order_statistics(v, [n // 2 - 1, n // 2], xp=xp)
    return 0.5 * (lo + hi)


def to_float(x) -> float:
    """Convert a 0-d array (any namespace) to a Python float; this synchronises with the device."""
    return float(x)

