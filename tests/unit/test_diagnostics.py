"""Tests of particlesampling.diagnostics: KSD, MMD, energy distance, moment diagnostics.

References are independent of the library: brute-force double loops with kernels written out here,
kernel derivatives by torch float64 autograd, scipy.stats.energy_distance, and closed-form
population values for Gaussians (expectation tests use seeded replicates and a 3-standard-error
tolerance).
"""

from __future__ import annotations

import math

import array_api_strict as xps
import numpy as np
import pytest
import scipy.integrate
import scipy.spatial.distance
import scipy.stats
import torch

from particlesampling import diagnostics as dg
from particlesampling.kernels import IMQ, RBF, Linear

# ---------------------------------------------------------------- namespaces

CUDA = torch.cuda.is_available()


def _to(ns, a, dtype="float64"):
    a = np.asarray(a, dtype=dtype)
    if ns == "numpy":
        return a
    if ns == "torch":
        return torch.asarray(a)
    if ns == "torch-cuda":
        return torch.asarray(a, device="cuda")
    if ns == "strict":
        return xps.asarray(a)
    raise AssertionError(ns)


def _np(a):
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


NAMESPACES = [
    "numpy",
    "torch",
    "strict",
    pytest.param("torch-cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="no CUDA")]),
]


def _check_like(result, like, shape=()):
    """Same namespace, dtype, device; given shape."""
    assert type(result) is type(like), (type(result), type(like))
    assert result.dtype == like.dtype
    assert tuple(result.shape) == shape
    if isinstance(like, torch.Tensor):
        assert result.device == like.device


# ---------------------------------------------------------------- independent references

KERNELS = {
    # name: (library kernel, profile written here)
    "rbf": (RBF(), lambda u: torch.exp(-u)),
    "imq": (IMQ(), lambda u: (1.0 + u) ** -0.5),
    "imq-c2-b03": (IMQ(c=2.0, beta=-0.3), lambda u: (4.0 + u) ** -0.3),
}


def _stein_matrix_autograd(x, s, f, h):
    """u_p(x_i, x_j) by a double loop, grad and mixed Hessian trace from torch autograd (float64)."""
    x = torch.asarray(x, dtype=torch.float64)
    s = torch.asarray(s, dtype=torch.float64)
    w = 1.0 / torch.asarray(h, dtype=torch.float64)
    n, d = x.shape
    out = torch.empty((n, n), dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            xi = x[i].clone().requires_grad_(True)
            xj = x[j].clone().requires_grad_(True)
            k = f(torch.sum(w * (xi - xj) ** 2))
            gx, gy = torch.autograd.grad(k, (xi, xj), create_graph=True)
            tr = sum(torch.autograd.grad(gy[a], xi, retain_graph=True)[0][a] for a in range(d))
            out[i, j] = (s[i] @ s[j]) * k + s[i] @ gy + gx @ s[j] + tr
    return out.detach().numpy()


def _v_u(mat):
    n = mat.shape[0]
    return mat.sum() / n**2, (mat.sum() - np.trace(mat)) / (n * (n - 1))


def _mean_within_3se(values, target):
    values = np.asarray(values, dtype=np.float64)
    se = values.std(ddof=1) / math.sqrt(values.size)
    assert abs(values.mean() - target) < 3.0 * se, (values.mean(), target, se)


# ================================================================ KSD


@pytest.mark.parametrize("kname", list(KERNELS))
@pytest.mark.parametrize("h", [1.0, 0.7, (0.5, 2.0, 1.3)], ids=["h1", "h0.7", "per-dim"])
def test_ksd_matches_autograd_double_loop(kname, h):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 3))
    s = rng.standard_normal((7, 3))  # u_p is defined for any score field
    kern, f = KERNELS[kname]
    ref = _stein_matrix_autograd(x, s, f, h)
    v, hmat = dg.ksd_squared(x, s, kernel=kern, bandwidth=h, return_matrix=True)
    np.testing.assert_allclose(hmat, ref, rtol=1e-10, atol=1e-12)
    ref_v, ref_u = _v_u(ref)
    np.testing.assert_allclose(v, ref_v, rtol=1e-10)
    np.testing.assert_allclose(dg.ksd_squared(x, s, kern, h, statistic="u"), ref_u, rtol=1e-10)
    np.testing.assert_allclose(dg.ksd(x, s, kern, h), math.sqrt(ref_v), rtol=1e-10)
    np.testing.assert_allclose(dg.stein_kernel_matrix(x, s, kern, h), ref, rtol=1e-10, atol=1e-12)


def test_ksd_defaults_are_imq_unit_bandwidth():
    rng = np.random.default_rng(2)
    x, s = rng.standard_normal((6, 2)), rng.standard_normal((6, 2))
    ref = _stein_matrix_autograd(x, s, KERNELS["imq"][1], 1.0)
    np.testing.assert_allclose(dg.ksd_squared(x, s), _v_u(ref)[0], rtol=1e-10)


def test_ksd_bandwidth_forms_and_gram_stats_agree():
    rng = np.random.default_rng(3)
    x, s = rng.standard_normal((20, 4)), rng.standard_normal((20, 4))
    # a (d,) bandwidth with equal entries is the scalar bandwidth
    for kern in (RBF(), IMQ()):
        a = dg.ksd_squared(x, s, kern, 1.7)
        np.testing.assert_allclose(dg.ksd_squared(x, s, kern, [1.7] * 4), a, rtol=1e-12)
        # the shared-Gram path used by bandwidths.MaxKSD gives the same statistics
        stats = dg.stein_gram_stats(x, s)
        np.testing.assert_allclose(stats.ksd_squared(kern, 1.7), a, rtol=1e-12)
        np.testing.assert_allclose(
            stats.ksd_squared(kern, 1.7, statistic="u"), dg.ksd_squared(x, s, kern, 1.7, "u"), rtol=1e-12
        )
    # a named rule is evaluated on the particles: compare with the rule applied by hand
    from particlesampling._backend import sqdist
    from particlesampling.bandwidths import get_bandwidth

    h = get_bandwidth("liu_wang")(x, sqdist(x), s)
    np.testing.assert_allclose(dg.ksd_squared(x, s, "rbf", "liu_wang"), dg.ksd_squared(x, s, "rbf", float(h)),
                               rtol=1e-12)


def test_ksd_accepts_array_bandwidth():
    # e.g. the bandwidth a sampler reported in its step info (0-d, or (d,) per dimension)
    rng = np.random.default_rng(6)
    x, s = rng.standard_normal((10, 2)), rng.standard_normal((10, 2))
    ref = dg.ksd_squared(x, s, "rbf", 0.9)
    np.testing.assert_allclose(dg.ksd_squared(x, s, "rbf", np.asarray(0.9)), ref, rtol=1e-12)
    tx, ts = torch.asarray(x), torch.asarray(s)
    np.testing.assert_allclose(float(dg.ksd_squared(tx, ts, "rbf", torch.tensor(0.9, dtype=torch.float64))), ref, rtol=1e-12)
    np.testing.assert_allclose(dg.ksd_squared(x, s, "rbf", np.array([0.9, 0.9])), ref, rtol=1e-12)
    with pytest.raises(ValueError, match="positive"):
        dg.ksd_squared(x, s, "rbf", np.array([0.9, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        dg.ksd_squared(x, s, "rbf", np.ones((2, 2)))


def test_ksd_translation_invariant_far_from_origin():
    # u_p depends on x only through differences; the Gram products must not lose that far away
    rng = np.random.default_rng(4)
    x, s = rng.standard_normal((30, 3)), rng.standard_normal((30, 3))
    a = dg.ksd_squared(x, s, statistic="u")
    np.testing.assert_allclose(dg.ksd_squared(x + 1e4, s, statistic="u"), a, rtol=1e-8)


@pytest.mark.parametrize("ns", NAMESPACES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ksd_namespaces_dtypes_agree(ns, dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 3))
    s = -x + 0.3 * rng.standard_normal((40, 3))
    ref_v = dg.ksd_squared(x, s)
    ref_u = dg.ksd_squared(x, s, "rbf", 2.0, "u")
    xx, ss = _to(ns, x, dtype), _to(ns, s, dtype)
    v = dg.ksd_squared(xx, ss)
    u = dg.ksd_squared(xx, ss, "rbf", 2.0, "u")
    k = dg.ksd(xx, ss, bandwidth=(1.0, 2.0, 0.5))
    for r in (v, u, k):
        _check_like(r, xx)
    # float32: the statistic averages n^2 terms of size O(d + |s|^2); rounding ~1e-6 of that
    tol = 1e-12 if dtype == "float64" else 5e-6 * float(np.mean(np.abs(dg.stein_kernel_matrix(x, s))))
    assert abs(float(v) - ref_v) <= tol + 1e-6 * abs(ref_v)
    assert abs(float(u) - ref_u) <= tol + 1e-6 * abs(ref_u)
    np.testing.assert_allclose(float(k), dg.ksd(x, s, bandwidth=(1.0, 2.0, 0.5)),
                               rtol=1e-10 if dtype == "float64" else 1e-4)
    _, hmat = dg.ksd(xx, ss, return_matrix=True)
    _check_like(hmat, xx, (40, 40))


def _replicates(n, d, shift, reps, kernel, h, seed):
    rng = np.random.default_rng(seed)
    vs, us = [], []
    for _ in range(reps):
        x = rng.standard_normal((n, d)) + shift
        s = -x  # target p = N(0, I)
        stats = dg.stein_gram_stats(x, s)
        vs.append(stats.ksd_squared(kernel, h, "v"))
        us.append(stats.ksd_squared(kernel, h, "u"))
    return np.array(vs), np.array(us)


def test_ksd_exact_samples_v_mean_is_2d_over_n_and_u_mean_zero():
    # p = N(0, I), IMQ(c=1, beta=-1/2), h = 1. Exact samples: E[u_p(x, x')] = 0 for x != x', and
    # u_p(x, x) = f(0)|s|^2 - 2 d f'(0) = |x|^2 + d, so E[V] = 2d/n and E[U] = 0: KSD ~ 1/sqrt(n).
    d = 2
    for n in (20, 80):
        vs, us = _replicates(n, d, 0.0, 300, IMQ(), 1.0, seed=n)
        _mean_within_3se(vs, 2 * d / n)
        _mean_within_3se(us, 0.0)


def _pop_ksd2_shifted(kname, mu2, d, h):
    """KSD^2(q, p) for q = N(mu, I), p = N(0, I): s_p - s_q = -mu, so KSD^2 = |mu|^2 E k(x, x'),
    with x - x' ~ N(0, 2I), i.e. |x - x'|^2 = 2 chi^2_d."""
    if kname == "rbf":
        return mu2 * (1.0 + 4.0 / h) ** (-d / 2)
    val, _ = scipy.integrate.quad(lambda t: (1.0 + 2.0 * t / h) ** -0.5 * scipy.stats.chi2.pdf(t, d), 0, np.inf)
    return mu2 * val


@pytest.mark.parametrize("kname", ["rbf", "imq"])
def test_ksd_shifted_gaussian_unbiased_u_and_v_expectation(kname):
    d, n, h = 2, 30, 2.0
    mu = np.array([0.8, -0.4])
    mu2 = float(mu @ mu)
    kern = KERNELS[kname][0]
    pop = _pop_ksd2_shifted(kname, mu2, d, h)
    vs, us = _replicates(n, d, mu, 300, kern, h, seed=11)
    _mean_within_3se(us, pop)
    # E[V] = E u_p(x, x) / n + (1 - 1/n) pop, with u_p(x, x) = f(0)|x|^2 - 2 d f'(0) / h, f(0) = 1
    f1_0 = -1.0 if kname == "rbf" else -0.5
    diag = (d + mu2) - 2.0 * d * f1_0 / h
    _mean_within_3se(vs, diag / n + (1.0 - 1.0 / n) * pop)


def test_ksd_detects_wrong_distribution():
    rng = np.random.default_rng(12)
    d, n = 3, 400
    x = rng.standard_normal((n, d))
    good = dg.ksd(x, -x)
    y = x + np.array([1.0, 0.0, 0.0])
    bad = dg.ksd(y, -y)
    pop = math.sqrt(_pop_ksd2_shifted("imq", 1.0, d, 1.0))
    assert good < 2.0 * math.sqrt(2 * d / n)  # E[good^2] = 2d/n
    assert bad > 0.8 * pop and bad > 3.0 * good


def test_ksd_bad_input():
    x = np.zeros((5, 2))
    with pytest.raises(ValueError, match="shape"):
        dg.ksd(x, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="n >= 2"):
        dg.ksd_squared(np.zeros((1, 2)), np.zeros((1, 2)), statistic="u")
    with pytest.raises(ValueError, match="statistic"):
        dg.ksd(x, x, statistic="w")
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        dg.ksd(x, bad)
    with pytest.raises(TypeError, match="radial"):
        dg.ksd(x, x, kernel=Linear())
    with pytest.raises(ValueError, match="unknown kernel"):
        dg.ksd(x, x, kernel="matern")
    with pytest.raises(TypeError):
        dg.ksd(x, torch.zeros((5, 2), dtype=torch.float64))
    with pytest.raises(TypeError, match="floating"):
        dg.ksd(np.zeros((5, 2), dtype=np.int64), x)
    with pytest.raises(ValueError, match="bandwidth"):
        dg.ksd(x, x, bandwidth=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError):
        dg.ksd(x, x, bandwidth=-1.0)
    # n = 1 is fine for the V-statistic: u_p(x, x) = |s|^2 f(0) - 2 d f'(0) / h = 0 + 2
    np.testing.assert_allclose(dg.ksd_squared(np.zeros((1, 2)), np.zeros((1, 2))), 2.0)


# ================================================================ MMD


def _mmd_brute(x, y, k, statistic):
    m, n = len(x), len(y)

    def avg(a, b, same):
        tot, cnt = 0.0, 0
        for i in range(len(a)):
            for j in range(len(b)):
                if same and statistic == "u" and i == j:
                    continue
                tot += k(a[i], b[j])
                cnt += 1
        return tot / cnt

    assert m and n
    return avg(x, x, True) + avg(y, y, True) - 2 * avg(x, y, False)


@pytest.mark.parametrize("statistic", ["v", "u"])
@pytest.mark.parametrize(
    "kname,h",
    [("rbf", 1.5), ("imq", 0.8), ("rbf", (0.5, 1.0, 3.0))],
    ids=["rbf", "imq", "rbf-per-dim"],
)
def test_mmd_matches_double_loop(statistic, kname, h):
    rng = np.random.default_rng(20)
    x, y = rng.standard_normal((6, 3)), rng.standard_normal((5, 3)) + 0.5
    w = 1.0 / np.asarray(h)
    f = {"rbf": lambda u: math.exp(-u), "imq": lambda u: (1.0 + u) ** -0.5}[kname]
    ref = _mmd_brute(x, y, lambda a, b: f(float(np.sum(w * (a - b) ** 2))), statistic)
    np.testing.assert_allclose(dg.mmd(x, y, kname, h, statistic), ref, rtol=1e-10)


def test_mmd_default_bandwidth_is_pooled_median():
    rng = np.random.default_rng(21)
    x, y = rng.standard_normal((9, 2)), rng.standard_normal((8, 2)) * 2.0
    z = np.concatenate([x, y])
    med = np.median(scipy.spatial.distance.pdist(z, "sqeuclidean"))  # 136 pairs: midpoint median
    np.testing.assert_allclose(dg.mmd(x, y), dg.mmd(x, y, "rbf", float(med)), rtol=1e-12)
    from particlesampling._backend import sqdist

    np.testing.assert_allclose(dg.pooled_median_bandwidth(sqdist(z)), med, rtol=1e-12)
    # guards: median 0 (most points coincide) -> mean off-diagonal D2; all coincide -> 1
    z0 = np.zeros((5, 2))
    z0[0] = [3.0, 4.0]  # 4 of 10 pairs at squared distance 25: median 0, mean 25 * 8 / 20 = 10
    np.testing.assert_allclose(dg.pooled_median_bandwidth(sqdist(z0)), 10.0, rtol=1e-12)
    np.testing.assert_allclose(dg.pooled_median_bandwidth(sqdist(np.ones((4, 2)))), 1.0)


def test_mmd_zero_for_identical_positive_for_different():
    rng = np.random.default_rng(22)
    x = rng.standard_normal((50, 3))
    assert abs(dg.mmd(x, x.copy())) < 1e-14
    assert abs(dg.mmd(x, x[::-1].copy(), "imq", 1.0)) < 1e-14
    assert dg.mmd(x, rng.standard_normal((60, 3)) + 1.0) > 0.05


def test_mmd_u_statistic_unbiased():
    # N(0, I) vs N(mu, I), k = exp(-|x - y|^2 / h): E k(x, x') = (1 + 4/h)^(-d/2) and
    # E k(x, y) = (1 + 4/h)^(-d/2) exp(-|mu|^2 / (h + 4)), so MMD^2 = 2 (1 + 4/h)^(-d/2) (1 - exp(...)).
    rng = np.random.default_rng(23)
    d, h, mu = 2, 2.0, np.array([0.6, 0.0])
    pop = 2.0 * (1.0 + 4.0 / h) ** (-d / 2) * (1.0 - math.exp(-(mu @ mu) / (h + 4.0)))
    vals = [dg.mmd(rng.standard_normal((25, d)), rng.standard_normal((20, d)) + mu, "rbf", h, "u")
            for _ in range(300)]
    _mean_within_3se(vals, pop)


@pytest.mark.parametrize("ns", NAMESPACES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mmd_energy_namespaces(ns, dtype):
    rng = np.random.default_rng(24)
    x, y = rng.standard_normal((30, 2)), rng.standard_normal((25, 2)) + 0.3
    xx, yy = _to(ns, x, dtype), _to(ns, y, dtype)
    # each block average is O(1) (kernel values <= 1, distances ~ 1): absolute rounding tolerance
    atol = 1e-12 if dtype == "float64" else 1e-6
    for fn, args in ((dg.mmd, ("rbf", None, "u")), (dg.mmd, ("imq", 1.0, "v")), (dg.energy_distance, ("v",)),
                     (dg.energy_distance, ("u",))):
        r = fn(xx, yy, *args)
        _check_like(r, xx)
        np.testing.assert_allclose(float(r), fn(x, y, *args), rtol=0, atol=atol)


def test_mmd_bad_input():
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="columns"):
        dg.mmd(x, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        dg.mmd(x, np.zeros((1, 2)), statistic="u")
    with pytest.raises(TypeError, match="dtype"):
        dg.mmd(x, np.zeros((4, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        dg.energy_distance(x, np.full((3, 2), np.inf))
    with pytest.raises(ValueError, match="statistic"):
        dg.energy_distance(x, x, statistic="biased")


# ================================================================ energy distance


def test_energy_distance_matches_scipy_1d():
    # scipy returns sqrt(2 E|X-Y| - E|X-X'| - E|Y-Y'|) over the empirical measures (V-statistic)
    rng = np.random.default_rng(30)
    u, v = rng.standard_normal(40), rng.standard_normal(33) * 1.5 + 0.4
    ours = dg.energy_distance(u[:, None], v[:, None])
    np.testing.assert_allclose(math.sqrt(ours), scipy.stats.energy_distance(u, v), rtol=1e-7)


@pytest.mark.parametrize("statistic", ["v", "u"])
def test_energy_distance_matches_double_loop(statistic):
    rng = np.random.default_rng(31)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((6, 3)) + 0.7
    ref = -_mmd_brute(x, y, lambda a, b: float(np.linalg.norm(a - b)), statistic)  # 2E|X-Y| - ...
    np.testing.assert_allclose(dg.energy_distance(x, y, statistic), ref, rtol=1e-7)
    assert abs(dg.energy_distance(x, x.copy())) < 1e-12


# ================================================================ moments

# Hand-worked example: X = [[0, 0], [2, 0], [0, 2], [2, 2]].
#   mean = (1, 1); centred rows (+-1, +-1), so Xc^T Xc = [[4, 0], [0, 4]] and with ddof = 1
#   C_hat = [[4/3, 0], [0, 4/3]].
#   true_cov = I:  C_hat - I = diag(1/3, 1/3), |.|_F = sqrt(2)/3, |I|_F = sqrt(2)  -> relative 1/3.
#   true_mean = (4, 5): mean - m = (-3, -4), norm 5; relative 5 / sqrt(41).
#   marginal variance (ddof=1) = (4/3 + 4/3) / 2 = 4/3; ddof=0: (1 + 1) / 2 = 1.
#   mode centres c0 = (0, 0), c1 = (2, 2.5); squared distances (to c0, to c1):
#   (0,0): 0 vs 10.25 -> 0;  (2,0): 4 vs 6.25 -> 0;  (0,2): 4 vs 4.25 -> 0;  (2,2): 8 vs 0.25 -> 1;
#   weights (3/4, 1/4).
X_HAND = [[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]]


@pytest.mark.parametrize("ns", NAMESPACES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_moments_hand_worked(ns, dtype):
    x = _to(ns, X_HAND, dtype)
    rtol = 1e-12 if dtype == "float64" else 1e-6
    checks = [
        (dg.mean_error(x, [4.0, 5.0]), 5.0),
        (dg.mean_error(x, np.array([4.0, 5.0]), relative=True), 5.0 / math.sqrt(41.0)),
        (dg.cov_error(x, np.eye(2)), 1.0 / 3.0),
        (dg.cov_error(x, np.eye(2), relative=False), math.sqrt(2.0) / 3.0),
        (dg.marginal_variance(x), 4.0 / 3.0),
        (dg.marginal_variance(x, ddof=0), 1.0),
    ]
    for r, expected in checks:
        _check_like(r, x)
        np.testing.assert_allclose(float(r), expected, rtol=rtol)
    w = dg.mode_fractions(x, [[0.0, 0.0], [2.0, 2.5]])
    _check_like(w, x, (2,))
    np.testing.assert_allclose(_np(w), [0.75, 0.25], rtol=rtol)
    np.testing.assert_allclose(_np(dg.sample_cov(x)), np.eye(2) * 4.0 / 3.0, rtol=rtol)


def test_mode_fractions_float32_far_from_origin():
    # the hand example shifted by 1000: squared-distance margins of 0.25 must survive float32
    x = np.asarray(X_HAND, dtype=np.float32) + 1000.0
    w = dg.mode_fractions(x, np.array([[0.0, 0.0], [2.0, 2.5]], dtype=np.float32) + 1000.0)
    np.testing.assert_allclose(w, [0.75, 0.25])


def test_mode_fractions_callable_and_unassigned():
    x = np.array([[-3.0], [-2.0], [0.1], [2.5], [3.0], [4.0]])

    def assign(p):  # 0 left of -1, 1 right of 1, -1 (no mode) in between
        return np.where(p[:, 0] < -1, 0, np.where(p[:, 0] > 1, 1, -1))

    np.testing.assert_allclose(dg.mode_fractions(x, assign), [2 / 6, 3 / 6])
    np.testing.assert_allclose(dg.mode_fractions(x, assign, num_modes=3), [2 / 6, 3 / 6, 0.0])
    with pytest.raises(TypeError, match="integer"):
        dg.mode_fractions(x, lambda p: p[:, 0])
    with pytest.raises(ValueError, match="shape"):
        dg.mode_fractions(x, np.zeros((2, 3)))


def test_marginal_variance_of_exact_gaussian_samples():
    # truth 1 for N(0, I_d); the unbiased estimate has sd sqrt(2 / (d (n - 1))) over n*d values
    rng = np.random.default_rng(40)
    n, d = 500, 20
    v = dg.marginal_variance(rng.standard_normal((n, d)))
    assert abs(v - 1.0) < 3.0 * math.sqrt(2.0 / (d * (n - 1)))


def test_moments_bad_input():
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="true_mean"):
        dg.mean_error(x, [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="true_cov"):
        dg.cov_error(x, np.eye(3))
    with pytest.raises(ValueError, match="non-finite"):
        dg.cov_error(x, np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="ddof"):
        dg.marginal_variance(np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        dg.marginal_variance(np.zeros(4))
