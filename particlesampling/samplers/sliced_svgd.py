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

**The slices are optimised, as published.** The slices are the rows of ``V`` normalised,
``g_r = v_r / |v_r|``; ``V`` starts at the identity (or the ``slices`` given) and lives in the state
(:class:`SliceState`). Before each particle update, ``slice_updates`` steps of gradient ascent move
``V`` up the SKSD-g of the current particles (maxSKSD-g is its supremum over the slices;
:func:`particlesampling.diagnostics.sksd.sliced_ksd`, gradient in closed form, so every namespace,
NumPy included):

.. math::

    V \\leftarrow V + \\operatorname{Adam}_\\kappa\\big(\\nabla_V SK(G(V); x_{1..n})\\big)
    \\quad (\\text{slice\\_updates times}), \\qquad \\text{then } x \\leftarrow x + \\epsilon\\, \\phi(x; G(V)),

the authors' S-SVGD code (``WenboGong/Sliced_Kernelized_Stein_Discrepancy``): ``r`` fixed to the
identity, ``g`` started at the identity and moved by Adam (learning rate ``1e-3``, ``betas =
(0.9, 0.99)`` in their UCI regression and VAE experiments) on the V-statistic at the particles'
current scores, one update per particle step, through the normalisation, the median bandwidth held
fixed in the gradient. These are the defaults here (``slice_step_size=1e-3``, ``slice_updates=1``);
``slice_step_size`` may also be any step rule of :mod:`particlesampling.step_sizes` (e.g.
``ps.constant(kappa)``, the plain ascent of the paper's algorithm). ``slice_updates=0`` keeps the
slices fixed at ``slices`` (the identity by default): then each coordinate is moved by one-dimensional
SVGD on its own score coordinate, the kernel never sees the other ``d - 1`` coordinates, and the
marginal variance does not collapse with ``d``; dependence between coordinates enters only through
the scores. The ascent lets a slice turn towards the directions where the particles and the target
disagree most (a slice ``g_r`` other than ``e_r`` couples coordinate ``r``'s update to the others).
With fewer particles than dimensions such directions always exist (``n`` points leave ``d - n + 1``
directions along which they do not spread at all), the sliced KSD is large along them, and the
slices turn towards them (``|g_rr|`` falls below 1); how that moves the marginal variance depends on
the particles' step rule: ``python benchmarks/sliced_slices.py`` measures it on ``N(0, I_d)`` with 50
particles, fixed against optimised slices, under the comparison's decaying step and under a constant
one (``benchmarks/results/sliced_slices.json``). Cost: the ascent's sliced KSD and its gradient take
``O(d n^2 + n d^2)`` per update. Measured side by side (``python benchmarks/sliced_slices.py --timing``,
``benchmarks/results/sliced_slices_timing.json``, a shared 2-core machine): one slice update takes 3.3 to
3.9 times the direction's own time and a whole step with it 4.7 to 6.8 times a step with fixed slices
(``n, d`` = 50, 50: 3.9 and 5.9; 200, 20: 3.3 and 4.7; 50, 200: 3.5 and 6.8). Whole runs on
``docs/methods.md`` (both modes in one ``--methods`` run) took 5.4 to 13.5 times longer with the ascent
on the ``mixture2d``, variance-collapse and logistic-regression cases (1.5 on ``mixture1d``).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from .._backend import namespace
from ..diagnostics.sksd import check_gradient_kernel, sliced_ksd, unit_slices
from ..step_sizes import StepRule, adam, get_step_rule
from ..stein_terms import assemble_direction, check_repulsion, check_stein_inputs, stein_terms
from ._common import ParticleState, SteinSampler, check_score_fn

__all__ = ["SlicedSVGD", "SliceState", "sliced_svgd", "sliced_stein_direction", "check_slices"]

#: Adam's betas for the slices in the authors' S-SVGD code (their UCI regression and VAE experiments)
SLICE_ADAM_BETAS = (0.9, 0.99)


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
    _, g = unit_slices(xp, slices, particles)
    # slice r: particles X g_r and scores S e_r, as a stack of d one-dimensional systems (d, n, 1)
    proj = xp.permute_dims(particles @ xp.matrix_transpose(g), (1, 0))[..., None]
    coord = xp.permute_dims(scores, (1, 0))[..., None]
    t = stein_terms(proj, coord, kernel, bandwidth)
    weight = xp.linalg.diagonal(g)[:, None, None]  # e_r^T g_r
    phi, info = assemble_direction(xp, t.driving, weight * t.repulsion_term, repulsion, t.bandwidth, t.mean_kernel)
    return xp.permute_dims(phi[..., 0], (1, 0)), info


class SliceState(NamedTuple):
    """The step state of :class:`SlicedSVGD`: the particles' step rule, the slices and their ascent."""

    rule: Any  #: the particle step rule's state
    slices: Any  #: (d, d) ``V``; the slices are its rows normalised, ``g_r = v_r / |v_r|``
    ascent: Any  #: the slice step rule's state (Adam's count and moments by default)


@dataclass(frozen=True)
class SlicedSVGD(SteinSampler):
    """Sliced SVGD; build it with :func:`sliced_svgd`."""

    slices: Any = None
    slice_updates: int = 1
    slice_rule: StepRule | None = None

    name: ClassVar[str] = "sliced_svgd"

    def init(self, particles, seed: int = 0) -> ParticleState:
        state = super().init(particles, seed)
        return state._replace(step_state=self.step_state_template(particles))

    def step_state_template(self, particles) -> SliceState:
        """The step state at the start (also the template :func:`particlesampling.load_state` fills)."""
        v, _ = unit_slices(namespace(particles), self.slices, particles)
        return SliceState(self.step_rule.init(particles), v, self.slice_rule.init(v))

    def ascend(self, particles, scores, slices, ascent):
        """``slice_updates`` ascent steps on SKSD-g from ``(slices, ascent)``; returns the new pair."""
        for _ in range(self.slice_updates):
            # the run loop checks every step's particles and scores (the step's finite flag)
            grad = sliced_ksd(particles, scores, slices, self.kernel, self.bandwidth, gradient=True, value=False,
                              check_finite=False).gradient
            delta, ascent = self.slice_rule.update(grad, ascent)
            slices = slices + delta
        return slices, ascent

    def step(self, state: ParticleState):
        """One update; returns ``(new_state, SteinStepInfo)`` (``bandwidth`` per slice, ``(d,)``;
        ``mean_kernel`` the mean over slices). ``score_fn`` is called once."""
        x = state.particles
        xp = namespace(x)
        s = self.scores(x)
        rule_state, slices, ascent = state.step_state
        slices, ascent = self.ascend(x, s, slices, ascent)
        phi, info = sliced_stein_direction(x, s, slices, self.kernel, self.bandwidth, self.repulsion)
        new, delta = self._move(state._replace(step_state=rule_state), phi)
        new = new._replace(step_state=SliceState(new.step_state, slices, ascent))
        return new, self._stein_info(xp, s, new.particles, delta, info.bandwidth, xp.mean(info.mean_kernel))


def sliced_svgd(score_fn=None, step_size=1e-2, *, slices=None, slice_updates: int = 1, slice_step_size=1e-3,
                kernel=None, bandwidth=None, repulsion: float = 1.0, log_prob=None) -> SlicedSVGD:
    """Sliced SVGD (S-SVGD) with its slices optimised by gradient ascent on SKSD-g (module docstring).

    Parameters
    ----------
    score_fn, step_size, kernel, bandwidth, repulsion, log_prob :
        As for :func:`~particlesampling.svgd`; the kernel and bandwidth act on each slice's
        one-dimensional projections (a median bandwidth is one per slice). Optimised slices need a
        kernel with the profile's third derivative (``"rbf"``, the default, or ``"imq"``).
    slices : array of shape (d, d), optional
        The initial slices: row ``r`` is the input slice ``g_r`` of output coordinate ``r`` (normalised
        to unit length; no zero rows). None (default): the identity, the paper's initial slices.
    slice_updates : int >= 0
        Ascent steps on the slices before each particle update (default 1, as published); 0 keeps the
        slices fixed.
    slice_step_size : float > 0, schedule or StepRule
        The slices' ascent: a float is Adam's learning rate with the published betas (0.9, 0.99)
        (default ``1e-3``, as published); a :class:`~particlesampling.StepRule` (``ps.constant(kappa)``:
        plain gradient ascent) is used as given.

    Returns
    -------
    SlicedSVGD : ``init(particles, seed=0) -> ParticleState`` and ``step(state) -> (state, SteinStepInfo)``;
    the state's ``step_state`` is a :class:`SliceState` (its ``slices`` field is ``V``).
    """
    if isinstance(slice_updates, bool) or not isinstance(slice_updates, numbers.Integral) or slice_updates < 0:
        raise ValueError(f"expected slice_updates as a non-negative integer, received {slice_updates!r}")
    if slice_updates:
        try:
            check_gradient_kernel(kernel)
        except TypeError as err:
            raise TypeError(f"{err}; the slices' ascent needs it (slice_updates=0 keeps the slices fixed and takes "
                            "any kernel)") from err
    if isinstance(slice_step_size, StepRule):
        slice_rule = slice_step_size
    elif isinstance(slice_step_size, bool) or not (isinstance(slice_step_size, numbers.Real) or callable(slice_step_size)):
        raise ValueError(f"expected slice_step_size as a learning rate > 0, a schedule or a StepRule, received "
                         f"{slice_step_size!r}")
    else:
        slice_rule = adam(slice_step_size if callable(slice_step_size) else float(slice_step_size), *SLICE_ADAM_BETAS)
    return SlicedSVGD(check_score_fn(score_fn, log_prob), get_step_rule(step_size), kernel=kernel,
                      bandwidth=bandwidth, repulsion=check_repulsion(repulsion), slices=check_slices(slices),
                      slice_updates=int(slice_updates), slice_rule=slice_rule)
