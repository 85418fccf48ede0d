"""Scores from log-densities: torch.func.grad / jax.grad under vmap against analytic scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

import particlesampling as ps
from particlesampling.log_density import score_from_log_prob

torch = pytest.importorskip("torch")

# a 2-component Gaussian mixture in d = 3 with a full precision matrix: log p and its score by hand
P = np.array([[2.0, 0.4, 0.0], [0.4, 1.0, -0.3], [0.0, -0.3, 0.5]])
MU = np.array([[1.0, -1.0, 0.5], [-2.0, 0.5, 0.0]])
W = np.array([0.3, 0.7])


def analytic_score(x):
    """grad log sum_k w_k N(x; mu_k, P^-1), explicit loops over particles and components (float64)."""
    out = np.zeros_like(x)
    for i, xi in enumerate(x):
        logs = np.array([math.log(W[k]) - 0.5 * (xi - MU[k]) @ P @ (xi - MU[k]) for k in range(2)])
        r = np.exp(logs - logs.max())
        r /= r.sum()
        out[i] = sum(r[k] * (-(P @ (xi - MU[k]))) for k in range(2))
    return out


def torch_log_prob(x):
    p, mu, w = (torch.as_tensor(a, dtype=x.dtype) for a in (P, MU, W))
    r = x - mu  # (2, d)
    return torch.logsumexp(torch.log(w) - 0.5 * torch.sum((r @ p) * r, dim=-1), dim=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_score_matches_analytic(dtype, rng):
    x = rng.normal(size=(7, 3)) * 2
    s = score_from_log_prob(torch_log_prob)(torch.as_tensor(x, dtype=getattr(torch, dtype)))
    assert isinstance(s, torch.Tensor) and s.dtype == getattr(torch, dtype) and s.shape == (7, 3)
    tol = 1e-10 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(s.numpy(), analytic_score(x.astype(dtype).astype(np.float64)), rtol=tol, atol=tol)


def test_jax_score_matches_analytic_eager_and_jitted(rng):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy

    def log_prob(x):
        r = x - jnp.asarray(MU, dtype=x.dtype)
        quad = jnp.sum((r @ jnp.asarray(P, dtype=x.dtype)) * r, axis=-1)
        return jax.scipy.special.logsumexp(jnp.log(jnp.asarray(W, dtype=x.dtype)) - 0.5 * quad)

    x = rng.normal(size=(6, 3))
    with jax.enable_x64(True):
        fn = score_from_log_prob(log_prob)
        xj = jnp.asarray(x, dtype=jnp.float64)
        np.testing.assert_allclose(np.asarray(fn(xj)), analytic_score(x), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(jax.jit(fn)(xj)), analytic_score(x), rtol=1e-10, atol=1e-12)


def test_sampler_with_log_prob_equals_sampler_with_score(rng):
    x0 = torch.as_tensor(rng.normal(size=(9, 3)), dtype=torch.float64)

    def score(x):
        return torch.as_tensor(analytic_score(x.numpy()), dtype=x.dtype)

    for make in (ps.svgd, ps.spos, ps.sgld):
        a = make(log_prob=torch_log_prob, step_size=0.05)
        b = make(score, step_size=0.05)
        sa, sb = a.init(x0, seed=3), b.init(x0, seed=3)
        for _ in range(3):
            sa, _ = a.step(sa)
            sb, _ = b.step(sb)
        np.testing.assert_allclose(sa.particles.numpy(), sb.particles.numpy(), rtol=1e-10, atol=1e-12)


def test_log_prob_of_a_built_in_target_differentiates_to_its_score(rng):
    """The Gaussian target's own log_prob on a (1, d) row, differentiated, gives its analytic score."""
    target = ps.get_target("gaussian")
    x = torch.as_tensor(rng.normal(size=(5, 2)), dtype=torch.float64)
    fn = score_from_log_prob(lambda xi: target.log_prob(xi[None, :])[0])
    np.testing.assert_allclose(fn(x).numpy(), target.score(x).numpy(), rtol=1e-10, atol=1e-12)


def test_numpy_and_strict_refused_with_a_clear_error(rng):
    x = rng.normal(size=(4, 2))
    sampler = ps.svgd(log_prob=lambda xi: -0.5 * (xi * xi).sum(), step_size=0.1)
    with pytest.raises(TypeError, match="needs automatic differentiation.*pass score_fn"):
        sampler.step(sampler.init(x))
    strict = pytest.importorskip("array_api_strict")
    with pytest.raises(TypeError, match="needs automatic differentiation"):
        score_from_log_prob(lambda xi: xi[0])(strict.asarray(x))


def test_bad_arguments():
    with pytest.raises(ValueError, match="either score_fn or log_prob, received both"):
        ps.svgd(lambda x: -x, 0.1, log_prob=lambda x: x.sum())
    with pytest.raises(ValueError, match="received neither"):
        ps.spos(step_size=0.1)
    with pytest.raises(TypeError, match="log_prob to be callable"):
        ps.sgld(log_prob=3.0)
    with pytest.raises(TypeError, match="score_fn to be callable"):
        ps.svgd("not a function")
    fn = score_from_log_prob(lambda xi: xi * 2.0)  # not 0-d
    with pytest.raises((TypeError, RuntimeError), match="0-d"):
        fn(torch.zeros(3, 2))
