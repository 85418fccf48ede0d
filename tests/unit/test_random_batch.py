"""The vectorised random-batch direction equals a straightforward loop over the batches.

The reference below is the direct transcription of the module docstring's formula (one
``stein_terms`` call per batch of ``numpy.array_split``, the previous implementation); the
vectorised one stacks the batches of each size and must agree for every kernel and bandwidth, for
batch counts that divide ``n`` and for remainders, on every backend.
"""

from __future__ import annotations

import numpy as np
import pytest

import particlesampling as ps
from particlesampling import random_batch
from particlesampling.random import permutation
from particlesampling.random_batch import batch_layout, random_batch_direction
from particlesampling.stein_terms import stein_terms


def _loop_reference(x, s, batch_size, seed, step, kernel, bandwidth, repulsion):
    """One batch at a time (NumPy float64): ``phi``, mean bandwidth, mean kernel value."""
    n = x.shape[0]
    perm = permutation(seed, step, n)
    phi = np.zeros_like(x)
    hs, mks = [], []
    for idx in np.array_split(perm, max(n // batch_size, 1)):
        t = stein_terms(x[idx], s[idx], kernel, bandwidth)
        self_term = t.kernel_diagonal[:, None] * s[idx]
        inter = t.driving + repulsion * t.repulsion_term - self_term
        phi[idx] = self_term / n + (n - 1) / (n * (len(idx) - 1)) * inter
        hs.append(np.mean(t.bandwidth))
        mks.append(t.mean_kernel)
    return phi, np.mean(hs), np.mean(mks)


@pytest.mark.parametrize("n,batch_size", [(12, 4), (13, 4), (10, 3), (7, 2), (9, 100), (23, 5)])
@pytest.mark.parametrize("kernel,bandwidth", [("rbf", "liu_wang"), ("rbf", "an2020"), ("imq", "blackjax"),
                                              ("rbf", "pyro"), ("rbf", "maxksd"), ("rff", 0.7), ("linear", None)])
def test_vectorised_equals_loop_over_batches(xp_backend, rng, n, batch_size, kernel, bandwidth):
    x = xp_backend.cast_np(rng.normal(size=(n, 3)))
    s = xp_backend.cast_np(rng.normal(size=(n, 3)))
    phi, h, mk = random_batch_direction(xp_backend.asarray(x), xp_backend.asarray(s), batch_size, seed=5, step=3,
                                        kernel=kernel, bandwidth=bandwidth, repulsion=0.6)
    assert xp_backend.is_native(phi) and tuple(phi.shape) == (n, 3) and tuple(h.shape) == () == tuple(mk.shape)
    ref_phi, ref_h, ref_mk = _loop_reference(x, s, batch_size, 5, 3, kernel, bandwidth, 0.6)
    xp_backend.assert_close(phi, ref_phi)
    xp_backend.assert_close(h, ref_h)
    xp_backend.assert_close(mk, ref_mk)


@pytest.mark.parametrize("n,batch_size", [(12, 4), (13, 4), (14, 4), (2, 2), (5, 7), (1000, 3)])
def test_batch_layout_is_array_split(n, batch_size):
    expected = [len(c) for c in np.array_split(np.arange(n), max(n // batch_size, 1))]
    got = [size for start, count, size in batch_layout(n, batch_size) for _ in range(count)]
    assert got == expected
    starts = [start for start, _, _ in batch_layout(n, batch_size)]
    assert starts[0] == 0 and len(starts) <= 2
    assert all(batch_size <= size <= 2 * batch_size - 1 for size in got) or n < batch_size


def test_no_loop_over_batches(rng, monkeypatch):
    """1,000 particles in batches of 3 (333 batches, one remainder size): two stacked evaluations."""
    calls = []
    monkeypatch.setattr(random_batch, "stein_terms", lambda x, *a, **k: calls.append(tuple(x.shape)) or
                        stein_terms(x, *a, **k))
    x = rng.normal(size=(1000, 2))
    random_batch_direction(x, -x, 3, seed=0, step=0)
    assert calls == [(1, 4, 2), (332, 3, 2)]
    calls.clear()
    random_batch_direction(x, -x, 4, seed=0, step=0)  # 250 batches of 4: one evaluation
    assert calls == [(250, 4, 2)]


def test_sampler_step_uses_the_vectorised_direction(rng):
    x = rng.normal(size=(11, 2))
    sampler = ps.svgd(lambda p: -p, 0.1, batch_size=3, repulsion=0.5)
    state, info = sampler.step(sampler.init(x, seed=4))
    phi, h, mk = _loop_reference(x, -x, 3, 4, 0, None, None, 0.5)
    np.testing.assert_allclose(state.particles, x + 0.1 * phi, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(info.bandwidth, h, rtol=1e-12)
    np.testing.assert_allclose(info.mean_kernel, mk, rtol=1e-12)
