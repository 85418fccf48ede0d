"""The core runs on JAX (CPU), eagerly and under ``jax.jit``, with NumPy's results.

The direction (every kernel and bandwidth rule), the kernels, the bandwidth rules, the batched
direction, sampler steps (SVGD, SPOS, SGLD, random batches, all three step rules) and the KSD are
compared with NumPy in float32 and float64, beside NumPy, PyTorch and array_api_strict. Under
``jax.jit`` the settings (kernel, bandwidth, repulsion, step rule) are static, closed over; a
sampler's state holds Python integers (``step``, ``seed``) that choose the counter-based noise and
the random batches on the host, so they are static too (closed over: one trace per step).

What does not run under ``jax.jit`` (the last tests show it): the tiled path (``memory_budget``,
its exact median selection runs on the host), a bandwidth given as a *traced* array (its positivity
check reads the values), learning-rate schedules given as callables (evaluated on the host), and
``run_sampler`` (a host loop, which calls the jitted or eager step). Input checks that read values
(the finiteness check of ``ksd`` and ``init``) are skipped while tracing: non-finite inputs then give
NaN instead of a ValueError.

Float64 is enabled per test with ``jax.enable_x64`` (a context manager), never globally.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particlesampling as ps
from particlesampling.samplers import ParticleState

N, D = 12, 3
KERNELS = ["rbf", "imq", "linear", "rff"]
BANDWIDTHS = {**{c: c for c in ps.MEDIAN_CONVENTIONS}, "maxksd": "maxksd", "fixed": 0.7,
              "per-dim": [0.5, 1.0, 2.0], "scaled": ps.Scaled("blackjax", 3.0)}


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """The JAX dtype of a test; float64 only inside ``jax.enable_x64`` for this test."""
    if request.param == "float64":
        with jax.enable_x64(True):
            yield request.param
    else:
        yield request.param


def _tol(dtype):
    return dict(rtol=1e-10, atol=1e-12) if dtype == "float64" else dict(rtol=3e-4, atol=3e-5)


def _data(dtype, n=N, d=D, seed=0):
    """NumPy float64 data rounded to ``dtype`` (the reference's input) and the JAX arrays."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(dtype).astype(np.float64)
    s = rng.normal(size=(n, d)).astype(dtype).astype(np.float64)
    return x, s, jnp.asarray(x, dtype=dtype), jnp.asarray(s, dtype=dtype)


def _close(got, ref, dtype, msg=""):
    assert isinstance(got, jax.Array), type(got)
    assert str(got.dtype) == dtype, (got.dtype, dtype)
    ref = np.asarray(ref, dtype=np.float64)
    tol = _tol(dtype)
    scale = max(float(np.max(np.abs(ref))) if ref.size else 1.0, 1e-300)
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), ref, rtol=tol["rtol"], atol=tol["atol"] * scale,
                               err_msg=msg)


def test_x64_is_off_outside_the_fixture():
    assert not jax.config.jax_enable_x64


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bandwidth", list(BANDWIDTHS), ids=list(BANDWIDTHS))
def test_direction_eager(dtype, kernel, bandwidth):
    spec = BANDWIDTHS[bandwidth]
    x, s, xj, sj = _data(dtype)
    ref, ref_info = ps.stein_direction_with_info(x, s, kernel, spec, 0.6)
    phi, info = ps.stein_direction_with_info(xj, sj, kernel, spec, 0.6)
    _close(phi, ref, dtype, "eager")
    for field in ps.SteinInfo._fields:
        _close(getattr(info, field), getattr(ref_info, field), dtype, field)


#: every kernel and every bandwidth rule at least once under jit
JIT_CASES = [(k, "liu_wang") for k in KERNELS] + [("rbf", b) for b in BANDWIDTHS if b != "liu_wang"]


@pytest.mark.parametrize("kernel,bandwidth", JIT_CASES, ids=[f"{k}-{b}" for k, b in JIT_CASES])
def test_direction_jit(dtype, kernel, bandwidth):
    spec = BANDWIDTHS[bandwidth]
    x, s, xj, sj = _data(dtype)
    ref, ref_info = ps.stein_direction_with_info(x, s, kernel, spec, 0.6)
    jitted = jax.jit(functools.partial(ps.stein_direction_with_info, kernel=kernel, bandwidth=spec, repulsion=0.6))
    phi, info = jitted(xj, sj)
    _close(phi, ref, dtype, "jit")
    for field in ps.SteinInfo._fields:
        _close(getattr(info, field), getattr(ref_info, field), dtype, field + " (jit)")


@pytest.mark.parametrize("library", ["numpy", "torch", "array_api_strict", "jax"])
def test_same_direction_on_every_library(library):
    """One call, four array libraries (float64), one answer."""
    rng = np.random.default_rng(0)
    x, s = rng.normal(size=(N, D)), rng.normal(size=(N, D))
    ref = ps.stein_direction(x, s, "imq", "an2020", 0.4)
    if library == "numpy":
        got = ps.stein_direction(x, s, "imq", "an2020", 0.4)
    elif library == "torch":
        import torch

        got = ps.stein_direction(torch.as_tensor(x), torch.as_tensor(s), "imq", "an2020", 0.4).numpy()
    elif library == "array_api_strict":
        import array_api_strict as xs

        got = np.from_dlpack(ps.stein_direction(xs.asarray(x), xs.asarray(s), "imq", "an2020", 0.4))
    else:
        with jax.enable_x64(True):
            got = np.asarray(ps.stein_direction(jnp.asarray(x), jnp.asarray(s), "imq", "an2020", 0.4))
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kernel", [ps.RBF(), ps.IMQ(c=0.5, beta=-0.3), ps.Linear(2.0), ps.RandomFeatureRBF(64, seed=2)])
@pytest.mark.parametrize("h", [1.3, [0.5, 1.0, 2.0]])
def test_kernels_eager_and_jit(dtype, kernel, h):
    x, _, xj, _ = _data(dtype)
    k_ref, r_ref = kernel.gram_and_repulsion(x, np.asarray(h))
    for fn in (kernel.gram_and_repulsion, jax.jit(kernel.gram_and_repulsion)):
        k, r = fn(xj, jnp.asarray(h, dtype=dtype))
        _close(k, k_ref, dtype, "K")
        _close(r, r_ref, dtype, "R")


@pytest.mark.parametrize("bandwidth", list(BANDWIDTHS), ids=list(BANDWIDTHS))
def test_bandwidth_rules_eager_and_jit(dtype, bandwidth):
    rule = ps.get_bandwidth(BANDWIDTHS[bandwidth])
    x, s, xj, sj = _data(dtype)
    ref = rule(x, ps.sqdist(x), s)

    def h_of(xa, sa):
        return rule(xa, ps.sqdist(xa), sa)

    _close(h_of(xj, sj), ref, dtype, "eager")
    _close(jax.jit(h_of)(xj, sj), ref, dtype, "jit")


@pytest.mark.parametrize("bandwidth", ["liu_wang", "pyro", "maxksd", 0.9])
def test_batched_direction_eager_and_jit(dtype, bandwidth):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 6, D)).astype(dtype).astype(np.float64)
    s = rng.normal(size=(3, 6, D)).astype(dtype).astype(np.float64)
    ref = ps.stein_direction_batched(x, s, "rbf", bandwidth, 0.8)
    xj, sj = jnp.asarray(x, dtype=dtype), jnp.asarray(s, dtype=dtype)
    _close(ps.stein_direction_batched(xj, sj, "rbf", bandwidth, 0.8), ref, dtype, "eager")
    jitted = jax.jit(functools.partial(ps.stein_direction_batched, kernel="rbf", bandwidth=bandwidth, repulsion=0.8))
    _close(jitted(xj, sj), ref, dtype, "jit")


def _score(x):
    """A Gaussian target's score, in the particles' namespace (mean 1, precision 2)."""
    return 2.0 * (1.0 - x)


def _hessian_rows(x):
    """Hessians ``-2 diag(1 + x^2)`` of a log-density at each row (position-dependent, namespace-generic)."""
    return -_eye_like(x) * (2.0 * (1.0 + x * x))[:, None, :]


def _eye_like(x):
    xp = ps._backend.namespace(x)
    return xp.eye(x.shape[1], dtype=x.dtype)[None, :, :]


def jit_step(sampler):
    """``state -> sampler.step(state)`` under ``jax.jit``: the arrays traced, the state's Python
    integers (step, seed) static (closed over; a jitted function would return them as arrays, so
    they are put back as the integers they are), the settings static."""

    def step(state):
        fn = jax.jit(lambda particles, step_state: sampler.step(ParticleState(particles, step_state, state.step,
                                                                              state.seed)))
        new, info = fn(state.particles, state.step_state)
        return ParticleState(new.particles, new.step_state, state.step + 1, state.seed), info

    return step


SAMPLERS = {
    "svgd": lambda: ps.svgd(_score, 0.05),
    "svgd-adam": lambda: ps.svgd(_score, ps.adam(0.05)),
    "svgd-adagrad": lambda: ps.svgd(_score, ps.adagrad_momentum(0.05)),
    "svgd-imq-batches": lambda: ps.svgd(_score, 0.05, kernel="imq", batch_size=4),
    "spos": lambda: ps.spos(_score, 0.05, beta=2.0),
    "spos-batches": lambda: ps.spos(_score, 0.05, batch_size=5, bandwidth="an2020"),
    "sgld": lambda: ps.sgld(_score, 0.01, temperature=0.5),
    "pspos": lambda: ps.pspos(_score, 0.02, beta=2.0, hessian_diagonal_fn=lambda x: 0.0 * x - 2.0),
    "annealed_svgd": lambda: ps.annealed_svgd(_score, 0.05, schedule=ps.CyclicalAnnealing(6, num_cycles=2, power=2.0)),
    "matrix_svgd_mixture": lambda: ps.matrix_svgd_mixture(_score, 0.05, hessian_fn=_hessian_rows),
    "matrix_svgd_mixture-anchors": lambda: ps.matrix_svgd_mixture(_score, 0.05, anchors=5, average_weight=0.5,
                                                                  hvp_fn=lambda x, v: -2.0 * v * (1.0 + x * x)),
}


#: every sampler in float64, two of them in float32 as well (the direction tests cover both dtypes)
SAMPLER_CASES = [(name, "float64") for name in SAMPLERS] + [("svgd", "float32"), ("spos-batches", "float32")]


@pytest.mark.parametrize("name,dtype_name", SAMPLER_CASES, ids=[f"{n}-{d}" for n, d in SAMPLER_CASES])
def test_sampler_steps_eager_and_jit(name, dtype_name):
    with jax.enable_x64(dtype_name == "float64"):
        _check_sampler_steps(SAMPLERS[name](), dtype_name)


def _check_sampler_steps(sampler, dtype):
    x, _, xj, _ = _data(dtype, n=13)
    ref = sampler.init(x, seed=4)
    eager = sampler.init(xj, seed=4)
    jitted = sampler.init(xj, seed=4)
    step = jit_step(sampler)
    for _ in range(2):
        ref, ref_info = sampler.step(ref)
        eager, eager_info = sampler.step(eager)
        jitted, jit_info = step(jitted)
    _close(eager.particles, ref.particles, dtype, "eager")
    _close(jitted.particles, ref.particles, dtype, "jit")
    for field in ref_info._fields:
        if field != "finite":
            _close(getattr(jit_info, field), getattr(ref_info, field), dtype, field)
    assert bool(jit_info.finite) and int(jitted.step_state.count) == 2 and jitted.step == 2


@pytest.mark.parametrize("kernel,bandwidth", [("imq", 1.0), ("rbf", "liu_wang"), ("imq", [1.0, 2.0, 0.5])])
@pytest.mark.parametrize("statistic", ["u", "v"])
def test_ksd_eager_and_jit(dtype, kernel, bandwidth, statistic):
    x, s, xj, sj = _data(dtype)
    ref = ps.ksd_squared(x, s, kernel, bandwidth, statistic)
    fn = functools.partial(ps.ksd_squared, kernel=kernel, bandwidth=bandwidth, statistic=statistic)
    _close(fn(xj, sj), ref, dtype, "eager")
    _close(jax.jit(fn)(xj, sj), ref, dtype, "jit")
    _close(jax.jit(functools.partial(ps.ksd, kernel=kernel, bandwidth=bandwidth, statistic=statistic))(xj, sj),
           np.sqrt(max(float(ps.ksd_squared(x, s, kernel, bandwidth, "v")), 0.0)) if statistic == "v"
           else ps.ksd(x, s, kernel, bandwidth, statistic), dtype, "ksd")


# --------------------------------------------------------------------------------------------------
# what needs the host, and so runs eagerly only
# --------------------------------------------------------------------------------------------------


def test_tiled_direction_runs_eagerly_not_under_jit():
    x, s, xj, sj = _data("float32", n=40)
    ref = ps.stein_direction(x, s)
    budget = ps.tiled.untiled_bytes(xj) - 1  # just below the untiled footprint: tiled
    _close(ps.stein_direction(xj, sj, memory_budget=budget), ref, "float32", "tiled, eager")
    with pytest.raises(jax.errors.JAXTypeError):
        jax.jit(functools.partial(ps.stein_direction, memory_budget=budget))(xj, sj)


def test_traced_array_bandwidth_is_refused_but_a_closed_over_one_works():
    x, s, xj, sj = _data("float32")
    ref = ps.stein_direction(x, s, bandwidth=np.asarray(0.8))
    h = jnp.asarray(0.8, dtype="float32")
    _close(jax.jit(lambda a, b: ps.stein_direction(a, b, bandwidth=h))(xj, sj), ref, "float32")
    with pytest.raises(TypeError, match="received one traced by jax.jit"):
        jax.jit(lambda a, b, hh: ps.stein_direction(a, b, bandwidth=hh))(xj, sj, h)
    minus = -h
    with pytest.raises(ValueError, match="expected a positive bandwidth array"):
        jax.jit(lambda a, b: ps.stein_direction(a, b, bandwidth=minus))(xj, sj)


def test_finiteness_check_is_skipped_while_tracing():
    _, _, xj, sj = _data("float32")
    bad = xj.at[2, 1].set(jnp.nan)
    with pytest.raises(ValueError, match="non-finite"):
        ps.ksd(bad, sj)
    assert bool(jnp.isnan(jax.jit(ps.ksd)(bad, sj)))
