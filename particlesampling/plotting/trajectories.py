"""Paths of individual particles over the recorded steps of a run."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .. import validation
from ._figure import as_dims, new_axes, snapshots_of, view_box
from .particles import ParticlePanel

__all__ = ["plot_trajectories"]


def plot_trajectories(trace: Any, target: Any = None, *, ax: Any = None, dims: Any = None, max_particles: int = 40,
                      title: Optional[str] = None):
    """Paths of (up to ``max_particles``) particles through the snapshots of a run.

    One coordinate (1-D targets, or ``dims=k``): position against the step, one line per particle.
    Two coordinates: paths in the plane (start grey, end red) over the target's contours (2-D) or
    Gaussian-marginal ellipses (higher dimensions, where ``mean`` and ``cov`` are known).

    Parameters
    ----------
    trace : Trace
        From ``run_sampler(..., keep_particles=True)``; snapshots ``(T, n, d)``.
    target : Target, optional
    ax : matplotlib Axes, optional
    dims : int or pair of ints, optional
        Default: ``0`` for a 1-D run, ``(0, 1)`` otherwise.
    max_particles : int
        Particles drawn, evenly spaced in index.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    snaps = snapshots_of(trace)
    t, n, d = snaps.shape
    max_particles = validation.check_int("max_particles", max_particles, minimum=1)
    dims = as_dims(dims if dims is not None else tuple(range(min(d, 2))), d)
    chosen = np.unique(np.linspace(0, n - 1, min(n, int(max_particles))).round().astype(int))
    steps = np.asarray(trace.steps, dtype=np.float64)
    created = ax is None
    fig, ax = new_axes(ax, (5.5, 4.5))
    paths = snaps[:, chosen, :]
    if len(dims) == 1:
        ax.plot(steps, paths[:, :, dims[0]], color="C3", lw=0.8, alpha=0.6)
        ax.set_xlabel("step")
        ax.set_ylabel("x" if d == 1 else f"$x_{{{dims[0] + 1}}}$")
    else:
        panel = ParticlePanel(ax, target, dims, view_box(target, [snaps], dims), len(chosen))
        panel.update(paths[-1])  # the ends, in the particles' colour
        ax.plot(paths[:, :, dims[0]], paths[:, :, dims[1]], color="k", lw=0.6, alpha=0.5)
        ax.scatter(paths[0, :, dims[0]], paths[0, :, dims[1]], marker="o", s=10, color="0.3", zorder=3)
    ax.set_title(title if title is not None else
                 f"{len(chosen)} of {n} particles over steps {int(steps[0])}-{int(steps[-1])}")
    if created:
        fig.tight_layout()
    return fig
