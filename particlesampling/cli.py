"""Command-line interface: ``particlesampling targets`` and ``particlesampling sample ...``.

The ``sample`` contract (other tools rely on it) writes to ``--out DIR``:

* ``summary.json``: ``target``, ``method``, ``backend``, ``n_particles``, ``dim``, ``steps``, ``seconds``,
  ``ksd`` (IMQ, V-statistic, h = 1), and where the target has them ``mean_error`` (Euclidean),
  ``cov_error`` (relative Frobenius), ``mode_fractions`` (fraction of particles nearest each mode)
  with ``true_mode_weights``; ``seconds_per_step`` (null for ``--steps 0``); plus the settings;
* ``trace.npz``: the trace recorded every ``--trace-every`` steps (info, KSD, particles);
* ``particles.png``: final particles over the target's density contours (1-D, 2-D) or marginals.
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


def _sample(args) -> dict:
    from . import diagnostics
    from .plotting import save_particles_figure
    from ._backend import to_numpy
    from .runner import run_sampler
    from .samplers import get_sampler
    from .step_sizes import get_step_rule
    from .targets import get_target

    target = get_target(args.target)
    xp, dtype, device = _backend(args)
    x0 = target.initial_particles(args.particles, args.seed, xp=xp, dtype=dtype, device=device)
    lr = args.step_size if args.step_size is not None else DEFAULT_STEP.get(target.name, 1e-2)
    rule = get_step_rule(args.step_rule, lr)
    options = {}
    if args.method in ("svgd", "spos"):
        options = dict(kernel=args.kernel, bandwidth=_bandwidth_arg(args.bandwidth), batch_size=args.batch_size)
    if args.method == "spos":
        options["beta"] = args.beta
    sampler = get_sampler(args.method, target.score, rule, **options)

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


def _check_sample_args(args) -> None:
    """Refuse bad ``sample`` arguments as argparse does: one line on stderr, exit status 2."""
    from .targets import list_targets

    def refuse(message: str):
        sys.stderr.write(f"particlesampling sample: error: {message}\n")
        raise SystemExit(2)

    names = [name for name, _ in list_targets()]
    # the spelling get_target accepts: any case, "_" for "-"
    if args.target.strip().lower().replace("_", "-") not in names:
        refuse(f"argument --target: unknown target {args.target!r}; expected one of {', '.join(names)}")
    if args.particles < 1:
        refuse(f"argument --particles: expected >= 1, received {args.particles}")
    if args.steps < 0:
        refuse(f"argument --steps: expected >= 0, received {args.steps}")
    if args.trace_every < 1:
        refuse(f"argument --trace-every: expected >= 1, received {args.trace_every}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "targets":
        from .targets import list_targets

        width = max(len(n) for n, _ in list_targets())
        for name, desc in list_targets():
            print(f"{name:<{width}}  {desc}")
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
