"""Non-finite particles or scores are caught where they enter the Stein direction: the pure
direction, its batched, tiled and random-batch forms raise ``NonFiniteError`` naming the offending
rows; ``check_finite=False`` skips the check (the values then propagate); under ``jax.jit`` there
are no values and the check is skipped. (The sharded form: tests/unit/test_distributed_unit.py; the
samplers, which leave the check to their run loop: tests/unit/test_run.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import particlesampling as ps
from particlesampling.random_batch import random_batch_direction
from particlesampling.tiled import tiled_stein_direction


def _data(lib, n=12, d=3, dtype="float64"):
    x = np.random.default_rng(0).standard_normal((n, d)).astype(dtype)
    s = -x
    return (x, s) if lib == "numpy" else (torch.from_numpy(x), torch.from_numpy(s))


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_the_direction_names_the_non_finite_rows_of_particles_and_scores(lib):
    x, s = _data(lib)
    x[3, 0] = np.nan
    s[1, 2] = np.inf
    s[7, 0] = -np.inf
    with pytest.raises(ps.NonFiniteError, match=r"particles at row 3 and scores at rows 1, 7") as ei:
        ps.stein_direction(x, s)
    assert ei.value.rows == (1, 3, 7) and ei.value.particle == 1
    assert ei.value.step is None and ei.value.state is None
    assert isinstance(ei.value, FloatingPointError)
    phi = np.asarray(ps.stein_direction(x, s, check_finite=False))  # opted out: NaN propagates
    assert np.isnan(phi).any()


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_the_batched_direction_names_system_and_row(lib):
    x, s = _data(lib, n=24)
    x, s = x.reshape(3, 8, 3), s.reshape(3, 8, 3)
    x[2, 5, 1] = np.nan
    with pytest.raises(ps.NonFiniteError, match=r"batched Stein direction: non-finite particles at row \(2, 5\)") as ei:
        ps.stein_direction_batched(x, s)
    assert ei.value.rows == ((2, 5),)
    assert np.isnan(np.asarray(ps.stein_direction_batched(x, s, check_finite=False))[2]).all()


def test_the_tiled_and_random_batch_forms_check_too():
    x, s = _data("torch", n=20)
    s[11, 0] = np.nan
    with pytest.raises(ps.NonFiniteError, match=r"tiled Stein direction: non-finite scores at row 11\b"):
        tiled_stein_direction(x, s, tile=4)
    with pytest.raises(ps.NonFiniteError, match=r"^the Stein direction: non-finite scores at row 11\b"):
        ps.stein_direction(x, s, memory_budget=1000)  # the tiled path, checked once on entry
    with pytest.raises(ps.NonFiniteError, match=r"random-batch Stein direction: non-finite scores at row 11\b"):
        random_batch_direction(x, s, 5, seed=0, step=0)
    assert torch.isnan(tiled_stein_direction(x, s, tile=4, check_finite=False)).any()


def test_many_rows_are_listed_up_to_ten():
    x, s = _data("numpy", n=30)
    x[::2] = np.nan
    with pytest.raises(ps.NonFiniteError, match=r"rows 0, 2, 4, 6, 8, 10, 12, 14, 16, 18 and 5 more"):
        ps.stein_direction(x, s)


def test_finite_values_whose_sum_overflows_pass():
    x = np.full((6, 2), 3e38, dtype=np.float32)
    x[::2] *= -1.0
    x[0, 0] = 3e38
    with np.errstate(over="ignore", invalid="ignore"):  # the step itself overflows on such values
        assert not np.isfinite(x.sum(dtype=np.float32) + (-x).sum(dtype=np.float32))
        ps.stein_direction(x, -x, bandwidth=1.0)  # no NonFiniteError: every entry is finite


def test_check_finite_must_be_a_bool():
    x, s = _data("numpy")
    for f in (ps.stein_direction, ps.stein_direction_with_info):
        with pytest.raises(TypeError, match="check_finite as a bool"):
            f(x, s, check_finite=1)


def test_jax_eager_raises_and_jit_skips_the_check():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x, s = _data("numpy")
    x[5, 1] = np.nan
    with pytest.raises(ps.NonFiniteError, match=r"particles at row 5\b"):
        ps.stein_direction(jnp.asarray(x, dtype=jnp.float32), jnp.asarray(s, dtype=jnp.float32))
    phi = jax.jit(ps.stein_direction)(jnp.asarray(x, dtype=jnp.float32), jnp.asarray(s, dtype=jnp.float32))
    assert np.isnan(np.asarray(phi)).any()
