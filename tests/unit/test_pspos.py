"""Preconditioned SPOS: brute force (loops over pairs and coordinates) on every backend, the
correction term's known answer, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

import particlesampling as ps
from particlesampling.random import normal_noise
from tests.unit.stein_reference import svgd_direction

H = 0.9  # fixed bandwidth of the references


def _score(x):
    """Score of a product of 1-D densities p(x) ~ exp(-x^4/4 - x^2/2): s = -x^3 - x, ds/dx = -3x^2 - 1."""
    return -x * x * x - x


def _hess(x):
    return -3.0 * x * x - 1.0


def reference_steps(x, steps, lr, beta, decay, damping, seed, correction=True):
    """The update of the module docstring, coordinate by coordinate (float64)."""
    n, d = x.shape
    v = np.zeros((n, d))
    for t in range(steps):
        s = -x**3 - x
        phi = svgd_direction(x, s, H)
        xi = normal_noise(seed, t, x)
        new = x.copy()
        for i in range(n):
            for a in range(d):
                c = 1.0 if t == 0 else 1.0 - decay
                v[i, a] = s[i, a] ** 2 if t == 0 else decay * v[i, a] + (1 - decay) * s[i, a] ** 2
                root = math.sqrt(v[i, a])
                g = 1.0 / (damping + root)
                gamma = -c * s[i, a] * (-3 * x[i, a] ** 2 - 1) / (root * (damping + root) ** 2) if correction else 0.0
                new[i, a] += (lr * (g * (s[i, a] / beta + phi[i, a]) + gamma / beta)
                              + math.sqrt(2 * lr / beta) * math.sqrt(g) * xi[i, a])
        x = new
    return x


@pytest.mark.parametrize("correction", [True, False])
def test_steps_match_brute_force(xp_backend, rng, correction):
    x = rng.normal(size=(6, 2))
    sampler = ps.pspos(_score, 0.01, beta=2.0, decay=0.9, damping=0.1, bandwidth=H, correction=correction,
                       hessian_diagonal_fn=_hess)
    state = sampler.init(xp_backend.asarray(x), seed=5)
    for _ in range(3):
        state, info = sampler.step(state)
    expected = reference_steps(xp_backend.cast_np(x), 3, 0.01, 2.0, 0.9, 0.1, 5, correction)
    assert xp_backend.is_native(state.particles)
    xp_backend.assert_close(state.particles, expected, rtol=1e-3 if xp_backend.dtype_name == "float32" else None)
    assert state.step_state.count == 3


def test_hessian_from_log_prob_by_autodiff(rng):
    torch = pytest.importorskip("torch")
    x = rng.normal(size=(5, 2))
    sampler = ps.pspos(log_prob=lambda z: -(z**4).sum() / 4 - (z**2).sum() / 2, step_size=0.01, beta=2.0, decay=0.9,
                       damping=0.1, bandwidth=H)
    state = sampler.init(torch.as_tensor(x), seed=5)
    for _ in range(2):
        state, _ = sampler.step(state)
    np.testing.assert_allclose(state.particles.numpy(), reference_steps(x, 2, 0.01, 2.0, 0.9, 0.1, 5),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_correction_keeps_the_target_known_answer():
    """Standard normal in 1-D, decay 0 (G = 1/(lambda + |x|) with lambda = 1, the strongest position
    dependence), Langevin-dominated (beta = 0.1). With Gamma the stationary second moment is 1;
    without it the chain targets p / G, whose second moment is
    E[x^2 (1 + |x|)] / E[1 + |x|] = (1 + 2 sqrt(2/pi)) / (1 + sqrt(2/pi)) = 1.44. Time average over
    the last 1,000 of 1,500 steps, 200 particles: the per-step spread is about 0.09 and the
    autocorrelation time tens of steps, so the standard error is a few hundredths; the tolerance
    0.15 is several of them, and the two answers are 0.44 apart."""
    x0 = np.random.default_rng(0).normal(size=(200, 1))
    out = {}
    for correction in (True, False):
        sampler = ps.pspos(lambda x: -x, 2e-3, beta=0.1, decay=0.0, damping=1.0, correction=correction,
                           hessian_diagonal_fn=lambda x: -np.ones_like(x))
        state = sampler.init(x0, seed=1)
        variances = []
        for t in range(1500):
            state, _ = sampler.step(state)
            if t >= 500:
                variances.append(float(np.mean(state.particles**2)))
        out[correction] = np.mean(variances)
    assert abs(out[True] - 1.0) < 0.15, out
    assert abs(out[False] - 1.44) < 0.15, out


def test_bad_arguments():
    with pytest.raises(ValueError, match="needs the Hessian diagonal"):
        ps.pspos(_score, 0.01, correction=True)
    assert not ps.pspos(_score, 0.01).corrected and ps.pspos(_score, 0.01, hessian_diagonal_fn=_hess).corrected
    with pytest.raises(ValueError, match="adaptive rule 'adam'"):
        ps.pspos(_score, ps.adam(0.01), correction=False)
    with pytest.raises(ValueError, match=r"decay in \[0, 1\)"):
        ps.pspos(_score, 0.01, decay=1.0, correction=False)
    with pytest.raises(ValueError, match="damping > 0"):
        ps.pspos(_score, 0.01, damping=0.0, correction=False)
    with pytest.raises(TypeError, match="correction as a bool or None"):
        ps.pspos(_score, 0.01, correction="yes")
    s = ps.pspos(_score, 0.01, hessian_diagonal_fn=lambda x: x[:, :1])
    with pytest.raises(TypeError, match="hessian_diagonal_fn returned"):
        s.step(s.init(np.ones((3, 2)) * np.arange(3)[:, None]))
    with pytest.raises(TypeError, match="needs automatic differentiation"):
        s2 = ps.pspos(log_prob=lambda z: -(z**2).sum(), step_size=0.01)
        s2.step(s2.init(np.ones((3, 2)) * np.arange(3)[:, None]))


def test_checkpoint_resumes_exactly(tmp_path, rng):
    x = rng.normal(size=(6, 2))
    sampler = ps.pspos(_score, 0.01, beta=2.0, decay=0.9, damping=0.1, hessian_diagonal_fn=_hess)
    state = sampler.init(x, seed=3)
    for _ in range(2):
        state, _ = sampler.step(state)
    ps.save_state(tmp_path / "ck.npz", state, sampler)
    resumed = ps.load_state(tmp_path / "ck.npz", sampler)
    for _ in range(2):
        state, _ = sampler.step(state)
        resumed, _ = sampler.step(resumed)
    np.testing.assert_array_equal(resumed.particles, state.particles)


def test_projected_svgd_state_is_saved_and_resumes(tmp_path, rng):
    """Nested step states (projected SVGD's basis) are stored too (tests/unit/test_checkpoint_nested.py)."""
    sampler = ps.projected_svgd(_score, 0.01, rank=1)
    state, _ = sampler.step(sampler.init(rng.normal(size=(4, 2))))
    ps.save_state(tmp_path / "ck.npz", state, sampler)
    np.testing.assert_array_equal(ps.load_state(tmp_path / "ck.npz", sampler).step_state.basis, state.step_state.basis)
