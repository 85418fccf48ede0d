"""Before/after profile of one Stein-direction evaluation (issue 4, item 1), interleaved in one run.

    python benchmarks/profile_step.py [--ref HEAD] [--sizes 100x2,1000x100,...] [--reps 5] [--threads 1]
        [--libs torch,numpy] [--dtypes float32,float64]

Times ``stein_direction_with_info`` of the working tree against the package at git revision
``--ref`` (extracted read-only with ``git archive`` into a temporary directory) and the three-GEMM
floor, for NumPy and PyTorch (CPU), float32 and float64, with the default (median) bandwidth and
with that bandwidth given as a number (fixed); ``--threads`` torch threads (NumPy's BLAS: one);
medians of ``--reps`` interleaved repetitions. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path):
    for k in [k for k in sys.modules if k == "particlesampling" or k.startswith("particlesampling.")]:
        del sys.modules[k]
    sys.path.insert(0, str(path))
    try:
        mod = importlib.import_module("particlesampling.stein")
    finally:
        sys.path.remove(str(path))
    return mod.stein_direction_with_info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", default="HEAD")
    ap.add_argument("--sizes", default="100x2,100x100,1000x2,1000x100,1000x1000,4000x2,4000x100,4000x1000")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--libs", default="torch,numpy")
    ap.add_argument("--dtypes", default="float32,float64")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.ref, "particlesampling"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        old = _load(Path(tmp))
        new = _load(ROOT)
        print(f"| n | d | library | dtype | {args.ref} (ms) | now (ms) | {args.ref} fixed (ms) | now fixed (ms) | "
              "3-GEMM floor (ms) | now / floor | now fixed / floor | speed-up |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for size in args.sizes.split(","):
            n, d = (int(v) for v in size.split("x"))
            for lib in args.libs.split(","):
                for dt in args.dtypes.split(","):
                    x = np.random.default_rng(0).standard_normal((n, d)).astype(dt)
                    s = -x
                    if lib == "torch":
                        x, s = torch.from_numpy(x), torch.from_numpy(s)
                    a = x @ x.T
                    h = float(new(x, s)[1].bandwidth)
                    fns = {"old": lambda: old(x, s), "new": lambda: new(x, s),
                           "old_fixed": lambda: old(x, s, bandwidth=h), "new_fixed": lambda: new(x, s, bandwidth=h),
                           "floor": lambda: (x @ x.T, a @ x, a @ s)}
                    ts = {k: [] for k in fns}
                    for _ in range(args.reps):
                        for k, f in fns.items():
                            t = time.perf_counter()
                            f()
                            ts[k].append(time.perf_counter() - t)
                    m = {k: float(np.median(v)) * 1e3 for k, v in ts.items()}
                    print(f"| {n} | {d} | {lib} | {dt} | {m['old']:.2f} | {m['new']:.2f} | {m['old_fixed']:.2f} | "
                          f"{m['new_fixed']:.2f} | {m['floor']:.2f} | {m['new'] / m['floor']:.2f} | "
                          f"{m['new_fixed'] / m['floor']:.2f} | {m['old'] / m['new']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
