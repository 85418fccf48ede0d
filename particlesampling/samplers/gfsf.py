"""GFSF, the gradient flow with smoothed functions (Liu et al., ICML 2019, eq. 12; Wang et al., ICLR 2019).

``x <- x + eps * v`` with ``v = S + (K + lambda I)^-1 R``: the score at each particle minus the
GFSF estimate ``-(K + lambda I)^-1 R`` of ``grad log q`` (:func:`particlesampling.particle_flows.gfsf_direction`,
which states the derivation); ``K`` and ``R`` are the SVGD kernel's Gram matrix and repulsion.
Deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..bandwidths import get_bandwidth
from ..kernels import get_kernel
from ..particle_flows import check_ridge, gfsf_direction
from ..step_sizes import get_step_rule
from ._common import FlowSampler, check_score_fn

__all__ = ["GFSF", "gfsf"]


@dataclass(frozen=True)
class GFSF(FlowSampler):
    """GFSF; build it with :func:`gfsf`."""

    ridge: float = 1e-3

    name: ClassVar[str] = "gfsf"

    def _direction(self, particles, s):
        return gfsf_direction(particles, s, self.kernel, self.bandwidth, self.ridge)


def gfsf(score_fn=None, step_size=1e-2, *, kernel=None, bandwidth=None, ridge: float = 1e-3,
         log_prob=None) -> GFSF:
    """GFSF sampler; update in the module docstring.

    Parameters
    ----------
    score_fn, step_size, kernel, bandwidth, log_prob : as for :func:`~particlesampling.svgd`.
    ridge : float >= 0
        ``lambda`` added to the diagonal of ``K`` before the solve.

    Returns
    -------
    GFSF : ``init(particles, seed=0) -> ParticleState`` and ``step(state) -> (state, SteinStepInfo)``.
    """
    get_kernel(kernel)
    get_bandwidth(bandwidth)
    return GFSF(check_score_fn(score_fn, log_prob), get_step_rule(step_size), kernel=kernel, bandwidth=bandwidth,
                ridge=check_ridge(ridge))
