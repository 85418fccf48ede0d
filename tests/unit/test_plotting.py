"""Pictures of particles: each plot is drawn from a trace or particles, written to a PNG, and checked as an
image (size, not blank) and by what it draws (the particles where they are, one line per run, ...)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import matplotlib  # noqa: E402  (pinned test dependency: imported, never skipped)
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import animation  # noqa: E402
from PIL import Image  # noqa: E402

import particlesampling as ps  # noqa: E402

DPI = 50


def _colours(pixels: np.ndarray) -> int:
    """Number of distinct RGB colours of an (H, W, 3) array."""
    rgb = pixels.reshape(-1, 3).astype(np.int64)
    return len(np.unique((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]))


@pytest.fixture(autouse=True)

def _close_figures():
    yield
    plt.close("all")


def _run(target, method, n=24, steps=30, every=5, seed=0, **kw):
    sampler = ps.get_sampler(method, target.score, 0.05)
    _, trace = ps.run_sampler(sampler, sampler.init(target.initial_particles(n, seed=seed), seed=1), steps,
                              trace_every=every, keep_particles=True, **kw)
    return trace


@pytest.fixture(scope="module")
def mixture2d_runs():
    target = ps.get_target("mixture2d")
    return target, {"SVGD": _run(target, "svgd"), "SGLD": _run(target, "sgld")}


def check_image(path, size=None) -> Image.Image:
    """A readable image of the expected pixel size (within a pixel), not blank: more than one colour."""
    with Image.open(path) as image:
        image.load()
    if size is not None:
        assert abs(image.size[0] - size[0]) <= 1 and abs(image.size[1] - size[1]) <= 1, (image.size, size)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 1.0
    assert _colours(pixels) > 2
    return image


def save(fig, tmp_path, name="figure.png") -> Image.Image:
    path = tmp_path / name
    fig.savefig(path, dpi=DPI)
    w, h = fig.get_size_inches() * DPI
    return check_image(path, (w, h))


# --- particles over the target -----------------------------------------------------------------------

def test_particles_1d_histogram_matches_the_particles(tmp_path):
    target = ps.get_target("mixture1d")
    x = target.sample(300, seed=0)
    fig = ps.plotting.plot_particles(target, x)
    (ax,) = fig.axes
    bars = [p for p in ax.patches]
    widths = np.array([b.get_width() for b in bars])
    heights = np.array([b.get_height() for b in bars])
    assert math.isclose(float((widths * heights).sum()), 1.0, rel_tol=1e-9)  # a density histogram
    rug = next(line for line in ax.lines if line.get_marker() == "|")
    np.testing.assert_array_equal(rug.get_xdata(), x[:, 0])
    curve = next(line for line in ax.lines if line.get_label() == "target density")
    xs, dens = curve.get_xdata(), curve.get_ydata()
    assert math.isclose(float(np.trapezoid(dens, xs)), 1.0, rel_tol=1e-6)
    save(fig, tmp_path)


def test_particles_2d_scatter_is_at_the_particles(tmp_path):
    target = ps.get_target("banana")
    x = target.sample(50, seed=1)
    fig = ps.plotting.plot_particles(target, x, title="t")
    (ax,) = fig.axes
    scatter = next(c for c in ax.collections if len(c.get_offsets()) == 50)
    np.testing.assert_array_equal(np.asarray(scatter.get_offsets()), x)
    assert ax.get_title() == "t"
    save(fig, tmp_path)


def test_particles_above_2d_are_pairwise_marginals(tmp_path):
    target = ps.get_target("standard-normal", dim=5)
    x = target.sample(40, seed=0)
    fig = ps.plotting.plot_particles(target, x)
    assert len(fig.axes) == 16  # first 4 coordinates: a 4 x 4 corner plot
    assert sum(ax.axison for ax in fig.axes) == 10  # lower triangle and diagonal
    image = save(fig, tmp_path)
    assert image.size[0] > 300
    # with an axes (or dims) a 2-D projection instead, over the Gaussian marginal's ellipses
    fig2, ax = plt.subplots()
    assert ps.plotting.plot_particles(target, x, ax=ax, dims=(2, 4)) is fig2
    scatter = next(c for c in ax.collections if len(c.get_offsets()) == 40)
    np.testing.assert_array_equal(np.asarray(scatter.get_offsets()), x[:, [2, 4]])
    assert len(ax.lines) == 3  # 1-, 2- and 3-sd ellipses


def test_pairwise_with_reference_and_marginals(tmp_path):
    target = ps.get_target("blinreg-diabetes")
    x = target.sample(30, seed=0)
    fig = ps.plotting.plot_pairwise(x, target=target, dims=(0, 3), reference=target.sample(200, seed=1))
    assert len(fig.axes) == 4
    save(fig, tmp_path, "pair.png")
    fig = ps.plotting.plot_marginals(x, target=target, max_dims=6)
    assert sum(ax.axison for ax in fig.axes) == 6
    save(fig, tmp_path, "marg.png")


def test_particles_accept_torch_tensors():
    import torch

    target = ps.get_target("gaussian")
    x = torch.as_tensor(target.sample(20, seed=0), dtype=torch.float32)
    fig = ps.plotting.plot_particles(target, x)
    scatter = next(c for c in fig.axes[0].collections if len(c.get_offsets()) == 20)
    np.testing.assert_allclose(np.asarray(scatter.get_offsets()), x.numpy(), rtol=1e-6)


@pytest.mark.parametrize("bad, error, message", [
    (np.zeros(5), ValueError, r"shape \(n, d\)"),
    (np.zeros((4, 3)), ValueError, "2 columns"),
    ("particles", TypeError, "array"),
])
def test_particles_refuse_bad_input(bad, error, message):
    with pytest.raises(error, match=message):
        ps.plotting.plot_particles(ps.get_target("gaussian"), bad)


def test_particles_refuse_bad_dims():
    x = np.zeros((5, 3))
    with pytest.raises(ValueError, match="distinct indices"):
        ps.plotting.plot_particles(None, x, dims=(0, 3))


def test_save_particles_figure_writes_a_png(tmp_path):
    target = ps.get_target("ring")
    ps.plotting.save_particles_figure(tmp_path / "p.png", target, target.sample(30, 0), title="ring", dpi=40)
    check_image(tmp_path / "p.png", (5.5 * 40, 4.5 * 40))
    assert not plt.get_fignums()  # closed after writing


# --- trajectories ------------------------------------------------------------------------------------

def test_trajectories_2d_one_path_per_particle(mixture2d_runs, tmp_path):
    target, runs = mixture2d_runs
    trace = runs["SVGD"]
    fig = ps.plotting.plot_trajectories(trace, target, max_particles=5)
    (ax,) = fig.axes
    snaps = np.stack(trace.particles)
    chosen = np.unique(np.linspace(0, 23, 5).round().astype(int))
    paths = [line for line in ax.lines if len(line.get_xdata()) == len(trace.steps)]
    assert len(paths) == 5
    for line, i in zip(paths, chosen):
        np.testing.assert_array_equal(line.get_xdata(), snaps[:, i, 0])
        np.testing.assert_array_equal(line.get_ydata(), snaps[:, i, 1])
    save(fig, tmp_path)


def test_trajectories_1d_against_the_step(tmp_path):
    target = ps.get_target("mixture1d")
    trace = _run(target, "sgld", n=8, steps=20, every=4)
    fig = ps.plotting.plot_trajectories(trace, target)
    lines = fig.axes[0].lines
    assert len(lines) == 8
    np.testing.assert_array_equal(lines[0].get_xdata(), trace.steps)
    assert fig.axes[0].get_xlabel() == "step"
    save(fig, tmp_path)


def test_trajectories_need_snapshots():
    target = ps.get_target("gaussian")
    sampler = ps.svgd(target.score, 0.05)
    _, trace = ps.run_sampler(sampler, sampler.init(target.initial_particles(5, 0)), 3)
    with pytest.raises(ValueError, match="keep_particles=True"):
        ps.plotting.plot_trajectories(trace, target)
    with pytest.raises(TypeError, match="Trace"):
        ps.plotting.plot_trajectories(np.zeros((3, 5, 2)), target)


# --- diagnostics along a trace -----------------------------------------------------------------------

def test_trace_diagnostics_are_the_diagnostics_of_each_snapshot(mixture2d_runs):
    target, runs = mixture2d_runs
    trace = runs["SVGD"]
    series = ps.trace_diagnostics(trace, target, reference_size=100, seed=3)
    np.testing.assert_array_equal(series["steps"], [0, 5, 10, 15, 20, 25, 30])
    assert np.isnan(series["bandwidth"][0]) and np.all(series["bandwidth"][1:] > 0)
    np.testing.assert_allclose(series["update_norm"], trace.info["update_norm"])
    for k, x in enumerate(trace.particles):
        assert series["ksd"][k] == pytest.approx(float(ps.ksd(x, target.score(x))), rel=1e-12)
    ref = target.sample(100, 3)
    h = float(ps.diagnostics.pooled_median_bandwidth(ps.sqdist(ref)))
    expected = [math.sqrt(max(float(ps.mmd(x, ref, bandwidth=h)), 0.0)) for x in trace.particles]
    np.testing.assert_allclose(series["mmd"], expected, rtol=1e-12)
    assert series["ksd"][-1] < series["ksd"][0] and series["mmd"][-1] < series["mmd"][0]
    # given reference draws replace the target's
    other = ps.trace_diagnostics(trace, target, reference=ref + 1.0)
    assert not np.allclose(other["mmd"], series["mmd"])


def test_trace_diagnostics_without_snapshots_or_target():
    target = ps.get_target("gaussian")
    sampler = ps.spos(target.score, 0.05)
    _, trace = ps.run_sampler(sampler, sampler.init(target.initial_particles(6, 0)), 4, trace_every=2,
                              metrics={"ksd": lambda x: ps.ksd(x, target.score(x))})
    series = ps.trace_diagnostics(trace, target)
    assert "mmd" not in series  # no snapshots
    np.testing.assert_array_equal(series["ksd"], trace.metrics["ksd"])  # the run's own metric is kept
    assert set(ps.trace_diagnostics(_run(target, "sgld", n=6, steps=4))) >= {"steps", "update_norm"}


def test_trace_diagnostics_refuse_bad_input(mixture2d_runs):
    target, runs = mixture2d_runs
    with pytest.raises(TypeError, match="expected a Trace"):
        ps.trace_diagnostics({"steps": [0]}, target)
    with pytest.raises(ValueError, match=r"reference draws of shape \(m, 2\)"):
        ps.trace_diagnostics(runs["SVGD"], target, reference=np.zeros((10, 3)))
    with pytest.raises(ValueError, match="reference_size"):
        ps.trace_diagnostics(runs["SVGD"], target, reference_size=1)
    with pytest.raises(ValueError, match="empty trace"):
        ps.trace_diagnostics(ps.Trace(), target)


def test_diagnostic_curves_draw_the_series(mixture2d_runs, tmp_path):
    target, runs = mixture2d_runs
    fig = ps.plotting.plot_diagnostics(runs, target)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:2] == ["KSD (IMQ kernel, h = 1)", "MMD to target draws"] and len(titles) == 4
    ksd_ax = fig.axes[0]
    assert [line.get_label() for line in ksd_ax.lines] == ["SVGD", "SGLD"]
    series = ps.trace_diagnostics(runs["SGLD"], target)
    np.testing.assert_allclose(ksd_ax.lines[1].get_ydata(), series["ksd"])
    assert ksd_ax.get_yscale() == "log"
    # SGLD records no bandwidth: the bandwidth panel has the SVGD line only, from step 5 (NaN at 0)
    bandwidth_ax = fig.axes[titles.index("bandwidth h")]
    (line,) = bandwidth_ax.lines
    np.testing.assert_array_equal(line.get_xdata(), runs["SVGD"].steps[1:])
    save(fig, tmp_path)


def test_diagnostic_curves_on_given_axes_and_bad_keys(mixture2d_runs):
    target, runs = mixture2d_runs
    fig, axes = plt.subplots(1, 2)
    assert ps.plotting.plot_diagnostics(runs["SVGD"], target, keys=["update_norm", "ksd"], axes=axes) is fig
    assert axes[0].get_title() == "update norm"
    with pytest.raises(ValueError, match="1 axes"):
        ps.plotting.plot_diagnostics(runs["SVGD"], target, keys=["ksd"], axes=axes)
    with pytest.raises(ValueError, match="not available"):
        ps.plotting.plot_diagnostics(runs["SVGD"], target, keys=["energy"])
    with pytest.raises(TypeError, match="mapping name -> Trace"):
        ps.plotting.plot_diagnostics([runs["SVGD"]], target)


def test_plot_trace_keeps_its_contract(mixture2d_runs, tmp_path):
    _, runs = mixture2d_runs
    fig = ps.plotting.plot_trace(runs["SVGD"])
    assert [ax.get_title() for ax in fig.axes] == ["update norm", "bandwidth h"]
    save(fig, tmp_path)
    with pytest.raises(ValueError, match="none of the requested series"):
        ps.plotting.plot_trace(runs["SGLD"], keys=("bandwidth",), metrics=False)


def test_methods_side_by_side(mixture2d_runs, tmp_path):
    target, runs = mixture2d_runs
    fig = ps.plotting.plot_methods(runs, target, title="both")
    assert len(fig.axes) == 4  # two particle panels, KSD and MMD
    assert [ax.get_title() for ax in fig.axes[:2]] == ["SVGD: step 30", "SGLD: step 30"]
    for ax, trace in zip(fig.axes[:2], runs.values()):
        scatter = next(c for c in ax.collections if len(c.get_offsets()) == 24)
        np.testing.assert_array_equal(np.asarray(scatter.get_offsets()), trace.particles[-1])
    save(fig, tmp_path)
    assert len(ps.plotting.plot_methods(runs, target, curves=[]).axes) == 2
    assert len(ps.plotting.plot_methods(runs, target, curves=["bandwidth"]).axes) == 3


def test_trace_round_trips_through_npz(mixture2d_runs, tmp_path):
    _, runs = mixture2d_runs
    trace = runs["SVGD"]
    trace.save(tmp_path / "t.npz")
    back = ps.Trace.load(tmp_path / "t.npz")
    assert back.steps == trace.steps and back.seconds == pytest.approx(trace.seconds)
    np.testing.assert_array_equal(back.info["bandwidth"], trace.info["bandwidth"])
    np.testing.assert_array_equal(np.stack(back.particles), np.stack(trace.particles))
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="'steps'"):
        ps.Trace.load(tmp_path / "bad.npz")


# --- animations --------------------------------------------------------------------------------------

class _GifInfo:
    def __init__(self, image):
        self.format, self.n_frames, self.size, self.info = image.format, image.n_frames, image.size, dict(image.info)


def _frames(path):
    """Facts of a GIF (format, n_frames, size, info) and its frames as RGB arrays."""
    with Image.open(path) as image:
        facts = _GifInfo(image)
        frames = []
        for k in range(image.n_frames):
            image.seek(k)
            frames.append(np.asarray(image.convert("RGB"), dtype=np.int16))
    return facts, frames


def test_animation_gif_has_one_frame_per_snapshot(mixture2d_runs, tmp_path):
    target, runs = mixture2d_runs
    calls = []
    path = ps.plotting.animate_particles(runs, target, tmp_path / "a.gif", fps=5, dpi=DPI,
                                         progress_callback=lambda i, n: calls.append((i, n)))
    assert path == tmp_path / "a.gif"
    image, frames = _frames(path)
    assert image.format == "GIF" and image.n_frames == 7  # steps 0, 5, ..., 30
    assert abs(image.size[0] - 2 * 3.6 * DPI) <= 1 and abs(image.size[1] - 3.2 * DPI) <= 1
    for frame in frames:
        assert frame.std() > 1.0 and _colours(frame) > 2
    assert all(np.any(a != b) for a, b in zip(frames, frames[1:]))  # the particles move
    assert calls == [(i, 7) for i in range(7)]
    assert image.info.get("duration") == 200  # 5 frames per second


def test_animation_1d_and_max_frames(tmp_path):
    target = ps.get_target("mixture1d")
    trace = _run(target, "svgd", n=15, steps=40, every=2)
    assert len(trace.steps) == 21
    path = ps.plotting.animate_particles(trace, target, tmp_path / "one.gif", dpi=40, max_frames=6, title="x")
    image, frames = _frames(path)
    assert image.n_frames == 6 and abs(image.size[0] - 3.6 * 40) <= 1
    assert frames[0].std() > 1.0


def test_animation_of_a_projection(tmp_path):
    target = ps.get_target("standard-normal", dim=6)
    trace = _run(target, "spos", n=10, steps=6, every=3)
    image, _ = _frames(ps.plotting.animate_particles({"SPOS": trace}, target, tmp_path / "p.gif", dims=(1, 4),
                                                     dpi=40))
    assert image.n_frames == 3


def test_animation_refuses_what_it_cannot_write(mixture2d_runs, tmp_path, monkeypatch):
    target, runs = mixture2d_runs
    with pytest.raises(ValueError, match=r"\.gif or \.mp4"):
        ps.plotting.animate_particles(runs, target, tmp_path / "a.png")
    monkeypatch.setattr(animation.writers, "is_available", lambda name: False)
    with pytest.raises(RuntimeError, match="needs ffmpeg"):
        ps.plotting.animate_particles(runs, target, tmp_path / "a.mp4")
    with pytest.raises(ValueError, match="fps"):
        ps.plotting.animate_particles(runs, target, tmp_path / "a.gif", fps=0)
    no_particles = ps.run_sampler(ps.sgld(target.score, 0.1), ps.sgld(target.score, 0.1).init(
        target.initial_particles(4, 0)), 2)[1]
    with pytest.raises(ValueError, match="keep_particles=True"):
        ps.plotting.animate_particles(no_particles, target, tmp_path / "a.gif")
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not animation.writers.is_available("ffmpeg"), reason="ffmpeg not installed")
def test_animation_mp4_with_ffmpeg(mixture2d_runs, tmp_path):  # pragma: no cover - needs ffmpeg
    target, runs = mixture2d_runs
    path = ps.plotting.animate_particles(runs, target, tmp_path / "a.mp4", dpi=40)
    assert path.stat().st_size > 1000


def test_swapped_coordinates_swap_the_contours():
    target = ps.get_target("banana", sigma1=2.0, b=0.25)
    x = target.sample(30, seed=0)
    fig, (a, b) = plt.subplots(1, 2)
    ps.plotting.plot_particles(target, x, ax=a)
    ps.plotting.plot_particles(target, x, ax=b, dims=(1, 0))
    np.testing.assert_array_equal(np.asarray(b.collections[-1].get_offsets()), x[:, [1, 0]])
    assert b.get_xlim() == a.get_ylim() and b.get_ylim() == a.get_xlim()
    # every point of the swapped panel's contour lines, swapped back, lies on its level of log p
    from matplotlib.contour import ContourSet

    (lines,) = [c for c in b.collections if isinstance(c, ContourSet) and not c.filled]
    for level, segments in zip(lines.levels, lines.allsegs):
        for seg in segments:
            np.testing.assert_allclose(target.log_prob(seg[:, ::-1]), level, atol=0.05)
