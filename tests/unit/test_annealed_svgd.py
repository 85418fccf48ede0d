"""Annealed SVGD (D'Angelo & Fortuin 2021): schedules, brute force on every backend, known answers."""

from __future__ import annotations

import numpy as np
import pytest

import particlesampling as ps
from particlesampling.annealing import CyclicalAnnealing, LinearAnnealing
from particlesampling.samplers import ParticleState
from tests.unit.stein_reference import liu_wang_bandwidth, svgd_direction


def test_cyclical_schedule_is_eq4():
    """gamma(t) = (mod(t, T/C) / (T/C))^p, T = 100, C = 4 (cycle length 25), p = 2; 1 from T on."""
    g = CyclicalAnnealing(100, num_cycles=4, power=2.0)
    assert g(0) == 0.0 and g(25) == 0.0 and g(50) == 0.0
    assert g(20) == pytest.approx((20 / 25) ** 2)
    assert g(99) == pytest.approx((24 / 25) ** 2)
    assert g(100) == 1.0 and g(1000) == 1.0
    odd = CyclicalAnnealing(10, num_cycles=4, power=1.0)  # cycle length 2.5 steps
    assert [odd(t) for t in range(6)] == pytest.approx([0.0, 0.4, 0.8, 0.2, 0.6, 0.0])


def test_linear_schedule():
    g = LinearAnnealing(10)
    assert [g(t) for t in (0, 5, 10, 20)] == [0.0, 0.5, 1.0, 1.0]


@pytest.mark.parametrize("bad", [dict(num_steps=0), dict(num_steps=5, num_cycles=6), dict(num_steps=5, power=-1.0),
                                 dict(num_steps=2.5)])
def test_schedule_bad_arguments(bad):
    with pytest.raises(ValueError):
        CyclicalAnnealing(**bad)


@pytest.mark.parametrize("bandwidth", [0.9, None])
def test_step_matches_brute_force(xp_backend, rng, bandwidth):
    x64 = rng.normal(size=(7, 3))
    sched = CyclicalAnnealing(12, num_cycles=3, power=1.5)  # gamma at step 0, 1, 2: 0, 0.25^1.5, 0.5^1.5

    def score(x):
        return -x * 1.5

    sampler = ps.annealed_svgd(score, 0.1, schedule=sched, bandwidth=bandwidth)
    state = sampler.init(xp_backend.asarray(x64))
    xr = xp_backend.cast_np(x64)
    for t in range(3):
        state, info = sampler.step(state)
        h = 0.9 if bandwidth else liu_wang_bandwidth(xr)
        xr = xr + 0.1 * svgd_direction(xr, -1.5 * xr, h, gamma=sched(t))
        assert xp_backend.is_native(state.particles)
        xp_backend.assert_close(state.particles, xr, err_msg=f"step {t}")
        xp_backend.assert_close(info.bandwidth, h)


def test_step_matches_brute_force_jax(rng):
    jax = pytest.importorskip("jax")
    x64 = rng.normal(size=(6, 2))
    sched = LinearAnnealing(4)
    sampler = ps.annealed_svgd(lambda x: -x, 0.2, schedule=sched, bandwidth=1.1)
    with jax.enable_x64(True):
        eager = jitted = sampler.init(jax.numpy.asarray(x64))
        xr = x64
        for t in range(2):
            eager, _ = sampler.step(eager)
            # the state's integers (step, seed) are static under jit, closed over (as in test_jax)
            fn = jax.jit(lambda p, ss, st=jitted: sampler.step(ParticleState(p, ss, st.step, st.seed)))
            new, _ = fn(jitted.particles, jitted.step_state)
            jitted = ParticleState(new.particles, new.step_state, jitted.step + 1, jitted.seed)
            xr = xr + 0.2 * svgd_direction(xr, -xr, 1.1, gamma=sched(t))
        np.testing.assert_allclose(np.asarray(eager.particles), xr, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(jitted.particles), xr, rtol=1e-10, atol=1e-12)


def test_gamma_one_is_svgd_and_zero_is_pure_repulsion(rng):
    x = rng.normal(size=(8, 2))
    plain = ps.svgd(lambda z: -z, 0.1)
    ones = ps.annealed_svgd(lambda z: -z, 0.1, schedule=lambda t: 1.0)
    np.testing.assert_array_equal(plain.step(plain.init(x))[0].particles, ones.step(ones.init(x))[0].particles)
    zeros = ps.annealed_svgd(lambda z: -z, 0.1, schedule=lambda t: 0.0, bandwidth=0.7)
    np.testing.assert_allclose(zeros.step(zeros.init(x))[0].particles - x,
                               0.1 * svgd_direction(x, -x, 0.7, gamma=0.0), rtol=1e-12, atol=1e-14)


def test_known_answer_gaussian_moments():
    """After the annealing phase it is SVGD on the 2-D correlated Gaussian: mean and covariance within
    the tolerances of SVGD's own fixed point with 100 particles (0.1 absolute on the mean, 15 %
    relative Frobenius on the covariance)."""
    target = ps.get_target("gaussian")
    sampler = ps.annealed_svgd(target.score, 0.05, num_steps=300)
    state, _ = ps.run_sampler(sampler, sampler.init(target.initial_particles(100, seed=1)), 1500, trace_every=500)
    assert float(ps.mean_error(state.particles, target.mean)) < 0.1
    assert float(ps.cov_error(state.particles, target.cov)) < 0.15


def test_bad_arguments():
    with pytest.raises(ValueError, match="schedule .* or num_steps"):
        ps.annealed_svgd(lambda x: -x, 0.1)
    with pytest.raises(ValueError, match="received both"):
        ps.annealed_svgd(lambda x: -x, 0.1, num_steps=10, schedule=LinearAnnealing(3))
    with pytest.raises(TypeError, match="annealing schedule"):
        ps.annealed_svgd(lambda x: -x, 0.1, schedule=0.5)
    with pytest.raises(ValueError, match="reads the scores"):
        ps.annealed_svgd(lambda x: -x, 0.1, num_steps=10, bandwidth="maxksd")
    s = ps.annealed_svgd(lambda x: -x, 0.1, schedule=lambda t: 1.5)
    with pytest.raises(ValueError, match=r"expected a value in \[0, 1\]"):
        s.step(s.init(np.zeros((3, 2)) + np.arange(3)[:, None]))
    assert ps.get_sampler("annealed_svgd", lambda x: -x, 0.1, num_steps=5).name == "annealed_svgd"
