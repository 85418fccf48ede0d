"""Particles spread over processes (``torch.distributed``): the sharded Stein direction, SVGD and SPOS.

Each rank holds its own rows of one particle system and computes its own rows of the direction;
what the kernel needs is all-gathered, and the median bandwidth is exact over all ranks
(:mod:`.direction`, which also states the bytes moved per step; :func:`communication_volume`
counts them). Tested with 2 and 4 gloo processes on CPUs against the single-process result; NCCL
on GPUs runs the same code. ``docs/distributed.md`` has the usage and the scaling model.

torch is imported inside the functions only, so ``import particlesampling`` needs no torch::

    import torch.distributed as dist
    import particlesampling as ps

    dist.init_process_group("gloo")                    # or "nccl", one GPU per rank
    rows = my_rows_of_the_particles                    # (n_r, d) torch tensor on this rank
    sampler = ps.distributed.sharded_svgd(target_score, step_size=0.05)
    state = sampler.init(rows, seed=0)
    for _ in range(1000):
        state, info = sampler.step(state)              # a collective: every rank steps
"""

from ._comm import ShardLayout, shard_layout
from .direction import median_regime, sharded_stein_direction, sharded_stein_direction_with_info
from .samplers import ShardedSPOS, ShardedSVGD, sharded_spos, sharded_svgd
from .volume import CollectiveCounter, communication_volume

__all__ = [
    "CollectiveCounter",
    "sharded_stein_direction",
    "sharded_stein_direction_with_info",
    "sharded_svgd",
    "sharded_spos",
    "ShardedSVGD",
    "ShardedSPOS",
    "ShardLayout",
    "shard_layout",
    "communication_volume",
    "median_regime",
]
