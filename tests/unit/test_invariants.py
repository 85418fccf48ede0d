"""Property-based tests (hypothesis) of the invariants every Stein-type direction shares.

For SVGD, SPOS, annealed SVGD, GFSF, Blob, preconditioned SPOS, matrix-kernel SVGD (constant and mixture preconditioners), projected SVGD and sliced SVGD (fixed and optimised slices; noise set to zero, so that a
step is its drift): permuting the particles permutes the update; translating the particles and
the target together (the scores unchanged) translates the result, with a stationary kernel; one
particle reduces to the (preconditioned) score; NumPy, PyTorch, JAX and array_api_strict agree.
Few examples each, so the suite stays fast.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import particlesampling as ps
from particlesampling._backend import device_of, namespace
from particlesampling.particle_flows import blob_direction, gfsf_direction

#: derandomize: the same examples on every run (a seeded test), so CI never meets a new one by chance
SETTINGS = settings(max_examples=8, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
#: matrix_svgd's floor on the eigenvalues of its preconditioner
RIDGE = 1e-3
RTOL = 1e-9


def _zero_noise(seed, step, like):
    return like * 0.0


def _hess(x):
    return x * 0.0 - 1.0


def _mixture_q(d):
    """The mixture's Q_l = 2 I + 0.5 (all ones) at every anchor (a constant Hessian: the weights w_l still vary)."""
    return 2.0 * np.eye(d) + 0.5


def _mixture_hessian(z):
    xp = namespace(z)
    return z[:, :, None] * 0.0 - xp.asarray(_mixture_q(z.shape[1]), dtype=z.dtype, device=device_of(z))


#: method -> (x, s) -> update (one step of size 1 from x, minus x; the scores are fixed arrays)
def _stepper(make):
    def update(x, s):
        sampler = make(lambda z: s)
        state, _ = sampler.step(sampler.init(x))
        return state.particles - x
    return update


METHODS = {
    "svgd": lambda x, s, **kw: ps.stein_direction(x, s, **kw),
    "spos": _stepper(lambda f: ps.spos(f, 1.0, beta=2.0, noise=_zero_noise)),
    "annealed_svgd": _stepper(lambda f: ps.annealed_svgd(f, 1.0, schedule=lambda t: 0.3)),
    "gfsf": lambda x, s: gfsf_direction(x, s, ridge=1e-2)[0],
    "blob": lambda x, s: blob_direction(x, s)[0],
    "pspos": _stepper(lambda f: ps.pspos(f, 1.0, beta=2.0, damping=0.5, hessian_diagonal_fn=_hess,
                                         noise=_zero_noise)),
    "matrix_svgd": _stepper(lambda f: ps.matrix_svgd(f, 1.0, preconditioner="fisher", ridge=RIDGE)),
    "matrix_svgd_mixture": _stepper(lambda f: ps.matrix_svgd_mixture(f, 1.0, hessian_fn=_mixture_hessian,
                                                                     ridge=RIDGE)),
    "projected_svgd": _stepper(lambda f: ps.projected_svgd(f, 1.0, rank=1)),
    "sliced_svgd": _stepper(lambda f: ps.sliced_svgd(f, 1.0)),  # slices optimised (one Adam update, as published)
    "sliced_svgd_fixed": _stepper(lambda f: ps.sliced_svgd(f, 1.0, slice_updates=0)),
    "sliced_svgd_ascent": _stepper(lambda f: ps.sliced_svgd(f, 1.0, slice_updates=3, slice_step_size=ps.constant(0.1))),
}


def one_particle_update(name, s):
    """What each method's update is for one particle (k(x, x) = 1, no repulsion): the score, scaled."""
    if name == "spos":
        return s + s / 2.0
    if name == "annealed_svgd":
        return 0.3 * s
    if name == "pspos":  # V = s^2 at the first step: G = 1/(0.5 + |s|), Gamma = -s (-1) / (|s| (0.5 + |s|)^2)
        g = 1.0 / (0.5 + np.abs(s))
        return g * (s + s / 2.0) + (s / (np.abs(s) * (0.5 + np.abs(s)) ** 2)) / 2.0
    if name == "matrix_svgd":  # Q = s s^T, eigenvalues floored at RIDGE: s is the eigenvector of |s|^2
        return s / max(float(np.sum(s * s)), RIDGE)
    if name == "matrix_svgd_mixture":  # one anchor, w = 1: Q^-1 s
        return s @ np.linalg.inv(_mixture_q(s.shape[1]))
    return s


def _data(seed, n, d):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(n, d))


sizes = dict(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 7), d=st.integers(1, 3))


@pytest.mark.parametrize("name", sorted(METHODS))
@SETTINGS
@given(**sizes)
def test_permutation_equivariance(name, seed, n, d):
    x, s = _data(seed, n, d)
    perm = np.random.default_rng(seed + 1).permutation(n)
    np.testing.assert_allclose(METHODS[name](x[perm], s[perm]), METHODS[name](x, s)[perm], rtol=RTOL, atol=1e-12)


@pytest.mark.parametrize("name", sorted(METHODS))
@SETTINGS
@given(shift=st.floats(-50, 50, allow_nan=False), **sizes)
def test_translation_invariance(name, seed, n, d, shift):
    x, s = _data(seed, n, d)
    c = shift * np.linspace(1.0, -0.5, d)
    scale = float(np.max(np.abs(METHODS[name](x, s))))
    np.testing.assert_allclose(METHODS[name](x + c, s), METHODS[name](x, s), rtol=1e-7, atol=1e-9 * max(scale, 1.0))


@pytest.mark.parametrize("name", sorted(METHODS))
@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 4))
def test_one_particle_reduces_to_the_score(name, seed, d):
    x, s = _data(seed, 1, d)
    np.testing.assert_allclose(METHODS[name](x, s), one_particle_update(name, s), rtol=RTOL, atol=1e-12)


def _libraries():
    libs = [("numpy", np.asarray, np.asarray)]
    try:
        import torch

        libs.append(("torch", lambda a: torch.as_tensor(a, dtype=torch.float64), lambda a: a.numpy()))
    except ImportError:  # pragma: no cover
        pass
    try:
        import array_api_strict as strict

        libs.append(("array_api_strict", lambda a: strict.asarray(a, dtype=strict.float64), np.from_dlpack))
    except ImportError:  # pragma: no cover
        pass
    return libs


@pytest.mark.parametrize("name", sorted(METHODS))
@settings(max_examples=4, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(**sizes)
def test_libraries_agree(name, seed, n, d):
    x, s = _data(seed, n, d)
    ref = METHODS[name](x, s)
    for lib, to, back in _libraries()[1:]:
        np.testing.assert_allclose(back(METHODS[name](to(x), to(s))), ref, rtol=RTOL, atol=1e-12, err_msg=lib)
    jax = pytest.importorskip("jax")
    with jax.enable_x64(True):
        got = METHODS[name](jax.numpy.asarray(x), jax.numpy.asarray(s))
        np.testing.assert_allclose(np.asarray(got), ref, rtol=RTOL, atol=1e-12, err_msg="jax")
