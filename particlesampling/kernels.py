"""Kernels for Stein variational methods, with Gram matrix and repulsion in closed form.

For a set of particles ``X`` (n x d) every kernel returns

* the Gram matrix ``K[i, j] = k(x_i, x_j)`` (n x n), and
* the repulsion ``R[i] = sum_j grad_{x_j} k(x_j, x_i)`` (n x d), the second term of the SVGD
  direction (Liu & Wang 2016, eq. 8).

Radial kernels ``k(x, y) = f(|x - y|^2 / h)`` share one formula (differentiate ``f(|x_j - x_i|^2 / h)``
in ``x_j``): with ``U = D2 / h``,
``K = f(U)`` and ``K' = f'(U)``, ``R = (2/h) (K' X - rowsum(K') * X)``. Both take two matrix products
and a row sum; no ``n x n x d`` tensor is ever built. A per-dimension bandwidth ``h`` of shape
``(d,)`` means ``U = sum_k (x_k - y_k)^2 / h_k`` and the same formula with ``2/h`` broadcast over
columns.

**Stacks of systems.** :meth:`Kernel.gram_and_repulsion` also takes a stack ``X`` of shape
``(B, n, d)`` (``B`` independent particle systems) with one bandwidth per system, ``h`` of shape
``(B,)`` (or ``(B, d)`` per dimension), and returns ``K`` ``(B, n, n)`` and ``R`` ``(B, n, d)``: the
same formulas with batched matrix products (:func:`bandwidth_for_broadcast` lines ``h`` up with the
rows). Kernels whose ``batchable`` is False (the base class default, for kernels defined outside
this module) are evaluated system by system by the caller (:mod:`particlesampling.stein_terms`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._backend import (
    SQDIST_BLOCK_ROWS,
    UpperBlockRows,
    batch_shape,
    centred,
    device_of,
    exp_neg_scaled,
    exp_neg_scaled_,
    in_place_capable,
    is_torch_array,
    is_traced,
    namespace,
    sqdist,
)

__all__ = ["Kernel", "RadialKernel", "RBF", "IMQ", "Linear", "RandomFeatureRBF", "get_kernel", "KERNEL_NAMES",
           "radial_repulsion", "rbf_driving_and_repulsion", "rbf_product_columns", "rbf_terms_from_product",
           "rbf_blocked_product", "offdiagonal_mean_from_sums",
           "is_scalar_bandwidth", "bandwidth_for_broadcast"]


class Kernel:
    """Base class. Subclasses implement :meth:`gram` and :meth:`gram_and_repulsion`."""

    #: whether ``k`` depends on ``x - y`` only through ``|x - y|^2 / h``
    is_radial: bool = False
    #: whether a bandwidth ``h`` is used (linear kernel: no)
    uses_bandwidth: bool = True
    #: whether :meth:`gram_and_repulsion` takes a stack ``(B, n, d)`` with ``(B,)`` / ``(B, d)``
    #: bandwidths (module docstring); False: the caller loops over the systems
    batchable: bool = False

    def gram(self, x, y, h):  # pragma: no cover - interface
        """Cross Gram matrix ``k(x_i, y_j)``, shape (n, m)."""
        raise NotImplementedError

    def gram_and_repulsion(self, x, h, sq=None):  # pragma: no cover - interface
        """Gram matrix (n, n) and repulsion (n, d) of particles ``x``."""
        raise NotImplementedError


def is_scalar_bandwidth(h, x) -> bool:
    """Whether ``h`` is one number per system of ``x`` (``(..., n, d)``): shape ``x.shape[:-2]``,
    rather than per dimension (``x.shape[:-2] + (d,)``)."""
    return h.ndim == len(batch_shape(x))


def bandwidth_for_broadcast(xp, h, x):
    """``h`` lined up with the ``(..., n, n)`` and ``(..., n, d)`` arrays of the systems ``x``.

    One system: ``h`` unchanged (0-d, or ``(d,)`` broadcast over columns). A stack ``(B, n, d)``:
    a scalar bandwidth per system ``(B,)`` becomes ``(B, 1, 1)``, a per-dimension one ``(B, d)``
    becomes ``(B, 1, d)``.
    """
    lead = batch_shape(x)
    if not lead:
        return h
    if tuple(h.shape[:len(lead)]) != lead or h.ndim > len(lead) + 1:
        raise ValueError(f"expected bandwidths of shape {lead} or {lead + (x.shape[-1],)} for particles of "
                         f"shape {tuple(x.shape)}, received shape {tuple(h.shape)}")
    if h.ndim == len(lead):
        return xp.reshape(h, lead + (1, 1))
    return xp.reshape(h, lead + (1, h.shape[-1]))


def _scaled_sq(xp, x, h, sq, scalar: bool):
    """``U = D2 / h`` for scalar or per-dimension ``h``; reuses ``sq`` when ``h`` is scalar.
    ``h`` as given by :func:`bandwidth_for_broadcast`; ``scalar`` says which of the two it is."""
    if scalar:
        d2 = sqdist(x, xp=xp) if sq is None else sq
        return d2 / h
    return sqdist(x / xp.sqrt(h), xp=xp)


def radial_repulsion(xp, slope, xc_rows, xc, h):
    """``R[I] = (2/h) (K'[I, :] Xc - rowsum(K'[I, :]) * Xc[I])`` for rows ``I`` of a radial kernel.

    ``slope`` is ``K'[I, :] = f'(U[I, :])`` (``(b, n)``), ``xc`` the centred particles ``(n, d)`` and
    ``xc_rows`` their rows ``I`` (``(b, d)``); ``h`` scalar or ``(d,)``. The repulsion is translation
    invariant, and centring keeps its cancellation accurate in float32 far from the origin. Leading
    batch axes (a stack of systems) are allowed, with ``h`` from :func:`bandwidth_for_broadcast`.
    """
    return (slope @ xc - xp.sum(slope, axis=-1)[..., None] * xc_rows) * (2.0 / h)


#: the columns of :func:`rbf_product_columns` are padded with zeros to a multiple of this (an
#: ``n x n`` by ``n x w`` product can be slower at an odd width than at the padded one:
#: ``python benchmarks/bench_choices.py`` measures it)
PRODUCT_COLUMN_MULTIPLE = 16


def rbf_product_columns(xp, xc, scores):
    """The right-hand side ``[Xc | 1 | S | 0]`` (``(..., n, w)``, ``w >= 2d + 1``; ``[Xc | 1 | 0]``
    when ``scores`` is None) of the one product ``K [Xc | 1 | S]`` that gives ``K Xc``, the row sums
    of ``K`` and ``K S`` (:func:`rbf_terms_from_product`). Zero columns pad ``w`` to a multiple of
    :data:`PRODUCT_COLUMN_MULTIPLE`, where the matrix product runs faster."""
    lead, n, d = tuple(xc.shape[:-2]), xc.shape[-2], xc.shape[-1]
    used = d + 1 if scores is None else 2 * d + 1
    width = -(-used // PRODUCT_COLUMN_MULTIPLE) * PRODUCT_COLUMN_MULTIPLE
    dev = device_of(xc)
    parts = [xc, xp.ones(lead + (n, 1), dtype=xc.dtype, device=dev)]
    if scores is not None:
        parts.append(scores)
    if width > used:
        parts.append(xp.zeros(lead + (n, width - used), dtype=xc.dtype, device=dev))
    return xp.concat(parts, axis=-1)


def rbf_terms_from_product(prod, xc_rows, h, *, with_scores: bool = True):
    """``(K S, R, rowsum K)`` for rows ``I`` from ``prod = K[I, :] [Xc | 1 | S | 0]`` (:func:`rbf_product_columns`).

    :func:`radial_repulsion` with ``f' = -f``: ``R[I] = (2/h) (rowsum(K) * Xc[I] - K Xc)``, without
    negating ``K``. ``K S`` is None when ``with_scores`` is False (a product without score columns).
    """
    d = xc_rows.shape[-1]
    rowsum = prod[..., d]
    rep = (rowsum[..., None] * xc_rows - prod[..., :d]) * (2.0 / h)
    return (prod[..., d + 1:2 * d + 1] if with_scores else None), rep, rowsum


def rbf_driving_and_repulsion(xp, k, xc_rows, xc, scores, h):
    """``(K S, R, rowsum K)`` for rows ``I`` of the RBF kernel from one product ``K [Xc | 1 | S]``.

    ``k`` is ``K[I, :]`` (``(b, n)``), ``xc`` the centred particles, ``xc_rows`` their rows ``I``,
    ``scores`` ``(n, d)`` or None (then ``K S`` is None), ``h`` a scalar or ``(d,)`` (broadcast over
    columns). One ``(b, n)`` by ``(n, 2d + 1)`` product instead of three. Leading batch axes are
    allowed (``h`` from :func:`bandwidth_for_broadcast`).
    """
    return rbf_terms_from_product(k @ rbf_product_columns(xp, xc, scores), xc_rows, h,
                                  with_scores=scores is not None)


def rbf_blocked_product(xp, sq, h, rhs, *, overwrite: bool, block: int = SQDIST_BLOCK_ROWS):
    """``(K [Xc | 1 | S], diag K)`` with ``K = exp(-sq / h)``, from the upper block triangle of ``sq``.

    ``sq`` is ``D2`` (``(..., n, n)``, exactly symmetric; only its upper block triangle
    ``sq[I, a:]`` for row blocks ``I = a..b-1`` of ``block`` rows is read), or that triangle packed (:class:`~particlesampling._backend.UpperBlockRows`, whose contiguous rows the
    ``exp`` pass runs on in parallel; its own ``block``), ``h`` a scalar
    bandwidth lined up by :func:`bandwidth_for_broadcast`, ``rhs`` from :func:`rbf_product_columns`.
    For NumPy and torch without autograd, each block ``K[I, a:]`` is made from ``sq`` (in place when
    ``overwrite``, so ``sq`` is consumed; in a block-sized temporary otherwise) and used at once,
    while it is in cache, twice: ``K[I, a:] rhs[a:]`` adds to rows ``I`` and, by symmetry,
    ``K[I, b:]^T rhs[I]`` adds to rows ``b:``. Half of ``K`` is ever evaluated and no second
    ``n x n`` matrix exists. Other namespaces (and autograd) take the whole ``K`` in one functional
    pass (``sq`` must then be the full matrix).
    """
    packed = isinstance(sq, UpperBlockRows)
    if packed:
        if not in_place_capable(rhs):
            raise ValueError("expected the right-hand side of packed upper block rows outside autograd (NumPy, or "
                             "torch not requiring gradients); pass the full D2 to differentiate through the product")
        block = sq.block
    elif not (in_place_capable(sq) and in_place_capable(rhs)):
        k = exp_neg_scaled(xp, sq, h)
        return k @ rhs, xp.linalg.diagonal(k)
    n = sq.shape[-1]
    blocks = ((a, min(n, a + block), sq.rows[j] if packed else sq[..., a:min(n, a + block), a:])
              for j, a in enumerate(range(0, n, block)))
    return rbf_upper_product(xp, blocks, tuple(sq.shape[:-1]), h, rhs, overwrite=overwrite,
                             dtype_of=sq.flat if packed else sq)


def rbf_upper_product(xp, blocks, rows_shape, h, rhs, *, overwrite: bool, dtype_of):
    """``(K [Xc | 1 | S], diag K)`` with ``K = exp(-D2 / h)`` from the row blocks of ``D2``'s upper
    block triangle, each used once, while it is in cache: :func:`rbf_blocked_product`'s loop, for
    blocks held whole (a packed triangle) or made one at a time and dropped (the tiled step,
    :mod:`particlesampling.tiled`).

    ``blocks`` yields ``(a, b, rows)`` with ``rows = D2[..., a:b, a:]`` (NumPy, or torch outside
    autograd; consumed when ``overwrite``), in order, covering rows ``0 .. n - 1``; ``rows_shape`` is
    ``(..., n)``, ``h`` a scalar lined up by :func:`bandwidth_for_broadcast`, ``rhs`` ``(..., n, m)``
    from :func:`rbf_product_columns`, ``dtype_of`` an array whose library and dtype ``diag K`` takes.
    ``K[I, a:] rhs[a:]`` adds to rows ``I`` and, by symmetry, ``K[I, b:]^T rhs[I]`` to rows ``b:``:
    half of ``K`` is evaluated, and the products cost the two GEMMs ``K Xc``, ``K S`` of the full
    matrix.
    """
    torch_like = is_torch_array(dtype_of)
    n = rows_shape[-1]
    if torch_like:
        import torch

        prod = torch.zeros(tuple(rows_shape) + (rhs.shape[-1],), dtype=rhs.dtype, device=rhs.device)
        diag = torch.empty(tuple(rows_shape), dtype=dtype_of.dtype, device=dtype_of.device)
    else:
        prod = np.zeros(tuple(rows_shape) + (rhs.shape[-1],), dtype=np.result_type(dtype_of, rhs))
        diag = np.empty(tuple(rows_shape), dtype=dtype_of.dtype)
    for a, b, rows in blocks:
        k = exp_neg_scaled_(rows, h) if overwrite else exp_neg_scaled(xp, rows, h)
        if torch_like and len(rows_shape) == 1:  # accumulate in place, no temporaries
            prod[a:b].addmm_(k, rhs[a:])
            if b < n:
                prod[b:].addmm_(k[:, b - a:].T, rhs[a:b])
        else:
            prod[..., a:b, :] += k @ rhs[..., a:, :]
            if b < n:
                prod[..., b:, :] += xp.matrix_transpose(k[..., :, b - a:]) @ rhs[..., a:b, :]
        diag[..., a:b] = xp.linalg.diagonal(k[..., :, :b - a])
        k = rows = None  # not held while the next block is made
    return prod, diag


def offdiagonal_mean_from_sums(xp, total, diagonal_total, n: int, *, like):
    """Mean off-diagonal entry ``(sum - trace) / (n (n - 1))`` of an ``n x n`` kernel matrix given
    its sum and trace; 1 when ``n = 1`` (a lone particle has no pairs). A 0-d array like ``like``
    (for a stack ``like`` of shape ``(B, n, d)``: sums and result of shape ``(B,)``)."""
    if n > 1:
        return (total - diagonal_total) / float(n * (n - 1))
    return xp.ones(batch_shape(like), dtype=like.dtype, device=device_of(like))


class RadialKernel(Kernel):
    """``k(x, y) = f(|x - y|^2 / h)``; subclasses give the profile ``f``, ``f'``, ``f''``."""

    is_radial = True
    batchable = True

    def profile(self, u):
        """Return ``(f(u), f'(u), f''(u))`` elementwise."""
        raise NotImplementedError

    def value(self, u):
        """``f(u)`` only (cheaper than :meth:`profile` where derivatives are not needed)."""
        return self.profile(u)[0]

    def third_derivative(self, u):
        """``f'''(u)`` elementwise, for gradients of Stein kernels in their inputs (the sliced KSD's
        slices, :mod:`particlesampling.diagnostics.sksd`); kernels that do not give it raise."""
        raise NotImplementedError(f"{type(self).__name__} gives no third derivative f'''(u) of its profile; "
                                  "expected a kernel that does, e.g. 'rbf' or 'imq'")

    def gram(self, x, y, h):
        xp = namespace(x, y)
        h = xp.asarray(h, dtype=x.dtype, device=device_of(x))
        if h.ndim == 0:
            u = sqdist(x, y, xp=xp) / h
        else:
            r = xp.sqrt(h)
            u = sqdist(x / r, y / r, xp=xp)
        return self.value(u)

    def gram_and_repulsion(self, x, h, sq=None):
        """Gram matrix and repulsion; see module docstring for the formula.

        Parameters
        ----------
        x : array, shape (n, d), or (B, n, d) for a stack of systems
        h : 0-d array or float, or array of shape (d,); for a stack (B,) or (B, d)
            Bandwidth(s), positive.
        sq : array, shape (n, n) (or (B, n, n)), optional
            Precomputed ``sqdist(x)`` (used only with a scalar ``h``).

        Returns
        -------
        K : (n, n) array (or (B, n, n))
        R : (n, d) array (or (B, n, d)), ``R[i] = sum_j grad_{x_j} k(x_j, x_i)``
        """
        xp = namespace(x)
        h = xp.asarray(h, dtype=x.dtype, device=device_of(x))
        scalar = is_scalar_bandwidth(h, x)
        h = bandwidth_for_broadcast(xp, h, x)
        u = _scaled_sq(xp, x, h, sq, scalar)
        k, k1 = self._value_and_slope(u)
        # R_i = sum_j f'(u_ij) * 2 (x_j - x_i) / h
        xc = centred(xp, x)
        return k, radial_repulsion(xp, k1, xc, xc, h)

    def gram_and_slope(self, x, h, sq=None):
        """``K = f(U)`` and ``K' = f'(U)`` (both ``(n, n)``) with ``U = D2 / h`` (scalar or ``(d,)`` ``h``).

        For methods that weight the pairs of :func:`radial_repulsion` (Blob's second term, say):
        ``radial_repulsion(xp, K', Xc, Xc, h)`` is the repulsion ``R`` of :meth:`gram_and_repulsion`.
        """
        xp = namespace(x)
        h = xp.asarray(h, dtype=x.dtype, device=device_of(x))
        scalar = is_scalar_bandwidth(h, x)
        return self._value_and_slope(_scaled_sq(xp, x, bandwidth_for_broadcast(xp, h, x), sq, scalar))

    def _value_and_slope(self, u):
        f, f1, _ = self.profile(u)
        return f, f1


@dataclass(frozen=True)
class RBF(RadialKernel):
    """Gaussian kernel ``k(x, y) = exp(-|x - y|^2 / h)``: ``f(u) = exp(-u)``, ``f' = -f``, ``f'' = f``."""

    def profile(self, u):
        f = namespace(u).exp(-u)
        return f, -f, f

    def value(self, u):
        return namespace(u).exp(-u)

    def third_derivative(self, u):
        return -namespace(u).exp(-u)

    def _value_and_slope(self, u):
        f = namespace(u).exp(-u)
        return f, -f

    def gram_and_repulsion(self, x, h, sq=None):
        # Specialised (rbf_driving_and_repulsion): no n x n negation for f' = -f.
        xp = namespace(x)
        h = xp.asarray(h, dtype=x.dtype, device=device_of(x))
        scalar = is_scalar_bandwidth(h, x)
        h = bandwidth_for_broadcast(xp, h, x)
        if scalar:
            k = exp_neg_scaled(xp, sqdist(x, xp=xp) if sq is None else sq, h)
        else:
            k = xp.exp(-_scaled_sq(xp, x, h, sq, scalar))
        xc = centred(xp, x)
        return k, rbf_driving_and_repulsion(xp, k, xc, xc, None, h)[1]


@dataclass(frozen=True)
class IMQ(RadialKernel):
    """Inverse multiquadric kernel ``k(x, y) = (c^2 + |x - y|^2 / h)^beta`` (Gorham & Mackey 2017).

    Parameters
    ----------
    c : float > 0
    beta : float in (-1, 0)
        ``beta = -1/2`` is the choice for which KSD detects non-convergence.
    """

    c: float = 1.0
    beta: float = -0.5

    def __post_init__(self):
        if not (isinstance(self.c, (int, float)) and self.c > 0 and math.isfinite(self.c)):
            raise ValueError(f"expected IMQ c > 0, received {self.c!r}")
        if not (isinstance(self.beta, (int, float)) and -1.0 < self.beta < 0.0):
            raise ValueError(f"expected IMQ beta in (-1, 0), received {self.beta!r}")

    def profile(self, u):
        base = u + self.c**2
        f = base**self.beta
        f1 = self.beta * f / base
        f2 = (self.beta - 1.0) * f1 / base
        return f, f1, f2

    def value(self, u):
        return (u + self.c**2) ** self.beta

    def third_derivative(self, u):
        """``f''' = beta (beta - 1) (beta - 2) (c^2 + u)^(beta - 3)``."""
        return self.beta * (self.beta - 1.0) * (self.beta - 2.0) * (u + self.c**2) ** (self.beta - 3.0)

    def _value_and_slope(self, u):
        base = u + self.c**2
        f = base**self.beta
        return f, self.beta * f / base


@dataclass(frozen=True)
class Linear(Kernel):
    """Linear kernel ``k(x, y) = x . y + c``; no bandwidth. Repulsion ``R_i = n x_i``.

    With this kernel SVGD matches the first two moments only (Liu & Wang 2018, "Stein variational
    gradient descent as moment matching").
    """

    c: float = 1.0
    uses_bandwidth = False
    batchable = True

    def gram(self, x, y, h=None):
        xp = namespace(x, y)
        return x @ xp.matrix_transpose(y) + self.c

    def gram_and_repulsion(self, x, h=None, sq=None):
        xp = namespace(x)
        k = x @ xp.matrix_transpose(x) + self.c
        return k, x * float(x.shape[-2])


@dataclass(frozen=True)
class RandomFeatureRBF(Kernel):
    """Random Fourier features approximating the RBF kernel ``exp(-|x - y|^2 / h)``.

    ``phi(x) = sqrt(2/m) cos(W x + b)`` with ``W = w0 * sqrt(2/h)``, ``w0 ~ N(0, I)``,
    ``b ~ U[0, 2 pi)`` (Rahimi & Recht 2007), so ``K = Phi Phi^T`` is positive semi-definite and
    unbiased for the RBF Gram matrix. The repulsion is exact for this feature kernel:
    ``R = Phi diag(sum_j grad phi(x_j)) ...`` evaluated as ``Phi @ (c[:, None] * W)`` with
    ``c_l = -sqrt(2/m) sum_j sin(w_l . x_j + b_l)``: O(n m d), no n x n x d tensor.

    The frequencies are drawn once per dimension from ``seed`` (NumPy) and moved to the particles'
    device, so the kernel is a fixed function across steps.
    """

    num_features: int = 256
    seed: int = 0
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)
    batchable = True

    def __post_init__(self):
        if not (isinstance(self.num_features, int) and self.num_features >= 1):
            raise ValueError(f"expected num_features >= 1 (int), received {self.num_features!r}")

    def _frequencies(self, xp, x):
        d = x.shape[-1]
        if d not in self._cache:  # the draws, on the host (float64)
            rng = np.random.default_rng([self.seed, d])
            w0 = rng.standard_normal((self.num_features, d))
            self._cache[d] = (w0, rng.uniform(0.0, 2.0 * math.pi, size=self.num_features))
        if is_traced(x):  # inside jax.jit: a constant of this trace, never cached (it would leak)
            return tuple(xp.asarray(a, dtype=x.dtype) for a in self._cache[d])
        key = (id(xp), str(x.dtype), str(device_of(x)), d)
        if key not in self._cache:  # moved to the particles' device once
            self._cache[key] = tuple(xp.asarray(a, dtype=x.dtype, device=device_of(x)) for a in self._cache[d])
        return self._cache[key]

    def _features(self, xp, x, h):
        w0, b = self._frequencies(xp, x)
        # (m, d), broadcasting a (d,) bandwidth over columns; for a stack (B, m, d)
        w = w0 * xp.sqrt(2.0 / bandwidth_for_broadcast(xp, h, x))
        z = x @ xp.matrix_transpose(w) + b
        scale = math.sqrt(2.0 / self.num_features)
        return z, w, scale

    def gram(self, x, y, h):
        xp = namespace(x, y)
        h = xp.asarray(h, dtype=x.dtype, device=device_of(x))
        zx, w, s = self._features(xp, x, h)
        zy = y @ xp.matrix_transpose(w) + self._frequencies(xp, x)[1]
        return (s * xp.cos(zx)) @ xp.matrix_transpose(s * xp.cos(zy))

    def gram_and_repulsion(self, x, h, sq=None):
        xp = namespace(x)
        h = xp.asarray(h, dtype=x.dtype, device=device_of(x))
        z, w, s = self._features(xp, x, h)
        phi = s * xp.cos(z)  # (n, m)
        k = phi @ xp.matrix_transpose(phi)
        c = -s * xp.sum(xp.sin(z), axis=-2)  # (m,) (or (B, m))
        r = phi @ (c[..., None] * w)
        return k, r


#: kernels by name (one name each)
KERNEL_NAMES = {"rbf": RBF, "imq": IMQ, "linear": Linear, "rff": RandomFeatureRBF}


def get_kernel(spec: Any = None) -> Kernel:
    """Resolve a kernel from ``None`` (RBF), a name, or a :class:`Kernel` instance."""
    if spec is None:
        return RBF()
    if isinstance(spec, Kernel):
        return spec
    if isinstance(spec, str):
        key = spec.lower().replace("-", "_")
        if key in KERNEL_NAMES:
            return KERNEL_NAMES[key]()
        raise ValueError(f"unknown kernel {spec!r}; expected one of {sorted(KERNEL_NAMES)} or a Kernel")
    raise TypeError(f"expected a kernel name, a Kernel instance or None, received {type(spec).__name__}")

