"""Counter-based Gaussian noise: one independent stream per particle, reproducible and resumable.

Noise for particle ``i`` at step ``t`` is a pure function of ``(seed, i, t)``: no generator state to
carry, save or share, so a resumed run draws exactly the noise of an uninterrupted one, and
particle ``i``'s noise does not depend on how many other particles there are (or on which process
holds them). The construction is the SplitMix64 finaliser (Steele, Lea & Flood 2014) used as a
hash: ``key_i = mix(mix(seed) ^ mix(i + 1))``, ``key_it = mix(key_i ^ mix(t + 2^62))``,
``bits_itj = mix(key_it + (j + 1) * gamma)``; pairs of 53-bit uniforms become normals by the
Box–Muller transform. The bits are computed with NumPy on the host and moved to the particles'
device once per step (one host-to-device copy, no device-to-host synchronisation).
"""

from __future__ import annotations

import numpy as np

from ._backend import device_of, namespace
from . import validation

__all__ = ["normal_noise", "generator_noise", "uniform_bits", "permutation"]

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO53 = float(2**53)


def _mix(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.uint64, copy=True)
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def _check_seed(seed) -> int:
    return validation.check_int("seed", seed, minimum=0) % (2**64)


def uniform_bits(seed: int, step: int, n: int, m: int, *, offset: int = 0) -> np.ndarray:
    """``(n, m)`` array of uint64 hashes for particles ``offset .. offset + n - 1`` at ``step``."""
    seed = _check_seed(seed)
    if step < 0:
        raise ValueError(f"expected a step >= 0, received {step}")
    with np.errstate(over="ignore"):
        seed_key = _mix(np.array([seed], dtype=np.uint64))
        ids = np.arange(offset + 1, offset + n + 1, dtype=np.uint64)
        key = _mix(seed_key ^ _mix(ids))
        step_key = _mix(np.array([step], dtype=np.uint64) + np.uint64(2**62))
        key = _mix(key ^ step_key)
        j = np.arange(1, m + 1, dtype=np.uint64) * _GAMMA
        return _mix(key[:, None] + j[None, :])


def _unit_interval(bits: np.ndarray) -> np.ndarray:
    """Uniforms in (0, 1] from the top 53 bits."""
    return ((bits >> np.uint64(11)).astype(np.float64) + 1.0) / _TWO53


def normal_noise(seed: int, step: int, like, *, offset: int = 0):
    """Standard normal noise with the shape, namespace, dtype and device of ``like`` (n x d).

    Row ``r`` is particle ``offset + r``'s stream at ``step``.
    """
    xp = namespace(like)
    n, d = like.shape
    half = (d + 1) // 2
    bits = uniform_bits(seed, step, n, 2 * half, offset=offset)
    u1 = _unit_interval(bits[:, :half])
    u2 = _unit_interval(bits[:, half:])
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * np.pi * u2
    z = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)[:, :d]
    return xp.asarray(z, dtype=like.dtype, device=device_of(like))


def permutation(seed: int, step: int, n: int) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` for ``step`` (argsort of hashed keys)."""
    bits = uniform_bits(seed ^ 0x5DEECE66D, step, 1, n)[0]
    return np.argsort(bits, kind="stable")


def generator_noise(seed: int):
    """A fast, *stateful* noise source for the ``noise=`` option of ``spos`` and ``sgld``.

    Returns ``noise(seed_, step, like)`` that draws i.i.d. standard normals shaped like ``like`` from
    one generator seeded with ``seed`` (per device for torch: ``torch.Generator(device).manual_seed``;
    for NumPy arrays ``numpy.random.default_rng``). The ``seed_`` and ``step`` it is passed are
    ignored: the k-th call gets the k-th block of the stream. It draws on the particles' device
    without hashing on the host, which makes it cheaper than :func:`normal_noise` for small
    particle systems where the hash is a visible part of the step; but a run resumed from a saved
    state continues a *new* stream,
    and the noise of particle ``i`` depends on how many particles there are. Same law as
    :func:`normal_noise`, different numbers.
    """
    seed = _check_seed(seed)
    streams: dict = {}

    def noise(_seed, _step, like):
        mod = type(like).__module__.split(".")[0]
        if mod == "torch":
            import torch

            gen = streams.get(like.device)
            if gen is None:
                gen = streams[like.device] = torch.Generator(device=like.device).manual_seed(seed)
            return torch.randn(tuple(like.shape), generator=gen, dtype=like.dtype, device=like.device)
        if isinstance(like, np.ndarray):
            rng = streams.get("numpy")
            if rng is None:
                rng = streams["numpy"] = np.random.default_rng(seed)
            return rng.standard_normal(like.shape).astype(like.dtype, copy=False)
        raise TypeError(f"generator_noise supports torch tensors and NumPy arrays; received {type(like).__name__}")

    noise.__name__ = f"generator_noise({seed})"
    return noise
