"""Sliced SVGD (S-SVGD; Gong, Li & Hernandez-Lobato, ICLR 2021, "Sliced Kernelized Stein
Discrepancy", section 4 and appendix), against SVGD's variance collapse in high dimension.

Each output coordinate ``r`` of the update (the score projected on the basis vector ``e_r``: the
paper's orthogonal basis ``O_r`` is the standard basis) has its own input slice ``g_r`` (a unit
vector), and the kernel only sees the one-dimensional projections ``g_r^T x``:

.. math::

    x_{i,r} \\leftarrow x_{i,r} + \\epsilon\\, \\phi_r(x_i), \\qquad
    \\phi_r(x_i) = \\frac{1}{n} \\sum_j \\Big[ k(g_r^T x_j, g_r^T x_i)\\, s_r(x_j)
        + (e_r^T g_r)\\, \\partial_{1} k(g_r^T x_j, g_r^T x_i) \\Big],

``s_r`` the ``r``-th coordinate of ``grad log p`` and ``partial_1 k`` the derivative in the first
argument (the paper's optimal test function of maxSKSD-g for the pair ``(e_r, g_r)``, its eq. 10,
summed over ``r``). Slice ``r`` is thus the core's one-dimensional Stein direction on
``(X g_r, S e_r)`` with its repulsion weighted by ``g_{r,r}``: the ``d`` slices are one batched
call of :func:`particlesampling.stein_terms.stein_terms`, each slice with its own bandwidth (the
median of its projections by default, as the paper's code does), and the kernel is any of the
core's (``"rbf"``, ``"imq"``, ...). ``O(d n^2)`` time per step against SVGD's ``O(n^2 d)``: the same
order; ``O(d n^2)`` memory for the ``d`` Gram matrices.

The slices here are FIXED: the paper's algorithm initialises ``G`` (rows ``g_r``) to the identity,
the default here, and then moves it by gradient ascent on maxSKSD-g (Adam, a few updates per particle
step); that ascent is not implemented (a user may pass any ``G`` of non-zero rows, normalised to unit
length). With ``G = I`` each coordinate is moved by one-dimensional SVGD on its own score
coordinate, the kernel no longer sees the other ``d - 1`` coordinates, and the marginal variance does
not collapse with ``d`` (the known-answer test at ``d = 50``); the price is that dependence between
coordinates enters only through the scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .._backend import device_of, namespace
from ..step_sizes import get_step_rule
from ..stein_terms import assemble_direction, check_repulsion, check_stein_inputs, stein_terms
from ._common import ParticleState, SteinSampler, check_score_fn

__all__ = ["SlicedSVGD", "sliced_svgd", "sliced_stein_direction"]


def _unit_slices(xp, slices, particles):
    """``G`` with unit rows, in the particles' namespace and dtype; the shape is checked."""
    d = particles.shape[-1]
    if slices is None:
        return xp.eye(d, dtype=particles.dtype, device=device_of(particles))
    if not hasattr(slices, "shape") or tuple(slices.shape) != (d, d):
        raise ValueError(f"expected slices of shape ({d}, {d}) (one slice g_r per coordinate) for particles of "
                         f"shape {tuple(particles.shape)}, received "
                         f"{tuple(slices.shape) if hasattr(slices, 'shape') else type(slices).__name__}")
    g = xp.asarray(slices, dtype=particles.dtype, device=device_of(particles))
    norms = xp.sqrt(xp.sum(g * g, axis=1, keepdims=True))
    return g / norms


def check_slices(slices):
    """``slices`` as a 2-D NumPy-convertible array of finite values with no zero row, or None."""
    if slices is None:
        return None
    try:
        g = np.asarray(slices, dtype=float)
    except (TypeError, ValueError) as err:
        raise TypeError(f"expected slices as a (d, d) array of real numbers, received {type(slices).__name__}") from err
    if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] < 1:
        raise ValueError(f"expected slices as a square (d, d) array, received shape {g.shape}")
    if not np.all(np.isfinite(g)):
        raise ValueError("expected finite slices, received non-finite values in rows "
                         f"{sorted(set(np.nonzero(~np.isfinite(g))[0].tolist()))}")
    zero = np.nonzero(np.linalg.norm(g, axis=1) == 0)[0]
    if zero.size:
        raise ValueError(f"expected every slice g_r non-zero (it is normalised to unit length), received zero rows "
                         f"{zero.tolist()}")
    return g


def sliced_stein_direction(particles, scores, slices=None, kernel=None, bandwidth=None, repulsion: float = 1.0):
    """``phi`` of the module docstring, ``(n, d)``, and the core's :class:`SteinInfo` per slice
    (``bandwidth`` and ``mean_kernel`` ``(d,)``; the norms ``(d,)``).

    ``slices``: ``(d, d)``, row ``r`` the slice ``g_r`` (normalised here); None: the identity.
    """
    xp = check_stein_inputs(particles, scores, repulsion)
    repulsion = check_repulsion(repulsion)
    g = _unit_slices(xp, slices, particles)
    # slice r: particles X g_r and scores S e_r, as a stack of d one-dimensional systems (d, n, 1)
    proj = xp.permute_dims(particles @ xp.matrix_transpose(g), (1, 0))[..., None]
    coord = xp.permute_dims(scores, (1, 0))[..., None]
    t = stein_terms(proj, coord, kernel, bandwidth)
    weight = xp.linalg.diagonal(g)[:, None, None]  # e_r^T g_r
    phi, info = assemble_direction(xp, t.driving, weight * t.repulsion_term, repulsion, t.bandwidth, t.mean_kernel)
    return xp.permute_dims(phi[..., 0], (1, 0)), info


@dataclass(frozen=True)
class SlicedSVGD(SteinSampler):
    """Sliced SVGD with fixed slices; build it with :func:`sliced_svgd`."""

    slices: Any = None

    name: ClassVar[str] = "sliced_svgd"

    def step(self, state: ParticleState):
        """One update; returns ``(new_state, SteinStepInfo)`` (``bandwidth`` per slice, ``(d,)``;
        ``mean_kernel`` the mean over slices). ``score_fn`` is called once."""
        x = state.particles
        xp = namespace(x)
        s = self.scores(x)
        phi, info = sliced_stein_direction(x, s, self.slices, self.kernel, self.bandwidth, self.repulsion)
        new, delta = self._move(state, phi)
        return new, self._stein_info(xp, s, new.particles, delta, info.bandwidth, xp.mean(info.mean_kernel))


def sliced_svgd(score_fn=None, step_size=1e-2, *, slices=None, kernel=None, bandwidth=None, repulsion: float = 1.0,
                log_prob=None) -> SlicedSVGD:
    """Sliced SVGD (S-SVGD) with fixed slices; update in the module docstring.

    Parameters
    ----------
    score_fn, step_size, kernel, bandwidth, repulsion, log_prob :
        As for :func:`~particlesampling.svgd`; the kernel and bandwidth act on each slice's
        one-dimensional projections (a median bandwidth is one per slice).
    slices : array of shape (d, d), optional
        Row ``r`` is the input slice ``g_r`` of output coordinate ``r`` (normalised to unit length;
        no zero rows). None (default): the identity, the paper's initial slices.

    Returns
    -------
    SlicedSVGD : ``init(particles, seed=0) -> ParticleState`` and ``step(state) -> (state, SteinStepInfo)``.
    """
    return SlicedSVGD(check_score_fn(score_fn, log_prob), get_step_rule(step_size), kernel=kernel,
                      bandwidth=bandwidth, repulsion=check_repulsion(repulsion), slices=check_slices(slices))
