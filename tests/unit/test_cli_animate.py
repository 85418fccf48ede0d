"""``particlesampling animate``: samplers side by side in one GIF, progress on stderr, one-line usage errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import matplotlib  # noqa: E402,F401  (pinned test dependency: imported, never skipped)
from PIL import Image  # noqa: E402

from particlesampling.cli import main  # noqa: E402
from particlesampling.targets import list_targets  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["MPLBACKEND"] = "Agg"
    return env


def _gif(path):
    with Image.open(path) as image:
        frames = []
        for k in range(image.n_frames):
            image.seek(k)
            frames.append(np.asarray(image.convert("RGB"), dtype=np.float64))
        return image.format, image.n_frames, image.size, frames


def test_animate_writes_the_methods_side_by_side(tmp_path, capsys):
    out = tmp_path / "sub" / "anim.gif"
    assert main(["animate", "--target", "mixture2d", "--methods", "svgd,spos,sgld", "--particles", "12",
                 "--steps", "20", "--frames", "5", "--dpi", "30", "--out", str(out)]) == 0
    fmt, n_frames, size, frames = _gif(out)
    assert fmt == "GIF" and n_frames == 5
    assert abs(size[0] - 3 * 3.6 * 30) <= 1 and abs(size[1] - 3.2 * 30) <= 1  # three panels
    assert all(f.std() > 1.0 for f in frames)
    captured = capsys.readouterr()
    assert "sampling SVGD" in captured.err and "sampling SGLD" in captured.err
    assert "rendering frames" in captured.err  # progress while it renders
    assert "(5 frames: SVGD, SPOS, SGLD)" in captured.out


def test_animate_has_at_most_steps_plus_one_frames_and_reads_names_like_get_target(tmp_path, capsys):
    out = tmp_path / "a.gif"
    assert main(["animate", "--target", "MIXTURE1D", "--methods", " SGLD ",
                 "--particles", "6", "--steps", "3", "--frames", "50", "--dpi", "30", "--out", str(out),
                 "--no-progress"]) == 0
    _, n_frames, size, _ = _gif(out)
    assert n_frames == 4 and abs(size[0] - 3.6 * 30) <= 1
    assert capsys.readouterr().err == ""  # --no-progress: silent


def _refused(args, tmp_path, capsys, message):
    out = tmp_path / "never.gif"
    with pytest.raises(SystemExit) as ei:
        main(["animate", "--out", str(out), "--dpi", "30", *args])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("particlesampling animate: error:")
    assert message in err
    assert not out.exists()
    return err


@pytest.mark.parametrize("args, message", [
    (["--target", "nope"], "unknown target 'nope'"),
    (["--methods", "svgd,hmc"], "unknown sampler 'hmc'"),
    (["--methods", ","], "--methods: expected comma-separated names"),
    (["--methods", "svgd,svgd"], "expected distinct names"),
    (["--particles", "0"], "--particles: expected >= 1, received 0"),
    (["--steps", "0"], "--steps: expected >= 1, received 0"),
    (["--frames", "0"], "--frames: expected >= 1, received 0"),
    (["--fps", "0"], "--fps: expected >= 1, received 0"),
    (["--step-size", "-1"], "--step-size: expected a positive number"),
    (["--particles", "x"], "--particles: expected an integer >= 1, received 'x'"),
    (["--dpi", "5"], "--dpi: expected >= 10, received 5"),
    (["--seed", "-1"], "--seed: expected >= 0, received -1"),
    (["--beta", "0"], "--beta: expected a positive number, received '0'"),
    (["--methods", "svgd,sgld", "--beta", "2"], "--beta: does not apply to svgd, sgld (it applies to spos"),
    (["--out", "a.png"], "--out: expected an output file ending in .gif or .mp4"),
])
def test_animate_bad_arguments_are_one_line_errors(tmp_path, capsys, args, message):
    err = _refused(args, tmp_path, capsys, message)
    if "target" in message:
        assert all(name in err for name, _ in list_targets())


def test_animate_refuses_an_unknown_format_and_mp4_without_ffmpeg(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as ei:
        main(["animate", "--out", str(tmp_path / "a.png")])
    assert ei.value.code == 2 and ".gif or .mp4" in capsys.readouterr().err
    from matplotlib import animation

    monkeypatch.setattr(animation.writers, "is_available", lambda name: False)
    with pytest.raises(SystemExit) as ei:
        main(["animate", "--out", str(tmp_path / "a.mp4")])
    err = capsys.readouterr().err
    assert ei.value.code == 2 and len(err.splitlines()) == 1 and "needs ffmpeg" in err
    assert not list(tmp_path.iterdir())


def test_animate_as_a_user_runs_it(tmp_path):
    """The console entry point: progress on stderr while it renders, no traceback on a bad argument."""
    out = tmp_path / "m.gif"
    proc = subprocess.run([sys.executable, "-m", "particlesampling", "animate", "--target", "ring", "--methods",
                           "svgd,sgld", "--particles", "8", "--steps", "6", "--frames", "3", "--dpi", "30",
                           "--out", str(out)], capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "rendering frames" in proc.stderr and "3/3" in proc.stderr
    assert _gif(out)[1] == 3
    bad = subprocess.run([sys.executable, "-m", "particlesampling", "animate", "--methods", "nuts", "--out",
                          str(tmp_path / "x.gif")], capture_output=True, text=True, env=_env(), cwd=tmp_path,
                         timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_animate_progress_without_tqdm(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # tqdm is optional: plain lines instead of a bar
    assert main(["animate", "--methods", "sgld", "--particles", "5", "--steps", "8", "--frames", "4", "--dpi", "30",
                 "--out", str(tmp_path / "a.gif")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == "rendering frames: 4/4" and "rendering frames: 1/4" in err


def test_the_bad_value_table_covers_every_animate_option():
    """Every value-taking option of ``animate`` has a bad-value case above (read from the parser)."""
    import argparse

    from particlesampling.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["animate"]
    options = {s for a in sub._actions if a.nargs != 0 for s in a.option_strings}
    cases = test_animate_bad_arguments_are_one_line_errors.pytestmark[0].args[1]
    assert options == {message.split(":")[0] for _, message in cases if message.startswith("--")} | {"--target"}
