"""How many bytes a Stein step may spend on its ``n x n`` temporaries, by default and on request.

Every entry point that takes ``memory_budget`` (:func:`particlesampling.stein_direction`,
:func:`particlesampling.svgd`, :func:`particlesampling.spos`) accepts

* ``"auto"`` (the default): :func:`default_memory_budget`, derived from the machine: on the CPU
  1/16 of the physical memory, at least 64 MiB and at most 1 GiB; on a CUDA device a quarter of the
  device memory free at the call. The untiled step at ``n`` particles holds about one ``n x n``
  matrix (RBF kernel with a scalar bandwidth; three for other kernels), so with 1 GiB the untiled
  path serves float32 up to n = 16,384 and the row-blocked path (:mod:`particlesampling.tiled`)
  takes over above, in that budget. Where the blocked path cannot serve the call (a kernel that is
  not radial, a bandwidth rule that needs the whole matrix, such as Pyro's per-dimension median),
  ``"auto"`` keeps the untiled path: the default never turns a call that works into an error.
* a positive number of bytes: the same, with that budget; a call the blocked path cannot serve
  raises a ``ValueError`` saying so.
* ``None``: no budget, always untiled.
"""

from __future__ import annotations

import math
import os

from ._backend import is_torch_array

__all__ = ["AUTO", "MIN_AUTO_BUDGET", "MAX_AUTO_CPU_BUDGET", "default_memory_budget", "check_memory_budget",
           "budget_bytes", "physical_memory_bytes"]

#: the default ``memory_budget``
AUTO = "auto"
#: bounds of the automatic CPU budget, in bytes
MIN_AUTO_BUDGET = 64 * 2**20
MAX_AUTO_CPU_BUDGET = 2**30


def physical_memory_bytes() -> int | None:
    """Physical memory of this machine in bytes (``None`` where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def default_memory_budget(particles) -> int:
    """The ``"auto"`` budget in bytes for a step on ``particles`` (module docstring).

    CPU arrays (and arrays of other devices): ``physical memory / 16`` clamped to
    ``[64 MiB, 1 GiB]`` (1 GiB where the physical memory is unknown). torch tensors on CUDA: a
    quarter of the free device memory (``torch.cuda.mem_get_info``), at least 64 MiB.
    """
    if is_torch_array(particles) and particles.device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(particles.device)
        return int(max(MIN_AUTO_BUDGET, free // 4))
    total = physical_memory_bytes()
    if total is None:
        return MAX_AUTO_CPU_BUDGET
    return int(min(MAX_AUTO_CPU_BUDGET, max(MIN_AUTO_BUDGET, total // 16)))


def check_memory_budget(memory_budget):
    """``memory_budget`` unchanged if it is ``"auto"``, ``None`` or a positive finite number of bytes;
    ValueError otherwise."""
    if memory_budget is None or (isinstance(memory_budget, str) and memory_budget == AUTO):
        return memory_budget
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float)) or not (
        math.isfinite(memory_budget) and memory_budget > 0
    ):
        raise ValueError(f"expected memory_budget as 'auto', a positive number of bytes or None, "
                         f"received {memory_budget!r}")
    return memory_budget


def budget_bytes(particles, memory_budget) -> int | float | None:
    """The budget in bytes that ``memory_budget`` (checked by :func:`check_memory_budget`) sets for a
    step on ``particles``: :func:`default_memory_budget` for ``"auto"``, the number itself, or
    ``None`` (no budget)."""
    memory_budget = check_memory_budget(memory_budget)
    return default_memory_budget(particles) if memory_budget == AUTO else memory_budget
