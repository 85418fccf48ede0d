"""The pieces of the Stein direction that the untiled, tiled and random-batch paths share.

The direction itself, ``phi = (K S + repulsion R) / n`` (Liu & Wang 2016, eq. 8), is stated in
:mod:`particlesampling.stein`. This module holds the input check, :func:`stein_terms` (``K S``,
``R``, ``diag K`` without the ``1/n``) and :func:`assemble_direction` (``phi`` and its
:class:`SteinInfo`); :mod:`particlesampling.stein` (untiled, one system or a stack),
:mod:`particlesampling.tiled` (row blocks), :mod:`particlesampling.random_batch` (stacked batches) and
:mod:`particlesampling.distributed` (rows over processes) build on them.

Both take one system ``(n, d)`` or a stack ``(B, n, d)`` of independent systems; the stack goes
through the same formulas with batched matrix products, each system with its own bandwidth.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

from ._backend import (
    NonFiniteError,
    batch_shape,
    is_traced,
    to_numpy,
    centred,
    check_same_shape,
    device_of,
    host_view_capable,
    in_place_capable,
    namespace,
    sqdist,
    sqdist_block,
    upper_block_rows,
)
from .bandwidths import get_bandwidth, rule_bandwidth, rule_reads
from .kernels import (
    RBF,
    Kernel,
    bandwidth_for_broadcast,
    get_kernel,
    is_scalar_bandwidth,
    offdiagonal_mean_from_sums,
    rbf_blocked_product,
    rbf_product_columns,
    rbf_terms_from_product,
)

__all__ = ["SteinInfo", "SteinTerms", "check_stein_inputs", "check_finite_inputs", "check_repulsion", "stein_terms", "assemble_direction",
           "squared_norm_total"]


class SteinInfo(NamedTuple):
    """Side information of one evaluation of the Stein direction (0-d arrays, no host sync)."""

    bandwidth: Any  #: h used (0-d, or (d,) per dimension)
    mean_kernel: Any  #: mean off-diagonal kernel value (1 when n = 1)
    driving_norm: Any  #: RMS over particles of |K S / n|_2
    repulsion_norm: Any  #: RMS over particles of |repulsion R / n|_2


class SteinTerms(NamedTuple):
    """Unnormalised pieces of the Stein direction (see :func:`stein_terms`)."""

    driving: Any  #: (n, d) ``K S``
    repulsion_term: Any  #: (n, d) ``R`` (unweighted; the weight is the ``repulsion`` argument)
    kernel_diagonal: Any  #: (n,) ``k(x_i, x_i)``
    bandwidth: Any  #: h used
    mean_kernel: Any  #: mean off-diagonal kernel value (1 when n = 1)


def check_stein_inputs(particles, scores, repulsion, *, batched: bool = False):
    """Check ``particles`` and ``scores`` (same ``(n, d)`` shape, or ``(B, n, d)`` with ``batched``;
    real floating, ``n, d >= 1``, ``B >= 1``) and ``repulsion`` (a finite real number); return the
    namespace. No device synchronisation."""
    xp = namespace(particles, scores)
    shape = tuple(particles.shape)
    want = "(B, n, d)" if batched else "(n, d)"
    if len(shape) != (3 if batched else 2):
        raise ValueError(f"expected particles of shape {want}, received shape {shape}")
    if min(shape) < 1:
        sizes = "B >= 1, n >= 1 and d >= 1" if batched else "n >= 1 and d >= 1"
        raise ValueError(f"expected particles with {sizes}, received shape {shape}")
    if not xp.isdtype(particles.dtype, "real floating"):
        raise TypeError(f"expected particles of a real floating dtype, received {particles.dtype}")
    check_same_shape(particles, scores, "particles", "scores")
    check_repulsion(repulsion)
    return xp


def check_finite_inputs(xp, particles, scores, *, where: str = "the Stein direction") -> None:
    """Raise :class:`~particlesampling.NonFiniteError` naming the offending rows when ``particles``
    or ``scores`` (``(n, d)``, or a stack ``(B, n, d)``: rows named ``(system, row)``) hold NaN or an
    infinity; ``where`` names the caller.

    Cost: one sum over each array and one device synchronisation (a finite total proves every entry
    finite; only a non-finite one, or an overflowing sum, looks at the rows). The directions take
    ``check_finite=False`` to skip it for inputs checked upstream (the samplers, whose run loop
    checks every step). Arrays traced by ``jax.jit`` have no values: the check is skipped there and
    non-finite inputs give NaN (``jax.experimental.checkify`` checks inside a jitted function).
    """
    if is_traced(particles) or is_traced(scores):
        return
    import numpy as np

    with np.errstate(over="ignore", invalid="ignore"):  # inf - inf, or a finite sum that overflows
        if bool(xp.isfinite(xp.sum(particles) + xp.sum(scores))):
            return

    bad = {}
    for name, a in (("particles", particles), ("scores", scores)):
        rows = np.argwhere(~np.all(np.isfinite(to_numpy(a)), axis=-1))
        if rows.shape[0]:
            bad[name] = [tuple(int(t) for t in r) if r.shape[0] > 1 else int(r[0]) for r in rows]
    if not bad:  # finite entries whose sum overflowed
        return
    rows = sorted(set(r for found in bad.values() for r in found))

    def listed(found):
        return ", ".join(str(r) for r in found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")

    what = " and ".join(f"{name} at row{'s' if len(found) > 1 else ''} {listed(found)}"
                        for name, found in bad.items())
    raise NonFiniteError(f"{where}: non-finite {what} (NaN or infinite; rows of the input, "
                         f"{'(system, row) for a stack' if particles.ndim == 3 else '0-based'}); pass "
                         "check_finite=False to skip this check when the inputs are checked upstream",
                         particle=rows[0] if not isinstance(rows[0], tuple) else rows[0][1], rows=rows)


def check_repulsion(repulsion) -> float:
    """The repulsion weight as a float; TypeError unless a finite real number (NumPy scalars included)."""
    if isinstance(repulsion, bool) or not isinstance(repulsion, numbers.Real) or not math.isfinite(repulsion):
        raise TypeError(f"expected repulsion as a finite real number, received {repulsion!r}")
    return float(repulsion)


def _total(xp, a):
    """Sum of all entries of each system's ``(n, m)`` matrix (a 0-d array; ``(B,)`` for a stack)."""
    lead = tuple(a.shape[:-2])
    return xp.sum(a) if not lead else xp.sum(xp.reshape(a, lead + (-1,)), axis=-1)


def _own_sqdist(xp, particles, scores, xc, rule, *, upper_only: bool):
    """``D2`` of one system computed for this step (``xc``: the centred particles). For NumPy and
    torch on the CPU without autograd (neither the particles nor the scores require gradients),
    when everything downstream reads the upper block triangle
    only (``upper_only``: the RBF product; and a rule that does not declare ``reads = "matrix"``,
    :class:`~particlesampling.bandwidths.BandwidthRule`), the blocks below
    it are not even made: the upper block triangle is computed packed, each block of rows contiguous
    (:func:`particlesampling._backend.upper_block_rows`), half the GEMM work and half the memory.
    For the same consumers on the functional path (JAX under ``jax.jit`` above all) the matrix is
    the Gram trick's as rounded, not symmetrised: one pass over the ``n^2`` entries less."""
    if upper_only and rule_reads(rule) != "matrix":
        xx = xp.sum(xc * xc, axis=-1)
        if host_view_capable(particles) and in_place_capable(scores) and particles.ndim == 2:
            return upper_block_rows(xc, xx)
        if not (host_view_capable(particles) or in_place_capable(particles)):
            # the functional path (JAX, torch on other devices or under autograd, array_api_strict):
            # the Gram-trick matrix as the GEMM rounds it, without the pass that makes it exactly
            # symmetric (a transpose of all n^2 entries): the exp and the product read every entry
            # as it is, and order statistics move by at most the rounding (they are 1-Lipschitz)
            return sqdist_block(xp, xc, xx, xc, xx, diagonal_at=0)
    return sqdist(particles, xp=xp)


def stein_terms(particles, scores, kernel=None, bandwidth=None, *, sq=None) -> SteinTerms:
    """``K S``, ``R``, ``diag(K)``, the bandwidth and the mean kernel value, without the ``1/n``.

    ``particles`` and ``scores`` are ``(n, d)``, or a stack ``(B, n, d)`` of independent systems:
    then every field gains the leading axis (``K S`` and ``R`` ``(B, n, d)``, ``diag K`` ``(B, n)``,
    the bandwidth ``(B,)`` or ``(B, d)``, the mean kernel ``(B,)``), each system with its own
    bandwidth, computed by the same formulas with batched matrix products (kernels and rules that
    are not batchable are evaluated system by system).

    ``sq`` may pass a precomputed ``sqdist(particles)`` to share it with other computations of the
    same step (it is then read, never modified). For the RBF kernel with a scalar bandwidth, ``K X``,
    ``K S`` and the row sums of ``K`` come from one product ``K [Xc | 1 | S]``, made block by block
    of rows from ``D2`` (:func:`particlesampling.kernels.rbf_blocked_product`): ``D2`` is turned into
    ``K`` in place when this call computed it, so the step holds one ``n x n`` matrix, not two (on
    the CPU only its upper block triangle, packed: :func:`_own_sqdist`).
    """
    xp = check_stein_inputs(particles, scores, 1.0, batched=particles.ndim == 3)
    kern: Kernel = get_kernel(kernel)
    lead = batch_shape(particles)
    if lead and not kern.batchable:
        parts = [stein_terms(particles[b, ...], scores[b, ...], kern, bandwidth) for b in range(lead[0])]
        return SteinTerms(*(xp.stack([getattr(t, f) for t in parts], axis=0) for f in SteinTerms._fields))
    n = particles.shape[-2]
    own_sq = sq is None
    xc = centred(xp, particles)
    if kern.uses_bandwidth:
        rule = get_bandwidth(bandwidth)
        if sq is None:
            sq = _own_sqdist(xp, particles, scores, xc, rule, upper_only=type(kern) is RBF)
        h = rule_bandwidth(rule, particles, sq, scores)
    else:
        h = xp.ones(lead, dtype=particles.dtype, device=device_of(particles))
    if type(kern) is RBF and is_scalar_bandwidth(h, particles):
        hb = bandwidth_for_broadcast(xp, h, particles)
        # K is made from D2 block by block, in place when D2 is this call's own
        prod, diag = rbf_blocked_product(xp, sq, hb, rbf_product_columns(xp, xc, scores), overwrite=own_sq)
        driving, rep, rowsum = rbf_terms_from_product(prod, xc, hb)
        return SteinTerms(driving, rep, diag, h, offdiagonal_mean_from_sums(
            xp, xp.sum(rowsum, axis=-1), xp.sum(diag, axis=-1), n, like=particles))
    k, r = kern.gram_and_repulsion(particles, h, sq)
    diag = xp.linalg.diagonal(k)
    return SteinTerms(k @ scores, r, diag, h, offdiagonal_mean_from_sums(
        xp, _total(xp, k), xp.sum(diag, axis=-1), n, like=particles))


def squared_norm_total(xp, a):
    """``sum_i |a_i|^2`` over the rows of ``a`` (``(n, d)``; a stack ``(B, n, d)`` gives ``(B,)``)."""
    return xp.sum(xp.sum(a * a, axis=-1), axis=-1)


def assemble_direction(xp, driving, repulsion_term, repulsion: float, bandwidth, mean_kernel, *,
                       n: int | None = None, norm_totals=None):
    """``phi = (K S + repulsion R) / n`` and its :class:`SteinInfo` from the unnormalised terms.

    ``driving`` and ``repulsion_term`` are ``(n, d)`` (or a stack ``(B, n, d)``: then the norms in
    the info are per system). For rows held by several processes (:mod:`particlesampling.distributed`)
    ``n`` is the total number of particles and ``norm_totals`` the pair
    ``(sum_i |(K S)_i|^2, sum_i |R_i|^2)`` over all of them; by default both come from the rows given.
    """
    n = driving.shape[-2] if n is None else int(n)
    phi = (driving + repulsion * repulsion_term) / float(n)
    if norm_totals is None:
        norm_totals = (squared_norm_total(xp, driving), squared_norm_total(xp, repulsion_term))
    info = SteinInfo(
        bandwidth=bandwidth,
        mean_kernel=mean_kernel,
        driving_norm=xp.sqrt(norm_totals[0] / float(n)) / float(n),
        repulsion_norm=abs(repulsion) * xp.sqrt(norm_totals[1] / float(n)) / float(n),
    )
    return phi, info
