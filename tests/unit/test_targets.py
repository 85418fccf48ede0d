"""Tests of particlesampling.targets: scores, namespaces, known answers, references, errors.

Statistical checks use fixed seeds and tolerances of a stated number of standard errors (SE),
estimated from the samples themselves unless the exact SE is known.
"""

from __future__ import annotations

import importlib.resources
import math
import subprocess
import sys

import array_api_compat
import numpy as np
import pytest

from particlesampling.targets import (
    Banana,
    Gaussian,
    GaussianMixture,
    Mixture1D,
    Ring,
    Target,
    get_target,
    list_targets,
)
from particlesampling.targets.datasets import stratified_split
from particlesampling.targets.regression import log_sigmoid, sigmoid

TOY = ["gaussian", "standard-normal", "mixture1d", "mixture2d", "banana", "ring"]
DATA = ["blinreg-diabetes", "blr-breast-cancer"]
ALL = TOY + DATA
EXACT = TOY + ["blinreg-diabetes"]
NSE = 5.0  # z-score threshold of the statistical tests (two-sided p ≈ 6e-7 per check)

_CACHE: dict[str, Target] = {}


def target(name: str) -> Target:
    if name in DATA:
        pytest.importorskip("sklearn")
    if name not in _CACHE:
        _CACHE[name] = get_target(name)
    return _CACHE[name]


def eval_points(t: Target, n: int = 6) -> np.ndarray:
    """Points where the density has mass plus points from the initial distribution."""
    if t.has_exact_sampler:
        typical = t.sample(n, seed=11)
    else:
        typical = t.reference_samples[:n]
    return np.concatenate([typical, t.initial_particles(n, seed=12)], axis=0)


def host(a) -> np.ndarray:
    """float64 NumPy copy of a CPU array of any namespace (test helper)."""
    if isinstance(a, np.ndarray):
        return a.astype(np.float64)
    if hasattr(a, "numpy"):  # torch
        return a.detach().cpu().numpy().astype(np.float64)
    return np.from_dlpack(a).astype(np.float64)


def namespace_module(name: str):
    if name == "numpy":
        return np
    return pytest.importorskip(name)


# ----------------------------------------------------------------------------- registry
def test_registry_lists_all_contract_names():
    names = [n for n, _ in list_targets()]
    for required in ALL:
        assert required in names
    assert all(isinstance(d, str) and d for _, d in list_targets())


def test_get_target_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown target 'nope'.*gaussian.*ring"):
        get_target("nope")
    with pytest.raises(TypeError, match="target name"):
        get_target(3)


def test_get_target_aliases_kwargs_and_instances():
    assert isinstance(get_target("Mixture1D"), Mixture1D)
    b = get_target("banana", b=0.1, dim=3)
    assert b.dim == 3 and b.b == 0.1
    assert get_target(b) is b
    with pytest.raises(ValueError, match="keyword arguments"):
        get_target(b, b=0.2)


# ----------------------------------------------------------------------------- scores
@pytest.mark.parametrize("name", ALL)
def test_score_matches_central_differences(name):
    t = target(name)
    x = eval_points(t)
    s = t.score(x)
    h = 1e-5
    fd = np.empty_like(x)
    for j in range(t.dim):
        e = np.zeros(t.dim)
        e[j] = h
        fd[:, j] = (t.log_prob(x + e) - t.log_prob(x - e)) / (2 * h)
    scale = 1.0 + np.max(np.abs(s))
    np.testing.assert_allclose(s, fd, rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize("name", ALL)
def test_score_matches_torch_autograd(name):
    torch = pytest.importorskip("torch")
    t = target(name)
    x = torch.asarray(eval_points(t), dtype=torch.float64).requires_grad_(True)
    (g,) = torch.autograd.grad(t.log_prob(x).sum(), x)
    s = t.score(x.detach())
    np.testing.assert_allclose(s.numpy(), g.numpy(), rtol=1e-9, atol=1e-9 * (1 + float(g.abs().max())))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("ns", ["numpy", "torch", "array_api_strict"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_namespaces_agree_and_preserve_dtype(name, ns, dtype):
    mod = namespace_module(ns)
    t = target(name)
    x64 = eval_points(t)
    x_np = x64.astype(dtype).astype(np.float64)  # reference at the rounded inputs
    ref_lp, ref_s = t.log_prob(x_np), t.score(x_np)
    xs = mod.asarray(x64.astype(dtype))
    xp = array_api_compat.array_namespace(xs)
    lp, s = t.log_prob(xs), t.score(xs)
    for out, shape in ((lp, (x64.shape[0],)), (s, x64.shape)):
        assert array_api_compat.array_namespace(out) is xp
        assert out.dtype == xs.dtype
        assert array_api_compat.device(out) == array_api_compat.device(xs)
        assert tuple(out.shape) == shape
    if dtype == "float64":
        rtol, atol_lp, atol_s = 1e-10, 1e-9, 1e-9
    else:  # float32 rounding of sums of O(N) terms
        rtol, atol_lp, atol_s = 1e-4, 2e-3, 2e-3
    lp_np, s_np = host(lp), host(s)
    np.testing.assert_allclose(lp_np, ref_lp, rtol=rtol, atol=atol_lp * (1 + np.max(np.abs(ref_lp))))
    np.testing.assert_allclose(s_np, ref_s, rtol=rtol, atol=atol_s * (1 + np.max(np.abs(ref_s))))


# ----------------------------------------------------------------------------- log densities
def test_gaussian_log_prob_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    t = Gaussian()
    assert np.allclose(t.mean, [1.0, -1.0]) and np.allclose(t.cov, [[1.0, 0.9], [0.9, 2.0]])
    x = eval_points(t)
    np.testing.assert_allclose(t.log_prob(x), stats.multivariate_normal(t.mean, t.cov).logpdf(x), rtol=1e-12)
    big = Gaussian(mean=np.arange(5.0), cov=np.diag(np.arange(1.0, 6.0)) + 0.3)
    xb = big.sample(7, seed=0)
    np.testing.assert_allclose(big.log_prob(xb), stats.multivariate_normal(big.mean, big.cov).logpdf(xb), rtol=1e-12)


@pytest.mark.parametrize("name", ["mixture1d", "mixture2d"])
def test_mixture_log_prob_matches_scipy(name):
    stats = pytest.importorskip("scipy.stats")
    t = target(name)
    x = eval_points(t)
    dens = sum(w * stats.multivariate_normal(m, c).pdf(x) for w, m, c in zip(t.mode_weights, t.means, t.covs))
    np.testing.assert_allclose(t.log_prob(x), np.log(dens), rtol=1e-12)


def test_mixture1d_is_the_liu_wang_example():
    t = Mixture1D()
    np.testing.assert_allclose(t.mode_weights, [1 / 3, 2 / 3])
    np.testing.assert_allclose(t.means[:, 0], [-2.0, 2.0])
    np.testing.assert_allclose(t.mean, [2 / 3])
    np.testing.assert_allclose(t.cov, [[41 / 9]])
    x0 = t.initial_particles(4000, seed=0)
    assert abs(np.mean(x0) + 10.0) < NSE / math.sqrt(4000)
    assert abs(np.std(x0) - 1.0) < NSE * math.sqrt(0.5 / 4000)


def test_banana_log_prob_matches_transformed_gaussian():
    stats = pytest.importorskip("scipy.stats")
    for t in (Banana(), Banana(dim=4, b=0.1, sigma1=3.0)):
        x = eval_points(t)
        y = x.copy()
        y[:, 1] = x[:, 1] + t.b * x[:, 0] ** 2 - t.b * t.sigma1**2
        sd = np.ones(t.dim)
        sd[0] = t.sigma1
        np.testing.assert_allclose(t.log_prob(x), stats.norm(0, sd).logpdf(y).sum(axis=1), rtol=1e-12)
        # analytic moments from the moments of y1 ~ N(0, s^2): Var(y1^2) = 2 s^4
        assert np.allclose(t.cov[1, 1], 1 + t.b**2 * 2 * t.sigma1**4)


@pytest.mark.parametrize("name", ["gaussian", "mixture1d", "mixture2d", "banana", "ring"])
def test_normalised_densities_integrate_to_one(name):
    t = target(name)
    assert t.normalised
    if t.dim == 1:
        xs, lp = t.density_grid(num=4001)
        mass = np.trapezoid(np.exp(lp), xs)
    else:
        xs, ys, lp = t.density_grid(num=801)
        assert lp.shape == (801, 801)
        mass = np.trapezoid(np.trapezoid(np.exp(lp), xs, axis=1), ys)
    assert abs(mass - 1.0) < 2e-3


def test_density_grid_orientation_and_errors():
    t = Gaussian(mean=[3.0, -2.0], cov=[[1.0, 0.0], [0.0, 0.25]])
    xs, ys, lp = t.density_grid(num=101)
    iy, ix = np.unravel_index(np.argmax(lp), lp.shape)
    assert abs(xs[ix] - 3.0) < 0.1 and abs(ys[iy] + 2.0) < 0.05
    with pytest.raises(ValueError, match="1-D or 2-D"):
        Gaussian(mean=np.zeros(3)).density_grid()
    with pytest.raises(ValueError, match="bounds must have shape"):
        t.density_grid(bounds=[[0, 1]])


# ----------------------------------------------------------------------------- ring
@pytest.mark.parametrize("radius,width", [(2.0, 0.3), (0.5, 0.5), (0.0, 1.0)])
def test_ring_closed_form_against_quadrature(radius, width):
    t = Ring(radius=radius, width=width)
    rho = np.linspace(0.0, radius + 14 * width, 200001)
    f = np.exp(-((rho - radius) ** 2) / (2 * width**2))
    z = 2 * np.pi * np.trapezoid(rho * f, rho)
    ers2 = np.trapezoid(rho**3 * f, rho) / np.trapezoid(rho * f, rho)
    assert t.log_prob(np.array([[radius, 0.0]]))[0] == pytest.approx(-math.log(z), rel=1e-9)
    np.testing.assert_allclose(t.cov, 0.5 * ers2 * np.eye(2), rtol=1e-9)
    if radius == 0.0:  # Gaussian N(0, width^2 I)
        np.testing.assert_allclose(t.cov, width**2 * np.eye(2), rtol=1e-12)


@pytest.mark.parametrize("radius,width", [(2.0, 0.3), (0.5, 0.5)])
def test_ring_radius_sampler_matches_cdf(radius, width):
    t = Ring(radius=radius, width=width)
    n = 20000
    r = np.sort(np.linalg.norm(t.sample(n, seed=3), axis=1))
    grid = np.linspace(0.0, radius + 12 * width, 100001)
    dens = grid * np.exp(-((grid - radius) ** 2) / (2 * width**2))
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]
    f = np.interp(r, grid, cdf)
    ks = max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n))
    assert ks < 1.95 / math.sqrt(n)  # Kolmogorov-Smirnov critical value at level 0.001


def test_ring_score_at_origin_is_zero():
    t = Ring()
    np.testing.assert_array_equal(t.score(np.zeros((1, 2))), np.zeros((1, 2)))


# ----------------------------------------------------------------------------- exact samples
def _moment_checks(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> None:
    n = x.shape[0]
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(np.mean(x, axis=0) - mean) < NSE * se_mean)
    xc = x - mean  # centred at the true mean: unbiased for cov
    prods = xc[:, :, None] * xc[:, None, :]
    se_cov = np.std(prods, axis=0) / math.sqrt(n)
    assert np.all(np.abs(np.mean(prods, axis=0) - cov) < NSE * se_cov)


@pytest.mark.parametrize("name", EXACT)
def test_exact_samples_match_mean_and_cov(name):
    t = target(name)
    x = t.sample(40000, seed=5)
    assert x.shape == (40000, t.dim) and x.dtype == np.float64
    _moment_checks(x, t.mean, t.cov)


@pytest.mark.parametrize("name", EXACT)
def test_exact_samples_satisfy_stein_identities(name):
    """E[∇log p] = 0 and E[∇log p (x - m)ᵀ] = -I tie the sampler to the score/log_prob."""
    t = target(name)
    n = 40000
    x = t.sample(n, seed=6)
    s = t.score(x)
    assert np.all(np.abs(np.mean(s, axis=0)) < NSE * np.std(s, axis=0) / math.sqrt(n))
    prods = s[:, :, None] * (x - t.mean)[:, None, :]
    se = np.std(prods, axis=0) / math.sqrt(n)
    assert np.all(np.abs(np.mean(prods, axis=0) + np.eye(t.dim)) < NSE * se + 1e-12)


def test_sample_is_reproducible_and_checks_arguments():
    t = target("mixture2d")
    np.testing.assert_array_equal(t.sample(10, seed=1), t.sample(10, seed=1))
    assert not np.array_equal(t.sample(10, seed=1), t.sample(10, seed=2))
    with pytest.raises(ValueError, match="positive int"):
        t.sample(0, seed=1)
    with pytest.raises(ValueError, match="non-negative"):
        t.sample(3, seed=-1)
    with pytest.raises(TypeError, match="positive int"):
        t.sample(2.5, seed=1)


# ----------------------------------------------------------------------------- mixtures
def test_mode_fractions_of_counts_assignments():
    t = target("mixture2d")
    pts = np.concatenate([np.repeat(t.means[:1], 3, axis=0), t.means[1:2], np.repeat(t.means[4:], 4, axis=0)])
    np.testing.assert_allclose(t.mode_fractions_of(pts), [3 / 8, 1 / 8, 0, 0, 4 / 8])
    torch = pytest.importorskip("torch")
    np.testing.assert_allclose(t.mode_fractions_of(torch.asarray(pts, dtype=torch.float32)), [3 / 8, 1 / 8, 0, 0, 4 / 8])


def test_mixture1d_mode_fractions_of_exact_samples():
    t = Mixture1D()
    n = 400000  # SE 7.5e-4: separates the responsibility rule from the likelihood rule by 8 SE
    got = t.mode_fractions_of(t.sample(n, seed=8))
    # highest-responsibility boundary x* solves w1 φ(x+2) = w2 φ(x-2): x* = log(w1/w2)/4
    xstar = math.log(0.5) / 4
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    left = (1 / 3) * phi(xstar + 2) + (2 / 3) * phi(xstar - 2)
    assert abs(got[0] - left) < NSE * math.sqrt(left * (1 - left) / n)
    np.testing.assert_allclose(t.mode_weights, [1 / 3, 2 / 3])


def test_mixture2d_mode_fractions_of_exact_samples():
    stats = pytest.importorskip("scipy.stats")
    t = target("mixture2d")
    assert np.all(np.diff(t.mode_weights) < 0) and t.mode_weights.shape[0] == 5
    # expected assignment fractions by quadrature with scipy's densities (independent code)
    g = np.linspace(-9.0, 9.0, 721)
    gx, gy = np.meshgrid(g, g)
    pts = np.stack([gx.ravel(), gy.ravel()], axis=1)
    comp = np.stack([w * stats.multivariate_normal(m, c).pdf(pts) for w, m, c in zip(t.mode_weights, t.means, t.covs)])
    lab = np.argmax(comp, axis=0)
    cell = (g[1] - g[0]) ** 2
    expected = np.array([np.sum(comp.sum(axis=0)[lab == k]) * cell for k in range(5)])
    assert np.max(np.abs(expected - t.mode_weights)) < 0.01  # well separated components
    n = 40000
    got = t.mode_fractions_of(t.sample(n, seed=9))
    assert np.all(np.abs(got - expected) < NSE * np.sqrt(expected * (1 - expected) / n) + 1e-3)


def test_mixture_validation():
    with pytest.raises(ValueError, match="positive"):
        GaussianMixture([1.0, -1.0], [[0.0], [1.0]], [[[1.0]], [[1.0]]])
    with pytest.raises(ValueError, match="means"):
        GaussianMixture([1.0, 1.0], [[0.0]], [[[1.0]], [[1.0]]])
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]])


# ----------------------------------------------------------------------------- initial particles
@pytest.mark.parametrize("name", ALL)
def test_initial_particles_namespaces(name):
    t = target(name)
    ref = t.initial_particles(7, seed=4)
    assert isinstance(ref, np.ndarray) and ref.shape == (7, t.dim) and ref.dtype == np.float64
    np.testing.assert_array_equal(ref, t.initial_particles(7, seed=4))
    assert not np.array_equal(ref, t.initial_particles(7, seed=5))
    torch = pytest.importorskip("torch")
    xt = t.initial_particles(7, seed=4, xp=torch, dtype=torch.float32)
    assert isinstance(xt, torch.Tensor) and xt.dtype == torch.float32
    np.testing.assert_allclose(xt.numpy(), ref, rtol=1e-6)
    xs_mod = pytest.importorskip("array_api_strict")
    xa = t.initial_particles(7, seed=4, xp="array_api_strict", dtype="float64")
    assert array_api_compat.array_namespace(xa) is xs_mod
    np.testing.assert_array_equal(np.from_dlpack(xa), ref)


def test_initial_particles_bad_arguments():
    t = target("gaussian")
    with pytest.raises(ValueError, match="positive int"):
        t.initial_particles(0, seed=0)
    with pytest.raises(TypeError, match="real floating"):
        t.initial_particles(3, seed=0, dtype="int32")
    with pytest.raises(ValueError, match="cannot import"):
        t.initial_particles(3, seed=0, xp="no_such_array_lib")
    with pytest.raises(TypeError, match="array namespace"):
        t.initial_particles(3, seed=0, xp=42)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", TOY)
def test_bad_particle_input(name):
    t = target(name)
    with pytest.raises(ValueError, match=rf"expected particles of shape \(n, {t.dim}\), got shape \(3,\)"):
        t.log_prob(np.zeros(3))
    with pytest.raises(ValueError, match=rf"\(n, {t.dim}\).*\(4, {t.dim + 1}\)"):
        t.score(np.zeros((4, t.dim + 1)))
    with pytest.raises(TypeError, match="real floating"):
        t.score(np.zeros((4, t.dim), dtype=np.int64))
    with pytest.raises(TypeError, match="floating array"):
        t.log_prob([[0.0] * t.dim])


def test_gaussian_validation():
    with pytest.raises(ValueError, match="positive definite"):
        Gaussian(mean=[0.0, 0.0], cov=[[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="symmetric"):
        Gaussian(mean=[0.0, 0.0], cov=[[1.0, 0.5], [0.1, 1.0]])
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        Gaussian(mean=[0.0, 0.0], cov=np.eye(3))
    with pytest.raises(ValueError, match="dim"):
        get_target("standard-normal", dim=0)
    with pytest.raises(ValueError, match="b:"):
        Banana(b=-1.0)
    with pytest.raises(ValueError, match="width"):
        Ring(width=0.0)


# ----------------------------------------------------------------------------- optional sklearn
def test_targets_import_without_sklearn():
    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "import particlesampling.targets as T\n"
        "assert len(T.list_targets()) >= 8\n"
        "T.get_target('ring')\n"
        "try:\n"
        "    T.get_target('blinreg-diabetes')\n"
        "except ImportError as e:\n"
        "    assert 'pip install particlesampling[data]' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


# ----------------------------------------------------------------------------- linear regression
def test_blinreg_posterior_is_the_ridge_solution():
    t = target("blinreg-diabetes")
    x, y = t.X, t.y
    assert x.shape == (442, 11) and np.all(x[:, 0] == 1)
    np.testing.assert_allclose(np.mean(x[:, 1:], axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(np.std(x[:, 1:], axis=0), 1, rtol=1e-12)
    # sigma^2 from an independent OLS fit
    w_ols, rss, *_ = np.linalg.lstsq(x, y, rcond=None)
    assert t.noise_variance == pytest.approx(float(rss[0]) / (442 - 11), rel=1e-10)
    # posterior mean = argmin |y - Xw|^2/σ² + α|w|^2, solved as an augmented least-squares problem
    s = math.sqrt(t.noise_variance)
    aug_x = np.concatenate([x / s, math.sqrt(t.alpha) * np.eye(11)])
    aug_y = np.concatenate([y / s, np.zeros(11)])
    np.testing.assert_allclose(t.mean, np.linalg.lstsq(aug_x, aug_y, rcond=None)[0], rtol=1e-8, atol=1e-12)


def test_blinreg_score_zero_at_mean_and_hessian_is_minus_precision():
    t = target("blinreg-diabetes")
    scale = np.max(np.abs(t.score(t.sample(20, seed=0))))
    assert np.max(np.abs(t.score(t.mean[None, :]))) < 1e-10 * scale
    h = 1e-4
    hess = np.empty((11, 11))
    for j in range(11):
        e = np.zeros(11)
        e[j] = h
        hess[:, j] = (t.score((t.mean + e)[None]) - t.score((t.mean - e)[None]))[0] / (2 * h)
    inv_cov = np.linalg.inv(t.cov)
    np.testing.assert_allclose(hess, -inv_cov, rtol=0, atol=1e-7 * np.max(np.abs(inv_cov)))


def test_blinreg_log_evidence_matches_marginal_likelihood():
    stats = pytest.importorskip("scipy.stats")
    t = target("blinreg-diabetes")
    # y ~ N(0, σ² I + X Xᵀ / α) marginally; log density via a Cholesky factor of that matrix
    chol = np.linalg.cholesky(t.noise_variance * np.eye(442) + t.X @ t.X.T / t.alpha)
    white = np.linalg.solve(chol, t.y)
    ref = -0.5 * (white @ white) - np.sum(np.log(np.diag(chol))) - 0.5 * 442 * math.log(2 * math.pi)
    assert t.log_evidence == pytest.approx(ref, rel=1e-10)
    # hence log_prob - log_evidence is the normalised Gaussian posterior density
    w = t.sample(3, seed=1)
    np.testing.assert_allclose(t.log_prob(w) - t.log_evidence, stats.multivariate_normal(t.mean, t.cov).logpdf(w), rtol=1e-8)


# ----------------------------------------------------------------------------- logistic regression
def test_log_sigmoid_and_sigmoid_are_stable():
    z = np.linspace(-800.0, 800.0, 4001)
    np.testing.assert_allclose(log_sigmoid(np, z), -np.logaddexp(0.0, -z), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(sigmoid(np, z), np.exp(-np.logaddexp(0.0, -z)), rtol=1e-12, atol=1e-300)
    z32 = z.astype(np.float32)
    assert np.all(np.isfinite(log_sigmoid(np, z32))) and log_sigmoid(np, z32).dtype == np.float32


def test_blr_extreme_weights_are_finite():
    t = target("blr-breast-cancer")
    w = np.stack([np.full(t.dim, 1e3), np.full(t.dim, -1e3)])
    assert np.all(np.isfinite(t.log_prob(w))) and np.all(np.isfinite(t.score(w)))
    assert np.all(np.isfinite(t.log_prob(w.astype(np.float32))))


def test_blr_data_split_and_standardisation():
    t = target("blr-breast-cancer")
    assert t.dim == 31 and t.X_train.shape == (456, 31) and t.X_test.shape == (113, 31)
    assert np.all(t.X_train[:, 0] == 1) and np.all(t.X_test[:, 0] == 1)
    np.testing.assert_allclose(np.mean(t.X_train[:, 1:], axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(np.std(t.X_train[:, 1:], axis=0), 1, rtol=1e-12)
    idx = np.concatenate([t.train_index, t.test_index])
    np.testing.assert_array_equal(np.sort(idx), np.arange(569))
    assert abs(np.mean(t.y_train) - np.mean(t.y_test)) < 0.01  # stratified
    skd = pytest.importorskip("sklearn.datasets")
    y_all = skd.load_breast_cancer().target
    tr, te = stratified_split(y_all, t.reference_settings["test_fraction"], t.reference_settings["split_seed"])
    np.testing.assert_array_equal(tr, t.train_index)  # the script's split is reproducible
    np.testing.assert_array_equal(te, t.test_index)


def test_blr_reference_quality_and_file_size():
    t = target("blr-breast-cancer")
    res = importlib.resources.files("particlesampling").joinpath("data", "blr_breast_cancer_reference.npz")
    assert len(res.read_bytes()) < 100 * 1024
    sd = np.sqrt(np.diag(t.cov))
    assert np.all(np.linalg.eigvalsh(t.cov) > 0)
    assert np.max(t.rhat) < 1.01
    assert np.min(t.ess) > 10000
    assert np.max(t.mcse_mean / sd) < 0.01
    assert t.reference_samples.shape == (2000, 31)
    # the MAP stored with the reference is a zero of the score
    assert np.max(np.abs(t.score(t.map[None, :]))) < 1e-6


def test_blr_reference_samples_follow_the_posterior():
    """Stein identities E[s] = 0 and E[s (w - μ)ᵀ] = -I over the (nearly independent) draws."""
    t = target("blr-breast-cancer")
    w = t.reference_samples
    n = w.shape[0]
    s = t.score(w)
    assert np.all(np.abs(np.mean(s, axis=0)) < NSE * np.std(s, axis=0) / math.sqrt(n))
    prods = s[:, :, None] * (w - t.mean)[:, None, :]
    se = np.std(prods, axis=0) / math.sqrt(n)
    assert np.all(np.abs(np.mean(prods, axis=0) + np.eye(t.dim)) < NSE * se)
    # the draws agree with the stored moments (checks the dequantisation)
    _moment_checks(w, t.mean, t.cov)


def test_blr_predictive():
    t = target("blr-breast-cancer")
    w = t.reference_samples[:50]
    p = t.predictive(w)
    assert p.shape == (113,) and np.all((p > 0) & (p < 1))
    direct = np.mean(1.0 / (1.0 + np.exp(-(w @ t.X_test.T))), axis=0)
    np.testing.assert_allclose(p, direct, rtol=1e-12)
    p_train = t.predictive(w[:2], t.X_train[:5])
    np.testing.assert_allclose(p_train, np.mean(1.0 / (1.0 + np.exp(-(w[:2] @ t.X_train[:5].T))), axis=0), rtol=1e-12)
    m = t.test_metrics(t.reference_samples)
    assert m["accuracy"] > 0.93  # a linear classifier separates these classes well
    assert -0.3 < m["log_likelihood"] < 0
    torch = pytest.importorskip("torch")
    pt = t.predictive(torch.asarray(w, dtype=torch.float32))
    assert pt.dtype == torch.float32
    np.testing.assert_allclose(pt.numpy(), p, rtol=1e-4, atol=1e-6)
    pt2 = t.predictive(torch.asarray(w[:2]), torch.asarray(t.X_train[:5]))
    assert isinstance(pt2, torch.Tensor)
    np.testing.assert_allclose(pt2.numpy(), p_train, rtol=1e-12)
    with pytest.raises(TypeError, match="particles' namespace"):
        t.predictive(torch.asarray(w), pytest.importorskip("array_api_strict").asarray(t.X_test))
    with pytest.raises(ValueError, match=r"X: expected shape \(N, 31\)"):
        t.predictive(w, t.X_test[:, 1:])


def test_blr_has_no_exact_sampler():
    t = target("blr-breast-cancer")
    assert not t.has_exact_sampler
    with pytest.raises(NotImplementedError):
        t.sample(3, seed=0)
    assert target("banana").has_exact_sampler
