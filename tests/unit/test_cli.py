"""Command-line interface: ``python -m particlesampling targets`` and ``... sample``."""

from __future__ import annotations

import argparse
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


BAD_SAMPLE = [
    # (arguments, the option named, the value received as printed, what is valid)
    (["--target", "nope"], "--target", "'nope'", "mixture2d"),
    (["--method", "hmc"], "--method", "'hmc'", "svgd, spos, sgld"),
    (["--particles", "0"], "--particles", "received 0", "expected >= 1"),
    (["--particles", "many"], "--particles", "'many'", "an integer >= 1"),
    (["--steps", "0"], "--steps", "received 0", "expected >= 1"),
    (["--steps", "-3"], "--steps", "received -3", "expected >= 1"),
    (["--steps", "1.5"], "--steps", "'1.5'", "an integer >= 1"),
    (["--seed", "-1"], "--seed", "received -1", "expected >= 0"),
    (["--backend", "jax"], "--backend", "'jax'", "numpy, torch"),
    (["--device", "cuda"], "--device", "'cuda'", "--backend torch only"),
    (["--backend", "torch", "--device", "cuda:99"], "--device", "'cuda:99'", "expected one of cpu"),
    (["--backend", "torch", "--device", "bogus"], "--device", "'bogus'", "available here (cpu"),
    (["--dtype", "float16"], "--dtype", "'float16'", "float32, float64"),
    (["--kernel", "gauss"], "--kernel", "'gauss'", "rbf, imq, linear, rff"),
    (["--bandwidth", "bogus"], "--bandwidth", "'bogus'", "liu_wang, an2020, blackjax, numpyro, pyro, maxksd"),
    (["--bandwidth", "-1"], "--bandwidth", "'-1'", "or a positive number h"),
    (["--bandwidth", "nan"], "--bandwidth", "'nan'", "or a positive number h"),
    (["--step-size", "-1"], "--step-size", "'-1'", "a positive number"),
    (["--step-size", "inf"], "--step-size", "'inf'", "a positive number"),
    (["--step-rule", "sgd"], "--step-rule", "'sgd'", "constant, adagrad_momentum, adam"),
    (["--method", "spos", "--beta", "0"], "--beta", "'0'", "a positive number"),
    (["--batch-size", "0"], "--batch-size", "received 0", "expected >= 2"),
    (["--batch-size", "50", "--particles", "10"], "--batch-size", "received 50", "2 <= B <= --particles (10)"),
    (["--trace-every", "0"], "--trace-every", "received 0", "expected >= 1"),
    (["--out", "FILE"], "--out", "FILE", "expected a directory"),
    # options that do not apply to the chosen sampler or kernel
    (["--method", "sgld", "--kernel", "imq"], "--kernel", "'imq'", "applies to svgd, spos"),
    (["--method", "sgld", "--bandwidth", "an2020"], "--bandwidth", "'an2020'", "applies to svgd, spos"),
    (["--method", "sgld", "--batch-size", "4"], "--batch-size", "received 4", "applies to svgd, spos"),
    (["--method", "svgd", "--beta", "2"], "--beta", "2.0", "applies to spos"),
    (["--kernel", "linear", "--bandwidth", "2"], "--bandwidth", "2.0", "the linear kernel has no bandwidth"),
    # a combination the sampler itself refuses (annealed SVGD scales the scores the bandwidth would read)
    (["--method", "annealed_svgd", "--bandwidth", "maxksd"], "--method", "'maxksd'", "expected a median"),
]


def _refusal(capsys, argv):
    with pytest.raises(SystemExit) as ei:
        main(argv)
    return ei.value.code, capsys.readouterr().err


@pytest.mark.parametrize("args, option, received, valid", BAD_SAMPLE, ids=[" ".join(c[0]) for c in BAD_SAMPLE])
def test_every_bad_sample_argument_is_one_line_naming_option_value_and_valid(tmp_path, capsys, args, option,
                                                                             received, valid):
    (tmp_path / "FILE").write_text("not a directory")
    args = [str(tmp_path / "FILE") if a == "FILE" else a for a in args]
    out = tmp_path / "o"
    code, err = _refusal(capsys, ["sample", "--target", "gaussian", "--particles", "12", "--steps", "2", *args,
                                  "--out", str(out)] if "--out" not in args else
                         ["sample", "--target", "gaussian", "--particles", "12", "--steps", "2", *args])
    assert code == 2
    assert len(err.splitlines()) == 1, err
    line = err.splitlines()[0]
    assert line.startswith(f"particlesampling sample: error: argument {option}"), line
    assert received in line and valid in line, line
    assert "usage:" not in err and "Traceback" not in err
    assert not out.exists()


def _options(command: str) -> set:
    """The value-taking options of a subcommand, read from the parser itself."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {s for a in sub._actions if a.nargs != 0 for s in a.option_strings}


def test_the_bad_value_table_covers_every_sample_option():
    assert _options("sample") == {case[1] for case in BAD_SAMPLE}


def test_method_choices_are_the_sampler_registry(capsys):
    from particlesampling.samplers import SAMPLERS

    code, err = _refusal(capsys, ["sample", "--method", "nope"])
    assert code == 2 and all(name in err for name in SAMPLERS)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["sample"]
    assert next(a for a in sub._actions if "--method" in a.option_strings).metavar == "{" + ",".join(SAMPLERS) + "}"


@pytest.mark.parametrize("args", [["sample", "--bandwidth", "bogus"], ["sample", "--method", "hmc"],
                                  ["sample", "--device", "cuda"], ["sample", "--step-size", "-1"], ["frobnicate"],
                                  []])
def test_parser_errors_are_one_line_without_usage(args, capsys):
    code, err = _refusal(capsys, args)
    assert code == 2 and len(err.splitlines()) == 1 and "usage:" not in err


def test_bad_arguments_as_a_user_meets_them(tmp_path):
    """The console script: one line, exit status 2, no traceback, no usage block, nothing written."""
    for args in (["--bandwidth", "-1"], ["--batch-size", "0"], ["--step-size", "-1"], ["--method", "hmc"],
                 ["--backend", "torch", "--device", "cuda:99"]):
        proc = subprocess.run([sys.executable, "-m", "particlesampling", "sample", *args, "--out",
                               str(tmp_path / "o")], capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "usage:" not in proc.stderr and f"argument {args[-2]}" in proc.stderr
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, present, absent", [
    (["--method", "sgld"], {}, {"kernel", "bandwidth", "beta", "batch_size"}),
    (["--method", "svgd", "--kernel", "linear"], {"kernel": "linear"}, {"bandwidth", "beta", "batch_size"}),
    (["--method", "spos"], {"kernel": "rbf", "bandwidth": "liu_wang", "beta": 1.0}, {"batch_size"}),
    (["--method", "svgd", "--bandwidth", "2", "--batch-size", "4"], {"kernel": "rbf", "bandwidth": 2.0,
                                                                      "batch_size": 4}, {"beta"}),
    (["--method", "annealed_svgd", "--kernel", "imq"], {"kernel": "imq", "bandwidth": "liu_wang"},
     {"beta", "batch_size"}),
])
def test_summary_records_only_the_settings_the_sampler_used(tmp_path, args, present, absent):
    _, summary = _sample(tmp_path, "--target", "gaussian", "--particles", "8", "--steps", "2", "--no-plot", *args)
    for key, value in present.items():
        assert summary[key] == value, key
    assert not absent & set(summary), absent & set(summary)


def test_torch_backend_records_its_device(tmp_path):
    pytest.importorskip("torch")
    _, summary = _sample(tmp_path, "--target", "gaussian", "--particles", "6", "--steps", "1", "--no-plot",
                         "--backend", "torch", "--device", "cpu")
    assert summary["device"] == "cpu" and summary["backend"] == "torch"


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


def test_every_run_reports_its_time_per_step(tmp_path):
    out, summary = _sample(tmp_path, "--target", "gaussian", "--particles", "10", "--steps", "3", "--no-plot")
    assert summary["steps"] == 3 and summary["seconds_per_step"] == pytest.approx(summary["seconds"] / 3)


def test_readme_command_lines_name_exactly_the_parser_options():
    """The README's `sample` and `animate` command lines show every option the parser has, and no other."""
    import re

    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Command line"):text.index("\n## ", text.index("## Command line") + 1)]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    for command in ("sample", "animate"):
        shown = set(re.findall(r"--[a-z][a-z-]*", next(b for b in blocks if f"particlesampling {command}" in b)))
        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
        options = {s for a in sub._actions for s in a.option_strings if s.startswith("--") and s != "--help"}
        assert shown == options, (command, shown ^ options)


@pytest.mark.parametrize("method", sorted(__import__("particlesampling").SAMPLERS))
def test_every_registered_sampler_runs_from_the_cli(tmp_path, method):
    """--method offers the registry: each sampler in it runs end to end, and the summary records the
    options its constructor takes (kernel, bandwidth, beta) and no others."""
    import inspect

    from particlesampling.samplers import SAMPLERS

    _, summary = _sample(tmp_path, "--target", "gaussian", "--method", method, "--particles", "8", "--steps", "3",
                         "--no-plot")
    takes = set(inspect.signature(SAMPLERS[method]).parameters)
    assert summary["method"] == method and np.isfinite(summary["ksd"])
    for option in ("kernel", "bandwidth", "beta"):
        assert (option in summary) == (option in takes), option


def test_device_check_accepts_the_cuda_devices_that_exist(monkeypatch, capsys):
    """With CUDA present (two devices, simulated), cuda and cuda:1 pass and cuda:2 is refused, naming them."""
    torch = pytest.importorskip("torch")
    from particlesampling.cli import _torch_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert _torch_device("cuda") == torch.device("cuda") and _torch_device("cuda:1") == torch.device("cuda:1")
    assert _torch_device("cpu") == torch.device("cpu")
    with pytest.raises(SystemExit) as ei:
        _torch_device("cuda:2")
    err = capsys.readouterr().err
    assert ei.value.code == 2 and "'cuda:2'" in err and "cpu, cuda, cuda:0, cuda:1" in err
