"""Command-line interface: ``particlesampling targets``, ``particlesampling sample ...`` and
``particlesampling animate ...``.

The ``sample`` contract (other tools rely on it) writes to ``--out DIR``:

* ``summary.json``: ``target``, ``method``, ``backend``, ``n_particles``, ``dim``, ``steps``, ``seconds``,
  ``ksd`` (IMQ, V-statistic, h = 1), and where the target has them ``mean_error`` (Euclidean),
  ``cov_error`` (relative Frobenius), ``mode_fractions`` (fraction of particles nearest each mode)
  with ``true_mode_weights``; ``seconds_per_step`` (null for ``--steps 0``); plus the settings;
* ``trace.npz``: the trace recorded every ``--trace-every`` steps (info, KSD, particles);
* ``particles.png``: final particles over the target's density contours (1-D, 2-D) or pairwise
  marginals (higher dimensions).

``animate`` runs several samplers from the same initial particles and writes one animation of them
side by side (``--out FILE.gif``, Pillow; ``FILE.mp4`` needs ffmpeg), printing its progress on
stderr. Bad arguments of either command print one line and exit with status 2, as argparse does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

__all__ = ["main", "build_parser"]

#: step sizes that work with the constant rule for each target (SVGD/SPOS/SGLD alike)
DEFAULT_STEP = {"gaussian": 0.05, "standard-normal": 0.05, "mixture1d": 0.1, "mixture2d": 0.05,
                "banana": 0.02, "ring": 0.02, "blinreg-diabetes": 2e-4, "blr-breast-cancer": 2e-3}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="particlesampling", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("targets", help="list the targets")
    s = sub.add_parser("sample", help="run a sampler on a target and write summary, trace and plot")
    s.add_argument("--target", default="mixture2d", help="target name (see `particlesampling targets`)")
    s.add_argument("--method", default="svgd", choices=["svgd", "spos", "sgld"])
    s.add_argument("--particles", type=int, default=200, help="number of particles n")
    s.add_argument("--steps", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--backend", default="numpy", choices=["numpy", "torch"])
    s.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    s.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    s.add_argument("--kernel", default="rbf", choices=["rbf", "imq", "linear", "rff"])
    s.add_argument("--bandwidth", default="liu_wang",
                   help="median convention name (liu_wang, an2020, blackjax, numpyro, pyro), maxksd, or a number h")
    s.add_argument("--step-size", type=float, default=None, help="learning rate (default: per target)")
    s.add_argument("--step-rule", default="constant", choices=["constant", "adagrad_momentum", "adam"])
    s.add_argument("--beta", type=float, default=1.0, help="SPOS Langevin weight beta")
    s.add_argument("--batch-size", type=int, default=None, help="random-batch SVGD/SPOS batch size")
    s.add_argument("--trace-every", type=int, default=50)
    s.add_argument("--out", default="out/sample", help="output directory")
    s.add_argument("--no-plot", action="store_true", help="skip particles.png")
    s.add_argument("--progress", action="store_true", help="show a progress bar")
    a = sub.add_parser("animate", help="animate samplers side by side on a target (GIF; MP4 with ffmpeg)")
    a.add_argument("--target", default="mixture2d", help="target name (see `particlesampling targets`)")
    a.add_argument("--methods", default="svgd,spos,sgld", help="comma-separated samplers, drawn left to right")
    a.add_argument("--particles", type=int, default=100, help="number of particles n")
    a.add_argument("--steps", type=int, default=500)
    a.add_argument("--frames", type=int, default=50, help="frames of the animation (at most steps + 1)")
    a.add_argument("--fps", type=int, default=10, help="frames per second")
    a.add_argument("--dpi", type=int, default=80, help="resolution (each panel is 3.6 x 3.2 inches)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--step-size", type=float, default=None, help="constant step size (default: per target)")
    a.add_argument("--beta", type=float, default=1.0, help="SPOS Langevin weight beta")
    a.add_argument("--out", default="out/animation.gif", help="output file: .gif, or .mp4 (needs ffmpeg)")
    a.add_argument("--no-progress", action="store_true", help="do not show progress")
    return p


def _bandwidth_arg(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def _backend(args):
    if args.backend == "numpy":
        return np, getattr(np, args.dtype), None
    try:
        import torch
    except ImportError as exc:
        raise SystemExit("--backend torch needs PyTorch: pip install particlesampling[torch]") from exc
    from ._backend import torch_namespace

    return torch_namespace(), getattr(torch, args.dtype), torch.device(args.device)


def _make_sampler(method: str, target, rule, *, kernel="rbf", bandwidth="liu_wang", batch_size=None, beta=1.0):
    """The sampler ``method`` on ``target`` with the options that method takes."""
    from .samplers import get_sampler

    options = {}
    if method in ("svgd", "spos"):
        options = dict(kernel=kernel, bandwidth=bandwidth, batch_size=batch_size)
    if method == "spos":
        options["beta"] = beta
    return get_sampler(method, target.score, rule, **options)


def _sample(args) -> dict:
    from . import diagnostics
    from .plotting import save_particles_figure
    from ._backend import to_numpy
    from .runner import run_sampler
    from .step_sizes import get_step_rule
    from .targets import get_target

    target = get_target(args.target)
    xp, dtype, device = _backend(args)
    x0 = target.initial_particles(args.particles, args.seed, xp=xp, dtype=dtype, device=device)
    lr = args.step_size if args.step_size is not None else DEFAULT_STEP.get(target.name, 1e-2)
    sampler = _make_sampler(args.method, target, get_step_rule(args.step_rule, lr), kernel=args.kernel,
                            bandwidth=_bandwidth_arg(args.bandwidth), batch_size=args.batch_size, beta=args.beta)

    def ksd_metric(x):
        return diagnostics.ksd(x, target.score(x))

    t0 = time.perf_counter()
    state, trace = run_sampler(sampler, sampler.init(x0, seed=args.seed), args.steps,
                               trace_every=args.trace_every, metrics={"ksd": ksd_metric},
                               keep_particles=True, progress=args.progress or None)
    seconds = time.perf_counter() - t0
    x = state.particles
    final = to_numpy(x).astype(np.float64)
    summary = {
        "target": target.name, "method": args.method, "backend": args.backend,
        "device": str(device) if device is not None else "cpu", "dtype": args.dtype,
        "n_particles": args.particles, "dim": target.dim, "steps": args.steps, "seed": args.seed,
        "seconds": seconds,
        # no per-step time for a run without steps (it would divide by zero or mislead)
        "seconds_per_step": seconds / args.steps if args.steps > 0 else None,
        "kernel": args.kernel, "bandwidth": args.bandwidth, "step_rule": args.step_rule, "step_size": lr,
        "ksd": trace.metrics["ksd"][-1], "ksd_initial": trace.metrics["ksd"][0],
        "ksd_definition": "IMQ kernel (c=1, beta=-1/2, h=1), V-statistic, square root",
    }
    if args.method == "spos":
        summary["beta"] = args.beta
    if getattr(target, "mean", None) is not None:
        summary["mean_error"] = float(diagnostics.mean_error(final, np.asarray(target.mean)))
    if getattr(target, "cov", None) is not None and args.particles > 1:
        summary["cov_error"] = float(diagnostics.cov_error(final, np.asarray(target.cov)))
        summary["cov_error_definition"] = "relative Frobenius ||C_hat - C||_F / ||C||_F"
    if hasattr(target, "mode_fractions_of"):
        summary["mode_fractions"] = [float(w) for w in target.mode_fractions_of(final)]
        summary["true_mode_weights"] = [float(w) for w in target.mode_weights]
    os.makedirs(args.out, exist_ok=True)
    trace.save(os.path.join(args.out, "trace.npz"))
    if not args.no_plot:
        save_particles_figure(os.path.join(args.out, "particles.png"), target, final,
                              title=f"{args.method.upper()} on {target.name}: n={args.particles}, {args.steps} steps")
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=float)
    return summary


def _refuse(command: str, message: str):
    """Refuse a bad argument as argparse does: one line on stderr, exit status 2."""
    sys.stderr.write(f"particlesampling {command}: error: {message}\n")
    raise SystemExit(2)


def _check_target_name(command: str, name: str) -> None:
    from .targets import list_targets

    names = [n for n, _ in list_targets()]
    # the spelling get_target accepts: any case, "_" for "-"
    if name.strip().lower().replace("_", "-") not in names:
        _refuse(command, f"argument --target: unknown target {name!r}; expected one of {', '.join(names)}")


def _check_sample_args(args) -> None:
    """Refuse bad ``sample`` arguments: one line on stderr, exit status 2."""
    _check_target_name("sample", args.target)
    if args.particles < 1:
        _refuse("sample", f"argument --particles: expected >= 1, received {args.particles}")
    if args.steps < 0:
        _refuse("sample", f"argument --steps: expected >= 0, received {args.steps}")
    if args.trace_every < 1:
        _refuse("sample", f"argument --trace-every: expected >= 1, received {args.trace_every}")


def _animate_methods(text: str) -> list:
    """``--methods`` as a list of sampler names; refused (exit 2) unless known and distinct."""
    from .samplers import SAMPLERS

    methods = [m.strip().lower() for m in text.split(",") if m.strip()]
    if not methods:
        _refuse("animate", f"argument --methods: expected comma-separated names among {', '.join(SAMPLERS)}, "
                           f"received {text!r}")
    unknown = [m for m in methods if m not in SAMPLERS]
    if unknown:
        _refuse("animate", f"argument --methods: unknown sampler {unknown[0]!r}; expected names among "
                           f"{', '.join(SAMPLERS)}")
    if len(set(methods)) != len(methods):
        _refuse("animate", f"argument --methods: expected distinct names, received {text!r}")
    return methods


def _check_animate_args(args) -> list:
    """Refuse bad ``animate`` arguments (one line, exit 2) before anything runs; returns the methods."""
    _check_target_name("animate", args.target)
    methods = _animate_methods(args.methods)
    for name, value, least in (("particles", args.particles, 1), ("steps", args.steps, 1),
                               ("frames", args.frames, 1), ("fps", args.fps, 1), ("dpi", args.dpi, 10)):
        if value < least:
            _refuse("animate", f"argument --{name}: expected >= {least}, received {value}")
    if args.step_size is not None and not (math.isfinite(args.step_size) and args.step_size > 0):
        _refuse("animate", f"argument --step-size: expected a positive number, received {args.step_size}")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("particlesampling animate: needs matplotlib: pip install particlesampling[viz]") from None
    from .plotting.animation import check_animation_path

    try:
        check_animation_path(args.out)
    except (ValueError, RuntimeError) as exc:
        _refuse("animate", f"argument --out: {exc}")
    return methods


class _Progress:
    """Progress on stderr: a tqdm bar when tqdm is installed, else a line every 10%."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.total, self.desc, self.enabled, self._shown = total, desc, enabled, -1
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=True)
            except ImportError:  # tqdm is optional
                self._bar = None

    def __call__(self, done: int, total: int | None = None) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(done + 1 - self._bar.n)
            return
        tenth = (10 * (done + 1)) // max(self.total, 1)
        if tenth > self._shown:
            self._shown = tenth
            sys.stderr.write(f"{self.desc}: {done + 1}/{self.total}\n")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _animate(args, methods: list) -> dict:
    from .plotting.animation import animate_particles
    from .runner import run_sampler
    from .step_sizes import constant
    from .targets import get_target

    target = get_target(args.target)
    lr = args.step_size if args.step_size is not None else DEFAULT_STEP.get(target.name, 1e-2)
    x0 = target.initial_particles(args.particles, args.seed)
    trace_every = max(1, args.steps // args.frames)
    traces = {}
    for method in methods:
        sampler = _make_sampler(method, target, constant(lr), beta=args.beta)
        if not args.no_progress:
            sys.stderr.write(f"sampling {method.upper()}: {args.particles} particles, {args.steps} steps\n")
        _, traces[method.upper()] = run_sampler(sampler, sampler.init(x0, seed=args.seed), args.steps,
                                                trace_every=trace_every, keep_particles=True,
                                                progress=False if args.no_progress else None)
    frames = min(args.frames, min(len(t.steps) for t in traces.values()))
    progress = _Progress(frames, "rendering frames", not args.no_progress)
    try:
        path = animate_particles(traces, target, args.out, fps=args.fps, dpi=args.dpi, max_frames=args.frames,
                                 title=f"{target.name}: n = {args.particles}, step size {lr:g}",
                                 progress_callback=progress)
    finally:
        progress.close()
    return {"path": str(path), "frames": frames, "methods": methods, "step_size": lr}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "targets":
        from .targets import list_targets

        width = max(len(n) for n, _ in list_targets())
        for name, desc in list_targets():
            print(f"{name:<{width}}  {desc}")
        return 0
    if args.command == "animate":
        methods = _check_animate_args(args)
        result = _animate(args, methods)
        print(f"{'written':>16}: {result['path']} ({result['frames']} frames: "
              f"{', '.join(m.upper() for m in result['methods'])})")
        return 0
    _check_sample_args(args)
    summary = _sample(args)
    keys = ["target", "method", "backend", "n_particles", "dim", "steps", "seconds", "seconds_per_step",
            "ksd_initial", "ksd", "mean_error", "cov_error", "mode_fractions"]
    for k in keys:
        if summary.get(k) is not None:
            v = summary[k]
            if isinstance(v, float):
                v = f"{v:.4g}" if math.isfinite(v) else str(v)
            print(f"{k:>16}: {v}")
    files = "summary.json, trace.npz" + ("" if args.no_plot else ", particles.png")
    print(f"{'written':>16}: {os.path.join(args.out, '')}{{{files}}}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
