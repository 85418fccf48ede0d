"""Particles over the target: a histogram against the density curve (1-D), a scatter over log-density
contours (2-D), pairwise marginals (higher d), marginal histograms.

:class:`ParticlePanel` draws the target once on an axes and moves the particles on it; the static
plots below and the animations (:mod:`.animation`) both use it, so a frame of an animation is the
same picture as :func:`plot_particles`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from .. import validation
from ._figure import as_dims, as_particles, new_axes, pyplot, view_box

__all__ = ["ParticlePanel", "plot_particles", "plot_pairwise", "plot_marginals", "save_particles_figure"]

#: colour of the particles in every picture; reference draws are grey
PARTICLE_COLOUR = "C3"


def _check_target(target: Any, d: int) -> None:
    dim = getattr(target, "dim", None)
    if target is not None and dim is not None and dim != d:
        raise ValueError(f"expected particles with {dim} columns for the target "
                         f"{getattr(target, 'name', '')!r}, received {d}")


def _gaussian_marginal(target: Any, dims: Sequence[int]):
    """``(mean, cov)`` of the target's marginal on ``dims`` where the target knows both, else None."""
    mean, cov = getattr(target, "mean", None), getattr(target, "cov", None)
    if mean is None or cov is None:
        return None
    idx = list(dims)
    return np.asarray(mean, dtype=np.float64)[idx], np.asarray(cov, dtype=np.float64)[np.ix_(idx, idx)]


def _ellipse(mean: np.ndarray, cov: np.ndarray, radius: float, num: int = 120) -> np.ndarray:
    """``(num, 2)`` points of the ellipse ``{x : (x - m)^T C^{-1} (x - m) = radius^2}``."""
    t = np.linspace(0.0, 2.0 * np.pi, num)
    chol = np.linalg.cholesky(cov + 1e-12 * np.eye(2))
    return mean + radius * (np.stack([np.cos(t), np.sin(t)], axis=1) @ chol.T)


class ParticlePanel:
    """The target's density on one axes (drawn once) and particles that :meth:`update` moves.

    Parameters
    ----------
    ax : matplotlib Axes
    target : Target or None
        ``log_prob`` draws the density of 1-D and 2-D targets; ``mean`` and ``cov`` draw the Gaussian
        marginal (curve, or 1/2/3-sd ellipses) of a projection of a higher-dimensional one.
    dims : tuple of one or two ints
        The coordinates shown: one gives a histogram, two a scatter.
    box : (len(dims), 2) array
        Axis limits (fixed, so that frames of an animation share them).
    n : int
        Number of particles (sets the histogram's bins).
    grid : int
        Grid points per axis for the density.
    ylim : float, optional
        Fixed upper limit of the 1-D density axis (animations); automatic otherwise.
    """

    def __init__(self, ax: Any, target: Any, dims: Sequence[int], box: np.ndarray, n: int, *, grid: int = 200,
                 ylim: Optional[float] = None):
        grid = validation.check_int("grid", grid, minimum=10)
        self.ax = ax
        self.dims = tuple(dims)
        self.box = np.asarray(box, dtype=np.float64)
        self.artists: list = []
        dim = getattr(target, "dim", None)
        self._exact = target is not None and dim == len(self.dims) and hasattr(target, "log_prob")
        if len(self.dims) == 1:
            self._init_histogram(target, n, grid, ylim)
        else:
            self._init_scatter(target, grid)
        ax.set_xlim(*self.box[0])

    # --- 1-D: density curve, histogram bars and a rug --------------------------------------------
    def _init_histogram(self, target, n, grid, ylim):
        ax = self.ax
        xs = np.linspace(self.box[0, 0], self.box[0, 1], grid)
        dens = None
        if self._exact:
            lp = np.asarray(target.log_prob(xs[:, None]), dtype=np.float64)
            dens = np.exp(lp - lp.max())
            dens /= np.trapezoid(dens, xs)
        else:
            marginal = _gaussian_marginal(target, self.dims)
            if marginal is not None:
                m, c = float(marginal[0][0]), float(np.sqrt(marginal[1][0, 0]))
                dens = np.exp(-0.5 * ((xs - m) / c) ** 2) / (c * np.sqrt(2.0 * np.pi))
        if dens is not None:
            self.artists += ax.plot(xs, dens, color="k", lw=1.5, label="target density")
        self._edges = np.linspace(self.box[0, 0], self.box[0, 1], int(np.clip(2 * np.sqrt(n), 10, 60)) + 1)
        widths = np.diff(self._edges)
        self._bars = ax.bar(self._edges[:-1], np.zeros(len(widths)), width=widths, align="edge", alpha=0.5,
                            color=PARTICLE_COLOUR, label=f"{n} particles")
        (self._rug,) = ax.plot([], [], "|", color=PARTICLE_COLOUR, ms=10)
        self.artists += list(self._bars) + [self._rug]
        if ylim is not None:
            ax.set_ylim(0.0, ylim)
        self._fixed_ylim = ylim is not None
        self._density_max = 0.0 if dens is None else float(dens.max())
        ax.set_xlabel("x" if getattr(target, "dim", None) == 1 else f"$x_{{{self.dims[0] + 1}}}$")
        ax.set_ylabel("density")

    # --- 2-D: log-density contours (or Gaussian ellipses) and a scatter ---------------------------
    def _init_scatter(self, target, grid):
        ax = self.ax
        if self._exact:
            gx = np.linspace(self.box[0, 0], self.box[0, 1], grid)
            gy = np.linspace(self.box[1, 0], self.box[1, 1], grid)
            xx, yy = np.meshgrid(gx, gy)
            pts = np.empty((xx.size, 2))
            pts[:, self.dims[0]], pts[:, self.dims[1]] = xx.ravel(), yy.ravel()  # dims may be (1, 0)
            lp = np.asarray(target.log_prob(pts), dtype=np.float64).reshape(xx.shape)
            levels = np.linspace(lp.max() - 8.0, lp.max(), 9)
            ax.contourf(xx, yy, lp, levels=levels, cmap="Blues", extend="min")
            ax.contour(xx, yy, lp, levels=levels, colors="k", linewidths=0.3)
        else:
            marginal = _gaussian_marginal(target, self.dims)
            if marginal is not None:
                for r in (1.0, 2.0, 3.0):
                    pts = _ellipse(marginal[0], marginal[1], r)
                    ax.plot(pts[:, 0], pts[:, 1], color="k", lw=0.8, alpha=0.7)
        self._scatter = ax.scatter([], [], s=8, c=PARTICLE_COLOUR, zorder=3)
        self.artists.append(self._scatter)
        ax.set_ylim(*self.box[1])
        ax.set_xlabel(f"$x_{{{self.dims[0] + 1}}}$")
        ax.set_ylabel(f"$x_{{{self.dims[1] + 1}}}$")

    @property
    def density_max(self) -> float:
        """Peak of the drawn 1-D density curve (0 without one)."""
        return getattr(self, "_density_max", 0.0)

    def heights(self, particles: np.ndarray) -> np.ndarray:
        """Histogram bar heights (a density) of a 1-D panel for ``particles`` (``(n, d)``)."""
        x = np.asarray(particles, dtype=np.float64)[:, self.dims[0]]
        counts, _ = np.histogram(x, bins=self._edges)
        return counts / (len(x) * np.diff(self._edges))

    def fix_ylim(self, top: float) -> None:
        """Fix the upper limit of a 1-D panel's density axis (frames of an animation share it)."""
        self.ax.set_ylim(0.0, float(top))
        self._fixed_ylim = True

    def update(self, particles: np.ndarray) -> list:
        """Show ``particles`` (``(n, d)``); returns the artists that changed."""
        x = np.asarray(particles, dtype=np.float64)[:, list(self.dims)]
        if len(self.dims) == 2:
            self._scatter.set_offsets(x)
            self._scatter.set_label(f"{len(x)} particles")
            return [self._scatter]
        heights = self.heights(particles)
        for bar, h in zip(self._bars, heights):
            bar.set_height(h)
        self._rug.set_data(x[:, 0], np.zeros(len(x)))
        if not self._fixed_ylim:
            self.ax.set_ylim(0.0, 1.1 * max(self._density_max, float(heights.max()), 1e-12))
        return list(self._bars) + [self._rug]


def plot_particles(target: Any, particles: Any, *, ax: Any = None, dims: Any = None, title: Optional[str] = None,
                   grid: int = 200, max_dims: int = 4):
    """Particles over the target's density.

    1-D: histogram against the density curve; 2-D: scatter over log-density contours; higher
    dimensions: pairwise marginals of the first ``max_dims`` coordinates (:func:`plot_pairwise`), or,
    with ``ax`` or ``dims`` given, the scatter of one 2-D projection over the 1/2/3-sd ellipses of the
    target's Gaussian marginal (where its ``mean`` and ``cov`` are known).

    Parameters
    ----------
    target : Target or None
        Anything with ``dim``, ``log_prob`` (NumPy ``(n, d)`` float64 in, ``(n,)`` out) and optionally
        ``bounds``, ``mean``, ``cov``, ``name``.
    particles : array of shape (n, d)
        NumPy, torch or any Array-API array (copied to the host).
    ax : matplotlib Axes, optional
        Draw there; a new figure otherwise.
    dims : int or pair of ints, optional
        Coordinates to show (default: all of a 1-D or 2-D target).
    title : str, optional
        Default: the target's name.
    grid : int
        Grid points per axis for the density.
    max_dims : int
        Coordinates in the pairwise grid.

    Returns
    -------
    matplotlib.figure.Figure
    """
    x = as_particles(particles)
    d = x.shape[1]
    _check_target(target, d)
    if d > 2 and ax is None and dims is None:
        return plot_pairwise(x, target=target, max_dims=max_dims, title=title)
    dims = as_dims(dims if dims is not None else tuple(range(min(d, 2))), d)
    created = ax is None
    fig, ax = new_axes(ax, (5.5, 4.5))
    panel = ParticlePanel(ax, target, dims, view_box(target, [x], dims), len(x), grid=grid)
    panel.update(x)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title if title is not None else getattr(target, "name", ""))
    if created:
        fig.tight_layout()
    return fig


def plot_pairwise(particles: Any, *, target: Any = None, dims: Any = None, max_dims: int = 4,
                  reference: Any = None, title: Optional[str] = None):
    """Pairwise marginals (a corner plot): histograms on the diagonal, scatters below it.

    Parameters
    ----------
    particles : array of shape (n, d)
    target : Target, optional
        Its ``mean`` and ``cov`` (where known) draw the Gaussian marginal curves and 1/2/3-sd ellipses.
    dims : sequence of ints, optional
        Coordinates to show; default the first ``max_dims``.
    max_dims : int
    reference : array of shape (m, d), optional
        Reference draws of the target, drawn in grey under the particles.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure with a ``k x k`` grid of axes (``k = len(dims)``).
    """
    x = as_particles(particles)
    d = x.shape[1]
    _check_target(target, d)
    max_dims = validation.check_int("max_dims", max_dims, minimum=1)
    if dims is None:
        dims = tuple(range(min(d, int(max_dims))))
    dims = tuple(int(k) for k in dims)
    if not dims or len(set(dims)) != len(dims) or not all(0 <= k < d for k in dims):
        raise ValueError(f"expected dims as distinct indices in [0, {d}), received {dims}")
    ref = None if reference is None else as_particles(reference, "reference")
    if ref is not None and ref.shape[1] != d:
        raise ValueError(f"expected reference draws with {d} columns, received shape {ref.shape}")
    k = len(dims)
    bins = int(np.clip(2 * np.sqrt(len(x)), 10, 30))
    plt = pyplot()
    size = max(2.1 * k, 4.5)
    fig, axes = plt.subplots(k, k, figsize=(size, size), squeeze=False)
    box = view_box(target, [x] + ([ref] if ref is not None else []), dims)
    for i, di in enumerate(dims):
        for j, dj in enumerate(dims):
            ax = axes[i][j]
            if j > i:
                ax.axis("off")
                continue
            if i == j:
                if ref is not None:
                    ax.hist(ref[:, di], bins=bins, density=True, histtype="step", color="0.5")
                ax.hist(x[:, di], bins=bins, density=True, alpha=0.6, color=PARTICLE_COLOUR)
                marginal = _gaussian_marginal(target, [di])
                if marginal is not None:
                    m, s = float(marginal[0][0]), float(np.sqrt(marginal[1][0, 0]))
                    xs = np.linspace(box[i, 0], box[i, 1], 200)
                    ax.plot(xs, np.exp(-0.5 * ((xs - m) / s) ** 2) / (s * np.sqrt(2 * np.pi)), "k", lw=1)
                ax.set_xlim(*box[i])
                ax.set_yticks([])
            else:
                if ref is not None:
                    ax.scatter(ref[:, dj], ref[:, di], s=2, color="0.6", alpha=0.5)
                ax.scatter(x[:, dj], x[:, di], s=4, color=PARTICLE_COLOUR)
                marginal = _gaussian_marginal(target, [dj, di])
                if marginal is not None:
                    for r in (1.0, 2.0):
                        pts = _ellipse(marginal[0], marginal[1], r)
                        ax.plot(pts[:, 0], pts[:, 1], color="k", lw=0.7)
                ax.set_xlim(*box[j])
                ax.set_ylim(*box[i])
            ax.tick_params(labelsize=7)
            if i == k - 1:
                ax.set_xlabel(f"$x_{{{dj + 1}}}$")
            if j == 0 and i > 0:
                ax.set_ylabel(f"$x_{{{di + 1}}}$")
    fig.suptitle(title if title is not None else (getattr(target, "name", "") + " pairwise marginals").strip())
    fig.tight_layout()
    return fig


def plot_marginals(particles: Any, *, target: Any = None, title: Optional[str] = None, max_dims: int = 12):
    """Histograms of the first ``max_dims`` marginals, with the true Gaussian marginal where known.

    Parameters
    ----------
    particles : array of shape (n, d)
    target : Target, optional
        ``mean`` and ``cov`` draw the marginal densities.
    title : str, optional
    max_dims : int

    Returns
    -------
    matplotlib.figure.Figure
    """
    x = as_particles(particles)
    max_dims = validation.check_int("max_dims", max_dims, minimum=1)
    plt = pyplot()
    d = min(x.shape[1], int(max_dims))
    cols = min(d, 4)
    rows = -(-d // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), squeeze=False)
    for k in range(rows * cols):
        ax = axes[k // cols][k % cols]
        if k >= d:
            ax.axis("off")
            continue
        ax.hist(x[:, k], bins=30, density=True, alpha=0.6, color="C0")
        marginal = _gaussian_marginal(target, [k])
        if marginal is not None:
            m, s = float(marginal[0][0]), float(np.sqrt(marginal[1][0, 0]))
            xs = np.linspace(m - 4 * s, m + 4 * s, 200)
            ax.plot(xs, np.exp(-0.5 * ((xs - m) / s) ** 2) / (s * np.sqrt(2 * np.pi)), "k", lw=1)
        ax.set_title(f"dim {k}", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title or (getattr(target, "name", "") + " marginals"))
    fig.tight_layout()
    return fig


def save_particles_figure(path: Any, target: Any, particles: Any, title: Optional[str] = None, *,
                          dpi: int = 110) -> None:
    """Draw :func:`plot_particles` and write it to ``path`` (format from the suffix, e.g. PNG)."""
    fig = plot_particles(target, particles, title=title)
    try:
        fig.savefig(path, dpi=dpi)
    finally:
        pyplot().close(fig)
