"""Bandwidth rules (the median-convention table of particlesampling.bandwidths) on hand-worked examples, and the
median helpers of particlesampling.selection.

Convention (architecture.md): h is always for k(x, y) = exp(-|x - y|^2 / h).

Hand-worked example P (four particles in 2-D, integer coordinates):
    A = (0, 0), B = (1, 0), C = (0, 2), D = (3, 4)
Squared distances of the six pairs i < j:
    AB = 1, AC = 4, AD = 9 + 16 = 25, BC = 1 + 4 = 5, BD = 4 + 16 = 20, CD = 9 + 4 = 13
The 16 entries of D2 (4 zeros on the diagonal, each pair twice), sorted:
    idx: 0  1  2  3  4  5  6  7  8  9  10  11  12  13  14  15
    D2 : 0  0  0  0  1  1  4  4  5  5  13  13  20  20  25  25
- liu_wang: midpoint median of the 16 = (D2[7] + D2[8]) / 2 = (4 + 5) / 2 = 4.5;  h = 4.5 / log 5
- an2020:   lower median = element (16 - 1) // 2 = 7 -> 4;                          h = 4 / log 5
- blackjax: distances over i < j, sorted: 1, 2, sqrt5, sqrt13, sqrt20, 5; midpoint median
            (sqrt5 + sqrt13) / 2, squared = (5 + 13 + 2 sqrt65) / 4 = 4.5 + sqrt(65) / 2 = 8.53113...;
            h = (4.5 + sqrt(65)/2) / log 4
- numpyro:  all 16 distances sorted: 0 0 0 0 1 1 2 2 sqrt5 sqrt5 sqrt13 sqrt13 sqrt20 sqrt20 5 5;
            midpoint median (2 + sqrt5) / 2, squared = (4 + 4 sqrt5 + 5) / 4 = 2.25 + sqrt5 = 4.48607;
            h = (2.25 + sqrt5) / log 4 + eps (eps = the dtype's machine epsilon, as NumPyro's
            median_bandwidth: jnp.median(dists) ** 2 / log(n) + jnp.finfo(dtype).eps)
- pyro:     per dimension, (x_ik - x_jk)^2 over the six pairs i < j:
            dim 0 (x = 0, 1, 0, 3): AB 1, AC 0, AD 9, BC 1, BD 4, CD 9 -> 0 1 1 4 9 9; lower median
                   (element (6 - 1) // 2 = 2) = 1;                                   h_0 = 1 / log 5
            dim 1 (y = 0, 0, 2, 4): AB 0, AC 4, AD 16, BC 4, BD 16, CD 4 -> 0 4 4 4 16 16 -> 4;
                                                                                     h_1 = 4 / log 5

Hand-worked example L (four particles on a line): x = 0, 1, 3, 7.
Pairs: 1, 9, 49, 4, 36, 16 -> sorted 1 4 9 16 36 49; the 16 sorted D2 entries:
    0 0 0 0 1 1 4 4 9 9 16 16 36 36 49 49
- liu_wang: (4 + 9) / 2 = 6.5 -> h = 6.5 / log 5        - an2020: element 7 = 4 -> h = 4 / log 5
- blackjax: distances 1 2 3 4 6 7 -> (3 + 4) / 2 = 3.5, squared 12.25 -> h = 12.25 / log 4
- numpyro:  distances 0 0 0 0 1 1 2 2 3 3 4 4 6 6 7 7, midpoint (2 + 3) / 2 = 2.5 -> h = 6.25 / log 4 + eps
- pyro:     d = 1, pairs sorted 1 4 9 16 36 49, element 2 = 9 -> h = 9 / log 5
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from particlesampling import _backend, selection
from particlesampling.bandwidths import (
    DEFAULT_BANDWIDTH,
    MEDIAN_CONVENTIONS,
    BandwidthRule,
    Fixed,
    MaxKSD,
    Median,
    Scaled,
    get_bandwidth,
)
from particlesampling.stein import stein_direction, stein_direction_with_info

P = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
# D2 of P written out from the pair list in the module docstring (A, B, C, D)
P_D2 = np.array(
    [
        [0.0, 1.0, 4.0, 25.0],
        [1.0, 0.0, 5.0, 20.0],
        [4.0, 5.0, 0.0, 13.0],
        [25.0, 20.0, 13.0, 0.0],
    ]
)
P_EXPECTED = {
    "liu_wang": 4.5 / math.log(5),
    "an2020": 4.0 / math.log(5),
    "blackjax": (4.5 + math.sqrt(65.0) / 2.0) / math.log(4),
    "numpyro": (2.25 + math.sqrt(5.0)) / math.log(4),  # + the dtype's eps, added in _expected
    "pyro": np.array([1.0 / math.log(5), 4.0 / math.log(5)]),
}

L = np.array([[0.0], [1.0], [3.0], [7.0]])
L_D2 = np.array(
    [
        [0.0, 1.0, 9.0, 49.0],
        [1.0, 0.0, 4.0, 36.0],
        [9.0, 4.0, 0.0, 16.0],
        [49.0, 36.0, 16.0, 0.0],
    ]
)
L_EXPECTED = {
    "liu_wang": 6.5 / math.log(5),
    "an2020": 4.0 / math.log(5),
    "blackjax": 12.25 / math.log(4),
    "numpyro": 6.25 / math.log(4),  # + eps
    "pyro": np.array([9.0 / math.log(5)]),
}

# accepted spellings of each convention: case and "-" are free; "pymc" is PyMC's name for Liu & Wang's rule
ALIASES = {
    "pymc": "liu_wang",
    "liu-wang": "liu_wang",
    "LIU_WANG": "liu_wang",
    "BlackJAX": "blackjax",
    "NumPyro": "numpyro",
    "Pyro": "pyro",
}


def _expected(table, convention, eps):
    """Hand-worked value; NumPyro adds the dtype's machine epsilon."""
    return table[convention] + (eps if convention == "numpyro" else 0.0)


def _rtol(b):
    return 1e-6 if b.dtype_name == "float32" else 1e-13


def _check_h(b, h, expected, strict=True):
    expected = np.asarray(expected, dtype=np.float64)
    assert (b.is_native(h) if strict else _is_namespace_array(b, h)), type(h)
    assert tuple(h.shape) == expected.shape
    assert b.dtype_of(h) == b.dtype_name
    assert b.device_of(h) == b.device
    np.testing.assert_allclose(b.to_numpy(h).astype(np.float64), expected, rtol=_rtol(b), atol=0)


def _is_namespace_array(b, h):
    """A 0-d NumPy result may be a NumPy scalar (np.float32); it still belongs to NumPy."""
    return b.is_native(h) or (b.name == "numpy" and isinstance(h, np.generic))


@pytest.mark.parametrize("example", ["P", "L"])
@pytest.mark.parametrize("convention", MEDIAN_CONVENTIONS)
def test_median_conventions_hand_worked(xp_backend, convention, example):
    x, d2, expected = (P, P_D2, P_EXPECTED) if example == "P" else (L, L_D2, L_EXPECTED)
    h = Median(convention)(xp_backend.asarray(x), xp_backend.asarray(d2))
    _check_h(xp_backend, h, _expected(expected, convention, xp_backend.eps))


@pytest.mark.parametrize("convention", MEDIAN_CONVENTIONS)
def test_median_conventions_through_stein_direction(xp_backend, convention):
    """The same numbers when the rule is picked by name and D2 is computed inside."""
    _, info = stein_direction_with_info(xp_backend.asarray(P), xp_backend.asarray(-P), bandwidth=convention)
    _check_h(xp_backend, info.bandwidth, _expected(P_EXPECTED, convention, xp_backend.eps))


@pytest.mark.parametrize("alias, canonical", list(ALIASES.items()))
def test_aliases_resolve(alias, canonical):
    rule = get_bandwidth(alias)
    assert isinstance(rule, Median) and rule.convention == canonical
    assert Median(alias).convention == canonical
    np.testing.assert_allclose(rule(P, P_D2), _expected(P_EXPECTED, canonical, 2.0**-52), rtol=1e-13)


def test_default_is_liu_wang():
    assert DEFAULT_BANDWIDTH == "liu_wang"
    np.testing.assert_allclose(get_bandwidth(None)(P, P_D2), 4.5 / math.log(5), rtol=1e-13)
    np.testing.assert_allclose(Median()(P, P_D2), 4.5 / math.log(5), rtol=1e-13)
    _, info = stein_direction_with_info(P, -P)
    np.testing.assert_allclose(info.bandwidth, 4.5 / math.log(5), rtol=1e-13)


@pytest.mark.parametrize("n", [7, 8])
@pytest.mark.parametrize("convention", MEDIAN_CONVENTIONS)
def test_median_conventions_random_data_vs_numpy(xp_backend, convention, n, rng):
    """Random particles (n^2 odd and even, pair counts odd and even) against numpy.median / sort."""
    x64 = rng.standard_normal((n, 3))
    xr = xp_backend.cast_np(x64)
    diff = xr[:, None, :] - xr[None, :, :]
    d2 = np.sum(diff**2, axis=-1)
    iu = np.triu_indices(n, k=1)
    if convention == "liu_wang":
        expected = np.median(d2) / math.log(n + 1)
    elif convention == "an2020":
        expected = np.sort(d2.ravel())[(n * n - 1) // 2] / math.log(n + 1)
    elif convention == "blackjax":
        expected = np.median(np.sqrt(d2[iu])) ** 2 / math.log(n)
    elif convention == "numpyro":
        expected = np.median(np.sqrt(d2)) ** 2 / math.log(n) + xp_backend.eps
    else:
        per_dim = diff**2  # (n, n, d)
        npairs = len(iu[0])
        expected = np.array([np.sort(per_dim[..., k][iu])[(npairs - 1) // 2] for k in range(3)]) / math.log(n + 1)
    x = xp_backend.asarray(x64)
    h = Median(convention)(x, _backend.sqdist(x))
    tol = 2e-5 if xp_backend.dtype_name == "float32" else 1e-12
    np.testing.assert_allclose(xp_backend.to_numpy(h).astype(np.float64), expected, rtol=tol)
    assert xp_backend.dtype_of(h) == xp_backend.dtype_name


# ---------------------------------------------------------------------------------------------
# n = 1, n = 2, coincident particles
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("convention", MEDIAN_CONVENTIONS)
def test_single_particle_h_is_one_and_phi_is_score(xp_backend, convention):
    x = xp_backend.asarray([[0.3, -1.2, 2.0]])
    s = xp_backend.asarray([[1.5, 0.25, -3.0]])
    h = Median(convention)(x, xp_backend.asarray([[0.0]]))
    _check_h(xp_backend, h, np.ones(3) if convention == "pyro" else 1.0)
    phi = stein_direction(x, s, bandwidth=convention)
    # n = 1, RBF: K = [[exp(0)]] = [[1]], R = 0, so phi = S exactly
    np.testing.assert_array_equal(xp_backend.to_numpy(phi), xp_backend.cast_np([[1.5, 0.25, -3.0]]))


def test_two_particles_hand_worked(xp_backend):
    """x0 = (0, 0), x1 = (3, 4): D2 sorted (all 4 entries) 0 0 25 25; distances 0 0 5 5; one pair.
    liu_wang (0 + 25) / 2 / log 3; blackjax 5^2 / log 2; numpyro midpoint of distances (0 + 5) / 2
    = 2.5 -> 6.25 / log 2 + eps; pyro per dimension 9 / log 3 and 16 / log 3.
    an2020: the lower median is element 1 = 0, so the rule must fall back to a positive floor."""
    x = xp_backend.asarray([[0.0, 0.0], [3.0, 4.0]])
    d2 = xp_backend.asarray([[0.0, 25.0], [25.0, 0.0]])
    expected = {
        "liu_wang": 12.5 / math.log(3),
        "blackjax": 25.0 / math.log(2),
        "numpyro": 6.25 / math.log(2) + xp_backend.eps,
        "pyro": np.array([9.0, 16.0]) / math.log(3),
    }
    for conv, val in expected.items():
        _check_h(xp_backend, Median(conv)(x, d2), val)
    h = xp_backend.to_numpy(Median("an2020")(x, d2))
    assert np.isfinite(h) and 0.0 < h <= 25.0
    s = xp_backend.asarray([[1.0, -1.0], [0.5, 2.0]])
    for conv in MEDIAN_CONVENTIONS:
        phi = xp_backend.to_numpy(stein_direction(x, s, bandwidth=conv))
        assert np.all(np.isfinite(phi)), conv


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
@pytest.mark.parametrize("convention", MEDIAN_CONVENTIONS)
def test_all_coincident_particles(xp_backend, convention, kernel):
    """All four particles at (1, 2): D2 = 0, so h must still be finite and > 0; with any h, K is the
    all-ones matrix (times k(0) = 1 for RBF and IMQ c = 1) and R = 0, so phi_i = mean_j s_j."""
    x = xp_backend.asarray(np.tile([1.0, 2.0], (4, 1)))
    s_np = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0], [-1.0, 4.0]])
    h = xp_backend.to_numpy(Median(convention)(x, xp_backend.asarray(np.zeros((4, 4)))))
    assert np.all(np.isfinite(h)) and np.all(h > 0)
    phi = stein_direction(x, xp_backend.asarray(s_np), kernel=kernel, bandwidth=convention)
    expected = np.tile(s_np.mean(axis=0), (4, 1))  # (2, 1)/... = (0.5, 1.0)
    np.testing.assert_allclose(xp_backend.to_numpy(phi), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("convention", MEDIAN_CONVENTIONS)
def test_mostly_coincident_particles(xp_backend, convention):
    """Three particles at the origin, one at (1, 1): ten of the 16 D2 entries are 0, so several
    medians are 0; h must be finite and > 0 and phi finite."""
    x = xp_backend.asarray([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    s = xp_backend.asarray([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0], [-1.0, 4.0]])
    _, info = stein_direction_with_info(x, s, bandwidth=convention)
    h = xp_backend.to_numpy(info.bandwidth)
    assert np.all(np.isfinite(h)) and np.all(h > 0)
    phi, _ = stein_direction_with_info(x, s, bandwidth=convention)
    assert np.all(np.isfinite(xp_backend.to_numpy(phi)))


# ---------------------------------------------------------------------------------------------
# Fixed, Scaled, get_bandwidth
# ---------------------------------------------------------------------------------------------


def test_fixed(xp_backend):
    x = xp_backend.asarray(P)
    d2 = xp_backend.asarray(P_D2)
    _check_h(xp_backend, Fixed(2.5)(x, d2), 2.5)
    _check_h(xp_backend, Fixed(3)(x, d2), 3.0)
    _check_h(xp_backend, Fixed([0.5, 4.0])(x, d2), [0.5, 4.0])
    _check_h(xp_backend, Fixed((0.5, 4.0))(x, d2), [0.5, 4.0])
    _check_h(xp_backend, get_bandwidth(0.75)(x, d2), 0.75)
    _check_h(xp_backend, get_bandwidth([1.0, 2.0])(x, d2), [1.0, 2.0])
    with pytest.raises(ValueError, match="expected 2 per-dimension bandwidths, received 3"):
        Fixed([1.0, 2.0, 3.0])(x, d2)


def test_fixed_bandwidth_is_used_by_stein_direction():
    """Fixed h = 2 on two particles 0 and 1 (d = 1), scores 0: K01 = exp(-1/2),
    R_0 = grad_{x1} k(x1, x0) = -K01 * 2 (1 - 0) / 2 = -exp(-1/2), phi = R / 2."""
    x = np.array([[0.0], [1.0]])
    phi = stein_direction(x, np.zeros_like(x), bandwidth=2.0)
    e = math.exp(-0.5)
    np.testing.assert_allclose(phi, [[-e / 2], [e / 2]], rtol=1e-14)


def test_scaled(xp_backend):
    x = xp_backend.asarray(P)
    d2 = xp_backend.asarray(P_D2)
    # (a NumPy scalar is accepted here; the 0-d ndarray contract is checked separately below)
    _check_h(xp_backend, Scaled("an2020", 3.0)(x, d2), 3.0 * 4.0 / math.log(5), strict=False)
    _check_h(xp_backend, Scaled("pyro", 0.5)(x, d2), 0.5 * P_EXPECTED["pyro"], strict=False)
    _check_h(xp_backend, Scaled(2.0, 2)(x, d2), 4.0, strict=False)
    _check_h(xp_backend, Scaled(Median("blackjax"), 0.1)(x, d2), 0.1 * P_EXPECTED["blackjax"], strict=False)
    _check_h(xp_backend, Scaled()(x, d2), P_EXPECTED["liu_wang"], strict=False)  # default rule, factor 1


def test_scaled_numpy_returns_0d_ndarray():
    h = Scaled("an2020", 3.0)(P, P_D2)
    assert isinstance(h, np.ndarray) and h.shape == ()


@pytest.mark.parametrize("factor", [0.0, -1.0, float("nan"), float("inf"), True, "2"])
def test_scaled_rejects_bad_factor(factor):
    with pytest.raises(ValueError, match="expected a scale factor > 0"):
        Scaled("liu_wang", factor)


def test_get_bandwidth_forms():
    rule = Median("numpyro")
    assert get_bandwidth(rule) is rule
    assert isinstance(get_bandwidth(None), Median) and get_bandwidth(None).convention == "liu_wang"
    assert isinstance(get_bandwidth(2.0), Fixed) and get_bandwidth(2.0).h == 2.0
    assert isinstance(get_bandwidth(7), Fixed)
    assert isinstance(get_bandwidth("maxksd"), MaxKSD) and isinstance(get_bandwidth("MaxKSD"), MaxKSD)
    calls = []

    def my_rule(particles, sq, scores=None):
        calls.append((particles, sq, scores))
        return 0.5 * sq[0, 1]

    r = get_bandwidth(my_rule)
    assert isinstance(r, BandwidthRule)
    assert r(P, P_D2) == 0.5  # D2[0, 1] = 1
    assert calls and calls[0][1] is P_D2


@pytest.mark.parametrize("bad", [0.0, 0, -1.0, float("nan"), float("inf"), -float("inf"), [1.0, -2.0], [1.0, float("nan")]])
def test_bad_numeric_bandwidth_raises(bad):
    with pytest.raises(ValueError, match=r"expected a bandwidth h > 0"):
        get_bandwidth(bad)
    with pytest.raises(ValueError, match=r"expected a bandwidth h > 0"):
        Fixed(bad)
    with pytest.raises(ValueError, match=r"expected a bandwidth h > 0"):
        stein_direction(P, -P, bandwidth=bad)


def test_bad_bandwidth_names_and_types():
    with pytest.raises(ValueError, match=r"unknown bandwidth convention 'silverman'.*expected one of.*liu_wang"):
        get_bandwidth("silverman")
    with pytest.raises(ValueError, match="unknown bandwidth convention"):
        Median("mean")
    with pytest.raises(ValueError, match="unknown bandwidth convention"):
        stein_direction(P, -P, bandwidth="scott")
    # one name per convention: the old informal aliases are refused, not silently mapped
    for retired in ("median", "svgd", "repulsive_attention", "max_ksd"):
        with pytest.raises(ValueError, match="unknown bandwidth convention"):
            get_bandwidth(retired)
    with pytest.raises(TypeError, match="received a bool"):
        get_bandwidth(True)
    with pytest.raises(TypeError, match="received a bool"):
        stein_direction(P, -P, bandwidth=False)
    with pytest.raises(ValueError, match="expected a bandwidth h > 0"):
        Fixed(True)
    with pytest.raises(TypeError, match="expected a bandwidth name, a positive number or a BandwidthRule"):
        get_bandwidth(object())
    with pytest.raises(TypeError, match="expected a bandwidth name"):
        get_bandwidth({"h": 1.0})


def test_maxksd_argument_checks():
    with pytest.raises(ValueError, match="expected a non-empty sequence of positive factors"):
        MaxKSD(factors=())
    with pytest.raises(ValueError, match="expected a non-empty sequence of positive factors"):
        MaxKSD(factors=(1.0, -2.0))
    with pytest.raises(ValueError, match="needs the scores"):
        MaxKSD()(P, P_D2)
    assert MaxKSD.needs_scores and get_bandwidth("maxksd").needs_scores
    assert not Median().needs_scores and not Fixed(1.0).needs_scores


def test_maxksd_numpy_returns_0d_ndarray():
    h = MaxKSD()(P, P_D2, -P)
    assert isinstance(h, np.ndarray) and h.shape == ()


def test_get_bandwidth_array(xp_backend):
    """An array h (0-d, or (d,) per dimension) is used as given, in the particles' dtype."""
    x = xp_backend.asarray(P)
    d2 = xp_backend.asarray(P_D2)
    _check_h(xp_backend, get_bandwidth(xp_backend.asarray(1.25))(x, d2), 1.25)
    _check_h(xp_backend, get_bandwidth(xp_backend.asarray([0.5, 3.0]))(x, d2), [0.5, 3.0])
    with pytest.raises(ValueError, match="positive bandwidth"):
        get_bandwidth(xp_backend.asarray(-1.0))(x, d2)
    with pytest.raises(ValueError, match="positive bandwidth"):
        get_bandwidth(xp_backend.asarray([1.0, 0.0]))(x, d2)
    with pytest.raises(ValueError, match=r"expected a 0-d bandwidth or one of shape \(2,\)"):
        get_bandwidth(xp_backend.asarray([1.0, 2.0, 3.0]))(x, d2)
    # through stein_direction: h = 2 on the hand example equals bandwidth=2.0
    phi_a = stein_direction(x, xp_backend.asarray(-P), bandwidth=xp_backend.asarray(2.0))
    phi_f = stein_direction(P, -P, bandwidth=Fixed(2.0))
    xp_backend.assert_close(phi_a, phi_f)


def _ksd2_u_rbf(x, s, h):
    """U-statistic KSD^2 for k = exp(-|x - y|^2 / h), double loop over i != j. With r = x_i - x_j,
    k = exp(-|r|^2/h): grad_y k = 2 r k / h, grad_x k = -2 r k / h, tr grad_x grad_y k =
    k (2 d / h - 4 |r|^2 / h^2), so u_p = k [s_i.s_j + (2/h) s_i.r - (2/h) r.s_j + 2d/h - 4|r|^2/h^2]."""
    n, d = x.shape
    tot = 0.0
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            r = x[i] - x[j]
            r2 = float(r @ r)
            k = math.exp(-r2 / h)
            tot += k * (s[i] @ s[j] + 2 / h * (s[i] @ r) - 2 / h * (r @ s[j]) + 2 * d / h - 4 * r2 / h**2)
    return tot / (n * (n - 1))


@pytest.mark.parametrize("seed", [8, 9, 10])
def test_maxksd_picks_grid_maximiser_of_u_statistic(seed):
    """Documented rule: among factor * h_liu_wang, the h maximising the (unbiased) U-statistic KSD^2
    of particles that are far from the target (spread 3x too wide), against a brute-force loop."""
    rng = np.random.default_rng(seed)
    x = 3.0 * rng.standard_normal((8, 2))
    s = -x
    factors = (0.1, 0.3, 1.0, 3.0, 10.0)
    h0 = np.median(((x[:, None] - x[None]) ** 2).sum(-1)) / math.log(9)
    values = [_ksd2_u_rbf(x, s, f * h0) for f in factors]
    best = factors[int(np.argmax(values))]
    h = MaxKSD(factors=factors)(x, _backend.sqdist(x), s)
    np.testing.assert_allclose(float(h), best * h0, rtol=1e-12)
    _, info = stein_direction_with_info(x, s, bandwidth=MaxKSD(factors=factors))
    np.testing.assert_allclose(float(info.bandwidth), best * h0, rtol=1e-12)


def test_maxksd_does_not_collapse_to_smallest_h_near_convergence():
    """The V-statistic's diagonal grows like 2d/(n h) as h -> 0, so maximising it always picks the
    smallest factor (K = I, no repulsion). The U-statistic has no such term: on exact samples from
    the target (200 draws of N(0, I_2), score -x) the rule must not sit at the smallest factor for
    most seeds (the V-statistic would for every seed)."""
    factors = (0.1, 0.3, 1.0, 3.0, 10.0)
    smallest = 0
    for seed in range(10):
        x = np.random.default_rng(100 + seed).standard_normal((200, 2))
        d2 = _backend.sqdist(x)
        h0 = float(Median()(x, d2))
        h = float(MaxKSD(factors=factors)(x, d2, -x))
        smallest += abs(h - 0.1 * h0) < 1e-12 * h0
    assert smallest <= 5


# ---------------------------------------------------------------------------------------------
# _backend median helpers vs numpy.sort
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 10, 101, (6, 7)])
def test_median_helpers_vs_numpy_sort(xp_backend, size, rng):
    v64 = rng.standard_normal(size)
    # add ties: repeat some values
    flat = v64.reshape(-1)
    if flat.size > 3:
        flat[: flat.size // 3] = flat[flat.size // 3 : 2 * (flat.size // 3)]
    vr = xp_backend.cast_np(v64)
    srt = np.sort(vr.reshape(-1))
    n = srt.size
    v = xp_backend.asarray(v64)
    lo = selection.lower_median(v)
    hi = selection.upper_median(v)
    mid = selection.midpoint_median(v)
    for got in (lo, hi, mid):
        assert _is_namespace_array(xp_backend, got), type(got)
        assert tuple(got.shape) == ()
        assert xp_backend.dtype_of(got) == xp_backend.dtype_name
    assert float(xp_backend.to_numpy(lo)) == srt[(n - 1) // 2]
    assert float(xp_backend.to_numpy(hi)) == srt[n // 2]
    np.testing.assert_allclose(float(xp_backend.to_numpy(mid)), np.median(vr), rtol=1e-7 if xp_backend.dtype_name == "float32" else 1e-15)
    ks = sorted({0, n - 1, (n - 1) // 2, n // 2, n // 3})
    got = selection.order_statistics(v, ks)
    assert [float(xp_backend.to_numpy(g)) for g in got] == [srt[k] for k in ks]
    # repeated and unsorted ks come back in the order asked
    ks2 = [n - 1, 0, n - 1]
    assert [float(xp_backend.to_numpy(g)) for g in selection.order_statistics(v, ks2)] == [srt[k] for k in ks2]


def test_median_helpers_hand_worked():
    """1, 5, 2, 8, 3, 3: sorted 1 2 3 3 5 8 -> lower (element 2) 3, upper (element 3) 3, midpoint 3;
    1, 5, 2, 8: sorted 1 2 5 8 -> lower 2, upper 5, midpoint 3.5."""
    v = np.array([1.0, 5.0, 2.0, 8.0, 3.0, 3.0])
    assert float(selection.lower_median(v)) == 3.0
    assert float(selection.upper_median(v)) == 3.0
    assert float(selection.midpoint_median(v)) == 3.0
    w = np.array([1.0, 5.0, 2.0, 8.0])
    assert float(selection.lower_median(w)) == 2.0
    assert float(selection.upper_median(w)) == 5.0
    assert float(selection.midpoint_median(w)) == 3.5


def test_order_statistics_errors(xp_backend):
    with pytest.raises(ValueError, match="expected a non-empty array"):
        selection.order_statistics(xp_backend.asarray(np.zeros(0)), [0])
    with pytest.raises(ValueError, match=r"expected order statistics in \[0, 3\)"):
        selection.order_statistics(xp_backend.asarray(np.zeros(3)), [3])
    with pytest.raises(ValueError, match=r"expected order statistics in \[0, 3\)"):
        selection.order_statistics(xp_backend.asarray(np.zeros(3)), [-1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_order_statistics_bracketing_path_matches_sort(dtype):
    """Arrays of >= 8 * BRACKET_SAMPLE entries take the sampled-bracket path: exact, in the input dtype."""
    v = np.random.default_rng(11).random(8 * selection.BRACKET_SAMPLE + 1001).astype(dtype)
    ks = [0, 1, v.size // 2 - 1, v.size // 2, v.size - 1]
    got = selection.order_statistics(v, ks)
    want = np.sort(v)[ks]
    for g, w in zip(got, want):
        assert g.dtype == dtype and g == w
    assert selection.midpoint_median(v) == np.median(v).astype(dtype)


# --------------------------------------------------------------------------------------------------
# what a rule reads of D2 (BandwidthRule.reads): packed on the CPU, blocked, or refused
# --------------------------------------------------------------------------------------------------


class _QuantileRule(BandwidthRule):
    """A user's rule: h = the 30 % quantile of all n^2 entries of D2 (lower), from order statistics."""

    reads = "order_statistics"

    def order_statistic_ranks(self, n):
        return [int(0.3 * (n * n - 1))]

    def from_order_statistics(self, xp, values, particles):
        return values[0]

    def __call__(self, particles, sq, scores=None):
        n = particles.shape[-2]
        return selection.symmetric_order_statistics(sq, self.order_statistic_ranks(n))[0]


class _SeesSq(BandwidthRule):
    """Records the type of the sq it received; h = 1."""

    def __init__(self, reads):
        self.reads, self.seen = reads, []

    def __call__(self, particles, sq, scores=None):
        self.seen.append(type(sq).__name__)
        return _backend.namespace(particles).ones((), dtype=particles.dtype)


def test_declared_reads_of_the_built_in_rules():
    assert Median().reads == "order_statistics" and Median("pyro").reads == "upper_triangle"
    assert Fixed(1.0).reads == "nothing" and get_bandwidth(np.ones(())).reads == "nothing"
    assert Scaled("an2020", 2.0).reads == "order_statistics" and Scaled(2.0, 2.0).reads == "nothing"
    assert MaxKSD().reads == "matrix" and get_bandwidth(lambda x, sq, s: 1.0).reads == "matrix"


def test_a_users_order_statistics_rule_is_served_tiled_and_untiled():
    from particlesampling.tiled import tiled_stein_direction_with_info

    x = np.random.default_rng(0).standard_normal((40, 3))
    s = -x
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    expected = np.sort(d2.ravel())[int(0.3 * (40 * 40 - 1))]
    for rule in (_QuantileRule(), Scaled(_QuantileRule(), 3.0)):
        factor = 3.0 if isinstance(rule, Scaled) else 1.0
        untiled = float(stein_direction_with_info(x, s, bandwidth=rule)[1].bandwidth)
        tiled = float(tiled_stein_direction_with_info(x, s, bandwidth=rule, tile=7)[1].bandwidth)
        np.testing.assert_allclose([untiled, tiled], factor * expected, rtol=1e-12)


@pytest.mark.parametrize("reads, packed", [("matrix", False), ("upper_triangle", True), ("nothing", True)])
def test_the_step_packs_d2_only_for_rules_that_declare_they_read_less_than_the_matrix(reads, packed):
    x = np.random.default_rng(1).standard_normal((30, 2))
    rule = _SeesSq(reads)
    stein_direction(x, -x, bandwidth=rule)
    assert rule.seen == ["UpperBlockRows" if packed else "ndarray"]


def test_rules_that_read_more_than_order_statistics_are_refused_by_the_blocked_paths():
    from particlesampling.tiled import tiled_stein_direction

    x = np.random.default_rng(2).standard_normal((10, 2))
    for rule in (_SeesSq("matrix"), _SeesSq("upper_triangle")):
        with pytest.raises(ValueError, match=f"which reads '{rule.reads}'"):
            tiled_stein_direction(x, -x, bandwidth=rule, tile=3)
        assert rule.seen == []
    with pytest.raises(TypeError, match="reads to be one of"):
        stein_direction(x, -x, bandwidth=_SeesSq("all of it"))


def test_a_rule_declaring_order_statistics_without_the_methods_says_so():
    from particlesampling.tiled import tiled_stein_direction

    x = np.random.default_rng(3).standard_normal((10, 2))
    with pytest.raises(NotImplementedError, match="order_statistic_ranks"):
        tiled_stein_direction(x, -x, bandwidth=_SeesSq("order_statistics"), tile=3)
