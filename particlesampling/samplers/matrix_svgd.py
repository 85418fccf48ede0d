"""SVGD with a matrix-valued kernel and a constant preconditioner (Wang, Tang, Bajaj & Liu, NeurIPS 2019,
"Stein Variational Gradient Descent with Matrix-Valued Kernels", Sec. 4, "Matrix-SVGD (average)").

The kernel is ``K(x, y) = Q^{-1} k(Q^{1/2} x, Q^{1/2} y)`` with ``Q`` a positive definite ``d x d``
preconditioner, and the update (their eq. 9)

.. math::

    \\phi(x_i) = \\frac{1}{n} \\sum_j \\big[ Q^{-1} k_Q(x_j, x_i) \\nabla \\log p(x_j)
                 + Q^{-1} \\nabla_{x_j} k_Q(x_j, x_i) \\big], \\qquad x_i \\leftarrow x_i + \\epsilon \\phi(x_i),

which is plain SVGD in the coordinates ``y = Q^{1/2} x`` (their Sec. 3.2): with ``Y = X Q^{1/2}`` and
the scores ``S_y = S Q^{-1/2}`` there, ``phi = phi_SVGD(Y, S_y) Q^{-1/2}``
(:func:`particlesampling.samplers._matrix_kernels.preconditioned_stein_direction`: the core's
:func:`particlesampling.stein_direction`, every kernel, bandwidth rule, the tiled path, in
transformed coordinates). ``Q`` is re-estimated at every step from the current particles:

* ``"fisher"`` (default): ``Q = (1/n) sum_i s_i s_i^T``, the Fisher estimate (the outer products of
  the scores; no extra evaluations);
* ``"hessian"``: ``Q = -(1/n) sum_i grad^2 log p(x_i)``, the averaged Hessian, from ``hessian_fn``,
  from Hessian-vector products ``hvp_fn``, or by automatic differentiation of ``log_prob`` (PyTorch,
  JAX); each point's matrix made positive definite first as in saddle-free Newton (absolute
  eigenvalues, floored at 1e-2 of the largest: :mod:`particlesampling.samplers._preconditioners`, where
  the reason is);
* ``"gauss_newton"``: ``Q = (1/n) sum_i J(x_i)^T J(x_i)`` from the Jacobian of residuals
  ``jacobian_fn`` (``-log p = |r|^2 / 2 + const``), the averaged Gauss-Newton matrix, the form
  NumPyro's Gauss-Newton kernel builds from its model;
* a fixed symmetric ``(d, d)`` array.

``Q`` is symmetrised and its eigenvalues are floored at ``ridge`` (an averaged Hessian of a
non-log-concave target can be indefinite); ``Q^{1/2}`` and ``Q^{-1/2}`` come from one ``eigh``.
Cost per step: the SVGD direction plus ``O(n d^2 + d^3)`` (plus the Hessians for ``"hessian"``).
The mixture of point-wise preconditioners is :mod:`particlesampling.samplers.matrix_svgd_mixture`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from .._backend import device_of, is_array, namespace
from ._matrix_kernels import preconditioned_stein_direction
from ..memory_budget import AUTO, check_memory_budget
from ._preconditioners import CURVATURES, check_callable, pointwise_preconditioner
from ..step_sizes import get_step_rule
from ..stein_terms import check_repulsion
from ._common import ParticleState, SteinSampler, check_score_fn

__all__ = ["MatrixSVGD", "matrix_svgd", "preconditioned_stein_direction", "PRECONDITIONERS", "check_ridge"]

PRECONDITIONERS = ("fisher",) + CURVATURES


def check_ridge(ridge) -> float:
    if isinstance(ridge, bool) or not isinstance(ridge, numbers.Real) or not math.isfinite(ridge) or ridge <= 0:
        raise ValueError(f"expected ridge > 0 (finite), received {ridge!r}")
    return float(ridge)


@dataclass(frozen=True)
class MatrixSVGD(SteinSampler):
    """Matrix-valued-kernel SVGD with a constant preconditioner; build it with :func:`matrix_svgd`."""

    preconditioner: Any = "fisher"
    curvature: Callable[[Any], Any] | None = None  #: (n, d) -> (n, d, d) point-wise Q, for "hessian" / "gauss_newton"
    ridge: float = 1e-3

    name: ClassVar[str] = "matrix_svgd"

    def _preconditioner(self, x, s):
        xp = namespace(x)
        n = x.shape[0]
        if isinstance(self.preconditioner, str) and self.preconditioner == "fisher":
            return xp.matrix_transpose(s) @ s / float(n)
        if isinstance(self.preconditioner, str):  # "hessian", "gauss_newton"
            return xp.sum(self.curvature(x), axis=0) / float(n)
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


def matrix_svgd(score_fn=None, step_size=1e-2, *, preconditioner: Any = "fisher", hessian_fn=None, hvp_fn=None,
                jacobian_fn=None, ridge: float = 1e-3, kernel=None, bandwidth=None, repulsion: float = 1.0,
                memory_budget=AUTO, log_prob=None) -> MatrixSVGD:
    """Matrix-valued-kernel SVGD with a constant preconditioner; update in the module docstring.

    Parameters
    ----------
    score_fn, step_size, kernel, bandwidth, repulsion, memory_budget, log_prob :
        As for :func:`~particlesampling.svgd`.
    preconditioner : "fisher" (default), "hessian", "gauss_newton" or a symmetric (d, d) array
        How ``Q`` is made at each step (module docstring).
    hessian_fn : callable, (n, d) -> (n, d, d), optional
        Hessians of ``log p`` at the particles, for ``"hessian"``.
    hvp_fn : callable, ((n, d), (n, d)) -> (n, d), optional
        Hessian-vector products of ``log p``, row ``i`` ``grad^2 log p(x_i) v_i``, for ``"hessian"``
        (``d`` calls per step). Without ``hessian_fn`` or ``hvp_fn`` the Hessians come from
        automatic differentiation of ``log_prob`` (PyTorch, JAX); one of the three is required (a
        ValueError at construction otherwise), and only one of ``hessian_fn`` and ``hvp_fn``.
    jacobian_fn : callable, (n, d) -> (n, r, d)
        Jacobian of the residuals, for ``"gauss_newton"`` (required there). A function the chosen
        preconditioner does not use is a ValueError (a TypeError if it is not callable).
    ridge : float > 0
        Floor on the eigenvalues of ``Q``.

    Returns
    -------
    MatrixSVGD : ``init(particles, seed=0) -> ParticleState`` and ``step(state) -> (state, SteinStepInfo)``.
    """
    ridge = check_ridge(ridge)
    score = check_score_fn(score_fn, log_prob)
    curvature = None
    if isinstance(preconditioner, str) and preconditioner not in PRECONDITIONERS:
        raise ValueError(f"expected preconditioner as one of {PRECONDITIONERS} or a (d, d) array, "
                         f"received {preconditioner!r}")
    if not isinstance(preconditioner, str) and not is_array(preconditioner):
        raise TypeError(f"expected preconditioner as a name or an array, received {type(preconditioner).__name__}")
    sources = (("hessian_fn", hessian_fn), ("hvp_fn", hvp_fn), ("jacobian_fn", jacobian_fn))
    for name, fn in sources:
        check_callable(name, fn)
    pointwise = isinstance(preconditioner, str) and preconditioner in CURVATURES
    given = [name for name, fn in sources if fn is not None]
    if not pointwise and given:
        what = repr(preconditioner) if isinstance(preconditioner, str) else "a fixed (d, d) array"
        raise ValueError(f"{' and '.join(given)} received with the preconditioner {what}, which uses none of them "
                         "(hessian_fn / hvp_fn: 'hessian'; jacobian_fn: 'gauss_newton')")
    if pointwise and preconditioner == "hessian" and hessian_fn is None and hvp_fn is None and log_prob is None:
        raise ValueError("the 'hessian' preconditioner needs hessian_fn ((n, d) -> (n, d, d)), hvp_fn "
                         "(((n, d), (n, d)) -> (n, d) Hessian-vector products) or log_prob (differentiated on "
                         "PyTorch/JAX); for the Gauss-Newton form, 'gauss_newton' with jacobian_fn")
    if pointwise:
        curvature = pointwise_preconditioner(preconditioner, hessian_fn=hessian_fn, hvp_fn=hvp_fn,
                                             jacobian_fn=jacobian_fn, log_prob=log_prob, score_fn=score)
    return MatrixSVGD(score, get_step_rule(step_size), kernel=kernel,
                      bandwidth=bandwidth, repulsion=check_repulsion(repulsion),
                      memory_budget=check_memory_budget(memory_budget), preconditioner=preconditioner,
                      curvature=curvature, ridge=ridge)
