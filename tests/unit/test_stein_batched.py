"""The batched Stein direction of a stack (B, n, d) of independent systems equals the per-system loop.

For every kernel and every bandwidth convention (each system with its own median), on NumPy, torch
and array_api_strict in float32 and float64; plus the batched pieces it is built from (distances,
order statistics, medians) and its input checks.
"""

from __future__ import annotations

import numpy as np
import pytest

import particlesampling as ps
from particlesampling import bandwidths as bw_mod
from particlesampling.selection import order_statistics

B, N, D = 4, 7, 3
KERNELS = ["rbf", "imq", "linear", "rff"]
BANDWIDTHS = {
    **{c: c for c in ps.MEDIAN_CONVENTIONS},
    "pymc": "pymc",
    "maxksd": "maxksd",
    "fixed": 0.8,
    "fixed-per-dim": [0.5, 1.0, 2.0],
    "scaled-pyro": ps.Scaled("pyro", 2.0),
    "callable": lambda x, sq, s: 0.5 * ps.midpoint_median(sq) + 0.1,  # not batchable: system by system
}


def _data(rng, b=B, n=N, d=D):
    x = rng.normal(size=(b, n, d)) * rng.uniform(0.5, 3.0, size=(b, 1, 1))  # different scales per system
    return x, rng.normal(size=(b, n, d))


def _take(xp_backend, a, b):
    return xp_backend.to_numpy(a[b, ...])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bandwidth", list(BANDWIDTHS), ids=list(BANDWIDTHS))
def test_batched_direction_equals_the_per_system_loop(xp_backend, rng, kernel, bandwidth):
    spec = BANDWIDTHS[bandwidth]
    xn, sn = _data(rng)
    x, s = xp_backend.asarray(xn), xp_backend.asarray(sn)
    phi, info = ps.stein_direction_batched_with_info(x, s, kernel, spec, repulsion=0.7)
    assert xp_backend.is_native(phi) and tuple(phi.shape) == (B, N, D)
    assert xp_backend.dtype_of(phi) == xp_backend.dtype_name
    per_dim = bandwidth in ("pyro", "fixed-per-dim", "scaled-pyro") and kernel != "linear"
    assert tuple(info.bandwidth.shape) == ((B, D) if per_dim else (B,))
    for field in ("mean_kernel", "driving_norm", "repulsion_norm"):
        assert tuple(getattr(info, field).shape) == (B,)
    for b in range(B):
        ref, ref_info = ps.stein_direction_with_info(xp_backend.asarray(xn[b]), xp_backend.asarray(sn[b]), kernel,
                                                     spec, repulsion=0.7)
        ref = xp_backend.to_numpy(ref)
        xp_backend.assert_close(_take(xp_backend, phi, b), ref, err_msg=f"system {b}")
        for field in ps.SteinInfo._fields:
            xp_backend.assert_close(_take(xp_backend, getattr(info, field), b),
                                    xp_backend.to_numpy(getattr(ref_info, field)), err_msg=f"{field}, system {b}")
    # and the plain form returns the same directions
    xp_backend.assert_close(ps.stein_direction_batched(x, s, kernel, spec, 0.7), xp_backend.to_numpy(phi))


def test_each_system_gets_its_own_median(rng):
    x, s = _data(rng)
    x[1] = 10.0 * x[0]
    _, info = ps.stein_direction_batched_with_info(x, s)
    own = [float(ps.stein_direction_with_info(x[b], s[b])[1].bandwidth) for b in range(B)]
    np.testing.assert_allclose(info.bandwidth, own, rtol=1e-12)
    np.testing.assert_allclose(info.bandwidth[1], 100.0 * info.bandwidth[0], rtol=1e-12)


def test_a_batchable_rule_is_called_once_and_others_once_per_system(rng, monkeypatch):
    x, s = _data(rng)
    calls = []
    real = bw_mod.Median.__call__
    monkeypatch.setattr(bw_mod.Median, "__call__", lambda self, *a: calls.append(a[0].shape) or real(self, *a))
    ps.stein_direction_batched(x, s, bandwidth="liu_wang")
    assert calls == [(B, N, D)]
    seen = []
    ps.stein_direction_batched(x, s, bandwidth=lambda p, sq, sc: seen.append(p.shape) or 1.0 + 0.0 * sq[0, 0])
    assert seen == [(N, D)] * B


def test_single_particle_systems_and_a_single_system(rng):
    x, s = _data(rng, n=1)
    phi, info = ps.stein_direction_batched_with_info(x, s)
    np.testing.assert_allclose(phi, s)  # n = 1: h = 1, K = 1, R = 0
    np.testing.assert_array_equal(info.bandwidth, np.ones(B))
    x, s = _data(rng, b=1)
    np.testing.assert_allclose(ps.stein_direction_batched(x, s)[0], ps.stein_direction(x[0], s[0]), rtol=1e-12)


def test_bad_input():
    good = np.zeros((2, 3, 2))
    with pytest.raises(ValueError, match=r"expected particles of shape \(B, n, d\), received shape \(3, 2\)"):
        ps.stein_direction_batched(good[0], good[0])
    with pytest.raises(ValueError, match=r"expected particles with B >= 1, n >= 1 and d >= 1, received shape \(0, 3, 2\)"):
        ps.stein_direction_batched(good[:0], good[:0])
    with pytest.raises(ValueError, match=r"expected scores of the same shape as particles \(2, 3, 2\), received \(2, 3, 1\)"):
        ps.stein_direction_batched(good, good[..., :1])
    with pytest.raises(TypeError, match="real floating"):
        ps.stein_direction_batched(good.astype(int), good.astype(int))
    with pytest.raises(TypeError, match="repulsion"):
        ps.stein_direction_batched(good, good, repulsion="1")
    with pytest.raises(ValueError, match=r"expected 2 per-dimension bandwidths, received 3"):
        ps.stein_direction_batched(good, good, bandwidth=[1.0, 2.0, 3.0])


# --------------------------------------------------------------------------------------------------
# the batched pieces
# --------------------------------------------------------------------------------------------------


def test_batched_sqdist_equals_per_system(xp_backend, rng):
    x = rng.normal(size=(3, 6, 4)) + 100.0
    got = ps.sqdist(xp_backend.asarray(x))
    assert tuple(got.shape) == (3, 6, 6)
    g = xp_backend.to_numpy(got)
    for b in range(3):
        xp_backend.assert_close(g[b], xp_backend.to_numpy(ps.sqdist(xp_backend.asarray(x[b]))))
        np.testing.assert_array_equal(np.diagonal(g[b]), 0.0)
        np.testing.assert_array_equal(g[b], g[b].T)


@pytest.mark.parametrize("ks", [[0], [17, 18], [35]])
def test_batched_order_statistics_and_medians(xp_backend, rng, ks):
    v = rng.normal(size=(3, 6, 6))
    got = order_statistics(xp_backend.asarray(v), ks, batch_dims=1)
    for k, g in zip(ks, got):
        assert tuple(g.shape) == (3,)
        np.testing.assert_array_equal(xp_backend.to_numpy(g),
                                      np.sort(v.reshape(3, -1).astype(xp_backend.np_dtype), axis=1)[:, k])
    low = ps.lower_median(xp_backend.asarray(v), batch_dims=1)
    mid = ps.midpoint_median(xp_backend.asarray(v), batch_dims=1)
    for b in range(3):
        assert float(xp_backend.to_numpy(low)[b]) == float(xp_backend.to_numpy(ps.lower_median(xp_backend.asarray(v[b]))))
        assert float(xp_backend.to_numpy(mid)[b]) == float(xp_backend.to_numpy(ps.midpoint_median(xp_backend.asarray(v[b]))))


def test_order_statistics_bad_batch_dims():
    with pytest.raises(ValueError, match=r"expected batch_dims as an integer in \[0, 2\], received 3"):
        order_statistics(np.zeros((2, 2)), [0], batch_dims=3)


@pytest.mark.gpu
@pytest.mark.parametrize("bandwidth", ["liu_wang", "pyro", "maxksd"])
def test_batched_direction_on_cuda_equals_cpu(rng, bandwidth):
    """On the GPU the medians come from torch.kthvalue along the last axis; same directions as on the CPU."""
    import torch

    xn, sn = _data(rng)
    x, s = torch.as_tensor(xn), torch.as_tensor(sn)
    got, info = ps.stein_direction_batched_with_info(x.cuda(), s.cuda(), "rbf", bandwidth)
    ref, ref_info = ps.stein_direction_batched_with_info(x, s, "rbf", bandwidth)
    assert got.device.type == "cuda" and info.bandwidth.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(info.bandwidth.cpu(), ref_info.bandwidth, rtol=1e-10, atol=0)
