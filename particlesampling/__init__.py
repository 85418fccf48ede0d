"""particlesampling: particle-based samplers (SVGD, SPOS, SGLD) written once on the Array API.

The same code runs on NumPy, PyTorch (CPU or GPU), ``array_api_strict`` and JAX arrays. Importing the
package needs only NumPy and array-api-compat; torch, matplotlib, tqdm and scikit-learn are optional.

Everything a user needs is reachable from the top level::

    import particlesampling as ps
    target = ps.get_target("gaussian")
    sampler = ps.svgd(target.score, step_size=0.05)
    state, trace = ps.run_sampler(sampler, sampler.init(target.initial_particles(200, seed=0)), 1000)

Samplers: :func:`svgd`, :func:`spos`, :func:`sgld`, :func:`annealed_svgd`, :func:`gfsf`, :func:`blob`,
:func:`pspos`, :func:`matrix_svgd`, :func:`matrix_svgd_mixture`, :func:`projected_svgd`, :func:`sliced_svgd` (each an ``init`` / ``step`` pair; each takes
``score_fn`` or ``log_prob``), the loop :func:`run_sampler`, and :func:`stein_thinning` for a given chain. Building blocks: :func:`stein_direction` (:func:`stein_direction_batched` for a
stack of independent systems), the kernels, the bandwidth rules, the step-size rules. Particles over
``torch.distributed`` processes: :mod:`particlesampling.distributed` (``ps.distributed.sharded_svgd``,
...). Targets: :func:`get_target`, :func:`list_targets`. Diagnostics: :func:`ksd`, :func:`sliced_ksd`,
:func:`mmd`, :func:`energy_distance`, the moment errors and :func:`trace_diagnostics` (a run's series).
Pictures and animations: :mod:`particlesampling.plotting` (``ps.plotting.plot_particles``, ...;
matplotlib imported on first use). ``docs/architecture.md`` maps the modules.
"""

from . import circuits, diagnostics, distributed, function_space, plotting, random, step_sizes, targets, validation
from ._backend import sqdist, to_numpy
from .bandwidths import MEDIAN_CONVENTIONS, BandwidthRule, Fixed, MaxKSD, Median, Scaled, get_bandwidth
from .checkpoint import load_state, save_state
from .diagnostics import (
    cov_error,
    energy_distance,
    ksd,
    ksd_squared,
    marginal_variance,
    mean_error,
    mmd,
    mode_fractions,
    sliced_ksd,
    trace_diagnostics,
)
from .kernels import IMQ, RBF, Kernel, Linear, RandomFeatureRBF, get_kernel
from .log_density import score_from_log_prob
from .memory_budget import default_memory_budget
from .runner import NonFiniteError, Trace, intra_op_threads, run_sampler
from .selection import lower_median, midpoint_median
from .annealing import CyclicalAnnealing, LinearAnnealing
from .samplers import SAMPLERS, ParticleState, annealed_svgd, blob, get_sampler, gfsf, matrix_svgd, matrix_svgd_mixture, projected_svgd, pspos, sgld, sliced_svgd, spos, svgd
from .stein import (
    SteinInfo,
    stein_direction,
    stein_direction_batched,
    stein_direction_batched_with_info,
    stein_direction_with_info,
)
from .step_sizes import StepRule, adagrad_momentum, adam, constant, get_step_rule
from .targets import Target, get_target, list_targets
from .thinning import stein_thinning

__version__ = "0.1.0"

__all__ = [
    # samplers and the run loop
    "svgd",
    "spos",
    "sgld",
    "annealed_svgd",
    "gfsf",
    "blob",
    "pspos",
    "matrix_svgd",
    "matrix_svgd_mixture",
    "projected_svgd",
    "sliced_svgd",
    "CyclicalAnnealing",
    "LinearAnnealing",
    "get_sampler",
    "SAMPLERS",
    "ParticleState",
    "run_sampler",
    "intra_op_threads",
    "score_from_log_prob",
    "Trace",
    "NonFiniteError",
    "save_state",
    "load_state",
    # the Stein direction and its parts
    "stein_direction",
    "stein_direction_with_info",
    "stein_direction_batched",
    "stein_direction_batched_with_info",
    "SteinInfo",
    "default_memory_budget",
    "Kernel",
    "RBF",
    "IMQ",
    "Linear",
    "RandomFeatureRBF",
    "get_kernel",
    "BandwidthRule",
    "Median",
    "Fixed",
    "Scaled",
    "MaxKSD",
    "get_bandwidth",
    "MEDIAN_CONVENTIONS",
    # step-size rules
    "StepRule",
    "constant",
    "adagrad_momentum",
    "adam",
    "get_step_rule",
    # targets
    "Target",
    "get_target",
    "list_targets",
    # diagnostics
    "ksd",
    "sliced_ksd",
    "ksd_squared",
    "mmd",
    "energy_distance",
    "mean_error",
    "cov_error",
    "marginal_variance",
    "mode_fractions",
    "trace_diagnostics",
    "stein_thinning",
    # array helpers
    "sqdist",
    "lower_median",
    "midpoint_median",
    "to_numpy",
    # sub-modules
    "circuits",
    "diagnostics",
    "distributed",
    "function_space",
    "plotting",
    "random",
    "step_sizes",
    "targets",
    "validation",
]
