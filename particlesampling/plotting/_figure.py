"""What every plot needs: matplotlib on first use, checked NumPy inputs, a view box, traces by name.

matplotlib is imported inside :func:`pyplot`, never at module import, and the backend is left as
the user (or Jupyter) chose it.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np

from .._backend import to_numpy

__all__ = ["pyplot", "as_particles", "as_dims", "snapshots_of", "traces_by_name", "view_box", "new_axes",
           "is_trace", "root_figure"]


def pyplot():
    """``matplotlib.pyplot``, imported on first use; ImportError naming the extra to install."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install particlesampling[viz]") from exc
    return plt


def as_particles(x: Any, name: str = "particles") -> np.ndarray:
    """``x`` as a float64 NumPy ``(n, d)`` array (from NumPy, torch or any Array-API array)."""
    try:
        arr = np.asarray(to_numpy(x), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"expected {name} as an (n, d) array, received {type(x).__name__}") from exc
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"expected {name} of shape (n, d) with n, d >= 1, received shape {arr.shape}")
    return arr


def as_dims(dims: Any, d: int) -> Tuple[int, ...]:
    """Check a tuple of one or two distinct coordinate indices in ``[0, d)``."""
    if isinstance(dims, (int, np.integer)) and not isinstance(dims, bool):
        dims = (int(dims),)
    try:
        dims = tuple(int(k) for k in dims)
    except TypeError:
        raise TypeError(f"expected dims as one or two coordinate indices, received {dims!r}") from None
    if not 1 <= len(dims) <= 2 or len(set(dims)) != len(dims) or not all(0 <= k < d for k in dims):
        raise ValueError(f"expected dims as one or two distinct indices in [0, {d}), received {dims}")
    return dims


def is_trace(obj: Any) -> bool:
    return all(hasattr(obj, name) for name in ("steps", "info", "metrics", "particles"))


def snapshots_of(trace: Any) -> np.ndarray:
    """``(T, n, d)`` float64 particle snapshots of a trace; ValueError if it kept none."""
    if not is_trace(trace):
        raise TypeError(f"expected a Trace from run_sampler, received {type(trace).__name__}")
    if len(trace.particles) == 0:
        raise ValueError("the trace holds no particle snapshots; run run_sampler(..., keep_particles=True)")
    return np.asarray(np.stack([np.asarray(p) for p in trace.particles]), dtype=np.float64)


def traces_by_name(traces: Any) -> Dict[str, Any]:
    """A Trace, or a mapping name -> Trace, as a non-empty dict name -> Trace."""
    if is_trace(traces):
        return {"": traces}
    if not isinstance(traces, Mapping) or not traces:
        raise TypeError(f"expected a Trace or a non-empty mapping name -> Trace, received {type(traces).__name__}")
    for name, trace in traces.items():
        if not is_trace(trace):
            raise TypeError(f"expected traces[{name!r}] to be a Trace, received {type(trace).__name__}")
    return {str(k): v for k, v in traces.items()}


def runs_and_snapshots(traces: Any, dims: Any):
    """``(runs, snapshots, dims)`` for several runs of one target: ``runs`` by name (see
    :func:`traces_by_name`), each run's ``(frames, n, d)`` snapshots, and the plotted dimensions
    (default the first two). Runs of different dimensions are a ValueError."""
    runs = traces_by_name(traces)
    snaps = {name: snapshots_of(trace) for name, trace in runs.items()}
    d = next(iter(snaps.values())).shape[2]
    if any(s.shape[2] != d for s in snaps.values()):
        raise ValueError(f"expected runs of the same dimension, received {[s.shape[2] for s in snaps.values()]}")
    return runs, snaps, as_dims(dims if dims is not None else tuple(range(min(d, 2))), d)


def view_box(target: Any, arrays: Sequence[np.ndarray], dims: Sequence[int]) -> np.ndarray:
    """``(len(dims), 2)`` box covering every array and the target: its ``bounds`` where known, else its
    mean ± 3 sd on ``dims`` where it knows ``mean`` and ``cov``; padded 5%."""
    dims = list(dims)
    pts = np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1, np.asarray(a).shape[-1])[:, dims]
                          for a in arrays], axis=0)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    bounds = getattr(target, "bounds", None)
    mean, cov = getattr(target, "mean", None), getattr(target, "cov", None)
    if bounds is not None:
        b = np.asarray(bounds, dtype=np.float64)
        if b.ndim == 2 and b.shape[1] == 2 and b.shape[0] > max(dims):
            lo, hi = np.minimum(lo, b[dims, 0]), np.maximum(hi, b[dims, 1])
    elif mean is not None and cov is not None:  # a projection: the target's marginal to 3 sd
        m = np.asarray(mean, dtype=np.float64)[dims]
        s = np.sqrt(np.diag(np.asarray(cov, dtype=np.float64))[dims])
        lo, hi = np.minimum(lo, m - 3 * s), np.maximum(hi, m + 3 * s)
    pad = 0.05 * np.maximum(hi - lo, 1e-6)
    return np.stack([lo - pad, hi + pad], axis=1)


def root_figure(ax: Any):
    """The top-level Figure holding ``ax`` (also when ``ax`` sits in a sub-figure)."""
    fig = ax.figure
    while getattr(fig, "figure", fig) is not fig:
        fig = fig.figure
    return fig


def new_axes(ax: Any, figsize: Tuple[float, float]):
    """``(figure, ax)``: the given axes and its figure, or a new figure with one axes."""
    if ax is None:
        fig, ax = pyplot().subplots(figsize=figsize)
        return fig, ax
    if not hasattr(ax, "figure") or not hasattr(ax, "plot"):
        raise TypeError(f"expected ax as a matplotlib Axes, received {type(ax).__name__}")
    return root_figure(ax), ax
