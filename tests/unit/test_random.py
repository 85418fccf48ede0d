"""Counter-based per-particle Gaussian noise (particlesampling.random).

Statistical checks use fixed seeds, so each is deterministic; the tolerances are stated in
standard errors of the statistic under the null hypothesis "i.i.d. N(0, 1)".
"""

from __future__ import annotations

import numpy as np
import pytest

from particlesampling.random import normal_noise, permutation, uniform_bits

scipy_stats = pytest.importorskip("scipy.stats")


def _noise(seed, step, n, d, offset=0):
    return normal_noise(seed, step, np.zeros((n, d)), offset=offset)


def test_deterministic_in_seed_step_particle():
    a = _noise(3, 7, 20, 5)
    b = _noise(3, 7, 20, 5)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (20, 5) and a.dtype == np.float64


def test_differs_across_particles_steps_and_seeds():
    base = _noise(3, 7, 20, 5)
    # no two particles share a row
    rows = {tuple(r) for r in base}
    assert len(rows) == 20
    for other in (_noise(3, 8, 20, 5), _noise(4, 7, 20, 5)):
        # independent N(0,1) draws: equal entries would have probability 0
        assert not np.any(other == base)


def test_row_independent_of_number_of_particles():
    small = _noise(11, 2, 5, 4)
    big = _noise(11, 2, 50, 4)
    np.testing.assert_array_equal(small, big[:5])


@pytest.mark.parametrize("offset", [1, 20, 45])
def test_offset_matches_rows_of_a_bigger_draw(offset):
    big = _noise(11, 2, 60, 3)
    part = _noise(11, 2, 10, 3, offset=offset)
    np.testing.assert_array_equal(part, big[offset:offset + 10])


@pytest.mark.parametrize("d", [1, 2, 3, 7])
def test_shapes_odd_and_even_dimension(d):
    z = _noise(0, 0, 6, d)
    assert z.shape == (6, d)
    assert np.all(np.isfinite(z))


def test_namespace_dtype_and_device_follow_like(xp_backend):
    like = xp_backend.asarray(np.zeros((8, 3)))
    z = normal_noise(5, 1, like)
    assert xp_backend.is_native(z)
    assert xp_backend.dtype_of(z) == xp_backend.dtype_name
    assert tuple(z.shape) == (8, 3)
    # the same values as the float64 NumPy draw, rounded to the dtype
    ref = _noise(5, 1, 8, 3)
    np.testing.assert_array_equal(xp_backend.to_numpy(z), ref.astype(xp_backend.np_dtype))


def test_marginal_is_standard_normal():
    # N = 60,000 draws (20,000 particles x 3 coordinates) at one step.
    z = _noise(2024, 0, 20_000, 3).ravel()
    n = z.size
    # mean: SE 1/sqrt(N); variance: SE sqrt(2/N) for N(0,1); allow 4 SE.
    assert abs(z.mean()) < 4.0 / np.sqrt(n)
    assert abs(z.var() - 1.0) < 4.0 * np.sqrt(2.0 / n)
    # fourth moment 3, SE sqrt((E z^8 - 9)/N) = sqrt(96/N)
    assert abs(np.mean(z**4) - 3.0) < 4.0 * np.sqrt(96.0 / n)
    assert scipy_stats.kstest(z, "norm").pvalue > 1e-3


def test_one_particle_stream_over_steps_is_standard_normal():
    # particle 0's stream (d = 2) over 3,000 steps
    z = np.concatenate([_noise(9, t, 1, 2)[0] for t in range(3000)])
    assert scipy_stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(z.mean()) < 4.0 / np.sqrt(z.size)


def test_streams_uncorrelated_across_particles_and_coordinates():
    # T steps x n particles (d = 1): each off-diagonal sample correlation of independent
    # streams is approximately N(0, 1/T). Max over n(n-1)/2 = 190 pairs: 5 SE has a null
    # tail probability of about 190 * 5.7e-7 ~ 1e-4.
    T, n = 2000, 20
    z = np.stack([_noise(1, t, n, 1)[:, 0] for t in range(T)])
    r = np.corrcoef(z, rowvar=False)
    off = r[~np.eye(n, dtype=bool)]
    assert np.max(np.abs(off)) < 5.0 / np.sqrt(T)
    # across coordinates of one particle (Box-Muller pairs cos/sin share a radius)
    w = np.stack([_noise(1, t, 1, 4)[0] for t in range(T)])
    rw = np.corrcoef(w, rowvar=False)
    assert np.max(np.abs(rw[~np.eye(4, dtype=bool)])) < 5.0 / np.sqrt(T)
    # lag-1 autocorrelation of one particle's stream over steps
    s = z[:, 0]
    lag1 = np.corrcoef(s[:-1], s[1:])[0, 1]
    assert abs(lag1) < 4.0 / np.sqrt(T)


def test_bad_seed_and_step_raise():
    with pytest.raises(ValueError, match="seed"):
        _noise(-1, 0, 2, 2)
    with pytest.raises(ValueError, match="seed"):
        _noise(True, 0, 2, 2)
    with pytest.raises(ValueError, match="seed"):
        _noise(1.5, 0, 2, 2)
    with pytest.raises(ValueError, match="step"):
        _noise(0, -1, 2, 2)


def test_uniform_bits_shape_and_dtype():
    b = uniform_bits(1, 2, 4, 6)
    assert b.shape == (4, 6) and b.dtype == np.uint64
    np.testing.assert_array_equal(uniform_bits(1, 2, 2, 6, offset=2), b[2:])


@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_permutation_is_a_valid_permutation(n):
    p = permutation(3, 5, n)
    np.testing.assert_array_equal(np.sort(p), np.arange(n))
    np.testing.assert_array_equal(p, permutation(3, 5, n))


def test_permutation_varies_and_is_uniform():
    n, steps = 5, 3000
    perms = np.stack([permutation(0, t, n) for t in range(steps)])
    assert len({tuple(p) for p in perms}) > 100  # 120 permutations exist
    # where particle 0 lands: uniform over n positions; chi-square test
    pos = np.argmax(perms == 0, axis=1)
    counts = np.bincount(pos, minlength=n)
    assert scipy_stats.chisquare(counts).pvalue > 1e-3
    assert not np.array_equal(permutation(0, 0, 50), permutation(1, 0, 50))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_generator_noise_is_a_seeded_standard_normal_stream(backend):
    from particlesampling.random import generator_noise

    if backend == "torch":
        torch = pytest.importorskip("torch")
        like = torch.zeros((400, 50), dtype=torch.float32)
    else:
        like = np.zeros((400, 50), dtype=np.float32)
    a, b = generator_noise(11), generator_noise(11)
    first, second = a(0, 0, like), a(0, 0, like)  # (seed, step) are ignored: a stream, not a hash
    assert type(first) is type(like) and tuple(first.shape) == (400, 50) and first.dtype == like.dtype
    z = np.asarray(first, dtype=np.float64)
    np.testing.assert_array_equal(z, np.asarray(b(5, 9, like), dtype=np.float64))  # same seed, same stream
    assert not np.array_equal(z, np.asarray(second, dtype=np.float64))
    # 20,000 draws: mean within 4 SE (SE = 1/sqrt(N)), variance within 4 SE (SE = sqrt(2/N))
    n = z.size
    assert abs(z.mean()) < 4 / np.sqrt(n)
    assert abs(z.var() - 1) < 4 * np.sqrt(2 / n)
    assert scipy_stats.kstest(z.ravel(), "norm").pvalue > 1e-3


def test_generator_noise_rejects_other_arrays():
    from particlesampling.random import generator_noise

    with pytest.raises(TypeError, match="supports torch tensors and NumPy arrays; received list"):
        generator_noise(0)(0, 0, [[0.0]])
    with pytest.raises(ValueError, match="expected seed as a non-negative int, received -1"):
        generator_noise(-1)
