"""The exact median under JAX without a sort: the radix selection on the device (``jax_radix_select``),
under ``jax.jit``, ``jax.vmap`` over a batch of particle systems and ``jax.grad`` through the direction.

Every expected value comes from ``numpy.sort`` or from a dense reference written here with ``jnp.sort``
(an independent formula: all pairwise differences, the median by sorting, the direction summed
term by term). Float64 is enabled per test with ``jax.enable_x64``, never globally.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particlesampling as ps
from particlesampling.selection import JAX_RADIX_MIN, jax_radix_select, order_statistics

N = 80  # N^2 = 6400 >= JAX_RADIX_MIN: the radix selection serves the median
assert N * N >= JAX_RADIX_MIN


SIZE = 4500  # one size and one set of ranks: one compilation per dtype
KS = (0, 1, 17, SIZE // 2 - 1, SIZE // 2, SIZE - 2, SIZE - 1)


def _arrays(rng):
    yield rng.standard_normal(SIZE)  # negatives and positives
    yield np.r_[rng.standard_normal(SIZE - 5), np.inf, -np.inf, -0.0, 0.0, 0.0]  # infinities, both zeros
    yield rng.integers(0, 3, SIZE).astype(float)  # heavy ties
    yield rng.random(SIZE) * 1e-38  # float32 subnormals
    yield np.exp(rng.standard_normal(SIZE) * 20)  # many orders of magnitude (within float32)


@pytest.mark.parametrize("where", ["auto", "device"])  # on the CPU: the host selection, the radix passes
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_radix_selection_equals_the_sort(dtype, where):
    rng = np.random.default_rng(0)
    with jax.enable_x64(dtype == "float64"):
        for values in _arrays(rng):
            v = values.astype(dtype)
            got = np.asarray(jax_radix_select(jnp.asarray(v), KS, where=where))
            assert got.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(got, np.sort(v)[list(KS)])


@pytest.mark.parametrize("where", ["auto", "device"])
def test_ranks_in_different_bins_take_their_own_passes(where):
    # two ranks whose values differ in the top 16 bits: the shared histogram cannot serve both
    v = np.r_[np.full(3000, 1.0), np.full(3000, 1e10)].astype(np.float32)
    np.random.default_rng(1).shuffle(v)
    got = jax_radix_select(jnp.asarray(v), (2999, 3000), where=where)
    np.testing.assert_array_equal(np.asarray(got), [1.0, 1e10])


@pytest.mark.parametrize("where", ["auto", "device"])
def test_selection_under_jit_and_vmap_equals_the_sort(where):
    v = np.random.default_rng(3).standard_normal((3, SIZE)).astype(np.float32)
    got = jax.jit(jax.vmap(lambda a: jax_radix_select(a, KS, where=where)))(jnp.asarray(v))
    np.testing.assert_array_equal(np.asarray(got), np.sort(v, axis=-1)[:, list(KS)])


def test_selection_place_is_checked():
    with pytest.raises(ValueError, match="where as 'auto' or 'device'"):
        jax_radix_select(jnp.zeros(SIZE), (1,), where="host")


def test_order_statistics_of_jax_arrays_one_and_batched():
    v = np.random.default_rng(2).random((3, 4, 5000)).astype(np.float32)
    got = order_statistics(jnp.asarray(v), [2499, 2500], batch_dims=2)
    ref = np.sort(v, axis=-1)
    for g, k in zip(got, (2499, 2500)):
        assert g.shape == (3, 4)
        np.testing.assert_array_equal(np.asarray(g), ref[..., k])
    flat = order_statistics(jnp.asarray(v[0, 0]), [7, 4000])
    np.testing.assert_array_equal([float(t) for t in flat], ref[0, 0, [7, 4000]])


def _systems(b=3, n=N, d=4, seed=0):
    x = np.random.default_rng(seed).standard_normal((b, n, d)) * np.arange(1, b + 1)[:, None, None]
    return x, -x


def test_default_step_under_jit_matches_numpy():
    x, s = _systems(1)
    with jax.enable_x64(True):
        phi, info = jax.jit(ps.stein_direction_with_info)(jnp.asarray(x[0]), jnp.asarray(s[0]))
        ref, ref_info = ps.stein_direction_with_info(x[0], s[0])
        np.testing.assert_allclose(float(info.bandwidth), float(ref_info.bandwidth), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(phi), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_vmap_over_a_batch_of_particle_systems():
    x, s = _systems(3)
    with jax.enable_x64(True):
        phi = jax.jit(jax.vmap(ps.stein_direction))(jnp.asarray(x), jnp.asarray(s))
        batched = ps.stein_direction_batched(jnp.asarray(x), jnp.asarray(s))
        for b in range(3):
            ref = ps.stein_direction(x[b], s[b])
            np.testing.assert_allclose(np.asarray(phi[b]), ref, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(np.asarray(batched[b]), ref, rtol=1e-10, atol=1e-12)


def _dense_direction(x):
    """SVGD direction for the standard normal (scores -x) with the Liu-Wang median (midpoint median
    of all n^2 entries over log(n + 1)), written out term by term with a full sort."""
    n = x.shape[0]
    diff = x[:, None, :] - x[None, :, :]
    d2 = jnp.sum(diff * diff, axis=-1)
    srt = jnp.sort(d2.reshape(-1))
    h = 0.5 * (srt[n * n // 2 - 1] + srt[n * n // 2]) / np.log(n + 1)
    k = jnp.exp(-d2 / h)
    scores = -x
    repulsion = jnp.sum(k[:, :, None] * diff, axis=1) * (2.0 / h)  # sum_j grad_{x_j} k(x_j, x_i)
    return (k @ scores + repulsion) / n


@pytest.mark.slow
def test_grad_through_the_direction_matches_the_dense_reference():
    x, _ = _systems(1, n=N, d=3, seed=5)
    w = np.random.default_rng(6).standard_normal((N, 3))
    with jax.enable_x64(True):
        xj, wj = jnp.asarray(x[0]), jnp.asarray(w)
        ours = jax.jit(jax.value_and_grad(lambda z: jnp.sum(ps.stein_direction(z, -z) * wj)))(xj)
        ref = jax.value_and_grad(lambda z: jnp.sum(_dense_direction(z) * wj))(xj)
        np.testing.assert_allclose(float(ours[0]), float(ref[0]), rtol=1e-10)
        np.testing.assert_allclose(np.asarray(ours[1]), np.asarray(ref[1]), rtol=1e-7, atol=1e-9)


def _has_buffer_callback() -> bool:
    try:
        from jax.experimental.buffer_callback import buffer_callback  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_buffer_callback(), reason="this JAX has no jax.experimental.buffer_callback")
def test_cpu_host_selection_reads_xla_buffers_in_place():
    # where JAX has buffer_callback the host selection goes through it (no copy of the operand),
    # not silently through the pure_callback fallback
    from particlesampling.selection import _jax_host_values

    v = jnp.zeros(SIZE, dtype=jnp.float32)
    prims = {e.primitive.name for e in jax.make_jaxpr(lambda a: _jax_host_values(a, KS))(v).jaxpr.eqns}
    assert "buffer_callback" in prims and "pure_callback" not in prims
    prims = {e.primitive.name for e in jax.make_jaxpr(lambda a: _jax_host_values(a, KS, callback="pure"))(v).jaxpr.eqns}
    assert "pure_callback" in prims and "buffer_callback" not in prims
    with pytest.raises(ValueError, match="callback as 'buffer' or 'pure'"):
        _jax_host_values(v, KS, callback="host")


@pytest.mark.skipif(not _has_buffer_callback(), reason="this JAX has no jax.experimental.buffer_callback")
def test_a_buffer_callback_that_fails_its_check_falls_back_to_pure_callback(monkeypatch):
    # the experimental API is checked once (trace, compile, run, exact result); where the check
    # fails (an older or changed JAX, here simulated by a callback that raises) the selection goes
    # through pure_callback and stays exact
    from particlesampling import selection

    assert selection.buffer_callback_usable()  # this JAX: the check passes
    selection.buffer_callback_usable.cache_clear()

    def broken(ctx, out, a, *, ks):
        raise RuntimeError("a changed buffer_callback")

    monkeypatch.setattr(selection, "_host_values_into", broken)
    try:
        assert not selection.buffer_callback_usable()
        v = jnp.asarray(np.random.default_rng(3).standard_normal(SIZE).astype(np.float32))
        prims = {e.primitive.name for e in jax.make_jaxpr(lambda a: selection._jax_host_values(a, KS))(v).jaxpr.eqns}
        assert "pure_callback" in prims and "buffer_callback" not in prims
        got = np.asarray(jax.jit(lambda a: selection._jax_host_values(a, KS))(v))
        np.testing.assert_array_equal(got, np.sort(np.asarray(v))[list(KS)])
    finally:
        selection.buffer_callback_usable.cache_clear()


def test_host_selection_through_buffers_and_pure_callback_agree_bit_for_bit():
    # float32 on the CPU: the buffer_callback path (XLA's operand read in place) and the
    # pure_callback path (a copy), under jit, vmap and grad; both equal the sort
    from particlesampling.selection import _jax_select_fn

    rng = np.random.default_rng(7)
    for values in _arrays(rng):
        v = values.astype(np.float32)
        kept = v.copy()
        vj = jnp.asarray(v)
        ref = np.sort(v)[list(KS)]
        for callback in ("buffer", "pure"):
            got = np.asarray(_jax_select_fn("auto", callback)(vj, KS))
            assert got.view(np.int32).tolist() == ref.view(np.int32).tolist()  # -0.0, subnormals: the bits
        np.testing.assert_array_equal(np.asarray(vj), kept)  # the operand is never written

    batch = rng.standard_normal((3, SIZE)).astype(np.float32)
    w = rng.standard_normal(len(KS)).astype(np.float32)
    outs, grads = {}, {}
    for callback in ("buffer", "pure"):
        fn = _jax_select_fn("auto", callback)
        outs[callback] = np.asarray(jax.jit(jax.vmap(lambda a, fn=fn: fn(a, KS)))(jnp.asarray(batch)))
        grads[callback] = np.asarray(jax.jit(jax.grad(lambda a, fn=fn: jnp.sum(fn(a, KS) * w)))(jnp.asarray(batch[0])))
    np.testing.assert_array_equal(outs["buffer"], np.sort(batch, axis=-1)[:, list(KS)])
    np.testing.assert_array_equal(outs["pure"], outs["buffer"])
    # the derivative of an order statistic is a one-hot vector at the entry it selects (no ties here)
    expected = np.zeros(SIZE, dtype=np.float32)
    expected[np.argsort(batch[0], kind="stable")[list(KS)]] = w
    np.testing.assert_array_equal(grads["buffer"], expected)
    np.testing.assert_array_equal(grads["pure"], expected)


@pytest.mark.parametrize("ks", [(-1,), (100,), (5.5,), (True,), (np.float64(3.0),)])
def test_radix_selection_refuses_ranks_that_are_not_integers_in_range(ks):
    # -1 does not mean "the largest" and 5.5 is not truncated to 5: each is a clear ValueError
    v = jnp.arange(100, dtype=jnp.float32)
    with pytest.raises(ValueError, match=r"integer ranks|order statistics in \[0, 100\)"):
        jax_radix_select(v, ks)
    with pytest.raises(ValueError, match=r"integer ranks|order statistics in \[0, 100\)"):
        order_statistics(np.arange(100.0), ks)


def test_radix_selection_of_no_ranks_is_empty_and_of_an_empty_array_is_refused():
    got = jax_radix_select(jnp.arange(10, dtype=jnp.float32), ())
    assert got.shape == (0,) and got.dtype == jnp.float32
    assert order_statistics(np.arange(10.0), ()) == []
    with pytest.raises(ValueError, match="non-empty"):
        jax_radix_select(jnp.zeros((0,), dtype=jnp.float32), (0,))
    # numpy integer ranks are integers
    assert float(jax_radix_select(jnp.arange(10, dtype=jnp.float32), (np.int64(3),))[0]) == 3.0
