#!/usr/bin/env python
"""The repulsive-attention study: run what is missing, then write the results and the report.

    python benchmarks/run_attention_study.py                 # full study, resumes from the records
    python benchmarks/run_attention_study.py --workers 2     # two processes sharing the records
    python benchmarks/run_attention_study.py --report-only   # rebuild results and report from records
    python benchmarks/run_attention_study.py --quick         # tiny sizes, into out/attention_quick (CI)

Each finished run is appended as one JSON line to ``benchmarks/results/attention_runs.jsonl``;
a run already there is never repeated, so an interrupted study resumes where it stopped (commit the
file as it grows). Results: ``benchmarks/results/attention.json``; report: ``docs/attention_study.md``
with its plots in ``docs/img/attention/``. See :mod:`benchmarks.attention` for the protocol.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.attention import plan as study_plan  # noqa: E402
from benchmarks.attention.records import load_records, run_pending  # noqa: E402

FULL_PATHS = dict(records=ROOT / "benchmarks/results/attention_runs.jsonl",
                  results=ROOT / "benchmarks/results/attention.json",
                  report=ROOT / "docs/attention_study.md", images=ROOT / "docs/img/attention")


def quick_paths(out: Path):
    return dict(records=out / "attention_runs.jsonl", results=out / "attention.json",
                report=out / "attention_study.md", images=out / "images")


def _todo(records, *, plan, phases):
    return study_plan.pending(plan, records, phases)


def _run_one(cfg, threads: int):
    from benchmarks.attention.train import run

    return run(cfg, threads=threads)


def _describe(cfg, rec) -> str:
    return (f"{cfg.dataset} {cfg.model} {cfg.method} value={cfg.value} seed={cfg.seed} heads={cfg.heads} "
            f"dropout={cfg.dropout} fraction={cfg.train_fraction} from={cfg.repulsion_from} ({cfg.purpose}): "
            f"test acc {rec['test']['accuracy']:.4f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes into --out (what CI runs)")
    p.add_argument("--out", type=Path, default=ROOT / "out/attention_quick", help="output folder of --quick")
    p.add_argument("--report-only", action="store_true", help="no training: results and report from the records")
    p.add_argument("--phases", default=",".join(study_plan.PHASES),
                   help=f"comma-separated subset of {','.join(study_plan.PHASES)} (priority order)")
    p.add_argument("--workers", type=int, default=1, help="processes sharing the records file")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--max-runs", type=int, default=0, help="stop each worker after this many runs (0: no limit)")
    p.add_argument("--hours", type=float, default=0.0, help="start no run after this many hours (0: no limit)")
    args = p.parse_args(argv)
    phases = tuple(x.strip() for x in args.phases.split(",") if x.strip())
    bad = [x for x in phases if x not in study_plan.PHASES]
    if bad:
        p.error(f"argument --phases: expected names among {study_plan.PHASES}, received {bad}")
    if args.workers < 1 or args.threads < 1:
        p.error("argument --workers/--threads: expected positive integers")
    plan = study_plan.QUICK if args.quick else study_plan.FULL
    paths = quick_paths(args.out) if args.quick else FULL_PATHS
    if not args.report_only:
        todo = functools.partial(_todo, plan=plan, phases=phases)
        n = run_pending(paths["records"], todo, _run_one, _describe, workers=args.workers, threads=args.threads,
                        max_runs=args.max_runs, hours=args.hours)
        left = len(study_plan.pending(plan, load_records(paths["records"]), phases))
        print(f"ran {n} runs; {left} pending in phases {','.join(phases)}")
    from benchmarks.attention.report import write_report

    write_report(load_records(paths["records"]), plan, paths, quick=args.quick)
    print(f"wrote {paths['results']} and {paths['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
