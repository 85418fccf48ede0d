"""GFSF and Blob (Liu et al. 2019; Chen et al. 2018): brute force on every backend and JAX, known answers."""

from __future__ import annotations

import numpy as np
import pytest

import particlesampling as ps
from particlesampling.particle_flows import blob_direction, gfsf_direction
from tests.unit.stein_reference import blob_direction as blob_ref
from tests.unit.stein_reference import gfsf_direction as gfsf_ref
from tests.unit.stein_reference import liu_wang_bandwidth


def _data(rng, n=7, d=3):
    x = rng.normal(size=(n, d))
    return x, -x + 0.3 * rng.normal(size=(n, d))


@pytest.mark.parametrize("bandwidth", [1.3, None])
def test_gfsf_matches_brute_force(xp_backend, rng, bandwidth):
    x, s = _data(rng)
    xr, sr = xp_backend.cast_np(x), xp_backend.cast_np(s)
    h = 1.3 if bandwidth else liu_wang_bandwidth(xr)
    v, info = gfsf_direction(xp_backend.asarray(x), xp_backend.asarray(s), bandwidth=bandwidth, ridge=0.05)
    assert xp_backend.is_native(v)
    # the solve amplifies rounding by cond(K + ridge I) (a few hundred here): float32 gets 1e-3
    xp_backend.assert_close(v, gfsf_ref(xr, sr, h, 0.05), rtol=1e-3 if xp_backend.dtype_name == "float32" else None)
    xp_backend.assert_close(info.bandwidth, h)


@pytest.mark.parametrize("bandwidth", [1.3, None])
def test_blob_matches_brute_force(xp_backend, rng, bandwidth):
    x, s = _data(rng)
    xr, sr = xp_backend.cast_np(x), xp_backend.cast_np(s)
    h = 1.3 if bandwidth else liu_wang_bandwidth(xr)
    v, _ = blob_direction(xp_backend.asarray(x), xp_backend.asarray(s), bandwidth=bandwidth)
    assert xp_backend.is_native(v)
    xp_backend.assert_close(v, blob_ref(xr, sr, h))


@pytest.mark.parametrize("make", ["gfsf", "blob"])
def test_sampler_steps_match_brute_force(rng, make):
    x, _ = _data(rng, n=6, d=2)
    sampler = ps.get_sampler(make, lambda z: -2.0 * z, 0.05, bandwidth=0.8)
    state = sampler.init(x)
    xr = x.copy()
    for _ in range(3):
        state, info = sampler.step(state)
        v = gfsf_ref(xr, -2.0 * xr, 0.8, 1e-3) if make == "gfsf" else blob_ref(xr, -2.0 * xr, 0.8)
        xr = xr + 0.05 * v
    np.testing.assert_allclose(state.particles, xr, rtol=1e-10, atol=1e-12)
    assert bool(info.finite) and float(info.bandwidth) == pytest.approx(0.8)


@pytest.mark.parametrize("make", ["gfsf", "blob"])
def test_jax_eager_and_jit_match_brute_force(rng, make):
    jax = pytest.importorskip("jax")
    x, s = _data(rng, n=6, d=2)
    fn = {"gfsf": lambda a, b: gfsf_direction(a, b, bandwidth=0.9, ridge=0.1)[0],
          "blob": lambda a, b: blob_direction(a, b, bandwidth=0.9)[0]}[make]
    ref = gfsf_ref(x, s, 0.9, 0.1) if make == "gfsf" else blob_ref(x, s, 0.9)
    with jax.enable_x64(True):
        xj, sj = jax.numpy.asarray(x), jax.numpy.asarray(s)
        np.testing.assert_allclose(np.asarray(fn(xj, sj)), ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(jax.jit(fn)(xj, sj)), ref, rtol=1e-10, atol=1e-12)


def test_one_particle_is_the_score():
    x, s = np.array([[0.3, -1.0]]), np.array([[2.0, 0.5]])
    # one particle: R = 0, so both directions are the score
    np.testing.assert_allclose(gfsf_direction(x, s)[0], s)
    np.testing.assert_allclose(blob_direction(x, s)[0], s)


def test_blob_is_kde_log_gradient_known_answer():
    """Two particles at +-a with RBF bandwidth h: rowsums are equal (1 + e), so Blob's estimate is twice
    the KDE's, grad log q(a) = -(2/h)(2a) e / (1 + e) with e = exp(-4a^2/h), by hand."""
    a, h = 0.4, 1.0
    x = np.array([[a], [-a]])
    e = np.exp(-4 * a * a / h)
    kde = -(2.0 / h) * (2 * a) * e / (1 + e)
    v, _ = blob_direction(x, np.zeros_like(x), bandwidth=h)
    np.testing.assert_allclose(v[:, 0], [-2 * kde, 2 * kde], rtol=1e-13)


@pytest.mark.slow
@pytest.mark.parametrize("make", ["gfsf", "blob"])
def test_known_answer_gaussian_moments(make):
    """On the 2-D correlated Gaussian both flows reach its mean within 0.1 and its covariance within
    30 % (relative Frobenius) with 100 particles, the accuracy of SVGD's fixed point on it."""
    target = ps.get_target("gaussian")
    sampler = ps.get_sampler(make, target.score, 0.02)
    state, _ = ps.run_sampler(sampler, sampler.init(target.initial_particles(100, seed=1)), 1500, trace_every=500)
    assert float(ps.mean_error(state.particles, target.mean)) < 0.1
    assert float(ps.cov_error(state.particles, target.cov)) < 0.3


def test_bad_arguments():
    with pytest.raises(ValueError, match="ridge >= 0"):
        ps.gfsf(lambda x: -x, 0.1, ridge=-1.0)
    with pytest.raises(TypeError, match="radial kernel"):
        ps.blob(lambda x: -x, 0.1, kernel="linear")
    with pytest.raises(ValueError, match="unknown kernel"):
        ps.gfsf(lambda x: -x, 0.1, kernel="nope")
    with pytest.raises(ValueError):
        gfsf_direction(np.zeros((3, 2)), np.zeros((3, 3)))
