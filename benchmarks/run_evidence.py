#!/usr/bin/env python
"""Evidence on real data: UCI Bayesian neural networks, variance collapse, Bayesian logistic regression.

    python benchmarks/run_evidence.py                 # full protocol (long: hours on 2 cores)
    python benchmarks/run_evidence.py --quick         # about a minute; writes to a temp dir only
    python benchmarks/run_evidence.py --splits 5 --iters 5000 --workers 2
    python benchmarks/run_evidence.py --report-only   # aggregate what the cache holds, no new runs

Parts (``--only``): ``uci`` the UCI table, ``sens`` its sensitivity checks (SVGD at 2,000
iterations, the released script's default; SPOS over a grid of beta, chosen per data set on the
development rows), ``vc`` variance collapse, ``blr`` Bayesian logistic regression.

Full mode writes benchmarks/results/{uci_bnn,uci_sensitivity,variance_collapse,blr}.json, docs/evidence.md and
docs/img/evidence_*.png. Finished UCI runs are cached one JSON line each in out/evidence/
(``--cache-dir``), so an interrupted run resumes where it stopped. ``--quick`` writes everything
under ``--out`` (default: a fresh temporary directory) and never touches the full results.
The UCI data are read from --uci-dir, else $PARTICLESAMPLING_UCI_DIR, else ../shared/data/uci (beside
the checkout). The experiment code is the package ``benchmarks/evidence/`` (not installed with the library).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.evidence import report  # noqa: E402
from benchmarks.evidence.uci import UCI_DATASETS, UCIDataError, num_splits  # noqa: E402

METHODS = ("svgd", "spos", "sgld")


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, allow_nan=True) + "\n")


def _seed_cache(cache: Path, results: Path) -> None:
    """For ``--report-only`` without a run cache (a fresh clone): rebuild it from the ``runs`` stored in
    ``uci_bnn.json`` and ``uci_sensitivity.json``, so the report can be remade from the repository."""
    from benchmarks.evidence.uci_bnn import append_record

    if any(cache.glob("uci_runs_*.jsonl")):
        return
    recs = []
    for name in ("uci_bnn.json", "uci_sensitivity.json"):
        path = results / name
        if path.is_file():
            recs += json.loads(path.read_text()).get("runs", [])
    if not recs:
        return
    for rec in recs:
        append_record(cache, rec)
    print(f"no run cache in {cache}: rebuilt it from the {len(recs)} runs stored in {results}", flush=True)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one split, few iterations, small grids (CI)")
    ap.add_argument("--uci-dir", default=None, help="root of the UCI data (default: $PARTICLESAMPLING_UCI_DIR, else "
                    "../shared/data/uci beside the checkout; see benchmarks/evidence/uci.py)")
    ap.add_argument("--splits", type=int, default=None, help="splits 0..K-1 per data set (default 20; quick 1)")
    ap.add_argument("--iters", type=int, default=None, help="BNN iterations (default 5000; quick 40)")
    ap.add_argument("--datasets", default=",".join(UCI_DATASETS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--only", default="uci,sens,vc,blr", help="subset of uci,sens,vc,blr")
    ap.add_argument("--short-iters", type=int, default=None,
                    help="sens: SVGD iterations of the short run (default 2000, the released script's; quick 20)")
    ap.add_argument("--betas", default=None,
                    help="sens: SPOS beta / N grid, comma-separated (default 0.01,0.1,1,10; quick 0.1,1)")
    ap.add_argument("--beta-splits", type=int, default=None,
                    help="sens: splits 0..K-1 of the beta grid (default 10; quick 1)")
    ap.add_argument("--blr-steps", type=int, default=None, help="blr: steps per method (default 10000; quick 60)")
    ap.add_argument("--workers", type=int, default=None, help="processes for the UCI runs (default 2; quick 1)")
    ap.add_argument("--out", default=None, help="output directory (quick mode; default a temp dir)")
    ap.add_argument("--cache-dir", default=None, help="UCI run cache (default out/evidence, quick: <out>/cache)")
    ap.add_argument("--report-only", action="store_true", help="no new runs: aggregate cached UCI runs and "
                    "reuse existing variance_collapse.json / blr.json")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = parse(argv)
    t_start = time.perf_counter()
    command = "python benchmarks/run_evidence.py" + ("" if argv is None and len(sys.argv) == 1 else " " + " ".join(
        shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv)))
    only = set(a.only.split(","))
    if a.quick:
        out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="evidence_quick_"))
        results, doc, img = out, out / "evidence.md", out / "img"
    else:
        out = Path(a.out) if a.out else ROOT
        results = out / "benchmarks" / "results"
        doc, img = out / "docs" / "evidence.md", out / "docs" / "img"
    cache = Path(a.cache_dir) if a.cache_dir else (out / "cache" if a.quick else ROOT / "out" / "evidence")
    img.mkdir(parents=True, exist_ok=True)
    print(f"writing to {results} and {doc}", flush=True)

    import torch

    torch.set_num_threads(1)
    uci = sens = vc = blr = avail = None

    if only & {"uci", "sens"}:
        from benchmarks.evidence.uci_bnn import BNNConfig, run_many

        if a.report_only:
            _seed_cache(cache, results)

        iters = a.iters or (40 if a.quick else 5000)
        K = a.splits or (1 if a.quick else 20)
        datasets = [d for d in a.datasets.split(",") if d]
        methods = [m for m in a.methods.split(",") if m]
        workers = a.workers or (1 if a.quick else min(2, os.cpu_count() or 1))
        try:
            avail = {d: num_splits(d, a.uci_dir) for d in datasets}
        except UCIDataError as exc:
            if not a.quick:
                raise
            print(f"skipping UCI: {exc}", flush=True)
            avail = None
        if avail is not None:
            K = min([K] + list(avail.values()))

    if "uci" in only and avail is not None:
        configs = {m: BNNConfig(method=m, iters=iters) for m in methods}
        recs = run_many(datasets, range(K), methods, configs, cache, root=a.uci_dir, workers=workers,
                        run=not a.report_only)
        summary = report.aggregate_uci(recs)
        uci = {"protocol": "Liu & Wang 2016 (see benchmarks/evidence/uci_bnn.py)",
               "command": command, "splits_requested": K, "iters": iters,
               "published": report.PUBLISHED, "summary": summary,
               "verdicts": {ds: {m: {"rmse": report.verdict("rmse", s["rmse_mean"], ds),
                                     "loglik": report.verdict("loglik", s["loglik_mean"], ds)}
                                 for m, s in by_m.items()} for ds, by_m in summary.items()},
               "runs": recs}
        _json(results / "uci_bnn.json", uci)
        report.plot_uci(summary, img / "evidence_uci.png")

    if "sens" in only and avail is not None:
        short = a.short_iters or (20 if a.quick else 2000)
        betas = [float(b) for b in (a.betas or ("0.1,1" if a.quick else "0.01,0.1,1,10")).split(",") if b]
        Kb = min(K, a.beta_splits if a.beta_splits is not None else (1 if a.quick else 10))
        run = not a.report_only
        short_recs = run_many(datasets, range(K), ["svgd"], {"svgd": BNNConfig(method="svgd", iters=short)},
                              cache, root=a.uci_dir, workers=workers, run=run)
        long_recs = run_many(datasets, range(K), ["svgd"], {"svgd": BNNConfig(method="svgd", iters=iters)},
                             cache, root=a.uci_dir, workers=workers, run=False)
        beta_recs = {b: run_many(datasets, range(Kb), ["spos"],
                                 {"spos": BNNConfig(method="spos", iters=iters, beta_per_n=b)},
                                 cache, root=a.uci_dir, workers=workers, run=run) for b in betas}
        sens = report.uci_sensitivity(short_recs, long_recs, beta_recs)
        sens["command"] = command
        sens["runs"] = short_recs + [r for recs in beta_recs.values() for r in recs]
        _json(results / "uci_sensitivity.json", sens)

    if "vc" in only:
        from benchmarks.evidence.variance_collapse import VCConfig, run_grid

        path = results / "variance_collapse.json"
        if a.report_only and path.is_file():
            vc = json.loads(path.read_text())
        else:
            if a.quick:
                vc = run_grid(dims=(2, 10), ns=(50,), cfg=VCConfig(steps=60))
            else:
                vc = run_grid(cfg=VCConfig())
            vc["command"] = command
            _json(path, vc)
        report.plot_variance_collapse(vc, img / "evidence_variance_collapse.png")

    if "blr" in only:
        from benchmarks.evidence.logistic import BLRConfig, run_blr

        path = results / "blr.json"
        if a.report_only and path.is_file():
            blr = json.loads(path.read_text())
        else:
            steps = a.blr_steps if a.blr_steps is not None else (60 if a.quick else 10000)
            marks = tuple(c for c in ((20,) if a.quick else (500, 2000, 5000)) if c < steps)
            cfg = (BLRConfig(n_particles=20, steps=steps, checkpoints=marks, yardstick_repeats=3) if a.quick
                   else BLRConfig(steps=steps, checkpoints=marks))
            blr = run_blr(cfg)
            blr["command"] = command
            _json(path, blr)

    # the Yacht diagnosis (benchmarks/diagnose_spos_loglik.py) feeds the UCI notes when it has been run
    diag_path = results / "spos_loglik_diagnosis_yacht.json"
    diagnosis = json.loads(diag_path.read_text()) if diag_path.is_file() else None
    report.write_report(doc, uci, vc, blr, command, img_prefix="img/evidence_", sens=sens, diagnosis=diagnosis)
    print(f"done in {time.perf_counter() - t_start:.0f} s; report: {doc}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
