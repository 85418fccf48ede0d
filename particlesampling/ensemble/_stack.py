"""Stacking ``n`` copies of one ``nn.Module`` into flat particles ``(n, P)`` and running them batched.

The parameters of the ``n`` copies are stacked with :func:`torch.func.stack_module_state` and laid
out side by side in one ``(n, P)`` tensor, the particles of the core (one row per model, the
parameters in ``named_parameters()`` order, each flattened row-major). A forward pass evaluates
:func:`torch.func.functional_call` of a template module under :func:`torch.func.vmap` over the rows:
the ``n`` models in one batched pass. Buffers (batch-norm statistics) and frozen parameters
(``requires_grad=False``) are stacked too, one copy per particle, but are not particles.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

__all__ = ["StackingError", "ParameterLayout", "build_copies", "stack_copies", "batched_forward"]


class StackingError(ValueError):
    """A module that the ensemble cannot stack; the message names the parameter and the reason."""


@dataclass(frozen=True)
class ParameterLayout:
    """Where each stacked parameter lives in a flat particle row.

    ``names[k]`` occupies columns ``offsets[k] : offsets[k] + numel(shapes[k])`` of the ``(n, P)``
    particles, reshaped to ``shapes[k]`` (row-major).
    """

    names: tuple
    shapes: tuple
    offsets: tuple
    size: int  #: P, the number of network weights per particle

    def unflatten(self, row):
        """Views ``{name: tensor}`` of one particle row ``(P,)`` (or of ``(n, P)`` with a leading axis)."""
        lead = row.shape[:-1]
        return {name: row[..., o: o + _numel(s)].reshape(*lead, *s)
                for name, s, o in zip(self.names, self.shapes, self.offsets)}

    def flatten(self, tensors: dict, n: int):
        """The inverse: ``{name: (n, *shape)}`` to one ``(n, P)`` tensor."""
        return torch.cat([tensors[name].reshape(n, -1) for name in self.names], dim=1)


def _numel(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def _is_lazy(t) -> bool:
    return isinstance(t, nn.parameter.UninitializedTensorMixin)


def build_copies(module_or_factory, n: int, seed: int) -> list:
    """``n`` independently initialised modules.

    A factory (a callable that is not an ``nn.Module``) is called ``n`` times, the ``i``-th time under
    ``torch.manual_seed(seed + i)``; a module is deep-copied ``n`` times and every sub-module with a
    ``reset_parameters`` method is re-initialised under the same seeds. Torch's global random state
    is restored afterwards. A module whose copies come out identical (a parameter that no
    ``reset_parameters`` touches) raises :class:`StackingError` naming it: pass a factory instead.
    """
    is_module = isinstance(module_or_factory, nn.Module)
    if not is_module and not callable(module_or_factory):
        raise TypeError(f"expected an nn.Module or a factory (a callable returning an nn.Module), received "
                        f"{type(module_or_factory).__name__}")
    for name, p in (module_or_factory.named_parameters() if is_module else ()):
        if _is_lazy(p):
            raise StackingError(f"cannot stack parameter {name!r}: it is uninitialised (a lazy module); run "
                                f"one forward pass on an example input before building the ensemble")
    copies = []
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        for i in range(n):
            torch.manual_seed(seed + i)
            if is_module:
                m = copy.deepcopy(module_or_factory)
                for sub in m.modules():
                    reset = getattr(sub, "reset_parameters", None)
                    if callable(reset):
                        reset()
            else:
                m = module_or_factory()
                if not isinstance(m, nn.Module):
                    raise TypeError(f"the factory returned {type(m).__name__}; expected an nn.Module")
            copies.append(m)
    if is_module and n > 1:
        a, b = dict(copies[0].named_parameters()), dict(copies[1].named_parameters())
        for name, p in a.items():
            if p.requires_grad and p.numel() and torch.equal(p, b[name]):
                raise StackingError(
                    f"cannot stack parameter {name!r}: no reset_parameters() re-initialises it, so every copy "
                    f"would start from the same value (the particles would coincide); pass a factory, a "
                    f"callable returning a freshly initialised module, instead of the module")
    return copies


def stack_copies(copies: list):
    """Check that ``copies`` can be stacked; return ``(layout, weights (n, P), stacked non-particles)``.

    Non-particles are the buffers and frozen parameters, ``{name: (n, *shape)}``. Raises
    :class:`StackingError` naming the first offending parameter or buffer.
    """
    ref = copies[0]
    ref_params = list(ref.named_parameters())
    if not any(p.requires_grad for _, p in ref_params):
        raise StackingError(f"cannot stack {type(ref).__name__}: it has no trainable parameter (requires_grad=True)")
    for name, p in ref_params:
        if _is_lazy(p):
            raise StackingError(f"cannot stack parameter {name!r}: it is uninitialised (a lazy module); run one "
                                f"forward pass on an example input first")
        if p.requires_grad and not p.is_floating_point():
            raise StackingError(f"cannot stack parameter {name!r}: dtype {p.dtype} is not a real floating type")
        if p.is_sparse or p.layout != torch.strided:
            raise StackingError(f"cannot stack parameter {name!r}: layout {p.layout} (only dense tensors stack)")
    trainable = [(name, p) for name, p in ref_params if p.requires_grad]
    dtypes = {p.dtype for _, p in trainable}
    devices = {p.device for _, p in trainable}
    if len(dtypes) > 1 or len(devices) > 1:
        first = trainable[0][1]
        odd = next(name for name, p in trainable if p.dtype != first.dtype or p.device != first.device)
        raise StackingError(f"cannot stack parameter {odd!r}: the particles are one (n, P) tensor, so every "
                            f"trainable parameter needs one dtype and device; found {sorted(map(str, dtypes))} "
                            f"on {sorted(map(str, devices))}")
    for i, m in enumerate(copies[1:], start=1):
        if type(m) is not type(ref):
            raise StackingError(f"cannot stack model {i}: type {type(m).__name__}, model 0 is {type(ref).__name__}")
        theirs = dict(m.named_parameters())
        theirs.update(dict(m.named_buffers()))
        mine = dict(ref_params)
        mine.update(dict(ref.named_buffers()))
        if set(theirs) != set(mine):
            diff = sorted(set(theirs) ^ set(mine))
            raise StackingError(f"cannot stack parameter {diff[0]!r}: model {i} and model 0 differ in their "
                                f"parameters and buffers ({diff})")
        for name, t in mine.items():
            u = theirs[name]
            if u is not None and t is not None and (u.shape != t.shape or u.dtype != t.dtype):
                raise StackingError(f"cannot stack parameter {name!r}: shape {tuple(u.shape)} ({u.dtype}) in "
                                    f"model {i}, {tuple(t.shape)} ({t.dtype}) in model 0")
    params, buffers = stack_module_state(copies)
    names = tuple(name for name, _ in trainable)
    shapes = tuple(tuple(ref.get_parameter(name).shape) for name in names)
    offsets, o = [], 0
    for s in shapes:
        offsets.append(o)
        o += _numel(s)
    layout = ParameterLayout(names, shapes, tuple(offsets), o)
    n = len(copies)
    weights = layout.flatten({k: params[k].detach() for k in names}, n).clone()
    fixed = {k: v.detach().clone() for k, v in params.items() if k not in names}
    fixed.update({k: v.detach().clone() for k, v in buffers.items()})
    return layout, weights, fixed


def batched_forward(template: nn.Module, layout: ParameterLayout, weights, fixed: dict, args, kwargs,
                    randomness: str = "different", plan=None):
    """Outputs ``(n, ...)`` of the ``n`` stacked models on the same inputs, in one batched call.

    ``weights`` ``(n, P)`` may require gradients (autograd runs through the batched pass);
    ``fixed`` holds the stacked buffers and frozen parameters, updated in place by modules that
    update their buffers (batch norm in training mode). ``randomness="different"``: every model
    draws its own dropout mask. ``plan``: a :class:`~._batched.SequentialPlan` of ``template``
    (or ``None``); with it a single tensor input runs as batched GEMMs instead of under ``vmap``
    (the same function, see :mod:`._batched`).
    """
    if (plan is not None and len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor)
            and not _global_hooks()):
        tensors = layout.unflatten(weights)
        tensors.update(fixed)
        return plan(tensors, args[0])
    names = list(fixed)

    def one(row, *stacked):
        tensors = layout.unflatten(row)
        tensors.update(zip(names, stacked))
        return functional_call(template, tensors, args, kwargs)

    try:
        return vmap(one, in_dims=(0,) + (0,) * len(names), randomness=randomness)(
            weights, *[fixed[k] for k in names])
    except RuntimeError as exc:
        raise RuntimeError(f"the batched forward of {type(template).__name__} failed under torch.func.vmap "
                           f"(data-dependent Python control flow, .item(), or in-place updates of "
                           f"unbatched state are not supported): {exc}") from exc


def _global_hooks() -> bool:
    """Whether global module hooks are registered (they must see every sub-module call: use ``vmap``)."""
    from torch.nn.modules import module as _m

    return bool(_m._global_forward_hooks or _m._global_forward_pre_hooks or _m._global_backward_hooks
                or getattr(_m, "_global_backward_pre_hooks", None))
