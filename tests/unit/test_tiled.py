"""Tiled (blocked) Stein direction, median bandwidth and KSD equal the untiled path to rounding.

Tolerances: directions and KSDs use the backend's ``rtol`` (2e-4 float32, 1e-10 float64, relative
to the largest entry); bandwidths, a selection of one of the n^2 distances, agree to 1e-5 (float32)
and 1e-12 (float64) relative: the blocked and the full ``D2`` are the same formula and differ only
by the full matrix's symmetrisation rounding. Order statistics on integer data (every distance
exactly representable) must be exactly equal.
"""

from __future__ import annotations

import numpy as np
import pytest

from particlesampling import _backend
from particlesampling.bandwidths import MaxKSD, Median, Scaled
from particlesampling.diagnostics import ksd_squared
from particlesampling import svgd
from particlesampling.stein import stein_direction, stein_direction_with_info
from particlesampling.selection import _radix_select, bracket_select
from particlesampling.tiled import (
    tile_rows,
    untiled_bytes,
    tiled_bandwidth,
    tiled_ksd_squared,
    tiled_order_statistics,
    tiled_stein_direction,
    tiled_stein_direction_with_info,
)



def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())

CONVENTIONS = ["liu_wang", "an2020", "blackjax", "numpyro"]


def _bw_rtol(backend):
    return 1e-5 if backend.dtype_name == "float32" else 1e-12


def _data(rng, n=37, d=3):
    x = rng.standard_normal((n, d))
    return x, -x + 0.1 * rng.standard_normal((n, d))


@pytest.mark.parametrize("bandwidth", CONVENTIONS + [1.3, Scaled("liu_wang", 0.5)])
@pytest.mark.parametrize("kernel", ["rbf", "imq"])
@pytest.mark.parametrize("tile", [1, 7])
def test_direction_matches_untiled(xp_backend, rng, kernel, bandwidth, tile):
    x64, s64 = _data(rng)
    x, s = xp_backend.asarray(x64), xp_backend.asarray(s64)
    phi, info = stein_direction_with_info(x, s, kernel, bandwidth, 0.7)
    phi_t, info_t = tiled_stein_direction_with_info(x, s, kernel, bandwidth, 0.7, tile=tile)
    assert xp_backend.is_native(phi_t) and xp_backend.dtype_of(phi_t) == xp_backend.dtype_name
    xp_backend.assert_close(phi_t, xp_backend.to_numpy(phi).astype(np.float64))
    np.testing.assert_allclose(float(info_t.bandwidth), float(info.bandwidth), rtol=_bw_rtol(xp_backend))
    for a, b in zip(info_t[1:], info[1:]):
        np.testing.assert_allclose(float(a), float(b), rtol=xp_backend.rtol, atol=xp_backend.rtol)


def test_per_dimension_fixed_bandwidth(rng):
    x, s = _data(rng, n=20, d=3)
    h = [0.5, 1.0, 2.0]
    np.testing.assert_allclose(tiled_stein_direction(x, s, "rbf", h, tile=6), stein_direction(x, s, "rbf", h),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("n", [2, 3, 50])
def test_bandwidth_matches_untiled(xp_backend, rng, convention, n):
    x = xp_backend.asarray(rng.standard_normal((n, 4)))
    h = Median(convention)(x, _backend.sqdist(x))
    h_t = tiled_bandwidth(x, convention, tile=3)
    assert xp_backend.is_native(h_t) and xp_backend.dtype_of(h_t) == xp_backend.dtype_name
    np.testing.assert_allclose(float(h_t), float(h), rtol=_bw_rtol(xp_backend))


def test_bandwidth_one_particle_and_coincident(xp_backend):
    one = xp_backend.asarray(np.ones((1, 3)))
    assert float(tiled_bandwidth(one, "liu_wang", tile=1)) == 1.0
    same = xp_backend.asarray(np.ones((5, 2)))
    assert float(tiled_bandwidth(same, "liu_wang", tile=2)) == float(Median("liu_wang")(same, _backend.sqdist(same)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_order_statistics_exact_on_integer_data(rng, dtype):
    """Integer coordinates with mean exactly 0 (so centring changes nothing): every distance is
    exact, so the selection must equal a sort exactly."""
    y = rng.integers(-20, 20, size=(23, 3))
    x = np.concatenate([y, -y]).astype(dtype)
    v = np.sort(_backend.sqdist(x).reshape(-1))
    ks = [0, 45, 46, 1000, 1057, 1058, 46 * 46 - 1]
    assert tiled_order_statistics(x, ks, tile=8) == [float(v[k]) for k in ks]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_radix_selection_with_ties_and_small_collect_limit(rng, dtype):
    """The radix passes (collect_limit=0 forces every pass down to the last bit) on values with ties."""
    vals = np.concatenate([np.zeros(30), rng.integers(0, 5, 200) * 0.25, rng.random(300)]).astype(dtype)
    blocks = [vals[:100], vals[100:333], vals[333:]]
    ks = [0, 29, 30, 100, 265, 266, vals.size - 1]
    expected = [float(t) for t in np.sort(vals)[ks]]
    assert _radix_select(lambda: iter(blocks), ks, dtype, collect_limit=0) == expected
    assert _radix_select(lambda: iter(blocks), ks, dtype) == expected


def test_bracket_selection_large_n_matches_sort(rng):
    """n^2 above the sampled-bracket threshold: the one-pass path (verified by counts) is exact."""
    y = rng.integers(-1000, 1000, size=(550, 2))
    x = np.concatenate([y, -y]).astype(np.float64)
    v = np.sort(_backend.sqdist(x).reshape(-1))
    ks = [v.size // 2 - 1, v.size // 2]
    assert tiled_order_statistics(x, ks, tile=300) == [float(v[k]) for k in ks]


def test_small_blocks_grow_the_bracket_sample_instead_of_falling_back_to_radix_passes(rng, monkeypatch):
    """With row blocks so small that the default sample's bracket would keep more values than the
    blocks may hold, the sample grows (``tiled_sample_size``) and the one bracketing pass stays
    exact: the radix passes (two more passes over D2) are never run."""
    from particlesampling import selection, tiled
    from particlesampling.selection import bracket_sample_size, expected_bracket_values

    y = rng.integers(-1000, 1000, size=(4000, 3))
    x = np.concatenate([y, -y]).astype(np.float64)
    n, tile = x.shape[0], 150
    ks = [n * n // 2 - 1, n * n // 2]
    default = bracket_sample_size(n * n)
    assert expected_bracket_values(default, n * n, ks) > n * tile  # the old sample: radix fallback
    m = tiled.tiled_sample_size(n * n, ks, n * tile)
    assert default < m <= n * tile and expected_bracket_values(m, n * n, ks) <= n * tile / 2
    assert tiled.tiled_sample_size(n * n, ks, 10**12) == default  # room enough: the default size
    reference = tiled_order_statistics(x, ks, tile=1600)  # blocks large enough for the default sample

    def no_radix(*args, **kwargs):
        raise AssertionError("the radix passes ran")

    monkeypatch.setattr(selection, "_radix_select", no_radix)
    assert tiled_order_statistics(x, ks, tile=tile) == reference


@pytest.mark.parametrize("n, tile", [(512, 1), (600, 8), (600, 20), (2000, 16), (10**5, 50)])
def test_the_bracket_sample_never_outgrows_the_blocks_budget(n, tile):
    """The sample (about four numbers a pair) stays within the values the bracket may keep (``n * tile``,
    the blocks' budget) and never holds more pairs than ``D2`` has entries, however small the blocks
    (it grew to 2^24 pairs, 520 MB and 12x the time of the whole selection, at n = 512, tile = 1)."""
    from particlesampling import tiled
    from particlesampling.selection import bracket_sample_size

    ks = [n * n // 2]
    m = tiled.tiled_sample_size(n * n, ks, n * tile)
    assert m <= max(bracket_sample_size(n * n), n * tile) and m <= n * n


@pytest.mark.parametrize("statistic", ["v", "u"])
@pytest.mark.parametrize("kernel", ["imq", "rbf"])
@pytest.mark.parametrize("bandwidth", [1.0, "liu_wang"])
def test_ksd_matches_untiled(xp_backend, rng, statistic, kernel, bandwidth):
    x64, s64 = _data(rng, n=30)
    x, s = xp_backend.asarray(x64), xp_backend.asarray(s64)
    ref = float(ksd_squared(x, s, kernel, bandwidth, statistic))
    got = tiled_ksd_squared(x, s, kernel, bandwidth, statistic, tile=4)
    assert xp_backend.is_native(got)
    # KSD^2 sums n^2 terms that partly cancel: compare on the scale of the V-statistic
    scale = abs(float(ksd_squared(x, s, kernel, bandwidth, "v")))
    assert abs(float(got) - ref) <= 50 * xp_backend.rtol * scale


def test_tile_rows_from_budget():
    assert tile_rows(1000, 10, 8, 1e12) == 1000
    assert tile_rows(1000, 10, 8, 1.0) == 1
    t = tile_rows(20000, 100, 4, 256 * 2**20)
    assert 1 <= t < 20000 and t * (5 * 20000 * 4 + 8 * 20000) <= 256 * 2**20
    with pytest.raises(ValueError, match="memory_budget"):
        tile_rows(10, 2, 8, 0)


def test_public_api_memory_budget_switches_to_tiled(rng):
    x, s = _data(rng, n=60)
    full = stein_direction(x, s)
    small = stein_direction(x, s, memory_budget=untiled_bytes(x) - 1)  # below the untiled need: tiled
    np.testing.assert_allclose(small, full, rtol=1e-10, atol=1e-12)
    sampler_t = svgd(lambda z: -z, 0.1, memory_budget=20_000)
    sampler_f = svgd(lambda z: -z, 0.1)
    st_t, info_t = sampler_t.step(sampler_t.init(x))
    st_f, info_f = sampler_f.step(sampler_f.init(x))
    np.testing.assert_allclose(st_t.particles, st_f.particles, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(float(info_t.bandwidth), float(info_f.bandwidth), rtol=1e-12)
    with pytest.raises(ValueError, match="memory_budget"):
        svgd(lambda z: -z, memory_budget=-1)


@pytest.mark.parametrize("bandwidth", ["pyro", MaxKSD(), lambda x, sq, s: 1.0])
def test_unsupported_bandwidths_raise(rng, bandwidth):
    x, s = _data(rng, n=5)
    with pytest.raises(ValueError, match="tiled evaluation supports"):
        tiled_stein_direction(x, s, "rbf", bandwidth, tile=2)


def test_non_radial_kernel_raises(rng):
    x, s = _data(rng, n=5)
    with pytest.raises(ValueError, match="radial"):
        tiled_stein_direction(x, s, "linear", tile=2)


def test_one_particle_direction_is_score():
    x, s = np.array([[0.3, -1.0]]), np.array([[1.5, 2.0]])
    np.testing.assert_allclose(tiled_stein_direction(x, s, tile=1), s)


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_gpu_tiled_matches_cpu(rng, dtype, convention):
    import torch

    x64, s64 = _data(rng, n=300, d=5)
    tdt = getattr(torch, dtype)
    xc, sc = torch.as_tensor(x64, dtype=tdt), torch.as_tensor(s64, dtype=tdt)
    xg, sg = xc.cuda(), sc.cuda()
    phi_g, info_g = tiled_stein_direction_with_info(xg, sg, "rbf", convention, tile=64)
    assert phi_g.device.type == "cuda" and info_g.bandwidth.device.type == "cuda"
    phi_c, info_c = stein_direction_with_info(xc, sc, "rbf", convention)
    rtol = 2e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(phi_g.cpu().numpy(), phi_c.numpy(), rtol=rtol, atol=rtol * float(phi_c.abs().max()))
    np.testing.assert_allclose(float(info_g.bandwidth), float(info_c.bandwidth), rtol=1e-5 if dtype == "float32" else 1e-12)
    ksd_g = tiled_ksd_squared(xg, sg, "imq", 1.0, tile=50)
    np.testing.assert_allclose(float(ksd_g), float(ksd_squared(xc, sc, "imq", 1.0)), rtol=50 * rtol)


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device")
def test_gpu_untiled_step_and_median_on_device(rng):
    import torch

    x = torch.as_tensor(rng.standard_normal((200, 3)), device="cuda")
    sampler = svgd(lambda z: -z, 0.1)
    st, info = sampler.step(sampler.init(x))
    assert st.particles.device.type == "cuda" and info.bandwidth.device.type == "cuda"
    st_c, info_c = sampler.step(sampler.init(x.cpu()))
    np.testing.assert_allclose(st.particles.cpu().numpy(), st_c.particles.numpy(), rtol=1e-10, atol=1e-12)


def test_bracket_select_is_exact_or_declines(rng):
    """The shared bracketing step: exact when the sample brackets the ranks, None (never a wrong value)
    when a sample from another distribution misses them."""
    v = rng.random(100_000)
    ks = [49_999, 50_000]
    expected = [float(t) for t in np.sort(v)[ks]]
    good = np.sort(v[rng.integers(0, v.size, 4096)])
    assert bracket_select(good, lambda: (v[:30_000], v[30_000:]), v.size, ks) == expected
    bad = np.sort(rng.random(4096) * 0.1)
    assert bracket_select(bad, lambda: (v,), v.size, ks) is None


def test_tiled_ksd_refuses_a_non_positive_array_bandwidth(rng):
    x = rng.standard_normal((20, 3))
    with pytest.raises(ValueError, match="positive bandwidth"):
        tiled_ksd_squared(x, -x, bandwidth=np.asarray(-1.0), tile=7)
    # a positive array h equals the same number
    np.testing.assert_allclose(tiled_ksd_squared(x, -x, bandwidth=np.asarray(1.5), tile=7),
                               tiled_ksd_squared(x, -x, bandwidth=1.5, tile=7), rtol=1e-15)
