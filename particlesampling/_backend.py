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
    "to_numpy",
    "is_torch_array",
    "is_numpy_array",
    "torch_namespace",
    "centred",
    "exp_neg_scaled",
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

    ``D2[i, j] = |x_i|^2 + |y_j|^2 - 2 x_i . y_j``, clamped at zero. When ``y`` is None the result is
    symmetric with an exact zero diagonal.

    Both sets are first shifted by the mean of ``x`` (distances are translation invariant): the Gram
    trick cancels ``|x|^2`` against ``2 x . y``, and far from the origin that cancellation would cost
    all the digits of a float32 result. The shift is one ``O(n d)`` pass.

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
    shift = xp.mean(x, axis=0)
    x = x - shift
    if y is not None:
        y = y - shift
    if array_api_compat.is_torch_array(x) and not x.requires_grad and (y is None or not y.requires_grad):
        return _sqdist_torch(x, y)
    if array_api_compat.is_numpy_array(x) and x.ndim == 2:
        return _sqdist_numpy(x, y)
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


def _sqdist_torch(x, y):
    """PyTorch fast path of :func:`sqdist` (same values to rounding): the ``-2 x y^T`` product is
    fused into ``addmm_`` over the ``|x_i|^2 + |y_j|^2`` matrix and the clamp, diagonal and
    symmetrisation work in place, so the whole takes one GEMM and three ``n x m`` passes instead of
    nine. Same device and dtype as ``x`` (CPU or CUDA)."""
    xx = (x * x).sum(dim=1)
    if y is None:
        d2 = xx[:, None] + xx[None, :]
        d2.addmm_(x, x.T, alpha=-2.0)
        d2.clamp_(min=0.0)
        d2.fill_diagonal_(0.0)
        # symmetrise rounding so that D2 == D2.T exactly (float64 GEMMs are not always symmetric)
        return d2.add(d2.T).mul_(0.5)
    yy = (y * y).sum(dim=1)
    d2 = xx[:, None] + yy[None, :]
    d2.addmm_(x, y.T, alpha=-2.0)
    return d2.clamp_(min=0.0)


def _sqdist_numpy(x, y):
    """NumPy fast path of :func:`sqdist` (same values to rounding): in-place ``out=`` arithmetic on
    the Gram product, so one GEMM and four ``n x m`` passes instead of nine allocations."""
    import numpy as np

    xx = np.sum(x * x, axis=1)
    yy = xx if y is None else np.sum(y * y, axis=1)
    d2 = x @ (x if y is None else y).T
    d2 *= -2.0  # exact; then (|x_i|^2 + |y_j|^2) + (-2 G): the same rounding as the generic path
    d2 += xx[:, None] + yy[None, :]
    np.maximum(d2, 0.0, out=d2)
    if y is None:
        np.fill_diagonal(d2, 0.0)
        # symmetrise rounding so that D2 == D2.T exactly (NumPy buffers the overlapping transpose)
        d2 += d2.T
        d2 *= 0.5
    return d2


#: sample size of the bracketing selection in :func:`_bracket_select`
_BRACKET_SAMPLE = 1 << 15


def _bracket_select(v, ks):
    """Exact order statistics of a large 1-D NumPy array without a full selection (Floyd–Rivest).

    A fixed pseudo-random sample of ``_BRACKET_SAMPLE`` entries brackets the wanted ranks with a
    margin of 4 binomial standard deviations; one pass counts the entries below the bracket and
    keeps those inside it (about 3 % of a 10^6-entry array), and ``numpy.partition`` finishes on
    that small set. The result is exact whatever the sample: if the ranks are not inside the
    bracket (probability < 1e-4), ``None`` is returned and the caller selects on the whole array.
    About 3x faster than ``numpy.partition`` on the n^2 distances of a median bandwidth.
    """
    import numpy as np

    big_n, m = v.shape[0], _BRACKET_SAMPLE
    idx = np.random.default_rng(big_n).integers(0, big_n, size=m)
    sample = np.sort(v[idx])
    lo_rank, hi_rank = min(ks) / big_n * m, max(ks) / big_n * m
    slack = 4.0 * math.sqrt(m * 0.25) + 2.0
    i_lo, i_hi = int(math.floor(lo_rank - slack)), int(math.ceil(hi_rank + slack))
    if i_lo <= 0 or i_hi >= m - 1:
        return None
    lo, hi = sample[i_lo], sample[i_hi]
    below = v < lo
    n_below = int(np.count_nonzero(below))
    cand = v[(v <= hi) & ~below]
    if not (n_below <= min(ks) and max(ks) < n_below + cand.shape[0]):
        return None
    rel = sorted({k - n_below for k in ks})
    part = np.partition(cand, rel)
    return [part[k - n_below] for k in ks]


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
        return [xp.asarray(t) for t in _numpy_select(v, ks)]
    if array_api_compat.is_torch_array(v):
        if v.device.type == "cpu" and not v.requires_grad:
            # On the CPU the NumPy selection on a zero-copy view is 2-5x faster than torch.kthvalue
            # (measured, n^2 = 10^6) and serves every k at once; the results stay 0-d tensors.
            import torch

            return [torch.as_tensor(t) for t in _numpy_select(v.numpy(), ks)]
        return [v.kthvalue(k + 1).values for k in ks]
    s = xp.sort(v)
    return [s[k] for k in ks]


def _numpy_select(v, ks):
    """Order statistics ``ks`` of a 1-D NumPy array: bracketing selection for large arrays,
    ``numpy.partition`` otherwise (and as the bracketing's fallback). Exact in every case."""
    import numpy as np

    v = np.asarray(v)
    if v.shape[0] >= 8 * _BRACKET_SAMPLE:
        out = _bracket_select(v, ks)
        if out is not None:
            return out
    part = np.partition(v, sorted(set(ks)))
    return [part[k] for k in ks]


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


def is_torch_array(x) -> bool:
    """Whether ``x`` is a torch tensor (the in-place fast paths use torch's own methods)."""
    return array_api_compat.is_torch_array(x)


def is_numpy_array(x) -> bool:
    """Whether ``x`` is a NumPy array (the in-place fast paths use ``out=``)."""
    return array_api_compat.is_numpy_array(x)


def torch_namespace():
    """The Array-API namespace of PyTorch (``array_api_compat.torch``); ImportError without torch."""
    import array_api_compat.torch as xpt

    return xpt


def centred(xp, x):
    """``x - mean(x, axis=0)``: differences are translation invariant, and centring keeps the Gram
    trick and the repulsion's cancellation accurate in float32 far from the origin."""
    return x - xp.mean(x, axis=0)


def exp_neg_scaled(xp, sq, h):
    """``exp(-sq / h)`` for a scalar ``h`` in two passes (multiply, exp), in place where the library
    allows it (NumPy ``out=``, torch ``exp_``); other namespaces get the out-of-place form. ``sq``
    itself is never modified."""
    u = sq * (-1.0 / h)
    if array_api_compat.is_torch_array(u) and not u.requires_grad:
        return u.exp_()
    if array_api_compat.is_numpy_array(u):
        import numpy as np

        return np.exp(u, out=u)
    return xp.exp(u)


def to_numpy(x):
    """Copy an array of any supported namespace (or a sequence) to a NumPy array on the host.

    This synchronises with the device; the core calls it only where a result leaves for the host
    (traces, checkpoints, plots).
    """
    import numpy as np

    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if array_api_compat.is_numpy_array(x) or not hasattr(x, "__dlpack__"):
        return np.asarray(x)
    try:
        return np.from_dlpack(x)
    except (TypeError, RuntimeError, BufferError):  # e.g. a device array without a host view
        return np.asarray(x)

