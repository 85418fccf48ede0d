"""An SVGD step with the libraries' default intra-op threads against one thread, idle and loaded.

For each backend (torch float32: ``torch.set_num_threads``; NumPy float64: the BLAS pool through
``threadpoolctl``), each problem size (n particles, d dimensions) and each machine state, the two
settings alternate in one process (default, 1, 1, default, ...) so that outside load hits both
alike; the table gives the median time per step of each and their ratio. The machine states:

* ``as found``: nothing added by this script (on a shared machine that is not idle: the load average
  at the start of the state is recorded);
* ``loaded``: two more CPU-bound processes (pure-Python busy loops) started by this script, ended
  when the state's measurements end.

The step is ``particlesampling.svgd`` with its defaults (RBF kernel, ``liu_wang`` median
bandwidth, constant step) on the score of N(0, I_d). From the rows the script derives the
threshold on ``n * n`` (0 or a measured size) whose worst slowdown against the better setting, over
every row of both machine states, is smallest: the value of ``particlesampling.runner.ONE_THREAD_MAX_ENTRIES``, below
which ``run_sampler`` uses one intra-op thread by default. The table shows, for each row, what that
default (``auto``) costs against the better of the two settings.

Usage::

    python benchmarks/bench_threads.py              # writes benchmarks/results/threads.json and the
                                                    # "Threads" section of docs/benchmarks.md
    python benchmarks/bench_threads.py --quick --out /tmp/t.json --no-docs   # a smoke test
    python benchmarks/bench_threads.py --report-only  # rebuild the section from threads.json

Only this script's section of the page is replaced; ``bench_speed.py --report-only``, which writes
the page whole, includes it from ``threads.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import particlesampling as ps  # noqa: E402
from particlesampling.runner import ONE_THREAD_MAX_ENTRIES  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "threads.json"
SIZES = [(n, d) for d in (2, 50) for n in (100, 300, 1000, 3000)]
QUICK_SIZES = [(20, 2), (60, 3)]
STATES = ("as found", "loaded")


def _busy_processes(count: int) -> list:
    """``count`` CPU-bound processes (Python busy loops, ended by the caller)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def _thread_setter(backend: str):
    """(default thread count, a function setting the count) for the backend's intra-op pool."""
    if backend == "torch":
        import torch

        return torch.get_num_threads(), torch.set_num_threads
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController()
    default = max((p["num_threads"] for p in controller.info() if p["user_api"] == "blas"), default=1)

    def set_blas(k: int) -> None:
        controller.limit(limits=k, user_api="blas")

    return default, set_blas


def _problem(backend: str, n: int, d: int):
    x = np.random.default_rng(0).standard_normal((n, d))
    if backend == "torch":
        import torch

        x = torch.as_tensor(x, dtype=torch.float32)
    sampler = ps.svgd(lambda p: -p, step_size=1e-3)
    return sampler, sampler.init(x)


def _time(sampler, state, steps: int):
    t0 = time.perf_counter()
    for _ in range(steps):
        state, _ = sampler.step(state)
    return (time.perf_counter() - t0) / steps, state


def measure(backend: str, n: int, d: int, pairs: int, target_s: float) -> dict:
    default, set_threads = _thread_setter(backend)
    sampler, state = _problem(backend, n, d)
    try:
        set_threads(1)
        one, state = _time(sampler, state, 1)  # warm-up, and the size of a timing
        steps = max(1, int(target_s / max(one, 1e-6)))
        times = {"default": [], "one": []}
        for k in range(pairs):
            order = (("default", default), ("one", 1)) if k % 2 == 0 else (("one", 1), ("default", default))
            for name, threads in order:
                set_threads(threads)
                dt, state = _time(sampler, state, steps)
                times[name].append(dt)
    finally:
        set_threads(default)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    return {"backend": backend, "n": n, "d": d, "default_threads": default, "steps_per_timing": steps,
            "ms_default": ms["default"], "ms_one": ms["one"], "ratio_default_over_one": ms["default"] / ms["one"]}


def derive_threshold(rows: list) -> int:
    """The threshold (0 or a measured ``n * n``) whose ``auto`` rule has the smallest worst slowdown
    against the better setting, over every row of both machine states; ties go to the larger value.

    A default must hold on an idle machine and on a busy one alike, so the rule is minimax: a threshold
    that wins 20 % on an idle machine but loses 20x on a loaded one is the worse default.
    """
    candidates = sorted({0} | {r["n"] * r["n"] for r in rows})
    return min(candidates, key=lambda t: (_worst_slowdown(rows, t), -t))


def _worst_slowdown(rows: list, entries: int) -> float:
    return max(_auto_ms(r, entries) / min(r["ms_default"], r["ms_one"]) for r in rows)


def _auto_ms(row: dict, entries: int) -> float:
    """The time of the row under ``num_threads="auto"`` with the given threshold."""
    if row["n"] * row["n"] <= entries:
        return row["ms_one"]
    return row["ms_default"]


#: the row the README quotes (a small problem, where the default threads cost most)
README_ROW = (300, 2)


def readme_sentence(res: dict, n: int = README_ROW[0], d: int = README_ROW[1]) -> str:
    """The README's statement of the measured effect, from the torch rows of ``res`` for (n, d)."""
    rows = {r["state"]: r for r in res["rows"] if r["backend"] == "torch" and (r["n"], r["d"]) == (n, d)}
    found, loaded = rows["as found"], rows["loaded"]
    return (f"for n = {n}, d = {d}, torch: {found['ms_default']:.2f} ms per step with the default "
            f"{found['default_threads']} threads against {found['ms_one']:.2f} ms with one as found, "
            f"{loaded['ms_default']:.2f} ms against {loaded['ms_one']:.2f} ms loaded")


def markdown(res: dict) -> str:
    meta, rows = res["meta"], res["rows"]
    entries = ONE_THREAD_MAX_ENTRIES  # the value in the code now (the run recorded the one it ran with)
    lines = [HEADING, "",
             f"Generated by `{meta['command']}` on {meta['when']}, {meta['machine']}, torch {meta['torch']}, "
             f"NumPy {meta['numpy']}. One SVGD step (`ps.svgd` defaults: RBF, `liu_wang` median, constant step) "
             "on N(0, I_d); torch float32, NumPy float64. For each row the default thread count and one thread "
             f"alternate in one process ({meta['pairs']} pairs of timings, medians). Machine states: *as found* "
             "is the machine with nothing added by the script; *loaded* adds two CPU-bound processes. "
             f"Background: {meta['background']}; load average (1 min) at the start of each state: "
             + ", ".join(f"{s} {v:.1f}" for s, v in meta["load_average"].items()) + ". "
             "Raw data: `benchmarks/results/threads.json`.", "",
             f"`ps.run_sampler`'s default `num_threads=\"auto\"` runs torch CPU tensors and NumPy arrays with "
             f"n² ≤ {entries:,} (`particlesampling.runner.ONE_THREAD_MAX_ENTRIES`) on one thread (torch's "
             "intra-op pool; the BLAS pool through threadpoolctl) and restores the caller's setting afterwards. "
             + f"This run's rule (of 0 and the measured n², the threshold whose worst *auto / best* over every "
             f"row of both states is smallest; ties to the larger) gives {meta['derived_threshold']:,}. "
             "*auto / best*: the time of that default against the better of the two columns.", "",
             "| state | backend | n | d | ms/step, default threads | ms/step, 1 thread | default / 1 thread | auto / best |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        best = min(r["ms_default"], r["ms_one"])
        lines.append(f"| {r['state']} | {r['backend']} | {r['n']} | {r['d']} | {r['ms_default']:.2f} "
                     f"({r['default_threads']}) | {r['ms_one']:.2f} | {r['ratio_default_over_one']:.2f} | "
                     f"{_auto_ms(r, entries) / best:.2f} |")
    worst = {s: _worst_slowdown([r for r in rows if r["state"] == s], entries) for s in meta["load_average"]}
    lines += ["", "Worst *auto / best* per state: " + ", ".join(f"{s} {v:.2f}" for s, v in worst.items()) + "."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one pair (a smoke test)")
    ap.add_argument("--pairs", type=int, default=5, help="alternations of the two settings")
    ap.add_argument("--target-ms", type=float, default=60.0, help="length of one timing (ms)")
    ap.add_argument("--backends", default="torch,numpy")
    ap.add_argument("--background", default="not described",
                    help="what else ran on the machine, for the report (e.g. 'seven other engineers' jobs')")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    ap.add_argument("--report-only", action="store_true",
                    help="measure nothing: rebuild docs/benchmarks.md (this section from --out)")
    args = ap.parse_args(argv)
    if args.report_only:
        res = json.loads(args.out.read_text())
        print(markdown(res))
        if not args.no_docs:
            _rewrite_docs(res)
        return 0
    sizes = QUICK_SIZES if args.quick else SIZES
    pairs = 1 if args.quick else args.pairs
    import torch

    rows, load = [], {}
    for state in STATES:
        busy = _busy_processes(2) if state == "loaded" else []
        try:
            if busy:
                time.sleep(1.0)  # let them start spinning
            load[state] = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            for backend in [b for b in args.backends.split(",") if b]:
                for n, d in sizes:
                    row = {"state": state, **measure(backend, n, d, pairs, args.target_ms / 1e3)}
                    rows.append(row)
                    print(f"{state:9s} {backend:5s} n={n:5d} d={d:3d}: {row['ms_default']:9.2f} ms "
                          f"({row['default_threads']} threads) {row['ms_one']:9.2f} ms (1 thread) "
                          f"ratio {row['ratio_default_over_one']:.2f}", flush=True)
        finally:
            for p in busy:
                p.kill()
                p.wait()
    command = shlex.join(["python", "benchmarks/bench_threads.py"] + list(sys.argv[1:] if argv is None else argv))
    res = {"meta": {"command": command, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s) (shared)",
                    "torch": torch.__version__, "numpy": np.__version__, "pairs": pairs,
                    "background": args.background, "load_average": load, "quick": args.quick,
                    "derived_threshold": derive_threshold(rows), "threshold_in_use": ONE_THREAD_MAX_ENTRIES},
           "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.out}")
    print(markdown(res))
    if not args.quick:
        print("README:", readme_sentence(res))
    if not args.no_docs and not args.quick:
        _rewrite_docs(res)
    return 0


HEADING = "## Threads: the default step against one thread, as found and loaded"
DOCS = ROOT / "docs" / "benchmarks.md"


def replace_section(page: str, section: str) -> str:
    """``page`` with this script's section replaced (or, if absent, put before the peer-comparison
    section); every other section is left as it is (bench_speed.py and bench_floor.py own them, and
    bench_speed.py includes this one from threads.json when it rewrites the page)."""
    if HEADING in page:
        start = page.index(HEADING)
        end = page.find("\n## ", start + len(HEADING))
        end = len(page) if end < 0 else end + 1
    else:
        anchor = page.find("## Time per SVGD step")
        start = end = len(page) if anchor < 0 else anchor
    return page[:start] + section.rstrip("\n") + "\n\n" + page[end:].lstrip("\n")


def _rewrite_docs(res: dict) -> None:
    DOCS.write_text(replace_section(DOCS.read_text(encoding="utf-8"), markdown(res)), encoding="utf-8")
    print(f"rewrote the Threads section of {DOCS}")


if __name__ == "__main__":
    sys.exit(main())
