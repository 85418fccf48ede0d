"""run_sampler's thread scoping: one thread (torch's intra-op pool, NumPy's BLAS pool) for small CPU
problems, the caller's setting restored afterwards (also on an exception), nothing changed when asked."""

from __future__ import annotations

import math

import numpy as np
import pytest

import particlesampling as ps
from particlesampling.runner import ONE_THREAD_MAX_ENTRIES, NonFiniteError, auto_num_threads, intra_op_threads

torch = pytest.importorskip("torch")


@pytest.fixture
def caller_threads():
    """The caller's setting: 2 threads (whatever the machine has), restored after the test."""
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(saved)


def _threads_during(particles, **kwargs) -> set:
    seen = set()
    sampler = ps.svgd(lambda x: -x, step_size=1e-3)
    ps.run_sampler(sampler, sampler.init(particles), 3, callback=lambda s, i: seen.add(torch.get_num_threads()),
                   **kwargs)
    return seen


def test_small_torch_run_uses_one_thread_and_restores(caller_threads):
    x = torch.randn(30, 2, dtype=torch.float64)
    assert _threads_during(x) == {1}
    assert torch.get_num_threads() == caller_threads


@pytest.mark.parametrize("num_threads, expected", [(None, 2), (2, 2), (1, 1)])
def test_explicit_num_threads(caller_threads, num_threads, expected):
    assert _threads_during(torch.randn(30, 2), num_threads=num_threads) == {expected}
    assert torch.get_num_threads() == caller_threads


@pytest.mark.parametrize("num_threads", ["auto", 1, None])
def test_numpy_runs_leave_torch_alone(caller_threads, num_threads):
    assert _threads_during(np.random.default_rng(0).standard_normal((30, 2)), num_threads=num_threads) == {2}


def _blas_threads() -> int:
    from threadpoolctl import threadpool_info

    return max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")


@pytest.mark.parametrize("num_threads, expected", [("auto", 1), (1, 1), (None, 2)])
def test_numpy_runs_scope_the_blas_pool(num_threads, expected):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):  # the caller's setting
        if _blas_threads() != 2:
            pytest.skip("the BLAS library here does not take a thread limit")
        seen = set()
        sampler = ps.svgd(lambda x: -x, step_size=1e-3)
        ps.run_sampler(sampler, sampler.init(np.random.default_rng(0).standard_normal((30, 2))), 2,
                       callback=lambda s, i: seen.add(_blas_threads()), num_threads=num_threads)
        assert seen == {expected}
        assert _blas_threads() == 2


def test_restored_when_the_run_raises(caller_threads):
    sampler = ps.svgd(lambda x: x * math.nan, step_size=1e-3)
    with pytest.raises(NonFiniteError):
        ps.run_sampler(sampler, sampler.init(torch.randn(10, 2)), 3)
    assert torch.get_num_threads() == caller_threads
    with pytest.raises(RuntimeError, match="boom"):
        with intra_op_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == caller_threads


def test_auto_threshold_is_on_the_kernel_entries():
    n_max = math.isqrt(ONE_THREAD_MAX_ENTRIES)
    assert auto_num_threads(torch.empty(n_max, 3)) == 1
    assert auto_num_threads(torch.empty(n_max + 1, 3)) is None
    assert auto_num_threads(torch.empty(4, n_max + 1)) == 1          # d does not count, n does
    assert auto_num_threads(torch.empty(2, 5, 3)) == 1                # a stack: n is the second-last axis
    assert auto_num_threads(torch.empty(5, 3, device="meta")) is None  # not the CPU
    assert auto_num_threads(np.empty((5, 3))) == 1 and auto_num_threads(np.empty((n_max + 1, 1))) is None
    with pytest.raises(ValueError, match="library"):
        with intra_op_threads(1, library="jax"):
            pass


@pytest.mark.parametrize("bad", [0, -1, "two", True, 1.0])
def test_bad_num_threads_is_a_value_error(bad):
    sampler = ps.svgd(lambda x: -x, step_size=1e-3)
    with pytest.raises(ValueError, match="num_threads"):
        ps.run_sampler(sampler, sampler.init(torch.randn(5, 2)), 1, num_threads=bad)
