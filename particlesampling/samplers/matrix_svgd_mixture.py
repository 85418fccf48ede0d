"""SVGD with the mixture-preconditioning matrix-valued kernel (Wang, Tang, Bajaj & Liu, NeurIPS 2019,
"Stein Variational Gradient Descent with Matrix-Valued Kernels", "Matrix-SVGD (mixture)").

Anchors ``z_1..z_m``, each with its own preconditioner ``Q_l`` (the negative Hessian of ``log p`` at
``z_l``, or its Gauss-Newton form), make the kernel ``K(x, x') = sum_l K_{Q_l}(x, x') w_l(x) w_l(x')``
with ``w_l(x)`` proportional to ``N(x; z_l, Q_l^{-1})`` normalised over ``l``. The update is
``x_i <- x_i + eps phi(x_i)`` with (their theorem on mixtures of kernels)

.. math::

    \\phi(x_i) = \\sum_l w_l(x_i)\\, \\frac{1}{n} \\sum_j w_l(x_j) \\big[
        K_{Q_l}(x_i, x_j) \\big(\\nabla \\log p(x_j) + \\nabla \\log w_l(x_j)\\big)
        + K_{Q_l}(x_i, x_j) \\nabla_{x_j} \\big],
    \\qquad K_{Q}(x, x') = Q^{-1} f(\\|x - x'\\|_Q^2 / h),

each particle following a mixture of Newton-like directions, weighted by how close it is to each
anchor in that anchor's metric (:func:`particlesampling.samplers._matrix_kernels.mixture_stein_direction`,
which states the computation). The bandwidth ``h_l`` is the rule's on the particles in anchor
``l``'s coordinates ``Q_l^{1/2} x`` (for the median rules, the median trick in ``Q_l``-distances).

Anchors (``anchors``):

* ``None`` (default): every particle is an anchor, ``m = n`` (the paper's choice);
* an integer ``m < n``: ``m`` particles drawn uniformly without replacement afresh at every step, a
  pure function of the state's seed and step (:func:`particlesampling.random.permutation`), so a run
  is reproducible and resumable; ``O(m n^2 d)`` instead of ``O(n^3 d)`` per step.

Preconditioners (``preconditioner``; :mod:`particlesampling.samplers._preconditioners`): ``"hessian"``
(``Q_l = -grad^2 log p(z_l)`` from ``hessian_fn``, from Hessian-vector products ``hvp_fn``, or by
automatic differentiation of ``log_prob`` or of the score on PyTorch and JAX; made positive definite
as in saddle-free Newton: absolute eigenvalues floored at 1e-2 of the largest over the anchors,
:func:`particlesampling.samplers._preconditioners.saddle_free`, since the Hessian of a non-log-concave
target is indefinite and near its inflection points singular) or ``"gauss_newton"``
(``Q_l = J(z_l)^T J(z_l)`` from the Jacobian of residuals ``jacobian_fn``, positive semi-definite as it
stands). ``average_weight = a``
replaces each ``Q_l`` by ``(1 - a) Q_l + a mean_l' Q_l'`` (the authors' code mixes in the average with
``a = 0.5`` for robustness; 0, the default, is the paper's kernel). Eigenvalues are floored at ``ridge``.
``normalise`` (default True) self-normalises each anchor's importance weights, which keeps the
direction at the constant preconditioner's scale; False is the paper's kernel as written, whose
direction is about ``n`` times smaller with every particle an anchor
(:mod:`particlesampling.samplers._matrix_kernels`, "Scale").

Cost per step: ``m`` preconditioners (Hessians or ``d`` Hessian-vector products each), ``m``
eigendecompositions ``O(m d^3)`` (two for ``"hessian"``) and the direction ``O(m n^2 d + m n d^2)`` time,
``O(m n^2)`` memory: about ``5 m n^2`` numbers (2.5 GB in float64 at ``n = m = 400``), checked against
``memory_budget`` with an error that points to ``anchors=m``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from .._backend import device_of, namespace
from ._matrix_kernels import mixture_stein_direction
from ._preconditioners import CURVATURES, pointwise_preconditioner
from ..memory_budget import AUTO, check_memory_budget
from ..random import permutation
from ..stein_kernel import radial_kernel
from ..step_sizes import get_step_rule
from ..stein_terms import check_repulsion
from ._common import ParticleState, SteinSampler, check_score_fn
from .matrix_svgd import check_ridge

__all__ = ["MatrixSVGDMixture", "matrix_svgd_mixture"]


@dataclass(frozen=True)
class MatrixSVGDMixture(SteinSampler):
    """Mixture-preconditioned matrix-kernel SVGD; build it with :func:`matrix_svgd_mixture`."""

    curvature: Callable[[Any], Any] | None = None  #: (m, d) -> (m, d, d), the point-wise Q
    anchors: int | None = None
    average_weight: float = 0.0
    ridge: float = 1e-3
    normalise: bool = True

    name: ClassVar[str] = "matrix_svgd_mixture"

    def anchor_points(self, state: ParticleState):
        """The anchors ``z_l`` of this step, ``(m, d)``: every particle, or ``m`` drawn from ``(seed, step)``."""
        x = state.particles
        n = x.shape[0]
        if self.anchors is None or self.anchors >= n:
            return x
        xp = namespace(x)
        idx = permutation(state.seed, state.step, n)[:self.anchors]
        return xp.take(x, xp.asarray(idx, dtype=xp.int64, device=device_of(x)), axis=0)

    def step(self, state: ParticleState):
        """One update; returns ``(new_state, SteinStepInfo)``. ``score_fn`` is called once for the scores,
        and once more (differentiated) for the anchors' Hessians when they come from the score (no
        ``hessian_fn``, ``hvp_fn`` or ``log_prob``); a ``hvp_fn`` is called ``d`` times (the CLI's, by
        central differences of the score, evaluates the score twice per call)."""
        x = state.particles
        xp = namespace(x)
        s = self.scores(x)
        z = self.anchor_points(state)
        q = self.curvature(z)
        if self.average_weight:
            q = (1.0 - self.average_weight) * q + self.average_weight * xp.mean(q, axis=0)[None, :, :]
        phi, info = mixture_stein_direction(x, s, z, q, self.kernel, self.bandwidth, self.repulsion, ridge=self.ridge,
                                             normalise=self.normalise, memory_budget=self.memory_budget)
        new, delta = self._move(state, phi)
        return new, self._stein_info(xp, s, new.particles, delta, info.bandwidth, info.mean_kernel)


def matrix_svgd_mixture(score_fn=None, step_size=1e-2, *, preconditioner: str = "hessian", anchors: int | None = None,
                        hessian_fn=None, hvp_fn=None, jacobian_fn=None, average_weight: float = 0.0,
                        ridge: float = 1e-3, normalise: bool = True, kernel=None, bandwidth=None,
                        repulsion: float = 1.0, memory_budget=AUTO, log_prob=None) -> MatrixSVGDMixture:
    """Matrix-valued-kernel SVGD with a mixture of point-wise preconditioners; update in the module docstring.

    Parameters
    ----------
    score_fn, step_size, bandwidth, repulsion, log_prob :
        As for :func:`~particlesampling.svgd`.
    kernel : None, str or radial Kernel
        The scalar profile of ``K_Q`` (RBF by default, or IMQ).
    preconditioner : "hessian" (default) or "gauss_newton"
        ``Q_l`` at each anchor (module docstring).
    anchors : None or int >= 1
        None: every particle is an anchor; ``m``: ``m`` particles drawn afresh each step.
    hessian_fn : callable, (m, d) -> (m, d, d), optional
        Hessians of ``log p``, for ``"hessian"``.
    hvp_fn : callable, ((m, d), (m, d)) -> (m, d), optional
        Hessian-vector products of ``log p`` (row ``i``: ``grad^2 log p(z_i) v_i``), for ``"hessian"``
        (``d`` calls per step). Without ``hessian_fn`` or ``hvp_fn`` the Hessians come from
        automatic differentiation of ``log_prob`` or ``score_fn`` (PyTorch, JAX; on NumPy a TypeError
        says what to pass).
    jacobian_fn : callable, (m, d) -> (m, r, d)
        Jacobian of the residuals (``-log p = |r|^2 / 2 + const``), for ``"gauss_newton"`` (required).
    average_weight : float in [0, 1]
        Weight of the anchors' average in each ``Q_l``.
    ridge : float > 0
        Floor on the eigenvalues of every ``Q_l``.
    normalise : bool
        True (default): each anchor's sum over the particles is self-normalised by its mean weight
        (the scale of the constant preconditioner); False: the paper's kernel as written, about ``n``
        times smaller a direction with every particle an anchor
        (:mod:`particlesampling.samplers._matrix_kernels`, "Scale").
    memory_budget : "auto" (default), bytes or None
        Bound on the ``(m, n, n)`` temporaries of a step (about ``5 m n^2`` numbers); a step over it
        raises a ValueError pointing to ``anchors=m`` (:mod:`particlesampling.memory_budget`).

    Returns
    -------
    MatrixSVGDMixture : ``init(particles, seed=0) -> ParticleState`` and ``step(state) -> (state, SteinStepInfo)``.
    """
    ridge = check_ridge(ridge)
    if not isinstance(preconditioner, str) or preconditioner not in CURVATURES:
        raise ValueError(f"expected preconditioner as one of {CURVATURES}, received {preconditioner!r}")
    if anchors is not None and (isinstance(anchors, bool) or not isinstance(anchors, numbers.Integral)
                                or anchors < 1):
        raise ValueError(f"expected anchors as None (every particle) or an integer >= 1, received {anchors!r}")
    if (isinstance(average_weight, bool) or not isinstance(average_weight, numbers.Real)
            or not 0.0 <= average_weight <= 1.0):
        raise ValueError(f"expected average_weight in [0, 1], received {average_weight!r}")
    radial_kernel(kernel)
    if not isinstance(normalise, bool):
        raise TypeError(f"expected normalise as a bool, received {normalise!r}")
    score = check_score_fn(score_fn, log_prob)
    curvature = pointwise_preconditioner(preconditioner, hessian_fn=hessian_fn, hvp_fn=hvp_fn,
                                         jacobian_fn=jacobian_fn, log_prob=log_prob, score_fn=score)
    return MatrixSVGDMixture(score, get_step_rule(step_size), kernel=kernel, bandwidth=bandwidth,
                             repulsion=check_repulsion(repulsion), curvature=curvature,
                             anchors=None if anchors is None else int(anchors), average_weight=float(average_weight),
                             ridge=ridge, normalise=normalise, memory_budget=check_memory_budget(memory_budget))
