"""Hugging Face ``transformers.Trainer`` integration: :class:`RepulsiveHeadsCallback`.

Where the adapter runs in the Trainer's step (transformers 5.23, ``Trainer._inner_training_loop``)::

    for each micro-batch:  training_step -> loss.backward()        (accumulated, no_sync but the last)
    after the last one:    clip_grad_norm_(max_grad_norm)           (if TrainingArguments.max_grad_norm > 0)
                           _get_grad_norm: clip_grad_norm_(inf)     (the logged grad_norm; unscales fp16
                                                                     gradients, also with max_grad_norm=0)
                           callbacks.on_pre_optimizer_step          <- RepulsiveHeadsCallback: heads.apply(),
                                                                       then its own clipping
                           optimizer.step()
                           callbacks.on_optimizer_step
                           lr_scheduler.step(); model.zero_grad()

``on_pre_optimizer_step`` is the first callback event that sees the accumulated (and, under fp16,
unscaled and DDP-averaged) gradients, and the last before the update. Under fp16 the unscaling is
done by accelerate's ``clip_grad_norm_``, which the Trainer calls before this event for the
gradient norm it logs (``Trainer._get_grad_norm``, a private method of transformers 5.23) even when
it does not clip; ``tests/integration/test_adapter_trainer.py`` runs the callback with a real
``GradScaler`` and fails if the transform ever receives scaled gradients, so a transformers version
that moves the unscaling is caught. The Trainer's own gradient
clipping runs *before* it, so with the Trainer's clipping the adapter would transform clipped
gradients and the optimizer would receive unclipped transformed ones. The transform is not
scale-equivariant (the driving term ``K G`` scales with ``G``, the repulsion does not), so clipping
first changes the balance of driving and repulsion on exactly the steps where clipping is active.
An optimizer pre-step hook (``heads.attach(optimizer)`` in ``on_train_begin``) runs at the same point,
after the Trainer's clipping, and leaves no place to clip afterwards; it is therefore not used.

So the callback requires ``TrainingArguments(max_grad_norm=0)`` (the Trainer's default is 1.0) and
clips itself, after the adapter, with its own ``max_grad_norm`` (the order of the adapter's plain
loops and of the authors' fairseq trainer). ``allow_trainer_clipping=True`` accepts the Trainer's
clipping before the adapter instead. The Trainer's logged ``grad_norm`` is the norm before the
adapter either way.
"""

from __future__ import annotations

from typing import Optional

import torch

from particlesampling import validation

from .repulsive import ApplyInfo, RepulsiveHeads

try:  # transformers is optional for the rest of attention_adapter, required here
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "attention_adapter.hf_trainer needs transformers (pip install transformers==5.23.0 accelerate==1.15.0)"
    ) from exc

__all__ = ["RepulsiveHeadsCallback"]


class RepulsiveHeadsCallback(TrainerCallback):
    """Apply :class:`~attention_adapter.RepulsiveHeads` inside ``transformers.Trainer`` training.

    ::

        from transformers import Trainer, TrainingArguments
        from attention_adapter import An2020, RepulsiveHeads, RepulsiveHeadsCallback

        heads = RepulsiveHeads(model, preset=An2020(alpha=0.01, epsilon=0.01))
        args = TrainingArguments(output_dir="out", max_grad_norm=0.0, ...)   # the Trainer must not clip
        trainer = Trainer(model=model, args=args, train_dataset=train,
                          callbacks=[RepulsiveHeadsCallback(heads, max_grad_norm=1.0)])   # clips after
        trainer.train()

    ``heads.apply()`` runs once per optimizer step, in ``on_pre_optimizer_step``: after the
    micro-batches of gradient accumulation have been summed (and, with DDP, averaged; with fp16,
    unscaled) and before ``optimizer.step()``; then, if ``max_grad_norm`` is set, all gradients of
    the model are clipped to that norm (see the module docstring for why the Trainer's own clipping,
    which runs before this event, has to be off).

    Parameters
    ----------
    heads : RepulsiveHeads
        Built on the model given to the Trainer (or on a wrapper of it: DDP, ``torch.compile``, PEFT).
    max_grad_norm : float > 0, optional
        Clip the global gradient norm of the model's parameters after the adapter (the Trainer's
        ``max_grad_norm``, moved to the right place). ``None``: no clipping.
    allow_trainer_clipping : bool
        Accept ``TrainingArguments.max_grad_norm > 0``, i.e. the Trainer clipping the raw gradients
        *before* the adapter (and the transformed ones left unclipped). Off by default.

    Attributes
    ----------
    last_info : ApplyInfo or None
        What the most recent ``heads.apply()`` returned (``info.summary()`` for logging).

    Raises (at ``on_train_begin``)
    ------------------------------
    ValueError
        The Trainer clips (``max_grad_norm > 0``) and ``allow_trainer_clipping`` is false; the heads'
        parameters are not parameters of the Trainer's model; the Trainer shards parameters (FSDP,
        DeepSpeed: it does so after the adapter was built, replacing the head parameters); fp16 training with
        ``on_nonfinite="raise"`` (overflow steps, which the grad scaler skips, would raise: build the
        adapter with ``on_nonfinite="skip"``).
    """

    def __init__(self, heads: RepulsiveHeads, *, max_grad_norm: Optional[float] = None,
                 allow_trainer_clipping: bool = False):
        if not isinstance(heads, RepulsiveHeads):
            raise TypeError(f"expected heads as a RepulsiveHeads, received {type(heads).__name__}")
        max_grad_norm = validation.check_real("max_grad_norm", max_grad_norm, minimum=0, inclusive=False,
                                              optional=True)
        validation.check_bool("allow_trainer_clipping", allow_trainer_clipping)
        self.heads = heads
        self.max_grad_norm = max_grad_norm
        self.allow_trainer_clipping = allow_trainer_clipping
        self.last_info: Optional[ApplyInfo] = None

    def __repr__(self) -> str:
        return (f"RepulsiveHeadsCallback({self.heads!r}, max_grad_norm={self.max_grad_norm}, "
                f"allow_trainer_clipping={self.allow_trainer_clipping})")

    # ------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        trainer_clip = float(getattr(args, "max_grad_norm", 0.0) or 0.0)
        if trainer_clip > 0 and not self.allow_trainer_clipping:
            raise ValueError(
                f"expected TrainingArguments(max_grad_norm=0) with RepulsiveHeadsCallback, received "
                f"max_grad_norm={trainer_clip!r}: the Trainer clips before on_pre_optimizer_step, i.e. before "
                f"the adapter. Pass RepulsiveHeadsCallback(heads, max_grad_norm={trainer_clip!r}) to clip after "
                "it, or allow_trainer_clipping=True to keep the Trainer's clipping before the adapter"
            )
        sharded = [name for name, on in (("fsdp", bool(getattr(args, "fsdp", None))),
                                         ("deepspeed", bool(getattr(args, "deepspeed", None)))) if on]
        if sharded:
            raise ValueError(
                f"expected a Trainer without parameter sharding (single process or DDP), received TrainingArguments "
                f"with {', '.join(sharded)}: the Trainer shards the model after the adapter was built on it, replacing "
                "the head parameters (for FSDP2, build the adapter after fully_shard in your own loop)"
            )
        if getattr(args, "fp16", False) and self.heads.on_nonfinite == "raise":
            raise ValueError(
                "expected RepulsiveHeads(..., on_nonfinite='skip') with fp16 training (overflow steps have "
                "non-finite gradients and are skipped by the grad scaler), received on_nonfinite='raise'"
            )
        if model is not None:
            owned = {id(p) for p in model.parameters()}
            foreign = [p for p in self.heads.head_particles.parameters() if id(p) not in owned]
            if foreign:
                raise ValueError(
                    f"expected the heads of the Trainer's model, received a RepulsiveHeads built on another "
                    f"model ({len(foreign)} of its {len(self.heads.head_particles.parameters())} head parameters are not "
                    f"parameters of {type(model).__name__})"
                )
        if self.heads.method == "spos" and self.heads.settings.lr is None and optimizer is not None:
            # SPOS noise needs the learning rate the optimizer applies: bind the Trainer's optimizer so it
            # is read at every step (following the lr scheduler); the pre-step hook itself is not wanted,
            # the callback calls apply() (before its clipping), so the hook is removed at once
            self.heads.attach(optimizer).remove()
        return control

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.last_info = self.heads.apply()
        if self.max_grad_norm is not None:
            if model is None:
                raise ValueError("expected the Trainer to pass model= to on_pre_optimizer_step, received None")
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None],
                                           self.max_grad_norm)
        return control
