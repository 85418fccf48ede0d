"""SVGD / SPOS / SGLD init and step (particlesampling.samplers).

The update formulas checked here are those of the sampler modules' docstrings:

* SVGD  x <- x + eps * phi(x)                       (Liu & Wang 2016, eq. 8)
* SPOS  x <- x + eps [phi(x) + s / beta] + sqrt(2 eps / beta) xi   (Zhang et al. 2020, eq. 4)
* SGLD  x <- x + eps s + sqrt(2 eps T) xi
with xi = random.normal_noise(seed, step, x).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from particlesampling import stein_direction
from particlesampling.random import normal_noise
from particlesampling.samplers import (
    SAMPLERS,
    SGLD,
    SPOS,
    SVGD,
    LangevinStepInfo,
    ParticleSampler,
    ParticleState,
    SteinStepInfo,
    get_sampler,
    sgld,
    spos,
    svgd,
)
from particlesampling.step_sizes import ConstantState, adagrad_momentum, adam, constant


def _gauss_score(x):
    """Score of N(mu, diag(var)) with mu = (1, -1, 0.5...), var = (1, 2, 0.5...), any namespace."""
    d = x.shape[1]
    mu = np.resize([1.0, -1.0, 0.5], d)
    var = np.resize([1.0, 2.0, 0.5], d)
    import array_api_compat

    xp = array_api_compat.array_namespace(x)
    dev = array_api_compat.device(x)
    m = xp.asarray(mu, dtype=x.dtype, device=dev)
    v = xp.asarray(var, dtype=x.dtype, device=dev)
    return -(x - m) / v


def _np_gauss_score(x):
    d = x.shape[1]
    return -(x - np.resize([1.0, -1.0, 0.5], d)) / np.resize([1.0, 2.0, 0.5], d)


class CountingScore:
    def __init__(self, fn=_gauss_score):
        self.fn = fn
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return self.fn(x)


@pytest.fixture
def x0(rng):
    return rng.standard_normal((12, 3))


# ---------------------------------------------------------------------------------------------
# exact update formulas


def test_svgd_step_is_x_plus_eps_phi(x0):
    eps = 0.07
    sm = svgd(_gauss_score, eps)
    state = sm.init(x0, seed=4)
    new, info = sm.step(state)
    phi = stein_direction(x0, _np_gauss_score(x0))
    np.testing.assert_allclose(new.particles, x0 + eps * phi, rtol=1e-14, atol=1e-15)
    assert new.step == 1 and new.seed == 4
    assert isinstance(info, SteinStepInfo)
    # two steps: the second uses the moved particles
    new2, _ = sm.step(new)
    x1 = x0 + eps * phi
    np.testing.assert_allclose(new2.particles, x1 + eps * stein_direction(x1, _np_gauss_score(x1)), rtol=1e-13)


def test_svgd_passes_kernel_bandwidth_repulsion(x0):
    sm = svgd(_gauss_score, 0.1, kernel="imq", bandwidth=2.5, repulsion=0.3)
    new, info = sm.step(sm.init(x0))
    phi = stein_direction(x0, _np_gauss_score(x0), kernel="imq", bandwidth=2.5, repulsion=0.3)
    np.testing.assert_allclose(new.particles, x0 + 0.1 * phi, rtol=1e-14, atol=1e-15)
    assert float(info.bandwidth) == 2.5


@pytest.mark.parametrize("beta", [1.0, 0.25, 4.0])
def test_spos_step_formula(x0, beta):
    eps, seed = 0.05, 17
    sm = spos(_gauss_score, eps, beta=beta)
    state = sm.init(x0, seed=seed)
    for t in range(3):
        x = state.particles
        new, _ = sm.step(state)
        s = _np_gauss_score(x)
        xi = normal_noise(seed, t, x)
        expected = x + eps * (stein_direction(x, s) + s / beta) + math.sqrt(2 * eps / beta) * xi
        np.testing.assert_allclose(new.particles, expected, rtol=1e-13, atol=1e-14)
        state = new


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_sgld_step_formula(x0, temperature):
    eps, seed = 0.02, 5
    sm = sgld(_gauss_score, eps, temperature=temperature)
    state = sm.init(x0, seed=seed)
    for t in range(3):
        x = state.particles
        new, info = sm.step(state)
        xi = normal_noise(seed, t, x)
        expected = x + eps * _np_gauss_score(x) + math.sqrt(2 * eps * temperature) * xi
        np.testing.assert_allclose(new.particles, expected, rtol=1e-14, atol=1e-15)
        # SGLD has no kernel: its info has no kernel fields (not NaN placeholders)
        assert isinstance(info, LangevinStepInfo) and not hasattr(info, "bandwidth")
        state = new


def test_spos_with_adaptive_rule_keeps_base_lr_for_noise(x0):
    # documented: the rule preconditions the drift, the noise keeps sqrt(2 lr / beta)
    lr, beta, seed = 0.01, 2.0, 1
    rule = adam(lr)
    sm = spos(_gauss_score, rule, beta=beta)
    new, _ = sm.step(sm.init(x0, seed=seed))
    s = _np_gauss_score(x0)
    drift = stein_direction(x0, s) + s / beta
    # Adam's first step: lr * g / (|g| + eps_adam)
    expected = x0 + lr * drift / (np.abs(drift) + 1e-8) + math.sqrt(2 * lr / beta) * normal_noise(seed, 0, x0)
    np.testing.assert_allclose(new.particles, expected, rtol=1e-12, atol=1e-14)


def test_schedule_step_size_in_samplers(x0):
    sched = lambda t: 0.1 / (1 + t)  # noqa: E731
    sm = sgld(_gauss_score, sched)
    state = sm.init(x0, seed=2)
    for t in range(3):
        x = state.particles
        state, _ = sm.step(state)
        eps = sched(t)
        expected = x + eps * _np_gauss_score(x) + math.sqrt(2 * eps) * normal_noise(2, t, x)
        np.testing.assert_allclose(state.particles, expected, rtol=1e-14, atol=1e-15)


def test_step_info_values(x0):
    sm = svgd(_gauss_score, 0.1, bandwidth=1.5)
    new, info = sm.step(sm.init(x0))
    delta = new.particles - x0
    s = _np_gauss_score(x0)
    np.testing.assert_allclose(float(info.update_norm), np.sqrt(np.mean(np.sum(delta**2, axis=1))), rtol=1e-13)
    np.testing.assert_allclose(float(info.score_norm), np.sqrt(np.mean(np.sum(s**2, axis=1))), rtol=1e-13)
    assert float(info.bandwidth) == 1.5
    # mean off-diagonal RBF kernel value, computed directly
    d2 = np.sum((x0[:, None] - x0[None]) ** 2, axis=-1)
    k = np.exp(-d2 / 1.5)
    n = len(x0)
    np.testing.assert_allclose(float(info.mean_kernel), (k.sum() - n) / (n * (n - 1)), rtol=1e-12)
    assert bool(info.finite)


# ---------------------------------------------------------------------------------------------
# contract: one score evaluation per step, no mutation, namespaces and dtypes


@pytest.mark.parametrize("method,batch_size", [("svgd", None), ("spos", None), ("sgld", None), ("svgd", 4),
                                               ("spos", 4)])
def test_score_called_once_per_step(x0, method, batch_size):
    score = CountingScore()
    opts = {} if batch_size is None else {"batch_size": batch_size}
    sm = get_sampler(method, score, 0.05, **opts)
    state = sm.init(x0)
    assert score.calls == 0
    for k in range(1, 4):
        state, _ = sm.step(state)
        assert score.calls == k


@pytest.mark.parametrize("method,rule", [("svgd", adagrad_momentum(0.1)), ("spos", adam(0.1)),
                                         ("sgld", constant(0.1)), ("spos", constant(0.1))])
def test_step_does_not_modify_input_state(x0, method, rule):
    sm = get_sampler(method, _gauss_score, rule)
    state = sm.init(x0.copy(), seed=1)
    state, _ = sm.step(state)  # a non-trivial step-rule state
    snap_x = state.particles.copy()
    snap_rule = {k: np.array(v, copy=True) for k, v in state.step_state._asdict().items()
                 if isinstance(v, np.ndarray)}
    snap_meta = (state.step, state.seed, state.step_state.count)
    new, _ = sm.step(state)
    np.testing.assert_array_equal(state.particles, snap_x)
    for k, v in snap_rule.items():
        np.testing.assert_array_equal(getattr(state.step_state, k), v)
    assert (state.step, state.seed, state.step_state.count) == snap_meta
    assert new.particles is not state.particles
    # stepping the same state twice gives the same result (pure function of the state)
    again, _ = sm.step(state)
    np.testing.assert_array_equal(again.particles, new.particles)


def test_init_does_not_copy_or_modify(x0):
    sm = svgd(_gauss_score, 0.1)
    snap = x0.copy()
    state = sm.init(x0, seed=3)
    assert isinstance(state, ParticleState)
    assert state.step == 0 and state.seed == 3
    np.testing.assert_array_equal(x0, snap)


@pytest.mark.parametrize("method", ["svgd", "spos", "sgld"])
@pytest.mark.parametrize("rule", ["constant", "adagrad_momentum", "adam"])
def test_namespaces_preserve_type_and_dtype(xp_backend, x0, method, rule):
    from particlesampling.step_sizes import get_step_rule

    sm = get_sampler(method, _gauss_score, get_step_rule(rule, 0.05))
    state = sm.init(xp_backend.asarray(x0), seed=2)
    ref = get_sampler(method, _gauss_score, get_step_rule(rule, 0.05)).init(xp_backend.cast_np(x0), seed=2)
    for _ in range(3):
        state, info = sm.step(state)
        ref, _ = get_sampler(method, _gauss_score, get_step_rule(rule, 0.05)).step(ref)
    x = state.particles
    assert xp_backend.is_native(x)
    assert xp_backend.dtype_of(x) == xp_backend.dtype_name
    assert xp_backend.device_of(x) == "cpu"
    for field in [f for f in info._fields if f != "finite"]:
        v = getattr(info, field)
        # 0-d values of the namespace (NumPy reductions give NumPy scalars, which count)
        assert xp_backend.is_native(v) or (xp_backend.name == "numpy" and isinstance(v, np.generic))
        assert tuple(v.shape) == ()
        assert xp_backend.dtype_of(v) == xp_backend.dtype_name
    # same numbers as float64 NumPy, to the dtype's accuracy (3 steps of O(1) updates)
    rtol = 2e-4 if xp_backend.dtype_name == "float32" else 1e-10
    xp_backend.assert_close(x, ref.particles, rtol=rtol)


def test_float32_stays_float32_numpy_many_steps(x0):
    x = x0.astype(np.float32)
    for method in ("svgd", "spos", "sgld"):
        sm = get_sampler(method, _gauss_score, adagrad_momentum(0.05))
        state = sm.init(x)
        for _ in range(5):
            state, info = sm.step(state)
        assert state.particles.dtype == np.float32
        assert state.step_state.sq_avg.dtype == np.float32


def test_score_of_other_dtype_rejected_by_all_methods(x0):
    x = x0.astype(np.float32)
    for method in ("svgd", "spos", "sgld"):
        sm = get_sampler(method, lambda z: -z.astype(np.float64), 0.05)
        with pytest.raises(TypeError):
            sm.step(sm.init(x))


# ---------------------------------------------------------------------------------------------
# random-batch SVGD


@pytest.mark.parametrize("batch_size", [12, 13, 100])
def test_random_batch_with_full_batch_equals_full_direction(x0, batch_size):
    full = svgd(_gauss_score, 0.1)
    rb = svgd(_gauss_score, 0.1, batch_size=batch_size)
    a, ia = full.step(full.init(x0, seed=1))
    b, ib = rb.step(rb.init(x0, seed=1))
    np.testing.assert_array_equal(a.particles, b.particles)
    assert float(ia.bandwidth) == float(ib.bandwidth)


def _batch_phis(x, batch_size, draws, seed=7):
    """Random-batch directions at the same particles for `draws` different steps (permutations)."""
    sm = svgd(_np_gauss_score, 1.0, bandwidth=1.0, batch_size=batch_size)
    return np.stack([sm.step(ParticleState(x, ConstantState(0), k, seed))[0].particles - x for k in range(draws)])


@pytest.mark.parametrize("n,batch_size", [(12, 4), (10, 3)])
def test_random_batch_direction_is_unbiased(rng, n, batch_size):
    x = rng.standard_normal((n, 2))
    full = stein_direction(x, _np_gauss_score(x), bandwidth=1.0)
    draws = 600
    phis = _batch_phis(x, batch_size, draws)
    # it is random (different permutations give different directions) ...
    assert np.max(np.std(phis, axis=0)) > 1e-3
    # ... and its average approaches the full direction: each entry of the mean is within 5
    # empirical SE (n*d <= 24 entries; a 5 SE excursion has null probability ~6e-7 each).
    mean = phis.mean(axis=0)
    se = phis.std(axis=0, ddof=1) / np.sqrt(draws)
    z = np.abs(mean - full) / np.maximum(se, 1e-300)
    assert np.max(z) < 5.0, f"max |mean - full| / SE = {np.max(z):.2f}"


def test_random_batch_unbiased_with_odd_n_and_batch_two(rng):
    n = 5
    x = rng.standard_normal((n, 2))
    full = stein_direction(x, _np_gauss_score(x), bandwidth=1.0)
    draws = 600
    phis = _batch_phis(x, 2, draws)
    se = phis.std(axis=0, ddof=1) / np.sqrt(draws)
    assert np.max(np.abs(phis.mean(axis=0) - full) / se) < 5.0


def test_random_batch_is_deterministic_per_seed_and_step(x0):
    sm = svgd(_gauss_score, 0.1, batch_size=4)
    a, _ = sm.step(sm.init(x0, seed=3))
    b, _ = sm.step(sm.init(x0, seed=3))
    c, _ = sm.step(sm.init(x0, seed=4))
    np.testing.assert_array_equal(a.particles, b.particles)
    assert not np.array_equal(a.particles, c.particles)


def test_random_batch_spos_formula(x0):
    # SPOS with batches: drift = phi_batch + s / beta, the same batch direction SVGD takes
    eps, beta, seed = 0.05, 2.0, 9
    sv = svgd(_gauss_score, eps, batch_size=4)
    sp = spos(_gauss_score, eps, beta=beta, batch_size=4)
    a, _ = sv.step(sv.init(x0, seed=seed))
    b, _ = sp.step(sp.init(x0, seed=seed))
    phi_b = (a.particles - x0) / eps
    s = _np_gauss_score(x0)
    expected = x0 + eps * (phi_b + s / beta) + math.sqrt(2 * eps / beta) * normal_noise(seed, 0, x0)
    np.testing.assert_allclose(b.particles, expected, rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------------------------------------
# one particle, get_sampler


def test_single_particle_svgd_is_gradient_ascent():
    x = np.array([[0.3, -0.2, 2.0]])
    sm = svgd(_gauss_score, 0.1)
    new, _ = sm.step(sm.init(x))
    # n = 1: phi = k(x, x) s = s
    np.testing.assert_allclose(new.particles, x + 0.1 * _np_gauss_score(x), rtol=1e-14)


def test_get_sampler_by_name():
    assert {"svgd", "spos", "sgld", "annealed_svgd"} <= set(SAMPLERS)
    for name, cls in (("svgd", SVGD), ("SPOS", SPOS), ("Sgld", SGLD)):
        sm = get_sampler(name, _gauss_score, 0.1)
        assert isinstance(sm, ParticleSampler) and type(sm) is cls
        assert sm.name == name.lower()
    assert get_sampler("spos", _gauss_score, 0.1, beta=3.0).beta == 3.0
    # each sampler holds only its own settings
    assert not hasattr(get_sampler("sgld", _gauss_score, 0.1), "kernel")
    assert not hasattr(get_sampler("svgd", _gauss_score, 0.1), "beta")
    assert not hasattr(get_sampler("svgd", _gauss_score, 0.1), "temperature")
    with pytest.raises(TypeError):
        sgld(_gauss_score, 0.1, beta=2.0)


# ---------------------------------------------------------------------------------------------
# bad input


def test_non_finite_initial_particles(x0):
    sm = svgd(_gauss_score, 0.1)
    for bad in (np.nan, np.inf, -np.inf):
        x = x0.copy()
        x[5, 1] = bad
        with pytest.raises(ValueError, match="row 5"):
            sm.init(x)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_particles_must_be_two_dimensional(shape):
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        svgd(_gauss_score, 0.1).init(np.zeros(shape))


@pytest.mark.parametrize("shape", [(0, 2), (3, 0)])
def test_empty_particles(shape):
    with pytest.raises(ValueError, match="n >= 1"):
        svgd(_gauss_score, 0.1).init(np.zeros(shape))


def test_integer_particles_rejected():
    with pytest.raises(TypeError, match="floating"):
        svgd(_gauss_score, 0.1).init(np.zeros((3, 2), dtype=np.int64))


@pytest.mark.parametrize("seed", [-1, 1.5, "0", None, True])
def test_bad_seed(x0, seed):
    with pytest.raises(ValueError, match="seed"):
        svgd(_gauss_score, 0.1).init(x0, seed=seed)


def test_numpy_integer_seed_accepted(x0):
    state = svgd(_gauss_score, 0.1).init(x0, seed=np.int64(3))
    assert state.seed == 3


@pytest.mark.parametrize("method", ["svgd", "spos", "sgld"])
def test_score_wrong_shape(x0, method):
    sm = get_sampler(method, lambda x: x[:, :2], 0.1)
    with pytest.raises(ValueError, match="shape"):
        sm.step(sm.init(x0))
    sm = get_sampler(method, lambda x: x.T, 0.1)
    with pytest.raises(ValueError, match="shape"):
        sm.step(sm.init(x0))


@pytest.mark.parametrize("method", ["svgd", "spos", "sgld"])
def test_score_wrong_array_type(x0, method):
    sm = get_sampler(method, lambda x: (-x).tolist(), 0.1)
    with pytest.raises(TypeError, match="score_fn returned list"):
        sm.step(sm.init(x0))
    torch = pytest.importorskip("torch")
    sm = get_sampler(method, lambda x: torch.as_tensor(-x), 0.1)
    with pytest.raises(TypeError, match="Tensor"):
        sm.step(sm.init(x0))


@pytest.mark.parametrize("step_size", [0.0, -0.1, math.nan, math.inf, True])
@pytest.mark.parametrize("method", ["svgd", "spos", "sgld"])
def test_bad_step_sizes(method, step_size):
    with pytest.raises(ValueError):
        get_sampler(method, _gauss_score, step_size)


@pytest.mark.parametrize("method", ["svgd", "spos", "sgld"])
def test_bad_step_rule_specs(method):
    with pytest.raises(ValueError, match="unknown step-size rule"):
        get_sampler(method, _gauss_score, "sgd")
    with pytest.raises(TypeError):
        get_sampler(method, _gauss_score, object())


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown sampler"):
        get_sampler("hmc", _gauss_score, 0.1)


@pytest.mark.parametrize("factory", [svgd, spos, sgld])
def test_score_fn_must_be_callable(factory):
    with pytest.raises(TypeError, match="callable"):
        factory(np.zeros((3, 2)), 0.1)


@pytest.mark.parametrize("beta", [0.0, -1.0, math.nan, math.inf])
def test_bad_beta(beta):
    with pytest.raises(ValueError, match="beta"):
        spos(_gauss_score, 0.1, beta=beta)


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.nan])
def test_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        sgld(_gauss_score, 0.1, temperature=temperature)


@pytest.mark.parametrize("batch_size", [0, -2, 2.5, True, "4"])
@pytest.mark.parametrize("factory", [svgd, spos])
def test_bad_batch_size(factory, batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        factory(_gauss_score, 0.1, batch_size=batch_size)


@pytest.mark.parametrize("method", ["spos", "sgld"])
def test_noise_option_replaces_the_counter_based_noise(x0, method):
    """``noise=`` is called once per step with (seed, step, particles) and its draw enters the update."""
    calls = []

    def noise(seed, step, like):
        calls.append((seed, step, like.shape))
        return np.full(like.shape, 0.5)

    eps, beta = 0.01, 2.0
    sm = spos(_gauss_score, eps, beta=beta, noise=noise) if method == "spos" else sgld(_gauss_score, eps, noise=noise)
    state = sm.init(x0, seed=4)
    new, _ = sm.step(state)
    new, _ = sm.step(new)
    assert calls == [(4, 0, x0.shape), (4, 1, x0.shape)]
    ref = (spos(_gauss_score, eps, beta=beta) if method == "spos" else sgld(_gauss_score, eps))
    var = 2 * eps / beta if method == "spos" else 2 * eps
    # same drift as the default sampler; only the noise term differs
    r1, _ = ref.step(state)
    expected = r1.particles - math.sqrt(var) * normal_noise(4, 0, x0) + math.sqrt(var) * 0.5
    one, _ = sm.step(state)
    np.testing.assert_allclose(one.particles, expected, rtol=1e-12, atol=1e-14)


def test_noise_option_is_checked(x0):
    with pytest.raises(TypeError, match="noise to be None or a callable"):
        spos(_gauss_score, 0.01, noise=3.0)
    bad = sgld(_gauss_score, 0.01, noise=lambda seed, step, like: np.zeros((like.shape[0], 1)))
    with pytest.raises(TypeError, match=r"noise returned ndarray of shape \(\d+, 1\).*expected ndarray of shape"):
        bad.step(bad.init(x0))
    wrong_dtype = sgld(_gauss_score, 0.01, noise=lambda seed, step, like: np.zeros(like.shape, np.float32))
    with pytest.raises(TypeError, match="dtype float32"):
        wrong_dtype.step(wrong_dtype.init(x0))


def test_noise_on_another_device_is_an_error():
    torch = pytest.importorskip("torch")
    x = torch.zeros((5, 2), dtype=torch.float64)
    sm = sgld(lambda p: -p, 0.01, noise=lambda seed, step, like: torch.zeros(like.shape, dtype=like.dtype, device="meta"))
    with pytest.raises(ValueError, match="noise returned an array on device meta; expected the particles' device cpu"):
        sm.step(sm.init(x))
