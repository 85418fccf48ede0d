#!/usr/bin/env python
"""The UCI Bayesian-neural-network table of Liu & Wang (2016) on ``ParticleEnsemble``, with early stopping.

    nice -n 10 python benchmarks/run_uci_ensemble.py --methods spos --splits 5 --no-report --commit
    python benchmarks/run_uci_ensemble.py --workers 2 --no-report    # two processes side by side
    python benchmarks/run_uci_ensemble.py --splits 2 --datasets yacht --methods svgd  # a subset
    python benchmarks/run_uci_ensemble.py --report-only               # the page from the records

The protocol of ``benchmarks/evidence/uci_bnn.py`` (Liu & Wang's original code: 20 particles, 50 ReLU
units, Gamma(1, 0.1) priors, AdaGrad with momentum, in-order minibatches of 100, the last 10 % of
the training rows as development rows), trained on a ``particlesampling.ensemble.ParticleEnsemble``
of ``Linear -> ReLU -> Linear`` (scores by autograd through the batched model) instead of the
hand-written network, and with the training length chosen on the development rows: their
log likelihood is evaluated every ``--eval-every`` iterations and training stops after
``--patience`` evaluations without improvement (at most ``--iters``), keeping the best particles.
Nothing is tuned per data set. Methods and their step settings (``BNNConfig`` defaults, the
settings of the fixed-length comparison in ``docs/evidence.md``):

* ``svgd``: the SVGD direction (RBF kernel, Liu-Wang median bandwidth), AdaGrad with momentum
  (step 1e-3, decay 0.9, fudge 1e-6): the original code;
* ``spos``: drift ``phi + s / beta`` with ``beta = N`` (the training rows) under the same rule, and the
  Langevin noise ``sqrt(2 * 1e-3 / beta) xi`` added outside the rule;
* ``sgld``: 20 independent chains, drift ``s`` under the same rule and the same noise
  (temperature ``1 / N``): SPOS without the Stein term.

Every finished split is one JSON line in ``--records-dir`` (default
``benchmarks/results/uci_ensemble/uci_runs_<method>.jsonl``, committed with the repository); a run
skips the (data set, split, method, settings) already recorded there, so a stopped run resumes from
the committed records. ``--commit`` commits the records file after every split. Splits are the
outer loop, so a stopped run has covered every data set equally. The summary goes to
``benchmarks/results/uci_bnn_ensemble.json``, the page to ``docs/uci_ensemble.md`` and its figure
(``--no-report``: records only, for runs split over several processes).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.evidence import report  # noqa: E402
from benchmarks.evidence.uci import UCI_DATASETS, num_splits  # noqa: E402
from benchmarks.evidence.uci_bnn import BNNConfig, run_many  # noqa: E402


METHOD_TEXT = {
    "svgd": "SVGD: the SVGD direction (RBF kernel, Liu-Wang median bandwidth) under AdaGrad with momentum (step "
            "{lr}, decay {alpha}, fudge {fudge}), the original code",
    "spos": "SPOS: drift φ + s/β with β = {beta_per_n:g}·N (N the training rows) under the same AdaGrad-with-momentum "
            "rule, and the Langevin noise √(2·{lr}/β)·ξ added outside the rule (not preconditioned: SPOS as a noisy "
            "optimiser of the particle system, not an exact sampler)",
    "sgld": "SGLD: 20 independent chains, drift s under the same rule and the same noise (temperature 1/({beta_per_n:g}·N)): "
            "SPOS without the Stein term; like SPOS, the noise is not preconditioned by the AdaGrad rule, so this is "
            "a noisy optimiser, not Welling & Teh's exact SGLD",
}


def split_ranges(splits) -> str:
    """``[0, 1, 2, 4]`` -> ``"0-2, 4"``."""
    out, run = [], []
    for k in sorted(int(v) for v in splits):
        if run and k == run[-1] + 1:
            run.append(k)
        else:
            if run:
                out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = [k]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out)


def paired(recs: list[dict], ref: dict, method: str) -> dict:
    """Per data set, ``method``'s runs minus the reference runs ``ref[(dataset, split)]`` on the splits both have."""
    out = {}
    for ds in [d for d in report.PUBLISHED] + sorted({r["dataset"] for r in recs} - set(report.PUBLISHED)):
        pairs = [(r, ref[(ds, r["split"])]) for r in recs
                 if r["dataset"] == ds and r["method"] == method and r["finite"] and (ds, r["split"]) in ref]
        if pairs:
            e = {"n": len(pairs), "splits": sorted(a["split"] for a, _ in pairs)}
            for k in ("rmse", "loglik"):
                d = np.array([a[k] - b[k] for a, b in pairs])
                e[k] = [float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")]
            out[ds] = e
    return out


def page(result: dict) -> str:
    s, configs = result["summary"], result["configs"]
    cfg = configs[result["methods"][0]]
    lines = [
        "# UCI Bayesian neural networks on `ParticleEnsemble`, early stopping on the development rows",
        "",
        f"Generated by `{result['command']}` (`benchmarks/run_uci_ensemble.py`) from the per-split records in "
        "`benchmarks/results/uci_ensemble/` (one JSON line per finished split, written by the same script without "
        "`--report-only`); the summary is `benchmarks/results/uci_bnn_ensemble.json`.",
        "",
        "The protocol of Liu & Wang (2016, Sec. 5.2) as in `benchmarks/evidence/uci_bnn.py` (20 particles, one "
        "hidden layer of 50 ReLU units, Gamma(1, 0.1) priors on the noise and weight precisions, in-order "
        f"minibatches of {cfg['batch_size']} rows, the last 10 % of each "
        "training split held out as development rows and used to re-tune each particle's noise precision), with "
        "the network an ordinary `nn.Sequential(Linear, ReLU, Linear)` in a "
        "`particlesampling.ensemble.ParticleEnsemble` (scores by one backward pass through the batched model; "
        "the hand-written network of `particlesampling.targets.BayesianNeuralNetwork` gives the same numbers on "
        "the same seeds, tested in `tests/benchmarks/test_uci_bnn.py`). Training length: the development rows' "
        f"log likelihood is evaluated every {cfg['eval_every']} iterations; training stops after "
        f"{cfg['patience']} evaluations without improvement, or at {cfg['iters']} iterations, and the particles "
        "of the best evaluation are tested. No setting was tuned on these data sets. The methods and their step "
        "settings (those of the fixed-length comparison in `docs/evidence.md`, fixed before any run):",
        "",
    ]
    for m in result["methods"]:
        if m in METHOD_TEXT and m in configs:
            lines.append("* " + METHOD_TEXT[m].format(**configs[m]) + ".")
    lines += [
        "",
        "Each row's standard errors are over the splits listed in its `splits` column; rows with different "
        "splits are not paired (the paired comparisons below are).",
        "",
        "| data set | method | splits | iterations run (median, range) | best iteration (median) | test RMSE | "
        "verdict | test log-lik | verdict | s/split (median) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ds in [d for d in report.PUBLISHED if d in s] + sorted(d for d in s if d not in report.PUBLISHED):
        if ds in report.PUBLISHED:
            p = report.PUBLISHED[ds]
            lines.append(f"| {report.DISPLAY[ds]} | published SVGD | 20 | not stated | | {report._fmt(*p['rmse'])} | | "
                         f"{report._fmt(*p['loglik'])} | | |")
        for m in [m for m in result["methods"] if m in s[ds]]:
            e = s[ds][m]
            runs = [r for r in result["runs"] if r["dataset"] == ds and r["method"] == m]
            it = [r["iters"] for r in runs]
            best = [r.get("best_iter", r["iters"]) for r in runs]
            lines.append(
                f"| {report.DISPLAY.get(ds, ds)} | {m.upper()} (ensemble) | {split_ranges(e['splits'])} ({e['n_splits']}) | "
                f"{int(np.median(it))} ({min(it)}-{max(it)}) | {int(np.median(best))} | "
                f"{report._fmt(e['rmse_mean'], e['rmse_se'])} | {report.verdict('rmse', e['rmse_mean'], ds)} | "
                f"{report._fmt(e['loglik_mean'], e['loglik_se'])} | {report.verdict('loglik', e['loglik_mean'], ds)} | "
                f"{np.median([r['seconds'] for r in runs]):.0f} |")
    lines += ["", "Verdict: `within` the published mean ± 2 published standard errors, else `better` or `worse`. "
              "Standard errors over the splits run. Seconds are wall time on a shared, loaded 2-core machine "
              "(several jobs at once), so they are upper bounds, not benchmarks of the code.", ""]
    missing = {(ds, m): result["splits_requested"] - s.get(ds, {}).get(m, {}).get("n_splits", 0)
               for ds in result["datasets"] for m in result["methods"]}
    if any(v > 0 for v in missing.values()):
        lines += [f"Not run yet (of splits 0-{result['splits_requested'] - 1}): "
                  + "; ".join(f"{report.DISPLAY.get(d, d)} {m.upper()} {v}" for (d, m), v in missing.items() if v > 0)
                  + ". Rerunning the command without `--report-only` resumes from the records and runs only those.",
                  ""]
    common = result.get("common_splits") or {}
    if common.get("splits") and len(result["methods"]) > 1:
        lines += [f"All methods on the same splits: the splits every method has finished on every data set, "
                  f"{split_ranges(common['splits'])} ({len(common['splits'])} splits); mean ± standard error over "
                  "them, the comparable subset of the table above:", "",
                  "| data set | " + " | ".join(f"{m.upper()} RMSE | {m.upper()} log-lik" for m in common["methods"]) + " |",
                  "|---|" + "---|---|" * len(common["methods"])]
        for ds, by_m in common["summary"].items():
            lines.append(f"| {report.DISPLAY.get(ds, ds)} | " + " | ".join(
                f"{report._fmt(by_m[m]['rmse_mean'], by_m[m]['rmse_se'])} | "
                f"{report._fmt(by_m[m]['loglik_mean'], by_m[m]['loglik_se'])}" for m in common["methods"]) + " |")
        lines.append("")
    vs = result.get("versus_svgd") or {}
    if any(vs.values()):
        lines += ["Paired with SVGD on the same splits (this protocol; the method minus SVGD, mean ± standard error "
                  "over the splits both ran; RMSE lower and log-lik higher is better for the method):", "",
                  "| data set | method | splits | RMSE difference | log-lik difference |", "|---|---|---|---|---|"]
        for m, by_ds in vs.items():
            for ds, e in by_ds.items():
                lines.append(f"| {report.DISPLAY.get(ds, ds)} | {m.upper()} − SVGD | {split_ranges(e['splits'])} | "
                             f"{report._fmt(*e['rmse'], signed=True)} | {report._fmt(*e['loglik'], signed=True)} |")
        lines.append("")
    fixed = result.get("fixed_length")
    if fixed and any(fixed["paired"].values()):
        lines += [f"Against the fixed-length protocol ({fixed['iters']} iterations, the hand-written network, the same "
                  "step settings; runs in `benchmarks/results/uci_bnn.json`, `docs/evidence.md`) on the same splits, "
                  "paired (early stopping minus fixed length; mean ± standard error over splits):", "",
                  "| data set | method | splits | RMSE difference | log-lik difference |", "|---|---|---|---|---|"]
        for m, by_ds in fixed["paired"].items():
            for ds, e in by_ds.items():
                lines.append(f"| {report.DISPLAY.get(ds, ds)} | {m.upper()} | {split_ranges(e['splits'])} | "
                             f"{report._fmt(*e['rmse'], signed=True)} | {report._fmt(*e['loglik'], signed=True)} |")
        lines.append("")
    if any(d in report.PUBLISHED for d in s):
        lines += ["![UCI on ParticleEnsemble](img/uci_ensemble.png)", ""]
    return "\n".join(lines)


def common_splits(recs: list[dict], datasets, methods) -> dict:
    """The splits that every method finished (finite) on every data set, and the summary on them."""
    have = [{r["split"] for r in recs if r["dataset"] == ds and r["method"] == m and r["finite"]}
            for ds in datasets for m in methods]
    splits = sorted(set.intersection(*have)) if have else []
    picked = [r for r in recs if r["split"] in splits and r["dataset"] in datasets and r["method"] in methods]
    summary = report.aggregate_uci(picked) if splits else {}
    order = [d for d in report.PUBLISHED if d in summary] + sorted(d for d in summary if d not in report.PUBLISHED)
    return {"splits": splits, "methods": list(methods), "summary": {d: summary[d] for d in order}}


def paired_with_fixed_length(recs: list[dict], path: Path, methods) -> dict | None:
    """Per method, these runs minus the fixed-length runs of the same method stored in ``path``."""
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    out = {}
    for m in methods:
        ref = {(r["dataset"], r["split"]): r for r in old.get("runs", []) if r["method"] == m and r["finite"]}
        out[m] = paired(recs, ref, m)
    return {"iters": old.get("iters"), "paired": out} if any(out.values()) else None


def commit_records(paths, message: str, log=print) -> None:
    """``git commit`` of the records files (only those paths), retried while another git command holds the lock."""
    import subprocess

    rel = [str(Path(p).resolve().relative_to(ROOT)) for p in paths]
    for attempt in range(10):
        add = subprocess.run(["git", "add", "--", *rel], cwd=ROOT, capture_output=True, text=True)
        res = subprocess.run(["git", "commit", "-q", "-m", message, "--", *rel], cwd=ROOT, capture_output=True,
                             text=True) if add.returncode == 0 else add
        if res.returncode == 0 or "nothing to commit" in (res.stdout + res.stderr):
            return
        time.sleep(3 + 3 * attempt)
    log(f"warning: could not commit {rel}: {res.stderr.strip()}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(UCI_DATASETS))
    ap.add_argument("--methods", default="svgd,spos,sgld")
    ap.add_argument("--splits", type=int, default=20, help="splits 0 .. splits-1")
    ap.add_argument("--iters", type=int, default=8000, help="at most this many iterations")
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--uci-dir", default=None)
    ap.add_argument("--records-dir", "--cache-dir", dest="records_dir",
                    default=str(ROOT / "benchmarks" / "results" / "uci_ensemble"))
    ap.add_argument("--out", default=str(ROOT), help="root under which benchmarks/results and docs are written")
    ap.add_argument("--report-only", action="store_true", help="run nothing; the page from the records")
    ap.add_argument("--no-report", action="store_true", help="records only; no summary, page or figure")
    ap.add_argument("--commit", action="store_true", help="git-commit the records file after every finished split")
    ap.add_argument("--workers", type=int, default=1,
                    help="processes running splits side by side (one thread each; records appended as each ends)")
    a = ap.parse_args(argv)
    if a.workers < 1:
        ap.error(f"expected --workers >= 1, received {a.workers}")
    import torch

    torch.set_num_threads(1)
    command = "python benchmarks/run_uci_ensemble.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    datasets = [d for d in a.datasets.split(",") if d]
    methods = [m for m in a.methods.split(",") if m]
    K = min([a.splits] + [num_splits(d, a.uci_dir) for d in datasets])
    configs = {m: BNNConfig(method=m, iters=a.iters, patience=a.patience, eval_every=a.eval_every,
                            engine="ensemble") for m in methods}

    def commit(rec, path):
        if a.commit:
            commit_records([path], f"UCI on ParticleEnsemble (#27): {rec['method']} {rec['dataset']} split "
                                   f"{rec['split']} recorded")

    t0 = time.perf_counter()
    recs = run_many(datasets, range(K), methods, configs, a.records_dir, root=a.uci_dir, run=not a.report_only,
                    workers=a.workers, log=lambda msg: print(msg, flush=True), on_record=commit)
    if a.no_report:
        print(f"done in {time.perf_counter() - t0:.0f} s: {len(recs)} records", flush=True)
        return 0
    svgd = {(r["dataset"], r["split"]): r for r in recs if r["method"] == "svgd" and r["finite"]}
    result = {"command": command.strip(), "datasets": datasets, "methods": methods, "splits_requested": K,
              "configs": {m: asdict(c) for m, c in configs.items()}, "published": report.PUBLISHED,
              "summary": report.aggregate_uci(recs),
              "versus_svgd": {m: paired(recs, svgd, m) for m in methods if m != "svgd"}, "runs": recs}
    result["common_splits"] = common_splits(recs, datasets, methods)
    result["fixed_length"] = paired_with_fixed_length(recs, ROOT / "benchmarks" / "results" / "uci_bnn.json", methods)
    out = Path(a.out)
    (out / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (out / "docs" / "img").mkdir(parents=True, exist_ok=True)
    (out / "benchmarks" / "results" / "uci_bnn_ensemble.json").write_text(json.dumps(result, indent=1) + "\n")
    if any(d in report.PUBLISHED for d in result["summary"]):  # the figure compares with the published table
        report.plot_uci(result["summary"], out / "docs" / "img" / "uci_ensemble.png")
    (out / "docs" / "uci_ensemble.md").write_text(page(result))
    print(f"done in {time.perf_counter() - t0:.0f} s: {len(recs)} runs", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
