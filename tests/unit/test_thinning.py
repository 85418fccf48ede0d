"""Stein thinning (Riabiz et al. 2022): brute force on every backend, bandwidths, known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest

import particlesampling as ps
from particlesampling.thinning import thinning_bandwidth
from tests.unit.stein_reference import imq_stein_kernel


def brute_thinning(x, s, m, h):
    """Riabiz et al.'s Algorithm 1 with explicit loops: objective u(x_i, x_i) + 2 sum_{chosen} u(x_i, x_c)."""
    n = x.shape[0]
    obj = np.array([imq_stein_kernel(x[i], x[i], s[i], s[i], h) for i in range(n)])
    out = []
    for _ in range(m):
        j = int(np.argmin(obj))
        out.append(j)
        obj = obj + 2.0 * np.array([imq_stein_kernel(x[i], x[j], s[i], s[j], h) for i in range(n)])
    return out


def brute_med2(x):
    n = x.shape[0]
    return float(np.median([np.linalg.norm(x[i] - x[j]) for i in range(n) for j in range(i + 1, n)])) ** 2


def test_indices_match_brute_force(xp_backend, rng):
    x = rng.normal(size=(40, 3)) + 0.4
    s = -x + 0.2 * rng.normal(size=(40, 3))
    xr, sr = xp_backend.cast_np(x), xp_backend.cast_np(s)
    h = brute_med2(xr) / math.log(40)
    got = ps.stein_thinning(xp_backend.asarray(x), xp_backend.asarray(s), 12)
    assert list(got) == brute_thinning(xr, sr, 12, h)


def test_indices_match_brute_force_jax(rng):
    jax = pytest.importorskip("jax")
    x = rng.normal(size=(30, 2))
    s = -2.0 * x
    with jax.enable_x64(True):
        got = ps.stein_thinning(jax.numpy.asarray(x), jax.numpy.asarray(s), 8, bandwidth="med")
    assert list(got) == brute_thinning(x, s, 8, brute_med2(x))


def test_bandwidths(rng):
    x = rng.normal(size=(9, 2))
    assert float(thinning_bandwidth(x, "med")) == pytest.approx(brute_med2(x), rel=1e-12)
    assert float(thinning_bandwidth(x, "sclmed")) == pytest.approx(brute_med2(x) / math.log(9), rel=1e-12)
    assert float(thinning_bandwidth(x, "id")) == 1.0 and float(thinning_bandwidth(x, 0.3)) == 0.3
    # more than 1,000 points: the median over 1,000 rows spread evenly, as in the authors' package
    big = rng.normal(size=(1500, 2))
    sub = big[np.linspace(0, 1499, 1000, dtype=int)]
    d = np.sqrt(((sub[:, None, :] - sub[None, :, :]) ** 2).sum(-1))[np.triu_indices(1000, 1)]
    assert float(thinning_bandwidth(big, "sclmed")) == pytest.approx(np.median(d) ** 2 / math.log(1000), rel=1e-10)


def test_known_answer_corrects_a_biased_chain():
    """Draws from N(0.6, 1) in 2-D scored against p = N(0, I): a random subset keeps the bias (mean
    0.6 per coordinate); the Stein-thinned 60 points of 3,000 have mean within 0.2 of the truth and a
    smaller KSD than the first 60 draws (the thinning objective is the KSD, so it must beat them)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 2)) + 0.6
    idx = ps.stein_thinning(x, -x, 60)
    assert np.all(np.abs(x[idx].mean(0)) < 0.2)
    h = float(thinning_bandwidth(x, "sclmed"))
    assert float(ps.ksd(x[idx], -x[idx], "imq", h)) < float(ps.ksd(x[:60], -x[:60], "imq", h))


def test_bad_input(rng):
    x = rng.normal(size=(5, 2))
    with pytest.raises(ValueError, match="positive integer"):
        ps.stein_thinning(x, -x, 0)
    with pytest.raises(ValueError, match="bandwidth as one of"):
        ps.stein_thinning(x, -x, 2, bandwidth="silverman")
    with pytest.raises(ValueError, match="bandwidth > 0"):
        ps.stein_thinning(x, -x, 2, bandwidth=-1.0)
    with pytest.raises(ValueError):
        ps.stein_thinning(x, -x[:, :1], 2)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError):
        ps.stein_thinning(bad, -x, 2)
    with pytest.raises(ValueError, match="most points coincide"):
        ps.stein_thinning(np.zeros((4, 2)), np.zeros((4, 2)), 2, bandwidth="med")
