"""What each method of the study changes in a training step.

A method has one hyper-parameter (its *knob*) with three candidate values, so that every method gets
the same tuning effort: three trials, chosen on dev accuracy (:mod:`.plan`). The baseline has no knob.

``baseline``
    Cross-entropy, AdamW, gradient clipping at norm 1.
``svgd``, ``spos``
    :class:`attention_adapter.RepulsiveHeads` with the paper preset ``An2020(alpha, epsilon=1,
    beta=1)`` (An et al. 2020: ``Ĝ = epsilon (1/M)[K G - alpha R]``, SPOS adds ``beta G`` and noise
    ``sqrt(2 beta / epsilon) median|G| xi``); knob ``alpha``. ``epsilon = 1`` as published for Lin et
    al.'s classifier: Adam makes the SVGD update invariant to ``epsilon``, and for SPOS it sets the
    noise-to-signal ratio.
``svgd_posterior``, ``spos_posterior``
    The principled mode: the heads sample ``p(theta | D)`` with ``N`` = training-set size and a
    ``N(0, 1)`` prior, score ``S = -N G + grad log p``, ``Ĝ = -phi`` (``step_size = 1``); knob
    ``repulsion`` (1 = SVGD proper; ``a`` > 1 targets the tempered posterior ``p^(1/a)``, Liu & Wang's
    repulsion weight). The optimiser is still AdamW (as in every arm), which rescales the update.
``spos_no_noise``, ``langevin_heads``, ``spos_repulsion_only``, ``spos_no_drive``
    ``spos_posterior`` with terms of its update switched off through :class:`RepulsiveHeads`'s
    options (``Ĝ = -[S + (1/M) K S + (a/M) R] - sqrt(2 / lr) xi`` here): without the noise
    (``noise=False``); the Langevin drift and the noise only, heads not interacting
    (``kernel_drive=False, repulsion=0``: SGLD heads, no knob); the drift and the repulsive term
    (``kernel_drive=False, noise=False``); the repulsive term and the noise (``kernel_drive=False,
    langevin_drift=False``). Knob ``repulsion`` (none for ``langevin_heads``); not tuned, the
    strong-repulsion study (:mod:`.strong_repulsion`) runs them at ``spos_posterior``'s tuned value.
``svgd_circuits``, ``spos_circuits``, ``svgd_outputs``, ``spos_outputs``
    ``svgd`` and ``spos`` (the paper preset, knob ``alpha``) with the head particles in another space
    (``RepulsiveHeads(space=...)``, :mod:`attention_adapter.spaces`): their QK and OV circuits, or their
    outputs on the batch (function space, 64 token positions per module and step).
``penalty_outputs_rms``
    ``penalty`` in function space: the mean off-diagonal kernel of the heads' outputs on the batch,
    each module's outputs divided by their RMS over the heads (scale-free),
    ``HeadRepulsionPenalty(space="outputs")``; knob ``weight``. It replaces ``penalty_outputs``
    (:data:`RETIRED`), the same arm before that normalisation, whose penalty was lowered by inflating
    the heads' outputs without bound (issue #22); its records are kept apart, never rerun.
``penalty``
    The adapter's :class:`~attention_adapter.HeadRepulsionPenalty` (mean off-diagonal RBF kernel of
    the same head particles, with the paper preset's ``"an2020"`` bandwidth so that the kernel is the
    same as in ``svgd``) added to the loss; knob ``weight``.
``disagreement``
    Li et al. (EMNLP 2018) output disagreement: ``loss + lambda * mean_{i != j} cos(O_i, O_j)``,
    ``O_h`` head ``h``'s outputs over the batch (:func:`attention_adapter.head_output_similarity`),
    averaged over attention modules; knob ``lambda``.
``drophead``
    DropHead (Zhou et al. 2020) on every attention module (:mod:`.head_gates`); knob ``p``.
``lin_penalty``
    Lin et al. (2017)'s redundancy penalty for the self-attentive encoder, ``loss + c ||A A^T - I||_F``
    (:func:`attention_adapter.lin_redundancy`, the Frobenius norm averaged over the batch; Lin et al.
    square it); knob ``c``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from attention_adapter import (
    An2020,
    HeadRepulsionPenalty,
    Posterior,
    RepulsiveHeads,
    head_output_similarity,
    lin_redundancy,
    mean_offdiagonal,
)

__all__ = ["METHODS", "RETIRED", "MethodSpec", "Active", "activate", "check_method"]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    knob: Optional[str]
    grid: Tuple[float, ...]
    models: Tuple[str, ...] = ("minilm", "transformer", "self_attentive")


METHODS: Dict[str, MethodSpec] = {m.name: m for m in (
    MethodSpec("baseline", None, ()),
    MethodSpec("svgd", "alpha", (0.01, 0.1, 1.0)),
    MethodSpec("spos", "alpha", (0.01, 0.1, 1.0)),
    MethodSpec("svgd_posterior", "repulsion", (1.0, 100.0, 10000.0)),
    MethodSpec("spos_posterior", "repulsion", (1.0, 100.0, 10000.0)),
    MethodSpec("spos_no_noise", "repulsion", ()),
    MethodSpec("langevin_heads", None, ()),
    MethodSpec("spos_repulsion_only", "repulsion", ()),
    MethodSpec("spos_no_drive", "repulsion", ()),
    MethodSpec("penalty", "weight", (0.1, 1.0, 10.0)),
    MethodSpec("disagreement", "lambda", (0.01, 0.1, 1.0)),
    MethodSpec("drophead", "p", (0.1, 0.2, 0.3)),
    MethodSpec("lin_penalty", "c", (0.01, 0.1, 1.0), models=("self_attentive",)),
    MethodSpec("svgd_circuits", "alpha", (0.01, 0.1, 1.0)),
    MethodSpec("spos_circuits", "alpha", (0.01, 0.1, 1.0)),
    MethodSpec("svgd_outputs", "alpha", (0.01, 0.1, 1.0)),
    MethodSpec("spos_outputs", "alpha", (0.01, 0.1, 1.0)),
    MethodSpec("penalty_outputs_rms", "weight", (0.1, 1.0, 10.0)),
)}

#: methods no longer run, with why: their records (keyed by the method's name) stay apart from the new arms'
RETIRED: Dict[str, str] = {
    "penalty_outputs": "the function-space penalty before its outputs were RMS-normalised: it was lowered by "
                       "inflating the heads' outputs without bound (issue #22); use 'penalty_outputs_rms'",
}


def check_method(name: str) -> MethodSpec:
    """``METHODS[name]``; ValueError naming the methods (and why, for a retired one) otherwise."""
    if name in RETIRED:
        raise ValueError(f"method {name!r} is retired: {RETIRED[name]}")
    if name not in METHODS:
        raise ValueError(f"expected a method in {tuple(METHODS)}, received {name!r}")
    return METHODS[name]


#: the ablation arms of ``spos_posterior``: the RepulsiveHeads options each sets
SPOS_SWITCHES: Dict[str, Dict[str, object]] = {
    "spos_no_noise": {"noise": False},
    "langevin_heads": {"kernel_drive": False, "repulsion": 0.0},
    "spos_repulsion_only": {"kernel_drive": False, "noise": False},
    "spos_no_drive": {"kernel_drive": False, "langevin_drift": False},
}


#: the paper preset in the other particle spaces: method -> (update rule, space)
SPACE_ARMS: Dict[str, Tuple[str, str]] = {
    "svgd_circuits": ("svgd", "circuits"), "spos_circuits": ("spos", "circuits"),
    "svgd_outputs": ("svgd", "outputs"), "spos_outputs": ("spos", "outputs"),
}


class Active:
    """A method set up on one model: ``drop_prob``/``keep_outputs`` for the gates, ``extra_loss``,
    ``after_backward`` (the adapter), ``repulsive`` (the adapter, or None)."""

    def __init__(self, drop_prob: float = 0.0, keep_outputs: bool = False,
                 extra_loss: Optional[Callable[[nn.Module, Dict[str, torch.Tensor]], torch.Tensor]] = None,
                 repulsive: Optional[RepulsiveHeads] = None):
        self.drop_prob = drop_prob
        self.keep_outputs = keep_outputs
        self.extra_loss = extra_loss
        self.repulsive = repulsive


def activate(name: str, value: Optional[float], model: nn.Module, *, train_size: int, seed: int,
             optimizer: torch.optim.Optimizer) -> Active:
    """Set up method ``name`` with knob ``value`` on ``model``."""
    spec = check_method(name)
    if spec.knob is not None and value is None:
        raise ValueError(f"method {name!r} needs a value for its knob {spec.knob!r}")
    selection = model.head_selection()
    if name == "baseline":
        return Active()
    if name in ("svgd", "spos") or name in SPACE_ARMS:
        rule, space = SPACE_ARMS.get(name, (name, "weights"))
        rh = RepulsiveHeads(model, rule, preset=An2020(alpha=value, epsilon=1.0, beta=1.0),
                            selection=model.head_selection(), seed=seed, space=space)
        return Active(repulsive=rh)
    if name == "penalty_outputs_rms":
        pen = HeadRepulsionPenalty(model, weight=value, selection=selection, bandwidth="an2020", space="outputs",
                                   seed=seed)
        return Active(extra_loss=lambda m, outputs: pen())
    if name in ("svgd_posterior", "spos_posterior") or name in SPOS_SWITCHES:
        rule = "svgd" if name == "svgd_posterior" else "spos"
        switches = dict(SPOS_SWITCHES.get(name, {}))
        repulsion = switches.pop("repulsion", value)
        rh = RepulsiveHeads(model, rule, step_size=1.0, repulsion=repulsion, selection=selection, seed=seed,
                            posterior=Posterior(dataset_size=train_size, prior=1.0), **switches)
        if rule == "spos":
            # the SPOS noise scale reads the optimizer's learning rate; apply() is called by hand
            # before clipping, so the pre-step hook itself is removed at once
            rh.attach(optimizer).remove()
        return Active(repulsive=rh)
    if name == "penalty":
        pen = HeadRepulsionPenalty(model, weight=value, selection=selection, bandwidth="an2020")
        return Active(extra_loss=lambda m, outputs: pen())
    if name == "disagreement":
        def disagreement(m, outputs):
            sims = [mean_offdiagonal(head_output_similarity(o)) for o in outputs.values()]
            return value * torch.stack(sims).mean()

        return Active(keep_outputs=True, extra_loss=disagreement)
    if name == "drophead":
        return Active(drop_prob=value)
    if name == "lin_penalty":
        if not hasattr(model, "last_maps"):
            raise ValueError("lin_penalty is defined for the self-attentive encoder only")
        return Active(extra_loss=lambda m, outputs: value * lin_redundancy(m.last_maps))
    raise AssertionError(name)
