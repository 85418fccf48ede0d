"""A direct batched forward for ``nn.Sequential`` stacks of ``Linear`` layers and element-wise activations.

:func:`~._stack.batched_forward` evaluates any module as :func:`torch.func.functional_call` under
:func:`torch.func.vmap`. For the commonest model, an MLP, that costs more than the arithmetic: per
call, ``functional_call`` swaps every parameter into the template and ``vmap`` wraps every tensor,
and the batching rule of ``linear`` with a batched weight and an unbatched input lowers to ``bmm``
on strided operands followed by a separate bias addition, whose outputs (and so the element-wise
activation and its backward) are not laid out contiguously. On the UCI network of Liu & Wang
(2016, Sec. 5.2; 20 particles, ``Linear(p, 50) -> ReLU -> Linear(50, 1)``, 100 rows) this made one
score evaluation 3.74x the cost of the hand-written network's, and 2.58x with this plan
(``python benchmarks/bench_ensemble_speed.py``, benchmarks/results/ensemble_speed.md, measured side by
side in one run on a loaded 2-core machine).

A :class:`SequentialPlan` computes the same function for an ``nn.Sequential`` whose children are
all ``nn.Linear``, ``nn.Flatten`` or a parameter-free element-wise activation (:data:`ELEMENTWISE`),
with one fused ``torch.baddbmm`` per linear layer on contiguous ``(n, rows, features)`` operands::

    h_i <- b_i + h_i W_i^T            for every particle i at once (n batched GEMMs)

and the activations applied to the ``(n, ...)`` stack directly (they act element by element, so
stacking commutes with them). Inputs stay unbatched (shared by the ``n`` models) until the first
linear layer. Any other module (convolutions, batch norm, dropout, user code, keyword arguments)
returns ``None`` from :func:`sequential_plan` and runs under ``vmap`` as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ELEMENTWISE", "SequentialPlan", "sequential_plan"]

#: parameter-free modules that act element by element (applied to the ``(n, ...)`` stack as they are)
ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
               nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Tanhshrink, nn.Softsign,
               nn.Identity)


@dataclass(frozen=True)
class SequentialPlan:
    """The children of an ``nn.Sequential`` as batched steps.

    ``steps[k]`` is ``("linear", weight name, bias name or None)``, ``("flatten", start_dim,
    end_dim)`` or ``("apply", module)``; names are those of the stacked ``(n, ...)`` tensors.
    """

    steps: tuple

    def __call__(self, tensors: dict, x):
        """Outputs ``(n, B, ...)`` of the ``n`` models on the shared input ``x`` ``(B, ...)``;
        ``tensors`` maps every parameter name to its stacked ``(n, *shape)`` tensor."""
        n, batched = None, False
        for step in self.steps:
            kind = step[0]
            if kind == "linear":
                w = tensors[step[1]]  # (n, out, in)
                n = w.shape[0]
                if not batched:
                    x = x.expand(n, *x.shape)
                    batched = True
                lead = x.shape[1:-1]
                h = x.reshape(n, -1, x.shape[-1])
                if step[2] is None:
                    h = torch.bmm(h, w.transpose(1, 2))
                else:
                    h = torch.baddbmm(tensors[step[2]].unsqueeze(1), h, w.transpose(1, 2))
                x = h.reshape(n, *lead, w.shape[1])
            elif kind == "flatten":
                start, end = step[1], step[2]
                if batched:  # one leading particle axis more than the module sees
                    start = start + 1 if start >= 0 else start
                    end = end + 1 if end >= 0 else end
                x = torch.flatten(x, start, end)
            else:
                x = step[1](x)
        if not batched:  # no linear layer: every model computes the same function of x
            raise AssertionError("a plan without a linear layer is never built")
        return x


def sequential_plan(template: nn.Module, names) -> SequentialPlan | None:
    """A :class:`SequentialPlan` for ``template`` if every child is supported, else ``None``.

    ``names``: the names of the stacked tensors available (trainable and frozen parameters). A
    module with buffers (batch norm), hooks, or any unsupported child gets ``None``.
    """
    if type(template) is not nn.Sequential or len(template) == 0 or any(True for _ in template.buffers()):
        return None
    names = set(names)
    steps, has_linear = [], False
    for key, child in template.named_children():
        if _has_hooks(child):
            return None
        if type(child) is nn.Linear:
            w, b = f"{key}.weight", (f"{key}.bias" if child.bias is not None else None)
            if w not in names or (b is not None and b not in names):
                return None
            steps.append(("linear", w, b))
            has_linear = True
        elif type(child) is nn.Flatten:
            steps.append(("flatten", int(child.start_dim), int(child.end_dim)))
        elif type(child) in ELEMENTWISE and not any(True for _ in child.parameters()):
            if getattr(child, "inplace", False):
                return None
            steps.append(("apply", child))
        else:
            return None
    if not has_linear or _has_hooks(template):
        return None
    return SequentialPlan(tuple(steps))


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))
