"""Circuit distances and the Stein direction on them (particlesampling.circuits).

References are built independently: the d_model x d_model circuits formed explicitly, the kernel
and its gradients by autograd on those explicit matrices, the median by NumPy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import particlesampling as ps
from particlesampling import circuits

torch = pytest.importorskip("torch")


def _heads(m=5, d_model=7, d_head=3, seed=0, dtype=torch.float64):
    """Per-head torch weight rows: W_q, W_k, W_v (d_head x d_model), W_o columns (d_model x d_head),
    and biases b_q, b_k, b_v (d_head)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return dict(wq=r(m, d_head, d_model), wk=r(m, d_head, d_model), wv=r(m, d_head, d_model),
                wo=r(m, d_model, d_head), bq=r(m, d_head), bk=r(m, d_head), bv=r(m, d_head))


def _terms(w):
    """QK circuit W_q^T W_k with biases (augmented input [x; 1]) and OV circuit W_o W_v (+ bias)."""
    aug = lambda wt, b: torch.cat([wt.transpose(1, 2), b[:, None, :]], dim=1)  # (M, d_model + 1, d_head)  # noqa: E731
    return [(aug(w["wq"], w["bq"]), aug(w["wk"], w["bk"])), (w["wo"], aug(w["wv"], w["bv"]))]


def _explicit(w):
    """The same circuits formed as (M, d_model + 1, d_model + 1) and (M, d_model, d_model + 1) matrices."""
    (a1, b1), (a2, b2) = _terms(w)
    return a1 @ b1.transpose(1, 2), a2 @ b2.transpose(1, 2)


def _explicit_sqdist(mats):
    flat = torch.cat([m.reshape(m.shape[0], -1) for m in mats], dim=1)
    return ((flat[:, None, :] - flat[None, :, :]) ** 2).sum(-1)


def test_distances_equal_the_explicit_circuits():
    w = _heads()
    d2 = circuits.circuit_sqdist(_terms(w))
    ref = _explicit_sqdist(_explicit(w))
    torch.testing.assert_close(d2, ref, rtol=1e-10, atol=1e-9)
    assert torch.equal(d2, d2.T) and torch.all(torch.diagonal(d2) == 0)


def test_plain_terms_are_euclidean_and_add_to_products():
    w = _heads(m=4)
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    d2 = circuits.circuit_sqdist(_terms(w) + [x])
    ref = _explicit_sqdist(list(_explicit(w)) + [x])
    torch.testing.assert_close(d2, ref, rtol=1e-10, atol=1e-9)


def test_numpy_namespace_gives_the_same_distances():
    w = _heads(m=4)
    terms = [tuple(f.numpy() for f in t) for t in _terms(w)]
    np.testing.assert_allclose(circuits.circuit_sqdist(terms), circuits.circuit_sqdist(_terms(w)).numpy(),
                               rtol=1e-10, atol=1e-9)


def _random_invertible(m, k, g):
    # well conditioned: identity plus a random matrix of spectral norm < 1/2, in random orientation
    q = torch.linalg.qr(torch.randn(m, k, k, generator=g, dtype=torch.float64))[0]
    return (torch.eye(k, dtype=torch.float64) + 0.4 * q) * torch.exp(torch.randn(m, 1, 1, generator=g, dtype=torch.float64))


def _transformed(w, seed=1):
    """W_q -> R^T W_q, b_q -> R^T b_q, W_k -> R^{-1} W_k, b_k -> R^{-1} b_k; W_v -> S W_v, b_v -> S b_v,
    W_o -> W_o S^{-1}: every head computes the same attention and output."""
    g = torch.Generator().manual_seed(seed)
    m, k = w["wq"].shape[:2]
    r, s = _random_invertible(m, k, g), _random_invertible(m, k, g)
    ri, si = torch.linalg.inv(r), torch.linalg.inv(s)
    return dict(wq=r.transpose(1, 2) @ w["wq"], bq=(r.transpose(1, 2) @ w["bq"][..., None])[..., 0],
                wk=ri @ w["wk"], bk=(ri @ w["bk"][..., None])[..., 0],
                wv=s @ w["wv"], bv=(s @ w["bv"][..., None])[..., 0], wo=w["wo"] @ si)


def _weight_rows(w):
    return torch.cat([w[k].reshape(w[k].shape[0], -1) for k in ("wq", "wk", "wv", "wo", "bq", "bk", "bv")], dim=1)


def test_circuit_kernel_is_invariant_and_the_weight_kernel_is_not():
    w = _heads(m=6)
    w2 = _transformed(w)
    # the transformation really leaves each head's circuits unchanged...
    for c1, c2 in zip(_explicit(w), _explicit(w2)):
        torch.testing.assert_close(c1, c2, rtol=1e-9, atol=1e-9)
    rbf = ps.RBF()
    k_of = lambda d2, h: rbf.value(d2 / h)  # noqa: E731
    g1, g2 = circuits.circuit_inner(_terms(w)), circuits.circuit_inner(_terms(w2))
    h1, h2 = circuits.circuit_bandwidth("liu_wang", g1), circuits.circuit_bandwidth("liu_wang", g2)
    torch.testing.assert_close(h1, h2, rtol=1e-9, atol=0)
    torch.testing.assert_close(k_of(g1.sqdist, h1), k_of(g2.sqdist, h2), rtol=1e-9, atol=1e-12)
    # ...while the raw weights move, and the kernel on them changes by far more than rounding
    x1, x2 = _weight_rows(w), _weight_rows(w2)
    kw1 = rbf.value(ps.sqdist(x1) / ps.get_bandwidth("liu_wang")(x1, ps.sqdist(x1)))
    kw2 = rbf.value(ps.sqdist(x2) / ps.get_bandwidth("liu_wang")(x2, ps.sqdist(x2)))
    assert float((kw1 - kw2).abs().max()) > 1e-2


def test_bandwidth_rules_see_the_distances_unchanged():
    """Each median rule on the circuit distances equals the rule on the explicitly flattened circuits."""
    w = _heads(m=7)
    gram = circuits.circuit_inner(_terms(w))
    flat = torch.cat([c.reshape(c.shape[0], -1) for c in _explicit(w)], dim=1)
    for name in ("liu_wang", "an2020", "blackjax", "numpyro"):
        ref = ps.get_bandwidth(name)(flat, ps.sqdist(flat))
        torch.testing.assert_close(circuits.circuit_bandwidth(name, gram), ref, rtol=1e-9, atol=0)
    # and the NumPy median of the n^2 entries (diagonal zeros included), by hand
    d2 = _explicit_sqdist(_explicit(w)).numpy()
    assert math.isclose(float(circuits.circuit_bandwidth("liu_wang", gram)), np.median(d2) / math.log(8),
                        rel_tol=1e-9)
    emb = circuits.circuit_embedding(gram.inner)
    torch.testing.assert_close(ps.sqdist(emb), gram.sqdist, rtol=1e-8, atol=1e-8)


def test_rules_without_meaning_on_circuits_raise():
    gram = circuits.circuit_inner(_terms(_heads(m=4)))
    with pytest.raises(ValueError, match="needs scores"):
        circuits.circuit_bandwidth("maxksd", gram)
    with pytest.raises(ValueError, match="scalar bandwidth"):
        circuits.circuit_bandwidth("pyro", gram)


def _brute_force_direction(terms, scores, kernel, h, repulsion):
    """phi_i = (1/M) sum_j [k(theta_j, theta_i) S_j + r grad_{theta_j} k(theta_j, theta_i)], the kernel
    evaluated on explicitly formed circuits, each gradient by autograd, pair by pair."""
    m = terms[0][0].shape[0]
    flat_factors = [f for t in terms for f in (t if isinstance(t, tuple) else (t,))]
    flat_scores = [s for t in scores for s in (t if isinstance(t, tuple) else (t,))]

    def circuit(i, factors):
        out, it = [], iter(factors)
        for t in terms:
            if isinstance(t, tuple):
                a, b = next(it), next(it)
                out.append((a @ b.T).reshape(-1))
            else:
                out.append(next(it).reshape(-1))
        return torch.cat(out)

    phi = [torch.zeros_like(f) for f in flat_factors]
    for i in range(m):
        ci = circuit(i, [f[i] for f in flat_factors])
        for j in range(m):
            fj = [f[j].clone().requires_grad_(True) for f in flat_factors]
            k = kernel.value(((circuit(j, fj) - ci) ** 2).sum() / h)
            grads = torch.autograd.grad(k, fj)
            for p, s, gr in zip(phi, flat_scores, grads):
                p[i] += float(k.detach()) * s[j] + repulsion * gr
    return [p / m for p in phi]


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_direction_equals_brute_force_autograd(kernel):
    w = _heads(m=4, d_model=5, d_head=2)
    terms = _terms(w) + [torch.randn(4, 3, dtype=torch.float64)]
    g = torch.Generator().manual_seed(3)
    scores = [tuple(torch.randn(f.shape, generator=g, dtype=torch.float64) for f in t) if isinstance(t, tuple)
              else torch.randn(t.shape, generator=g, dtype=torch.float64) for t in terms]
    h = float(circuits.circuit_bandwidth(None, circuits.circuit_inner(terms)))
    phi, info = circuits.circuit_stein_direction(terms, scores, kernel=kernel, bandwidth=h, repulsion=0.7)
    ref = _brute_force_direction(terms, scores, ps.get_kernel(kernel), h, 0.7)
    got = [f for t in phi for f in (t if isinstance(t, tuple) else (t,))]
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    assert float(info.bandwidth) == pytest.approx(h)


def test_one_particle_direction_is_the_score():
    w = _heads(m=1)
    terms = _terms(w)
    scores = [tuple(torch.ones_like(f) for f in t) for t in terms]
    phi, info = circuits.circuit_stein_direction(terms, scores)
    for t in phi:
        for f in t:
            torch.testing.assert_close(f, torch.ones_like(f))
    assert float(info.mean_kernel) == 1.0


def test_bad_terms_raise():
    a = torch.randn(3, 4, 2)
    with pytest.raises(ValueError, match="share M and r"):
        circuits.circuit_sqdist([(a, torch.randn(3, 4, 3))])
    with pytest.raises(ValueError, match="same number of particles"):
        circuits.circuit_sqdist([(a, a), torch.randn(2, 5)])
    with pytest.raises(TypeError, match="dtype"):
        circuits.circuit_sqdist([(a, a.double())])
    with pytest.raises(ValueError, match="scores"):
        circuits.circuit_stein_direction([(a, a)], [a])
    with pytest.raises(TypeError, match="radial"):
        circuits.circuit_stein_direction([(a, a)], [(a, a)], kernel="linear")
