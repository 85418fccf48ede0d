"""The particle samplers, one module each, as ``init`` / ``step`` pairs over explicit state (BlackJAX style).

SVGD, SPOS and SGLD; annealed SVGD, GFSF, Blob, preconditioned SPOS, matrix-kernel SVGD (constant and
mixture preconditioners),
projected SVGD and sliced SVGD (each module's docstring states its update and paper). Each constructor returns a
frozen sampler with

* ``state = sampler.init(particles, seed=0)``: validates the particles (n x d, floating, finite)
  and builds a :class:`ParticleState`, and
* ``state, info = sampler.step(state)``: one update; ``score_fn`` is evaluated exactly once (n
  scores) and ``state`` is not modified.

They share the Stein direction (:func:`particlesampling.stein_direction`, or its random-batch and
tiled forms), the step-size rules (:mod:`particlesampling.step_sizes`) and the noise
(:mod:`particlesampling.random`); the updates are in each module's docstring.
"""

from ._common import LangevinStepInfo, ParticleSampler, ParticleState, SteinStepInfo
from .annealed_svgd import AnnealedSVGD, annealed_svgd
from .blob import Blob, blob
from .gfsf import GFSF, gfsf
from .matrix_svgd import MatrixSVGD, matrix_svgd
from .matrix_svgd_mixture import MatrixSVGDMixture, matrix_svgd_mixture
from .projected_svgd import ProjectedSVGD, projected_svgd
from .pspos import PSPOS, pspos
from .sgld import SGLD, sgld
from .sliced_svgd import SlicedSVGD, sliced_svgd
from .spos import SPOS, spos
from .svgd import SVGD, svgd

__all__ = ["svgd", "spos", "sgld", "annealed_svgd", "gfsf", "blob", "pspos", "matrix_svgd", "matrix_svgd_mixture", "projected_svgd", "sliced_svgd", "SVGD", "SPOS", "SGLD", "AnnealedSVGD", "GFSF", "Blob", "PSPOS", "MatrixSVGD", "MatrixSVGDMixture", "ProjectedSVGD", "SlicedSVGD", "ParticleSampler", "ParticleState", "SteinStepInfo",
           "LangevinStepInfo", "SAMPLERS", "get_sampler"]

#: sampler constructors by name (the CLI's ``--method``)
SAMPLERS = {"svgd": svgd, "spos": spos, "sgld": sgld, "annealed_svgd": annealed_svgd, "gfsf": gfsf,
            "blob": blob, "pspos": pspos,
            "matrix_svgd": matrix_svgd, "matrix_svgd_mixture": matrix_svgd_mixture, "projected_svgd": projected_svgd,
            "sliced_svgd": sliced_svgd}


def get_sampler(name: str, score_fn, step_size=1e-2, **options) -> ParticleSampler:
    """Build a sampler by name (a key of :data:`SAMPLERS`); ``options`` go to its constructor."""
    key = str(name).lower()
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}")
    return SAMPLERS[key](score_fn, step_size, **options)
