"""Projected SVGD (Chen & Ghattas, NeurIPS 2020, "Projected Stein Variational Gradient Descent"), against
SVGD's variance collapse in high dimension.

The particles move only in the ``r``-dimensional subspace where the target's gradients vary most:
with the gradient information matrix (their eq. 10, with the identity as the prior covariance)

.. math::

    H = \\frac{1}{n} \\sum_i \\nabla \\log p(x_i) \\nabla \\log p(x_i)^T = V \\Lambda V^T,

``Psi`` (``d x r``) holds the eigenvectors of its ``r`` largest eigenvalues, the coefficients
``w_i = Psi^T x_i`` are moved by SVGD with the projected scores ``Psi^T s_i`` and a kernel on the
coefficients (their eq. 15), and the complement ``x_i - Psi Psi^T x_i`` stays where it is:

.. math::

    x_i \\leftarrow x_i + \\epsilon\\, \\Psi\\, \\phi_r(w_i), \\qquad
    \\phi_r(w_i) = \\frac{1}{n} \\sum_j \\big[ k(w_j, w_i) \\Psi^T \\nabla \\log p(x_j) + \\nabla_{w_j} k(w_j, w_i) \\big].

``phi_r`` is the core's :func:`particlesampling.stein_direction` on ``(X Psi, S Psi)``. The kernel's
bandwidth is a median over ``r`` coordinates instead of ``d``, which is what keeps the repulsion
alive when ``d`` is large and ``n`` small. In the paper the complement is distributed as the prior
(particles start from prior draws, and the likelihood is nearly flat there); here it is whatever
the initial particles hold, so start them from the prior (or a broad guess) in the directions that
the data do not inform. The particles then sample the conditional law of the subspace coordinates
given the complement, which is the marginal when the subspace is exactly the informed one.

The basis is computed at the first step and, with ``basis_every``, recomputed every that many
steps (the paper updates it every few iterations; it is kept in the state, ``ProjectionState``):
one ``d x d`` ``eigh`` each time, ``O(n d^2 + d^3)``; a checkpoint (:func:`particlesampling.save_state`)
keeps the basis, so a resumed run continues with the same one. Each recomputation lets the sampling noise of
``H`` at the current particles tilt the subspace a little, the conditional variances along tilted
directions are smaller, and the spread shrinks recomputation after recomputation (the test's
Gaussian shows it); so by default the basis is computed once. ``rank`` is ``r``; or ``tolerance`` keeps the
eigenvalues above ``tolerance * lambda_max``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from .._backend import namespace
from ..memory_budget import AUTO, check_memory_budget
from ..step_sizes import get_step_rule
from ..stein import stein_direction_with_info
from ..stein_terms import check_repulsion
from ._common import ParticleState, SteinSampler, check_score_fn

__all__ = ["ProjectedSVGD", "ProjectionState", "projected_svgd", "gradient_information_basis", "projected_stein_direction"]


def gradient_information_basis(scores, rank: int):
    """``Psi`` (``(d, r)``, orthonormal columns): eigenvectors of ``H = S^T S / n`` with the ``rank``
    largest eigenvalues, largest first; and all eigenvalues ``(d,)``, largest first."""
    xp = namespace(scores)
    n, d = scores.shape
    lam, vec = xp.linalg.eigh(xp.matrix_transpose(scores) @ scores / float(n))  # ascending
    order = xp.flip(xp.arange(d), axis=0) if hasattr(xp, "flip") else xp.arange(d - 1, -1, -1)
    vec = xp.take(vec, order, axis=1)
    lam = xp.take(lam, order, axis=0)
    return vec[:, :rank], lam


def projected_stein_direction(particles, scores, basis, kernel=None, bandwidth=None, repulsion: float = 1.0, *,
                              memory_budget=AUTO):
    """``Psi phi_r(X Psi, S Psi)`` (module docstring) and the :class:`SteinInfo` of ``phi_r``."""
    xp = namespace(particles, scores, basis)
    d = particles.shape[-1]
    if basis.ndim != 2 or basis.shape[0] != d or basis.shape[1] < 1:
        raise ValueError(f"expected a basis of shape ({d}, r) with r >= 1 for particles of shape "
                         f"{tuple(particles.shape)}, received shape {tuple(basis.shape)}")
    phi_r, info = stein_direction_with_info(particles @ basis, scores @ basis, kernel, bandwidth, repulsion,
                                            memory_budget=memory_budget)
    return phi_r @ xp.matrix_transpose(basis), info


class ProjectionState(NamedTuple):
    """The step state of :class:`ProjectedSVGD`: the step rule's state and the current basis."""

    rule: Any  #: the step rule's state
    basis: Any  #: (d, r) ``Psi``, or None before the first step


@dataclass(frozen=True)
class ProjectedSVGD(SteinSampler):
    """Projected SVGD; build it with :func:`projected_svgd`."""

    rank: int | None = None
    tolerance: float | None = None
    basis_every: int | None = None

    def init(self, particles, seed: int = 0) -> ParticleState:
        state = super().init(particles, seed)
        return state._replace(step_state=self.step_state_template(particles))

    def step_state_template(self, particles) -> ProjectionState:
        """The step state at the start, the basis not yet computed (also the template
        :func:`particlesampling.load_state` fills)."""
        return ProjectionState(self.step_rule.init(particles), None)

    name: ClassVar[str] = "projected_svgd"

    def _rank(self, xp, lam, d):
        if self.rank is not None:
            return min(self.rank, d)
        kept = int(xp.sum(xp.astype(lam >= self.tolerance * lam[0], xp.int64)))
        return max(kept, 1)

    def step(self, state: ParticleState):
        """One update; returns ``(new_state, SteinStepInfo)``. ``score_fn`` is called once."""
        x = state.particles
        xp = namespace(x)
        s = self.scores(x)
        d = x.shape[1]
        rule_state, basis = state.step_state
        if basis is None or (self.basis_every is not None and state.step % self.basis_every == 0):
            basis, lam = gradient_information_basis(s, d)
            basis = basis[:, :self._rank(xp, lam, d)]
        phi, info = projected_stein_direction(x, s, basis, self.kernel, self.bandwidth, self.repulsion,
                                              memory_budget=self.memory_budget)
        new, delta = self._move(state._replace(step_state=rule_state), phi)
        new = new._replace(step_state=ProjectionState(new.step_state, basis))
        return new, self._stein_info(xp, s, new.particles, delta, info.bandwidth, info.mean_kernel)


def projected_svgd(score_fn=None, step_size=1e-2, *, rank: int | None = None, tolerance: float | None = None,
                   basis_every: int | None = None, kernel=None, bandwidth=None, repulsion: float = 1.0, memory_budget=AUTO,
                   log_prob=None) -> ProjectedSVGD:
    """Projected SVGD; update in the module docstring.

    Parameters
    ----------
    score_fn, step_size, kernel, bandwidth, repulsion, memory_budget, log_prob :
        As for :func:`~particlesampling.svgd`.
    rank : int >= 1, optional
        ``r``, the dimension of the subspace (at most ``d``).
    tolerance : float in (0, 1], optional
        Keep the eigenvalues of ``H`` at least ``tolerance`` times the largest (the paper truncates
        where the eigenvalues fall below a threshold). Give ``rank`` or ``tolerance``; neither: 0.01.
    basis_every : int >= 1, optional
        Recompute the basis every this many steps; None (default): once, at the first step.

    Returns
    -------
    ProjectedSVGD : ``init(particles, seed=0) -> ParticleState`` and ``step(state) -> (state, SteinStepInfo)``.
    """
    if rank is not None and tolerance is not None:
        raise ValueError("expected either rank or tolerance, received both")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1):
        raise ValueError(f"expected rank as a positive integer, received {rank!r}")
    if rank is None:
        tolerance = 0.01 if tolerance is None else tolerance
        if (isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not math.isfinite(tolerance)
                or not 0 < tolerance <= 1):
            raise ValueError(f"expected tolerance in (0, 1], received {tolerance!r}")
    if basis_every is not None and (isinstance(basis_every, bool) or not isinstance(basis_every, numbers.Integral)
                                    or basis_every < 1):
        raise ValueError(f"expected basis_every as a positive integer or None, received {basis_every!r}")
    return ProjectedSVGD(check_score_fn(score_fn, log_prob), get_step_rule(step_size), kernel=kernel,
                         bandwidth=bandwidth, repulsion=check_repulsion(repulsion),
                         memory_budget=check_memory_budget(memory_budget),
                         rank=None if rank is None else int(rank), tolerance=None if tolerance is None else float(tolerance),
                         basis_every=None if basis_every is None else int(basis_every))
