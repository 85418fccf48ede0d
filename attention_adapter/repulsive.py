"""``RepulsiveHeads``: rewrite the attention heads' gradients into the SVGD/SPOS direction.

Between ``loss.backward()`` and ``optimizer.step()`` each particle group's gradient ``G`` (``M x P``,
one row per head) is replaced, in place, by ``Ĝ = head_update(X, G, settings, xi)``
(:func:`attention_adapter.update.head_update`, whose docstring states the four update rules: SVGD
and SPOS for a stated posterior, and An et al. (2020)'s SVGD and SPOS forms); the unchanged
optimizer then steps along ``-Ĝ``. This module is the stateful shell around that pure function: it
chooses the particles (:class:`~attention_adapter.HeadSelection`), holds the step counter, the SPOS
noise seed and the optimizer reference, checks the gradients are finite, and writes the result
back. Groups of equal shape, dtype, device and learning rate (the Q, K and V groups of all layers
of a uniform model) are stacked and updated in one call of
:func:`attention_adapter.update.head_update_batched`, which gives each group the result of its own
``head_update`` call (to float rounding); the noise is still drawn group by group, in group order.

``space`` chooses what a particle is (:mod:`attention_adapter.spaces`): the heads' weights (default),
their QK/OV circuits (the kernel on circuit distances, :func:`attention_adapter.spaces.circuit_direction`),
or their outputs on the batch (function space: the kernel and the repulsion computed on the heads'
outputs during the forward pass and pulled back to their parameters, :mod:`attention_adapter.outputs`).
Only the Stein direction ``phi`` changes; the scores, step size, SPOS drift and noise are the same.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

import torch
from torch import nn

import particlesampling as ps
from particlesampling import validation

from ._compat import renamed_kwarg, warn_renamed
from .noise import StepNoise
from .outputs import OutputParticles, check_features, gather_columns, joined_features, rows_of, sum_over_ranks
from .particles import HeadParticles, HeadSelection, ParticleGroup
from .sharding import FullTensors, check_sharding, check_wrappers, grad_version
from .spaces import (
    CircuitStructure,
    check_space,
    circuit_direction,
    circuit_particles,
    circuit_structure,
    output_particles,
)
from .update import UPDATE_RULES, An2020, Posterior, UpdateSettings, compute_dtype, head_update, head_update_batched

__all__ = ["RepulsiveHeads", "ApplyInfo", "NonFiniteGradientError", "PRESETS"]

#: named presets (``preset="an2020"`` is ``preset=An2020()``)
PRESETS = {"an2020": An2020}
_ON_NONFINITE = ("raise", "skip")


class NonFiniteGradientError(FloatingPointError):
    """A head gradient is NaN or infinite (raised by :meth:`RepulsiveHeads.apply`)."""


class ApplyInfo(NamedTuple):
    """What one :meth:`RepulsiveHeads.apply` did.

    Attributes
    ----------
    step : int
        Index of this step (0-based); the SPOS noise depends on it.
    groups : dict name -> particlesampling.SteinInfo
        Per group: ``bandwidth`` ``h`` (0-d tensor, ``k = exp(-D2 / h)``), ``mean_kernel`` (mean
        off-diagonal ``K``), ``driving_norm``, ``repulsion_norm``. Tensors, no host sync.
    missing : tuple of str
        Groups left untouched because a gradient was ``None`` (module unused this step).
    nonfinite : tuple of str
        Groups with a non-finite gradient (only with ``on_nonfinite="skip"``; the whole step is then
        skipped and every gradient is left as it was).
    """

    step: int
    groups: Dict[str, ps.SteinInfo]
    missing: Tuple[str, ...] = ()
    nonfinite: Tuple[str, ...] = ()

    @property
    def skipped(self) -> bool:
        """Whether the transform was skipped for non-finite gradients."""
        return bool(self.nonfinite)

    def summary(self) -> Dict[str, float]:
        """Means over groups of bandwidth and mean kernel value, as Python floats (host sync)."""
        if not self.groups:
            return {}
        infos = list(self.groups.values())
        return {
            "bandwidth": float(torch.stack([i.bandwidth.float().mean() for i in infos]).mean()),
            "mean_kernel": float(torch.stack([i.mean_kernel.float() for i in infos]).mean()),
        }


def _stacks(present, lrs) -> List[List[int]]:
    """Indices of ``present`` (``(group, grad)`` pairs) in stacks of equal gradient shape, dtype and
    device and equal SPOS learning rate, each in group order; stacks ordered by their first group."""
    stacks: Dict[Any, List[int]] = {}
    for i, ((_, grad), lr) in enumerate(zip(present, lrs)):
        stacks.setdefault((tuple(grad.shape), grad.dtype, grad.device, lr), []).append(i)
    return list(stacks.values())


def _resolve_preset(preset: Any) -> Optional[An2020]:
    if preset is None or isinstance(preset, An2020):
        return preset
    if isinstance(preset, str) and preset in PRESETS:
        return PRESETS[preset]()
    raise ValueError(f"expected preset None, An2020(...) or one of {tuple(PRESETS)}, received {preset!r}")


class RepulsiveHeads:
    """Treat the heads of every attention module as SVGD/SPOS particles during ordinary training.

    Use it between ``loss.backward()`` and ``optimizer.step()``::

        heads = RepulsiveHeads(model, preset=An2020(alpha=0.01, epsilon=0.01))   # the paper's trainer
        heads = RepulsiveHeads(model, "svgd", posterior=Posterior(dataset_size=len(train_set), prior=1.0))
        ...
        loss.backward()
        heads.apply()                      # or once: heads.attach(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)   # clipping after the adapter
        optimizer.step()

    Parameters
    ----------
    model : nn.Module
        Any model; attention modules are discovered (see :func:`attention_adapter.find_attention`).
        A ``DistributedDataParallel`` wrapper or the wrapped module both work.
    method : {"svgd", "spos"}
        The update rule (:data:`attention_adapter.UPDATE_RULES`).
    step_size : float > 0, optional
        ``e``: ``Ĝ = -e phi`` (SVGD), ``Ĝ = -e (S / beta + phi) - ...`` (SPOS). Default 1.0.
    repulsion : float >= 0, optional
        Weight of the repulsive term of ``phi`` (1.0 = SVGD proper, the default).
    preset : None, "an2020" or An2020
        ``An2020(alpha, epsilon, beta)``: the authors' fairseq formula in the paper's symbols
        (:class:`attention_adapter.An2020`). It fixes ``step_size``, ``repulsion``, ``beta``,
        ``posterior``, ``kernel``, ``bandwidth``, ``lr`` and the particle choice (Q, K, V separate);
        passing them is an error (``selection=HeadSelection(layers=..., layouts=...)`` is allowed).

    Keyword-only
    ------------
    selection : HeadSelection, optional
        Which modules and tensors are particles (default: Q, K, V of every attention module,
        separately). ``heads=`` is its deprecated alias.
    posterior : Posterior, optional
        ``N`` and prior of the score ``S = -N G + grad log p(theta)`` (default ``N = 1``, flat).
    beta : float > 0, optional
        SPOS only: the core's SPOS ``beta`` (drift ``S / beta``, noise variance
        ``2 lr step_size / beta``). Default 1.0.
    kernel, bandwidth :
        Core specs (:func:`particlesampling.get_kernel`, :func:`particlesampling.get_bandwidth`).
        Defaults RBF and the core's default median rule (``"liu_wang"``).
    seed : int >= 0
        Base seed of the SPOS noise (see :mod:`attention_adapter.noise`).
    lr : float > 0, optional
        SPOS only: the learning rate the optimizer applies to these gradients (the noise scale
        depends on it). If omitted, read at every step from the optimizer given to :meth:`attach`.
    on_nonfinite : {"raise", "skip"}
        A NaN/inf head gradient raises :class:`NonFiniteGradientError` naming the module, or, with
        ``"skip"``, leaves every gradient untouched for that step (use with ``GradScaler``, which
        then skips the optimizer step). The check costs one device-to-host sync per step.
    check_finite : bool
        Set False to drop the check (and its sync); non-finite values then propagate.
    space : {"weights", "circuits", "outputs"}
        What a head particle is (:mod:`attention_adapter.spaces`): its weight rows (default; An et
        al. 2020), its QK and OV circuits (a kernel invariant under the reparametrisations that
        leave the head's function unchanged), or its outputs on the current batch (function space,
        Wang et al. 2019: ``phi = (K_f S) / M + repulsion J^T R_f / M`` with ``K_f``, ``R_f`` the
        kernel and repulsion of the heads' outputs and ``J`` their Jacobian in the head's
        parameters). ``"outputs"`` records the outputs with forward hooks: run the forward pass
        with gradients enabled before each :meth:`apply`; :meth:`remove_hooks` takes the hooks off.
    tokens : int >= 1
        ``space="outputs"`` only: token positions per module and forward pass (a seeded
        subsample) on which the heads are compared. Default 64.
    features : {"outputs", "maps", "both"}
        ``space="outputs"`` only: what a head's function is on those tokens
        (:mod:`attention_adapter.outputs`): its output vectors (default), its attention maps (the
        query and key blocks are then the particles; needs eager attention, which returns the maps),
        or both, each part measured in units of its own bandwidth.
    kernel_drive, langevin_drift, noise : bool
        Switch one term of the update off, leaving the others exactly as they are (ablations; all
        True by default): ``kernel_drive`` the kernel-smoothed drive ``(1/M) K S`` of ``phi``; for
        SPOS ``langevin_drift`` the drift ``S / beta`` and ``noise`` the Gaussian term (the
        repulsive term is switched off by ``repulsion=0``). ``method="spos", kernel_drive=False,
        repulsion=0`` is Langevin dynamics of each head alone (SGLD heads). See
        :mod:`attention_adapter.update`. Allowed with a preset.
    num_threads : int or None
        Intra-op CPU threads used inside :meth:`apply` when the heads are on the CPU (torch's setting
        is restored afterwards). Default 1: the transform is a few dozen small, memory-bound
        operations per group, for which OpenMP synchronisation tends to cost more than it saves
        (``benchmarks/bench_adapter_overhead.py --adapter-threads N`` measures it on a given
        machine). ``None`` keeps torch's setting.

    Attributes
    ----------
    settings : UpdateSettings
        The validated, immutable settings passed to :func:`attention_adapter.head_update`.
    preset : An2020 or None
    selection : HeadSelection
        The particle choice it was built with.
    head_particles : HeadParticles
        The particle groups ``selection.build(model)`` found (``report()`` prints them; ``heads``
        is its deprecated alias).
    last_info : ApplyInfo or None
        Info of the most recent :meth:`apply`.
    """

    def __init__(self, model: nn.Module, method: str = "svgd", step_size: Optional[float] = None,
                 repulsion: Optional[float] = None, preset: Union[None, str, An2020] = None, *,
                 selection: Optional[HeadSelection] = None, posterior: Optional[Posterior] = None,
                 beta: Optional[float] = None, kernel=None, bandwidth=None, seed: int = 0,
                 lr: Optional[float] = None, on_nonfinite: str = "raise", check_finite: bool = True,
                 num_threads: Optional[int] = 1, heads: Optional[HeadSelection] = None, space: str = "weights",
                 tokens: Optional[int] = None, features: Optional[str] = None, kernel_drive: bool = True,
                 langevin_drift: bool = True, noise: bool = True):
        if method not in UPDATE_RULES:
            raise ValueError(f"expected method in {UPDATE_RULES}, received {method!r}")
        space = check_space(space)
        for name, value in (("tokens", tokens), ("features", features)):
            if value is not None and space != "outputs":
                raise ValueError(f"{name} is a space='outputs' option; received {name}={value!r} with space={space!r}")
        features = check_features("outputs" if features is None else features) if space == "outputs" else None
        preset = _resolve_preset(preset)
        selection = renamed_kwarg("RepulsiveHeads", "heads", "selection", heads, selection)
        if selection is None:
            selection = HeadSelection()
        if not isinstance(selection, HeadSelection):
            raise TypeError(f"expected selection as a HeadSelection, received {type(selection).__name__}")
        if posterior is not None and not isinstance(posterior, Posterior):
            raise TypeError(f"expected posterior as a Posterior, received {type(posterior).__name__}")
        validation.check_choice("on_nonfinite", on_nonfinite, _ON_NONFINITE)
        seed = validation.check_int("seed", seed, minimum=0)
        validation.check_bool("check_finite", check_finite)
        num_threads = validation.check_int("num_threads", num_threads, minimum=1, optional=True)
        if preset is not None:
            given = dict(step_size=step_size, repulsion=repulsion, beta=beta, posterior=posterior, kernel=kernel,
                         bandwidth=bandwidth, lr=lr)
            clash = sorted(k for k, v in given.items() if v is not None)
            clash += sorted(k for k, v in selection.particle_choice().items() if v != preset.particle_choice[k])
            if clash:
                raise ValueError(
                    f"preset {preset!r} fixes {', '.join(clash)}; received them explicitly. Set the paper's "
                    "alpha, epsilon, beta in An2020(...), and only layers/layouts in selection=HeadSelection(...); "
                    "use preset=None for a custom configuration."
                )
            self.settings = dataclasses.replace(preset.settings(method), kernel_drive=kernel_drive,
                                                langevin_drift=langevin_drift, noise=noise)
        else:
            if beta is not None and method != "spos":
                raise ValueError(f"beta is an SPOS option; received beta={beta!r} with method={method!r}")
            self.settings = UpdateSettings(
                method=method, step_size=1.0 if step_size is None else step_size,
                repulsion=1.0 if repulsion is None else repulsion, beta=1.0 if beta is None else beta,
                posterior=posterior or Posterior(), kernel=kernel, bandwidth=bandwidth, lr=lr,
                kernel_drive=kernel_drive, langevin_drift=langevin_drift, noise=noise)
        self.preset = preset
        self.seed = seed
        self.on_nonfinite = on_nonfinite
        self.check_finite = check_finite
        self.num_threads = num_threads
        self.selection = selection
        self.space = space
        self.features = features
        check_wrappers(model)  # FSDP1 is refused before discovery
        self._structures: Dict[str, CircuitStructure] = {}
        self._outputs: Optional[OutputParticles] = None
        self._recorded: Dict[str, Any] = {}
        if space == "weights":
            self.head_particles = selection.build(model)
        elif space == "circuits":
            self.head_particles = circuit_particles(selection.build(model))
            self._structures = {g.name: circuit_structure(g, selection.include_bias)
                                for g in self.head_particles.groups}
        else:  # one system per module over all of its heads' blocks (their outputs share one kernel)
            self.head_particles = output_particles(selection.build(model), features=features)
        check_sharding(model, self.head_particles.groups)  # FSDP2: supported shard layouts only
        if space == "outputs":
            self._outputs = OutputParticles(self.head_particles.groups, self._record_outputs,
                                            tokens=64 if tokens is None else tokens, seed=seed, features=features)
        self._step = 0
        self._optimizer_ref = None
        self._param_group_of: Dict[int, int] = {}
        self._last_grads: List[Tuple[nn.Parameter, Any, int]] = []
        self.last_info: Optional[ApplyInfo] = None

    @property
    def method(self) -> str:
        """``"svgd"`` or ``"spos"``."""
        return self.settings.method

    @property
    def heads(self) -> HeadParticles:
        """Deprecated alias of :attr:`head_particles`."""
        warn_renamed("RepulsiveHeads.heads", "RepulsiveHeads.head_particles")
        return self.head_particles

    # ------------------------------------------------------------------------------------------
    @property
    def groups(self) -> Tuple[ParticleGroup, ...]:
        return self.head_particles.groups

    @property
    def step(self) -> int:
        """Number of :meth:`apply` calls so far (the next step's index)."""
        return self._step

    def report(self) -> str:
        """Readable summary of the attention modules and particle groups (see ``HeadParticles.report``)."""
        return self.head_particles.report()

    def __repr__(self) -> str:
        st = self.settings
        off = "".join(f", {k}=False" for k in ("kernel_drive", "langevin_drift", "noise") if not getattr(st, k))
        return (f"RepulsiveHeads(method={st.method!r}, preset={self.preset!r}, space={self.space!r}, "
                f"groups={len(self.groups)}, "
                f"step_size={st.step_size}, repulsion={st.repulsion}{off}, step={self._step})")

    # ------------------------------------------------------------------------------------------
    def _check_not_reapplied(self) -> None:
        for param, ref, version in self._last_grads:
            t = ref()
            if t is not None and t is param.grad and grad_version(t) == version:
                raise RuntimeError(
                    "RepulsiveHeads.apply() called twice on the same gradients (no backward in between): "
                    "the repulsion would be applied twice. Call it once per optimizer step (apply() or attach(), "
                    "not both)."
                )

    def _remember_grads(self, present) -> None:
        refs = []
        for g, _ in present:
            grad = g.blocks[0].param.grad
            refs.append((g.blocks[0].param, weakref.ref(grad), grad_version(grad)))
        self._last_grads = refs

    def _spos_lr(self, group: ParticleGroup) -> Optional[float]:
        """The learning rate for the SPOS noise: ``settings.lr``, else the attached optimizer's."""
        if self.settings.method != "spos" or not self.settings.noise or self.settings.lr is not None:
            return None
        opt = self._optimizer_ref() if self._optimizer_ref is not None else None
        idx = self._param_group_of.get(id(group.blocks[0].param))
        if opt is None or idx is None:
            raise ValueError(
                "method='spos' needs the optimizer's learning rate for the noise scale: "
                "pass lr=... or attach(optimizer); received neither"
            )
        return float(opt.param_groups[idx]["lr"])

    def apply(self) -> ApplyInfo:
        """Rewrite the head gradients in place; call after ``backward()`` (and ``scaler.unscale_``).

        Returns
        -------
        ApplyInfo
            Per-group bandwidth and mean kernel value (0-d tensors), and which groups were missing a
            gradient or non-finite.

        Raises
        ------
        NonFiniteGradientError
            A head gradient is NaN/inf and ``on_nonfinite="raise"``; the message names the module.
        RuntimeError
            Called twice on the same gradients.
        """
        first = self.head_particles.groups[0].blocks[0].param
        if self.num_threads is None or first.device.type != "cpu":
            with torch.no_grad():
                return self._apply()
        saved = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        try:
            with torch.no_grad():
                return self._apply()
        finally:
            torch.set_num_threads(saved)

    def _apply(self) -> ApplyInfo:
        # check, noise, update, then write back: every step that can raise runs before the first
        # write, so an apply() that raises leaves the gradients, the step counter (hence the SPOS
        # noise stream) and last_info exactly as they were
        step = self._step
        full = FullTensors()  # sharded (FSDP2) parameters: full tensors, all-gathered once per step
        present, missing = self._gradients(full)
        self._check_not_reapplied()
        bad = self._nonfinite(present, step)
        if bad:  # on_nonfinite="skip": the step counts, nothing is written
            return self._finish(step, ApplyInfo(step, {}, tuple(missing), tuple(g.name for g in bad)))
        directions = self._directions(present)
        lrs = [self._spos_lr(g) for g, _ in present]
        xis = self._noise(present, step)
        new, infos = self._updates(present, xis, lrs, full, directions)
        for (g, _), rows in zip(present, new):
            g.scatter_grad(rows, full)
        full.commit()  # each rank's shard of the new full gradients (no-op without sharded parameters)
        self._remember_grads(present)
        return self._finish(step, ApplyInfo(step, infos, tuple(missing), ()))

    def _finish(self, step: int, info: ApplyInfo) -> ApplyInfo:
        self._step = step + 1
        self.last_info = info
        self._recorded = {}
        if self._outputs is not None:
            self._outputs.step = self._step
            self._outputs.reset()
        return info

    # -- spaces other than the weights ---------------------------------------------------------
    def _record_outputs(self, group: ParticleGroup, parts, params) -> None:
        """Function space, called by the forward hooks: the core's Stein terms of the heads' features
        (``parts``: the outputs and/or maps, ``M x m_p`` each; kernel and repulsion, no data term)
        pulled back to the group's parameters ``params`` (the tensors the forward pass used) at once
        by one vector-Jacobian product, the graph kept for the loss's backward. Several forward
        passes before one :meth:`apply` (gradient accumulation) are averaged.

        Data parallel (DDP, FSDP2: an initialised process group of several ranks): each rank holds its
        own batch, so the features of all ranks are gathered (:func:`attention_adapter.outputs.gather_columns`)
        and every rank computes the kernel of the whole global subsample, the same on every rank; it
        pulls back its own columns of the direction, and :meth:`apply` sums the ranks' pull-backs:
        exactly the single-process terms on the union of the ranks' token subsamples."""
        cdtype = compute_dtype(parts[0].dtype)  # float32 for float16/bfloat16
        gathered = [gather_columns(p.detach().to(cdtype)) for p in parts]  # collectives (no-op in one process)
        full = [f for f, _ in gathered]
        if not all(bool(torch.isfinite(f).all()) for f in full):
            self._recorded[group.name] = None  # reported by apply() as a non-finite group
            return
        scales, bandwidth = joined_features(full, self.settings.bandwidth)
        joined = full[0] if len(full) == 1 else torch.cat([f * c for f, c in zip(full, scales)], dim=1)
        terms = ps.function_space.function_space_terms(joined, None, self.settings.kernel, bandwidth, 1.0,
                                                       check_finite=False)
        # this rank's columns of the direction, part by part, times the part's factor (the chain rule of
        # joined = c_p f_p): no operation is added to the parts' graph, which under non-reentrant gradient
        # checkpointing must save exactly what its recomputation saves
        mine, offset = [], 0
        for (f, start), p, c in zip(gathered, parts, scales):
            mine.append(terms.direction[:, offset + start:offset + start + p.shape[1]] * c)
            offset += f.shape[1]
        pulled = ps.function_space.pull_back(tuple(parts), params, tuple(mine), retain_graph=True)
        rows = rows_of(group, {id(p): g for p, g in zip(group.params, pulled)}).detach()
        if group.name in self._recorded and self._recorded[group.name] is None:
            return
        gram, acc, info, count = self._recorded.get(group.name, (0.0, 0.0, terms.info, 0))
        self._recorded[group.name] = (gram + terms.gram, acc + rows, terms.info, count + 1)

    def remove_hooks(self) -> None:
        """Take off the forward hooks of ``space="outputs"`` (no-op in the other spaces)."""
        if self._outputs is not None:
            self._outputs.remove()

    def _directions(self, present) -> List[Optional[Any]]:
        """Per present group, the ``direction`` for :func:`head_update` (None: weight space)."""
        if self.space == "weights":
            return [None] * len(present)
        if self.space == "circuits":
            return [functools.partial(circuit_direction, self._structures[g.name]) for g, _ in present]
        missing = [g.name for g, _ in present if g.name not in self._recorded]
        if missing:
            raise RuntimeError(
                f"space='outputs' has no head outputs of {missing} since the last apply(): run the model's forward "
                "pass with gradients enabled (not under torch.no_grad()) before backward() and apply()")
        bad = [g for g, _ in present if self._recorded[g.name] is None]
        if bad:
            names = ", ".join(repr(g.name) for g in bad)
            raise NonFiniteGradientError(f"non-finite head outputs in attention heads {names} at step {self._step}")
        entries = [self._recorded[g.name] for g, _ in present]
        grams = [e[0] / e[3] for e in entries]
        rows = [e[1] / e[3] for e in entries]
        # the kernels are the same on every rank (computed on the gathered features); each rank pulled
        # back its own columns: their sum is the pull-back of the whole direction (each group in its dtype)
        rows = sum_over_ranks(rows)
        out = []
        for gram, pulled, entry in zip(grams, rows, entries):
            info = entry[2]

            def direction(x, s, kernel=None, bandwidth=None, repulsion=1.0, _k=gram, _p=pulled, _i=info):
                return ps.function_space.hybrid_direction(_k.to(s.dtype), s, _p.to(s.dtype), repulsion,
                                                          bandwidth=_i.bandwidth, mean_kernel=_i.mean_kernel)

            out.append(direction)
        return out

    def _gradients(self, full: FullTensors):
        """``(present, missing)``: ``(group, (M, P) gradient)`` pairs, and the groups without one."""
        present, missing = [], []
        for g in self.head_particles.groups:
            grad = g.gather("grad", full)
            if grad is None:
                missing.append(g.name)
            else:
                present.append((g, grad))
        return present, missing

    def _nonfinite(self, present, step: int) -> List[ParticleGroup]:
        """Groups with a NaN/inf gradient (``on_nonfinite="skip"``); raises with ``"raise"``."""
        if not (self.check_finite and present):
            return []
        # min and max propagate NaN and show +-inf: one reduction per group, then a single
        # device-to-host sync for all groups (benchmarks/bench_adapter_overhead.py --profile
        # measures what apply() spends here)
        dev = present[0][1].device
        extremes = torch.stack([torch.stack(torch.aminmax(grad)).to(dev) for _, grad in present])
        flags = torch.isfinite(extremes).all(dim=1)
        if bool(flags.all()):
            return []
        bad = [g for (g, _), ok in zip(present, flags.tolist()) if not ok]
        if self.on_nonfinite == "raise":
            names = ", ".join(f"{g.name!r} ({type(g.site.module).__name__} at {g.site.name or '<root>'!r})"
                              for g in bad)
            raise NonFiniteGradientError(
                f"non-finite gradient in attention heads {names} at step {step}; pass on_nonfinite='skip' "
                "to leave such steps untouched (e.g. under GradScaler)"
            )
        return bad

    def _noise(self, present, step: int) -> List[Optional[torch.Tensor]]:
        """SPOS: the standard normal draws of ``step``, group by group in the fixed group order (the
        documented stream, :mod:`attention_adapter.noise`); SVGD: ``None`` per group."""
        if self.method != "spos" or not self.settings.noise:
            return [None] * len(present)
        noise = StepNoise(self.seed, step)
        return [noise.draw(grad, compute_dtype(grad.dtype)) for _, grad in present]

    def _updates(self, present, xis, lrs, full: FullTensors, directions):
        """The new ``(M, P)`` gradient of every present group and its info, in group order; in weight
        space groups of equal shape, dtype, device and learning rate are updated together (one batched
        call); in the other spaces each group with its own ``direction``."""
        new: List[Optional[torch.Tensor]] = [None] * len(present)
        infos: Dict[str, ps.SteinInfo] = {}
        if self.space != "weights":
            for i, (g, grad) in enumerate(present):
                new[i], infos[g.name] = head_update(g.gather("data", full), grad, self.settings, xis[i], lr=lrs[i],
                                                    direction=directions[i])
            return new, infos
        for members in _stacks(present, lrs):
            groups = [present[i][0] for i in members]
            lr = lrs[members[0]]
            if len(members) == 1:
                i = members[0]
                new[i], infos[groups[0].name] = head_update(groups[0].gather("data", full), present[i][1],
                                                            self.settings, xis[i], lr=lr)
                continue
            x = torch.stack([g.gather("data", full) for g in groups])
            grads = torch.stack([present[i][1] for i in members])
            xi = None if xis[members[0]] is None else torch.stack([xis[i] for i in members])
            rows, info = head_update_batched(x, grads, self.settings, xi, lr=lr)
            for b, (i, g) in enumerate(zip(members, groups)):
                infos[g.name] = ps.SteinInfo(*(field[b] for field in info))
                new[i] = rows[b]
        return new, {g.name: infos[g.name] for g, _ in present}

    # ------------------------------------------------------------------------------------------
    def attach(self, optimizer: torch.optim.Optimizer):
        """Run :meth:`apply` as a pre-step hook of ``optimizer``.

        Under ``torch.amp.GradScaler``, ``scaler.step(optimizer)`` unscales the gradients and calls
        ``optimizer.step()`` only when they are finite, so the hook sees unscaled, finite gradients.
        If you clip gradients, call :meth:`apply` yourself before clipping instead of attaching.

        Returns
        -------
        torch.utils.hooks.RemovableHandle
            ``handle.remove()`` detaches the adapter.
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"expected a torch.optim.Optimizer, received {type(optimizer).__name__}")
        where: Dict[int, int] = {}
        for i, pg in enumerate(optimizer.param_groups):
            for p in pg["params"]:
                where[id(p)] = i
        heads = self.head_particles.parameters()
        covered = [p for p in heads if id(p) in where]
        if not covered:
            raise ValueError(
                "expected an optimizer that updates the attention heads, but none of the "
                f"{len(heads)} head parameters is among its parameters"
            )
        self._param_group_of = where
        self._optimizer_ref = weakref.ref(optimizer)

        def _hook(opt, args, kwargs):
            self.apply()

        return optimizer.register_step_pre_hook(_hook)

    # ------------------------------------------------------------------------------------------
    def _config(self) -> Dict[str, Any]:
        return {"method": self.method, "preset": None if self.preset is None else self.preset.name,
                "groups": list(self.head_particles.names), "space": self.space, "features": self.features}

    def state_dict(self) -> Dict[str, Any]:
        """``{"step", "seed", "method", "preset", "groups", "step_size", "repulsion", "beta", "terms"}``.

        ``step_size``, ``repulsion`` and ``beta`` are the settings' (core names; for :class:`An2020`
        ``beta`` is the core's ``1 / beta_paper``), and ``terms`` the switches ``kernel_drive``,
        ``langevin_drift``, ``noise``, for the record only.

        The SPOS noise is a function of ``(seed, step)``, so this is all the state there is.
        """
        st = self.settings
        return {"step": self._step, "seed": self.seed, "step_size": st.step_size, "repulsion": st.repulsion,
                "beta": st.beta, "terms": {k: getattr(st, k) for k in ("kernel_drive", "langevin_drift", "noise")},
                **self._config()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the step counter and seed; the configuration must match (else ValueError)."""
        if not isinstance(state, dict):
            raise TypeError(f"expected a state dict, received {type(state).__name__}")
        missing = [k for k in ("step", "seed", "method", "preset", "groups") if k not in state]
        if missing:
            raise ValueError(f"expected a RepulsiveHeads state dict with keys {missing}, received keys {sorted(state)}")
        mine = self._config()
        default = {"space": "weights", "features": "outputs" if state.get("space") == "outputs" else None}
        for key in ("method", "preset", "groups", "space", "features"):
            if state.get(key, default.get(key)) != mine[key]:
                raise ValueError(f"state dict {key} {state.get(key, default.get(key))!r} does not match this "
                                 f"adapter's {mine[key]!r}")
        step = validation.check_int("state['step']", state["step"], minimum=0)
        seed = validation.check_int("state['seed']", state["seed"], minimum=0)
        self._step = step
        self.seed = seed
        self._last_grads = []
