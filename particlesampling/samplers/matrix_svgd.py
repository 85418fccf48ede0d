"""SVGD with a matrix-valued kernel and a constant preconditioner (Wang, Tang, Bajaj & Liu, NeurIPS 2019,
"Stein Variational Gradient Descent with Matrix-Valued Kernels", Sec. 4, "Matrix-SVGD (average)").

The kernel is ``K(x, y) = Q^{-1} k(Q^{1/2} x, Q^{1/2} y)`` with ``Q`` a positive definite ``d x d``
preconditioner, and the update (their eq. 9)

.. math::

    \\phi(x_i) = \\frac{1}{n} \\sum_j \\big[ Q^{-1} k_Q(x_j, x_i) \\nabla \\log p(x_j)
                 + Q^{-1} \\nabla_{x_j} k_Q(x_j, x_i) \\big], \\qquad x_i \\leftarrow x_i + \\epsilon \\phi(x_i),

which is plain SVGD in the coordinates ``y = Q^{1/2} x`` (their Sec. 3.2): with ``Y = X Q^{1/2}`` and
the scores ``S_y = S Q^{-1/2}`` there, ``phi = phi_SVGD(Y, S_y) Q^{-1/2}``. So the direction is the
core's :func:`particlesampling.stein_direction` (every kernel, bandwidth rule, the tiled path), in
transformed coordinates. ``Q`` is re-estimated at every step from the current particles:

* ``"fisher"`` (default): ``Q = (1/n) sum_i s_i s_i^T``, the Fisher / Gauss-Newton estimate (the
  outer products of the scores; no extra evaluations; the form NumPyro's Gauss-Newton kernel builds
  from its model's Jacobians);
* ``"hessian"``: ``Q = -(1/n) sum_i grad^2 log p(x_i)``, the averaged Hessian, from ``hessian_fn``
  or by automatic differentiation of ``log_prob`` (PyTorch, JAX);
* a fixed symmetric ``(d, d)`` array.

``Q`` is symmetrised and its eigenvalues are floored at ``ridge`` (an averaged Hessian of a
non-log-concave target can be indefinite); ``Q^{1/2}`` and ``Q^{-1/2}`` come from one ``eigh``.
Cost per step: the SVGD direction plus ``O(n d^2 + d^3)``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from .._backend import device_of, is_array, namespace
from ..log_density import hessian_from_log_prob
from ..memory_budget import AUTO, check_memory_budget
from ..step_sizes import get_step_rule
from ..stein import stein_direction_with_info
from ..stein_terms import check_repulsion
from ._common import ParticleState, SteinSampler, check_score_fn

__all__ = ["MatrixSVGD", "matrix_svgd", "preconditioned_stein_direction", "PRECONDITIONERS"]

PRECONDITIONERS = ("fisher", "hessian")


def _roots(xp, q, ridge):
    """``(Q^{1/2}, Q^{-1/2})`` of the symmetrised ``q`` with its eigenvalues floored at ``ridge``."""
    q = 0.5 * (q + xp.matrix_transpose(q))
    lam, vec = xp.linalg.eigh(q)
    lam = xp.maximum(lam, xp.asarray(ridge, dtype=q.dtype, device=device_of(q)))
    root = xp.sqrt(lam)
    return (vec * root) @ xp.matrix_transpose(vec), (vec / root) @ xp.matrix_transpose(vec)


def preconditioned_stein_direction(particles, scores, q, kernel=None, bandwidth=None, repulsion: float = 1.0, *,
                                   ridge: float = 1e-3, memory_budget=AUTO):
    """``phi = phi_SVGD(X Q^{1/2}, S Q^{-1/2}) Q^{-1/2}`` (module docstring) and the :class:`SteinInfo`.

    ``q``: ``(d, d)`` array of the particles' namespace, symmetric (positive definite after the
    ``ridge`` floor on its eigenvalues).
    """
    xp = namespace(particles, scores, q)
    d = particles.shape[-1]
    if tuple(q.shape) != (d, d):
        raise ValueError(f"expected a ({d}, {d}) preconditioner for particles of shape {tuple(particles.shape)}, "
                         f"received shape {tuple(q.shape)}")
    half, inv_half = _roots(xp, q, ridge)
    phi_y, info = stein_direction_with_info(particles @ half, scores @ inv_half, kernel, bandwidth, repulsion,
                                            memory_budget=memory_budget)
    return phi_y @ inv_half, info


@dataclass(frozen=True)
class MatrixSVGD(SteinSampler):
    """Matrix-valued-kernel SVGD with a constant preconditioner; build it with :func:`matrix_svgd`."""

    preconditioner: Any = "fisher"
    hessian_fn: Callable[[Any], Any] | None = None
    ridge: float = 1e-3

    name: ClassVar[str] = "matrix_svgd"

    def _preconditioner(self, x, s):
        xp = namespace(x)
        n = x.shape[0]
        if isinstance(self.preconditioner, str) and self.preconditioner == "fisher":
            return xp.matrix_transpose(s) @ s / float(n)
        if isinstance(self.preconditioner, str):  # "hessian"
            hs = self.hessian_fn(x)
            d = x.shape[1]
            if type(hs) is not type(x) or tuple(hs.shape) != (n, d, d):
                raise TypeError(f"hessian_fn returned {type(hs).__name__} of shape {tuple(getattr(hs, 'shape', ()))}; "
                                f"expected {type(x).__name__} of shape {(n, d, d)}")
            return -xp.sum(hs, axis=0) / float(n)
        return xp.asarray(self.preconditioner, dtype=x.dtype, device=device_of(x))

    def step(self, state: ParticleState):
        """One update; returns ``(new_state, SteinStepInfo)``. ``score_fn`` is called once."""
        x = state.particles
        xp = namespace(x)
        s = self.scores(x)
        phi, info = preconditioned_stein_direction(x, s, self._preconditioner(x, s), self.kernel, self.bandwidth,
                                                   self.repulsion, ridge=self.ridge, memory_budget=self.memory_budget)
        new, delta = self._move(state, phi)
        return new, self._stein_info(xp, s, new.particles, delta, info.bandwidth, info.mean_kernel)


def matrix_svgd(score_fn=None, step_size=1e-2, *, preconditioner: Any = "fisher", hessian_fn=None,
                ridge: float = 1e-3, kernel=None, bandwidth=None, repulsion: float = 1.0, memory_budget=AUTO,
                log_prob=None) -> MatrixSVGD:
    """Matrix-valued-kernel SVGD with a constant preconditioner; update in the module docstring.

    Parameters
    ----------
    score_fn, step_size, kernel, bandwidth, repulsion, memory_budget, log_prob :
        As for :func:`~particlesampling.svgd`.
    preconditioner : "fisher" (default), "hessian" or a symmetric (d, d) array
        How ``Q`` is made at each step (module docstring).
    hessian_fn : callable, (n, d) -> (n, d, d), optional
        Hessians of ``log p`` at the particles, for ``"hessian"``; by default built from ``log_prob``
        by automatic differentiation.
    ridge : float > 0
        Floor on the eigenvalues of ``Q``.

    Returns
    -------
    MatrixSVGD : ``init(particles, seed=0) -> ParticleState`` and ``step(state) -> (state, SteinStepInfo)``.
    """
    if isinstance(ridge, bool) or not isinstance(ridge, numbers.Real) or not math.isfinite(ridge) or ridge <= 0:
        raise ValueError(f"expected ridge > 0 (finite), received {ridge!r}")
    if isinstance(preconditioner, str):
        if preconditioner not in PRECONDITIONERS:
            raise ValueError(f"expected preconditioner as one of {PRECONDITIONERS} or a (d, d) array, "
                             f"received {preconditioner!r}")
        if preconditioner == "hessian" and hessian_fn is None:
            if log_prob is None:
                raise ValueError("the 'hessian' preconditioner needs hessian_fn ((n, d) -> (n, d, d)) or log_prob "
                                 "(differentiated on PyTorch/JAX)")
            hessian_fn = hessian_from_log_prob(log_prob)
    elif not is_array(preconditioner):
        raise TypeError(f"expected preconditioner as a name or an array, received {type(preconditioner).__name__}")
    if hessian_fn is not None and not callable(hessian_fn):
        raise TypeError(f"expected hessian_fn to be callable, received {type(hessian_fn).__name__}")
    return MatrixSVGD(check_score_fn(score_fn, log_prob), get_step_rule(step_size), kernel=kernel,
                      bandwidth=bandwidth, repulsion=check_repulsion(repulsion),
                      memory_budget=check_memory_budget(memory_budget), preconditioner=preconditioner,
                      hessian_fn=hessian_fn, ridge=float(ridge))
