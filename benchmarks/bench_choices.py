"""The measurements behind the implementation choices that the core's docstrings state without numbers.

    python benchmarks/bench_choices.py [--reps 20] [--threads 1]

Each line compares, interleaved in one run (medians of ``--reps`` repetitions), the way the core does
a thing with the way it chose not to:

* ``select_ranks``: one single-rank ``numpy.partition`` per rank against one ``numpy.partition``
  with both ranks of a midpoint median (38,000 float32 values: the size of a bracket's candidates);
* ``order_statistics`` of a CPU tensor: the NumPy selection on a zero-copy view against
  ``torch.kthvalue`` (n^2 = 10^6 entries, two ranks);
* counting a mask: ``count_nonzero`` against a sum of booleans (NumPy and torch, 10^6 entries);
* ``rbf_product_columns``: the ``n x n`` by ``n x w`` product at the padded width against the unpadded
  one (n = 1000; w = 201 against 208, w = 5 against 16);
* ``UpperBlockRows``: torch's ``exp`` over contiguous packed rows against the same pass over strided
  views ``M[I, a:]`` of an ``n x n`` matrix (n = 2000; run with ``--threads 2`` to see the threads).

The machine this runs on decides the numbers; the script prints them, nothing records them.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _interleaved(fns: dict, reps: int) -> dict:
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


def _line(name: str, t: dict) -> None:
    (a, ta), (b, tb) = t.items()
    print(f"| {name} | {a}: {ta:.3f} ms | {b}: {tb:.3f} ms | {tb / ta:.2f} |", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    from particlesampling._backend import SQDIST_BLOCK_ROWS, upper_block_rows
    from particlesampling.selection import order_statistics, select_ranks

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print("| choice | chosen | alternative | alternative / chosen |\n|---|---|---|---|")
    v = rng.random(38000, dtype=np.float32)
    ks = [18999, 19000]
    _line("select_ranks", _interleaved({"one rank at a time": lambda: select_ranks(v, ks),
                                        "both ranks in one partition": lambda: np.partition(v, ks)}, args.reps))
    big = torch.from_numpy(rng.random(10**6, dtype=np.float32))
    ks = [499999, 500000]
    _line("order_statistics (CPU tensor)", _interleaved({
        "NumPy view": lambda: order_statistics(big, ks),
        "torch.kthvalue": lambda: [big.kthvalue(k + 1).values for k in ks]}, args.reps))
    mask = rng.random(10**6) < 0.5
    _line("count a NumPy mask", _interleaved({"count_nonzero": lambda: np.count_nonzero(mask),
                                              "sum": lambda: int(mask.sum())}, args.reps))
    tmask = torch.from_numpy(mask)
    _line("count a torch mask", _interleaved({"count_nonzero": lambda: torch.count_nonzero(tmask),
                                              "sum": lambda: tmask.sum()}, args.reps))
    k = torch.rand(1000, 1000)
    for used, padded in ((201, 208), (5, 16)):
        r_pad, r_used = torch.rand(1000, padded), torch.rand(1000, used)
        _line(f"product width {used} padded to {padded}",
              _interleaved({f"w = {padded}": lambda: k @ r_pad, f"w = {used}": lambda: k @ r_used}, args.reps))
    x = torch.randn(2000, 100)
    xx = (x * x).sum(-1)
    packed = upper_block_rows(x, xx)
    packed.flat.uniform_()  # the same values in both layouts: exp of numbers in [0, 1)
    full = torch.rand(2000, 2000)
    strided = [full[a:a + SQDIST_BLOCK_ROWS, a:] for a in packed.starts]
    _line(f"exp over the upper block rows ({args.threads} thread(s))", _interleaved({
        "packed, contiguous": lambda: [r.exp() for r in packed.rows],
        "strided views": lambda: [r.exp() for r in strided]}, args.reps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
