"""Results (``attention.json``) and report (``attention_study.md`` + plots), generated from the records only."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from . import plan as study_plan
from . import spaces_study, strong_repulsion
from .records import load_records
from .data import load_dataset
from .methods import METHODS
from .models import DEFAULT_HEADS

__all__ = ["write_report", "paired", "build_results"]

SE_MULTIPLE = 2.0  # a difference is called only beyond this many standard errors
METRICS = (("accuracy", +1), ("nll", -1), ("ece", -1))  # (name, sign of "better")


def _mean(xs):
    return float(np.mean(xs)) if len(xs) else float("nan")


def paired(a: Dict[int, float], b: Dict[int, float], better: int = +1) -> Dict:
    """Mean of ``a - b`` over the seeds both have, its standard error and the verdict (2 SE rule)."""
    seeds = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in seeds], dtype=float)
    n = len(d)
    if n < 2:
        return {"n": n, "mean": float(d.mean()) if n else float("nan"), "se": float("nan"), "verdict": "too few seeds"}
    mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(n))
    if abs(mean) > SE_MULTIPLE * se and se >= 0:
        verdict = "better" if mean * better > 0 else "worse"
    else:
        verdict = "no detectable difference"
    return {"n": n, "mean": mean, "se": se, "verdict": verdict}


def _layer_mean(div: Dict[str, Dict[str, float]], key: str) -> float:
    """Mean over attention modules of one diversity entry (``param_cos`` = mean over roles)."""
    vals = []
    for d in div.values():
        if key == "param_cos":
            v = [x for k, x in d.items() if k.startswith("param_cos_")]
            if v:
                vals.append(float(np.mean(v)))
        elif key in d:
            vals.append(d[key])
    return _mean(vals)


DIVERSITY_KEYS = ("param_cos", "output_cos", "map_js", "lin")


def _summarise_runs(runs: List[dict]) -> Dict:
    by_seed = {r["config"]["seed"]: r for r in runs}
    seeds = sorted(by_seed)
    out = {"seeds": seeds}
    for split in ("test", "dev"):
        for m, _ in METRICS:
            out[f"{split}_{m}"] = [by_seed[s][split][m] for s in seeds]
    out["seconds_per_step"] = [by_seed[s]["seconds_per_step"] for s in seeds]
    for when in ("start", "end"):
        out[f"diversity_{when}"] = {k: [_layer_mean(by_seed[s][f"diversity_{when}"], k) for s in seeds]
                                    for k in DIVERSITY_KEYS}
        out[f"diversity_{when}_per_layer"] = [by_seed[s][f"diversity_{when}"] for s in seeds]
    if all("pruning" in by_seed[s] for s in seeds):
        out["pruning"] = [[{"k": p["k"], "accuracy": p["accuracy"]} for p in by_seed[s]["pruning"]] for s in seeds]
    if all("track" in by_seed[s] for s in seeds):
        out["track"] = [[{"step": t["step"], "dev_accuracy": t["dev_accuracy"],
                          **{k: _layer_mean(t["diversity"], k) for k in DIVERSITY_KEYS}} for t in by_seed[s]["track"]]
                        for s in seeds]
    return out


def _by_seed(runs, split, metric):
    return {r["config"]["seed"]: r[split][metric] for r in runs}


def _compare(runs: List[dict], base: List[dict]) -> Dict:
    out = {m: paired(_by_seed(runs, "test", m), _by_seed(base, "test", m), better) for m, better in METRICS}
    out["seconds_ratio"] = _mean([r["seconds_per_step"] for r in runs]) / _mean([r["seconds_per_step"] for r in base]) \
        if base else float("nan")
    return out


def _gain_difference(r_a, b_a, r_b, b_b) -> Dict:
    """Paired over seeds: (method − baseline) under condition a minus the same under condition b (test accuracy).

    Positive: the method gains more under a. Called only beyond ``SE_MULTIPLE`` standard errors.
    """
    def gain(runs, base):
        r, b = _by_seed(runs, "test", "accuracy"), _by_seed(base, "test", "accuracy")
        return {s: r[s] - b[s] for s in set(r) & set(b)}

    return paired(gain(r_a, b_a), gain(r_b, b_b), +1)


class _Index:
    def __init__(self, records: Dict[str, dict], plan):
        self.records, self.plan = records, plan

    def runs(self, dataset, model, method, value, **extra) -> List[dict]:
        out = []
        for s in self.plan.seeds:
            cfg = self.plan.config(dataset, model, method, value, s, **extra)
            if cfg.key() in self.records:
                out.append(self.records[cfg.key()])
        return out


def build_results(records: Dict[str, dict], plan) -> Dict:
    idx = _Index(records, plan)
    res = {"protocol": {"steps": plan.steps, "batch": plan.batch, "seeds": list(plan.seeds),
                        "tune_seed": plan.tune_seed, "se_multiple": SE_MULTIPLE, "max_len": 48,
                        "question_dataset": plan.question_dataset},
           "tuning": [], "comparisons": [], "questions": {}}
    arms = [("transformer", m) for m in ("baseline",) + study_plan.CORE_METHODS + study_plan.ALTERNATIVES]
    arms += [("self_attentive", m) for m in ("baseline",) + study_plan.CORE_METHODS + study_plan.ALTERNATIVES]
    for dataset in plan.datasets:
        for model, method in arms + [("minilm", m) for m in ("baseline", "svgd", "spos")]:
            spec = METHODS[method]
            if model not in spec.models:
                continue
            value = None
            if model == "minilm" and spec.knob:
                value = 0.01
            elif spec.knob:
                trials = plan.trials(dataset, model, method)
                value = study_plan.choose(records, trials)
                got = [records.get(t.key()) for t in trials]
                res["tuning"].append({"dataset": dataset, "model": model, "method": method, "knob": spec.knob,
                                      "trials": [{"value": t.value, "dev_accuracy": g["dev"]["accuracy"],
                                                  "dev_nll": g["dev"]["nll"]} for t, g in zip(trials, got) if g],
                                      "chosen": value})
                if value is None:
                    continue
            runs = idx.runs(dataset, model, method, value)
            if not runs:
                continue
            base = idx.runs(dataset, model, "baseline", None)
            entry = {"dataset": dataset, "model": model, "method": method, "knob": spec.knob, "value": value,
                     **_summarise_runs(runs)}
            if method != "baseline":
                entry["vs_baseline"] = _compare(runs, base)
            res["comparisons"].append(entry)
    res["questions"] = _questions(records, plan, idx)
    return res


def _questions(records, plan, idx) -> Dict:
    ds, model = plan.question_dataset, "transformer"
    alpha = study_plan.choose(records, plan.trials(ds, model, "svgd"))
    out: Dict[str, Dict] = {}
    if alpha is None:
        return out
    h0 = DEFAULT_HEADS[model]

    def cell(method, value, **kw):
        runs = idx.runs(ds, model, method, value, **kw)
        return runs, (_summarise_runs(runs) if runs else None)

    q = {"alpha": alpha, "cells": []}
    arms_by_dropout = {}
    for p in (0.0, 0.1):
        b, bs = cell("baseline", None, dropout=p)
        r, rs = cell("svgd", alpha, dropout=p)
        arms_by_dropout[p] = (r, b)
        q["cells"].append({"dropout": p, "baseline": bs, "svgd": rs, "svgd_vs_baseline": _compare(r, b) if r and b else None})
    (r0, b0), (r1, b1) = arms_by_dropout[0.0], arms_by_dropout[0.1]
    if r0 and b0 and r1 and b1:
        q["gain_without_minus_with_dropout"] = _gain_difference(r0, b0, r1, b1)
    out["dropout"] = q

    half = plan.steps[model] // 2
    te = plan.track_every
    late = {"alpha": alpha, "switch_step": half}
    for name, (m, v, kw) in {"baseline": ("baseline", None, {}), "svgd": ("svgd", alpha, {}),
                             "svgd_late": ("svgd", alpha, {"repulsion_from": half})}.items():
        runs, s = cell(m, v, track_every=te, **kw)
        late[name] = s
        late[f"{name}_runs"] = runs
    if late["svgd_late_runs"] and late["svgd_runs"]:
        late["late_vs_svgd"] = _compare(late["svgd_late_runs"], late["svgd_runs"])
    if late["svgd_late_runs"] and late["baseline_runs"]:
        late["late_vs_baseline"] = _compare(late["svgd_late_runs"], late["baseline_runs"])
        late["late_output_cos_end_vs_baseline"] = paired(
            {r["config"]["seed"]: _layer_mean(r["diversity_end"], "output_cos") for r in late["svgd_late_runs"]},
            {r["config"]["seed"]: _layer_mean(r["diversity_end"], "output_cos") for r in late["baseline_runs"]}, -1)
    track = (late.get("baseline") or {}).get("track")
    if track:
        at = [t["output_cos"] for tr in track for t in tr if t["step"] == half]
        first = [tr[0]["output_cos"] for tr in track if tr]
        if at:
            late["switch_output_cos"], late["start_output_cos"] = _mean(at), _mean(first)
    for k in [k for k in late if k.endswith("_runs")]:
        del late[k]
    out["late"] = late

    heads = {"alpha": alpha, "default_heads": h0, "cells": []}
    default_baseline, _ = cell("baseline", None, heads=h0)
    for h in plan.head_counts:
        b, bs = cell("baseline", None, heads=h)
        r, rs = cell("svgd", alpha, heads=h)
        heads["cells"].append({"heads": h, "baseline": bs, "svgd": rs, "svgd_vs_baseline": _compare(r, b) if r and b else None,
                               "baseline_vs_default_heads": (_compare(b, default_baseline)
                                                             if b and default_baseline and h != h0 else None)})
    out["heads"] = heads

    strength = {"cells": []}
    b, _ = cell("baseline", None, heads=h0)
    for a in plan.strengths:
        r, rs = cell("svgd", a)
        strength["cells"].append({"alpha": a, "svgd": rs, "svgd_vs_baseline": _compare(r, b) if r and b else None})
    out["strength"] = strength

    data = {"alpha": alpha, "cells": [], "gain_smallest_minus_full_fraction": {}}
    arms_by_cell = {}
    for f in plan.fractions:
        for h in plan.data_heads:
            b, bs = cell("baseline", None, heads=h, train_fraction=f)
            r, rs = cell("svgd", alpha, heads=h, train_fraction=f)
            arms_by_cell[(f, h)] = (r, b)
            data["cells"].append({"fraction": f, "heads": h, "baseline": bs, "svgd": rs,
                                  "svgd_vs_baseline": _compare(r, b) if r and b else None})
    smallest, full = min(plan.fractions), max(plan.fractions)
    for h in plan.data_heads:
        (rs_, bs_), (rf, bf) = arms_by_cell[(smallest, h)], arms_by_cell[(full, h)]
        if smallest < full and rs_ and bs_ and rf and bf:
            data["gain_smallest_minus_full_fraction"][str(h)] = _gain_difference(rs_, bs_, rf, bf)
    if len(plan.data_heads) > 1:
        lo, hi = min(plan.data_heads), max(plan.data_heads)
        data["fewer_heads_baseline"] = {}
        for f in plan.fractions:
            b_lo, b_hi = arms_by_cell[(f, lo)][1], arms_by_cell[(f, hi)][1]
            if b_lo and b_hi:
                data["fewer_heads_baseline"][format(f, "g")] = _compare(b_lo, b_hi)["accuracy"]
        data["fewer_heads"], data["more_heads"] = lo, hi
    out["data"] = data

    matched = {"cells": []}
    for a in plan.matched_alphas:
        w = study_plan.matched_penalty_weight(a, h0)
        r, rs = cell("svgd", a)
        p, ps_ = cell("penalty", w)
        matched["cells"].append({"alpha": a, "penalty_weight": w, "svgd": rs, "penalty": ps_,
                                 "svgd_vs_penalty": _compare(r, p) if r and p else None,
                                 "svgd_vs_baseline": _compare(r, b) if r and b else None,
                                 "penalty_vs_baseline": _compare(p, b) if p and b else None})
    out["penalty_matched"] = matched
    return out


# ---------------------------------------------------------------------------------------------
# the report

def _pm(xs, digits=4) -> str:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{np.mean(xs):.{digits}f} ± {np.std(xs, ddof=1):.{digits}f}"


def _diff(c: Optional[Dict], scale=100.0, unit=" pt", digits: int = 2) -> str:
    if not c:
        return "–"
    if c["n"] < 2:
        return f"n={c['n']}"
    mark = {"better": " ▲", "worse": " ▼"}.get(c["verdict"], "")
    return f"{c['mean'] * scale:+.{digits}f} ± {c['se'] * scale:.{digits}f}{unit} (n={c['n']}){mark}"


def two_head_kernel() -> float:
    """The kernel value between two heads under the An2020 preset's bandwidth (``"an2020"``: the
    lower median of all ``M^2`` squared distances, diagonal zeros included), computed by the library
    on two random heads: with ``M = 2`` that median is 0, the bandwidth sits at its floor and the
    kernel between the heads vanishes, so SVGD applies no repulsion there."""
    import torch

    import particlesampling as ps

    heads = torch.randn(2, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return float(ps.stein_direction_with_info(heads, heads, bandwidth="an2020")[1].mean_kernel)


def _verdict_word(c: Optional[Dict], subject: str, reference: str) -> str:
    if not c or c["n"] < 2:
        return f"{subject} vs {reference}: not enough paired seeds yet"
    if c["verdict"] == "no detectable difference":
        return (f"{subject} vs {reference}: no detectable difference in test accuracy "
                f"({c['mean'] * 100:+.2f} ± {c['se'] * 100:.2f} points, n={c['n']})")
    return (f"{subject} is {c['verdict']} than {reference} in test accuracy "
            f"({c['mean'] * 100:+.2f} ± {c['se'] * 100:.2f} points, n={c['n']}, beyond {SE_MULTIPLE:g} SE)")


def _acc(cell: Dict, key: str) -> Optional[Dict]:
    comp = cell.get(key)
    return comp["accuracy"] if comp else None


def _called(c: Optional[Dict], verdict: str) -> bool:
    return bool(c) and c["n"] >= 2 and c["verdict"] == verdict


QUESTION_TITLES = (("dropout", "Does repulsion still help when dropout regularises?"),
                   ("late", "Repulsion switched on mid-training"),
                   ("heads", "How many heads?"),
                   ("strength", "Sensitivity to the repulsion weight"),
                   ("data", "Less data"),
                   ("penalty_matched", "Gradient rewriting against the penalty at matched strength"))


def _called_by_arm(results: Dict) -> Dict:
    """Per (data set, model): the methods whose test accuracy differs from the baseline beyond the rule."""
    out: Dict = {}
    for e in results["comparisons"]:
        out.setdefault((e["dataset"], e["model"]), [])
        c = (e.get("vs_baseline") or {}).get("accuracy")
        if e["method"] != "baseline" and (_called(c, "better") or _called(c, "worse")):
            out[(e["dataset"], e["model"])].append(f"{e['method']} {c['verdict']} ({_diff(c)})")
    return out


def _two_heads_note() -> str:
    return (f"2 heads: the kernel between two heads under the An2020 bandwidth is {two_head_kernel():.3g} "
            "(the lower median of the M^2 = 4 squared distances is a diagonal zero, so the bandwidth sits at "
            "its floor): SVGD applies no repulsion there, its gradient is the baseline's divided by M, which "
            "Adam undoes up to its epsilon and the gradient clipping, so the 2-head SVGD rows compare the "
            "baseline with itself")


def _question_verdicts(name: str, q: Dict) -> List[str]:
    """One sentence per comparison of an open question, then the answer they add up to (all from the records)."""
    out: List[str] = []
    cells = q.get("cells", [])
    if name == "dropout":
        for c in cells:
            out.append(f"dropout {c['dropout']:g}: " + _verdict_word(_acc(c, "svgd_vs_baseline"), "SVGD", "the baseline"))
        g = q.get("gain_without_minus_with_dropout")
        if g:
            out.append(f"SVGD's gain without dropout minus its gain with dropout: {_diff(g)}"
                       + (" (the effect of repulsion does not detectably depend on dropout)"
                          if g["verdict"] == "no detectable difference" else ""))
        with_dropout = next((_acc(c, "svgd_vs_baseline") for c in cells if c["dropout"] > 0), None)
        if with_dropout and with_dropout["n"] >= 2:
            out.append("Answer: " + {"better": "yes, repulsion still helps when dropout is on",
                                     "worse": "no, with dropout on repulsion lowers test accuracy",
                                     "no detectable difference": "with dropout on, repulsion makes no detectable "
                                                                 "difference to test accuracy"}[with_dropout["verdict"]]
                       + ".")
    elif name == "late":
        lv, ls = q.get("late_vs_baseline"), q.get("late_vs_svgd")
        if q.get("switch_output_cos") is not None:
            out.append(f"baseline head-output cosine at the switch (step {q['switch_step']}): "
                       f"{q['switch_output_cos']:.3f}; at the start of training {q['start_output_cos']:.3f}")
        if lv:
            out.append(_verdict_word(lv["accuracy"], "late SVGD", "the baseline"))
        if ls:
            out.append(_verdict_word(ls["accuracy"], "late SVGD", "SVGD from the start"))
        cos = q.get("late_output_cos_end_vs_baseline")
        if cos and cos["n"] >= 2:
            apart = {"better": "pulls the heads apart (lower head-output cosine than the baseline at the end, "
                               f"{_diff(cos, 1, '', 3)})",
                     "worse": f"leaves the heads more alike than the baseline ({_diff(cos, 1, '', 3)})",
                     "no detectable difference": "does not detectably change the heads' output similarity "
                                                 f"({_diff(cos, 1, '', 3)})"}[cos["verdict"]]
            follows = ("and accuracy follows" if _called(lv and lv["accuracy"], "better") else
                       "but accuracy does not follow detectably" if cos["verdict"] == "better" else
                       "and accuracy does not change detectably")
            out.append(f"Answer: repulsion switched on mid-training {apart}, {follows}.")
    elif name == "heads":
        h0 = q.get("default_heads")
        for c in cells:
            parts = []
            if c.get("svgd_vs_baseline"):
                parts.append(_verdict_word(_acc(c, "svgd_vs_baseline"), "SVGD", "the baseline"))
            if c.get("baseline_vs_default_heads"):
                parts.append(_verdict_word(_acc(c, "baseline_vs_default_heads"), "the baseline",
                                           f"the {h0}-head baseline"))
            if parts:
                out.append(f"{c['heads']} head(s): " + "; ".join(parts))
        helped = [c["heads"] for c in cells if _called(_acc(c, "svgd_vs_baseline"), "better")]
        hurt = [c["heads"] for c in cells if _called(_acc(c, "svgd_vs_baseline"), "worse")]
        enough = [c["heads"] for c in cells if c.get("baseline_vs_default_heads")
                  and _acc(c, "baseline_vs_default_heads")["n"] >= 2
                  and _acc(c, "baseline_vs_default_heads")["verdict"] != "worse"]
        if any(c["heads"] == 2 and c.get("svgd") for c in cells):
            out.append(_two_heads_note())
        if any(c.get("svgd_vs_baseline") for c in cells):
            out.append("Answer: repulsion " + (f"helps at {helped} heads" if helped else "helps at no head count")
                       + (f", hurts at {hurt}" if hurt else "") + "; the smallest head count whose baseline is not "
                       f"detectably worse than {h0} heads: {min(enough) if enough else h0}.")
    elif name == "strength":
        for c in cells:
            if c.get("svgd_vs_baseline"):
                out.append(f"alpha {c['alpha']:g}: " + _verdict_word(_acc(c, "svgd_vs_baseline"), "SVGD", "the baseline"))
        helped = [c["alpha"] for c in cells if _called(_acc(c, "svgd_vs_baseline"), "better")]
        hurt = [c["alpha"] for c in cells if _called(_acc(c, "svgd_vs_baseline"), "worse")]
        cos = [(c["alpha"], float(np.mean(c["svgd"]["diversity_end"]["output_cos"]))) for c in cells if c.get("svgd")]
        if cos:
            out.append("head-output cosine at the end by alpha: " + ", ".join(f"{a:g}: {v:.3f}" for a, v in cos))
        if any(c.get("svgd_vs_baseline") for c in cells):
            out.append("Answer: " + (f"accuracy improves at alpha in {helped}" if helped else
                                     "no alpha detectably improves accuracy")
                       + (f", and drops at alpha in {hurt}" if hurt else "") + ".")
    elif name == "data":
        for c in cells:
            if c.get("svgd_vs_baseline"):
                out.append(f"fraction {c['fraction']:g}, {c['heads']} heads: "
                           + _verdict_word(_acc(c, "svgd_vs_baseline"), "SVGD", "the baseline"))
        for h, g in q.get("gain_smallest_minus_full_fraction", {}).items():
            out.append(f"{h} heads: SVGD's gain at the smallest fraction minus its gain on the full set: {_diff(g)}")
        for f, c in q.get("fewer_heads_baseline", {}).items():
            out.append(f"fraction {f}: " + _verdict_word(c, f"the {q['fewer_heads']}-head baseline",
                                                         f"the {q['more_heads']}-head baseline"))
        if any(c["heads"] == 2 and c.get("svgd") for c in cells):
            out.append(_two_heads_note())
        gains = q.get("gain_smallest_minus_full_fraction", {})
        if gains:
            more = [h for h, g in gains.items() if _called(g, "better")]
            out.append("Answer: repulsion " + (f"matters more with less data at {more} heads" if more else
                                               "does not matter detectably more with less data") + ".")
    elif name == "penalty_matched":
        for c in cells:
            if c.get("svgd_vs_penalty"):
                out.append(f"alpha {c['alpha']:g} (penalty weight {c['penalty_weight']:g}): "
                           + _verdict_word(_acc(c, "svgd_vs_penalty"), "SVGD", "the penalty"))
        comps = [_acc(c, "svgd_vs_penalty") for c in cells if c.get("svgd_vs_penalty")]
        if comps:
            better = [c["alpha"] for c in cells if _called(_acc(c, "svgd_vs_penalty"), "better")]
            worse = [c["alpha"] for c in cells if _called(_acc(c, "svgd_vs_penalty"), "worse")]
            out.append("Answer: " + ("gradient rewriting beats the penalty at alpha in " + str(better) if better else
                                     "gradient rewriting is not detectably better than the penalty at matched strength")
                       + (f"; it is worse at alpha in {worse}" if worse else "") + ".")
    return out


def _plots(results: Dict, images: Path) -> Dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images.mkdir(parents=True, exist_ok=True)
    made: Dict[str, str] = {}

    def save(fig, name):
        path = images / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)
        made[name] = path.name

    # pruning curves per data set x model
    groups = defaultdict(list)
    for e in results["comparisons"]:
        if "pruning" in e:
            groups[(e["dataset"], e["model"])].append(e)
    for (ds, model), entries in groups.items():
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for e in entries:
            ks = [p["k"] for p in e["pruning"][0]]
            acc = np.mean([[p["accuracy"] for p in curve] for curve in e["pruning"]], axis=0)
            base = np.mean(e["test_accuracy"])
            ax.plot([0] + ks, [base] + list(acc), marker="o", ms=3, label=e["method"])
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("heads pruned (least important first)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{ds} / {model}: pruning (mean over seeds)", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
        save(fig, f"pruning_{ds}_{model}")

    q = results.get("questions", {})
    late = q.get("late")
    if late and late.get("baseline") and late.get("baseline", {}).get("track"):
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
        for name in ("baseline", "svgd", "svgd_late"):
            s = late.get(name)
            if not s or "track" not in s:
                continue
            steps = [t["step"] for t in s["track"][0]]
            for ax, key in zip(axes, ("dev_accuracy", "output_cos")):
                vals = np.mean([[t[key] for t in tr] for tr in s["track"]], axis=0)
                ax.plot(steps, vals, label=name)
        for ax, lab in zip(axes, ("dev accuracy", "head-output cosine (mean over layers)")):
            ax.axvline(late["switch_step"], color="grey", ls=":")
            ax.set_xlabel("step")
            ax.set_ylabel(lab)
        axes[0].legend(fontsize=7)
        save(fig, "late_repulsion")

    def cells_plot(name, cells, xkey, xlabel, logx=False):
        rows = [c for c in cells if c.get("svgd")]
        if not rows:
            return
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
        for arm in ("baseline", "svgd", "penalty"):
            pts = [(c[xkey], c[arm]) for c in rows if c.get(arm)]
            if not pts:
                continue
            x = [p[0] for p in pts]
            axes[0].errorbar(x, [np.mean(p[1]["test_accuracy"]) for p in pts],
                             yerr=[np.std(p[1]["test_accuracy"], ddof=1) if len(p[1]["test_accuracy"]) > 1 else 0
                                   for p in pts], marker="o", ms=3, capsize=2, label=arm)
            axes[1].plot(x, [np.mean(p[1]["diversity_end"]["output_cos"]) for p in pts], marker="o", ms=3, label=arm)
        for ax, lab in zip(axes, ("test accuracy (mean ± sd)", "head-output cosine at the end")):
            ax.set_xlabel(xlabel)
            ax.set_ylabel(lab)
            if logx:
                ax.set_xscale("log", base=2 if xkey == "heads" else 10)
        axes[0].legend(fontsize=7)
        save(fig, name)

    if q.get("heads"):
        cells_plot("heads", q["heads"]["cells"], "heads", "heads per layer (width 128)", logx=True)
    if q.get("strength"):
        cells_plot("strength", q["strength"]["cells"], "alpha", "repulsion weight alpha", logx=True)
    if q.get("penalty_matched"):
        cells_plot("penalty_matched", q["penalty_matched"]["cells"], "alpha", "alpha (penalty at matched weight)",
                   logx=True)
    if q.get("dropout"):
        cells_plot("dropout", q["dropout"]["cells"], "dropout", "dropout")
    if results.get("strong_repulsion"):
        strong_repulsion.plot(results["strong_repulsion"], save)
    if results.get("spaces"):
        spaces_study.plot(results["spaces"], save)
    if q.get("data") and q["data"]["cells"]:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for h in sorted({c["heads"] for c in q["data"]["cells"]}):
            for arm, ls in (("baseline", "--"), ("svgd", "-")):
                pts = [(c["fraction"], c[arm]) for c in q["data"]["cells"] if c["heads"] == h and c.get(arm)]
                if pts:
                    ax.plot([p[0] for p in pts], [np.mean(p[1]["test_accuracy"]) for p in pts], ls, marker="o",
                            ms=3, label=f"{arm}, {h} heads")
        ax.set_xscale("log")
        ax.set_xlabel("fraction of the training set")
        ax.set_ylabel("test accuracy (mean)")
        ax.legend(fontsize=7)
        save(fig, "data_fraction")
    return made


def _markdown(results: Dict, data_info: Dict, images: Dict[str, str], image_dir: str, quick: bool, n_records: int,
              wall_hours: float, plan=None) -> str:
    P = results["protocol"]
    L: List[str] = []
    a = L.append
    a("# Repulsive attention on real text" + (" (quick mode: tiny sizes, not a result)" if quick else ""))
    a("")
    a("Generated by `python benchmarks/run_attention_study.py` from the records of finished runs "
      f"(`benchmarks/results/attention_runs.jsonl`, {n_records} runs, {wall_hours:.1f} h of single-thread "
      "training in all); every figure below is computed from those records. Re-run the command to resume "
      "the study; `--report-only` rebuilds this page.")
    a("")
    pending = results.get("pending", 0)
    a(f"**Status: {n_records} runs recorded, {pending} runs still to make"
      + (" (more appear once pending tuning trials finish)." if pending else "; the study is complete.") + "**")
    a("")
    a("## Summary")
    a("")
    a(f"Accuracy differences called beyond {P['se_multiple']:g} standard errors (paired by seed); every other "
      "method-model-data combination shows no detectable difference from its baseline.")
    a("")
    for (ds, model), called in _called_by_arm(results).items():
        a(f"- {ds} / {model}: " + ("; ".join(called) if called else "no method differs detectably from the baseline")
          + ".")
    q = results.get("questions", {})
    for name, title in QUESTION_TITLES:
        answer = [v for v in _question_verdicts(name, q[name]) if v.startswith("Answer: ")] if name in q else []
        if answer:
            a(f"- {title}{'' if title.endswith('?') else ':'} {answer[-1][len('Answer: '):]}")
    sr = results.get("strong_repulsion")
    if sr:
        answer = [v for v in strong_repulsion.verdicts(sr) if v.startswith("Answer: ")]
        if answer:
            a(f"- The SPOS posterior mode with strong repulsion (its section below): {answer[-1][len('Answer: '):]}")
    if results.get("spaces"):
        answer = [v for v in spaces_study.verdicts(results["spaces"]) if v.startswith("Answer: ")]
        a(f"- Repulsion in circuit or function space instead of weight space (section \"Particle spaces head to "
          f"head\"): {answer[-1][len('Answer: '):]}")
    a("")
    a("## Protocol")
    a("")
    a("- Data (fixed stratified 80/10/10 splits; see `benchmarks/attention/data.py`):")
    for name, info in data_info.items():
        a(f"  - `{name}`: {info['sizes']['train']} train / {info['sizes']['dev']} dev / {info['sizes']['test']} test, "
          f"{len(info['classes'])} classes; {info['source']}.")
    a(f"- Models and budgets: the small transformer (2 layers, width 128, 8 heads, from scratch) and Lin et al.'s "
      f"self-attentive encoder (BiLSTM, 30 hops) take {P['steps'].get('transformer')} AdamW steps of "
      f"{P['batch'].get('transformer')} sentences; MiniLM (pretrained, 6 x 12 heads) takes {P['steps'].get('minilm')} "
      f"steps of {P['batch'].get('minilm')}; sentences cut at {P['max_len']} tokens; linear warm-up (10 %) and decay; "
      "gradient clipping at 1 after the adapter. The final model is evaluated (no early stopping).")
    a(f"- Seeds {P['seeds']} for every reported configuration; a seed fixes the initialisation, the data order, "
      "dropout and the SPOS noise, so methods are paired by seed. A difference is the mean over seeds of "
      f"(method − baseline) ± its standard error; it is called (▲ better, ▼ worse) only beyond {P['se_multiple']:g} SE, "
      "otherwise there is no detectable difference.")
    a(f"- Tuning: each method's one knob has three candidate values, picked on dev accuracy with seed "
      f"{P['tune_seed']} (never reported); the baseline has no knob; on MiniLM nothing is tuned (the paper's alpha = 0.01).")
    a("- Metrics: test accuracy, negative log-likelihood (nats), expected calibration error (15 bins); head diversity "
      "on 64 dev sentences at the start and the end (mean over layers of the mean off-diagonal cosine between head "
      "parameters, between head outputs, and the Jensen–Shannon divergence between attention maps); accuracy "
      "after pruning the k least important heads (Michel et al. 2019 importance on dev); median seconds per "
      "training step (single thread). The time ratios compare runs made at different times on a shared "
      "2-core machine whose load varied (other work ran beside the study), so they are rough; the adapter's own "
      "cost measured side by side is in `benchmarks/results/adapter_overhead.md`.")
    a("")
    a("## Methods against the baseline")
    a("")
    groups = defaultdict(list)
    for e in results["comparisons"]:
        groups[(e["dataset"], e["model"])].append(e)
    for (ds, model), entries in groups.items():
        a(f"### {ds} / {model}")
        a("")
        a("| method | knob | seeds | test accuracy | Δ accuracy | Δ NLL | Δ ECE | head-output cos start → end | "
          "map JS start → end | param cos end | accuracy, 4 heads pruned | time/step vs baseline |")
        a("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for e in entries:
            vs = e.get("vs_baseline")
            knob = f"{e['knob']}={e['value']:g}" if e["knob"] else "–"
            pr = "–"
            if "pruning" in e:
                at4 = [p["accuracy"] for curve in e["pruning"] for p in curve if p["k"] == 4]
                pr = _pm(at4)
            a(f"| {e['method']} | {knob} | {len(e['seeds'])} | {_pm(e['test_accuracy'])} | "
              f"{_diff(vs and vs['accuracy'])} | {_diff(vs and vs['nll'], 1, '')} | {_diff(vs and vs['ece'], 1, '')} | "
              f"{_pm(e['diversity_start']['output_cos'], 3)} → {_pm(e['diversity_end']['output_cos'], 3)} | "
              f"{_pm(e['diversity_start']['map_js'], 3)} → {_pm(e['diversity_end']['map_js'], 3)} | "
              f"{_pm(e['diversity_end']['param_cos'], 3)} | {pr} | "
              f"{(vs['seconds_ratio'] if vs else 1.0):.2f}x |")
        a("")
        if f"pruning_{ds}_{model}" in images:
            a(f"![pruning curves]({image_dir}/{images[f'pruning_{ds}_{model}']})")
            a("")
    a("### Verdicts")
    a("")
    a("Each with what the diversity metrics show (mean over seeds and layers, at the end of training): the "
      "head-output cosine (lower: heads that output less alike) and the attention-map Jensen-Shannon divergence "
      "(higher: heads that attend differently), against the baseline's.")
    a("")
    baselines = {(e["dataset"], e["model"]): e for e in results["comparisons"] if e["method"] == "baseline"}
    for e in results["comparisons"]:
        if e["method"] != "baseline":
            base = baselines.get((e["dataset"], e["model"]))
            div = ""
            if base:
                div = (f"; head-output cosine {np.mean(e['diversity_end']['output_cos']):.3f} against "
                       f"{np.mean(base['diversity_end']['output_cos']):.3f}, map JS "
                       f"{np.mean(e['diversity_end']['map_js']):.3f} against {np.mean(base['diversity_end']['map_js']):.3f}")
            a(f"- {e['dataset']} / {e['model']}: " + _verdict_word(e.get("vs_baseline", {}).get("accuracy"),
                                                                 e["method"], "the baseline") + div + ".")
    a("")
    a("### Wall time")
    a("")
    a("Single-thread wall time of the recorded runs (two runs at a time on the 2-core machine), per part of the "
      "study: tuning trials (seed " + f"{P['tune_seed']}" + "), and the reported runs.")
    a("")
    a("| data | model | purpose | runs | hours |")
    a("|---|---|---|---|---|")
    for row in results.get("wall_time", []):
        a(f"| {row['dataset']} | {row['model']} | {row['purpose']} | {row['runs']} | {row['hours']:.2f} |")
    a("")
    a("### Tuning trials (dev accuracy)")
    a("")
    a("| data | model | method | trials | chosen |")
    a("|---|---|---|---|---|")
    for t in results["tuning"]:
        trials = ", ".join(f"{x['value']:g}: {x['dev_accuracy']:.4f}" for x in t["trials"])
        a(f"| {t['dataset']} | {t['model']} | {t['method']} | {trials} | "
          f"{'–' if t['chosen'] is None else format(t['chosen'], 'g')} |")
    a("")
    q = results.get("questions", {})
    a(f"## The open questions (small transformer, `{P['question_dataset']}`)")
    a("")
    if not q:
        a("Not run yet: they start once the SVGD knob of the question data set is tuned.")
    for name, title in QUESTION_TITLES:
        if name not in q:
            continue
        a(f"### {title}")
        a("")
        cells = q[name].get("cells")
        if name == "late":
            L_ = q[name]
            a(f"SVGD (alpha = {L_['alpha']:g}) switched on at step {L_['switch_step']}, against the baseline and SVGD "
              "from the start; dev accuracy and head diversity every "
              f"{results['protocol'].get('track_every', '')} steps (mean over seeds).")
            a("")
            for arm in ("baseline", "svgd", "svgd_late"):
                s = L_.get(arm)
                if s:
                    a(f"- {arm}: test accuracy {_pm(s['test_accuracy'])}, head-output cosine at the end "
                      f"{_pm(s['diversity_end']['output_cos'], 3)} ({len(s['seeds'])} seeds)")
        elif cells:
            keys = [k for k in ("dropout", "heads", "fraction", "alpha", "penalty_weight") if k in cells[0]]
            arms = [k for k in ("baseline", "svgd", "penalty") if k in cells[0]]
            comps = [k for k in cells[0] if k.endswith("_vs_baseline") or k in ("svgd_vs_penalty", "baseline_vs_default_heads")]
            a("| " + " | ".join(keys + [f"{x} accuracy" for x in arms] + [f"{x} output cos end" for x in arms]
                                + [c.replace("_", " ") for c in comps]) + " |")
            a("|" + "---|" * (len(keys) + 2 * len(arms) + len(comps)))
            for c in cells:
                row = [format(c[k], "g") for k in keys]
                row += [_pm(c[x]["test_accuracy"]) if c.get(x) else "–" for x in arms]
                row += [_pm(c[x]["diversity_end"]["output_cos"], 3) if c.get(x) else "–" for x in arms]
                row += [_diff(c[k]["accuracy"]) if c.get(k) else "–" for k in comps]
                a("| " + " | ".join(row) + " |")
        a("")
        verdicts = _question_verdicts(name, q[name])
        if verdicts:
            for v in verdicts:
                a(f"- {v[0].upper() + v[1:]}")
            a("")
        if name in images or (name == "late" and "late_repulsion" in images) or (name == "data" and "data_fraction" in images):
            img = images.get(name) or images.get({"late": "late_repulsion", "data": "data_fraction"}.get(name, ""))
            if img:
                a(f"![{name}]({image_dir}/{img})")
                a("")
    if sr and plan is not None:
        L += strong_repulsion.markdown(sr, plan, images, image_dir)
    if results.get("spaces") and plan is not None:
        L += spaces_study.markdown(results["spaces"], plan, images, image_dir)
    return "\n".join(L) + "\n"


def write_report(records: Dict[str, dict], plan, paths: Dict[str, Path], quick: bool = False) -> Dict:
    results = build_results(records, plan)
    results["protocol"]["track_every"] = plan.track_every
    data_info = {}
    for ds in dict.fromkeys(plan.datasets + plan.spos_sets):
        d = load_dataset(ds)
        data_info[ds] = {"sizes": d.sizes(), "classes": list(d.classes), "source": d.source}
    results["data"] = data_info
    wall = sum(r.get("wall_seconds", 0.0) for r in records.values()) / 3600
    parts: Dict = defaultdict(lambda: [0, 0.0])
    for r in records.values():
        c = r["config"]
        part = parts[(c["dataset"], c["model"], c.get("purpose", "eval"))]
        part[0] += 1
        part[1] += r.get("wall_seconds", 0.0) / 3600
    results["wall_time"] = [{"dataset": k[0], "model": k[1], "purpose": k[2], "runs": v[0], "hours": v[1]}
                            for k, v in sorted(parts.items())]
    results["records"] = len(records)
    results["wall_hours"] = wall
    results["pending"] = len(study_plan.pending(plan, records))
    results["strong_repulsion"] = strong_repulsion.build(records, plan)
    results["spaces"] = spaces_study.build(records, plan)
    superseded = Path(paths["records"]).with_name(Path(paths["records"]).stem + "_superseded.jsonl")
    if superseded.exists():  # runs of retired arms, kept apart (spaces_study.superseded_lines)
        results["spaces"]["superseded"] = spaces_study.superseded_summary(list(load_records(superseded).values()))
    paths["results"].parent.mkdir(parents=True, exist_ok=True)
    paths["results"].write_text(json.dumps(results, indent=1, sort_keys=True, allow_nan=True) + "\n")
    images = _plots(results, Path(paths["images"]))
    report_dir = Path(paths["report"]).parent
    rel = Path(paths["images"]).resolve().relative_to(report_dir.resolve()) if Path(paths["images"]).resolve().is_relative_to(report_dir.resolve()) else Path(paths["images"]).resolve()
    text = _markdown(results, data_info, images, rel.as_posix(), quick, len(records), wall, plan=plan)
    Path(paths["report"]).write_text(text)
    return results
