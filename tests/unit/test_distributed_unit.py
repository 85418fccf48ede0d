"""particlesampling.distributed in one process (a gloo group of one rank): the sharded direction and
steps reduce to the single-process ones; the input checks run before any collective; the stated
communication volume. (2 and 4 processes: tests/integration/test_distributed.py.)"""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist

import particlesampling as ps
from particlesampling.distributed import communication_volume


@pytest.fixture
def one_rank_group():
    """A gloo process group of this process alone, destroyed afterwards (nothing leaks)."""
    assert not dist.is_initialized()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _x(n=9, d=3, dtype=torch.float64):
    return torch.as_tensor(np.random.default_rng(0).normal(size=(n, d)), dtype=dtype)


@pytest.mark.parametrize("kernel,bandwidth", [("rbf", "liu_wang"), ("imq", "blackjax"), ("rbf", [0.5, 1.0, 2.0]),
                                              ("rbf", ps.Scaled("an2020", 0.5))])
def test_one_rank_equals_the_direction(one_rank_group, kernel, bandwidth):
    x = _x()
    phi, info = ps.distributed.sharded_stein_direction_with_info(x, -x, kernel, bandwidth, 0.3)
    ref, ref_info = ps.stein_direction_with_info(x, -x, kernel, bandwidth, 0.3)
    torch.testing.assert_close(phi, ref, rtol=1e-10, atol=1e-13)
    for field in ps.SteinInfo._fields:
        torch.testing.assert_close(getattr(info, field), getattr(ref_info, field), rtol=1e-10, atol=1e-13)
    assert ps.distributed.shard_layout(x) == ps.distributed.ShardLayout((9,), 0)


def test_one_particle(one_rank_group):
    x = _x(1)
    torch.testing.assert_close(ps.distributed.sharded_stein_direction(x, -x), -x)


@pytest.mark.parametrize("method", ["svgd", "spos"])
def test_one_rank_steps_equal_the_samplers(one_rank_group, method):
    x = _x()
    sharded = {"svgd": ps.distributed.sharded_svgd, "spos": ps.distributed.sharded_spos}[method]
    plain = {"svgd": ps.svgd, "spos": ps.spos}[method]
    a, b = sharded(lambda p: -p, 0.1, repulsion=0.5), plain(lambda p: -p, 0.1, repulsion=0.5)
    sa, sb = a.init(x, seed=2), b.init(x, seed=2)
    for _ in range(2):
        (sa, ia), (sb, ib) = a.step(sa), b.step(sb)
    torch.testing.assert_close(sa.particles, sb.particles, rtol=1e-10, atol=1e-13)
    for field in ("bandwidth", "mean_kernel", "update_norm", "score_norm"):
        torch.testing.assert_close(getattr(ia, field), getattr(ib, field), rtol=1e-10, atol=1e-13)
    assert bool(ia.finite) and a.name == method


def test_nonfinite_scores_are_reported(one_rank_group):
    x = _x()
    sampler = ps.distributed.sharded_svgd(lambda p: p * float("nan"), 0.1)
    _, info = sampler.step(sampler.init(x))
    assert not bool(info.finite)


def test_bad_input(one_rank_group):
    x = _x()
    with pytest.raises(TypeError, match="expected particles and scores as torch tensors"):
        ps.distributed.sharded_stein_direction(x.numpy(), -x.numpy())
    with pytest.raises(ValueError, match=r"expected this rank's particles of shape \(n_r, d\)"):
        ps.distributed.sharded_stein_direction(x[0], x[0])
    with pytest.raises(ValueError, match="expected scores of the same shape"):
        ps.distributed.sharded_stein_direction(x, x[:3])
    with pytest.raises(ValueError, match="sharded direction supports radial kernels"):
        ps.distributed.sharded_stein_direction(x, -x, kernel="linear")
    for bad in ("pyro", "maxksd", lambda p, sq, s: 1.0):
        with pytest.raises(ValueError, match="sharded direction supports the scalar median conventions"):
            ps.distributed.sharded_stein_direction(x, -x, bandwidth=bad)
    with pytest.raises(ValueError, match="expected layout as the ShardLayout of these rows"):
        ps.distributed.sharded_stein_direction(x, -x, layout=ps.distributed.ShardLayout((4,), 0))
    with pytest.raises(ValueError, match="at least one particle"):
        ps.distributed.sharded_stein_direction(x[:0], x[:0])


def test_no_process_group():
    x = _x()
    with pytest.raises(RuntimeError, match="expected an initialised torch.distributed process group"):
        ps.distributed.sharded_stein_direction(x, -x)
    with pytest.raises(RuntimeError, match="expected an initialised torch.distributed process group"):
        ps.distributed.sharded_svgd(lambda p: -p)


def test_communication_volume_states_the_payloads():
    # 4 ranks, uneven rows padded to 5 (n = 15: the median gathers every D2 entry), d = 10, float32
    v = communication_volume([5, 3, 5, 2], 10, 4)
    rows = 2 * 4 * 5 * 10 * 4  # every rank receives W padded shards of (5, 2d) floats
    median = 16 * 4 + 4 * 5 * 15 * 4  # two int64 per rank, then W padded blocks of 5 x 15 squared distances
    assert v["rows"] == rows and v["median"] == median and v["histograms"] == 0
    assert v["received"] == 8 * 4 + rows + median + 3 * 4
    assert v["sent"] == 8 + 2 * 5 * 10 * 4 + 16 + 5 * 15 * 4 + 3 * 4
    assert v["collectives"] == 5  # counts, rows, two median all-gathers, the info sums
    fixed = communication_volume([5, 3, 5, 2], 10, 4, median=False, method="spos")
    assert fixed["median"] == 0 and fixed["collectives"] == 5  # counts, rows, sums, info, counts
    assert fixed["wire"] == np.ceil((2 * 8 * 4 + rows) * 3 / 4 + (3 + 4) * 4 * 2 * 3 / 4)
    # rows grow with n d, not with the ranks: about 2 n d b received per rank
    assert communication_volume([250] * 8, 100, 4, median=False)["rows"] == 2 * 2000 * 100 * 4
    # bracketing (n = 2000 on 2 ranks): the sample shares (half of 65,536 each), the counts, the kept values
    m = ps.selection.bracket_sample_size(2000 ** 2)
    assert m == 65536  # (2.5 n^2)^(2/3) = 46,416, rounded to a power of two
    b = communication_volume([1000, 1000], 5, 4, kept=12_345)
    assert b["median"] == 2 * (m // 2) * 4 + 16 * 2 + 2 * 12_345 * 4 and b["histograms"] == 0
    assert b["collectives"] == 6
    expected = ps.selection.expected_bracket_values(m, 2000 ** 2, [2000 ** 2 // 2])
    assert communication_volume([1000, 1000], 5, 4)["median"] == 2 * (m // 2) * 4 + 32 + 2 * np.ceil(expected / 2) * 4
    # the bracket missed: no values gathered, the radix passes (2 for float32) carry 2 or 3 histograms
    missed = communication_volume([1000, 1000], 5, 4, histograms=3)
    assert missed["median"] == 2 * (m // 2) * 4 + 32 and missed["histograms"] == 3 * 65536 * 8
    assert missed["collectives"] == 2 + 2 + 1 + 2
    # radix regime (the bracket would gather more than MAX_GATHERED values): histograms only
    assert ps.distributed.median_regime(40_000) == "radix" and ps.distributed.median_regime(20_000) == "bracket"
    r = communication_volume([20_000, 20_000], 5, 8)
    assert r["median"] == 0 and r["histograms"] == 7 * 65536 * 8 and r["collectives"] == 3 + 4
    with pytest.raises(ValueError, match=r"expected histograms as 0 or an integer in \[4, 7\]"):
        communication_volume([1000, 1000], 2, 8, histograms=8)
    with pytest.raises(ValueError, match="expected no histograms for 6 particles"):
        communication_volume([3, 3], 2, 8, histograms=4)
    with pytest.raises(ValueError, match="expected kept as a non-negative int or None"):
        communication_volume([1000, 1000], 2, 8, kept=-1)
    with pytest.raises(ValueError, match="itemsize"):
        communication_volume([3, 3], 2, 2)
    with pytest.raises(ValueError, match="at least one particle"):
        communication_volume([0, 0], 2, 8)


def test_particles_that_require_gradients_get_a_clear_error(one_rank_group):
    """The all-gathers carry no gradient: tensors under autograd are refused before any collective."""
    x = _x(800, 3, torch.float32)
    for xr, sr in ((x.clone().requires_grad_(True), -x), (x, (-x).requires_grad_(True))):
        with pytest.raises(ValueError, match="outside autograd"):
            ps.distributed.sharded_stein_direction(xr, sr)
    phi, info = ps.distributed.sharded_stein_direction_with_info(x, -x)  # detached: fine
    assert info.bandwidth == ps.stein_direction_with_info(x, -x)[1].bandwidth


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_rank_median_by_bracketing_and_by_the_radix_fallback(one_rank_group, monkeypatch, dtype):
    """Above 724 particles the median is bracketed by a sample (no histograms); a bracket that would
    gather too much, or misses, falls back to the radix passes; all three give the exact bandwidth."""
    from particlesampling.distributed import direction

    x = _x(800, 3, dtype)
    ref, ref_info = ps.stein_direction_with_info(x, -x, "rbf", "liu_wang", 0.3)

    def run():
        with ps.distributed.CollectiveCounter() as c:
            phi, info = ps.distributed.sharded_stein_direction_with_info(x, -x, "rbf", "liu_wang", 0.3)
        assert info.bandwidth == ref_info.bandwidth  # exact, not close
        torch.testing.assert_close(phi, ref, rtol=1e-5 if dtype == torch.float32 else 1e-10, atol=1e-6)
        return c

    c = run()
    assert c.histograms == 0
    sample, counts, kept = [entry for entry in c.log if entry[0] != "all_reduce"][-3:]
    assert sample[2] == ps.selection.bracket_sample_size(800 ** 2) * x.element_size() and counts[2] == 16
    expected = ps.selection.expected_bracket_values(ps.selection.bracket_sample_size(800 ** 2), 800 ** 2,
                                                    [800 ** 2 // 2])
    assert 0.5 * expected < kept[2] / x.element_size() < 1.5 * expected  # binomial spread is a few per cent
    monkeypatch.setattr(direction, "MAX_GATHERED", 100)  # the radix regime: histograms only
    assert run().histograms >= ps.distributed.volume.radix_passes(x.element_size())
    monkeypatch.undo()
    zeros = np.arange(5000) % 800 * 801  # diagonal entries only: the bracket [0, 0] misses the median
    monkeypatch.setattr(direction, "_sample_positions", lambda total, size: zeros[:size])
    c = run()
    assert c.histograms >= ps.distributed.volume.radix_passes(x.element_size())
    assert [e[2] for e in c.log if e[0] != "all_reduce"][-1] == 16  # the counts, and no values gathered


@pytest.mark.gpu
def test_one_rank_nccl_on_cuda_equals_the_direction():
    """NCCL runs the same code on the GPU (one rank: a machine with one GPU can check this much)."""
    assert not dist.is_initialized()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        for dtype in (torch.float32, torch.float64):
            x = _x(300, 5, dtype).cuda()
            phi, info = ps.distributed.sharded_stein_direction_with_info(x, -x, "rbf", "liu_wang", 0.5)
            ref, ref_info = ps.stein_direction_with_info(x, -x, "rbf", "liu_wang", 0.5)
            tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
            assert phi.device.type == "cuda"
            torch.testing.assert_close(phi, ref, **tol)
            torch.testing.assert_close(info.bandwidth, ref_info.bandwidth, **tol)
    finally:
        dist.destroy_process_group()


def test_non_finite_rows_raise_on_every_rank_naming_rows_of_the_whole_system(one_rank_group):
    x = _x()
    s = -x
    s[4, 1] = float("nan")
    with pytest.raises(ps.NonFiniteError, match=r"sharded Stein direction: non-finite scores at row 4\b") as ei:
        ps.distributed.sharded_stein_direction(x, s)
    assert ei.value.rows == (4,)
    phi = ps.distributed.sharded_stein_direction(x, s, check_finite=False)
    assert bool(torch.isnan(phi).any())  # not checked: the NaN propagates
