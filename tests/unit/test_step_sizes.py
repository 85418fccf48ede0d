"""Step-size rules against hand-written reference formulas (particlesampling.step_sizes)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from particlesampling.step_sizes import StepRule, adagrad_momentum, adam, constant, get_step_rule


def _directions(k=4, shape=(5, 3), seed=0):
    rng = np.random.default_rng(seed)
    # different scales per coordinate, and one exactly-zero entry (fudge keeps it finite)
    gs = [rng.standard_normal(shape) * np.array([1e-3, 1.0, 50.0]) for _ in range(k)]
    gs[0][0, 0] = 0.0
    return gs


def _run(rule, gs, convert=lambda a: a):
    state = rule.init(convert(np.zeros_like(gs[0])))
    deltas = []
    for g in gs:
        delta, state = rule.update(convert(g), state)
        deltas.append(delta)
    return deltas, state


def test_constant_matches_lr_times_g():
    gs = _directions()
    deltas, state = _run(constant(0.3), gs)
    for d, g in zip(deltas, gs):
        np.testing.assert_array_equal(d, 0.3 * g)
    assert state.count == len(gs)


def test_constant_schedule_uses_the_step_count():
    gs = _directions()
    sched = lambda t: 1.0 / (t + 1.0)  # noqa: E731
    rule = constant(sched)
    state = rule.init(np.zeros_like(gs[0]))
    for t, g in enumerate(gs):
        assert rule.learning_rate(state) == sched(t)
        delta, state = rule.update(g, state)
        np.testing.assert_allclose(delta, g / (t + 1.0), rtol=1e-15)


@pytest.mark.parametrize("decay,fudge,lr", [(0.9, 1e-6, 1e-3), (0.5, 1e-3, 0.2), (0.0, 1e-6, 1.0)])
def test_adagrad_momentum_reference(decay, fudge, lr):
    gs = _directions()
    deltas, state = _run(adagrad_momentum(lr, decay=decay, fudge=fudge), gs)
    # reference, written out from Liu & Wang's original SVGD code
    v = None
    for t, (g, d) in enumerate(zip(gs, deltas)):
        v = g**2 if t == 0 else decay * v + (1 - decay) * g**2
        ref = lr * g / (fudge + np.sqrt(v))
        np.testing.assert_allclose(d, ref, rtol=1e-13, atol=0)
    np.testing.assert_allclose(state.sq_avg, v, rtol=1e-13)
    assert state.count == len(gs)


def test_adagrad_first_step_is_normalised_direction():
    g = np.array([[3.0, -4.0], [1e-2, 0.0]])
    rule = adagrad_momentum(0.5, fudge=1e-6)
    delta, _ = rule.update(g, rule.init(g))
    # first step: v = g^2, so delta = lr * g / (fudge + |g|) ~ lr * sign(g)
    np.testing.assert_allclose(delta, 0.5 * g / (1e-6 + np.abs(g)), rtol=1e-14)


@pytest.mark.parametrize("b1,b2,eps,lr", [(0.9, 0.999, 1e-8, 1e-2), (0.5, 0.9, 1e-3, 0.3)])
def test_adam_reference(b1, b2, eps, lr):
    gs = _directions()
    deltas, state = _run(adam(lr, b1=b1, b2=b2, eps=eps), gs)
    m = np.zeros_like(gs[0])
    v = np.zeros_like(gs[0])
    for t, (g, d) in enumerate(zip(gs, deltas), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat = m / (1 - b1**t)
        vhat = v / (1 - b2**t)
        np.testing.assert_allclose(d, lr * mhat / (np.sqrt(vhat) + eps), rtol=1e-12, atol=0)
    assert state.count == len(gs)
    np.testing.assert_allclose(state.m, m, rtol=1e-13)
    np.testing.assert_allclose(state.v, v, rtol=1e-13)


def test_adam_first_step_is_about_lr_sign_g():
    g = np.array([[2.0, -0.5]])
    rule = adam(0.1)
    delta, _ = rule.update(g, rule.init(g))
    # bias correction: m_hat = g, v_hat = g^2, so delta = lr g / (|g| + eps)
    np.testing.assert_allclose(delta, 0.1 * np.sign(g), rtol=1e-7)


def test_schedules_for_adaptive_rules():
    gs = _directions()
    sched = lambda t: 0.1 * 0.5**t  # noqa: E731
    d_sched, _ = _run(adagrad_momentum(sched), gs)
    for t, g in enumerate(gs):
        d_fixed, _ = _run(adagrad_momentum(sched(t)), gs[: t + 1])
        np.testing.assert_allclose(d_sched[t], d_fixed[t], rtol=1e-14)
    a_sched, _ = _run(adam(sched), gs)
    for t in range(len(gs)):
        a_fixed, _ = _run(adam(sched(t)), gs[: t + 1])
        np.testing.assert_allclose(a_sched[t], a_fixed[t], rtol=1e-14)


@pytest.mark.parametrize("make", [lambda: constant(0.1), lambda: adagrad_momentum(0.1), lambda: adam(0.1)])
def test_rules_keep_namespace_and_dtype(xp_backend, make):
    rule = make()
    gs = _directions(k=3)
    deltas, state = _run(rule, gs, convert=xp_backend.asarray)
    ref, _ = _run(rule, [xp_backend.cast_np(g) for g in gs])
    for d, r in zip(deltas, ref):
        assert xp_backend.is_native(d)
        assert xp_backend.dtype_of(d) == xp_backend.dtype_name
        rtol = 1e-5 if xp_backend.dtype_name == "float32" else 1e-12
        xp_backend.assert_close(d, r, rtol=rtol)


def test_update_does_not_modify_inputs():
    gs = _directions(k=2)
    for rule in (adagrad_momentum(0.1), adam(0.1)):
        state = rule.init(np.zeros_like(gs[0]))
        _, state = rule.update(gs[0], state)
        snap = {k: np.array(v, copy=True) for k, v in state._asdict().items() if isinstance(v, np.ndarray)}
        g = gs[1].copy()
        rule.update(g, state)
        np.testing.assert_array_equal(g, gs[1])
        for k, v in snap.items():
            np.testing.assert_array_equal(getattr(state, k), v)


def test_get_step_rule_resolution():
    rule = adagrad_momentum(0.2)
    assert get_step_rule(rule) is rule
    assert get_step_rule(0.5).name == "constant"
    assert get_step_rule(0.5).config["lr"] == 0.5
    assert get_step_rule(lambda t: 0.1).name == "constant"
    # plain AdaGrad is another rule: the name does not silently map to AdaGrad-with-momentum
    with pytest.raises(ValueError, match="unknown step-size rule 'adagrad'"):
        get_step_rule("adagrad")
    assert get_step_rule("Adagrad-Momentum", 0.3).config["lr"] == 0.3
    assert get_step_rule("adam", 0.02).config["lr"] == 0.02
    assert get_step_rule("constant", 0.7).config["lr"] == 0.7
    assert isinstance(get_step_rule("adam"), StepRule)


@pytest.mark.parametrize("lr", [0.0, -1e-3, math.nan, math.inf, True, "0.1", None])
def test_bad_learning_rates_raise(lr):
    with pytest.raises(ValueError):
        constant(lr)
    with pytest.raises(ValueError):
        adagrad_momentum(lr)
    with pytest.raises(ValueError):
        adam(lr)


def test_bad_schedule_value_raises_at_update():
    rule = constant(lambda t: 0.1 if t == 0 else -0.1)
    g = np.ones((2, 2))
    _, state = rule.update(g, rule.init(g))
    with pytest.raises(ValueError, match="schedule"):
        rule.update(g, state)
    rule = adam(lambda t: math.nan)
    with pytest.raises(ValueError, match="schedule"):
        rule.update(g, rule.init(g))


@pytest.mark.parametrize("kwargs", [dict(decay=1.0), dict(decay=-0.1), dict(decay=math.nan), dict(fudge=0.0),
                                    dict(fudge=-1e-6)])
def test_bad_adagrad_args(kwargs):
    with pytest.raises(ValueError):
        adagrad_momentum(0.1, **kwargs)


@pytest.mark.parametrize("kwargs", [dict(b1=1.0), dict(b1=-0.5), dict(b2=1.0), dict(b2=math.nan), dict(eps=0.0),
                                    dict(eps=-1.0)])
def test_bad_adam_args(kwargs):
    with pytest.raises(ValueError):
        adam(0.1, **kwargs)


def test_get_step_rule_bad_specs():
    with pytest.raises(ValueError, match="unknown step-size rule"):
        get_step_rule("rmsprop")
    with pytest.raises(TypeError):
        get_step_rule(object())
    with pytest.raises(TypeError):
        get_step_rule([0.1])
    with pytest.raises(ValueError):
        get_step_rule(-0.1)
