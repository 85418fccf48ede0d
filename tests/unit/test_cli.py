"""Command-line interface: ``python -m particlesampling targets`` and ``... sample``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from particlesampling import diagnostics
from particlesampling.cli import build_parser, main
from particlesampling.targets import get_target, list_targets
from tests.unit.test_run import _libs

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_TARGETS = ["gaussian", "standard-normal", "mixture1d", "mixture2d", "banana", "ring", "blinreg-diabetes",
               "blr-breast-cancer"]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["MPLBACKEND"] = "Agg"
    return env


def test_targets_subcommand_subprocess():
    out = subprocess.run([sys.executable, "-m", "particlesampling", "targets"], capture_output=True, text=True,
                         env=_env(), cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.strip().splitlines()]
    assert names == [n for n, _ in list_targets()]
    assert set(ALL_TARGETS) <= set(names)
    for name, desc in list_targets():
        assert desc in out.stdout


def test_targets_subcommand_in_process(capsys):
    assert main(["targets"]) == 0
    text = capsys.readouterr().out
    for name in ALL_TARGETS:
        assert any(line.split()[0] == name for line in text.splitlines())


def _check_png(path: Path):
    """Check the PNG signature, header and end chunk; return (width, height)."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    # IHDR chunk: width and height are positive big-endian ints
    assert data[12:16] == b"IHDR"
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert w > 100 and h > 100
    assert data[-8:-4] == b"IEND"
    return w, h


def _sample(tmp_path, *args):
    out = tmp_path / "out"
    rc = main(["sample", *args, "--out", str(out)])
    assert rc == 0
    with open(out / "summary.json") as f:
        summary = json.load(f)
    return out, summary


REQUIRED = {"target", "method", "backend", "n_particles", "dim", "steps", "seconds", "ksd"}


@pytest.mark.parametrize("backend", _libs())
@pytest.mark.parametrize("method", ["svgd", "spos", "sgld"])
def test_sample_writes_summary_trace_plot(tmp_path, capsys, backend, method):
    n, steps = 20, 12
    out, summary = _sample(tmp_path, "--target", "gaussian", "--method", method, "--backend", backend,
                           "--particles", str(n), "--steps", str(steps), "--trace-every", "5", "--seed", "3")
    assert REQUIRED <= set(summary)
    assert summary["target"] == "gaussian" and summary["method"] == method and summary["backend"] == backend
    assert summary["n_particles"] == n and summary["dim"] == 2 and summary["steps"] == steps
    assert summary["seconds"] > 0
    assert {"mean_error", "cov_error"} <= set(summary)
    assert "mode_fractions" not in summary

    with np.load(out / "trace.npz") as f:
        np.testing.assert_array_equal(f["steps"], [0, 5, 10, 12])
        particles = f["particles"]
        ksd_trace = f["metric_ksd"]
    assert particles.shape == (4, n, 2)
    final = particles[-1]
    t = get_target("gaussian")
    # independent recomputation of the summary's numbers from the final particles
    np.testing.assert_allclose(summary["mean_error"], np.linalg.norm(final.mean(0) - t.mean), rtol=1e-10)
    c = np.cov(final, rowvar=False, ddof=1)
    np.testing.assert_allclose(summary["cov_error"], np.linalg.norm(c - t.cov) / np.linalg.norm(t.cov), rtol=1e-10)
    np.testing.assert_allclose(summary["ksd"], ksd_trace[-1], rtol=1e-12)
    np.testing.assert_allclose(summary["ksd"], float(diagnostics.ksd(final, t.score(final))), rtol=1e-10)
    # initial particles are the target's documented initial particles for the seed
    np.testing.assert_allclose(particles[0], t.initial_particles(n, 3), rtol=1e-15)
    _check_png(out / "particles.png")
    printed = capsys.readouterr().out
    assert "summary.json" in printed and "mean_error" in printed


def test_sample_mixture_reports_mode_fractions(tmp_path):
    out, summary = _sample(tmp_path, "--target", "mixture1d", "--method", "svgd", "--particles", "15",
                           "--steps", "5", "--trace-every", "5")
    t = get_target("mixture1d")
    assert summary["dim"] == 1
    np.testing.assert_allclose(summary["true_mode_weights"], [1 / 3, 2 / 3], rtol=1e-12)
    with np.load(out / "trace.npz") as f:
        final = f["particles"][-1]
    np.testing.assert_allclose(summary["mode_fractions"], t.mode_fractions_of(final))
    assert abs(sum(summary["mode_fractions"]) - 1.0) < 1e-12
    _check_png(out / "particles.png")


def test_sample_high_dimensional_target_draws_marginals(tmp_path):
    out, summary = _sample(tmp_path, "--target", "blinreg-diabetes", "--method", "svgd", "--particles", "10",
                           "--steps", "3", "--trace-every", "1", "--step-rule", "adagrad_momentum",
                           "--step-size", "0.01")
    assert summary["dim"] == 11 and summary["step_rule"] == "adagrad_momentum" and summary["step_size"] == 0.01
    assert np.isfinite(summary["mean_error"]) and np.isfinite(summary["cov_error"])
    w, h = _check_png(out / "particles.png")
    # pairwise marginals of the first 4 of the 11 coordinates (a 4 x 4 grid), not a single 2-D panel
    w2, h2 = _check_png(_sample(tmp_path / "b", "--target", "gaussian", "--particles", "5", "--steps", "1")[0]
                        / "particles.png")
    assert w > 1.5 * w2 and h > h2


def test_sample_float32_and_options(tmp_path):
    out, summary = _sample(tmp_path, "--target", "banana", "--method", "spos", "--particles", "12", "--steps", "4",
                           "--dtype", "float32", "--kernel", "imq", "--bandwidth", "2.0", "--beta", "2.0",
                           "--batch-size", "4", "--no-plot")
    assert summary["dtype"] == "float32" and summary["beta"] == 2.0 and summary["kernel"] == "imq"
    assert not (out / "particles.png").exists()
    assert (out / "trace.npz").exists()
    with np.load(out / "trace.npz") as f:
        # bandwidth fixed at 2.0 via the CLI
        # row 0 is the starting state (no step info yet: NaN); every step after used h = 2
        assert np.isnan(f["info_bandwidth"][0])
        np.testing.assert_allclose(f["info_bandwidth"][1:], 2.0)


def test_sample_subprocess_writes_outputs(tmp_path):
    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, "-m", "particlesampling", "sample", "--target", "ring", "--particles", "10",
                           "--steps", "3", "--out", str(out)], capture_output=True, text=True, env=_env(), cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target"] == "ring" and summary["steps"] == 3
    _check_png(out / "particles.png")


@pytest.mark.parametrize("args, message", [(["--particles", "0"], "--particles: expected >= 1, received 0"),
                                           (["--steps", "-1"], "--steps: expected >= 0, received -1"),
                                           (["--trace-every", "0"], "--trace-every: expected >= 1, received 0")])
def test_sample_bad_sizes_exit(tmp_path, args, message, capsys):
    with pytest.raises(SystemExit) as ei:
        main(["sample", "--target", "gaussian", *args, "--out", str(tmp_path / "o"), "--no-plot"])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args", [["sample", "--method", "hmc"], ["sample", "--backend", "jax"], ["frobnicate"], []])
def test_parser_rejects_bad_choices(args, capsys):
    with pytest.raises(SystemExit) as ei:
        build_parser().parse_args(args)
    assert ei.value.code == 2


def test_unknown_target_is_a_one_line_usage_error(tmp_path):
    """As a user meets it: the console script prints one error line naming the valid targets, no
    traceback, and exits with status 2 like argparse's own argument errors."""
    proc = subprocess.run([sys.executable, "-m", "particlesampling", "sample", "--target", "nope",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, env=_env(), cwd=REPO,
                          timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "unknown target 'nope'" in lines[0]
    for name, _ in list_targets():
        assert name in lines[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("spelling", ["standard_normal", "Mixture2D", " gaussian "])
def test_target_names_are_read_as_get_target_reads_them(tmp_path, spelling):
    out = tmp_path / "o"
    assert main(["sample", "--target", spelling, "--particles", "5", "--steps", "2", "--out", str(out),
                 "--no-plot"]) == 0
    assert json.loads((out / "summary.json").read_text())["target"] == spelling.strip().lower().replace("_", "-")


def test_zero_steps_reports_no_per_step_time(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["sample", "--target", "gaussian", "--particles", "10", "--steps", "0", "--out", str(out),
                 "--no-plot"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 0 and summary["seconds_per_step"] is None
    assert summary["ksd"] == summary["ksd_initial"]
    assert "seconds_per_step" not in capsys.readouterr().out
