"""The Bayesian-neural-network target (Liu & Wang 2016, Sec. 5.2): ``particlesampling.targets.bnn``.

Scores against central differences and torch autograd of ``log_prob``, the namespaces, the
minibatch scaling, the layout of a particle, the original initialisation, the registry and the
errors for bad input.
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np
import pytest

import particlesampling as ps
from particlesampling.targets import BayesianNeuralNetwork, BNNDiabetes

N, P, H = 37, 3, 4


def toy(n_hidden=H, n=N, p=P, seed=0, **kw) -> BayesianNeuralNetwork:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    y = np.sin(X @ rng.normal(size=p)) + 0.1 * rng.normal(size=n)
    return BayesianNeuralNetwork(X, y, n_hidden=n_hidden, **kw)


def points(t: BayesianNeuralNetwork, m=5, seed=1) -> np.ndarray:
    """Initial particles moved off the initialisation (biases away from 0, so no ReLU sits at a kink)."""
    rng = np.random.default_rng(seed)
    return t.initial_particles(m, seed=seed) + 0.3 * rng.normal(size=(m, t.dim))


def central_differences(f, x, h=1e-6):
    fd = np.empty_like(x)
    for j in range(x.shape[1]):
        e = np.zeros(x.shape[1])
        e[j] = h
        fd[:, j] = (f(x + e) - f(x - e)) / (2 * h)
    return fd


# ----------------------------------------------------------------------------- the density
def test_log_prob_is_the_model_of_liu_and_wang():
    """Gaussian likelihood, N(0, 1/λ) weights, Gamma(a0, rate b0) precisions on the log scale."""
    stats = pytest.importorskip("scipy.stats")
    t = toy(a0=1.5, b0=0.2)
    x = points(t, m=3)
    prm = t.unpack(x)
    for i in range(3):
        w1, b1, w2, b2 = prm.w1[i], prm.b1[i], prm.w2[i], prm.b2[i]
        gam, lam = math.exp(prm.log_gamma[i]), math.exp(prm.log_lambda[i])
        f = np.maximum(t.X @ w1 + b1, 0) @ w2 + b2
        loglik = stats.norm.logpdf(t.y, f, 1 / math.sqrt(gam)).sum()
        prior_w = stats.norm.logpdf(x[i, :-2], 0, 1 / math.sqrt(lam)).sum()
        gamma_prior = stats.gamma(1.5, scale=1 / 0.2)
        # densities of log γ, log λ: Gamma density times the Jacobian (γ, λ)
        prior_prec = gamma_prior.logpdf(gam) + math.log(gam) + gamma_prior.logpdf(lam) + math.log(lam)
        # the Gamma normalising constants a0 log b0 - log Γ(a0) are dropped (as in the original code)
        const = 2 * (1.5 * math.log(0.2) - math.lgamma(1.5))
        expected = loglik + prior_w + prior_prec - const
        assert t.log_prob(x)[i] == pytest.approx(expected, rel=1e-12)


def test_score_matches_central_differences():
    t = toy()
    x = points(t)
    s = t.score(x)
    fd = central_differences(t.log_prob, x)
    np.testing.assert_allclose(s, fd, rtol=0, atol=1e-6 * (1 + np.max(np.abs(s))))


def test_minibatch_score_matches_central_differences_and_scales_by_n_over_b():
    t = toy()
    x = points(t)
    Xb, yb = t.X[5:16], t.y[5:16]
    s = t.score_minibatch(x, Xb, yb)
    fd = central_differences(lambda z: t.log_prob_minibatch(z, Xb, yb), x)
    np.testing.assert_allclose(s, fd, rtol=0, atol=1e-6 * (1 + np.max(np.abs(s))))
    # the log likelihood of the batch is scaled by N / B; with all N rows it is the full posterior
    sub = BayesianNeuralNetwork(Xb, yb, n_hidden=H)  # the same model on the B rows alone (N = B)
    prior = t.log_prob_minibatch(x, Xb, yb) - (N / 11) * (sub.log_prob(x) - _log_prior(sub, x))
    np.testing.assert_allclose(prior, _log_prior(t, x), rtol=1e-10)
    np.testing.assert_array_equal(t.score_minibatch(x, t.X, t.y), t.score(x))
    np.testing.assert_array_equal(t.log_prob_minibatch(x, t.X, t.y), t.log_prob(x))


def _log_prior(t, x):
    """log p(θ) with no data: the model's prior terms alone (a zero-row likelihood)."""
    prm = t.unpack(x)
    lg, ll = prm.log_gamma, prm.log_lambda
    sq = np.sum(x[:, :-2] ** 2, axis=1)
    return ((t.a0 - 1) * lg - t.b0 * np.exp(lg) + lg + 0.5 * t.num_weights * (ll - math.log(2 * math.pi))
            - 0.5 * np.exp(ll) * sq + (t.a0 - 1) * ll - t.b0 * np.exp(ll) + ll)


@pytest.mark.parametrize("minibatch", [False, True])
def test_score_matches_torch_autograd(minibatch):
    torch = pytest.importorskip("torch")
    t = toy()
    x = torch.asarray(points(t), dtype=torch.float64).requires_grad_(True)
    Xb, yb = torch.asarray(t.X[:9]), torch.asarray(t.y[:9])
    lp = t.log_prob_minibatch(x, Xb, yb) if minibatch else t.log_prob(x)
    (g,) = torch.autograd.grad(lp.sum(), x)
    s = t.score_minibatch(x.detach(), Xb, yb) if minibatch else t.score(x.detach())
    np.testing.assert_allclose(s.numpy(), g.numpy(), rtol=1e-10, atol=1e-10 * (1 + float(g.abs().max())))


@pytest.mark.parametrize("ns", ["numpy", "torch", "array_api_strict"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_namespaces_agree_and_preserve_dtype(ns, dtype):
    mod = np if ns == "numpy" else pytest.importorskip(ns)
    t = toy()
    x64 = points(t)
    x_np = x64.astype(dtype).astype(np.float64)
    ref_lp, ref_s = t.log_prob(x_np), t.score(x_np)
    xs = mod.asarray(x64.astype(dtype))
    xp = array_api_compat.array_namespace(xs)
    lp, s = t.log_prob(xs), t.score(xs)
    pred = t.predict(xs, t.X[:6])
    for out, shape in ((lp, (x64.shape[0],)), (s, x64.shape), (pred, (x64.shape[0], 6))):
        assert array_api_compat.array_namespace(out) is xp and out.dtype == xs.dtype and tuple(out.shape) == shape
    rtol, atol = (1e-10, 1e-10) if dtype == "float64" else (1e-4, 1e-4)
    np.testing.assert_allclose(ps.to_numpy(lp), ref_lp, rtol=rtol, atol=atol * np.max(np.abs(ref_lp)))
    np.testing.assert_allclose(ps.to_numpy(s), ref_s, rtol=rtol, atol=atol * np.max(np.abs(ref_s)))


def test_torch_path_is_the_original_codes_arithmetic():
    """The UCI evidence reproduces stored runs bit for bit only if the torch score keeps the original
    code's fused kernels (baddbmm, bmm, threshold_backward) and order of operations."""
    torch = pytest.importorskip("torch")
    t = toy(n_hidden=6, n=150)
    for dtype in (torch.float32, torch.float64):
        theta = torch.asarray(points(t, m=7), dtype=dtype)
        X, y = torch.asarray(t.X[20:120], dtype=dtype), torch.asarray(t.y[20:120], dtype=dtype)
        assert torch.equal(t.score_minibatch(theta, X, y), _original_score(t, theta, X, y))


def _original_score(t, theta, X, y):
    """The score of the original experiments code, written with torch's fused kernels."""
    import torch

    p, H, M, B = t.n_features, t.n_hidden, theta.shape[0], X.shape[0]
    w1 = theta[:, : p * H].reshape(M, p, H)
    b1, w2 = theta[:, p * H : p * H + H], theta[:, p * H + H : p * H + 2 * H]
    b2, lg, ll = theta[:, -3], theta[:, -2], theta[:, -1]
    scale = t.n_data / B
    hid = torch.relu(torch.baddbmm(b1[:, None, :], X.expand(M, -1, -1), w1))
    r = torch.baddbmm(b2[:, None, None], hid, w2[:, :, None])[..., 0] - y
    gam, lam = torch.exp(lg), torch.exp(ll)
    g = r * (-scale * gam)[:, None]
    dw2 = torch.bmm(g[:, None, :], hid)[:, 0, :]
    dpre = torch.ops.aten.threshold_backward(g[:, :, None] * w2[:, None, :], hid, 0)
    dw1 = torch.bmm(X.T.expand(M, -1, -1), dpre)
    out = torch.cat([dw1.reshape(M, -1), dpre.sum(1), dw2, g.sum(1)[:, None], torch.zeros_like(theta[:, :2])], 1)
    weights = theta[:, : t.num_weights]
    out[:, : t.num_weights].sub_(lam[:, None] * weights)
    out[:, -2] = 0.5 * t.n_data - 0.5 * scale * gam * (r * r).sum(1) + t.a0 - t.b0 * gam
    out[:, -1] = 0.5 * t.num_weights - 0.5 * lam * (weights * weights).sum(1) + t.a0 - t.b0 * lam
    return out


# ----------------------------------------------------------------------------- layout and network
def test_dimension_unpack_pack_and_predict():
    t = toy()
    assert t.dim == P * H + 2 * H + 3 and t.num_weights == t.dim - 2
    x = points(t)
    prm = t.unpack(x)
    assert prm.w1.shape == (5, P, H) and prm.b1.shape == (5, H) and prm.b2.shape == (5,)
    np.testing.assert_array_equal(prm.w1[2].ravel(), x[2, : P * H])  # W1 row-major first
    np.testing.assert_array_equal(prm.log_lambda, x[:, -1])
    np.testing.assert_array_equal(t.pack(*prm), x)
    out = t.predict(x, t.X)
    for m in range(5):
        np.testing.assert_allclose(out[m], np.maximum(t.X @ prm.w1[m] + prm.b1[m], 0) @ prm.w2[m] + prm.b2[m],
                                   rtol=1e-12)


def test_original_initialisation():
    t = toy(n_hidden=50, n=300, p=8)
    th = t.original_initial_particles(200, seed=3)
    prm = t.unpack(th)
    assert float(prm.w1.std()) == pytest.approx(1 / math.sqrt(9), rel=0.05)
    assert float(prm.w2.std()) == pytest.approx(1 / math.sqrt(51), rel=0.05)
    assert np.all(prm.b1 == 0) and np.all(prm.b2 == 0)
    assert float(np.exp(prm.log_lambda).mean()) == pytest.approx(0.1, rel=0.2)  # numpy gamma(1, scale 0.1)
    # log γ = -log MSE of the initial network on all 300 (< 1000) rows
    mse = np.mean((t.predict(th, t.X) - t.y) ** 2, axis=1)
    np.testing.assert_allclose(prm.log_gamma, -np.log(mse), rtol=1e-12)
    # the original code's RandomState stream: W1 of the first particle is its first draw
    np.testing.assert_array_equal(prm.w1[0], np.random.RandomState(3).randn(8, 50) / np.sqrt(9))
    np.testing.assert_array_equal(t.original_initial_particles(3, seed=3), th[:3])
    # initial_particles: the same distribution from default_rng(seed), any namespace
    ref = t.initial_particles(4, seed=3)
    assert not np.array_equal(ref, th[:4])
    np.testing.assert_allclose(t.unpack(ref).log_gamma, -np.log(np.mean((t.predict(ref, t.X) - t.y) ** 2, 1)))
    torch = pytest.importorskip("torch")
    xt = t.original_initial_particles(3, seed=3, xp=torch, dtype=torch.float32)
    assert xt.dtype == torch.float32 and np.array_equal(xt.numpy(), th[:3].astype(np.float32))


# ----------------------------------------------------------------------------- registry
def test_registry_lists_and_builds_bnn_diabetes():
    pytest.importorskip("sklearn")
    names = dict(ps.list_targets())
    assert "bnn-diabetes" in names and "neural network" in names["bnn-diabetes"]
    t = ps.get_target("bnn_diabetes", n_hidden=5)
    assert isinstance(t, BNNDiabetes) and isinstance(t, BayesianNeuralNetwork)
    assert t.name == "bnn-diabetes" and t.dim == 10 * 5 + 2 * 5 + 3 and (t.n_data, t.n_features) == (442, 10)
    assert not t.has_exact_sampler and t.mean is None and not t.normalised
    np.testing.assert_allclose(t.X.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(t.y.std(), 1)
    assert ps.get_target("bnn-diabetes").dim == 10 * 50 + 2 * 50 + 3  # the paper's 50 hidden units
    x = t.initial_particles(3, seed=0)
    np.testing.assert_allclose(t.score(x), central_differences(t.log_prob, x, h=1e-5), rtol=0,
                               atol=1e-6 * (1 + np.max(np.abs(t.score(x)))))
    with pytest.raises(ValueError, match="unknown target 'bnn-regression'"):
        ps.get_target("bnn-regression")  # needs the user's data: build BayesianNeuralNetwork(X, y)


def test_runs_under_a_sampler():
    t = toy()
    sampler = ps.svgd(t.score, step_size=ps.adagrad_momentum(1e-2))
    state = sampler.init(t.initial_particles(8, seed=0), seed=0)
    lp0 = float(np.mean(t.log_prob(state.particles)))
    for _ in range(200):
        state, _ = sampler.step(state)
    assert float(np.mean(t.log_prob(state.particles))) > lp0 + 10


# ----------------------------------------------------------------------------- errors
def test_bad_data_and_settings():
    X = np.zeros((5, 2))
    with pytest.raises(ValueError, match=r"X: expected a 2-D array of shape \(N, p\).*got shape \(5,\)"):
        BayesianNeuralNetwork(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match=r"y: expected shape \(5,\).*got shape \(5, 1\)"):
        BayesianNeuralNetwork(X, np.zeros((5, 1)))
    with pytest.raises(ValueError, match="finite"):
        BayesianNeuralNetwork(X, np.array([0, 0, np.nan, 0, 0]))
    with pytest.raises(TypeError, match="X: expected a numeric array"):
        BayesianNeuralNetwork([["a", "b"]], [0.0])
    with pytest.raises(ValueError, match="expected n_hidden as a positive int, received 0"):
        BayesianNeuralNetwork(X, np.zeros(5), n_hidden=0)
    with pytest.raises(ValueError, match="a0, b0: expected finite Gamma shape and rate > 0.*b0=-0.1"):
        BayesianNeuralNetwork(X, np.zeros(5), b0=-0.1)


def test_bad_particles_and_rows():
    t = toy()
    x = points(t)
    with pytest.raises(ValueError, match=rf"expected particles of shape \(n, {t.dim}\), got shape \(5, {t.dim - 1}\)"):
        t.score(x[:, 1:])
    with pytest.raises(TypeError, match="real floating"):
        t.log_prob(np.zeros((2, t.dim), dtype=np.int64))
    with pytest.raises(ValueError, match=rf"expected X of shape \(B, {P}\).*got shape \(4, {P + 1}\)"):
        t.score_minibatch(x, np.zeros((4, P + 1)), np.zeros(4))
    with pytest.raises(ValueError, match=r"expected y of shape \(4,\).*got shape \(3,\)"):
        t.score_minibatch(x, np.zeros((4, P)), np.zeros(3))
    with pytest.raises(ValueError, match=r"expected X of shape \(B, 3\)"):
        t.predict(x, np.zeros(3))
    with pytest.raises(ValueError, match="pack expected shapes"):
        t.pack(*t.unpack(x)[:5], np.zeros(4))
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="NumPy array or an array of the particles' namespace"):
        t.score_minibatch(x, torch.zeros(4, P, dtype=torch.float64), np.zeros(4))
    with pytest.raises(TypeError, match="X must have the particles' dtype torch.float32, got torch.float64"):
        t.score_minibatch(torch.asarray(x, dtype=torch.float32), torch.zeros(4, P, dtype=torch.float64),
                          torch.zeros(4))
    # NumPy rows (and lists) are converted to the particles' namespace and dtype
    xt = torch.asarray(x)
    np.testing.assert_allclose(t.score_minibatch(xt, t.X[:4], t.y[:4]).numpy(),
                               t.score_minibatch(x, t.X[:4], t.y[:4]), rtol=1e-12)
    got = t.score_minibatch(x.astype(np.float32), t.X[:4].tolist(), t.y[:4])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, t.score_minibatch(x, t.X[:4], t.y[:4]), rtol=1e-3, atol=1e-3)
