"""Kernels: Gram matrices and repulsion against brute force, finite differences and autograd.

Every expected value is computed in this file, in float64, from the kernel's formula written out
here (double loops over particles), by central finite differences, or by torch autograd. The code
under test is only ever the thing being checked.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from particlesampling import _backend
from particlesampling.kernels import IMQ, RBF, Kernel, Linear, RandomFeatureRBF, get_kernel

# ---------------------------------------------------------------------------------------------
# Independent reference formulas: k(x, y) = f(u), u = sum_k (x_k - y_k)^2 / h_k.
# f and f' are written out by hand for each kernel (not taken from the package).
# ---------------------------------------------------------------------------------------------


def _rbf(u):
    return math.exp(-u)


def _rbf_d(u):
    return -math.exp(-u)


def _rbf_dd(u):
    return math.exp(-u)


def _imq(c, beta):
    return (
        lambda u: (c * c + u) ** beta,
        lambda u: beta * (c * c + u) ** (beta - 1.0),
        lambda u: beta * (beta - 1.0) * (c * c + u) ** (beta - 2.0),
    )


RADIAL = {
    "rbf": (RBF(), _rbf, _rbf_d, _rbf_dd),
    "imq-c1-b-0.5": (IMQ(), *_imq(1.0, -0.5)),
    "imq-c0.5-b-0.3": (IMQ(c=0.5, beta=-0.3), *_imq(0.5, -0.3)),
    "imq-c2-b-0.9": (IMQ(c=2.0, beta=-0.9), *_imq(2.0, -0.9)),
    "imq-c1.5-b-0.1": (IMQ(c=1.5, beta=-0.1), *_imq(1.5, -0.1)),
}

SCALAR_H = 1.7
VECTOR_H = (0.6, 1.5, 3.0)  # per-dimension bandwidths for d = 3


def _u(a, b, h):
    """u = sum_k (a_k - b_k)^2 / h_k for scalar or per-dimension h (plain Python loop)."""
    h = np.broadcast_to(np.asarray(h, dtype=np.float64), a.shape)
    return float(sum((a[k] - b[k]) ** 2 / h[k] for k in range(a.shape[0])))


def brute_gram(x, y, h, f):
    n, m = x.shape[0], y.shape[0]
    k = np.empty((n, m))
    for i in range(n):
        for j in range(m):
            k[i, j] = f(_u(x[i], y[j], h))
    return k


def brute_repulsion(x, h, fprime):
    """R_i = sum_j grad_{x_j} k(x_j, x_i) = sum_j f'(u_ji) * 2 (x_j - x_i) / h, double loop."""
    n, d = x.shape
    hv = np.broadcast_to(np.asarray(h, dtype=np.float64), (d,))
    r = np.zeros((n, d))
    for i in range(n):
        for j in range(n):
            r[i] += fprime(_u(x[j], x[i], h)) * 2.0 * (x[j] - x[i]) / hv
    return r


def fd_repulsion(x, kfun, delta=1e-5):
    """R_i = sum_j grad_{x_j} k(x_j, x_i) by central differences of kfun(y, x) in each coordinate of y."""
    n, d = x.shape
    r = np.zeros((n, d))
    for i in range(n):
        for j in range(n):
            for c in range(d):
                e = np.zeros(d)
                e[c] = delta
                r[i, c] += (kfun(x[j] + e, x[i]) - kfun(x[j] - e, x[i])) / (2.0 * delta)
    return r


def _data(rng, n=6, d=3, scale=0.8):
    return scale * rng.standard_normal((n, d))


def _h_np(kind):
    return np.float64(SCALAR_H) if kind == "scalar" else np.asarray(VECTOR_H, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Radial kernels: Gram and repulsion vs a double loop, on every backend and dtype
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hkind", ["scalar", "per_dim"])
@pytest.mark.parametrize("kname", list(RADIAL))
def test_radial_gram_and_repulsion_match_double_loop(xp_backend, kname, hkind, rng):
    kernel, f, fp, _ = RADIAL[kname]
    x64 = _data(rng)
    h64 = _h_np(hkind)
    # the reference uses the inputs as rounded to the backend's dtype
    xr, hr = xp_backend.cast_np(x64), xp_backend.cast_np(h64)
    k_ref = brute_gram(xr, xr, hr, f)
    r_ref = brute_repulsion(xr, hr, fp)

    x = xp_backend.asarray(x64)
    h = xp_backend.asarray(h64)
    k, r = kernel.gram_and_repulsion(x, h)

    assert xp_backend.is_native(k) and xp_backend.is_native(r)
    assert tuple(k.shape) == (6, 6) and tuple(r.shape) == (6, 3)
    assert xp_backend.dtype_of(k) == xp_backend.dtype_name == xp_backend.dtype_of(r)
    xp_backend.assert_close(k, k_ref, err_msg="Gram matrix")
    xp_backend.assert_close(r, r_ref, err_msg="repulsion")


@pytest.mark.parametrize("kname", list(RADIAL))
def test_radial_repulsion_python_float_bandwidth_and_given_sq(kname, rng):
    """h as a plain float; a precomputed sq (the brute-force D2 here) is used as given."""
    kernel, f, fp, _ = RADIAL[kname]
    x = _data(rng, n=5, d=2)
    d2 = np.array([[np.sum((a - b) ** 2) for b in x] for a in x])  # loop, independent of sqdist
    k1, r1 = kernel.gram_and_repulsion(x, 0.9)
    k2, r2 = kernel.gram_and_repulsion(x, 0.9, sq=d2)
    for k, r in ((k1, r1), (k2, r2)):
        np.testing.assert_allclose(k, brute_gram(x, x, 0.9, f), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(r, brute_repulsion(x, 0.9, fp), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("hkind", ["scalar", "per_dim"])
@pytest.mark.parametrize("kname", list(RADIAL))
def test_radial_repulsion_matches_finite_differences(kname, hkind, rng):
    kernel, f, _, _ = RADIAL[kname]
    x = _data(rng)
    h = _h_np(hkind)

    def kfun(a, b):
        return f(_u(a, b, h))

    r_fd = fd_repulsion(x, kfun)
    _, r = kernel.gram_and_repulsion(x, h)
    np.testing.assert_allclose(r, r_fd, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("hkind", ["scalar", "per_dim"])
@pytest.mark.parametrize("kname", ["rbf", "imq-c1-b-0.5", "imq-c2-b-0.9"])
def test_radial_repulsion_matches_torch_autograd(kname, hkind, rng):
    torch = pytest.importorskip("torch")
    kernel = RADIAL[kname][0]
    c, beta = (kernel.c, kernel.beta) if isinstance(kernel, IMQ) else (None, None)
    x64 = _data(rng)
    h = torch.as_tensor(_h_np(hkind), dtype=torch.float64)
    xt = torch.as_tensor(x64, dtype=torch.float64)

    def f_torch(u):
        return torch.exp(-u) if c is None else (c * c + u) ** beta

    r_ref = torch.zeros_like(xt)
    for i in range(xt.shape[0]):
        y = xt.clone().requires_grad_(True)
        u = torch.sum((y - xt[i]) ** 2 / h, dim=1)  # u(x_j, x_i) for all j
        (g,) = torch.autograd.grad(f_torch(u).sum(), y)
        r_ref[i] = g.sum(dim=0)  # sum_j grad_{x_j} k(x_j, x_i)
    _, r = kernel.gram_and_repulsion(xt, h)
    torch.testing.assert_close(r, r_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("hkind", ["scalar", "per_dim"])
@pytest.mark.parametrize("kname", list(RADIAL))
def test_radial_cross_gram_matches_double_loop(xp_backend, kname, hkind, rng):
    kernel, f, _, _ = RADIAL[kname]
    x64, y64 = _data(rng, n=5), _data(rng, n=4)
    h64 = _h_np(hkind)
    ref = brute_gram(xp_backend.cast_np(x64), xp_backend.cast_np(y64), xp_backend.cast_np(h64), f)
    k = kernel.gram(xp_backend.asarray(x64), xp_backend.asarray(y64), xp_backend.asarray(h64))
    assert xp_backend.is_native(k) and tuple(k.shape) == (5, 4)
    assert xp_backend.dtype_of(k) == xp_backend.dtype_name
    xp_backend.assert_close(k, ref)


@pytest.mark.parametrize("kname", list(RADIAL))
def test_profile_matches_hand_formulas_and_finite_differences(kname):
    kernel, f, fp, fpp = RADIAL[kname]
    u = np.array([0.0, 0.1, 0.5, 1.0, 2.5, 7.0])
    f0, f1, f2 = kernel.profile(u)
    np.testing.assert_allclose(f0, [f(v) for v in u], rtol=1e-13)
    np.testing.assert_allclose(f1, [fp(v) for v in u], rtol=1e-13)
    np.testing.assert_allclose(f2, [fpp(v) for v in u], rtol=1e-13)
    # f' and f'' are the derivatives of f (central differences at u > 0)
    d = 1e-5
    up = u[1:]
    fd1 = (np.array([f(v + d) for v in up]) - np.array([f(v - d) for v in up])) / (2 * d)
    fd2 = (np.array([fp(v + d) for v in up]) - np.array([fp(v - d) for v in up])) / (2 * d)
    np.testing.assert_allclose(f1[1:], fd1, rtol=1e-7)
    np.testing.assert_allclose(f2[1:], fd2, rtol=1e-7)
    assert kernel.is_radial and kernel.uses_bandwidth


def test_rbf_hand_worked_values():
    """Two particles x0 = (0, 0), x1 = (1, 2), h = 2.5: D2 = 1 + 4 = 5, u = 2,
    K = [[1, e^-2], [e^-2, 1]], R_0 = grad_{x1} k(x1, x0) = -e^-2 * 2 (x1 - x0) / h = -0.8 e^-2 (1, 2),
    R_1 = -R_0."""
    x = np.array([[0.0, 0.0], [1.0, 2.0]])
    k, r = RBF().gram_and_repulsion(x, 2.5)
    e = math.exp(-2.0)
    np.testing.assert_allclose(k, [[1.0, e], [e, 1.0]], rtol=1e-14)
    np.testing.assert_allclose(r, [[-0.8 * e, -1.6 * e], [0.8 * e, 1.6 * e]], rtol=1e-13)


# ---------------------------------------------------------------------------------------------
# Linear kernel: k(x, y) = x.y + c, R_i = n x_i
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [0.0, 1.0, 2.5])
def test_linear_kernel_matches_double_loop(xp_backend, c, rng):
    x64 = _data(rng, n=5, d=3)
    xr = xp_backend.cast_np(x64)
    n, d = xr.shape
    k_ref = np.array([[sum(xr[i, t] * xr[j, t] for t in range(d)) + c for j in range(n)] for i in range(n)])
    r_ref = np.zeros((n, d))
    for i in range(n):
        for j in range(n):
            r_ref[i] += xr[i]  # grad_{x_j} (x_j . x_i + c) = x_i
    r_fd = fd_repulsion(xr, lambda a, b: float(a @ b) + c)
    np.testing.assert_allclose(r_ref, r_fd, rtol=1e-8, atol=1e-9)  # the loop itself is right

    kernel = Linear(c=c)
    assert not kernel.uses_bandwidth and not kernel.is_radial
    k, r = kernel.gram_and_repulsion(xp_backend.asarray(x64), None)
    assert xp_backend.is_native(k) and xp_backend.is_native(r)
    assert xp_backend.dtype_of(r) == xp_backend.dtype_name
    xp_backend.assert_close(k, k_ref)
    xp_backend.assert_close(r, r_ref)
    y64 = _data(rng, n=2, d=3)
    kxy = kernel.gram(xp_backend.asarray(x64), xp_backend.asarray(y64), None)
    xp_backend.assert_close(kxy, xr @ xp_backend.cast_np(y64).T + c)


# ---------------------------------------------------------------------------------------------
# Random features
# ---------------------------------------------------------------------------------------------


def _exact_rbf(x, h):
    return brute_gram(x, x, h, _rbf)


@pytest.mark.parametrize("h", [2.0, (0.5, 2.0, 4.0)], ids=["scalar", "per_dim"])
def test_rff_gram_error_shrinks_like_inverse_sqrt_m(h):
    x = _data(np.random.default_rng(1), n=10, d=3)
    exact = _exact_rbf(x, np.asarray(h))
    ms = [16, 64, 256, 1024, 4096]
    rms = {}
    for m in ms:
        errs = []
        for seed in range(8):
            k, _ = RandomFeatureRBF(num_features=m, seed=seed).gram_and_repulsion(x, np.asarray(h))
            errs.append(np.mean((k - exact) ** 2))
        rms[m] = math.sqrt(np.mean(errs))
    # each entry is a mean of m bounded i.i.d. terms of variance between ~0.1 and ~1:
    # RMS error * sqrt(m) stays O(1) for every m, i.e. the error shrinks like 1/sqrt(m)
    for m in ms:
        assert 0.2 < rms[m] * math.sqrt(m) < 1.5, (m, rms[m])
    assert rms[4096] < rms[16] / 8.0  # 1/sqrt(256) = 1/16 expected
    assert rms[4096] < 0.03


def test_rff_gram_is_psd_symmetric_and_deterministic():
    x = _data(np.random.default_rng(2), n=8, d=3)
    k1, _ = RandomFeatureRBF(num_features=64, seed=3).gram_and_repulsion(x, 1.5)
    k2, _ = RandomFeatureRBF(num_features=64, seed=3).gram_and_repulsion(x, 1.5)
    k3, _ = RandomFeatureRBF(num_features=64, seed=4).gram_and_repulsion(x, 1.5)
    np.testing.assert_array_equal(k1, k2)
    assert np.max(np.abs(k1 - k3)) > 1e-3
    np.testing.assert_allclose(k1, k1.T, rtol=0, atol=1e-14)
    assert np.min(np.linalg.eigvalsh(0.5 * (k1 + k1.T))) > -1e-12
    # rank <= num_features
    k_low, _ = RandomFeatureRBF(num_features=3, seed=0).gram_and_repulsion(x, 1.5)
    assert np.linalg.matrix_rank(k_low, tol=1e-10) <= 3


@pytest.mark.parametrize("hkind", ["scalar", "per_dim"])
def test_rff_repulsion_equals_finite_differences_of_its_own_kernel(xp_backend, hkind, rng):
    """R_i = sum_j grad_{x_j} k(x_j, x_i) with k the (fixed) feature kernel: FD of gram(Y, X)[j, i]
    in Y (float64 NumPy); row j of gram(Y, X) depends on y_j only, so shifting column c of all rows
    of Y at once gives d k(y_j, x_i) / d y_jc for every j."""
    kernel = RandomFeatureRBF(num_features=50, seed=7)
    x64 = _data(rng)
    h64 = _h_np(hkind)
    xr, hr = xp_backend.cast_np(x64), xp_backend.cast_np(h64)
    n, d = xr.shape
    r_fd = np.zeros((n, d))
    delta = 1e-6
    for c in range(d):
        e = np.zeros(d)
        e[c] = delta
        gp = kernel.gram(xr + e, xr, hr)
        gm = kernel.gram(xr - e, xr, hr)
        r_fd[:, c] = ((gp - gm) / (2 * delta)).sum(axis=0)
    k, r = kernel.gram_and_repulsion(xp_backend.asarray(x64), xp_backend.asarray(h64))
    assert xp_backend.is_native(r) and xp_backend.dtype_of(r) == xp_backend.dtype_name
    xp_backend.assert_close(k, kernel.gram(xr, xr, hr))
    rtol = 1e-7 if xp_backend.dtype_name == "float64" else 5e-4
    xp_backend.assert_close(r, r_fd, rtol=rtol)


def test_rff_repulsion_equals_autograd_of_its_own_kernel(rng):
    torch = pytest.importorskip("torch")
    kernel = RandomFeatureRBF(num_features=40, seed=11)
    x = torch.as_tensor(_data(rng), dtype=torch.float64)
    for h in (torch.tensor(1.3, dtype=torch.float64), torch.tensor(VECTOR_H, dtype=torch.float64)):
        y = x.clone().requires_grad_(True)
        g = kernel.gram(y, x, h)  # g[j, i] = k(y_j, x_i)
        rows = []
        for i in range(x.shape[0]):
            (gi,) = torch.autograd.grad(g[:, i].sum(), y, retain_graph=True)
            rows.append(gi.sum(dim=0))
        r_ref = torch.stack(rows)
        _, r = kernel.gram_and_repulsion(x, h)
        torch.testing.assert_close(r, r_ref, rtol=1e-10, atol=1e-12)


def test_rff_same_function_on_every_backend(xp_backend, rng):
    """The frequencies come from the seed, not from the library: the same kernel on every backend."""
    kernel = RandomFeatureRBF(num_features=32, seed=5)
    x64 = _data(rng)
    xr = xp_backend.cast_np(x64)
    exact = _exact_rbf(xr, 1.2)
    k, _ = kernel.gram_and_repulsion(xp_backend.asarray(x64), 1.2)
    k_np, _ = kernel.gram_and_repulsion(xr, 1.2)
    rtol = 1e-12 if xp_backend.dtype_name == "float64" else 1e-4
    xp_backend.assert_close(k, k_np, rtol=rtol)
    assert np.max(np.abs(xp_backend.to_numpy(k) - exact)) < 0.6  # a rough approximation of the RBF


# ---------------------------------------------------------------------------------------------
# sqdist (the D2 every kernel is built from)
# ---------------------------------------------------------------------------------------------


def test_sqdist_matches_double_loop(xp_backend, rng):
    x64, y64 = _data(rng, n=7, d=4, scale=2.0), _data(rng, n=3, d=4)
    xr, yr = xp_backend.cast_np(x64), xp_backend.cast_np(y64)
    ref = np.array([[np.sum((a - b) ** 2) for b in xr] for a in xr])
    ref_xy = np.array([[np.sum((a - b) ** 2) for b in yr] for a in xr])
    d2 = _backend.sqdist(xp_backend.asarray(x64))
    d2xy = _backend.sqdist(xp_backend.asarray(x64), xp_backend.asarray(y64))
    assert xp_backend.is_native(d2) and xp_backend.dtype_of(d2) == xp_backend.dtype_name
    tol = 1e-12 if xp_backend.dtype_name == "float64" else 2e-6
    xp_backend.assert_close(d2, ref, rtol=tol, atol_scale=tol)
    xp_backend.assert_close(d2xy, ref_xy, rtol=tol, atol_scale=tol)
    d2n = xp_backend.to_numpy(d2)
    assert np.all(np.diag(d2n) == 0.0)
    assert np.array_equal(d2n, d2n.T)
    assert np.all(d2n >= 0.0) and np.all(xp_backend.to_numpy(d2xy) >= 0.0)


def test_sqdist_nonnegative_for_near_duplicates():
    x = np.array([[1.0, 2.0, 3.0]] * 3 + [[1.0 + 1e-9, 2.0, 3.0]])
    d2 = _backend.sqdist(x)
    assert np.all(d2 >= 0.0) and np.all(np.diag(d2) == 0.0)
    assert np.max(d2) < 1e-12


def test_sqdist_float32_far_from_origin():
    """Regression: the uncentred Gram trick gave O(1) errors here (|x|^2 ~ 3e6 vs D2 ~ 1..30)."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((20, 3)) + 1000.0).astype(np.float32)
    xr = x.astype(np.float64)
    ref = np.array([[np.sum((a - b) ** 2) for b in xr] for a in xr])
    d2 = _backend.sqdist(x).astype(np.float64)
    y = x[:5] + np.float32(0.5)
    ref_xy = np.array([[np.sum((a - b) ** 2) for b in y.astype(np.float64)] for a in xr])
    np.testing.assert_allclose(_backend.sqdist(x, y).astype(np.float64), ref_xy, rtol=0, atol=1e-3 * ref_xy.max())
    # D2 entries are O(1..30); centred float32 arithmetic gets them to ~1e-5
    np.testing.assert_allclose(d2, ref, rtol=0, atol=1e-3 * ref.max())


# ---------------------------------------------------------------------------------------------
# get_kernel and argument checks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, cls",
    [(None, RBF), ("rbf", RBF), ("RBF", RBF), ("imq", IMQ), ("linear", Linear),
     ("rff", RandomFeatureRBF)],
)
def test_get_kernel_names(spec, cls):
    k = get_kernel(spec)
    assert type(k) is cls and isinstance(k, Kernel)


def test_get_kernel_defaults_and_passthrough():
    assert get_kernel("imq") == IMQ(c=1.0, beta=-0.5)
    k = IMQ(c=2.0, beta=-0.25)
    assert get_kernel(k) is k


def test_get_kernel_errors():
    with pytest.raises(ValueError, match=r"unknown kernel 'matern'.*expected one of.*rbf"):
        get_kernel("matern")
    with pytest.raises(TypeError, match="expected a kernel name, a Kernel instance or None"):
        get_kernel(3.0)
    with pytest.raises(TypeError, match="expected a kernel name"):
        get_kernel(RBF)  # the class, not an instance


@pytest.mark.parametrize("c", [0.0, -1.0, float("nan"), float("inf"), "1"])
def test_imq_rejects_bad_c(c):
    with pytest.raises(ValueError, match=r"expected IMQ c > 0"):
        IMQ(c=c)


@pytest.mark.parametrize("beta", [0.0, -1.0, 0.5, -1.5, float("nan"), "x"])
def test_imq_rejects_bad_beta(beta):
    with pytest.raises(ValueError, match=r"expected IMQ beta in \(-1, 0\)"):
        IMQ(beta=beta)


@pytest.mark.parametrize("m", [0, -3, 2.5, "8"])
def test_rff_rejects_bad_num_features(m):
    with pytest.raises(ValueError, match="expected num_features >= 1"):
        RandomFeatureRBF(num_features=m)
