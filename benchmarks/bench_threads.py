"""Time per SVGD step with torch's default intra-op threads against one thread, side by side.

For each problem size the two settings alternate (default, 1, 1, default, ...) in one process, so
load from other jobs hits both equally; the table gives the median wall time per step of each and
their ratio, plus the machine's load average at the start, because the effect depends on it: with
idle cores the threads help large problems, with busy cores OpenMP's spin-waiting makes small steps
many times slower.

Usage::

    python benchmarks/bench_threads.py                 # sizes below, 7 alternations of 10 steps
    python benchmarks/bench_threads.py --pairs 3 --steps 5

Writes ``benchmarks/results/threads.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from particlesampling import svgd  # noqa: E402

SIZES = ((200, 2), (1000, 2), (1000, 100), (2000, 100))


def _time_steps(sampler, state, steps: int, threads: int) -> tuple[float, object]:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, _ = sampler.step(state)
    return (time.perf_counter() - t0) / steps, state


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=7, help="alternations of the two settings")
    ap.add_argument("--steps", type=int, default=10, help="steps per timing")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="directory for threads.{json,md}")
    a = ap.parse_args(argv)
    default_threads = torch.get_num_threads()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = []
    for n, d in SIZES:
        gen = torch.Generator().manual_seed(0)
        x0 = torch.randn(n, d, generator=gen, dtype=torch.float32)
        sampler = svgd(lambda x: -x, step_size=1e-3)
        state = sampler.init(x0)
        _, state = _time_steps(sampler, state, 2, default_threads)  # warm-up
        times = {"default": [], "one": []}
        for k in range(a.pairs):
            order = (("default", default_threads), ("one", 1)) if k % 2 == 0 else (("one", 1), ("default", default_threads))
            for name, th in order:
                dt, state = _time_steps(sampler, state, a.steps, th)
                times[name].append(dt)
        torch.set_num_threads(default_threads)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"n": n, "d": d, "default_threads": default_threads, "ms_default": 1e3 * med["default"],
                     "ms_one_thread": 1e3 * med["one"], "ratio_default_over_one": med["default"] / med["one"]})
        print(f"n={n:5d} d={d:4d}: {1e3 * med['default']:9.2f} ms ({default_threads} threads) "
              f"{1e3 * med['one']:9.2f} ms (1 thread) ratio {med['default'] / med['one']:.2f}", flush=True)
    args = sys.argv[1:] if argv is None else list(argv)
    meta = {"command": " ".join(["python benchmarks/bench_threads.py"] + args),
            "torch": torch.__version__, "cpus": os.cpu_count(), "load_average_at_start": load,
            "machine": platform.platform(), "pairs": a.pairs, "steps": a.steps, "dtype": "float32",
            "target": "N(0, I_d) score -x", "sampler": "svgd, RBF, liu_wang median, constant step"}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "threads.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    md = ["# SVGD step: default torch threads against one thread", "",
          f"`{meta['command']}`; torch {meta['torch']}, {meta['cpus']} CPUs, load average "
          f"{load:.1f} at the start; medians of {a.pairs} alternating timings of {a.steps} steps.", "",
          "| n | d | ms/step, default threads | ms/step, 1 thread | default / 1 thread |", "|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['n']} | {r['d']} | {r['ms_default']:.2f} ({r['default_threads']}) | "
                  f"{r['ms_one_thread']:.2f} | {r['ratio_default_over_one']:.2f} |")
    (out / "threads.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out / 'threads.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
