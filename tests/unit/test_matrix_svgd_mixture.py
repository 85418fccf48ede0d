"""Matrix-valued-kernel SVGD with a mixture of point-wise preconditioners (Wang et al. 2019):
brute force over particle pairs and anchors on every backend and JAX, the kernel's divergence by
finite differences, the preconditioners from Hessian-vector products, Jacobians and autodiff against
explicit Hessians, the sampler's anchors, a known answer, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

import particlesampling as ps
from particlesampling.samplers._matrix_kernels import mixture_stein_direction, preconditioned_stein_direction
from particlesampling.samplers._preconditioners import pointwise_preconditioner


def _weights(x, zs, qs):
    """w[l] = N(x; z_l, Q_l^-1) / sum_l' N(x; z_l', Q_l'^-1) and grad log w_l(x), one point x."""
    d = x.shape[0]
    dens = np.array([math.sqrt(np.linalg.det(q)) / (2 * math.pi) ** (d / 2) * math.exp(-0.5 * (x - z) @ q @ (x - z))
                     for z, q in zip(zs, qs)])
    w = dens / dens.sum()
    grads = [-q @ (x - z) for z, q in zip(zs, qs)]
    mean = sum(wl * g for wl, g in zip(w, grads))
    return w, [g - mean for g in grads]


def brute_mixture_phi(x, s, zs, qs, h=None, normalise=True):
    """phi_i = sum_l w_l(x_i) (1/n) sum_j (w_l(x_j) / c_l) Q_l^-1 [k_l(x_i, x_j) (s_j + grad log w_l(x_j))
    + grad_{x_j} k_l(x_j, x_i)], k_l = exp(-(x - y)^T Q_l (x - y) / h_l), c_l = mean_j w_l(x_j) (or 1);
    h None: per anchor, Liu & Wang's median of the n^2 values (x_i - x_j)^T Q_l (x_i - x_j) over log(n + 1)."""
    n, d = x.shape
    m = len(zs)
    w = np.zeros((m, n))
    glw = np.zeros((m, n, d))
    for j in range(n):
        wj, gj = _weights(x[j], zs, qs)
        for l in range(m):
            w[l, j], glw[l, j] = wj[l], gj[l]
    phi = np.zeros((n, d))
    for l in range(m):
        q = qs[l]
        quad = [[float((x[i] - x[j]) @ q @ (x[i] - x[j])) for j in range(n)] for i in range(n)]
        hl = float(np.median(np.array(quad))) / math.log(n + 1) if h is None else h
        c = w[l].mean() if normalise else 1.0
        qinv = np.linalg.inv(q)
        for i in range(n):
            inner = np.zeros(d)
            for j in range(n):
                k = math.exp(-quad[i][j] / hl)
                grad_k = -2.0 / hl * k * (q @ (x[j] - x[i]))
                inner += w[l, j] / c * (qinv @ (k * (s[j] + glw[l, j]) + grad_k))
            phi[i] += w[l, i] * inner / n
    return phi


def _spd(rng, d, scale=1.0):
    a = rng.normal(size=(d, d))
    return scale * (a @ a.T + 0.5 * np.eye(d))


def _data(rng, n=6, d=2, m=4):
    x = rng.normal(size=(n, d))
    s = -1.5 * x + 0.3 * rng.normal(size=(n, d))
    zs = x[rng.permutation(n)[:m]]
    qs = np.stack([_spd(rng, d, 0.8) for _ in range(m)])
    return x, s, zs, qs


@pytest.mark.parametrize("bandwidth,normalise", [(1.3, True), (None, True), (None, False)])
def test_direction_matches_brute_force(xp_backend, rng, bandwidth, normalise):
    x, s, zs, qs = _data(rng)
    args = [xp_backend.asarray(a) for a in (x, s, zs, qs)]
    ref = brute_mixture_phi(*(xp_backend.cast_np(a) for a in (x, s, zs, qs)), h=bandwidth, normalise=normalise)
    phi, info = mixture_stein_direction(*args, bandwidth=bandwidth, ridge=1e-10, normalise=normalise)
    assert xp_backend.is_native(phi)
    xp_backend.assert_close(phi, ref, rtol=3e-3 if xp_backend.dtype_name == "float32" else 1e-9)


def test_direction_matches_brute_force_jax(rng):
    jax = pytest.importorskip("jax")
    x, s, zs, qs = _data(rng, n=5, d=3, m=5)
    ref = brute_mixture_phi(x, s, zs, qs, h=None)
    with jax.enable_x64(True):
        args = [jax.numpy.asarray(a) for a in (x, s, zs, qs)]

        def fn(*a):
            return mixture_stein_direction(*a, ridge=1e-10)[0]

        np.testing.assert_allclose(np.asarray(fn(*args)), ref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(jax.jit(fn)(*args)), ref, rtol=1e-9, atol=1e-12)


def test_divergence_of_the_matrix_kernel_by_finite_differences(rng):
    """The Stein direction E[K(x, x') s(x') + div_{x'} K(x, x')] with K(x, x') = sum_l w_l(x) w_l(x')
    Q_l^-1 k_l(x, x') / c_l built as a function and its divergence taken by central differences: no
    product rule written out, so the theorem's form of the direction is checked independently."""
    x, s, zs, qs = _data(rng, n=5, d=2, m=3)
    n, d = x.shape
    h = 1.1
    c = np.array([np.mean([_weights(x[j], zs, qs)[0][l] for j in range(n)]) for l in range(len(zs))])

    def kmat(a, b):
        wa, wb = _weights(a, zs, qs)[0], _weights(b, zs, qs)[0]
        return sum(wa[l] * wb[l] / c[l] * np.linalg.inv(q) * math.exp(-(a - b) @ q @ (a - b) / h)
                   for l, q in enumerate(qs))

    eps = 1e-5
    phi = np.zeros((n, d))
    for i in range(n):
        for j in range(n):
            div = np.zeros(d)
            for b in range(d):
                e = np.zeros(d)
                e[b] = eps
                div += (kmat(x[i], x[j] + e)[:, b] - kmat(x[i], x[j] - e)[:, b]) / (2 * eps)
            phi[i] += (kmat(x[i], x[j]) @ s[j] + div) / n
    np.testing.assert_allclose(mixture_stein_direction(x, s, zs, qs, bandwidth=h, ridge=1e-10)[0], phi, rtol=1e-6,
                               atol=1e-9)


def test_one_anchor_is_the_constant_preconditioner(rng):
    x, s, _, _ = _data(rng, n=7, d=3)
    q = _spd(rng, 3)
    for normalise in (True, False):
        np.testing.assert_allclose(mixture_stein_direction(x, s, x[2:3], q[None], ridge=1e-10, normalise=normalise)[0],
                                   preconditioned_stein_direction(x, s, q, ridge=1e-10)[0], rtol=1e-10, atol=1e-13)


def test_one_particle_is_the_preconditioned_score():
    x, s = np.array([[0.2, -0.4]]), np.array([[1.0, 2.0]])
    q = np.array([[4.0, 1.0], [1.0, 2.0]])
    for normalise in (True, False):
        np.testing.assert_allclose(mixture_stein_direction(x, s, x, q[None], ridge=1e-9, normalise=normalise)[0],
                                   s @ np.linalg.inv(q), rtol=1e-12, atol=1e-14)


# a non-Gaussian log-density with a position-dependent Hessian: log p(x) = -|x|^4 / 4 - x^T A x / 2 + b . sin(x)
A = np.array([[2.0, 0.3, 0.0], [0.3, 1.0, -0.2], [0.0, -0.2, 0.5]])
B = np.array([0.5, -0.3, 0.2])


def _score_np(x):
    return -np.sum(x * x, axis=1, keepdims=True) * x - x @ A + B * np.cos(x)


def _hessian_np(x):
    n, d = x.shape
    r2 = np.sum(x * x, axis=1)
    return np.stack([-r2[i] * np.eye(d) - 2.0 * np.outer(x[i], x[i]) - A - np.diag(B * np.sin(x[i]))
                     for i in range(n)])


def test_preconditioner_from_user_hvp_matches_the_hessian(rng):
    x = rng.normal(size=(5, 3))

    def hvp(points, v):
        return np.einsum("nab,nb->na", _hessian_np(points), v)

    got = pointwise_preconditioner("hessian", hvp_fn=hvp)(x)
    np.testing.assert_allclose(got, -_hessian_np(x), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("lib", ["torch", "jax"])
@pytest.mark.parametrize("source", ["score", "log_prob"])
def test_preconditioner_by_autodiff_matches_the_hessian(rng, lib, source):
    x = rng.normal(size=(5, 3))
    if lib == "torch":
        torch = pytest.importorskip("torch")
        a, b = torch.as_tensor(A), torch.as_tensor(B)
        to, back, m = (lambda v: torch.as_tensor(v)), (lambda t: t.detach().numpy()), torch
        ctx = _nullcontext()
    else:
        jax = pytest.importorskip("jax")
        m = jax.numpy
        ctx = jax.enable_x64(True)
        to, back = (lambda v: m.asarray(v)), np.asarray
    with ctx:
        if lib == "jax":
            a, b = m.asarray(A), m.asarray(B)

        def score(z):
            return -m.sum(z * z, axis=1, keepdims=True) * z - z @ a + b * m.cos(z)

        def log_prob(z):
            return -m.sum(z * z) ** 2 / 4.0 - z @ a @ z / 2.0 + m.sum(b * m.sin(z))

        fn = pointwise_preconditioner("hessian", score_fn=score) if source == "score" else \
            pointwise_preconditioner("hessian", log_prob=log_prob)
        np.testing.assert_allclose(back(fn(to(x))), -_hessian_np(x), rtol=1e-12, atol=1e-12)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_gauss_newton_from_a_jacobian(rng):
    x = rng.normal(size=(4, 2))

    def jac(points):  # residuals r(z) = (z_0^2, z_0 z_1, 2 z_1): Jacobian (m, 3, 2)
        z0, z1 = points[:, 0], points[:, 1]
        return np.stack([np.stack([2 * z0, 0 * z0], 1), np.stack([z1, z0], 1), np.stack([0 * z0, 2 + 0 * z0], 1)], 1)

    want = np.stack([jac(x)[i].T @ jac(x)[i] for i in range(4)])
    np.testing.assert_allclose(pointwise_preconditioner("gauss_newton", jacobian_fn=jac)(x), want, rtol=1e-14)


def test_numpy_without_a_hessian_says_what_is_needed():
    sampler = ps.matrix_svgd_mixture(lambda z: -z, 0.1)
    with pytest.raises(TypeError, match=r"need PyTorch or JAX particles.*pass hvp_fn.*hessian_fn.*jacobian_fn"):
        sampler.step(sampler.init(np.ones((3, 2)) * np.arange(3.0)[:, None]))
    with pytest.raises(ValueError, match="'hessian' preconditioner needs hessian_fn.*hvp_fn.*log_prob"):
        ps.matrix_svgd(lambda z: -z, 0.1, preconditioner="hessian")  # at construction


def _hess_fn(x):
    return _hessian_np(x)


@pytest.mark.parametrize("anchors", [None, 3])
def test_sampler_step_is_the_brute_force_update(rng, anchors):
    x = 0.7 * rng.normal(size=(6, 3))
    sampler = ps.matrix_svgd_mixture(_score_np, 0.1, hessian_fn=_hess_fn, anchors=anchors, ridge=1e-10)
    state = sampler.init(x, seed=5)
    new, info = sampler.step(state)
    idx = np.arange(6) if anchors is None else ps.random.permutation(5, 0, 6)[:anchors]
    assert bool(info.finite)
    zs = x[idx]
    qs = -_hessian_np(zs)
    assert np.all(np.linalg.eigvalsh(qs) > 0)
    np.testing.assert_allclose(new.particles, x + 0.1 * brute_mixture_phi(x, _score_np(x), zs, qs), rtol=1e-9,
                               atol=1e-13)
    # the anchors of the next step are drawn afresh
    if anchors is not None:
        assert not np.array_equal(ps.random.permutation(5, 1, 6)[:anchors], idx)


def test_average_weight_and_gauss_newton_in_the_sampler(rng):
    x = rng.normal(size=(5, 2))
    prec = np.array([[3.0, 0.4], [0.4, 0.5]])
    root = np.linalg.cholesky(prec)  # -log p = |L^T x|^2 / 2: residuals L^T x, Jacobian L^T

    def score(z):
        return -z @ prec

    gn = ps.matrix_svgd_mixture(score, 0.1, preconditioner="gauss_newton", ridge=1e-10,
                                jacobian_fn=lambda z: np.broadcast_to(root.T, (z.shape[0], 2, 2)).copy())
    hs = ps.matrix_svgd_mixture(score, 0.1, ridge=1e-10, average_weight=0.5,
                                hessian_fn=lambda z: np.broadcast_to(-prec, (z.shape[0], 2, 2)).copy())
    want = x + 0.1 * brute_mixture_phi(x, score(x), x, np.broadcast_to(prec, (5, 2, 2)))
    for sampler in (gn, hs):  # constant Q: averaging changes nothing
        np.testing.assert_allclose(sampler.step(sampler.init(x))[0].particles, want, rtol=1e-10)
    varying = ps.matrix_svgd_mixture(_score_np, 0.1, hessian_fn=_hess_fn, average_weight=0.25, ridge=1e-10)
    y = 0.7 * rng.normal(size=(5, 3))
    q = -_hessian_np(y)
    q = 0.75 * q + 0.25 * q.mean(axis=0)
    np.testing.assert_allclose(varying.step(varying.init(y))[0].particles,
                               y + 0.1 * brute_mixture_phi(y, _score_np(y), y, q), rtol=1e-9, atol=1e-13)


def test_torch_sampler_from_log_prob(rng):
    torch = pytest.importorskip("torch")
    x = 0.7 * rng.normal(size=(5, 3))
    a, b = torch.as_tensor(A), torch.as_tensor(B)
    sampler = ps.matrix_svgd_mixture(log_prob=lambda z: -torch.sum(z * z) ** 2 / 4 - z @ a @ z / 2
                                     + torch.sum(b * torch.sin(z)), step_size=0.1, ridge=1e-10)
    new, _ = sampler.step(sampler.init(torch.as_tensor(x)))
    np.testing.assert_allclose(new.particles.numpy(), x + 0.1 * brute_mixture_phi(x, _score_np(x), x, -_hessian_np(x)),
                               rtol=1e-9, atol=1e-13)


def test_bad_arguments():
    with pytest.raises(ValueError, match="preconditioner as one of"):
        ps.matrix_svgd_mixture(lambda z: -z, 0.1, preconditioner="fisher")
    with pytest.raises(ValueError, match="needs jacobian_fn"):
        ps.matrix_svgd_mixture(lambda z: -z, 0.1, preconditioner="gauss_newton")
    with pytest.raises(ValueError, match="jacobian_fn gives the 'gauss_newton'"):
        ps.matrix_svgd_mixture(lambda z: -z, 0.1, jacobian_fn=lambda z: z)
    with pytest.raises(ValueError, match="anchors as None"):
        ps.matrix_svgd_mixture(lambda z: -z, 0.1, anchors=0)
    with pytest.raises(ValueError, match=r"average_weight in \[0, 1\]"):
        ps.matrix_svgd_mixture(lambda z: -z, 0.1, average_weight=1.5)
    with pytest.raises(TypeError, match="radial kernel"):
        ps.matrix_svgd_mixture(lambda z: -z, 0.1, kernel="linear")
    with pytest.raises(TypeError, match="expected hvp_fn to be callable"):
        ps.matrix_svgd_mixture(lambda z: -z, 0.1, hvp_fn=3)
    with pytest.raises(ValueError, match=r"expected preconditioners for 2 anchors of shape \(2, 2, 2\)"):
        mixture_stein_direction(np.ones((3, 2)), np.ones((3, 2)), np.ones((2, 2)), np.ones((3, 2, 2)))
    s = ps.matrix_svgd_mixture(lambda z: -z, 0.1, hessian_fn=lambda z: z)
    with pytest.raises(TypeError, match="hessian_fn returned"):
        s.step(s.init(np.arange(6.0).reshape(3, 2)))
    s = ps.matrix_svgd_mixture(lambda z: -z, 0.1, hvp_fn=lambda z, v: v[:1])
    with pytest.raises(TypeError, match="hvp_fn returned"):
        s.step(s.init(np.arange(6.0).reshape(3, 2)))
    s = ps.matrix_svgd_mixture(lambda z: -z, 0.1, preconditioner="gauss_newton", jacobian_fn=lambda z: z)
    with pytest.raises(TypeError, match="jacobian_fn returned"):
        s.step(s.init(np.arange(6.0).reshape(3, 2)))


@pytest.mark.parametrize("preconditioner,anchors", [("hessian", None), ("gauss_newton", None), ("hessian", 10)])
def test_known_answer_ill_conditioned_gaussian(preconditioner, anchors):
    """N(0, diag(1/100, 1)), 50 particles from twice the target's spread, 60 steps each. With Q_l the
    Hessian (or the Gauss-Newton matrix of the residuals diag(10, 1) x, the same matrix) the step 0.3 is
    stable in both directions and 60 steps bring the whitened particles to the mean within 0.05 and
    each variance within 15 % of 1 (SVGD's own finite-particle fixed point with 50 particles in 2-D
    sits about 10 % low). Plain SVGD at the same step diverges along the stiff direction (5 steps
    multiply its variance by more than 10^4); at a step ten times smaller, the largest it takes, the
    same 60 steps leave the soft direction's variance above 2 (it started at 4)."""
    prec = np.diag([100.0, 1.0])
    root = np.sqrt(np.diag(prec))
    x0 = np.random.default_rng(0).normal(size=(50, 2)) * 2.0 / root

    def score(z):
        return -z @ prec

    options = dict(hessian_fn=lambda z: np.broadcast_to(-prec, (z.shape[0], 2, 2)).copy()) if preconditioner == \
        "hessian" else dict(jacobian_fn=lambda z: np.broadcast_to(np.diag(root), (z.shape[0], 2, 2)).copy())
    sampler = ps.matrix_svgd_mixture(score, 0.3, preconditioner=preconditioner, anchors=anchors, **options)
    state, _ = ps.run_sampler(sampler, sampler.init(x0), 60, trace_every=60)
    z = state.particles * root
    assert np.all(np.abs(z.mean(0)) < 0.05)
    assert np.all(np.abs(z.var(0, ddof=1) - 1.0) < 0.15)

    svgd = ps.svgd(score, 0.3)
    fast = svgd.init(x0)
    with np.errstate(all="ignore"):
        for _ in range(5):
            fast, _ = svgd.step(fast)
    assert (fast.particles[:, 0] * root[0]).var(ddof=1) > 1e4
    svgd = ps.svgd(score, 0.03)
    slow, _ = ps.run_sampler(svgd, svgd.init(x0), 60, trace_every=60)
    assert (slow.particles[:, 1] * root[1]).var(ddof=1) > 2.0


def test_cli_hessian_vector_products_by_differences_of_the_score(rng):
    """The CLI's targets have analytic scores only: its HVP by central differences matches the Hessian
    to the O(eps^(2/3)) its step is chosen for (1e-7 relative with the curvature of this target)."""
    from particlesampling.cli import _score_difference_hvp

    x = rng.normal(size=(5, 3))
    v = rng.normal(size=(5, 3))
    np.testing.assert_allclose(_score_difference_hvp(_score_np)(x, v), np.einsum("nab,nb->na", _hessian_np(x), v),
                               rtol=1e-7, atol=1e-8)


def test_permutations_of_particles_and_of_anchors(rng):
    """With position-dependent Q_l: permuting the particles (their scores with them) permutes the
    direction, and the order of the anchors (with their Q_l) does not matter."""
    x = 0.7 * rng.normal(size=(7, 3))
    s = _score_np(x)
    zs = x[[4, 1, 6]]
    qs = -_hessian_np(zs)
    phi = mixture_stein_direction(x, s, zs, qs, ridge=1e-10)[0]
    perm = rng.permutation(7)
    np.testing.assert_allclose(mixture_stein_direction(x[perm], s[perm], zs, qs, ridge=1e-10)[0], phi[perm],
                               rtol=1e-12, atol=1e-14)
    order = [2, 0, 1]
    np.testing.assert_allclose(mixture_stein_direction(x, s, zs[order], qs[order], ridge=1e-10)[0], phi,
                               rtol=1e-12, atol=1e-14)


def test_the_papers_scale_in_the_sampler(rng):
    x = 0.7 * rng.normal(size=(6, 3))
    sampler = ps.matrix_svgd_mixture(_score_np, 0.1, hessian_fn=_hess_fn, normalise=False, ridge=1e-10)
    np.testing.assert_allclose(sampler.step(sampler.init(x))[0].particles,
                               x + 0.1 * brute_mixture_phi(x, _score_np(x), x, -_hessian_np(x), normalise=False),
                               rtol=1e-9, atol=1e-13)
    with pytest.raises(TypeError, match="normalise as a bool"):
        ps.matrix_svgd_mixture(_score_np, 0.1, hessian_fn=_hess_fn, normalise=1)


def test_resumes_from_a_checkpoint_exactly(rng, tmp_path):
    """The anchors drawn per step are a function of (seed, step): a run resumed from a checkpoint
    continues as the uninterrupted one."""
    x = 0.7 * rng.normal(size=(8, 3))
    sampler = ps.matrix_svgd_mixture(_score_np, 0.05, hessian_fn=_hess_fn, anchors=3)
    state = sampler.init(x, seed=11)
    for _ in range(2):
        state, _ = sampler.step(state)
    ps.save_state(tmp_path / "c.npz", state, sampler)
    resumed = ps.load_state(tmp_path / "c.npz", sampler)
    for _ in range(2):
        state, _ = sampler.step(state)
        resumed, _ = sampler.step(resumed)
    np.testing.assert_array_equal(resumed.particles, state.particles)
