#!/usr/bin/env python
"""Digits classification with ParticleEnsemble: accuracy, calibration and out-of-distribution detection.

    nice -n 10 python benchmarks/digits_ensemble.py            # 5 paired seeds; writes the page
    python benchmarks/digits_ensemble.py --seeds 1 --quick     # a smoke run into a temporary directory
    python benchmarks/digits_ensemble.py --report-only         # the page from the cached runs

Data: scikit-learn's bundled digits (1,797 8x8 images, pixel values / 16). Classes 0-7 are the
in-distribution data, split per seed into train (60 %), development (20 %) and test (20 %) rows;
classes 8 and 9 are out-of-distribution (OOD) "unseen digits", and 300 images of uniform noise on
[0, 1] are OOD "noise". Model: an MLP 64-64-8 with ReLU, ``n`` = 10 particles, categorical
likelihood with the N/B scaling, Gaussian prior of scale 1 on every weight.

Methods (``particlesampling.ensemble``): ``ensemble`` (deep ensemble: each model ascends its own log
posterior), ``svgd`` (weight space), ``fsvgd`` (function space: RBF kernel on the models' logits on
the batch, its repulsion weight ``r`` chosen on the development rows of seed 0 from ``--fs-grid``),
``spos`` (beta = N) and ``sgld`` (temperature 1/N): the tempered settings of the UCI benchmark,
where the Langevin noise is that of a posterior tempered by N. Every method: the core's
AdaGrad-with-momentum rule (``CoreStepper``), step ``--lr``, minibatches of 64, early stopping on
the development negative log likelihood (evaluated every 100 steps, patience 5 evaluations, at most
``--steps``), the particles of the best evaluation tested. Same seed, same split and same
initialisation for every method (paired).

Metrics on the test rows: accuracy, NLL of the particle mixture, ECE (15 equal-width confidence
bins); AUROC of predictive entropy and of mutual information for test rows against unseen digits
and against noise images. Runs are cached in ``out/digits/runs.jsonl``; results go to
``benchmarks/results/digits_ensemble.json``, ``docs/digits_ensemble.md`` and
``docs/img/digits_ensemble.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("ensemble", "svgd", "fsvgd", "spos", "sgld")
METRICS = ("accuracy", "nll", "ece", "auroc_entropy_unseen", "auroc_mi_unseen", "auroc_entropy_noise",
           "auroc_mi_noise")
LABELS = {"accuracy": "test accuracy", "nll": "test NLL", "ece": "test ECE",
          "auroc_entropy_unseen": "AUROC entropy, digits 8-9", "auroc_mi_unseen": "AUROC MI, digits 8-9",
          "auroc_entropy_noise": "AUROC entropy, noise", "auroc_mi_noise": "AUROC MI, noise"}
HIGHER_IS_BETTER = {"accuracy": True, "nll": False, "ece": False}


def load_data(seed: int):
    """Split of the digits for one seed: dict of float32 tensors / int64 labels."""
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    X, y = d.data.astype(np.float32) / 16.0, d.target.astype(np.int64)
    ind = np.flatnonzero(y < 8)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(ind)
    n_tr, n_dev = int(0.6 * len(perm)), int(0.2 * len(perm))
    parts = {"train": perm[:n_tr], "dev": perm[n_tr:n_tr + n_dev], "test": perm[n_tr + n_dev:]}
    out = {k: (torch.as_tensor(X[v]), torch.as_tensor(y[v])) for k, v in parts.items()}
    out["unseen"] = torch.as_tensor(X[y >= 8])
    out["noise"] = torch.as_tensor(rng.uniform(0, 1, size=(300, 64)).astype(np.float32))
    return out


def mlp():
    import torch

    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: sum over equal-width confidence bins of |accuracy - confidence| x fraction."""
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs((pred[m] == y[m]).mean() - conf[m].mean())
    return float(total)


def make_update(method: str, ens, N: int, repulsion: float, seed: int):
    from particlesampling.ensemble import SGLD, SPOS, SVGD, DeepEnsemble, FunctionSpaceSVGD

    if method == "ensemble":
        return DeepEnsemble(ens)
    if method == "svgd":
        return SVGD(ens)
    if method == "fsvgd":
        return FunctionSpaceSVGD(ens, repulsion=repulsion)
    if method == "spos":
        return SPOS(ens, beta=float(N), seed=seed)
    if method == "sgld":
        return SGLD(ens, temperature=1.0 / N, seed=seed)
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def run(method: str, seed: int, *, n_particles=10, lr=5e-3, steps=3000, batch=64, eval_every=100,
        patience=5, repulsion=1.0) -> dict:
    """Train one method on one seed's split and evaluate; returns a record."""
    import torch

    import particlesampling as ps
    from particlesampling.ensemble import (CoreStepper, GaussianPrior, ParticleEnsemble, mutual_information,
                                           predictive_entropy)
    from sklearn.metrics import roc_auc_score

    t0 = time.perf_counter()
    data = load_data(seed)
    Xtr, ytr = data["train"]
    N = len(ytr)
    ens = ParticleEnsemble(mlp, n_particles, n_data=N, likelihood="categorical", prior=GaussianPrior(1.0),
                           seed=1000 * seed)
    stepper = CoreStepper(make_update(method, ens, N, repulsion, seed), ps.adagrad_momentum(lr))
    g = torch.Generator().manual_seed(seed)

    def mixture_nll(X, y):
        p = ens.predict_proba(X).mean(0)
        return float(-torch.log(p[torch.arange(len(y)), y].clamp_min(1e-12)).mean())

    best, best_x, best_step, since, taken = math.inf, None, 0, 0, 0
    perm, pos = torch.randperm(N, generator=g), 0
    for t in range(steps):
        if pos + batch > N:
            perm, pos = torch.randperm(N, generator=g), 0
        rows = perm[pos:pos + batch]
        pos += batch
        stepper.step(Xtr[rows], ytr[rows])
        taken = t + 1
        if taken % eval_every == 0:
            if not bool(torch.isfinite(ens.particles).all()):
                break
            nll = mixture_nll(*data["dev"])
            if nll < best:
                best, best_x, best_step, since = nll, ens.particles.detach().clone(), taken, 0
            else:
                since += 1
                if since >= patience:
                    break
    if best_x is not None:
        with torch.no_grad():
            ens.particles.copy_(best_x)
    Xte, yte = data["test"]
    p_test = ens.predict_proba(Xte)
    mix = p_test.mean(0).numpy()
    rec = {"method": method, "seed": seed, "repulsion": repulsion if method == "fsvgd" else None,
           "lr": lr, "n_particles": n_particles, "steps": taken, "best_step": best_step, "dev_nll": best,
           "accuracy": float((mix.argmax(1) == yte.numpy()).mean()),
           "nll": float(-np.log(np.clip(mix[np.arange(len(yte)), yte.numpy()], 1e-12, None)).mean()),
           "ece": ece(mix, yte.numpy())}
    ent_in, mi_in = predictive_entropy(p_test).numpy(), mutual_information(p_test).numpy()
    for name in ("unseen", "noise"):
        p = ens.predict_proba(data[name])
        for score, a, b in (("entropy", ent_in, predictive_entropy(p).numpy()),
                            ("mi", mi_in, mutual_information(p).numpy())):
            lab = np.r_[np.zeros(len(a)), np.ones(len(b))]
            rec[f"auroc_{score}_{name}"] = float(roc_auc_score(lab, np.r_[a, b]))
    rec["seconds"] = time.perf_counter() - t0
    return rec


def _key(r):
    return (r["method"], r["seed"], r.get("repulsion"), r["lr"], r["n_particles"], r.get("purpose", "test"))


def summarise(recs: list[dict], methods) -> dict:
    out = {}
    base = {r["seed"]: r for r in recs if r["method"] == "ensemble"}
    for m in methods:
        rs = sorted([r for r in recs if r["method"] == m], key=lambda r: r["seed"])
        if not rs:
            continue
        e = {"n_seeds": len(rs), "steps_median": float(np.median([r["steps"] for r in rs]))}
        for k in METRICS:
            v = np.array([r[k] for r in rs])
            e[k] = [float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan]
            paired = np.array([r[k] - base[r["seed"]][k] for r in rs if r["seed"] in base])
            if m != "ensemble" and len(paired) > 1:
                e[k + "_vs_ensemble"] = [float(paired.mean()), float(paired.std(ddof=1) / math.sqrt(len(paired)))]
        out[m] = e
    return out


def _pm(v, d=3):
    return "n/a" if v is None or not np.isfinite(v[0]) else (f"{v[0]:.{d}f} ± {v[1]:.{d}f}" if np.isfinite(v[1])
                                                            else f"{v[0]:.{d}f}")


def page(res: dict) -> str:
    s = res["summary"]
    L = ["# Digits: deep ensemble, SVGD, function-space SVGD, SPOS and SGLD on `ParticleEnsemble`", "",
         f"Generated by `{res['command']}`; every number below is read from "
         "`benchmarks/results/digits_ensemble.json`. The protocol is in the docstring of "
         "`benchmarks/digits_ensemble.py`: scikit-learn digits, train on classes 0-7, out-of-distribution "
         "(OOD) = the unseen digits 8 and 9, and uniform noise images; an MLP 64-64-8, "
         f"{res['config']['n_particles']} particles, the core's AdaGrad-with-momentum step "
         f"{res['config']['lr']}, early stopping on the development NLL; {res['n_seeds']} paired seeds "
         "(same split and initialisation for every method). Mean ± standard error over seeds.", "",
         f"Function-space repulsion weight `r`, chosen on the development rows of seed 0 from "
         f"{res['fs_grid']}: **{res['fs_repulsion']}** (development NLL per value: "
         + ", ".join(f"{r:g}: {v:.4f}" for r, v in res["fs_tuning"]) + ").", "",
         "| method | steps (median) | " + " | ".join(LABELS[k] for k in METRICS) + " |",
         "|---|---|" + "---|" * len(METRICS)]
    for m, e in s.items():
        L.append(f"| {m} | {e['steps_median']:.0f} | " + " | ".join(_pm(e[k]) for k in METRICS) + " |")
    L += ["", "Paired differences against the deep ensemble (method minus ensemble, same seed); a difference "
          "larger than twice its standard error is marked *:", "",
          "| method | " + " | ".join(LABELS[k] for k in METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for m, e in s.items():
        if m == "ensemble":
            continue
        cells = []
        for k in METRICS:
            d = e.get(k + "_vs_ensemble")
            if d is None:
                cells.append("n/a")
            else:
                mark = "*" if np.isfinite(d[1]) and abs(d[0]) > 2 * d[1] else ""
                cells.append(f"{d[0]:+.3f} ± {d[1]:.3f}{mark}")
        L.append(f"| {m} | " + " | ".join(cells) + " |")
    L += ["", "What the table says (generated from the numbers above):", ""]
    for k in ("auroc_mi_unseen", "auroc_entropy_unseen", "auroc_mi_noise", "nll"):
        better = max if HIGHER_IS_BETTER.get(k, True) else min
        m = better(s, key=lambda mm: s[mm][k][0])
        sig = [mm for mm in s if mm != "ensemble" and s[mm].get(k + "_vs_ensemble")
               and np.isfinite(s[mm][k + "_vs_ensemble"][1])
               and abs(s[mm][k + "_vs_ensemble"][0]) > 2 * s[mm][k + "_vs_ensemble"][1]]
        L.append(f"- {LABELS[k]}: best mean {m} ({_pm(s[m][k])}); differing from the deep ensemble by more "
                 f"than two paired standard errors: {', '.join(sig) if sig else 'none'}.")
    L += ["", "![digits](img/digits_ensemble.png)", ""]
    return "\n".join(L)


def figure(res: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = res["summary"]
    keys = ("accuracy", "nll", "ece", "auroc_entropy_unseen", "auroc_mi_unseen", "auroc_mi_noise")
    fig, axes = plt.subplots(1, len(keys), figsize=(3.0 * len(keys), 3.0))
    ms = list(s)
    for ax, k in zip(axes, keys):
        means = [s[m][k][0] for m in ms]
        ses = [s[m][k][1] if np.isfinite(s[m][k][1]) else 0 for m in ms]
        ax.errorbar(range(len(ms)), means, yerr=[2 * e for e in ses], fmt="o", capsize=3)
        ax.set_xticks(range(len(ms)), ms, rotation=45, fontsize=8)
        ax.set_title(LABELS[k], fontsize=9)
    fig.suptitle("digits, train 0-7: mean ± 2 SE over paired seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--particles", type=int, default=10)
    ap.add_argument("--fs-grid", default="1,10,100,1000")
    ap.add_argument("--quick", action="store_true", help="200 steps, into a temporary directory")
    ap.add_argument("--out", default=None)
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    argv_s = " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    command = f"python benchmarks/digits_ensemble.py {argv_s}".strip()
    out = Path(a.out) if a.out else (Path(tempfile.mkdtemp()) if a.quick else ROOT)
    cache = (out / "cache" if a.quick else ROOT / "out" / "digits") / "runs.jsonl"
    cache.parent.mkdir(parents=True, exist_ok=True)
    steps = 200 if a.quick else a.steps
    recs = [json.loads(x) for x in cache.read_text().splitlines()] if cache.is_file() else []
    opts = dict(n_particles=a.particles, lr=a.lr, steps=steps)

    def get(method, seed, repulsion=1.0, purpose="test"):
        key = (method, seed, repulsion if method == "fsvgd" else None, a.lr, a.particles, purpose)
        for r in recs:
            if _key(r) == key and r.get("steps_max", steps) == steps:
                return r
        if a.report_only:
            return None
        r = run(method, seed, repulsion=repulsion, **opts)
        r["purpose"], r["steps_max"] = purpose, steps
        recs.append(r)
        with open(cache, "a") as f:
            f.write(json.dumps(r) + "\n")
        print(f"{method:8s} seed {seed} r {repulsion:g} acc {r['accuracy']:.3f} nll {r['nll']:.3f} "
              f"auroc_mi_unseen {r['auroc_mi_unseen']:.3f} steps {r['steps']} ({r['seconds']:.0f} s)", flush=True)
        return r

    grid = [float(x) for x in a.fs_grid.split(",") if x]
    methods = [m for m in a.methods.split(",") if m]
    tuning = []
    if "fsvgd" in methods:
        for r_ in grid:  # seed 0's development rows choose the repulsion weight
            rec = get("fsvgd", 0, r_, purpose="tune")
            if rec is not None:
                tuning.append((r_, rec["dev_nll"]))
    fs_r = min(tuning, key=lambda t: t[1])[0] if tuning else grid[0]
    final = []
    for seed in range(a.seeds):
        for m in methods:
            rec = get(m, seed, fs_r, purpose="tune" if (m == "fsvgd" and seed == 0) else "test")
            if rec is not None:
                final.append(rec)
    res = {"command": command, "config": opts, "n_seeds": a.seeds, "methods": methods, "fs_grid": grid,
           "fs_tuning": tuning, "fs_repulsion": fs_r, "summary": summarise(final, methods), "runs": final}
    (out / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (out / "docs" / "img").mkdir(parents=True, exist_ok=True)
    (out / "benchmarks" / "results" / "digits_ensemble.json").write_text(json.dumps(res, indent=1) + "\n")
    figure(res, out / "docs" / "img" / "digits_ensemble.png")
    (out / "docs" / "digits_ensemble.md").write_text(page(res))
    print(f"wrote {out / 'docs' / 'digits_ensemble.md'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
