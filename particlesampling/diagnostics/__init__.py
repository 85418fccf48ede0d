"""Convergence and accuracy diagnostics for particle sets.

* :mod:`.ksd`: kernelized Stein discrepancy (needs the scores, not samples of the target):
  :func:`ksd`, :func:`ksd_squared`, :func:`stein_kernel_matrix`, :func:`stein_gram_stats`.
* :mod:`.sksd`: the sliced KSD of Gong et al. (2021), SKSD-g, and its gradient in the slices:
  :func:`sliced_ksd`.
* :mod:`.distances`: two-sample distances to reference samples: :func:`mmd`,
  :func:`energy_distance`.
* :mod:`.moments`: errors against known moments and mode structure: :func:`mean_error`,
  :func:`cov_error`, :func:`marginal_variance`, :func:`mode_fractions`, :func:`sample_cov`.
* :mod:`.along_trace`: the series of a whole run, one value per recorded step (KSD of each particle
  snapshot, MMD to reference draws, the sampler's info): :func:`trace_diagnostics`.

Every function accepts arrays of any Array-API namespace and returns results in that namespace,
dtype and device (scalars as 0-d arrays, without a host synchronisation).
"""

from .along_trace import trace_diagnostics
from .distances import energy_distance, mmd, pooled_median_bandwidth
from .ksd import SteinGramStats, ksd, ksd_squared, stein_gram_stats, stein_kernel_matrix
from .sksd import SlicedKSD, sliced_ksd
from .moments import cov_error, marginal_variance, mean_error, mode_fractions, sample_cov

__all__ = [
    "ksd",
    "ksd_squared",
    "stein_kernel_matrix",
    "stein_gram_stats",
    "SteinGramStats",
    "sliced_ksd",
    "SlicedKSD",
    "mmd",
    "energy_distance",
    "pooled_median_bandwidth",
    "mean_error",
    "cov_error",
    "marginal_variance",
    "mode_fractions",
    "sample_cov",
    "trace_diagnostics",
]
