"""Seeded statistical tests: SVGD, SPOS and SGLD recover targets with known answers.

Every run is seeded, so each test is deterministic; the tolerances are derived below from the
sampling error of an i.i.d. sample of the same size (or from theory for SGLD), stated per test.

Conventions: moments are compared in *whitened* coordinates z = L^{-1}(x - mu) with L the Cholesky
factor of the true covariance, where an exact sample is N(0, I): then for n i.i.d. particles
* each coordinate of the mean has SE 1/sqrt(n), and |z_bar|^2 ~ chi2_d / n;
* the sample variance of a coordinate has SE sqrt(2/(n-1)), an off-diagonal covariance 1/sqrt(n-1).

SVGD is deterministic and its particles are not i.i.d.: at a fixed point they behave like a
quasi-Monte Carlo design whose moment errors are systematically *smaller* than i.i.d. errors for the
mean (Liu & Wang 2016), but with a finite-n variance shrinkage that grows with the dimension (Ba et
al. 2022). The bounds used for SVGD are therefore i.i.d.-based, and where we demand better than
i.i.d. (2-D Gaussian) that is said at the test.

Settings found to converge in reasonable time (2 shared CPU cores) and used below:

==================  ======  ==================================  =======  ===================
target              method  step size                           steps    n
==================  ======  ==================================  =======  ===================
gaussian            SVGD    constant 0.3                        500      100
gaussian            SPOS    constant 0.05, beta = 1             1500     100 (11 snapshots)
blinreg-diabetes    SVGD    adagrad_momentum(lr=0.003)          1600     100
blinreg-diabetes    SPOS    constant 2.5e-4, beta = 1           2000     100 (10 snapshots)
mixture1d           SVGD    adagrad_momentum(lr=0.1)            500      100
mixture1d           SPOS    constant 0.1, beta = 1              1500     100 (11 snapshots)
N(0, 1)             SGLD    constant 0.2 / 0.05                 60-300   20,000 chains
==================  ======  ==================================  =======  ===================

blinreg-diabetes is an 11-D posterior whose precision has eigenvalues from 8.7 to 3,600 (condition
number ~ 420). A constant step must stay below ~2/3600 for stability and then needs thousands of
steps for the slow direction (a constant 3e-4 SVGD run is still far off after 4,000 steps).
AdaGrad-with-momentum rescales each coordinate and converges in ~1,500 steps; larger AdaGrad rates
(0.01, 0.05) jitter around the fixed point at the scale of the rate, which exceeds the posterior
standard deviations (0.03-0.24), and stall with a biased mean. SPOS keeps the constant step (an
adaptive rule preconditions the drift but not the noise, so SPOS + AdaGrad does not target p: it
diverges here), which the Langevin noise makes mix in ~1,000 steps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from particlesampling import diagnostics
from particlesampling.samplers import sgld, spos, svgd
from particlesampling.step_sizes import adagrad_momentum, constant
from particlesampling.targets import get_target

scipy_stats = pytest.importorskip("scipy.stats")
scipy_linalg = pytest.importorskip("scipy.linalg")


def _whiten(target, x):
    L = np.linalg.cholesky(target.cov)
    return np.linalg.solve(L, (np.asarray(x, dtype=np.float64) - target.mean).T).T


def _run(sampler, x0, steps, seed, snapshot_from=None, every=100):
    """Run `steps` steps; return the initial/final state and snapshots (steps > snapshot_from, every `every`)."""
    state = sampler.init(x0, seed=seed)
    snaps = []
    for k in range(1, steps + 1):
        state, info = sampler.step(state)
        assert bool(info.finite)
        if snapshot_from is not None and k >= snapshot_from and k % every == 0:
            snaps.append(np.array(state.particles, copy=True))
    return state, snaps


def _ksd(target, x):
    return float(diagnostics.ksd(x, target.score(x)))  # IMQ kernel, h = 1, V-statistic


def _iid_cov_rel_frobenius_rms(cov, n):
    """RMS of ||C_hat - C||_F / ||C||_F for n i.i.d. Gaussian draws (unbiased C_hat).

    Var(C_hat_ij) = (C_ii C_jj + C_ij^2) / (n - 1), summed over i, j: ((tr C)^2 + ||C||_F^2) / (n - 1).
    """
    num = (np.trace(cov) ** 2 + np.sum(cov**2)) / (n - 1)
    return math.sqrt(num) / np.linalg.norm(cov)


# ---------------------------------------------------------------------------------------------
# 2-D correlated Gaussian


def test_svgd_recovers_gaussian_and_ksd_falls():
    t = get_target("gaussian")  # N((1, -1), [[1, .9], [.9, 2]])
    n = 100
    x0 = t.initial_particles(n, 0)
    state, _ = _run(svgd(t.score, constant(0.3)), x0, 500, seed=0)
    z = _whiten(t, state.particles)
    c = np.cov(z, rowvar=False)
    # SVGD must do at least as well as an i.i.d. sample's 1 SE (a seeded i.i.d. sample would pass
    # these with probability ~0.68 per entry): its mean error is far below i.i.d. error, its
    # variances shrink by a few percent at n = 100 (measured 0.92), well inside 1 SE = 0.142.
    se_mean, se_var, se_cov = 1 / math.sqrt(n), math.sqrt(2 / (n - 1)), 1 / math.sqrt(n - 1)
    assert np.all(np.abs(z.mean(0)) < se_mean), z.mean(0)
    assert np.all(np.abs(np.diag(c) - 1) < se_var), np.diag(c)
    assert abs(c[0, 1]) < se_cov, c[0, 1]
    # in the original coordinates, the package's diagnostics agree with the whitened picture
    assert float(diagnostics.mean_error(state.particles, t.mean)) < 0.1
    assert float(diagnostics.cov_error(state.particles, t.cov)) < _iid_cov_rel_frobenius_rms(t.cov, n)
    # the KSD (IMQ) falls by a clear factor: from N(0, I) (KSD ~ 2.3) to a near-exact sample
    # (measured ~0.04); demand a factor of 10
    k0, k1 = _ksd(t, x0), _ksd(t, state.particles)
    assert k1 < k0 / 10, (k0, k1)


@pytest.mark.slow
def test_spos_recovers_gaussian_and_ksd_falls():
    t = get_target("gaussian")
    n, eps = 100, 0.05
    x0 = t.initial_particles(n, 0)
    state, snaps = _run(spos(t.score, constant(eps), beta=1.0), x0, 1500, seed=0, snapshot_from=500)
    assert len(snaps) == 11
    zs = [_whiten(t, s) for s in snaps]
    # Snapshots 100 steps apart are nearly independent: the slowest Langevin relaxation rate is
    # eps * lambda_min(precision) = 0.05 * 0.355 per step, so a variance statistic decorrelates by
    # exp(-2 * 100 * 0.0178) ~ 0.03 (the SVGD part only adds contraction). So N_eff ~ 11 * 100.
    n_eff = len(zs) * n
    zbar = np.mean(np.concatenate(zs), axis=0)
    c = np.mean([np.cov(z, rowvar=False) for z in zs], axis=0)
    assert np.all(np.abs(zbar) < 4 / math.sqrt(n_eff)), zbar  # 4 SE
    # variances: 4 SE plus the Euler discretisation bias of the Langevin part, which inflates the
    # variance along the stiffest direction by 1/(1 - eps * lambda_max / 2) - 1 = 0.076 for
    # lambda_max(precision) = 2.82 (measured diagonal: 1.00-1.06)
    bias = 1 / (1 - eps * np.linalg.eigvalsh(np.linalg.inv(t.cov))[-1] / 2) - 1
    assert np.all(np.abs(np.diag(c) - 1) < 4 * math.sqrt(2 / n_eff) + bias), np.diag(c)
    assert abs(c[0, 1]) < 4 / math.sqrt(n_eff) + bias, c[0, 1]
    k0, k1 = _ksd(t, x0), _ksd(t, state.particles)
    assert k1 < k0 / 5, (k0, k1)  # measured 2.36 -> 0.16


# ---------------------------------------------------------------------------------------------
# Bayesian linear regression on diabetes (11-D, analytic Gaussian posterior)


def _blinreg_checks(t, mean_z, cov_x, n, what, stiffest_floor=0.25):
    d = t.dim
    # mean: for i.i.d. n, |z_bar|^2 ~ chi2_d / n; bound at its 99.9% quantile (0.56 for d = 11, n = 100)
    bound = math.sqrt(scipy_stats.chi2.ppf(0.999, d) / n)
    assert np.linalg.norm(mean_z) < bound, (what, np.linalg.norm(mean_z), bound)
    # covariance, relative Frobenius error in the original coordinates: 3 x its i.i.d. RMS (0.15)
    rel = np.linalg.norm(cov_x - t.cov) / np.linalg.norm(t.cov)
    tol = 3 * _iid_cov_rel_frobenius_rms(t.cov, n)
    assert rel < tol, (what, rel, tol)
    # no collapse or blow-up in any direction: eigenvalues of the whitened covariance. For i.i.d. n
    # they fill the Marchenko-Pastur support [(1 - sqrt(d/n))^2, (1 + sqrt(d/n))^2] = [0.45, 1.77];
    # we allow [0.25, 2.5] (a missing repulsion gives ~0), except for the smallest one, see
    # `stiffest_floor`.
    L = np.linalg.cholesky(t.cov)
    cz = np.linalg.solve(L, np.linalg.solve(L, cov_x).T)
    ev = np.linalg.eigvalsh(0.5 * (cz + cz.T))
    assert ev[0] > stiffest_floor and ev[1] > 0.25 and ev[-1] < 2.5, (what, ev)


@pytest.mark.slow
def test_svgd_recovers_blinreg_diabetes_posterior():
    t = get_target("blinreg-diabetes")
    n = 100
    x0 = t.initial_particles(n, 1)  # prior draws N(0, I): far from the posterior (sd 0.03-0.24)
    state, _ = _run(svgd(t.score, adagrad_momentum(0.003)), x0, 1600, seed=1)
    x = state.particles
    # SVGD with one isotropic median bandwidth under-disperses along the stiffest posterior
    # direction (precision 3,600, sd 0.017, while h is set by the widest directions, sd up to 0.34):
    # there the kernel is nearly flat across the particles and the repulsion is too weak. Measured
    # variance ratio along that eigenvector: 0.10 (the other ten: 0.44-0.86). That is a property of
    # SVGD, not of this code, so its floor is 0.05; with repulsion 0 all ratios are < 0.05 and with
    # repulsion 0.5 the covariance check fails (measured relative error 0.54 > 0.45).
    _blinreg_checks(t, _whiten(t, x).mean(0), np.cov(x, rowvar=False), n, "svgd", stiffest_floor=0.05)
    assert _ksd(t, x) < _ksd(t, x0) / 10


@pytest.mark.slow
def test_spos_recovers_blinreg_diabetes_posterior():
    t = get_target("blinreg-diabetes")
    n = 100
    x0 = t.initial_particles(n, 1)
    state, snaps = _run(spos(t.score, constant(2.5e-4), beta=1.0), x0, 2000, seed=1, snapshot_from=1100)
    assert len(snaps) == 10
    # The slow direction (precision 8.7) relaxes at ~eps * 8.7 = 0.002 per step, so snapshots 100
    # steps apart are strongly correlated there; we credit the average with no more precision than a
    # single i.i.d. sample of n (the bounds of _blinreg_checks), which is conservative.
    mean_z = np.mean([_whiten(t, s).mean(0) for s in snaps], axis=0)
    cov_x = np.mean([np.cov(s, rowvar=False) for s in snaps], axis=0)
    _blinreg_checks(t, mean_z, cov_x, n, "spos")


# ---------------------------------------------------------------------------------------------
# 1-D mixture 1/3 N(-2, 1) + 2/3 N(2, 1), particles start at N(-10, 1) (Liu & Wang 2016, Fig. 1)


def test_svgd_mixture1d_mode_fractions():
    t = get_target("mixture1d")
    n = 100
    x0 = t.initial_particles(n, 0)
    assert np.all(t.mode_fractions_of(x0) == [1.0, 0.0])  # all start left of both modes
    state, _ = _run(svgd(t.score, adagrad_momentum(0.1)), x0, 500, seed=0)
    w = t.mode_fractions_of(state.particles)
    # an i.i.d. sample of 100 has SE sqrt(pq/n) = 0.047 per weight; SVGD (deterministic) must land
    # within 0.05 of the truth, as in Liu & Wang's Fig. 1 (measured 0.34 / 0.66)
    assert np.all(np.abs(w - [1 / 3, 2 / 3]) < 0.05), w
    x = state.particles[:, 0]
    # mean 2/3 and variance 41/9: within 1 i.i.d. SE (sd/sqrt(n) = 0.21; var SE ~ 0.75 for this
    # bimodal law, we use 0.5)
    assert abs(x.mean() - 2 / 3) < math.sqrt(41 / 9 / n)
    assert abs(x.var(ddof=1) - 41 / 9) < 0.5
    assert _ksd(t, state.particles) < _ksd(t, x0) / 10


@pytest.mark.slow
def test_spos_mixture1d_mode_fractions():
    t = get_target("mixture1d")
    n = 100
    x0 = t.initial_particles(n, 0)
    _, snaps = _run(spos(t.score, constant(0.1), beta=1.0), x0, 1500, seed=0, snapshot_from=500)
    assert len(snaps) == 11
    w = np.mean([t.mode_fractions_of(s) for s in snaps], axis=0)
    # If the 11 snapshots were independent the SE of the averaged weight would be
    # 0.047 / sqrt(11) = 0.014 and 0.05 would be 3.5 SE; mode hopping correlates them, so the
    # effective SE lies between 0.014 and 0.047 (measured averages over 3 seeds: 0.32-0.36).
    assert np.all(np.abs(w - [1 / 3, 2 / 3]) < 0.05), w


# ---------------------------------------------------------------------------------------------
# SGLD: exact stationary law of the Euler scheme on Gaussians


@pytest.mark.parametrize("eps,temperature,steps", [(0.2, 1.0, 60), (0.05, 1.0, 250), (0.2, 0.5, 60)])
def test_sgld_stationary_variance_on_standard_normal(eps, temperature, steps):
    # x' = x + eps * (-x) + sqrt(2 eps T) xi = (1 - eps) x + sqrt(2 eps T) xi has the stationary
    # variance v = 2 eps T / (1 - (1 - eps)^2) = T / (1 - eps / 2) (not T: the step-size bias).
    v = temperature / (1 - eps / 2)
    n = 20_000  # independent chains, started from N(0, v) ... up to the start below
    x0 = np.random.default_rng(5).standard_normal((n, 1))
    # start from N(0, 1): the variance gap decays as (1 - eps)^(2k): < 1e-10 after `steps` steps
    assert (1 - eps) ** (2 * steps) < 1e-10
    state, _ = _run(sgld(lambda x: -x, constant(eps), temperature=temperature), x0, steps, seed=3)
    x = state.particles[:, 0]
    se_var = v * math.sqrt(2 / (n - 1))  # SE of a Gaussian sample variance
    assert abs(x.var(ddof=1) - v) < 4 * se_var, (x.var(ddof=1), v, se_var)
    assert abs(x.mean()) < 4 * math.sqrt(v / n)
    if eps == 0.2 and temperature == 1.0:
        # the bias is resolved: v - 1 = 0.111 is 10 SE, so the plain target variance is rejected
        assert x.var(ddof=1) - 1.0 > 4 * se_var
    assert scipy_stats.kstest(x / math.sqrt(v), "norm").pvalue > 1e-3


def test_sgld_stationary_covariance_on_correlated_gaussian():
    # Euler scheme x' = A x + b + sqrt(2 eps) xi with A = I - eps P (P the precision): the stationary
    # covariance S solves the discrete Lyapunov equation S = A S A^T + 2 eps I (independent solver).
    t = get_target("gaussian")
    eps, n, steps = 0.1, 20_000, 300
    P = np.linalg.inv(t.cov)
    A = np.eye(2) - eps * P
    S = scipy_linalg.solve_discrete_lyapunov(A, 2 * eps * np.eye(2))
    # slowest contraction per step: (1 - eps * lambda_min(P))^2 = 0.93 -> 0.93^300 ~ 1e-10
    assert (1 - eps * np.linalg.eigvalsh(P)[0]) ** (2 * steps) < 1e-8
    x0 = t.initial_particles(n, 2)
    state, _ = _run(sgld(t.score, constant(eps)), x0, steps, seed=4)
    x = state.particles
    c = np.cov(x, rowvar=False)
    se = np.sqrt((np.outer(np.diag(S), np.diag(S)) + S**2) / (n - 1))  # SE of each covariance entry
    assert np.all(np.abs(c - S) < 4 * se), (c, S)
    assert np.all(np.abs(x.mean(0) - t.mean) < 4 * np.sqrt(np.diag(S) / n))
    # and it differs measurably from the target's covariance (the step-size bias)
    assert np.max(np.abs(S - t.cov) / se) > 4
