"""SVGD and SPOS with the particles spread over processes: each rank steps its own rows.

:func:`sharded_svgd` and :func:`sharded_spos` build the samplers of :mod:`particlesampling.samplers`
(same settings, same ``init`` / ``step``, same step-size rules) whose Stein direction is the sharded
one (:func:`particlesampling.distributed.sharded_stein_direction`). A rank's state holds its rows
``(n_r, d)``; ``score_fn`` is evaluated on those rows only. One step on every rank equals one step
of the single-process sampler on all rows stacked in rank order (to float rounding):

* SVGD: ``x_i <- x_i + eps * phi(x_i)`` (Liu & Wang 2016, Algorithm 1);
* SPOS: ``x_i <- x_i + eps [s_i / beta + phi(x_i)] + sqrt(2 eps / beta) xi_i`` (Zhang, Zhang, Carin
  & Chen 2020, eq. 4), where ``xi_i`` is particle ``i``'s own counter-based stream
  (:func:`particlesampling.random.normal_noise` with the rank's row offset): each rank draws the
  noise of its particles only, reproducibly, and exactly the noise the single-process sampler draws
  for them (the ``noise=`` option of :func:`particlesampling.spos` is not offered: a stateful
  generator would give every rank the same stream).

The step information is of the whole system, the same on every rank: the bandwidth and mean kernel
value of the direction, and ``update_norm``, ``score_norm`` and ``finite`` summed over the ranks by
one all-reduce of four numbers, so a non-finite particle stops every rank's run loop at the same
step. Each step is a collective: every rank calls ``step`` the same number of times. Every rank
needs at least one row (``init`` checks its rows); the direction alone also takes empty shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..random import normal_noise
from ..samplers import SPOS, SVGD, SteinStepInfo
from ..samplers._common import check_positive, check_score_fn
from ..step_sizes import get_step_rule
from ..stein_terms import check_repulsion
from ._comm import all_reduce_sum, shard_layout, world_of
from .direction import sharded_stein_direction_with_info

__all__ = ["ShardedSVGD", "ShardedSPOS", "sharded_svgd", "sharded_spos"]


class _Sharded:
    """The sharded parts of a Stein sampler: direction, noise offset, step information."""

    group: Any

    def _direction(self, state, s):
        # the run loop checks every step's particles and scores (the step's finite flag)
        phi, info = sharded_stein_direction_with_info(state.particles, s, self.kernel, self.bandwidth,
                                                      self.repulsion, group=self.group, check_finite=False)
        return phi, info.bandwidth, info.mean_kernel

    def _draw_noise(self, state):
        x = state.particles
        return normal_noise(state.seed, state.step, x, offset=shard_layout(x, self.group).offset)

    def _stein_info(self, xp, s, x_new, delta, h, mean_k) -> SteinStepInfo:
        bad = xp.sum(xp.astype(~xp.isfinite(s), s.dtype)) + xp.sum(xp.astype(~xp.isfinite(x_new), s.dtype))
        rows = xp.asarray(float(s.shape[0]), dtype=s.dtype, device=s.device)
        t = all_reduce_sum(xp.stack([xp.sum(delta * delta), xp.sum(s * s), bad, rows]), self.group)
        return SteinStepInfo(bandwidth=h, mean_kernel=mean_k, update_norm=xp.sqrt(t[0] / t[3]),
                             score_norm=xp.sqrt(t[1] / t[3]), finite=t[2] == 0)


@dataclass(frozen=True)
class ShardedSVGD(_Sharded, SVGD):
    """SVGD over the ranks of ``group``; build it with :func:`sharded_svgd`."""

    group: Any = None


@dataclass(frozen=True)
class ShardedSPOS(_Sharded, SPOS):
    """SPOS over the ranks of ``group``; build it with :func:`sharded_spos`."""

    group: Any = None


def _check_group(group):
    world_of(group)  # RuntimeError without an initialised process group
    return group


def sharded_svgd(score_fn, step_size=1e-2, *, kernel=None, bandwidth=None, repulsion: float = 1.0,
                 group: Any = None) -> ShardedSVGD:
    """SVGD with each rank holding its own rows of the particles (module docstring).

    Parameters
    ----------
    score_fn, step_size, kernel, bandwidth, repulsion :
        As for :func:`particlesampling.svgd` (kernels and bandwidths: those of
        :func:`particlesampling.distributed.sharded_stein_direction`). ``score_fn`` gets this rank's
        rows ``(n_r, d)``.
    group : torch.distributed.ProcessGroup, optional
        The ranks sharing the particle system (default: the default group, which must be initialised).

    Returns
    -------
    ShardedSVGD : ``init(rows, seed=0)`` and ``step(state) -> (state, SteinStepInfo)``, collectives.
    """
    return ShardedSVGD(check_score_fn(score_fn), get_step_rule(step_size), kernel=kernel, bandwidth=bandwidth,
                       repulsion=check_repulsion(repulsion), group=_check_group(group))


def sharded_spos(score_fn, step_size=1e-2, *, beta: float = 1.0, kernel=None, bandwidth=None,
                 repulsion: float = 1.0, group: Any = None) -> ShardedSPOS:
    """SPOS with each rank holding its own rows of the particles (module docstring).

    Parameters
    ----------
    score_fn, step_size, beta, kernel, bandwidth, repulsion :
        As for :func:`particlesampling.spos` (no ``noise=``: each particle's noise is its own
        counter-based stream). ``score_fn`` gets this rank's rows ``(n_r, d)``.
    group : torch.distributed.ProcessGroup, optional
        As for :func:`sharded_svgd`.

    Returns
    -------
    ShardedSPOS : ``init(rows, seed=0)`` and ``step(state) -> (state, SteinStepInfo)``, collectives.
    """
    return ShardedSPOS(check_score_fn(score_fn), get_step_rule(step_size), kernel=kernel, bandwidth=bandwidth,
                       repulsion=check_repulsion(repulsion), beta=check_positive("beta", beta),
                       group=_check_group(group))
