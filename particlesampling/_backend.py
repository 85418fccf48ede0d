"""Array-API plumbing shared by every module: namespace lookup, validation, constants, distances.

Every public function of the core calls :func:`namespace` once and then works only through the
returned namespace ``xp``, so NumPy, PyTorch (CPU or GPU), ``array_api_strict`` and JAX arrays all go
through one code path. Nothing here copies data to the host.
"""

from __future__ import annotations

import threading
from typing import Any

import array_api_compat

__all__ = [
    "NonFiniteError",
    "namespace",
    "device_of",
    "check_particles",
    "check_same_shape",
    "constant",
    "sqdist",
    "sqdist_block",
    "gram_trick_block",
    "symmetric_sqdist",
    "UpperBlockRows",
    "upper_block_rows",
    "SQDIST_BLOCK_ROWS",
    "is_floating",
    "finfo_eps",
    "to_numpy",
    "is_torch_array",
    "is_numpy_array",
    "is_jax_array",
    "torch_namespace",
    "is_array",
    "namespace_of_module",
    "centred",
    "exp_neg_scaled",
    "exp_neg_scaled_",
    "in_place_capable",
    "intra_op_threads_of",
    "pool_map",
    "host_view_capable",
    "is_traced",
    "batch_shape",
]


class NonFiniteError(FloatingPointError):
    """Particles or scores that are NaN or infinite.

    Raised where they enter: by the Stein direction's input check (``rows``: the offending row
    indices, ``(system, row)`` pairs for a stack; ``particle``: the first of them) and by the run
    loop (:func:`particlesampling.run_sampler`: ``step``, ``particle`` and ``state``, the last
    finite state). Fields that do not apply are None (``rows`` empty)."""

    def __init__(self, message: str, step: int | None = None, particle: int | None = None, state: Any = None,
                 rows: tuple = ()):
        super().__init__(message)
        self.step = step
        self.particle = particle
        self.state = state
        self.rows = tuple(rows)


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
        synchronises with the device once; the samplers call it only at initialisation. Arrays
        being traced by JAX (inside ``jax.jit``) have no values to check: the check is skipped there,
        and non-finite entries propagate into the result (NaN).

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
    if finite and not is_traced(x):  # under jax.jit the values are not on the host: no check
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
    x : array, shape (..., n, d)
        Leading axes, if any, index independent systems (a stack ``(B, n, d)``): each gets its own
        matrix and its own shift.
    y : array, shape (..., m, d), optional

    Returns
    -------
    D2 : array, shape (..., n, m) (or (..., n, n))
    """
    if xp is None:
        xp = namespace(x) if y is None else namespace(x, y)
    shift = xp.mean(x, axis=-2, keepdims=True)
    x = x - shift
    xx = xp.sum(x * x, axis=-1)
    if y is None:
        if (_in_place_torch(x) and x.ndim in (2, 3)) or array_api_compat.is_numpy_array(x):
            return symmetric_sqdist(x, xx)
        d2 = sqdist_block(xp, x, xx, x, xx, diagonal_at=0)
        # symmetrise rounding so that D2 == D2.T exactly (GEMMs are not always symmetric)
        return 0.5 * (d2 + xp.matrix_transpose(d2))
    y = y - shift
    return sqdist_block(xp, x, xx, y, xp.sum(y * y, axis=-1))


def _in_place_torch(a) -> bool:
    return array_api_compat.is_torch_array(a) and not a.requires_grad


#: rows per block of :func:`symmetric_sqdist` and of the blocked kernel passes of the Stein step
SQDIST_BLOCK_ROWS = 256


def symmetric_sqdist(xc, xx, *, block: int = SQDIST_BLOCK_ROWS):
    """``D2`` of the (centred) rows ``xc`` (``(..., n, d)``, NumPy or torch without autograd), exactly
    symmetric with a zero diagonal, from the upper block triangle only.

    For each block of ``block`` rows ``I = a..b-1`` one GEMM gives ``D2[I, a:]`` (:func:`gram_trick_block`,
    written into the matrix), whose square ``D2[I, I]`` is made symmetric from its own upper
    triangle; the blocks below the diagonal are then copied, transposed, from those above. The GEMM
    work is half that of the full product, the copies are a quarter of the entries, and no pass
    averages ``D2`` with its transpose. ``xx`` are the squared row norms ``|xc_i|^2``. (Consumers that
    read the upper block triangle only take it packed: :func:`upper_block_rows`.)
    """
    n = xc.shape[-2]
    lead = tuple(xc.shape[:-2])
    torch_like = is_torch_array(xc)
    if torch_like:
        import torch

        d2 = torch.empty(lead + (n, n), dtype=xc.dtype, device=xc.device)
    else:
        import numpy as np

        d2 = np.empty(lead + (n, n), dtype=xc.dtype)
    for a in range(0, n, block):
        b = min(n, a + block)
        gram_trick_block(xc[..., a:b, :], xx[..., a:b], xc[..., a:, :], xx[..., a:], out=d2[..., a:b, a:])
        square = d2[..., a:b, a:b]
        if torch_like:
            upper = square.triu(1)
            torch.add(upper, upper.transpose(-1, -2), out=square)
        else:
            upper = np.triu(square, 1)
            np.add(upper, np.swapaxes(upper, -1, -2), out=square)
    for a in range(0, n, block):
        b = min(n, a + block)
        if b < n:
            lower = d2[..., b:, a:b]
            upper = d2[..., a:b, b:]
            if torch_like:
                lower.copy_(upper.transpose(-1, -2))
            else:
                lower[...] = np.swapaxes(upper, -1, -2)
    return d2


class UpperBlockRows:
    """The upper block triangle of a symmetric ``n x n`` matrix (a ``D2``), packed: for each block
    of rows ``I = a..b-1`` (``block`` rows, the last one shorter) the ``(b - a) x (n - a)`` array
    ``M[I, a:]``, contiguous, the blocks one after the other in the 1-D buffer ``flat``
    (``sum (b - a)(n - a)`` entries, about ``n^2 / 2 + n block / 2``: half a matrix).

    Contiguous rows let torch's elementwise passes over them (the norms and the clamp of ``D2``,
    the kernel's ``exp``) run on all its threads, where a strided view ``M[I, a:]`` of an ``n x n``
    matrix may run on one (``python benchmarks/bench_choices.py --threads 2`` compares the layouts).
    ``rows[j]`` is block ``j`` (a view of ``flat``), ``starts[j]`` its first row ``a``. NumPy or
    torch outside autograd; the Stein step packs on the CPU only (the median reads the rows through
    NumPy views).
    """

    __slots__ = ("flat", "rows", "starts", "n", "block")

    def __init__(self, flat, n: int, block: int):
        self.flat, self.n, self.block = flat, int(n), int(block)
        self.starts = list(range(0, self.n, self.block))
        self.rows, off = [], 0
        for a in self.starts:
            b = min(self.n, a + self.block)
            size = (b - a) * (self.n - a)
            self.rows.append(flat[off:off + size].reshape((b - a, self.n - a)))
            off += size

    @staticmethod
    def size(n: int, block: int) -> int:
        """Entries of the packed buffer for ``n`` rows in blocks of ``block``."""
        return sum((min(n, a + block) - a) * (n - a) for a in range(0, n, block))

    @property
    def shape(self):
        return (self.n, self.n)

    @property
    def ndim(self) -> int:
        return 2

    @property
    def dtype(self):
        return self.flat.dtype

    def positions(self, i, j):
        """Positions in ``flat`` of the entries ``(i, j)`` (NumPy integer arrays, ``i <= j``, both in
        ``[0, n)``) of the upper triangle."""
        return self.flat_positions(self.n, self.block, i, j)

    @staticmethod
    def flat_positions(n: int, block: int, i, j):
        """:meth:`positions` for ``n`` rows in blocks of ``block``, without a buffer."""
        import numpy as np

        blk = i // block
        a = blk * block
        bounds = np.minimum(np.arange(-(-n // block) + 1) * block, n)
        offsets = np.concatenate([[0], np.cumsum((bounds[1:] - bounds[:-1]) * (n - bounds[:-1]))])
        return offsets[blk] + (i - a) * (n - a) + (j - a)


def upper_block_rows(xc, xx, *, block: int = SQDIST_BLOCK_ROWS) -> UpperBlockRows:
    """``D2`` of the (centred) rows ``xc`` (``(n, d)``, NumPy or torch outside autograd) as its packed
    upper block triangle (:class:`UpperBlockRows`): for each block of rows one GEMM gives
    ``D2[I, a:]`` (:func:`gram_trick_block`, written into the packed buffer), with an exact zero
    diagonal; the squares ``D2[I, I]`` keep the GEMM's rounding (symmetric to rounding). Half the
    GEMM work and half the memory of the full matrix. ``xx`` are the squared row norms ``|xc_i|^2``."""
    n = xc.shape[-2]
    if is_torch_array(xc):
        import torch

        flat = torch.empty(UpperBlockRows.size(n, block), dtype=xc.dtype, device=xc.device)
    else:
        import numpy as np

        flat = np.empty(UpperBlockRows.size(n, block), dtype=xc.dtype)
    packed = UpperBlockRows(flat, n, block)
    for a, rows in zip(packed.starts, packed.rows):
        b = min(n, a + block)
        gram_trick_block(xc[a:b, :], xx[a:b], xc[a:, :], xx[a:], out=rows)
        _zero_diagonal(None, rows, 0)
    return packed


def sqdist_block(xp, x_rows, xx_rows, y, yy, *, diagonal_at=None):
    """``|x_i|^2 + |y_j|^2 - 2 x_i . y_j`` clamped at 0, for a block of rows ``x_rows`` (``(..., b, d)``).

    :func:`gram_trick_block` (the formula's one home) behind :func:`sqdist` and the row blocks of
    :mod:`particlesampling.tiled` and :mod:`particlesampling.distributed`. ``xx_rows`` and ``yy`` are
    the squared row norms. With ``diagonal_at=a`` the rows are rows ``a .. a + b - 1`` of ``y``
    itself, and the entries ``(r, a + r)`` are set to exactly 0. Leading axes of ``x_rows`` and ``y``
    (a stack of independent systems) are batch axes.
    """
    d2 = gram_trick_block(x_rows, xx_rows, y, yy, xp=xp)
    if diagonal_at is not None:
        d2 = _zero_diagonal(xp, d2, diagonal_at)
    return d2


def gram_trick_block(x_rows, xx_rows, y, yy, *, out=None, xp=None):
    """The squared distances of a block of rows by the Gram trick, clamped at 0: the one home of
    ``D2[i, j] = (|x_i|^2 + |y_j|^2) + (-2 x_i . y_j)``, ``max(., 0)``.

    ``x_rows`` ``(..., b, d)`` and ``y`` ``(..., m, d)`` (leading axes: a stack of systems) with their
    squared row norms ``xx_rows`` ``(..., b)`` and ``yy`` ``(..., m)``; returns ``(..., b, m)``. One
    function per library, all with the same rounding (the exact ``-2 G`` added to the rounded sum of
    the norms; the tiled median's passes and the untiled matrix count the same floats):

    * torch outside autograd (2-D or 3-D): the norms' sum, then one ``addmm_`` / ``baddbmm_``
      accumulating ``-2 G`` into it, then ``clamp_``: one GEMM and two ``b x m`` passes, in place;
    * NumPy: ``G`` by ``matmul``, scaled by ``-2`` in place (exact), the norms added, ``maximum``;
    * any other namespace (JAX, ``array_api_strict``, torch under autograd): the functional form.

    ``out`` (NumPy or torch outside autograd only): a ``(..., b, m)`` array (a view into a larger
    matrix or a packed buffer, say) to write into; it is returned.
    """
    if _in_place_torch(x_rows) and not y.requires_grad and x_rows.ndim == y.ndim and x_rows.ndim in (2, 3):
        return _gram_trick_torch(x_rows, xx_rows, y, yy, out)
    if array_api_compat.is_numpy_array(x_rows) and array_api_compat.is_numpy_array(y):
        return _gram_trick_numpy(x_rows, xx_rows, y, yy, out)
    if out is not None:
        raise TypeError("gram_trick_block writes into out= for NumPy and torch outside autograd only; "
                        f"received {type(x_rows).__module__}.{type(x_rows).__name__}")
    xp = xp or namespace(x_rows, y)
    d2 = xx_rows[..., :, None] + yy[..., None, :] - 2.0 * (x_rows @ xp.matrix_transpose(y))
    return xp.clip(d2, min=0.0)


def _gram_trick_torch(x_rows, xx_rows, y, yy, out):
    """:func:`gram_trick_block` for torch outside autograd."""
    import torch

    if out is None:
        out = xx_rows[..., :, None] + yy[..., None, :]
    else:
        torch.add(xx_rows[..., :, None], yy[..., None, :], out=out)
    if x_rows.ndim == 2:
        out.addmm_(x_rows, y.T, alpha=-2.0)
    else:
        out.baddbmm_(x_rows, y.transpose(-1, -2), alpha=-2.0)
    return out.clamp_(min=0.0)


def _gram_trick_numpy(x_rows, xx_rows, y, yy, out):
    """:func:`gram_trick_block` for NumPy."""
    import numpy as np

    out = np.matmul(x_rows, np.swapaxes(y, -1, -2), out=out)
    out *= -2.0  # exact
    out += xx_rows[..., :, None] + yy[..., None, :]
    return np.maximum(out, 0.0, out=out)


def _zero_diagonal(xp, d2, at: int):
    """``d2`` (``(..., b, m)``) with the entries ``(r, at + r)`` set to exactly 0: in place for NumPy
    and torch outside autograd (returned), by a ``where`` otherwise."""
    b = d2.shape[-2]
    if _in_place_torch(d2):
        d2[..., :, at:at + b].diagonal(dim1=-2, dim2=-1).fill_(0.0)
        return d2
    if array_api_compat.is_numpy_array(d2):
        import numpy as np

        r = np.arange(b)
        d2[..., r, r + at] = 0.0
        return d2
    xp = xp or namespace(d2)
    dev = device_of(d2)
    cols = xp.arange(d2.shape[-1], device=dev)
    on_diag = (cols[None, :] - at) == xp.arange(b, device=dev)[:, None]
    return xp.where(on_diag, xp.zeros_like(d2), d2)


def is_torch_array(x) -> bool:
    """Whether ``x`` is a torch tensor (the in-place fast paths use torch's own methods)."""
    return array_api_compat.is_torch_array(x)


def is_numpy_array(x) -> bool:
    """Whether ``x`` is a NumPy array (the in-place fast paths use ``out=``)."""
    return array_api_compat.is_numpy_array(x)


def is_jax_array(x) -> bool:
    """Whether ``x`` is a JAX array (traced values inside ``jax.jit`` included)."""
    return array_api_compat.is_jax_array(x)


def is_array(x) -> bool:
    """Whether ``x`` is an array of a supported Array-API library."""
    return array_api_compat.is_array_api_obj(x)


def namespace_of_module(xp: Any = None):
    """Array-API namespace for a library module, a module name or ``None`` (NumPy).

    Parameters
    ----------
    xp : module, str or None
        ``numpy``, ``torch``, ``array_api_strict``, ``jax.numpy`` (the modules, their
        ``array_api_compat`` wrappers, or their names as strings). ``None`` means NumPy.

    Returns
    -------
    The namespace of arrays created by ``xp``.
    """
    import importlib

    import numpy as np

    if xp is None:
        xp = np
    if isinstance(xp, str):
        try:
            xp = importlib.import_module(xp)
        except ImportError as exc:
            raise ValueError(f"xp: cannot import array namespace {xp!r}: {exc}") from None
    if not hasattr(xp, "empty"):
        raise TypeError(f"xp: expected an array namespace module (numpy, torch, ...), got {xp!r}")
    try:
        return array_api_compat.array_namespace(xp.empty(0))
    except TypeError as exc:
        raise TypeError(f"xp: {xp!r} is not a supported array namespace ({exc})") from None


def torch_namespace():
    """The Array-API namespace of PyTorch (``array_api_compat.torch``); ImportError without torch."""
    import array_api_compat.torch as xpt

    return xpt


def centred(xp, x):
    """``x - mean(x, axis=-2)``: differences are translation invariant, and centring keeps the Gram
    trick and the repulsion's cancellation accurate in float32 far from the origin. ``x`` is
    ``(..., n, d)``; each system of a stack is centred on its own mean."""
    return x - xp.mean(x, axis=-2, keepdims=True)


def batch_shape(x) -> tuple:
    """The leading (batch) axes of an ``(..., n, d)`` array: ``()`` for one system, ``(B,)`` for a stack."""
    return tuple(x.shape[:-2])


def is_traced(x) -> bool:
    """Whether ``x`` is an abstract JAX value being traced (inside ``jax.jit``): it has no values on
    the host, so a check that reads them (``bool(...)``) cannot run. False for every other library."""
    if not array_api_compat.is_jax_array(x):
        return False
    import jax.core

    return isinstance(x, jax.core.Tracer)


def exp_neg_scaled(xp, sq, h):
    """``exp(-sq / h)`` for a scalar ``h`` (or one broadcast against ``sq``, e.g. ``(B, 1, 1)`` for a
    stack) in two passes (multiply, exp), in place where the library allows it (NumPy ``out=``,
    torch ``exp_``); other namespaces get the out-of-place form. ``sq`` itself is never modified."""
    u = sq * (-1.0 / h)
    if array_api_compat.is_torch_array(u) and not u.requires_grad:
        return u.exp_()
    if array_api_compat.is_numpy_array(u):
        import numpy as np

        return np.exp(u, out=u)
    return xp.exp(u)


def in_place_capable(a) -> bool:
    """Whether ``a`` may be overwritten by the in-place fast paths: a NumPy array, or a torch tensor
    outside autograd."""
    return array_api_compat.is_numpy_array(a) or _in_place_torch(a)


def host_view_capable(a) -> bool:
    """Whether ``a``'s values can be read as a NumPy view without a copy or a device sync: a NumPy
    array, or a torch tensor on the CPU outside autograd."""
    return array_api_compat.is_numpy_array(a) or (_in_place_torch(a) and a.device.type == "cpu")


def exp_neg_scaled_(a, h):
    """``a <- exp(-a / h)`` in place (``a`` as accepted by :func:`in_place_capable`; ``h`` a scalar or
    broadcast against ``a``): the same two passes and rounding as :func:`exp_neg_scaled`. Returns ``a``."""
    scale = -1.0 / h
    if array_api_compat.is_numpy_array(a):
        import numpy as np

        np.multiply(a, scale, out=a)
        return np.exp(a, out=a)
    return a.mul_(scale).exp_()


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



_BLAS = []  # a threadpoolctl controller of NumPy's BLAS, made once (or None without threadpoolctl)


def intra_op_threads_of(a) -> int:
    """The threads ``a``'s library uses for its own operations, for host-side passes to match them:
    torch's intra-op threads (``torch.get_num_threads``) for a torch tensor on the CPU, the size of
    NumPy's BLAS pool (through ``threadpoolctl``, so ``threadpool_limits`` and ``OMP_NUM_THREADS``
    are followed; 1 without ``threadpoolctl``) for a NumPy array, 1 otherwise."""
    if array_api_compat.is_torch_array(a):
        import torch

        return max(1, torch.get_num_threads()) if a.device.type == "cpu" else 1
    if not array_api_compat.is_numpy_array(a):
        return 1
    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS.append([c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"])
        except ImportError:
            _BLAS.append([])
    return max([1] + [int(c.get_num_threads() or 1) for c in _BLAS[0]])


_POOL: list = []  # [ThreadPoolExecutor, its size, the process that made it]
_POOL_LOCK = threading.Lock()


def pool_map(fn, items, threads: int) -> list:
    """``[fn(item) for item in items]`` on a shared pool of ``threads`` worker threads (made on first
    use, remade larger when more are asked for, and remade in a forked child, which inherits the
    pool but not its threads), in order; for passes whose work releases the GIL (NumPy ufuncs,
    torch operations). Safe to call from several threads at once: the pool is looked up (or remade)
    and the work submitted under one lock, so a pool being replaced still finishes what was
    submitted to it."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    with _POOL_LOCK:
        if not _POOL or _POOL[1] < threads or _POOL[2] != os.getpid():
            if _POOL and _POOL[2] == os.getpid():
                _POOL[0].shutdown(wait=False)  # its submitted work still runs to the end
            _POOL[:] = [ThreadPoolExecutor(max_workers=threads, thread_name_prefix="particlesampling"), threads,
                        os.getpid()]
        futures = [_POOL[0].submit(fn, item) for item in items]
    return [f.result() for f in futures]
