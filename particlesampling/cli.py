"""Command-line interface: ``particlesampling targets``, ``particlesampling sample ...`` and
``particlesampling animate ...``.

The ``sample`` contract (other tools rely on it) writes to ``--out DIR``:

* ``summary.json``: ``target``, ``method``, ``backend``, ``n_particles``, ``dim``, ``steps``, ``seconds``,
  ``ksd`` (IMQ, V-statistic, h = 1), and where the target has them ``mean_error`` (Euclidean),
  ``cov_error`` (relative Frobenius), ``mode_fractions`` (fraction of particles nearest each mode)
  with ``true_mode_weights``; ``seconds_per_step``; plus the settings the sampler used, and only
  those (``kernel`` and ``bandwidth`` where the sampler has a kernel and the kernel a bandwidth,
  ``beta`` for SPOS, ``batch_size`` when given);
* ``trace.npz``: the trace recorded every ``--trace-every`` steps (info, KSD, particles);
* ``particles.png``: final particles over the target's density contours (1-D, 2-D) or pairwise
  marginals (higher dimensions).

``animate`` runs several samplers from the same initial particles and writes one animation of them
side by side (``--out FILE.gif``, Pillow; ``FILE.mp4`` needs ffmpeg), printing its progress on
stderr.

Every argument is checked before anything runs: its type, its range, the names the library knows
(``--method`` lists the sampler registry, ``SAMPLERS``), the device the chosen backend can use here,
and whether the option applies at all (``--kernel`` to a sampler with a kernel, ``--bandwidth`` to a
kernel with one, ``--beta`` to SPOS, ``--device`` to torch). A refusal is one line on stderr naming
the option, what was received and what is valid, with exit status 2: no traceback, no usage block.
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


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (no usage block) and exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        _refuse_line(self.prog, message)


def _refuse_line(prog: str, message: str):
    sys.stderr.write(f"{prog}: error: {message}\n")
    raise SystemExit(2)


def _integer(least: int, what: str = "an integer"):
    """argparse type: an integer ``>= least``; the message names what was received and what is valid."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} >= {least}, received {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected >= {least}, received {value}")
        return value

    return parse


def _choice(names):
    """argparse type: one of ``names`` (any case); the message lists them (the same on every Python)."""
    names = list(names)

    def parse(text: str) -> str:
        key = text.strip().lower()
        if key not in names and key.replace("-", "_") in names:  # adagrad-momentum, annealed-svgd
            key = key.replace("-", "_")
        if key not in names:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(names)}, received {text!r}")
        return key

    return parse


def _positive_number(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, received {text!r}")
    return value


def _target_name(text: str) -> str:
    """argparse type: a target name, read as ``get_target`` reads it (any case, ``_`` for ``-``)."""
    from .targets import list_targets

    names = [n for n, _ in list_targets()]
    key = text.strip().lower().replace("_", "-")
    if key not in names:
        raise argparse.ArgumentTypeError(f"unknown target {text!r}; expected one of {', '.join(names)}")
    return key


def _bandwidth(text: str):
    """argparse type: a median convention's name, ``maxksd``, or a positive number h."""
    from .bandwidths import MEDIAN_CONVENTIONS, get_bandwidth

    valid = f"one of {', '.join(MEDIAN_CONVENTIONS)}, maxksd, or a positive number h"
    try:
        value = float(text)
    except ValueError:
        try:
            get_bandwidth(text)
        except (ValueError, TypeError):
            raise argparse.ArgumentTypeError(f"expected {valid}, received {text!r}") from None
        return text.strip().lower().replace("-", "_")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected {valid}, received {text!r}")
    return value


def _method_names() -> list:
    """The samplers the CLI offers: every name of the registry ``particlesampling.samplers.SAMPLERS``."""
    from .samplers import SAMPLERS

    return list(SAMPLERS)


def _methods(text: str) -> list:
    """argparse type for ``animate --methods``: known, distinct sampler names, in order."""
    names = _method_names()
    methods = [m.strip().lower() for m in text.split(",") if m.strip()]
    if not methods:
        raise argparse.ArgumentTypeError(f"expected comma-separated names among {', '.join(names)}, "
                                         f"received {text!r}")
    unknown = [m for m in methods if m not in names]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown sampler {unknown[0]!r}; expected names among {', '.join(names)}")
    if len(set(methods)) != len(methods):
        raise argparse.ArgumentTypeError(f"expected distinct names, received {text!r}")
    return methods


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``particlesampling``; every value is checked here, one line and status 2 when bad.

    The choices of ``--method``, ``--kernel`` and ``--step-rule`` are the keys of the library's
    registries (``SAMPLERS``, ``KERNEL_NAMES``, the step-rule names), so a sampler added there is
    offered here.
    """
    from .kernels import KERNEL_NAMES
    from .step_sizes import _RULES as STEP_RULES

    p = _Parser(prog="particlesampling", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("targets", help="list the targets")
    s = sub.add_parser("sample", help="run a sampler on a target and write summary, trace and plot")
    s.add_argument("--target", default="mixture2d", type=_target_name,
                   help="target name (see `particlesampling targets`)")
    s.add_argument("--method", default="svgd", type=_choice(_method_names()), metavar="{" + ",".join(_method_names()) + "}")
    s.add_argument("--particles", type=_integer(1), default=200, help="number of particles n")
    s.add_argument("--steps", type=_integer(1), default=1000)
    s.add_argument("--seed", type=_integer(0), default=0)
    s.add_argument("--backend", default="numpy", type=_choice(["numpy", "torch"]), metavar="{numpy,torch}")
    s.add_argument("--device", default=None,
                   help="torch device (cpu, cuda, cuda:1, mps; --backend torch only; default cpu)")
    s.add_argument("--dtype", default="float64", type=_choice(["float32", "float64"]), metavar="{float32,float64}")
    s.add_argument("--kernel", default=None, type=_choice(KERNEL_NAMES), metavar="{" + ",".join(KERNEL_NAMES) + "}",
                   help="Stein kernel (default rbf; samplers with a kernel only)")
    s.add_argument("--bandwidth", default=None, type=_bandwidth,
                   help="median convention name (liu_wang, an2020, blackjax, numpyro, pyro), maxksd, or a number h "
                        "(default liu_wang; kernels with a bandwidth only)")
    s.add_argument("--step-size", type=_positive_number, default=None, help="learning rate (default: per target)")
    s.add_argument("--step-rule", default="constant", type=_choice(STEP_RULES), metavar="{" + ",".join(STEP_RULES) + "}")
    s.add_argument("--beta", type=_positive_number, default=None, help="SPOS Langevin weight beta (default 1)")
    s.add_argument("--batch-size", type=_integer(2), default=None,
                   help="random-batch size, 2 <= B <= n (samplers with random batches only)")
    s.add_argument("--trace-every", type=_integer(1), default=50)
    s.add_argument("--out", default="out/sample", help="output directory")
    s.add_argument("--no-plot", action="store_true", help="skip particles.png")
    s.add_argument("--progress", action="store_true", help="show a progress bar")
    a = sub.add_parser("animate", help="animate samplers side by side on a target (GIF; MP4 with ffmpeg)")
    a.add_argument("--target", default="mixture2d", type=_target_name,
                   help="target name (see `particlesampling targets`)")
    a.add_argument("--methods", default="svgd,spos,sgld", type=_methods,
                   help="comma-separated samplers, drawn left to right")
    a.add_argument("--particles", type=_integer(1), default=100, help="number of particles n")
    a.add_argument("--steps", type=_integer(1), default=500)
    a.add_argument("--frames", type=_integer(1), default=50, help="frames of the animation (at most steps + 1)")
    a.add_argument("--fps", type=_integer(1), default=10, help="frames per second")
    a.add_argument("--dpi", type=_integer(10), default=80, help="resolution (each panel is 3.6 x 3.2 inches)")
    a.add_argument("--seed", type=_integer(0), default=0)
    a.add_argument("--step-size", type=_positive_number, default=None,
                   help="constant step size (default: per target)")
    a.add_argument("--beta", type=_positive_number, default=None, help="SPOS Langevin weight beta (default 1)")
    a.add_argument("--out", default="out/animation.gif", help="output file: .gif, or .mp4 (needs ffmpeg)")
    a.add_argument("--no-progress", action="store_true", help="do not show progress")
    return p


def _parameters(method: str) -> set:
    """The keyword parameters of sampler ``method``'s constructor (which CLI options apply to it)."""
    import inspect

    from .samplers import SAMPLERS

    return set(inspect.signature(SAMPLERS[method]).parameters)


def _default(method: str, name: str):
    """The default of keyword parameter ``name`` of sampler ``method``'s constructor."""
    import inspect

    from .samplers import SAMPLERS

    return inspect.signature(SAMPLERS[method]).parameters[name].default


def _torch_device(text: str):
    """``--device`` as a torch.device that exists on this machine; refused (exit 2) otherwise."""
    import torch

    valid = "cpu"
    if torch.cuda.is_available():
        valid += ", cuda" + "".join(f", cuda:{i}" for i in range(torch.cuda.device_count()))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        valid += ", mps"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        _refuse("sample", f"argument --device: expected a torch device available here ({valid}), received {text!r}")
    if device.type == "cpu":
        return device
    if device.type == "cuda" and torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count():
        return device
    if device.type == "mps" and mps is not None and mps.is_available():
        return device
    _refuse("sample", f"argument --device: {text!r} is not available on this machine; expected one of {valid}")


def _backend(args):
    """(namespace, dtype, device) of the checked arguments."""
    if args.backend == "numpy":
        return np, getattr(np, args.dtype), None
    import torch

    from ._backend import torch_namespace

    return torch_namespace(), getattr(torch, args.dtype), args.device


def _sampler_options(method: str, *, kernel=None, bandwidth=None, batch_size=None, beta=None, steps=None) -> dict:
    """The options that sampler ``method`` takes, among those the CLI offers (read from its signature)."""
    takes = _parameters(method)
    options = {"kernel": kernel, "bandwidth": bandwidth, "batch_size": batch_size, "beta": beta}
    options = {k: v for k, v in options.items() if k in takes and v is not None}
    if "num_steps" in takes and steps is not None:  # a schedule over the run (annealed SVGD)
        options["num_steps"] = steps
    return options


def _make_sampler(method: str, target, rule, **given):
    """The sampler ``method`` on ``target`` with the options it takes (``given`` as for :func:`_sampler_options`).

    The matrix-kernel samplers whose preconditioner is the Hessian get the Hessian-vector products of the
    target's log-density by central differences of its analytic score (:func:`_score_difference_hvp`):
    the targets have no Hessians, and NumPy no automatic differentiation.
    """
    from .samplers import get_sampler

    options = _sampler_options(method, **given)
    if "hvp_fn" in _parameters(method) and options.get("preconditioner", _default(method, "preconditioner")) == \
            "hessian":  # the samplers refuse a hvp_fn their preconditioner does not use
        options["hvp_fn"] = _score_difference_hvp(target.score)
    return get_sampler(method, target.score, rule, **options)


def _score_difference_hvp(score_fn):
    """``hvp(points, vectors)``, row ``i`` ``grad^2 log p(points[i]) vectors[i]``, as
    ``(s(z + t v) - s(z - t v)) / (2 t)`` with ``t = eps^(1/3) (1 + max_a |z_a|) / max(|v|, tiny)`` per row
    (``eps`` the dtype's; the step that balances the ``O(t^2)`` truncation against rounding): two score
    evaluations per product, relative error about ``eps^(2/3)``."""
    from ._backend import device_of, finfo_eps, namespace

    def hvp(points, vectors):
        xp = namespace(points, vectors)
        eps = finfo_eps(xp, points)
        size = xp.max(xp.abs(points), axis=1, keepdims=True) + 1.0
        norm = xp.sqrt(xp.sum(vectors * vectors, axis=1, keepdims=True))
        tiny = xp.asarray(1e-30, dtype=points.dtype, device=device_of(points))
        t = eps ** (1.0 / 3.0) * size / xp.maximum(norm, tiny)
        return (score_fn(points + t * vectors) - score_fn(points - t * vectors)) / (2.0 * t)

    return hvp


def _sample(args) -> dict:
    from . import diagnostics
    from ._backend import to_numpy
    from .runner import run_sampler
    from .step_sizes import get_step_rule
    from .targets import get_target

    target = get_target(args.target)
    xp, dtype, device = _backend(args)
    x0 = target.initial_particles(args.particles, args.seed, xp=xp, dtype=dtype, device=device)
    lr = args.step_size if args.step_size is not None else DEFAULT_STEP.get(target.name, 1e-2)
    options = dict(kernel=args.kernel, bandwidth=args.bandwidth, batch_size=args.batch_size, beta=args.beta,
                   steps=args.steps)
    sampler = _make_sampler(args.method, target, get_step_rule(args.step_rule, lr), **options)

    def ksd_metric(x):
        return diagnostics.ksd(x, target.score(x))

    t0 = time.perf_counter()
    state, trace = run_sampler(sampler, sampler.init(x0, seed=args.seed), args.steps,
                               trace_every=args.trace_every, metrics={"ksd": ksd_metric},
                               keep_particles=True, progress=args.progress or None)
    seconds = time.perf_counter() - t0
    final = to_numpy(state.particles).astype(np.float64)
    summary = {
        "target": target.name, "method": args.method, "backend": args.backend,
        "device": str(device) if device is not None else "cpu", "dtype": args.dtype,
        "n_particles": args.particles, "dim": target.dim, "steps": args.steps, "seed": args.seed,
        "seconds": seconds, "seconds_per_step": seconds / args.steps,
        "step_rule": args.step_rule, "step_size": lr,
        "ksd": trace.metrics["ksd"][-1], "ksd_initial": trace.metrics["ksd"][0],
        "ksd_definition": "IMQ kernel (c=1, beta=-1/2, h=1), V-statistic, square root",
    }
    # the settings the sampler used, and only those (SGLD has no kernel; the linear kernel no bandwidth)
    summary.update({k: v for k, v in _sampler_options(args.method, **options).items() if k != "num_steps"})
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
        from .plotting import save_particles_figure

        save_particles_figure(os.path.join(args.out, "particles.png"), target, final,
                              title=f"{args.method.upper()} on {target.name}: n={args.particles}, {args.steps} steps")
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=float)
    return summary


def _refuse(command: str, message: str):
    """Refuse a bad argument as argparse does: one line on stderr, exit status 2."""
    _refuse_line(f"particlesampling {command}", message)


def _takers(option: str) -> list:
    return [m for m in _method_names() if option in _parameters(m)]


def _check_applies(command: str, flag: str, option: str, value, methods: list) -> None:
    """Refuse an option given explicitly to samplers none of which takes it."""
    if value is not None and not any(option in _parameters(m) for m in methods):
        _refuse(command, f"argument {flag}: does not apply to {', '.join(methods)} (it applies to "
                         f"{', '.join(_takers(option)) or 'no sampler'}), received {value!r}")


def _check_matplotlib(command: str, flag: str) -> None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        _refuse(command, f"the pictures need matplotlib (pip install particlesampling[viz]); {flag}")


def _check_sample_args(args) -> None:
    """Refuse combinations of ``sample`` arguments before anything runs (one line, exit status 2), and
    resolve the backend's device and the defaults of the options that apply."""
    from .kernels import get_kernel

    methods = [args.method]
    for flag, option, value in (("--kernel", "kernel", args.kernel), ("--bandwidth", "bandwidth", args.bandwidth),
                                ("--batch-size", "batch_size", args.batch_size), ("--beta", "beta", args.beta)):
        _check_applies("sample", flag, option, value, methods)
    takes = _parameters(args.method)
    if "kernel" in takes and args.kernel is None:
        args.kernel = "rbf"
    if "bandwidth" in takes:
        if args.kernel is not None and not get_kernel(args.kernel).uses_bandwidth:
            if args.bandwidth is not None:
                _refuse("sample", f"argument --bandwidth: the {args.kernel} kernel has no bandwidth, "
                                  f"received {args.bandwidth!r}")
        elif args.bandwidth is None:
            args.bandwidth = "liu_wang"
    if "beta" in takes and args.beta is None:
        args.beta = 1.0
    if args.batch_size is not None and args.batch_size > args.particles:
        _refuse("sample", f"argument --batch-size: expected 2 <= B <= --particles ({args.particles}), "
                          f"received {args.batch_size}")
    if args.backend == "torch":
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            _refuse("sample", "argument --backend: torch is not installed (pip install particlesampling[torch]); "
                              "expected numpy")
        args.device = _torch_device("cpu" if args.device is None else args.device)
    elif args.device is not None:
        _refuse("sample", f"argument --device: applies to --backend torch only (numpy runs on the CPU), "
                          f"received {args.device!r}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        _refuse("sample", f"argument --out: expected a directory, received {args.out!r}, an existing file")
    if not args.no_plot:
        _check_matplotlib("sample", "pass --no-plot to skip particles.png")
    _check_construction("sample", args.method, args.target, **_sampler_options(
        args.method, kernel=args.kernel, bandwidth=args.bandwidth, batch_size=args.batch_size, beta=args.beta,
        steps=args.steps))


def _check_construction(command: str, method: str, target_name: str, **options) -> None:
    """Build the sampler once (nothing runs): what the library refuses is refused here, in one line."""
    from .samplers import get_sampler
    from .targets import get_target

    try:
        get_sampler(method, get_target(target_name).score, 1e-2, **options)
    except (ValueError, TypeError) as exc:
        given = ", ".join(f"{k}={v!r}" for k, v in options.items())
        _refuse(command, f"argument --method: {method} with {given or 'its defaults'} refused: {exc}")


def _check_animate_args(args) -> list:
    """Refuse bad ``animate`` arguments (one line, exit 2) before anything runs; returns the methods."""
    methods = args.methods
    _check_applies("animate", "--beta", "beta", args.beta, methods)
    for method in methods:
        _check_construction("animate", method, args.target,
                            **_sampler_options(method, beta=args.beta, steps=args.steps))
    _check_matplotlib("animate", "install it to write an animation")
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
        sampler = _make_sampler(method, target, constant(lr), beta=args.beta, steps=args.steps)
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
