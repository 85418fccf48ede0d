"""SKSD-g (Gong, Li & Hernandez-Lobato 2021) and its gradient in the slices: brute force on every backend,
finite differences, the third derivative of the kernel profiles, the ascent finds the best slices, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import particlesampling as ps
from particlesampling.diagnostics.sksd import sliced_ksd
from tests.unit.stein_reference import sksd_value

SLICES = np.array([[2.0, 1.0, -1.0], [0.3, 1.0, 0.2], [-1.0, 0.5, 1.5]])  # not unit, not orthogonal, g_rr of both signs


def _data(rng, n=6, d=3):
    x = rng.normal(size=(n, d))
    return x, -x @ np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 0.5]])[:d, :d] + 0.1 * rng.normal(size=(n, d))


@pytest.mark.parametrize("slices,bandwidth,statistic", [(None, None, "v"), (SLICES, None, "v"), (SLICES, 0.7, "v"),
                                                        (SLICES, 0.7, "u")])
def test_value_and_gradient_match_brute_force(xp_backend, rng, slices, bandwidth, statistic):
    x, s = _data(rng)
    v = np.eye(3) if slices is None else slices
    got = sliced_ksd(xp_backend.asarray(x), xp_backend.asarray(s), None if slices is None else xp_backend.asarray(v),
                     bandwidth=bandwidth, statistic=statistic, gradient=True)
    xr, sr, vr = xp_backend.cast_np(x), xp_backend.cast_np(s), xp_backend.cast_np(v)
    want = sksd_value(xr, sr, vr, bandwidth, statistic)
    f32 = xp_backend.dtype_name == "float32"
    xp_backend.assert_close(got.per_slice, want, rtol=2e-3 if f32 else 1e-10)
    xp_backend.assert_close(got.value, want.sum(), rtol=2e-3 if f32 else 1e-10)
    alone = sliced_ksd(xp_backend.asarray(x), xp_backend.asarray(s), None if slices is None else xp_backend.asarray(v),
                       bandwidth=bandwidth, statistic=statistic, gradient=True, value=False)
    assert alone.value is None and alone.per_slice is None
    xp_backend.assert_close(alone.gradient, xp_backend.to_numpy(got.gradient), rtol=1e-12)
    # the gradient: central differences of the brute force, slice by slice at the slice's bandwidth (a median's
    # is held fixed: the gradient is the partial derivative at the bandwidth used)
    hs = np.asarray(xp_backend.to_numpy(got.bandwidth), dtype=float)
    if bandwidth is not None:
        np.testing.assert_allclose(hs, bandwidth, rtol=1e-6)
    grad = np.asarray(xp_backend.to_numpy(got.gradient), dtype=float)
    for r in range(3):
        np.testing.assert_allclose(grad[r], sksd_gradient_fd_slice(xr, sr, vr, hs[r], r, statistic),
                                   rtol=1e-3 if f32 else 1e-6, atol=1e-3 if f32 else 1e-8)


def sksd_gradient_fd_slice(x, s, v, h, r, statistic, eps=1e-5):
    """Central differences of slice r's term in row r of ``v`` at its own fixed bandwidth ``h``."""
    out = np.zeros(v.shape[1])
    for b in range(v.shape[1]):
        up, down = v.copy(), v.copy()
        up[r, b] += eps
        down[r, b] -= eps
        out[b] = (sksd_value(x, s, up, h, statistic)[r] - sksd_value(x, s, down, h, statistic)[r]) / (2 * eps)
    return out


@pytest.mark.parametrize("kernel", ["rbf", "imq", ps.IMQ(c=0.5, beta=-0.3)])
def test_gradient_matches_finite_differences_of_the_value(rng, kernel):
    """Other kernels than the brute force's RBF: central differences of the (brute-force-checked) value."""
    x, s = _data(rng, n=7)
    v = SLICES + 0.1 * rng.normal(size=(3, 3))
    got = sliced_ksd(x, s, v, kernel, 0.9, gradient=True).gradient
    eps = 1e-6
    for a in range(3):
        for b in range(3):
            up, down = v.copy(), v.copy()
            up[a, b] += eps
            down[a, b] -= eps
            fd = (float(sliced_ksd(x, s, up, kernel, 0.9).value) - float(sliced_ksd(x, s, down, kernel, 0.9).value)) / (2 * eps)
            assert abs(got[a, b] - fd) <= 1e-7 * max(1.0, abs(fd))


@pytest.mark.parametrize("kernel", [ps.RBF(), ps.IMQ(), ps.IMQ(c=0.5, beta=-0.3)])
def test_third_derivative_of_the_profile(kernel):
    u = np.linspace(0.0, 4.0, 9)
    eps = 1e-5
    fd = (kernel.profile(u + eps)[2] - kernel.profile(u - eps)[2]) / (2 * eps)
    np.testing.assert_allclose(kernel.third_derivative(u), fd, rtol=1e-7, atol=1e-9)


def test_gradient_is_tangent_to_the_slices_and_scales_with_their_length(rng):
    """``g_r = v_r / |v_r|``: the value is the same for ``v`` and ``2 v``, the gradient is orthogonal to ``v_r``
    and halves."""
    x, s = _data(rng)
    one = sliced_ksd(x, s, SLICES, gradient=True)
    two = sliced_ksd(x, s, 2.0 * SLICES, gradient=True)
    np.testing.assert_allclose(two.value, one.value, rtol=1e-12)
    np.testing.assert_allclose(np.sum(one.gradient * SLICES, axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(two.gradient, one.gradient / 2.0, rtol=1e-10, atol=1e-14)


def test_ascent_finds_the_best_slices_where_the_identity_is_poor():
    """d = 2: particles from N(0, I), target N(0, Sigma) with Sigma's axes at 45 degrees (variances 4 and 0.25),
    so the identity slices see the mismatch only partly. Each slice's term as a function of its angle,
    g_r = (cos t, sin t), is maximised on a grid of 3,600 angles; plain gradient ascent (fixed h = 1, the
    objective then a fixed function of the slices) from the identity reaches that maximum to 1e-6 relative
    (the grid's resolution, 1e-3 rad, bounds the error of the grid's maximum by about 1e-6 of the curvature),
    and the identity is more than 10 % below it."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 2))
    rot = np.array([[1.0, -1.0], [1.0, 1.0]]) / np.sqrt(2.0)
    prec = rot @ np.diag([1 / 4.0, 4.0]) @ rot.T
    s = -x @ prec
    t = np.linspace(-np.pi, np.pi, 3600, endpoint=False)
    best = np.zeros(2)
    for r in range(2):
        vals = [float(sliced_ksd(x, s, _slice_at(r, a), bandwidth=1.0).per_slice[r]) for a in t]
        best[r] = max(vals)
    start = sliced_ksd(x, s, None, bandwidth=1.0).per_slice
    assert np.all(start < 0.9 * best)
    v, rule = np.eye(2), ps.constant(0.05)
    state = rule.init(v)
    values = [float(sliced_ksd(x, s, v, bandwidth=1.0).value)]
    for _ in range(400):
        delta, state = rule.update(sliced_ksd(x, s, v, bandwidth=1.0, gradient=True).gradient, state)
        v = v + delta
        values.append(float(sliced_ksd(x, s, v, bandwidth=1.0).value))
    assert np.all(np.diff(values) > -1e-12)  # ascent: the value never decreases
    np.testing.assert_allclose(sliced_ksd(x, s, v, bandwidth=1.0).per_slice, best, rtol=1e-6)


def _slice_at(r, angle):
    v = np.eye(2)
    v[r] = [np.cos(angle), np.sin(angle)]
    return v


def test_bad_input(rng):
    x, s = _data(rng)
    with pytest.raises(ValueError, match=r"slices of shape \(3, 3\)"):
        sliced_ksd(x, s, np.eye(2))
    with pytest.raises(TypeError, match="third derivative"):
        sliced_ksd(x, s, kernel=_NoThird(), gradient=True)
    with pytest.raises(TypeError, match="radial kernel"):
        sliced_ksd(x, s, kernel="linear")
    with pytest.raises(ValueError, match="U-statistic needs n >= 2"):
        sliced_ksd(x[:1], s[:1], statistic="u")
    with pytest.raises(ValueError, match="statistic"):
        sliced_ksd(x, s, statistic="w")
    bad = s.copy()
    bad[4, 2] = np.inf
    with pytest.raises(ValueError, match=r"scores contain non-finite values \(first at row 4\)"):
        sliced_ksd(x, bad)
    with np.errstate(invalid="ignore", over="ignore"):  # unchecked: the infinity propagates
        assert not np.isfinite(float(sliced_ksd(x, bad, check_finite=False).value))


class _NoThird(ps.kernels.RadialKernel):
    def profile(self, u):
        f = np.exp(-u)
        return f, -f, f
