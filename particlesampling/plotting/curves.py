"""Diagnostic curves over the steps of one or several runs: KSD, MMD to reference draws, bandwidth,
update norm, and any metric recorded by the run.

The numbers come from :func:`particlesampling.diagnostics.trace_diagnostics`; this module only draws.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..diagnostics.along_trace import trace_diagnostics
from ._figure import pyplot, root_figure, traces_by_name

__all__ = ["plot_diagnostics", "plot_trace", "draw_curves", "curve_keys", "DEFAULT_CURVES", "CURVE_LABELS"]

#: the curves drawn by default, in this order, where a run has them
DEFAULT_CURVES = ("ksd", "mmd", "bandwidth", "update_norm")

#: panel titles of the known series (others are titled by their name)
CURVE_LABELS = {
    "ksd": "KSD (IMQ kernel, h = 1)",
    "mmd": "MMD to target draws",
    "bandwidth": "bandwidth h",
    "update_norm": "update norm",
    "mean_kernel": "mean kernel value",
    "score_norm": "score norm",
    "marginal_variance": "marginal variance",
}


def curve_keys(series: Dict[str, Dict[str, np.ndarray]], keys: Optional[Sequence[str]]) -> List[str]:
    available: List[str] = []
    for s in series.values():
        available += [k for k in s if k != "steps" and k not in available]
    if keys is None:
        extra = [k for k in available if k not in DEFAULT_CURVES and k not in CURVE_LABELS]
        chosen = [k for k in DEFAULT_CURVES if k in available] + extra
        if not chosen:
            raise ValueError(f"the trace holds none of the curves {list(DEFAULT_CURVES)}; keep particles "
                             "(run_sampler(..., keep_particles=True)) and pass the target for KSD and MMD")
        return chosen
    if isinstance(keys, str):
        keys = [keys]
    missing = [k for k in keys if k not in available]
    if missing:
        raise ValueError(f"expected curves among {available}, received {list(keys)} ({missing} not available)")
    return list(keys)


def draw_curves(series: Dict[str, Dict[str, np.ndarray]], keys: Sequence[str], axes: Sequence[Any]) -> list:
    """Draw ``series[run][key]`` against ``series[run]["steps"]``, one axes per key; returns the lines."""
    if len(axes) != len(keys):
        raise ValueError(f"expected {len(keys)} axes (one per curve {list(keys)}), received {len(axes)}")
    lines = []
    for ax, key in zip(axes, keys):
        values = []
        for i, (name, s) in enumerate(series.items()):
            if key not in s:
                continue
            ok = np.isfinite(s[key])
            lines += ax.plot(s["steps"][ok], s[key][ok], color=f"C{i}", lw=1.4, label=name or None)
            values.append(s[key][ok])
        finite = np.concatenate(values) if values else np.zeros(0)
        if finite.size and np.all(finite > 0):
            ax.set_yscale("log")
        ax.set_title(CURVE_LABELS.get(key, key), fontsize=10)
        ax.set_xlabel("step")
    if any(series) and axes:
        axes[0].legend(fontsize=8)
    return lines


def plot_diagnostics(traces: Any, target: Any = None, *, reference: Any = None, keys: Optional[Sequence[str]] = None,
                     axes: Any = None, title: Optional[str] = None):
    """One panel per diagnostic, against the step; several runs are overlaid, one line each.

    Parameters
    ----------
    traces : Trace or mapping name -> Trace
    target : Target, optional
        Its score gives the KSD of every particle snapshot, its exact draws (where it has an exact
        sampler) the MMD; both need ``keep_particles=True``.
    reference : array of shape (m, d), optional
        Reference draws for the MMD instead of the target's.
    keys : sequence of str, optional
        Curves to draw; default those of ``DEFAULT_CURVES`` a run has, then its other metrics.
    axes : sequence of matplotlib Axes, optional
        One per curve; a new figure (one row) otherwise.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure

    Notes
    -----
    A panel has a logarithmic y-axis when all its values are positive. The starting state has no
    step info (NaN), so info curves begin at the first recorded step after it.
    """
    runs = traces_by_name(traces)
    series = {name: trace_diagnostics(trace, target, reference=reference) for name, trace in runs.items()}
    chosen = curve_keys(series, keys)
    if axes is None:
        fig, row = pyplot().subplots(1, len(chosen), figsize=(3.4 * len(chosen), 3.0), squeeze=False)
        axes, created = list(row[0]), True
    else:
        axes, created = list(np.ravel(np.asarray(axes, dtype=object))), False
        fig = root_figure(axes[0]) if axes else None
    draw_curves(series, chosen, axes)
    if title is not None:
        fig.suptitle(title)
    if created:
        fig.tight_layout()
    return fig


def plot_trace(trace: Any, keys: Sequence[str] = ("update_norm", "bandwidth"), metrics: bool = True):
    """Line plots of the recorded info fields ``keys`` (and every metric) against the step.

    Parameters
    ----------
    trace : Trace
    keys : sequence of str
        Info fields to draw, where the trace has them.
    metrics : bool
        Also draw every metric of the run.

    Returns
    -------
    matplotlib.figure.Figure
    """
    wanted = [k for k in keys if k in trace.info] + (list(trace.metrics) if metrics else [])
    if not wanted:
        raise ValueError(f"the trace holds none of the requested series {list(keys)}; it has "
                         f"{sorted(trace.info) + sorted(trace.metrics)}")
    return plot_diagnostics(trace, keys=wanted)
