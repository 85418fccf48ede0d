"""Pictures of particles: over the target's density (1-D, 2-D), marginals (higher d), and traces.

matplotlib is imported lazily (``pip install particlesampling[viz]``); the functions return the
figure and never call ``plt.show()``. Inputs are NumPy arrays (use :func:`particlesampling.to_numpy`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["plot_particles", "plot_trace", "plot_marginals", "save_particles_figure"]


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install particlesampling[viz]") from exc
    return plt


def _bounds(target, particles, dim):
    b = getattr(target, "bounds", None)
    lo = particles.min(axis=0)
    hi = particles.max(axis=0)
    if b is not None:
        b = np.asarray(b, dtype=float).reshape(dim, 2)
        lo = np.minimum(lo, b[:, 0])
        hi = np.maximum(hi, b[:, 1])
    pad = 0.05 * (hi - lo + 1e-12)
    return lo - pad, hi + pad


def plot_particles(target, particles: np.ndarray, *, ax=None, title: str | None = None, grid: int = 200):
    """Particles over the target's density: a histogram against the density curve in 1-D, a scatter
    over log-density contours in 2-D, marginal histograms otherwise.

    Parameters
    ----------
    target : object with ``dim`` and ``log_prob`` accepting NumPy (n, d) float64 arrays
    particles : (n, d) NumPy array
    """
    particles = np.asarray(particles, dtype=np.float64)
    if particles.ndim != 2:
        raise ValueError(f"expected particles of shape (n, d), received {particles.shape}")
    d = particles.shape[1]
    if d > 2:
        return plot_marginals(particles, target=target, title=title)
    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
    else:
        fig = ax.figure
    lo, hi = _bounds(target, particles, d)
    if d == 1:
        xs = np.linspace(lo[0], hi[0], grid)[:, None]
        lp = np.asarray(target.log_prob(xs), dtype=float)
        dens = np.exp(lp - lp.max())
        dens /= np.trapezoid(dens, xs[:, 0])
        ax.plot(xs[:, 0], dens, color="k", lw=1.5, label="target density")
        ax.hist(particles[:, 0], bins=max(10, int(np.sqrt(len(particles)))), density=True, alpha=0.5,
                color="C0", label=f"{len(particles)} particles")
        ax.plot(particles[:, 0], np.zeros(len(particles)), "|", color="C0", ms=10)
        ax.set_xlabel("x")
        ax.set_ylabel("density")
        ax.legend(loc="upper left", fontsize=8)
    else:
        gx = np.linspace(lo[0], hi[0], grid)
        gy = np.linspace(lo[1], hi[1], grid)
        xx, yy = np.meshgrid(gx, gy)
        pts = np.stack([xx.ravel(), yy.ravel()], axis=1)
        lp = np.asarray(target.log_prob(pts), dtype=float).reshape(xx.shape)
        levels = np.linspace(lp.max() - 8.0, lp.max(), 9)
        ax.contourf(xx, yy, lp, levels=levels, cmap="Blues", extend="min")
        ax.contour(xx, yy, lp, levels=levels, colors="k", linewidths=0.3)
        ax.scatter(particles[:, 0], particles[:, 1], s=6, c="C3", label=f"{len(particles)} particles")
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or getattr(target, "name", ""))
    fig.tight_layout()
    return fig


def plot_marginals(particles: np.ndarray, *, target=None, title: str | None = None, max_dims: int = 12):
    """Histograms of the first ``max_dims`` marginals, with the true mean ± sd where known."""
    plt = _plt()
    particles = np.asarray(particles, dtype=np.float64)
    d = min(particles.shape[1], max_dims)
    cols = min(d, 4)
    rows = -(-d // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), squeeze=False)
    mean = getattr(target, "mean", None)
    cov = getattr(target, "cov", None)
    for k in range(rows * cols):
        ax = axes[k // cols][k % cols]
        if k >= d:
            ax.axis("off")
            continue
        ax.hist(particles[:, k], bins=30, density=True, alpha=0.6, color="C0")
        if mean is not None and cov is not None:
            m, s = float(np.asarray(mean)[k]), float(np.sqrt(np.asarray(cov)[k, k]))
            xs = np.linspace(m - 4 * s, m + 4 * s, 200)
            ax.plot(xs, np.exp(-0.5 * ((xs - m) / s) ** 2) / (s * np.sqrt(2 * np.pi)), "k", lw=1)
        ax.set_title(f"dim {k}", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title or (getattr(target, "name", "") + " marginals"))
    fig.tight_layout()
    return fig


def plot_trace(trace, keys=("update_norm", "bandwidth"), metrics=True):
    """Line plots of the recorded info (and metrics) against the step."""
    plt = _plt()
    series = [(k, trace.info[k]) for k in keys if k in trace.info]
    if metrics:
        series += list(trace.metrics.items())
    if not series:
        raise ValueError("the trace holds none of the requested series")
    fig, axes = plt.subplots(1, len(series), figsize=(3.6 * len(series), 3), squeeze=False)
    steps = np.asarray(trace.steps[-len(series[0][1]):])
    for ax, (name, vals) in zip(axes[0], series):
        vals = np.asarray(vals)
        ax.plot(np.asarray(trace.steps[-len(vals):]) if len(vals) != len(steps) else steps, vals)
        if np.all(vals > 0):
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
    fig.tight_layout()
    return fig


def save_particles_figure(path, target, particles, title=None) -> None:
    """Draw :func:`plot_particles` and write it to ``path`` (PNG)."""
    plt = _plt()
    fig = plot_particles(target, particles, title=title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
