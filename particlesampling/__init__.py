"""particlesampling: particle-based samplers (SVGD, SPOS, SGLD) written once on the Array API.

The same code runs on NumPy, PyTorch (CPU or GPU), ``array_api_strict`` and JAX arrays. Importing the
package needs only NumPy and array-api-compat; torch, matplotlib, tqdm and scikit-learn are optional.
"""

from . import diagnostics, run, samplers, step_sizes, targets
from .bandwidths import Fixed, MaxKSD, Median, Scaled, get_bandwidth
from .kernels import IMQ, RBF, Linear, RandomFeatureRBF, get_kernel
from .stein import SteinInfo, stein_direction, stein_direction_with_info

__version__ = "0.1.0"

__all__ = [
    "diagnostics",
    "run",
    "samplers",
    "step_sizes",
    "targets",
    "stein_direction",
    "stein_direction_with_info",
    "SteinInfo",
    "RBF",
    "IMQ",
    "Linear",
    "RandomFeatureRBF",
    "get_kernel",
    "Median",
    "Fixed",
    "Scaled",
    "MaxKSD",
    "get_bandwidth",
]
