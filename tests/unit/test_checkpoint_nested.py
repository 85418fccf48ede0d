"""Checkpoints of nested step states (particlesampling.checkpoint): projected SVGD (its basis, None before the first
step) and sliced SVGD (its slices and their Adam state) resume exactly, on NumPy and PyTorch."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import numpy as np
import pytest

import particlesampling as ps
from particlesampling import to_numpy
from particlesampling.checkpoint import load_state, save_state
from particlesampling.samplers import ParticleState
from tests.unit.array_libs import as_lib as _as, available_libs as _libs


def _score(x):
    """Score of N(0, diag(1, 4, 0.25, 2)) in any namespace (elementwise)."""
    return -x * (x * 0.0 + _precision(x))


def _precision(x):
    import array_api_compat

    xp = array_api_compat.array_namespace(x)
    return xp.asarray([1.0, 0.25, 4.0, 0.5], dtype=x.dtype, device=array_api_compat.device(x))


def _x0(n=9, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 4)) + 0.5


SAMPLERS = {
    "projected": lambda: ps.projected_svgd(_score, ps.adagrad_momentum(0.05), rank=2),
    "projected-every-3": lambda: ps.projected_svgd(_score, 0.05, tolerance=0.05, basis_every=3),
    "sliced": lambda: ps.sliced_svgd(_score, ps.adam(0.05), slice_updates=2, slice_step_size=0.01),
    "sliced-fixed": lambda: ps.sliced_svgd(_score, 0.05, slice_updates=0, slices=np.eye(4) + 0.2),
}


def _leaves(state):
    """The leaves of a (nested) step state, in order."""
    out = []
    for v in state:
        out.extend(_leaves(v) if isinstance(v, tuple) and hasattr(v, "_fields") else [v])
    return out


@pytest.mark.parametrize("lib", _libs())
@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("stop", [0, 4])
def test_resume_equals_uninterrupted(tmp_path, lib, name, stop):
    """Saved after ``stop`` steps (0: before the first, projected SVGD's basis still None), loaded into a fresh
    sampler, run to 10 steps: particles and every leaf of the step state equal the uninterrupted run's exactly."""
    x0 = _as(lib, _x0())
    sampler = SAMPLERS[name]()
    full, _ = ps.run_sampler(sampler, sampler.init(x0, seed=5), 10, progress=False)
    part, _ = ps.run_sampler(sampler, sampler.init(x0, seed=5), stop, progress=False)
    save_state(tmp_path / "c.npz", part, sampler)
    fresh = SAMPLERS[name]()  # as in a new process
    loaded = load_state(tmp_path / "c.npz", fresh, like=x0)
    assert type(loaded.step_state) is type(part.step_state) and loaded.step == stop
    assert [type(a) for a in _leaves(loaded.step_state)] == [type(a) for a in _leaves(part.step_state)]
    resumed, _ = ps.run_sampler(fresh, loaded, 10 - stop, progress=False)
    np.testing.assert_array_equal(to_numpy(resumed.particles), to_numpy(full.particles))
    for a, b in zip(_leaves(resumed.step_state), _leaves(full.step_state)):
        if a is None or isinstance(a, (int, float)):
            assert a == b
        else:
            np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_nested_keys_and_none_in_the_file(tmp_path):
    sampler = ps.projected_svgd(_score, ps.adam(0.05), rank=1)
    state = sampler.init(_x0())
    save_state(tmp_path / "c.npz", state, sampler)
    with np.load(tmp_path / "c.npz") as f:
        meta = json.loads(str(f["meta"]))
        files = set(f.files)
    assert meta["step_state_type"] == "ProjectionState" and meta["step_state_none"] == ["basis"]
    assert meta["step_state_scalars"] == {"rule__count": 0}
    assert {"step_state__rule__m", "step_state__rule__v"} <= files
    stepped, _ = sampler.step(state)
    save_state(tmp_path / "c.npz", stepped, sampler)
    loaded = load_state(tmp_path / "c.npz", sampler)
    np.testing.assert_array_equal(loaded.step_state.basis, stepped.step_state.basis)
    assert loaded.step_state.rule.count == 1


def test_refuses_another_state_or_leaf(tmp_path):
    sliced = ps.sliced_svgd(_score, 0.05)
    save_state(tmp_path / "c.npz", sliced.init(_x0()), sliced)
    with pytest.raises(ValueError, match="written with method='sliced_svgd'"):
        load_state(tmp_path / "c.npz", ps.projected_svgd(_score, 0.05))
    with pytest.raises(ValueError, match="holds a step state 'SliceState'"):
        load_state(tmp_path / "c.npz", _Renamed(sliced))

    class Odd(NamedTuple):
        label: Any

    with pytest.raises(TypeError, match="field 'label' of Odd is str"):
        save_state(tmp_path / "d.npz", ParticleState(_x0(), Odd("x"), 0, 0))
    with pytest.raises(ValueError, match="lacks step-state field 'rule__count'"):
        with np.load(tmp_path / "c.npz") as f:
            meta = json.loads(str(f["meta"]))
            payload = {k: f[k] for k in f.files}
        meta["step_state_scalars"] = {}
        payload["meta"] = np.asarray(json.dumps(meta))
        np.savez(tmp_path / "e.npz", **payload)
        load_state(tmp_path / "e.npz", sliced)


class _Renamed:
    """A sampler of the same name and rule whose step state is another type (a plain rule state)."""

    def __init__(self, sampler):
        self.name, self.step_rule = sampler.name, sampler.step_rule
