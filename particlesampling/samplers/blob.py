"""Blob (Chen, Zhang, Wang, Li & Chen 2018, w-Blob; Liu et al., ICML 2019, Table 1).

``x_i <- x_i + eps * v_i`` with
``v_i = s_i - sum_j grad_{x_i} k(x_i, x_j) / sum_l k(x_i, x_l) - sum_j grad_{x_i} k(x_i, x_j) / sum_l k(x_j, x_l)``:
the score minus the symmetrised gradient of the log kernel density estimate
(:func:`particlesampling.particle_flows.blob_direction`). Deterministic; radial kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..bandwidths import get_bandwidth
from ..particle_flows import blob_direction
from ..stein_kernel import radial_kernel
from ..step_sizes import get_step_rule
from ._common import FlowSampler, check_score_fn

__all__ = ["Blob", "blob"]


@dataclass(frozen=True)
class Blob(FlowSampler):
    """Blob; build it with :func:`blob`."""

    name: ClassVar[str] = "blob"

    def _direction(self, particles, s):
        return blob_direction(particles, s, self.kernel, self.bandwidth)


def blob(score_fn=None, step_size=1e-2, *, kernel=None, bandwidth=None, log_prob=None) -> Blob:
    """Blob sampler; update in the module docstring.

    Parameters
    ----------
    score_fn, step_size, bandwidth, log_prob : as for :func:`~particlesampling.svgd`.
    kernel : None, str or radial Kernel (RBF by default; TypeError for a kernel that is not radial).

    Returns
    -------
    Blob : ``init(particles, seed=0) -> ParticleState`` and ``step(state) -> (state, SteinStepInfo)``.
    """
    radial_kernel(kernel)
    get_bandwidth(bandwidth)
    return Blob(check_score_fn(score_fn, log_prob), get_step_rule(step_size), kernel=kernel, bandwidth=bandwidth)
