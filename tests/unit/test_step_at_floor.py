"""The Stein step near its matrix-multiply floor, and its memory: the pieces that make it so.

* ``symmetric_sqdist``: D2 from the upper block triangle (half the GEMM work), exactly symmetric;
  ``upper_block_rows``: that triangle alone, packed in contiguous blocks of rows.
* ``rbf_blocked_product``: ``K [Xc | 1 | S]`` from that upper triangle, block by block, by symmetry.
* ``symmetric_order_statistics``, ``bracket_select`` and the radix selection with weighted blocks,
  ``select_ranks``, ``max_candidates``: exact order statistics from half the entries.
* ``memory_budget="auto"``: the default budget, the choice of the tiled path, and the peak memory
  of a default step measured with ``tracemalloc`` (NumPy allocations are traced).

Every expected value comes from an independent dense computation (full matrices, ``numpy.sort``).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

import particlesampling as ps
from particlesampling import memory_budget as mb
from particlesampling import selection
from particlesampling._backend import UpperBlockRows, symmetric_sqdist, upper_block_rows
from particlesampling.kernels import rbf_blocked_product, rbf_product_columns, rbf_terms_from_product
from particlesampling.tiled import tiling_chosen, untiled_bytes


def _dense_sqdist(x):
    diff = x[:, None, :] - x[None, :, :]
    return np.sum(diff * diff, axis=-1)


# --------------------------------------------------------------------------------------------------
# D2 from the upper block triangle
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("n, block", [(1, 4), (11, 4), (16, 4), (37, 256), (300, 64)])
def test_symmetric_sqdist_is_exactly_symmetric_and_matches_dense(lib, n, block):
    x = np.random.default_rng(n).standard_normal((n, 5)) * 3.0 + 10.0
    xc = x - x.mean(axis=0)
    arg = xc if lib == "numpy" else torch.from_numpy(xc)
    d2 = np.asarray(symmetric_sqdist(arg, (arg * arg).sum(-1), block=block))
    assert np.array_equal(d2, d2.T)
    assert np.all(np.diag(d2) == 0.0)
    np.testing.assert_allclose(d2, _dense_sqdist(x), rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_packed_rows_have_the_rounding_of_the_symmetric_matrix(lib):
    n, block = 23, 5
    x = np.random.default_rng(0).standard_normal((n, 3))
    arg = x if lib == "numpy" else torch.from_numpy(x)
    full = np.asarray(symmetric_sqdist(arg, (arg * arg).sum(-1), block=block))
    packed = upper_block_rows(arg, (arg * arg).sum(-1), block=block)
    for a, rows in zip(packed.starts, packed.rows):
        rows, b = np.asarray(rows), min(n, a + block)
        np.testing.assert_array_equal(rows[:, b - a:], full[a:b, b:])  # right of the diagonal square: same floats
        square = rows[:, :b - a]  # the GEMM's own rounding, exact zero diagonal
        assert np.all(np.diag(square) == 0.0)
        np.testing.assert_allclose(square, full[a:b, a:b], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_every_caller_of_the_gram_trick_counts_the_same_floats(lib):
    """symmetric_sqdist, upper_block_rows and the tiled row blocks (sqdist_block) share one block
    function: the same floats entry for entry, so the tiled passes' exact median is the untiled one."""
    from particlesampling._backend import sqdist_block
    from particlesampling.bandwidths import median_ranks
    from particlesampling.tiled import tiled_order_statistics

    n, block = 70, 16
    x = (np.random.default_rng(3).standard_normal((n, 30)) * 2.0 + 5.0).astype(np.float32)
    arg = x if lib == "numpy" else torch.from_numpy(x)
    xp = ps._backend.namespace(arg)
    xc = arg - arg.mean(0)
    xx = (xc * xc).sum(-1)
    full = np.asarray(symmetric_sqdist(xc, xx, block=block))
    packed = upper_block_rows(xc, xx, block=block)
    for a, rows in zip(packed.starts, packed.rows):
        b = min(n, a + block)
        tiled = np.asarray(sqdist_block(xp, xc[a:b], xx[a:b], xc[a:], xx[a:], diagonal_at=0))
        np.testing.assert_array_equal(tiled, np.asarray(rows))
        np.testing.assert_array_equal(tiled[:, b - a:], full[a:b, b:])
        np.testing.assert_array_equal(np.triu(tiled[:, :b - a], 1), np.triu(full[a:b, a:b], 1))
    ks = median_ranks("liu_wang", n)
    assert tiled_order_statistics(arg, ks, tile=block) == [float(v) for v in
                                                            selection.symmetric_order_statistics(packed, ks)]


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("n, block", [(1, 4), (23, 5), (40, 8), (300, 64)])
def test_packed_upper_block_rows_hold_the_upper_block_triangle(lib, n, block):
    x = np.random.default_rng(n).standard_normal((n, 3)) * 2.0
    xc = x - x.mean(axis=0)
    arg = xc if lib == "numpy" else torch.from_numpy(xc)
    packed = upper_block_rows(arg, (arg * arg).sum(-1), block=block)
    dense = _dense_sqdist(x)
    assert packed.shape == (n, n) and packed.flat.shape[0] == UpperBlockRows.size(n, block)
    assert packed.flat.shape[0] == sum((min(n, a + block) - a) * (n - a) for a in range(0, n, block))
    for a, rows in zip(packed.starts, packed.rows):
        rows = np.asarray(rows)
        b = min(n, a + block)
        assert rows.shape == (b - a, n - a) and rows.flags["C_CONTIGUOUS"]
        np.testing.assert_allclose(rows, dense[a:b, a:], rtol=1e-12, atol=1e-10)
        assert np.all(np.diag(rows[:, :b - a]) == 0.0) and np.all(rows >= 0.0)
    # positions of upper-triangle entries in the packed buffer
    i, j = np.triu_indices(n)
    np.testing.assert_allclose(np.asarray(packed.flat)[packed.positions(i, j)], dense[i, j], rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("n", [300, 900])  # below and above the bracketing size
def test_order_statistics_and_product_of_packed_rows_equal_those_of_the_matrix(lib, n):
    x = np.random.default_rng(n).standard_normal((n, 4)).astype(np.float32)
    xc = x - x.mean(axis=0)
    arg = xc if lib == "numpy" else torch.from_numpy(xc)
    xx = (arg * arg).sum(-1)
    packed = upper_block_rows(arg, xx)
    dense = _dense_from_packed(packed)  # the matrix mirrored from the packed triangle, squares as they are
    ks = [n * n // 2 - 1, n * n // 2, 5, n * n - 1]
    assert [float(v) for v in selection.symmetric_order_statistics(packed, ks)] == \
        [float(v) for v in np.sort(dense.reshape(-1))[ks]]
    h, s = 2.5, np.random.default_rng(1).standard_normal((n, 4)).astype(np.float32)
    rhs = rbf_product_columns(np, xc, s)
    conv = (lambda a: a) if lib == "numpy" else torch.from_numpy
    xp = ps._backend.namespace(arg)
    got, got_diag = rbf_blocked_product(xp, packed, conv(np.asarray(h, np.float32)), conv(rhs), overwrite=True)
    k = np.exp(-_dense_sqdist(x.astype(np.float64)) / h)
    np.testing.assert_allclose(np.asarray(got), k @ rhs.astype(np.float64), rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(got_diag), np.ones(n, np.float32))


def test_the_default_step_on_the_cpu_uses_the_packed_rows(monkeypatch):
    """The Stein step's own D2 is packed on the CPU (and the result equals the full-matrix path)."""
    made = []
    real = ps.stein_terms.upper_block_rows

    def spy(*a, **k):
        made.append(real(*a, **k))
        return made[-1]

    monkeypatch.setattr(ps.stein_terms, "upper_block_rows", spy)
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((800, 3)))
    phi, info = ps.stein_direction_with_info(x, -x)
    assert len(made) == 1 and isinstance(made[0], UpperBlockRows)
    ref, ref_info = ps.stein_direction_with_info(x, -x, sq=ps.sqdist(x))
    assert float(info.bandwidth) == float(ref_info.bandwidth)
    torch.testing.assert_close(phi, ref, rtol=1e-10, atol=1e-12)


def test_scores_that_require_gradients_take_the_differentiable_path():
    """Packing (in-place exp, addmm_) is for values outside autograd: with scores that require
    gradients (a network's output, say) the step takes the full D2 and differentiates through."""
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((300, 3)))
    s = torch.from_numpy(np.random.default_rng(4).standard_normal((300, 3))).requires_grad_(True)
    phi = ps.stein_direction(x, s)
    (phi * phi).sum().backward()
    got = s.grad.clone()
    s.grad = None
    ref = ps.stein_direction_with_info(x, s, sq=ps.sqdist(x))[0]  # the full-matrix path
    torch.testing.assert_close(phi, ref, rtol=1e-12, atol=1e-12)
    (ref * ref).sum().backward()
    torch.testing.assert_close(got, s.grad, rtol=1e-12, atol=1e-12)
    packed = upper_block_rows(x, (x * x).sum(-1))
    with pytest.raises(ValueError, match="outside autograd"):
        rbf_blocked_product(ps._backend.namespace(x), packed, torch.tensor(1.0, dtype=x.dtype),
                            rbf_product_columns(ps._backend.namespace(x), x, s), overwrite=True)


def _dense_from_packed(packed):
    """The full matrix whose upper block triangle ``packed`` holds (squares as they are)."""
    n = packed.n
    out = np.empty((n, n), dtype=np.asarray(packed.flat).dtype)
    for a, rows in zip(packed.starts, packed.rows):
        rows = np.asarray(rows)
        b = a + rows.shape[0]
        out[a:b, a:] = rows
        out[b:, a:b] = rows[:, b - a:].T
    return out


def test_symmetric_sqdist_of_a_stack_is_each_systems_own():
    x = torch.randn(3, 40, 4, dtype=torch.float64)
    xc = x - x.mean(dim=-2, keepdim=True)
    stack = symmetric_sqdist(xc, (xc * xc).sum(-1), block=16)
    for b in range(3):
        np.testing.assert_allclose(stack[b].numpy(), _dense_sqdist(x[b].numpy()), rtol=1e-12, atol=1e-10)


# --------------------------------------------------------------------------------------------------
# K [Xc | 1 | S] by symmetry, block by block
# --------------------------------------------------------------------------------------------------


def test_product_columns_are_padded_to_the_multiple():
    x = np.ones((7, 5))
    rhs = rbf_product_columns(np, x, 2 * x)
    assert rhs.shape == (7, 16) and rhs.shape[1] % 16 == 0
    np.testing.assert_array_equal(rhs[:, :5], x)
    np.testing.assert_array_equal(rhs[:, 5], 1.0)
    np.testing.assert_array_equal(rhs[:, 6:11], 2 * x)
    np.testing.assert_array_equal(rhs[:, 11:], 0.0)
    assert rbf_product_columns(np, x, None).shape == (7, 16)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("n, block", [(1, 8), (13, 4), (50, 16), (50, 256)])
def test_blocked_product_matches_the_dense_product(lib, overwrite, n, block):
    rng = np.random.default_rng(n + block)
    x, s = rng.standard_normal((n, 3)), rng.standard_normal((n, 3))
    xc = x - x.mean(axis=0)
    d2 = _dense_sqdist(x)
    h = 1.7
    k = np.exp(-d2 / h)
    rhs = rbf_product_columns(np, xc, s)
    conv = (lambda a: a) if lib == "numpy" else torch.from_numpy
    sq = conv(d2.copy())
    xp = ps._backend.namespace(sq)
    prod, diag = rbf_blocked_product(xp, sq, conv(np.asarray(h)), conv(rhs), overwrite=overwrite, block=block)
    np.testing.assert_allclose(np.asarray(prod), k @ rhs, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(diag), np.diag(k), rtol=0, atol=0)
    if not overwrite:
        np.testing.assert_array_equal(np.asarray(sq), d2)  # read, not modified
    driving, rep, rowsum = rbf_terms_from_product(np.asarray(prod), xc, h)
    np.testing.assert_allclose(driving, k @ s, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rowsum, k.sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(rep, (2.0 / h) * (k.sum(axis=1)[:, None] * xc - k @ xc), rtol=1e-10, atol=1e-12)


def test_blocked_product_of_a_stack():
    rng = np.random.default_rng(1)
    x, s = rng.standard_normal((2, 30, 3)), rng.standard_normal((2, 30, 3))
    xc = x - x.mean(axis=-2, keepdims=True)
    d2 = np.stack([_dense_sqdist(x[b]) for b in range(2)])
    h = np.array([1.0, 3.0]).reshape(2, 1, 1)
    rhs = rbf_product_columns(np, xc, s)
    prod, _ = rbf_blocked_product(np, d2.copy(), h, rhs, overwrite=True, block=8)
    for b in range(2):
        np.testing.assert_allclose(prod[b], np.exp(-d2[b] / h[b]) @ rhs[b], rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# exact order statistics from half the entries
# --------------------------------------------------------------------------------------------------


def test_select_ranks_matches_sort():
    rng = np.random.default_rng(3)
    v = rng.integers(0, 50, size=5000).astype(np.float32)  # many ties
    before = v.copy()
    ref = np.sort(v)
    ranks = [4999, 0, 2500, 2499, 2500, 17]
    got = selection.select_ranks(v, ranks)
    assert set(got) == set(ranks)
    assert all(got[k] == ref[k] for k in ranks)
    np.testing.assert_array_equal(v, before)  # the input is not reordered


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [300, 900])  # n^2 below and above 8 * BRACKET_SAMPLE (the bracketing path)
def test_symmetric_order_statistics_reads_the_upper_block_triangle_only(lib, dtype, n):
    x = np.random.default_rng(5).standard_normal((n, 4)).astype(dtype)
    xc = x - x.mean(axis=0)
    arg = xc if lib == "numpy" else torch.from_numpy(xc)
    ks = [n * n // 2 - 1, n * n // 2, 3 * n, n * n - 1]
    sq = symmetric_sqdist(arg, (arg * arg).sum(-1))
    full = np.asarray(sq)
    ref = np.sort(full.reshape(-1))[ks]
    assert [float(g) for g in selection.symmetric_order_statistics(sq, ks)] == [float(v) for v in ref]
    for a in range(0, n, ps._backend.SQDIST_BLOCK_ROWS):  # what lies below the diagonal blocks is never read
        full[a + ps._backend.SQDIST_BLOCK_ROWS:, a:a + ps._backend.SQDIST_BLOCK_ROWS] = -1.0  # (a view of sq)
    got = selection.symmetric_order_statistics(sq, ks)
    assert [float(g) for g in got] == [float(r) for r in ref]
    assert all(np.asarray(g).dtype == np.dtype(dtype) for g in got)


def test_symmetric_order_statistics_fallback_is_exact(monkeypatch):
    n = 800
    x = np.random.default_rng(6).standard_normal((n, 3))
    full = ps.sqdist(x)
    monkeypatch.setattr(selection, "bracket_select", lambda *a, **k: None)  # as if the bracket missed
    ks = [n * n // 2 - 1, n * n // 2]
    got = selection.symmetric_order_statistics(full, ks)
    assert [float(g) for g in got] == [float(v) for v in np.sort(full.reshape(-1))[ks]]


def test_weighted_blocks_count_as_copies_in_both_selections():
    rng = np.random.default_rng(7)
    a, b = rng.random((30, 40)).astype(np.float32), rng.random((20, 25)).astype(np.float32)
    everything = np.concatenate([a.ravel(), b.ravel(), b.ravel()])
    total = everything.size
    ks = [0, total // 2, total - 1, 1234]
    ref = [float(v) for v in np.sort(everything)[ks]]
    sample = everything[rng.integers(0, total, size=4096)]
    assert selection.bracket_select(sample, lambda: [(a, 1), (b, 2)], total, ks[1:2]) == ref[1:2]
    assert selection._radix_select(lambda: [(a, 1), (torch.from_numpy(b), 2)], ks, "float32") == ref


def test_max_candidates_sends_the_selection_to_the_radix_passes():
    v = np.random.default_rng(8).random(200_000).astype(np.float32)
    sample = v[np.random.default_rng(9).integers(0, v.size, size=4096)]
    k = [v.size // 2]
    assert selection.bracket_select(sample, lambda: [v], v.size, k, max_candidates=10) is None
    assert selection.bracket_select(sample, lambda: [v], v.size, k) == [float(np.sort(v)[k[0]])]
    got = selection.blocked_order_statistics(lambda: [v], k, "float32", sample=sample, total=v.size, max_candidates=10)
    assert got == [float(np.sort(v)[k[0]])]


def test_bracket_sample_size_grows_with_the_problem_within_bounds():
    sizes = [selection.bracket_sample_size(t) for t in (10, 10**6, 10**8, 10**10)]
    assert sizes == sorted(sizes)
    assert sizes[0] == 4096 and sizes[-1] == selection.BRACKET_SAMPLE
    assert all(s & (s - 1) == 0 for s in sizes)


# --------------------------------------------------------------------------------------------------
# the default step: same direction as the dense formula
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("n", [200, 300, 724, 760])  # one block; several blocks below and above the bracketing size
def test_default_step_matches_the_dense_svgd_formula(lib, n):
    d = 3
    rng = np.random.default_rng(10 + n)
    x, s = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    d2 = _dense_sqdist(x)
    h = np.median(d2) / np.log(n + 1)  # "liu_wang": midpoint median of all n^2 entries
    k = np.exp(-d2 / h)
    rep = (2.0 / h) * (k.sum(axis=1)[:, None] * x - k @ x)  # sum_j grad_{x_j} k(x_j, x_i)
    ref = (k @ s + rep) / n
    conv = (lambda a: a) if lib == "numpy" else torch.from_numpy
    phi, info = ps.stein_direction_with_info(conv(x), conv(s))
    np.testing.assert_allclose(float(info.bandwidth), h, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(phi), ref, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# memory budget
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("physical, expected", [(None, 2**30), (2**30, 64 * 2**20), (8 * 2**30, 512 * 2**20),
                                                (256 * 2**30, 2**30)])
def test_default_budget_is_a_sixteenth_of_memory_within_bounds(monkeypatch, physical, expected):
    monkeypatch.setattr(mb, "physical_memory_bytes", lambda: physical)
    assert mb.default_memory_budget(np.zeros((3, 2))) == expected


def test_physical_memory_is_read_from_the_os():
    total = mb.physical_memory_bytes()
    assert total is None or total > 2**28


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "big", "AUTO"])
def test_bad_budgets_are_refused(bad):
    with pytest.raises(ValueError, match="memory_budget"):
        mb.check_memory_budget(bad)
    with pytest.raises(ValueError, match="memory_budget"):
        ps.stein_direction(np.zeros((3, 2)), np.zeros((3, 2)), memory_budget=bad)
    with pytest.raises(ValueError, match="memory_budget"):
        ps.svgd(lambda z: -z, memory_budget=bad)


def test_untiled_bytes_count_one_matrix_for_rbf_and_three_otherwise():
    x = np.zeros((100, 3), dtype=np.float32)
    assert untiled_bytes(x) == 100 * 100 * 4
    assert untiled_bytes(x, "imq") == 3 * 100 * 100 * 4


def test_tiling_choice(monkeypatch):
    x = np.zeros((100, 3))
    need = untiled_bytes(x)
    assert not tiling_chosen(x)  # auto: 40 kB fit any automatic budget
    assert not tiling_chosen(x, memory_budget=None)
    assert not tiling_chosen(x, memory_budget=need)
    assert tiling_chosen(x, memory_budget=need - 1)
    monkeypatch.setattr(mb, "default_memory_budget", lambda particles: need - 1)
    assert tiling_chosen(x)
    # under "auto" what the blocked path cannot serve stays untiled; under a number it is an error
    assert not tiling_chosen(x, "linear")
    assert not tiling_chosen(x, None, "pyro")
    assert tiling_chosen(x, "linear", memory_budget=need - 1)
    s = np.random.default_rng(0).standard_normal((100, 3))
    with pytest.raises(ValueError, match="radial kernels"):
        ps.stein_direction(s, -s, "linear", memory_budget=need - 1)
    np.testing.assert_allclose(ps.stein_direction(s, -s, "linear"), ps.stein_direction(s, -s, "linear", memory_budget=None))


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_untiled_default_step_holds_one_n_by_n_matrix():
    n = 3000
    x = np.random.default_rng(11).standard_normal((n, 3)).astype(np.float32)
    _, peak = _peak_bytes(lambda: ps.stein_direction(x, -x, memory_budget=None))
    assert peak < 1.5 * n * n * 4, f"peak {peak / 2**20:.1f} MiB for one {n}x{n} float32 matrix of {n * n * 4 / 2**20:.1f} MiB"


def test_the_default_step_stays_in_the_automatic_budget(monkeypatch):
    n = 3000
    monkeypatch.setattr(mb, "physical_memory_bytes", lambda: 16 * 8 * 2**20)  # an 8 MiB automatic budget
    monkeypatch.setattr(mb, "MIN_AUTO_BUDGET", 2**20)
    x = np.random.default_rng(12).standard_normal((n, 3))
    assert untiled_bytes(x) > 8 * 2**20
    phi, peak = _peak_bytes(lambda: ps.stein_direction(x, -x))
    assert peak < 8 * 2**20 + 40 * n * 3 * 8, f"peak {peak / 2**20:.1f} MiB for an 8 MiB budget"
    np.testing.assert_allclose(phi, ps.stein_direction(x, -x, memory_budget=None), rtol=1e-9, atol=1e-12)


def test_tiled_median_keeps_no_more_bracket_values_than_its_blocks_hold(monkeypatch):
    """Small tiles would make the bracket's kept values outgrow the blocks: the radix passes take over."""
    from particlesampling import tiled

    x = np.random.default_rng(13).standard_normal((900, 3)).astype(np.float32)
    calls = []
    radix = selection._radix_select
    monkeypatch.setattr(selection, "_radix_select", lambda *a, **k: calls.append(1) or radix(*a, **k))
    wide = float(tiled.tiled_bandwidth(x, tile=900))
    assert calls == []  # 810,000 values may be kept: the bracket
    narrow = float(tiled.tiled_bandwidth(x, tile=2))
    assert calls  # at most 1,800 may be kept, the bracket would keep ~30,000
    untiled = float(ps.get_bandwidth(None)(x, ps.sqdist(x)))
    np.testing.assert_allclose([narrow, wide], [untiled, untiled], rtol=1e-6)  # blockings differ by rounding only
