"""A differentiable head-repulsion penalty, for comparison with SVGD/SPOS.

``HeadRepulsionPenalty(model)()`` returns

.. math::

    \\Omega(\\theta) = w \\sum_{\\text{groups}} \\frac{1}{M (M - 1)} \\sum_{i \\ne j} k(\\theta_i, \\theta_j),

the mean off-diagonal kernel similarity of each group's head particles, summed over groups, to be
added to the loss: ``(loss + penalty()).backward()``. The kernel and the bandwidth rule are the
core's (:func:`particlesampling.get_kernel`, :func:`particlesampling.get_bandwidth`); the bandwidth is
computed on detached parameters, so gradients flow through the kernel values only.

How it differs from the SVGD/SPOS adapter (:class:`attention_adapter.RepulsiveHeads`): for the RBF
kernel, ``grad_{theta_i} Omega = -(2 w / (M (M - 1))) R_i`` with ``R`` the SVGD repulsion, so
gradient descent on ``loss + Omega`` moves head ``i`` along ``-G_i + c R_i``: the same repulsive force,
but the data term is the head's *own* gradient ``G_i``, not the kernel-smoothed ``(K G)_i / M`` of
SVGD. It is a regulariser of a modified objective (a point estimate), not a sampler of a posterior:
there is no dataset size, prior or noise, and the heads converge to a stationary point of
``loss + Omega`` rather than to a set of particles representing ``p(theta | D)``. Being part of the
loss it goes through autograd, so AMP loss scaling, gradient accumulation and DDP all-reduce
apply to it automatically, at the cost of one extra ``O(M^2 P)`` forward/backward per group.

``space`` (:mod:`attention_adapter.spaces`) chooses what ``theta_i`` is: the head's weight rows
(default), its QK and OV circuits (``k`` on circuit distances, from ``d_head x d_head`` products), or
its outputs on the current batch (``k(f_i, f_j)`` on the heads' output vectors on a seeded token
subsample, recorded by forward hooks during the forward pass whose loss the penalty joins: call
``penalty()`` after ``model(x)`` and before ``backward()``; a function-space regulariser in the
spirit of Li et al. 2018's output disagreement, with the kernel of the SVGD runs).

In output space each feature part ``F`` (``M x m``, rows = heads: the output vectors and/or the
attention maps) is first divided by its own group-wide RMS, differentiably,

.. math::

    \\hat f_i = f_i / \\rho(F), \\qquad \\rho(F) = \\sqrt{\\max(\\tfrac{1}{M} \\textstyle\\sum_i |f_i|^2, \\epsilon)},
    \\qquad \\Omega = w \\sum_{\\text{groups}} \\frac{1}{M (M - 1)} \\sum_{i \\ne j} k(\\hat f_i, \\hat f_j),

(``epsilon`` the dtype's smallest normal number, against division by zero; the bandwidth rule is
evaluated on the detached ``\\hat F``; two parts are then joined as in
:func:`attention_adapter.outputs.joined_features`). So ``Omega(c F) = Omega(F)`` for every ``c > 0``
and ``<grad_F Omega, F> = 0`` whatever the bandwidth rule: the gradient has no radial component.
Why: without it the penalty ran away. With a bandwidth computed on detached features, scaling every
head's output up by ``c`` lowers each off-diagonal ``exp(-|f_i - f_j|^2 / h)`` within the step (``h`` only
catches up at the next one), so gradient descent inflated the heads' outputs (the value and output
projections) without bound instead of making the heads differ, and the task loss stalled; the
objective had no minimiser at finite scale. The normalisation leaves only the heads' directions
relative to one another to the penalty. Both parts are normalised: the maps are bounded (each
attention row sums to 1), but their scale still moves with their sharpness, and the same detached
bandwidth would push all maps to sharpen for a lower kernel value; normalising them too makes the
penalty depend on the shape of the parts only, and gives a fixed bandwidth the same meaning for
either part (in units of the mean squared row norm, 1 after the normalisation). The weight and
circuit spaces are unchanged, and so is :class:`attention_adapter.RepulsiveHeads` in output space.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import torch
from torch import nn

from particlesampling import validation

from ._compat import renamed_kwarg, warn_renamed
from .outputs import OutputParticles, check_features, joined_features
from .particles import HeadParticles, HeadSelection, ParticleGroup
from .spaces import check_space, circuit_kernel_similarity, circuit_particles, circuit_structure, output_particles
from .update import compute_dtype, kernel_matrix, resolve_kernel

__all__ = ["HeadRepulsionPenalty", "head_kernel_similarity", "unit_rms"]


def unit_rms(part: torch.Tensor) -> torch.Tensor:
    """``part / rho`` with ``rho = sqrt(max(mean_i |part_i|^2, tiny))`` over the rows ``i`` of ``part`` ``(M, m)``.

    Differentiable in ``part`` (``rho`` included, so the result is invariant under ``part -> c part``,
    ``c > 0``, and a function of it has no gradient along ``part``); ``tiny`` is the smallest normal
    number of the compute dtype (float32 for float16/bfloat16, in which the mean square is taken), so
    an all-zero part stays zero. Returns a tensor of ``part``'s shape and dtype whose rows have mean
    squared norm 1.
    """
    if not isinstance(part, torch.Tensor) or part.dim() != 2:
        raise ValueError(f"expected a 2-D (M, m) tensor, received {getattr(part, 'shape', type(part))}")
    dtype = compute_dtype(part.dtype)
    x = part.to(dtype)
    mean_square = x.pow(2).sum() / max(part.shape[0], 1)
    return (x * torch.rsqrt(mean_square.clamp_min(torch.finfo(dtype).tiny))).to(part.dtype)


def head_kernel_similarity(theta: torch.Tensor, kernel=None, bandwidth=None) -> torch.Tensor:
    """Mean off-diagonal kernel value of the rows of ``theta`` ``(M, P)``; differentiable in ``theta``.

    ``kernel`` and ``bandwidth`` are core specs or objects, resolved as by :class:`RepulsiveHeads`
    (:func:`attention_adapter.update.resolve_kernel`); the bandwidth is computed by the core rule on
    ``theta.detach()`` (:func:`attention_adapter.update.kernel_matrix`). With ``M = 1`` returns 0.
    """
    if not isinstance(theta, torch.Tensor) or theta.dim() != 2:
        raise ValueError(f"expected theta as a 2-D (M, P) tensor, received {getattr(theta, 'shape', type(theta))}")
    m = theta.shape[0]
    if m < 2:
        return theta.sum() * 0.0
    k, _ = kernel_matrix(theta, *resolve_kernel(kernel, bandwidth))
    return (k.sum() - k.diagonal().sum()) / float(m * (m - 1))


class HeadRepulsionPenalty(nn.Module):
    """``Omega = weight * sum_groups mean_{i != j} k(theta_i, theta_j)`` (see the module docstring).

    In output space ``theta_i`` is head ``i``'s features divided by the group's RMS of each part
    (:func:`unit_rms`), so that ``Omega`` is scale-free: without it the penalty was lowered by
    inflating every head's outputs, and it did so without bound (module docstring).

    Parameters
    ----------
    model : nn.Module
    weight : float >= 0
    kernel, bandwidth :
        Core kernel and bandwidth specs (defaults RBF and the core's default median rule), resolved
        as by :class:`attention_adapter.RepulsiveHeads`. In output space the rule sees the normalised
        features, so a fixed bandwidth ``h`` is in units of the mean squared row norm of each part.
    selection : HeadSelection, optional
        Which modules and tensors are particles (default: Q, K, V of every module, separately).
        ``heads=`` is its deprecated alias.
    space : {"weights", "circuits", "outputs"}
        What a head particle is (module docstring); default ``"weights"``.
    tokens : int >= 1
        ``space="outputs"`` only: token positions per module and forward pass (default 64).
    features : {"outputs", "maps", "both"}
        ``space="outputs"`` only: the heads' output vectors (default), attention maps, or both
        (:mod:`attention_adapter.outputs`).
    seed : int >= 0
        ``space="outputs"`` only: base seed of the token subsample.

    Attributes
    ----------
    head_particles : HeadParticles
        The particle groups (``heads`` is its deprecated alias).
    """

    def __init__(self, model: nn.Module, *, weight: float = 1.0, kernel=None, bandwidth=None,
                 selection: Optional[HeadSelection] = None, heads: Optional[HeadSelection] = None,
                 space: str = "weights", tokens: Optional[int] = None, seed: int = 0,
                 features: Optional[str] = None):
        super().__init__()
        weight = validation.check_real("weight", weight, minimum=0)
        selection = renamed_kwarg("HeadRepulsionPenalty", "heads", "selection", heads, selection)
        if selection is None:
            selection = HeadSelection()
        if not isinstance(selection, HeadSelection):
            raise TypeError(f"expected selection as a HeadSelection, received {type(selection).__name__}")
        space = check_space(space)
        for name, value in (("tokens", tokens), ("features", features)):
            if value is not None and space != "outputs":
                raise ValueError(f"{name} is a space='outputs' option; received {name}={value!r} with space={space!r}")
        features = check_features("outputs" if features is None else features) if space == "outputs" else None
        self.features = features
        self.weight = float(weight)
        self.space = space
        self.kernel, self.bandwidth = resolve_kernel(kernel, bandwidth)
        # not registered as sub-modules: the penalty owns no parameters of its own
        if space == "weights":
            particles = selection.build(model)
        elif space == "circuits":
            particles = circuit_particles(selection.build(model))
        else:
            particles = output_particles(selection.build(model), features=features)
        object.__setattr__(self, "head_particles", particles)
        self._structures = ({g.name: circuit_structure(g, selection.include_bias) for g in particles.groups}
                            if space == "circuits" else {})
        self._outputs: Dict[str, tuple] = {}
        self._hooks = None
        if space == "outputs":
            self._hooks = OutputParticles(particles.groups, self._keep, tokens=64 if tokens is None else tokens,
                                          seed=seed, features=features)

    def _keep(self, group: ParticleGroup, parts, params) -> None:
        # joined when the penalty is evaluated, outside the forward pass (an operation here would be
        # saved by a checkpointed segment and not by its recomputation)
        self._outputs[group.name] = parts

    def _joined(self, parts):
        """The parts, each divided by its own RMS (:func:`unit_rms`, the module docstring), joined in units
        of their own bandwidths (:func:`attention_adapter.outputs.joined_features`), and the bandwidth for
        the joined rows."""
        parts = [unit_rms(p) for p in parts]
        scales, bandwidth = joined_features([p.detach() for p in parts], self.bandwidth)
        if len(parts) == 1:
            return parts[0], bandwidth
        return torch.cat([p * c.to(p.dtype) for p, c in zip(parts, scales)], dim=1), bandwidth

    def remove_hooks(self) -> None:
        """Take off the forward hooks of ``space="outputs"`` (no-op in the other spaces)."""
        if self._hooks is not None:
            self._hooks.remove()

    @property
    def heads(self) -> HeadParticles:
        """Deprecated alias of :attr:`head_particles`."""
        warn_renamed("HeadRepulsionPenalty.heads", "HeadRepulsionPenalty.head_particles")
        return self.head_particles

    def per_group(self) -> dict:
        """``{group name: mean off-diagonal kernel value}`` (differentiable 0-d tensors)."""
        groups = self.head_particles.groups
        if self.space == "weights":
            return {g.name: head_kernel_similarity(g.gather("param"), self.kernel, self.bandwidth) for g in groups}
        if self.space == "circuits":
            return {g.name: circuit_kernel_similarity(self._structures[g.name], g.gather("param"), self.kernel,
                                                      self.bandwidth) for g in groups}
        missing = [g.name for g in groups if g.name not in self._outputs]
        if missing:
            raise RuntimeError(f"space='outputs' has no head outputs of {missing}: call the penalty after the model's "
                               "forward pass with gradients enabled, before backward() (reentrant gradient "
                               "checkpointing runs the forward pass without gradients: use use_reentrant=False)")
        out = {}
        for g in groups:
            joined, bandwidth = self._joined(self._outputs[g.name])
            out[g.name] = head_kernel_similarity(joined, self.kernel, bandwidth)
        self._outputs = {}  # one penalty per forward pass
        return out

    def forward(self) -> torch.Tensor:
        terms = list(self.per_group().values())
        return torch.stack(terms).sum() * self.weight
