"""Several runs on one target side by side: final particles in a row, their diagnostic curves below."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from ..diagnostics.along_trace import trace_diagnostics
from ._figure import pyplot, runs_and_snapshots, view_box
from .curves import curve_keys, draw_curves
from .particles import ParticlePanel

__all__ = ["plot_methods"]


def plot_methods(traces: Any, target: Any, *, reference: Any = None, curves: Optional[Sequence[str]] = ("ksd", "mmd"),
                 dims: Any = None, title: Optional[str] = None):
    """Runs (methods, settings) on one target side by side.

    Top row: each run's last particle snapshot over the target (the panels share their axes); bottom
    row: the diagnostic ``curves`` of all runs overlaid (:func:`plot_diagnostics`), where available.

    Parameters
    ----------
    traces : mapping name -> Trace
        E.g. ``{"SVGD": trace1, "SPOS": trace2}``; each from ``run_sampler(..., keep_particles=True)``.
    target : Target
    reference : array of shape (m, d), optional
        Reference draws for the MMD (default: the target's exact draws, where it has an exact sampler).
    curves : sequence of str or None
        Diagnostic curves of the bottom row, those the runs have (``None``: the default curves;
        empty: no bottom row).
    dims : int or pair of ints, optional
        Coordinates shown (default ``(0, 1)``, or ``0`` for a 1-D target).
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    runs, snaps, dims = runs_and_snapshots(traces, dims)
    keys = []
    if curves is None or len(curves):
        series = {name: trace_diagnostics(trace, target, reference=reference) for name, trace in runs.items()}
        wanted = None if curves is None else [k for k in curves if any(k in s for s in series.values())]
        keys = curve_keys(series, wanted) if wanted is None or wanted else []
    m = len(runs)
    width = max(3.4 * m, 3.2 * len(keys))
    fig = pyplot().figure(figsize=(width, 3.4 + (3.0 if keys else 0.0)), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.15, 1.0]) if keys else (fig, None)
    axes = top.subplots(1, m, sharex=True, sharey=len(dims) == 2, squeeze=False)[0]
    box = view_box(target, [s[-1] for s in snaps.values()], dims)
    for ax, (name, s) in zip(axes, snaps.items()):
        panel = ParticlePanel(ax, target, dims, box, s.shape[1])
        panel.update(s[-1])
        ax.set_title(f"{name}: step {int(runs[name].steps[-1])}", fontsize=10)
    if keys:
        draw_curves(series, keys, list(bottom.subplots(1, len(keys), squeeze=False)[0]))
    if title is not None:
        fig.suptitle(title)
    return fig
