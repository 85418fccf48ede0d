"""Pictures and animations of particles, each one call from a target, particles or a trace.

``import particlesampling as ps`` then ``ps.plotting.<name>``:

* :func:`plot_particles`: particles over the target's density (1-D histogram and density curve,
  2-D scatter over log-density contours, pairwise marginals above 2-D); :func:`plot_pairwise`,
  :func:`plot_marginals`, :func:`save_particles_figure`;
* :func:`plot_trajectories`: paths of particles through a run's snapshots;
* :func:`plot_diagnostics`: KSD, MMD to reference draws, bandwidth, update norm (and any metric)
  against the step, one or several runs; :func:`plot_trace` for the recorded series only;
* :func:`plot_methods`: several runs on one target side by side, with their curves;
* :func:`animate_particles`: a GIF (Pillow) or MP4 (ffmpeg) of the particles moving, runs side by side.

matplotlib is imported on first use (``pip install particlesampling[viz]``), and the backend is left
as it is (Jupyter's inline backend, or Agg without a display). Functions take an ``ax`` (or
``axes``) where a picture fits in one, return the ``Figure`` (the animation: the written path) and
never call ``plt.show()``. Particles may be NumPy, torch or any Array-API arrays; traces come from
``run_sampler(..., keep_particles=True)`` (or :meth:`particlesampling.Trace.load`).
"""

from .animation import ANIMATION_FORMATS, animate_particles, check_animation_path
from .curves import plot_diagnostics, plot_trace
from .methods import plot_methods
from .particles import plot_marginals, plot_pairwise, plot_particles, save_particles_figure
from .trajectories import plot_trajectories

__all__ = [
    "plot_particles",
    "plot_pairwise",
    "plot_marginals",
    "save_particles_figure",
    "plot_trajectories",
    "plot_diagnostics",
    "plot_trace",
    "plot_methods",
    "animate_particles",
    "check_animation_path",
    "ANIMATION_FORMATS",
]
