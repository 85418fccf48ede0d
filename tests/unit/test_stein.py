"""The Stein direction phi = (K S + alpha R) / n: brute force, invariants, info, bad input, GPU."""

from __future__ import annotations

import math

import numpy as np
import pytest

from particlesampling import IMQ, RBF, Linear, RandomFeatureRBF, SteinInfo, stein_direction, stein_direction_with_info

# ---------------------------------------------------------------------------------------------
# Independent reference: phi_i = (1/n) sum_j [ k(x_j, x_i) s_j + alpha grad_{x_j} k(x_j, x_i) ]
# ---------------------------------------------------------------------------------------------


def _profile(kname):
    """(f, f') of k = f(u), u = sum_k (x_k - y_k)^2 / h_k, written out by hand."""
    if kname == "rbf":
        return (lambda u: math.exp(-u)), (lambda u: -math.exp(-u))
    c, beta = {"imq": (1.0, -0.5), "imq2": (2.0, -0.3)}[kname]
    return (lambda u: (c * c + u) ** beta), (lambda u: beta * (c * c + u) ** (beta - 1.0))


KERNEL_OBJ = {"rbf": RBF(), "imq": IMQ(), "imq2": IMQ(c=2.0, beta=-0.3)}


def brute_phi(x, s, kname, h, alpha=1.0):
    n, d = x.shape
    phi = np.zeros((n, d))
    if kname == "linear":  # k(x, y) = x.y + 1, grad_{x_j} k(x_j, x_i) = x_i
        for i in range(n):
            for j in range(n):
                phi[i] += (float(x[j] @ x[i]) + 1.0) * s[j] + alpha * x[i]
        return phi / n
    f, fp = _profile(kname)
    hv = np.broadcast_to(np.asarray(h, dtype=np.float64), (d,))
    for i in range(n):
        for j in range(n):
            u = float(np.sum((x[j] - x[i]) ** 2 / hv))
            phi[i] += f(u) * s[j] + alpha * fp(u) * 2.0 * (x[j] - x[i]) / hv
    return phi / n


def _liu_wang_h(x):
    """Liu & Wang's rule written out: numpy.median of all n^2 squared distances / log(n + 1)."""
    n = x.shape[0]
    d2 = np.array([[np.sum((a - b) ** 2) for b in x] for a in x])
    return np.median(d2) / math.log(n + 1)


def _data(rng, n=6, d=3):
    x = rng.standard_normal((n, d))
    s = -x + 0.3 * rng.standard_normal((n, d))
    return x, s


@pytest.mark.parametrize("alpha", [1.0, 0.01, 0.0, 2])
@pytest.mark.parametrize(
    "kname, bw",
    [("rbf", 1.3), ("rbf", (0.5, 1.0, 2.0)), ("imq", 0.8), ("imq2", (2.0, 0.7, 1.1)), ("linear", None)],
)
def test_phi_matches_brute_force(xp_backend, kname, bw, alpha, rng):
    x64, s64 = _data(rng)
    xr, sr = xp_backend.cast_np(x64), xp_backend.cast_np(s64)
    kernel = Linear() if kname == "linear" else KERNEL_OBJ[kname]
    bandwidth = list(bw) if isinstance(bw, tuple) else bw
    hr = None if bw is None else xp_backend.cast_np(bw)
    expected = brute_phi(xr, sr, kname, hr, alpha)
    phi = stein_direction(xp_backend.asarray(x64), xp_backend.asarray(s64), kernel, bandwidth, alpha)
    assert xp_backend.is_native(phi)
    xp_backend.assert_close(phi, expected)


@pytest.mark.parametrize("kname", ["rbf", "imq"])
def test_phi_default_bandwidth_matches_brute_force(xp_backend, kname, rng):
    x64, s64 = _data(rng, n=7, d=2)
    xr, sr = xp_backend.cast_np(x64), xp_backend.cast_np(s64)
    expected = brute_phi(xr, sr, kname, _liu_wang_h(xr))
    phi = stein_direction(xp_backend.asarray(x64), xp_backend.asarray(s64), kernel=kname)
    xp_backend.assert_close(phi, expected)


def test_phi_hand_worked():
    """x = (0, 1) (d = 1), s = (1, -1), h = 1, RBF: K01 = e^-1.
    phi_0 = (1/2)[k00 s0 + k10 s1 + grad_{x1} k(x1, x0)] = (1/2)[1 - e^-1 + (-e^-1)(2)(1 - 0)] = (1 - 3e^-1)/2
    phi_1 = (1/2)[k01 s0 + k11 s1 + grad_{x0} k(x0, x1)] = (1/2)[e^-1 - 1 + (-e^-1)(2)(0 - 1)] = (3e^-1 - 1)/2"""
    e = math.exp(-1.0)
    phi = stein_direction(np.array([[0.0], [1.0]]), np.array([[1.0], [-1.0]]), "rbf", 1.0)
    np.testing.assert_allclose(phi, [[(1 - 3 * e) / 2], [(3 * e - 1) / 2]], rtol=1e-14)


def test_rff_phi_uses_its_own_gram(rng):
    """For random features phi = (K S + R)/n with K, R of the feature kernel (checked in test_kernels);
    here: K from the Gram of the features, R from finite differences of the same Gram."""
    kernel = RandomFeatureRBF(num_features=64, seed=1)
    x, s = _data(rng)
    n, d = x.shape
    k = kernel.gram(x, x, 1.5)
    r = np.zeros((n, d))
    for c in range(d):
        e = np.zeros(d)
        e[c] = 1e-6
        r[:, c] = ((kernel.gram(x + e, x, 1.5) - kernel.gram(x - e, x, 1.5)) / 2e-6).sum(axis=0)
    phi = stein_direction(x, s, kernel, 1.5)
    np.testing.assert_allclose(phi, (k @ s + r) / n, rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# SteinInfo
# ---------------------------------------------------------------------------------------------


def test_info_matches_brute_force(xp_backend, rng):
    x64, s64 = _data(rng, n=5, d=2)
    xr, sr = xp_backend.cast_np(x64), xp_backend.cast_np(s64)
    n = 5
    alpha = 0.5
    h = _liu_wang_h(xr)
    kmat = np.array([[math.exp(-np.sum((a - b) ** 2) / h) for b in xr] for a in xr])
    drive = kmat @ sr / n
    rep = brute_phi(xr, np.zeros_like(sr), "rbf", h, alpha)  # alpha R / n
    phi, info = stein_direction_with_info(xp_backend.asarray(x64), xp_backend.asarray(s64), repulsion=alpha)
    assert isinstance(info, SteinInfo)
    for val in info:
        assert xp_backend.is_native(val) or (xp_backend.name == "numpy" and isinstance(val, np.generic))
        assert xp_backend.dtype_of(val) == xp_backend.dtype_name
    xp_backend.assert_close(info.bandwidth, h)
    xp_backend.assert_close(info.mean_kernel, (kmat.sum() - np.trace(kmat)) / (n * (n - 1)))
    xp_backend.assert_close(info.driving_norm, math.sqrt(np.mean(np.sum(drive**2, axis=1))))
    xp_backend.assert_close(info.repulsion_norm, math.sqrt(np.mean(np.sum(rep**2, axis=1))))
    xp_backend.assert_close(phi, drive + rep)


# ---------------------------------------------------------------------------------------------
# Invariants of the Stein direction (Liu & Wang 2016, eq. 8): one particle, permutation, translation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bandwidth", [None, "an2020", "blackjax", "numpyro", "pyro", 0.7, [0.3, 2.0]])
@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_one_particle_phi_is_score(xp_backend, kernel, bandwidth):
    """n = 1: K = [[f(0)]] = [[1]] (RBF; IMQ with c = 1), R = 0, so phi = s exactly."""
    s = [[0.5, -2.25]]
    phi = stein_direction(xp_backend.asarray([[3.0, -1.0]]), xp_backend.asarray(s), kernel, bandwidth)
    np.testing.assert_array_equal(xp_backend.to_numpy(phi), xp_backend.cast_np(s))


def test_one_particle_other_kernels():
    """IMQ(c=2, beta=-0.5): k(x, x) = (4)^-0.5 = 1/2, so phi = s / 2.
    Linear(c=1): k(x, x) = |x|^2 + 1 = 9 + 1 = 10 at x = (3, -1) ... |x|^2 = 10, k = 11; R = 1 * x;
    phi = 11 s + x = (5.5 + 3, -24.75 - 1) = (8.5, -25.75)."""
    x = np.array([[3.0, -1.0]])
    s = np.array([[0.5, -2.25]])
    np.testing.assert_allclose(stein_direction(x, s, IMQ(c=2.0, beta=-0.5)), s / 2, rtol=1e-15)
    np.testing.assert_allclose(stein_direction(x, s, "linear"), [[8.5, -25.75]], rtol=1e-15)


@pytest.mark.parametrize("bandwidth", [None, "an2020", "blackjax", "numpyro", "pyro", 1.1])
@pytest.mark.parametrize("kernel", ["rbf", "imq", "linear"])
def test_permutation_equivariance(xp_backend, kernel, bandwidth, rng):
    x64, s64 = _data(rng, n=9, d=3)
    perm = rng.permutation(9)
    phi = xp_backend.to_numpy(stein_direction(xp_backend.asarray(x64), xp_backend.asarray(s64), kernel, bandwidth))
    phi_p = stein_direction(xp_backend.asarray(x64[perm]), xp_backend.asarray(s64[perm]), kernel, bandwidth)
    xp_backend.assert_close(phi_p, phi[perm].astype(np.float64), rtol=2e-5 if xp_backend.dtype_name == "float32" else 1e-12)


@pytest.mark.parametrize("bandwidth", [None, "an2020", "blackjax", "numpyro", "pyro", 1.1])
@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_translation_invariance(xp_backend, kernel, bandwidth, rng):
    """Shift particles and target by t: scores at the shifted particles are the old scores, and
    phi (a velocity, radial kernels) is unchanged."""
    x64, s64 = _data(rng, n=8, d=3)
    t = np.array([0.5, -1.5, 2.0])  # exactly representable; x + t rounds in float32
    x_shift = xp_backend.cast_np(x64) + t  # exact in float64; small rounding in float32
    phi = xp_backend.to_numpy(stein_direction(xp_backend.asarray(x64), xp_backend.asarray(s64), kernel, bandwidth))
    phi_t = stein_direction(xp_backend.asarray(x_shift), xp_backend.asarray(s64), kernel, bandwidth)
    xp_backend.assert_close(phi_t, phi.astype(np.float64), rtol=5e-4 if xp_backend.dtype_name == "float32" else 1e-10)


@pytest.mark.parametrize("bandwidth", [1.0, None])
def test_float32_far_from_origin_matches_brute_force(bandwidth):
    """Regression: with an uncentred Gram trick phi was off by ~27% here."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((20, 3)) + 1000.0).astype(np.float32)
    s = (-(x - 1000.0)).astype(np.float32)
    xr, sr = x.astype(np.float64), s.astype(np.float64)
    h = 1.0 if bandwidth is not None else _liu_wang_h(xr)
    expected = brute_phi(xr, sr, "rbf", h)
    phi = stein_direction(x, s, "rbf", bandwidth).astype(np.float64)
    np.testing.assert_allclose(phi, expected, rtol=0, atol=2e-3 * np.abs(expected).max())


@pytest.mark.parametrize("kernel", ["rbf", "imq", "linear", "rff"])
def test_namespace_dtype_device_preserved(xp_backend, kernel, rng):
    x64, s64 = _data(rng, n=4, d=2)
    x, s = xp_backend.asarray(x64), xp_backend.asarray(s64)
    phi, info = stein_direction_with_info(x, s, kernel)
    assert xp_backend.is_native(phi), type(phi)
    assert tuple(phi.shape) == (4, 2)
    assert xp_backend.dtype_of(phi) == xp_backend.dtype_name
    assert xp_backend.device_of(phi) == xp_backend.device
    assert xp_backend.is_native(info.bandwidth)
    assert xp_backend.dtype_of(info.bandwidth) == xp_backend.dtype_name
    assert np.all(np.isfinite(xp_backend.to_numpy(phi)))
    # inputs are not modified
    np.testing.assert_array_equal(xp_backend.to_numpy(x), xp_backend.cast_np(x64))
    np.testing.assert_array_equal(xp_backend.to_numpy(s), xp_backend.cast_np(s64))


def test_repulsion_zero_is_kernel_smoothed_score(rng):
    """alpha = 0: phi = K S / n; with h -> huge, K -> all ones and phi_i -> mean_j s_j."""
    x, s = _data(rng)
    phi = stein_direction(x, s, "rbf", 1e12, repulsion=0.0)
    np.testing.assert_allclose(phi, np.tile(s.mean(axis=0), (6, 1)), rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_input_shapes_and_types():
    x = np.zeros((5, 2)) + np.arange(5.0)[:, None]
    with pytest.raises(ValueError, match=r"expected scores of the same shape as particles \(5, 2\), received \(5, 3\)"):
        stein_direction(x, np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"same shape as particles"):
        stein_direction(x, np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"expected particles of shape \(n, d\), received shape \(5,\)"):
        stein_direction(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match=r"expected particles of shape \(n, d\), received shape \(2, 2, 2\)"):
        stein_direction(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match=r"expected particles with n >= 1 and d >= 1, received shape \(0, 3\)"):
        stein_direction(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"n >= 1 and d >= 1, received shape \(3, 0\)"):
        stein_direction(np.zeros((3, 0)), np.zeros((3, 0)))
    with pytest.raises(TypeError, match=r"expected particles of a real floating dtype, received int64"):
        stein_direction(np.zeros((3, 2), dtype=np.int64), np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(TypeError, match=r"real floating dtype"):
        stein_direction(np.zeros((3, 2), dtype=np.complex128), np.zeros((3, 2), dtype=np.complex128))
    with pytest.raises(TypeError, match=r"expected scores of dtype float64 \(as particles\), received float32"):
        stein_direction(x, np.zeros((5, 2), dtype=np.float32))
    with pytest.raises(TypeError, match=r"expected scores of dtype float64 \(as particles\), received int64"):
        stein_direction(x, np.zeros((5, 2), dtype=np.int64))


def test_bad_input_mixed_namespaces():
    torch = pytest.importorskip("torch")
    x = np.ones((3, 2))
    with pytest.raises(TypeError, match=r"expected arrays of one array library.*numpy\.ndarray, torch\.Tensor"):
        stein_direction(x, torch.ones(3, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"expected arrays of one array library"):
        stein_direction(torch.ones(3, 2, dtype=torch.float64), x)


def test_bad_input_mixed_numpy_and_strict():
    xs = pytest.importorskip("array_api_strict")
    with pytest.raises(TypeError, match=r"expected arrays of one array library.*array_api_strict"):
        stein_direction(np.ones((3, 2)), xs.ones((3, 2)))


def test_bad_input_not_an_array():
    with pytest.raises(TypeError, match=r"expected arrays of one array library"):
        stein_direction([[0.0, 1.0]], [[0.0, 1.0]])


def test_bad_kernel_and_repulsion():
    x = np.array([[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match=r"unknown kernel 'matern'; expected one of"):
        stein_direction(x, -x, kernel="matern")
    with pytest.raises(TypeError, match=r"expected a kernel name, a Kernel instance or None"):
        stein_direction(x, -x, kernel=1.0)
    for bad in ["1.0", None, float("nan"), float("inf"), True, [1.0], 1 + 0j]:
        with pytest.raises(TypeError, match=r"expected repulsion as a finite real number"):
            stein_direction(x, -x, repulsion=bad)


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kernel, bandwidth", [("rbf", None), ("rbf", "an2020"), ("rbf", "pyro"), ("imq", "blackjax"),
                                               ("imq", "numpyro"), ("linear", None), ("rff", 1.5), ("rbf", 0.9)])
def test_cuda_matches_cpu(kernel, bandwidth, dtype):
    import torch

    rng = np.random.default_rng(3)
    x64, s64 = _data(rng, n=33, d=5)
    dt = getattr(torch, dtype)
    xc, sc = torch.as_tensor(x64, dtype=dt), torch.as_tensor(s64, dtype=dt)
    phi_cpu, info_cpu = stein_direction_with_info(xc, sc, kernel, bandwidth)
    phi_gpu, info_gpu = stein_direction_with_info(xc.cuda(), sc.cuda(), kernel, bandwidth)
    assert phi_gpu.device.type == "cuda" and phi_gpu.dtype == dt
    assert info_gpu.bandwidth.device.type == "cuda"
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(phi_gpu.cpu(), phi_cpu, **tol)
    torch.testing.assert_close(info_gpu.bandwidth.cpu(), info_cpu.bandwidth, **tol)


def test_repulsion_accepts_numpy_scalars_and_refuses_arrays():
    """NumPy scalars are real numbers (as before the samplers split); a 1-element array is not."""
    x = np.random.default_rng(3).standard_normal((6, 2))
    ref = stein_direction(x, -x, repulsion=0.5)
    np.testing.assert_array_equal(stein_direction(x, -x, repulsion=np.float64(0.5)), ref)
    np.testing.assert_allclose(stein_direction(x, -x, repulsion=np.float32(0.5)), ref, rtol=1e-15)
    np.testing.assert_array_equal(stein_direction(x, -x, repulsion=np.int64(1)), stein_direction(x, -x))
    with pytest.raises(TypeError, match="repulsion as a finite real number"):
        stein_direction(x, -x, repulsion=np.array([0.5]))
