"""run_sampler, Trace, NonFiniteError (particlesampling.runner) and checkpoint/resume (particlesampling.checkpoint)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from particlesampling import to_numpy
from particlesampling.checkpoint import load_state, save_state
from particlesampling.runner import NonFiniteError, Trace, run_sampler
from particlesampling.samplers import ParticleState, get_sampler, sgld, spos, svgd
from particlesampling.step_sizes import adagrad_momentum, adam, constant
from tests.unit.array_libs import as_lib as _as, available_libs as _libs


def _score(x):
    """Score of N((1, -1), diag(1, 2)) for any namespace (x * c + b with broadcasting)."""
    import array_api_compat

    xp = array_api_compat.array_namespace(x)
    dev = array_api_compat.device(x)
    mu = xp.asarray([1.0, -1.0], dtype=x.dtype, device=dev)
    var = xp.asarray([1.0, 2.0], dtype=x.dtype, device=dev)
    return -(x - mu) / var


def _x0(n=10, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 2))


# ---------------------------------------------------------------------------------------------
# resume == uninterrupted


@pytest.mark.parametrize("lib", _libs())
@pytest.mark.parametrize("method,make_rule", [("svgd", lambda: adagrad_momentum(0.05)), ("spos", lambda: adam(0.05)),
                                              ("sgld", lambda: constant(0.05)), ("spos", lambda: constant(0.05))])
def test_resume_equals_uninterrupted(tmp_path, lib, method, make_rule):
    x0 = _as(lib, _x0())
    sampler = get_sampler(method, _score, make_rule())
    full, _ = run_sampler(sampler, sampler.init(x0, seed=11), 12, progress=False)

    part, _ = run_sampler(sampler, sampler.init(x0, seed=11), 5, progress=False)
    path = tmp_path / "ckpt.npz"
    save_state(path, part, sampler)
    # a fresh sampler object, as in a new process
    sampler2 = get_sampler(method, _score, make_rule())
    loaded = load_state(path, sampler2, like=x0)
    assert loaded.step == 5 and loaded.seed == 11
    assert type(loaded.particles) is type(x0)
    assert loaded.particles.dtype == x0.dtype
    assert type(loaded.step_state) is type(part.step_state)
    resumed, trace = run_sampler(sampler2, loaded, 7, progress=False)
    assert resumed.step == 12
    np.testing.assert_array_equal(to_numpy(resumed.particles), to_numpy(full.particles))
    for a, b in zip(resumed.step_state, full.step_state):
        if isinstance(a, int):
            assert a == b
        else:
            np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert trace.steps[-1] == 12


def test_load_state_without_like_gives_numpy_of_saved_dtype(tmp_path):
    x0 = _x0().astype(np.float32)
    sampler = svgd(_score, adam(0.01))
    state, _ = run_sampler(sampler, sampler.init(x0, seed=2), 3, progress=False)
    save_state(tmp_path / "c.npz", state, sampler)
    loaded = load_state(tmp_path / "c.npz", sampler)
    assert isinstance(loaded.particles, np.ndarray) and loaded.particles.dtype == np.float32
    np.testing.assert_array_equal(loaded.particles, state.particles)
    np.testing.assert_array_equal(loaded.step_state.m, state.step_state.m)
    np.testing.assert_array_equal(loaded.step_state.v, state.step_state.v)
    assert loaded.step_state.count == 3
    # no temporary file is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]


@pytest.mark.parametrize("saved,loading", [
    (lambda: svgd(_score, adagrad_momentum(0.1)), lambda: spos(_score, adagrad_momentum(0.1))),
    (lambda: svgd(_score, adagrad_momentum(0.1)), lambda: svgd(_score, adam(0.1))),
    (lambda: spos(_score, adam(0.1)), lambda: spos(_score, constant(0.1))),
    (lambda: sgld(_score, 0.1), lambda: svgd(_score, 0.1)),
])
def test_load_state_refuses_other_method_or_rule(tmp_path, saved, loading):
    s1 = saved()
    state, _ = run_sampler(s1, s1.init(_x0(), seed=1), 2, progress=False)
    save_state(tmp_path / "c.npz", state, s1)
    with pytest.raises(ValueError, match="written with"):
        load_state(tmp_path / "c.npz", loading())


def test_checkpoint_meta(tmp_path):
    s = spos(_score, adam(0.1))
    state, _ = run_sampler(s, s.init(_x0(), seed=4), 3, progress=False)
    save_state(tmp_path / "c.npz", state, s)
    with np.load(tmp_path / "c.npz") as f:
        meta = json.loads(str(f["meta"]))
    assert meta["method"] == "spos" and meta["step_rule"] == "adam"
    assert meta["step"] == 3 and meta["seed"] == 4


# ---------------------------------------------------------------------------------------------
# trace


def test_trace_records_at_the_right_steps_with_metrics():
    sampler = svgd(_score, 0.1)
    calls = []

    def mean0(x):
        calls.append(1)
        return np.mean(x[:, 0])

    state, trace = run_sampler(sampler, sampler.init(_x0(), seed=0), 25, trace_every=10,
                               metrics={"mean0": mean0}, keep_particles=True, progress=False)
    assert isinstance(trace, Trace)
    assert trace.steps == [0, 10, 20, 25]
    assert len(calls) == 4
    assert len(trace.particles) == 4 and len(trace.seconds) == 4
    np.testing.assert_array_equal(trace.particles[0], _x0())
    np.testing.assert_array_equal(trace.particles[-1], state.particles)
    # the metric was evaluated on the particles of its own step
    np.testing.assert_allclose(trace.metrics["mean0"], [p[:, 0].mean() for p in trace.particles], rtol=1e-15)
    # snapshots are those of an independent step-by-step run
    st = sampler.init(_x0(), seed=0)
    for k in range(1, 26):
        st, info = sampler.step(st)
        if k == 20:
            np.testing.assert_array_equal(trace.particles[2], st.particles)
            # info rows are aligned with trace.steps: index 2 is step 20 (index 0, the start, is NaN)
            np.testing.assert_allclose(trace.info["update_norm"][2], float(info.update_norm), rtol=1e-15)
    assert np.isnan(trace.info["update_norm"][0])
    assert all(np.diff(trace.seconds) >= 0)
    arrays = trace.as_arrays()
    np.testing.assert_array_equal(arrays["steps"], [0, 10, 20, 25])
    assert arrays["particles"].shape == (4, 10, 2)
    np.testing.assert_allclose(arrays["metric_mean0"], trace.metrics["mean0"])
    assert set(k for k in arrays if k.startswith("info_")) == {
        "info_bandwidth", "info_mean_kernel", "info_update_norm", "info_score_norm"}


def test_trace_without_metrics_records_multiples_and_last():
    sampler = sgld(_score, 0.1)
    _, trace = run_sampler(sampler, sampler.init(_x0(), seed=0), 25, trace_every=10, progress=False)
    assert trace.steps == [0, 10, 20, 25]
    assert len(trace.info["update_norm"]) == 4 and np.isnan(trace.info["update_norm"][0])
    assert trace.metrics == {} and trace.particles == []


@pytest.mark.parametrize("metrics", [None, {"mean": lambda x: float(np.mean(x))}], ids=["no-metrics", "metrics"])
def test_trace_info_aligned_with_steps(metrics):
    sampler = svgd(_score, 0.1)
    _, trace = run_sampler(sampler, sampler.init(_x0(), seed=0), 25, trace_every=10, metrics=metrics,
                           progress=False)
    assert trace.steps == [0, 10, 20, 25]
    arrays = trace.as_arrays()
    for k, v in arrays.items():
        if k.startswith(("info_", "metric_")):
            assert v.shape == arrays["steps"].shape, k


def test_trace_save_roundtrip(tmp_path):
    sampler = svgd(_score, 0.1)
    _, trace = run_sampler(sampler, sampler.init(_x0(), seed=0), 6, trace_every=2,
                           metrics={"m": lambda x: np.mean(x)}, keep_particles=True, progress=False)
    trace.save(tmp_path / "t.npz")
    with np.load(tmp_path / "t.npz") as f:
        np.testing.assert_array_equal(f["steps"], [0, 2, 4, 6])
        np.testing.assert_allclose(f["metric_m"], trace.metrics["m"])
        np.testing.assert_allclose(f["particles"], np.stack(trace.particles))


def test_zero_steps_and_callback():
    sampler = svgd(_score, 0.1)
    st0 = sampler.init(_x0(), seed=0)
    state, trace = run_sampler(sampler, st0, 0, progress=False)
    assert state is st0 and trace.steps == [0]
    seen = []
    state, _ = run_sampler(sampler, st0, 4, callback=lambda s, i: seen.append((s.step, bool(i.finite))),
                           progress=False)
    assert seen == [(1, True), (2, True), (3, True), (4, True)]
    assert state.step == 4


def test_resumed_trace_uses_absolute_steps():
    sampler = svgd(_score, 0.1)
    st, _ = run_sampler(sampler, sampler.init(_x0(), seed=0), 7, progress=False)
    _, trace = run_sampler(sampler, st, 8, trace_every=5, progress=False)
    assert trace.steps == [7, 10, 15]  # the starting state (absolute step 7), multiples of 5, the end


def test_torch_run_and_trace():
    torch = pytest.importorskip("torch")
    x0 = torch.as_tensor(_x0(), dtype=torch.float32)
    sampler = spos(_score, 0.05)
    state, trace = run_sampler(sampler, sampler.init(x0, seed=0), 5, trace_every=2, keep_particles=True,
                               metrics={"m": lambda x: torch.mean(x)}, progress=False)
    assert isinstance(state.particles, torch.Tensor) and state.particles.dtype == torch.float32
    assert all(isinstance(p, np.ndarray) for p in trace.particles)
    assert all(isinstance(v, float) for v in trace.metrics["m"])


@pytest.mark.parametrize("kwargs", [dict(steps=-1), dict(steps=2.0), dict(steps=True), dict(steps=3, trace_every=0),
                                    dict(steps=3, trace_every=1.5)])
def test_bad_run_arguments(kwargs):
    sampler = svgd(_score, 0.1)
    steps = kwargs.pop("steps")
    with pytest.raises(ValueError):
        run_sampler(sampler, sampler.init(_x0()), steps, progress=False, **kwargs)


# ---------------------------------------------------------------------------------------------
# non-finite detection


class NaNAfter:
    """Score of _score that puts ``value`` (NaN by default, or +-inf) in particle `particle` from the
    `bad_call`-th call on (0-based)."""

    def __init__(self, bad_call, particle, value=np.nan):
        self.bad_call, self.particle, self.value, self.calls = bad_call, particle, value, 0

    def __call__(self, x):
        s = np.array(_score(x), copy=True)
        if self.calls >= self.bad_call:
            s[self.particle, 1] = self.value
        self.calls += 1
        return s


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("method", ["sgld", "svgd", "spos"])
def test_non_finite_error_names_step_and_keeps_previous_state(method, value):
    x0 = _x0()
    bad_step, bad_particle = 3, 4
    sampler = get_sampler(method, NaNAfter(bad_step, bad_particle, value), 0.05)
    with pytest.raises(NonFiniteError) as ei:
        run_sampler(sampler, sampler.init(x0, seed=1), 10, progress=False)
    err = ei.value
    assert isinstance(err, FloatingPointError)
    assert err.step == bad_step
    assert f"step {bad_step}" in str(err)
    # the kept state is the one before the failing step: equal to 3 clean steps
    clean = get_sampler(method, _score, 0.05)
    ref, _ = run_sampler(clean, clean.init(x0, seed=1), bad_step, progress=False)
    assert err.state.step == bad_step
    np.testing.assert_array_equal(err.state.particles, ref.particles)
    assert np.all(np.isfinite(err.state.particles))


def test_non_finite_error_names_the_particle_sgld():
    sampler = sgld(NaNAfter(2, 7), 0.05)
    with pytest.raises(NonFiniteError) as ei:
        run_sampler(sampler, sampler.init(_x0(), seed=1), 10, progress=False)
    assert ei.value.particle == 7
    assert "particle 7" in str(ei.value)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("method", ["svgd", "spos", "sgld"])
def test_non_finite_error_names_the_particle_with_the_bad_score(method, value):
    sampler = get_sampler(method, NaNAfter(2, 7, value), 0.05)
    with np.errstate(invalid="ignore"), pytest.raises(NonFiniteError) as ei:
        run_sampler(sampler, sampler.init(_x0(), seed=1), 10, progress=False)
    assert ei.value.particle == 7 and ei.value.step == 2


def test_non_finite_particle_from_overflow():
    # a finite score that overflows the update: x + eps * 1e308 * ... -> inf at particle 2 only
    def score(x):
        s = -x.copy()
        s[2, 0] = 1e308
        return s

    sampler = sgld(score, 10.0)
    with np.errstate(over="ignore"), pytest.raises(NonFiniteError) as ei:
        run_sampler(sampler, sampler.init(_x0(), seed=0), 3, progress=False)
    assert ei.value.step == 0 and ei.value.particle == 2
    assert ei.value.state.step == 0


def test_state_namedtuple_fields():
    assert ParticleState._fields == ("particles", "step_state", "step", "seed")


def test_run_loop_traces_a_user_sampler_with_the_base_info():
    """A sampler written by a user on the base class (no info_type of its own) runs and is traced."""
    import dataclasses

    from particlesampling.samplers import LangevinStepInfo, ParticleSampler

    @dataclasses.dataclass(frozen=True)
    class GradientAscent(ParticleSampler):
        def step(self, state):
            s = self.scores(state.particles)
            new, delta = self._move(state, s)
            norm = lambda a: np.sqrt(np.mean(np.sum(a * a, axis=1)))  # noqa: E731
            return new, LangevinStepInfo(norm(delta), norm(s), np.all(np.isfinite(new.particles)))

    sampler = GradientAscent(_score, constant(0.1))
    state, trace = run_sampler(sampler, sampler.init(_x0()), 20, trace_every=5, progress=False)
    assert state.step == 20 and sorted(trace.info) == ["score_norm", "update_norm"]
    assert trace.info["update_norm"][-1] < trace.info["update_norm"][1]
