"""The exact median's bracketing pass on the library's threads, and the selection's small steps.

* ``_bracket_pass`` cuts each large block into row ranges counted on ``pool_map``'s threads, as
  many as ``intra_op_threads_of`` gives (torch's intra-op threads, NumPy's BLAS pool): the order
  statistics are those of ``numpy.sort`` whatever the number of threads, with ties, infinities,
  signed zeros and subnormals.
* ``select_ranks``: an upper rank next to the previous one is the minimum right of it.

Every expected value comes from ``numpy.sort``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from particlesampling import _backend, selection
from particlesampling._backend import intra_op_threads_of, pool_map, symmetric_sqdist, upper_block_rows


def _awkward(size, rng):
    """Ties, infinities, both zeros and float32 subnormals among ordinary values."""
    v = rng.integers(0, 400, size=size).astype(np.float32)
    v[:50] = np.inf
    v[50:100] = -np.inf
    v[100:150] = -0.0
    v[150:400] = rng.random(250).astype(np.float32) * 1e-39  # subnormal in float32
    return rng.permutation(v)


@pytest.fixture
def threads(monkeypatch):
    """Every block of the bracketing pass cut for 3 threads (an uneven split), the pool's use counted."""
    calls = []

    def counted(fn, items, n):
        calls.append(len(items))
        return pool_map(fn, items, n)

    monkeypatch.setattr(selection, "intra_op_threads_of", lambda a: 3)
    monkeypatch.setattr(selection, "pool_map", counted)
    monkeypatch.setattr(selection, "PARALLEL_MIN_ENTRIES", 1000)
    return calls


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_symmetric_order_statistics_on_threads_match_the_sort(threads, lib):
    n = 900  # n^2 above 8 * BRACKET_SAMPLE: the bracketing pass
    x = np.random.default_rng(1).integers(0, 4, size=(n, 3)).astype(np.float32)  # many tied distances
    xc = x - x.mean(axis=0)
    arg = xc if lib == "numpy" else torch.from_numpy(xc)
    sq = symmetric_sqdist(arg, (arg * arg).sum(-1))
    ks = [n * n // 2 - 1, n * n // 2, n * n // 3]  # ranks the sample brackets (not the extremes)
    ref = np.sort(np.asarray(sq).reshape(-1))[ks]
    got = selection.symmetric_order_statistics(sq, ks)
    assert [float(g) for g in got] == [float(r) for r in ref]
    assert threads and all(1 < c <= 3 for c in threads)  # the blocks were counted on the pool


def _packed_multiset(packed):
    """Every value the packed upper block triangle stands for: each square on the diagonal once (as
    the GEMM rounded it), each entry right of it twice (itself and its mirror)."""
    parts = []
    for a, rows in zip(packed.starts, packed.rows):
        rows, b = np.asarray(rows), min(packed.n, a + packed.block)
        parts += [rows[:, :b - a].ravel(), rows[:, b - a:].ravel(), rows[:, b - a:].ravel()]
    return np.concatenate(parts)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("on_threads", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_packed_rows_counted_in_one_pass_per_block_match_the_sort(request, lib, on_threads, ties):
    calls = request.getfixturevalue("threads") if on_threads else None
    n = 1000  # 4 row blocks of 256: the bracketing pass over whole contiguous row blocks
    rng = np.random.default_rng(5)  # ties across the bracket, or distinct distances
    x = (rng.integers(0, 5, size=(n, 2)) if ties else rng.standard_normal((n, 2))).astype(np.float32)
    xc = x - x.mean(axis=0)
    arg = xc if lib == "numpy" else torch.from_numpy(xc)
    packed = upper_block_rows(arg, (arg * arg).sum(-1))
    every = _packed_multiset(packed)
    assert every.size == n * n
    ks = [n * n // 2 - 1, n * n // 2, n * n // 4]
    got = selection.symmetric_order_statistics(packed, ks)
    assert [float(g) for g in got] == [float(r) for r in np.sort(every)[ks]]
    if on_threads:
        assert calls and all(1 < c <= 3 for c in calls)


def test_order_statistics_of_awkward_values_on_threads_match_the_sort(threads):
    rng = np.random.default_rng(2)
    v = _awkward(8 * selection.BRACKET_SAMPLE + 1001, rng)
    ks = [v.size // 2, v.size // 2 + 1, v.size // 3]  # the infinities and subnormals lie below and above
    got = selection.order_statistics(v, ks)
    np.testing.assert_array_equal([np.float32(g) for g in got], np.sort(v)[ks])
    assert threads == [3]


def test_bracket_select_with_weights_on_threads(threads):
    rng = np.random.default_rng(3)
    a, b = rng.random((300, 40)).astype(np.float32), rng.random((200, 25)).astype(np.float32)
    everything = np.concatenate([a.ravel(), b.ravel(), b.ravel()])
    ks = [everything.size // 2]
    sample = everything[rng.integers(0, everything.size, size=4096)]
    got = selection.bracket_select(sample, lambda: [(a, 1), (torch.from_numpy(b), 2)], everything.size, ks)
    assert got == [float(np.sort(everything)[ks[0]])]


def test_select_ranks_adjacent_upper_rank_is_the_minimum_right_of_it():
    rng = np.random.default_rng(4)
    v = _awkward(5001, rng)
    ref = np.sort(v)
    for lo in (0, 60, 120, 2499, 2500, 4999):
        got = selection.select_ranks(v, [lo + 1, lo])
        assert got[lo] == ref[lo] and got[lo + 1] == ref[lo + 1]


def test_intra_op_threads_of_follows_each_library():
    assert intra_op_threads_of(torch.zeros(3)) == torch.get_num_threads()
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert intra_op_threads_of(torch.zeros(3)) == 2
    finally:
        torch.set_num_threads(saved)
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        assert intra_op_threads_of(np.zeros(3)) == 1
    assert intra_op_threads_of([1.0, 2.0]) == 1


def test_pool_map_keeps_the_order_and_grows():
    assert pool_map(lambda i: i * i, range(7), 2) == [i * i for i in range(7)]
    assert pool_map(lambda i: -i, range(5), 4) == [0, -1, -2, -3, -4]
    assert _backend._POOL[1] >= 4


def test_pool_map_remakes_the_pool_in_another_process(monkeypatch):
    import os

    pool_map(abs, [-1, -2], 2)
    inherited = _backend._POOL[0]
    real = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: real + 1)  # as in a forked child: the pool came without its threads
    assert pool_map(abs, [-3, -4], 2) == [3, 4]
    assert _backend._POOL[0] is not inherited and _backend._POOL[2] == real + 1


def test_pool_map_from_many_threads_while_the_pool_grows():
    """Callers on several threads, each asking for a larger pool (so each call would replace it): every
    call returns its own results in order and none meets a pool shut down under it."""
    import threading

    _backend._POOL.clear()
    barrier = threading.Barrier(8)
    results, errors = {}, []

    def caller(k):
        try:
            barrier.wait()
            for rep in range(20):
                results[(k, rep)] = pool_map(lambda i: (k, i), range(16), 1 + k + 8 * rep)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _backend._POOL[0].shutdown(wait=True)  # leave no 160-thread pool to the tests after this one
    _backend._POOL.clear()
    assert not errors, errors[:3]
    assert all(results[(k, rep)] == [(k, i) for i in range(16)] for k in range(8) for rep in range(20))


@pytest.mark.parametrize("torch_threads", [1, 2])
def test_the_pass_on_torch_data_follows_torch_threads_not_numpys(monkeypatch, torch_threads):
    """The selection reads torch tensors through NumPy views; its pass must still take torch's
    intra-op thread count (what the GEMMs around it use), not NumPy's BLAS pool: packed rows
    (the Stein step), the full symmetric matrix and a flat tensor alike."""
    used = []

    def counted(fn, items, n):
        used.append(n)
        return pool_map(fn, items, n)

    monkeypatch.setattr(selection, "pool_map", counted)
    monkeypatch.setattr(selection, "PARALLEL_MIN_ENTRIES", 1000)
    real = _backend.intra_op_threads_of
    # NumPy's pool says 3; torch says torch_threads
    monkeypatch.setattr(selection, "intra_op_threads_of",
                        lambda a: 3 if isinstance(a, np.ndarray) else real(a))
    before = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        n = 900
        x = torch.from_numpy(np.random.default_rng(4).standard_normal((n, 3)).astype(np.float32))
        xc = x - x.mean(0)
        xx = (xc * xc).sum(-1)
        ks = [n * n // 2 - 1, n * n // 2]
        for sq in (upper_block_rows(xc, xx), symmetric_sqdist(xc, xx)):
            used.clear()
            got = selection.symmetric_order_statistics(sq, ks)
            ref = np.sort(np.asarray(symmetric_sqdist(xc, xx)).reshape(-1))[ks]
            assert [float(g) for g in got] == [float(r) for r in ref]
            assert all(u == torch_threads for u in used) and (used or torch_threads == 1)
        used.clear()
        flat = symmetric_sqdist(xc, xx).reshape(-1)
        got = selection.order_statistics(flat, ks)
        assert [float(g) for g in got] == [float(r) for r in np.sort(flat.numpy())[ks]]
        assert all(u == torch_threads for u in used) and (used or torch_threads == 1)
    finally:
        torch.set_num_threads(before)
