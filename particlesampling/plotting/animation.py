"""Animations of particle dynamics from traces: one frame per recorded snapshot, runs side by side.

Written with matplotlib's ``FuncAnimation``: a ``.gif`` with the Pillow writer (no external tool),
an ``.mp4`` with ffmpeg when it is on the ``PATH``. Every frame is the picture of
:func:`plot_particles` (the same :class:`ParticlePanel`), titled with the run's name and step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .. import validation
from ._figure import pyplot, runs_and_snapshots, view_box
from .particles import ParticlePanel

__all__ = ["animate_particles", "check_animation_path", "ANIMATION_FORMATS"]

#: file suffix -> matplotlib writer
ANIMATION_FORMATS = {".gif": "pillow", ".mp4": "ffmpeg"}


def check_animation_path(path: Any) -> Path:
    """``path`` as a Path whose suffix names a writer that works here.

    Raises
    ------
    ValueError
        For a suffix other than ``.gif`` or ``.mp4``.
    RuntimeError
        For ``.mp4`` when ffmpeg is not available.
    """
    if not isinstance(path, (str, Path)):
        raise TypeError(f"expected the output path as a str or Path, received {type(path).__name__}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ANIMATION_FORMATS:
        raise ValueError(f"expected an output file ending in {' or '.join(ANIMATION_FORMATS)}, received {str(path)!r}")
    if suffix == ".mp4":
        from matplotlib import animation

        if not animation.writers.is_available("ffmpeg"):
            raise RuntimeError(f"writing {path.name} needs ffmpeg, which is not on the PATH; "
                               "write a .gif instead (Pillow, no external tool)")
    return path


def _palette_gif_writer(fps: int):
    """matplotlib's Pillow writer, with one shared 255-colour palette for every frame.

    The plain writer lets Pillow quantise each frame on its own, so the static background (the
    density's contours) gets slightly different colours in every frame and nothing compresses
    between frames; with one palette only the moving particles change, and the file is several times
    smaller.
    """
    from io import BytesIO

    from matplotlib import animation
    from PIL import Image

    class PaletteGifWriter(animation.PillowWriter):
        def setup(self, fig, outfile, dpi=None):
            super().setup(fig, outfile, dpi=dpi)
            self._images = []

        def grab_frame(self, **savefig_kwargs):
            buf = BytesIO()
            self.fig.savefig(buf, **{**savefig_kwargs, "format": "rgba", "dpi": self.dpi})
            image = Image.frombuffer("RGBA", self.frame_size, buf.getbuffer(), "raw", "RGBA", 0, 1)
            self._images.append(image.convert("RGB"))

        def finish(self):
            picks = sorted({0, len(self._images) // 2, len(self._images) - 1})
            width, height = self._images[0].size
            sheet = Image.new("RGB", (width * len(picks), height))
            for i, k in enumerate(picks):
                sheet.paste(self._images[k], (i * width, 0))
            palette = sheet.quantize(colors=255, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            frames = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in self._images]
            frames[0].save(self.outfile, save_all=True, append_images=frames[1:],
                           duration=int(1000 / self.fps), loop=0)

    return PaletteGifWriter(fps=fps)


def _frame_indices(length: int, max_frames: Optional[int]) -> np.ndarray:
    if max_frames is None or max_frames >= length:
        return np.arange(length)
    return np.unique(np.linspace(0, length - 1, max_frames).round().astype(int))


def animate_particles(traces: Any, target: Any, path: Any, *, fps: int = 10, dpi: int = 80, dims: Any = None,
                      max_frames: Optional[int] = None, title: Optional[str] = None,
                      progress_callback: Optional[Callable[[int, int], None]] = None) -> Path:
    """Write an animation of the particles of one or several runs (side by side) over the target.

    Parameters
    ----------
    traces : Trace or mapping name -> Trace
        Each from ``run_sampler(..., keep_particles=True)``. Frame ``k`` shows snapshot ``k`` of every
        run (a shorter run stays on its last snapshot).
    target : Target or None
        Drawn under the particles as in :func:`plot_particles`.
    path : str or Path
        ``.gif`` (Pillow) or ``.mp4`` (needs ffmpeg).
    fps : int
        Frames per second.
    dpi : int
        Resolution: each panel is ``3.6 x 3.2`` inches, so ``288 x 256`` pixels at ``dpi=80``.
    dims : int or pair of ints, optional
        Coordinates shown (default ``(0, 1)``, or ``0`` for a 1-D target).
    max_frames : int, optional
        At most this many frames, evenly spaced over the snapshots (first and last kept).
    title : str, optional
        Figure title.
    progress_callback : callable(frame, total), optional
        Called as each frame is written (matplotlib's ``Animation.save`` hook).

    Returns
    -------
    Path of the written file.
    """
    path = check_animation_path(path)
    fps = validation.check_int("fps", fps, minimum=1)
    dpi = validation.check_int("dpi", dpi, minimum=1)
    max_frames = validation.check_int("max_frames", max_frames, minimum=1, optional=True)
    runs, snaps, dims = runs_and_snapshots(traces, dims)
    frames = _frame_indices(max(len(s) for s in snaps.values()), max_frames)

    from matplotlib import animation

    plt = pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(3.6 * len(runs), 3.2), squeeze=False)
    box = view_box(target, list(snaps.values()), dims)
    panels = {name: ParticlePanel(ax, target, dims, box, s.shape[1], grid=120)
              for ax, (name, s) in zip(axes[0], snaps.items())}
    if len(dims) == 1:  # one density axis for every frame: above the target's peak, or the particles' highest
        peak = max(p.density_max for p in panels.values())
        if peak <= 0:
            peak = max(float(panels[name].heights(x).max()) for name, s in snaps.items() for x in s) / 1.4
        for panel in panels.values():
            panel.fix_ylim(1.4 * peak)
    if title is not None:
        fig.suptitle(title)

    def draw(k: int):
        changed = []
        for name, panel in panels.items():
            i = min(int(frames[k]), len(snaps[name]) - 1)
            changed += panel.update(snaps[name][i])
            step = int(runs[name].steps[i])
            panel.ax.set_title(f"{name}: step {step}" if name else f"step {step}", fontsize=10)
        return changed

    draw(0)
    fig.tight_layout()
    anim = animation.FuncAnimation(fig, draw, frames=len(frames), blit=False, repeat=False)
    writer = _palette_gif_writer(int(fps)) if path.suffix.lower() == ".gif" else animation.FFMpegWriter(fps=int(fps))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        anim.save(str(path), writer=writer, dpi=int(dpi), progress_callback=progress_callback)
    finally:
        plt.close(fig)
    return path
