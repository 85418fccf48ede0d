"""Matrix-valued-kernel SVGD (Wang et al. 2019) on the inputs that broke it: a score that automatic
differentiation cannot see through, anchors whose weights underflow, an indefinite Hessian, the
``(m, n, n)`` memory of every particle an anchor, and arguments that would go unused."""

from __future__ import annotations

import numpy as np
import pytest

import particlesampling as ps
from particlesampling.samplers._matrix_kernels import mixture_stein_direction
from particlesampling.samplers._preconditioners import pointwise_preconditioner, saddle_free

WAYS_OUT = r"hvp_fn.*hessian_fn.*log_prob.*jacobian_fn"


def test_torch_score_autodiff_cannot_see_through_is_refused():
    """A score under torch.no_grad() or with .detach() has zero vector-Jacobian products: its "Hessians"
    are exactly zero, which would floor every Q at the ridge."""
    torch = pytest.importorskip("torch")
    x = torch.as_tensor(np.random.default_rng(0).normal(size=(5, 3)))

    def no_grad(z):
        with torch.no_grad():
            return -z

    for score in (no_grad, lambda z: (-z).detach()):
        fn = pointwise_preconditioner("hessian", score_fn=score)
        with pytest.raises(TypeError, match="exactly zero at every point.*" + WAYS_OUT):
            fn(x)
        sampler = ps.matrix_svgd_mixture(score, 0.1)
        with pytest.raises(TypeError, match="exactly zero"):
            sampler.step(sampler.init(x))
    # a differentiable score passes, its Hessian -I giving Q = I
    np.testing.assert_allclose(pointwise_preconditioner("hessian", score_fn=lambda z: -z)(x).numpy(),
                               np.broadcast_to(np.eye(3), (5, 3, 3)), atol=1e-12)


def test_jax_score_with_stop_gradient_is_refused():
    jax = pytest.importorskip("jax")
    x = jax.numpy.asarray(np.random.default_rng(0).normal(size=(4, 2)), dtype=jax.numpy.float32)
    fn = pointwise_preconditioner("hessian", score_fn=lambda z: -jax.lax.stop_gradient(z))
    with pytest.raises(TypeError, match="exactly zero at every point.*" + WAYS_OUT):
        fn(x)


def _underflow_case(dtype):
    """Six particles about 1e-3 apart in d = 20, each an anchor: anchor 0 with Q = 1e-3 I, the others
    Q = 1e4 I. Anchor 0's log-weight is about (20/2) log(1e-7) = -161 below the others' at every
    particle: its weight underflows to 0 in float32 (smallest subnormal e^-103)."""
    rng = np.random.default_rng(3)
    d, n = 20, 6
    x = 1e-3 * rng.normal(size=(n, d))
    q = np.stack([1e-3 * np.eye(d)] + [1e4 * np.eye(d)] * (n - 1))
    s = -x
    return [a.astype(dtype) for a in (x, s, x, q)]


def test_anchor_whose_weight_underflows_everywhere_contributes_zero():
    x32, s32, z32, q32 = _underflow_case(np.float32)
    x64, s64, z64, q64 = _underflow_case(np.float64)
    phi64, _ = mixture_stein_direction(x64, s64, z64, q64)
    # in float64 anchor 0's weights (about e^-161) are representable: its contribution is below 1e-60
    phi64_without, _ = mixture_stein_direction(x64, s64, z64[1:], q64[1:])
    assert np.all(np.isfinite(phi64))
    phi32, _ = mixture_stein_direction(x32, s32, z32, q32)
    assert np.all(np.isfinite(phi32))
    scale = np.abs(phi64).max()
    # float32 against float64: the entries of Q (1e4) times differences of 1e-3 cost about 1e-3 relative
    np.testing.assert_allclose(phi32, phi64, atol=1e-2 * scale)
    np.testing.assert_allclose(phi64, phi64_without, rtol=1e-12, atol=1e-12 * scale)


def test_saddle_free_absolute_eigenvalues_and_relative_floor():
    rot = np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
    q = np.stack([rot @ np.diag([-3.0, 1e-6]) @ rot.T, np.diag([2.0, 0.5])])
    want = np.stack([rot @ np.diag([3.0, 0.03]) @ rot.T, np.diag([2.0, 0.5])])  # floor 1e-2 * 3
    np.testing.assert_allclose(saddle_free(q), want, rtol=1e-12, atol=1e-14)
    # positive definite with condition number below 100 over the stack: unchanged
    pd = np.stack([np.diag([4.0, 0.1]), np.diag([1.0, 2.0])])
    np.testing.assert_allclose(saddle_free(pd), pd, rtol=1e-12)


def _mixture1d():
    """log p of 1/3 N(-2, 1) + 2/3 N(2, 1), its score and its Hessian, NumPy, (n, 1)."""
    w, mu = np.array([1.0, 2.0]) / 3.0, np.array([-2.0, 2.0])

    def resp(z):
        a = np.log(w) - 0.5 * (z - mu) ** 2  # (n, 2)
        a = np.exp(a - a.max(axis=1, keepdims=True))
        return a / a.sum(axis=1, keepdims=True)

    def score(z):
        return np.sum(resp(z) * (mu - z), axis=1, keepdims=True)

    def hessian(z):  # -1 + Var_resp(mu - z) = -1 + Var_resp(mu)
        r = resp(z)
        m1 = np.sum(r * mu, axis=1)
        var = np.sum(r * mu ** 2, axis=1) - m1 ** 2
        return (-1.0 + var)[:, None, None]

    return score, hessian


def test_mixture_between_the_modes_takes_a_newton_sized_step():
    """Particles in [-1, 1], between the modes of 1/3 N(-2, 1) + 2/3 N(2, 1), where grad^2 log p is
    positive (up to 3, at 0) or near 0. With |H| floored at 1e-2 of the largest the step 0.1 moves no
    particle further than 0.1 |s| / (1e-2 * 3) * (sum of weights <= 1) < 10 |s| ~ 20, and in fact, the
    local curvature being about 3, by less than 1; the absolute ridge alone (Q^-1 = 1000) moved them by
    hundreds."""
    score, hessian = _mixture1d()
    x = np.linspace(-1.0, 1.0, 40)[:, None]
    sampler = ps.matrix_svgd_mixture(score, 0.1, hessian_fn=hessian, anchors=10)
    new, info = sampler.step(sampler.init(x))
    assert bool(info.finite)
    assert np.abs(new.particles - x).max() < 1.0


def test_hessian_preconditioner_on_mixture1d_does_not_diverge():
    """The reviewer's setting scaled down: mixture1d's initial particles (about -10), 100 particles,
    20 anchors, step 0.1, 150 steps. The particles stay within the target's bulk (|x| < 8: the modes
    at +-2 with unit spread and the start at -10 +- 3); the absolute ridge alone sent them past 1e10."""
    score, hessian = _mixture1d()
    x = ps.get_target("mixture1d").initial_particles(100, 0)
    sampler = ps.matrix_svgd_mixture(score, 0.1, hessian_fn=hessian, anchors=20)
    state, _ = ps.run_sampler(sampler, sampler.init(np.asarray(x, dtype=np.float64)), 150, trace_every=150)
    assert np.all(np.isfinite(state.particles))
    assert np.abs(state.particles).max() < 14.0


def test_gauss_newton_is_used_as_it_stands():
    """A Gauss-Newton matrix of condition number 1e4 is not floored relative to its largest eigenvalue."""
    jac = np.broadcast_to(np.diag([100.0, 1.0]), (3, 2, 2)).copy()
    q = pointwise_preconditioner("gauss_newton", jacobian_fn=lambda z: jac)(np.zeros((3, 2)))
    np.testing.assert_allclose(q, np.broadcast_to(np.diag([1e4, 1.0]), (3, 2, 2)))


def test_every_particle_an_anchor_is_checked_against_the_memory_budget():
    n = 400  # about 5 m n^2 float64 = 2.6 GB with m = n: over any automatic budget (at most 1 GiB)
    x = np.linspace(-1.0, 1.0, n)[:, None]
    hess = lambda z: -np.ones((z.shape[0], 1, 1))  # noqa: E731
    sampler = ps.matrix_svgd_mixture(lambda z: -z, 0.1, hessian_fn=hess, memory_budget="auto")
    with pytest.raises(ValueError, match=r"400 anchors over 400 particles.*memory budget.*anchors=m with m <= \d+"):
        sampler.step(sampler.init(x))
    small = ps.matrix_svgd_mixture(lambda z: -z, 0.1, hessian_fn=hess, memory_budget=5 * 8 * 50 * 50 * 10)
    y = x[::8]  # 50 particles: 10 anchors fit exactly, 50 do not
    with pytest.raises(ValueError, match=r"m <= 10\b"):
        small.step(small.init(y))
    fits = ps.matrix_svgd_mixture(lambda z: -z, 0.1, hessian_fn=hess, anchors=10, memory_budget=5 * 8 * 50 * 50 * 10)
    assert bool(fits.step(fits.init(y))[1].finite)
    with pytest.raises(ValueError, match="memory_budget"):
        ps.matrix_svgd_mixture(lambda z: -z, 0.1, hessian_fn=hess, memory_budget=-1)


def test_arguments_a_preconditioner_does_not_use_are_refused():
    hess = lambda z: -np.ones((z.shape[0], 2, 2))  # noqa: E731
    hvp = lambda z, v: -v  # noqa: E731
    jac = lambda z: np.ones((z.shape[0], 1, 2))  # noqa: E731
    with pytest.raises(TypeError, match="expected jacobian_fn to be callable, received int"):
        ps.matrix_svgd(lambda z: -z, 0.1, preconditioner="fisher", jacobian_fn=5)
    for name, fn in (("hessian_fn", hess), ("hvp_fn", hvp), ("jacobian_fn", jac)):
        with pytest.raises(ValueError, match=f"{name} received with the preconditioner 'fisher'"):
            ps.matrix_svgd(lambda z: -z, 0.1, **{name: fn})
        with pytest.raises(ValueError, match=f"{name} received with the preconditioner a fixed"):
            ps.matrix_svgd(lambda z: -z, 0.1, preconditioner=np.eye(2), **{name: fn})
    for build in (ps.matrix_svgd, ps.matrix_svgd_mixture):
        for name, fn in (("hessian_fn", hess), ("hvp_fn", hvp)):
            with pytest.raises(ValueError, match=f"{name} give the 'hessian' preconditioner; received with "
                                                 "'gauss_newton'"):
                build(lambda z: -z, 0.1, preconditioner="gauss_newton", jacobian_fn=jac, **{name: fn})
        with pytest.raises(ValueError, match="one of hessian_fn and hvp_fn.*received both"):
            build(lambda z: -z, 0.1, preconditioner="hessian", hessian_fn=hess, hvp_fn=hvp)
    with pytest.raises(ValueError, match="'hessian' preconditioner needs hessian_fn"):
        ps.matrix_svgd(lambda z: -z, 0.1, preconditioner="hessian")
