"""Sliced SVGD's slices, fixed or optimised, on the variance-collapse case (Ba et al., ICLR 2022): ``N(0, I_d)``
with 50 particles started at exact draws, under two particle step rules. Prints a table and writes
``benchmarks/results/sliced_slices.json``.

    python benchmarks/sliced_slices.py            # d = 50 and 200 (a few minutes on a shared 2-core machine)
    python benchmarks/sliced_slices.py --quick    # d = 5, a few steps, to check that it runs
    python benchmarks/sliced_slices.py --timing   # the cost of one slice update against the direction's

Rules: the comparison page's (``benchmarks/compare_methods.py``: AdaGrad with momentum,
``0.1 / sqrt(1 + k / 10)``, 500 steps) and a constant step of 0.5 (300 steps). Columns: the
dimension-averaged marginal variance (truth 1), the sliced KSD of the final particles at the final
slices (``ps.sliced_ksd``, the objective the ascent climbs), and the smallest ``|g_rr|`` of the final
slices (1 for the identity; the weight of coordinate ``r``'s own repulsion).

``--timing``: per step, the wall time of the slices' ascent (one Adam update on SKSD-g:
``SlicedSVGD.ascend``, the sliced KSD's gradient) against the particles' direction
(``sliced_stein_direction``), both at the same particles, scores and slices, and a whole sampler step
with the ascent against one with fixed slices (``slice_updates=1`` against ``0``, target ``N(0, I_d)``),
all interleaved in one run (median of the repeats), at ``(n, d)`` = (50, 50), (200, 20) and (50, 200); writes
``benchmarks/results/sliced_slices_timing.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import numpy as np

import particlesampling as ps

ROOT = pathlib.Path(__file__).resolve().parents[1]


def rules(quick):
    steps = (5, 5) if quick else (500, 300)
    return {"adagrad_momentum 0.1/sqrt(1+k/10)": (lambda: ps.adagrad_momentum(lambda k: 0.1 / math.sqrt(1.0 + k / 10.0)),
                                                  steps[0]),
            "constant 0.5": (lambda: ps.constant(0.5), steps[1])}


def timing(quick, repeats=None):
    """Rows ``{n, d, ascent_s, direction_s, ratio, step_s, fixed_step_s, step_ratio}``: median seconds per
    call, side by side."""
    from particlesampling.samplers.sliced_svgd import sliced_stein_direction

    sizes = ((10, 5),) if quick else ((50, 50), (200, 20), (50, 200))
    repeats = repeats or (3 if quick else 15)
    rows = []
    for n, d in sizes:
        rng = np.random.default_rng(n * 1000 + d)
        x = rng.standard_normal((n, d))
        s = -x
        sampler = ps.sliced_svgd(lambda z: -z, 0.1)
        fixed = ps.sliced_svgd(lambda z: -z, 0.1, slice_updates=0)
        full, full_fixed = sampler.init(x), fixed.init(x)
        state = full.step_state
        v = state.slices + 0.05 * rng.standard_normal((d, d))  # slices away from the identity, as in a run
        t_asc, t_dir, t_step, t_fixed = [], [], [], []
        for _ in range(repeats):
            t = time.perf_counter()
            sampler.step(full)
            t_step.append(time.perf_counter() - t)
            t = time.perf_counter()
            fixed.step(full_fixed)
            t_fixed.append(time.perf_counter() - t)
            t = time.perf_counter()
            sampler.ascend(x, s, v, state.ascent)
            t_asc.append(time.perf_counter() - t)
            t = time.perf_counter()
            sliced_stein_direction(x, s, v)
            t_dir.append(time.perf_counter() - t)
        a, b = float(np.median(t_asc)), float(np.median(t_dir))
        st, sf = float(np.median(t_step)), float(np.median(t_fixed))
        rows.append({"n": n, "d": d, "repeats": repeats, "ascent_s": a, "direction_s": b, "ratio": a / b,
                     "step_s": st, "fixed_step_s": sf, "step_ratio": st / sf})
        print(f"| {n} | {d} | {1e3 * a:.2f} | {1e3 * b:.2f} | {a / b:.1f} | {1e3 * st:.2f} | {1e3 * sf:.2f} | "
              f"{st / sf:.1f} |", flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="d = 5, 5 steps; writes nothing")
    p.add_argument("--timing", action="store_true", help="time one slice update against the direction")
    args = p.parse_args(argv)
    if args.timing:
        print("| n | d | ascent (ms) | direction (ms) | ascent / direction | step, optimised (ms) | step, fixed (ms) "
              "| step ratio |\n|---|---|---|---|---|---|---|---|")
        rows = timing(args.quick)
        if not args.quick:
            out = ROOT / "benchmarks" / "results" / "sliced_slices_timing.json"
            out.write_text(json.dumps({"command": "python benchmarks/sliced_slices.py --timing", "rows": rows},
                                      indent=1))
        return rows
    n = 50
    rows = []
    for d in ((5,) if args.quick else (50, 200)):
        x0 = np.random.default_rng(7919 * d).standard_normal((n, d))
        for rule_name, (make_rule, steps) in rules(args.quick).items():
            for updates in (0, 1):
                sampler = ps.sliced_svgd(lambda z: -z, make_rule(), slice_updates=updates)
                state, _ = ps.run_sampler(sampler, sampler.init(x0), steps, trace_every=steps, progress=False)
                v = state.step_state.slices
                g = v / np.linalg.norm(v, axis=1, keepdims=True)
                x = state.particles
                rows.append({"d": d, "n": n, "rule": rule_name, "steps": steps,
                             "slices": "optimised (Adam 1e-3, 1 update per step)" if updates else "fixed (identity)",
                             "marginal_variance": float(ps.marginal_variance(x)),
                             "sliced_ksd": float(ps.sliced_ksd(x, -x, v).value),
                             "min_abs_g_rr": float(np.min(np.abs(np.diag(g))))})
                r = rows[-1]
                print(f"| {d} | {rule_name}, {steps} steps | {r['slices']} | {r['marginal_variance']:.3f} | "
                      f"{r['sliced_ksd']:.3f} | {r['min_abs_g_rr']:.3f} |", flush=True)
    if not args.quick:
        out = ROOT / "benchmarks" / "results" / "sliced_slices.json"
        out.write_text(json.dumps({"command": "python benchmarks/sliced_slices.py", "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
