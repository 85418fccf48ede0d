"""The SPOS posterior mode with strong repulsion: what causes its gain, where it holds.

The first study found one gain that kept its sign on sentiment data it was not tuned on:
``spos_posterior`` (the heads as SPOS particles of the posterior, :mod:`.methods`) with the largest
repulsion of its grid. This part of the study asks why and where. Its phases (names distinct from the
first study's, see :data:`PHASES`), in priority order:

``spos_grid``
    MR, small transformer, tuning seed: ``repulsion`` in :data:`GRID` (``10^4`` is the first study's
    trial, reused) and the drive-negligible limit (:data:`LIMIT`: both driving terms switched off at
    the largest repulsion, so that only the repulsive term and the noise move the heads). The chosen
    value ``a*`` is the best of :data:`GRID` on dev accuracy (ties: lower dev NLL); the limit is shown
    on the dev curve and evaluated as an ablation arm.
``spos_ablation``
    MR, small transformer, the reported seeds, at ``a*``: every arm of :data:`ARMS`.
``spos_sets``
    The Rotten Tomatoes snippets (``rt``) and TREC: baseline and the full arm, then the other arms.
``spos_heads``
    MR, small transformer at :attr:`Plan.spos_heads` heads with dropout :attr:`Plan.spos_dropouts`:
    baseline and the full arm.
``spos_models`` (the models of :attr:`Plan.spos_models`)
    Lin et al.'s self-attentive encoder on the three data sets (baseline and the full arm at ``a*``, as
    a user would carry the setting over); MiniLM on the three data sets at the smallest repulsion of
    :data:`GRID` that measurably moves its heads (:func:`minilm_strength`), baseline and the full arm.

The arms (:data:`ARMS`) switch off one part of the SPOS update at a time,

    ``Ĝ = -e [S / beta + (1/M) K S + (a/M) R] - c sqrt(2 e / (beta lr)) xi``

(the Langevin drift, the kernel-smoothed drive, the repulsive term and the noise;
:mod:`attention_adapter.update`), with the same optimiser, schedule, seeds and noise stream.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from .train import RunConfig

__all__ = ["PHASES", "GRID", "LIMIT", "ARMS", "tuned_repulsion", "grid_trials", "minilm_strength",
           "minilm_trials", "phase_runs", "MOVED"]

PHASES = ("spos_grid", "spos_ablation", "spos_sets", "spos_heads", "spos_models")
#: repulsion values of the grid extension (``10^4`` was the first grid's largest)
GRID = (1e4, 1e5, 1e6)
#: the drive-negligible limit: the method with both driving terms off, run at the grid's largest value
LIMIT = "spos_no_drive"
#: a MiniLM strength "moves its heads" if the mean head-parameter cosine changes by at least this much
#: over training (the seed-100 trial; the baseline's change on MR is 0.000 in the first study)
MOVED = 0.01

#: the ablation arms, "full" first, then in priority order: (label, method, repulsion), the repulsion
#: ``"a*"`` standing for the tuned value (``None``: the method has no knob)
ARMS: Tuple[Tuple[str, str, object], ...] = (
    ("full SPOS posterior", "spos_posterior", "a*"),
    ("no noise", "spos_no_noise", "a*"),
    ("noise only (Langevin heads)", "langevin_heads", None),
    ("no repulsive term", "spos_posterior", 0.0),
    ("repulsion + plain gradients (no drive, no noise)", "spos_repulsion_only", "a*"),
    ("SVGD posterior (no noise, no Langevin drift)", "svgd_posterior", "a*"),
    ("repulsion + noise (both drives off)", "spos_no_drive", "a*"),
)


def _value(v, a_star):
    return a_star if v == "a*" else v


def grid_trials(plan) -> List[RunConfig]:
    """The tuning trials of the grid extension (first data set, small transformer, the tuning seed)."""
    return [plan.config(plan.spos_sets[0], "transformer", "spos_posterior", v, plan.tune_seed, purpose="tune")
            for v in plan.spos_grid]


def limit_trial(plan) -> RunConfig:
    """The drive-negligible limit's trial: both driving terms off at the grid's largest repulsion."""
    return plan.config(plan.spos_sets[0], "transformer", LIMIT, plan.spos_grid[-1], plan.tune_seed,
                       purpose="tune")


def tuned_repulsion(plan, records: Dict[str, dict]) -> Optional[float]:
    """``a*``: the grid value with the best dev accuracy on the first data set (None until every trial is
    recorded)."""
    from .plan import choose

    return choose(records, grid_trials(plan))


def minilm_trials(plan) -> List[RunConfig]:
    return [plan.config(plan.spos_sets[0], "minilm", "spos_posterior", v, plan.tune_seed, purpose="tune")
            for v in plan.spos_grid]


def _param_cos(div) -> float:
    vals = [x for d in div.values() for k, x in d.items() if k.startswith("param_cos_")]
    return sum(vals) / len(vals) if vals else float("nan")


def minilm_strength(plan, records: Dict[str, dict]) -> Optional[float]:
    """The smallest grid value whose MiniLM trial changes the mean head-parameter cosine by >= :data:`MOVED`
    over training (the largest if none does); None until the trials are recorded."""
    trials = minilm_trials(plan)
    got = [records.get(t.key()) for t in trials]
    if any(g is None for g in got):
        return None
    for t, g in zip(trials, got):
        if abs(_param_cos(g["diversity_end"]) - _param_cos(g["diversity_start"])) >= MOVED:
            return t.value
    return trials[-1].value


def arm_configs(plan, a_star: float, dataset: str, model: str = "transformer", *, arms=None, **extra) -> List[RunConfig]:
    out = []
    for _, method, v in (arms or ARMS):
        out += [plan.config(dataset, model, method, _value(v, a_star), s, **extra) for s in plan.seeds]
    return out


def _pair(plan, dataset, model, value, **extra) -> List[RunConfig]:
    out = [plan.config(dataset, model, "baseline", None, s, **extra) for s in plan.seeds]
    return out + [plan.config(dataset, model, "spos_posterior", value, s, **extra) for s in plan.seeds]


def phase_runs(plan, records: Dict[str, dict], phase: str) -> List[RunConfig]:
    """The runs of one phase, in priority order (empty past the grid until ``a*`` is known)."""
    if phase not in PHASES:
        raise ValueError(f"expected a phase in {PHASES}, received {phase!r}")
    a_star = tuned_repulsion(plan, records)
    if phase == "spos_grid":
        return grid_trials(plan) + [limit_trial(plan)]
    if a_star is None:
        return grid_trials(plan)
    tuned, others = plan.spos_sets[0], plan.spos_sets[1:]
    if phase == "spos_ablation":  # the baseline is the first study's (recorded there for the full plan)
        return [plan.config(tuned, "transformer", "baseline", None, s) for s in plan.seeds] + \
            arm_configs(plan, a_star, tuned)
    if phase == "spos_sets":
        out: List[RunConfig] = []
        for ds in others:
            out += arm_configs(plan, a_star, ds, arms=ARMS[:1]) + [plan.config(ds, "transformer", "baseline", None, s)
                                                                    for s in plan.seeds]
        for arm in ARMS[1:]:  # arm by arm, so that each arm's pooled estimate completes early
            for ds in others:
                out += arm_configs(plan, a_star, ds, arms=(arm,))
        return out
    if phase == "spos_heads":
        out = []
        for p in plan.spos_dropouts:
            for h in plan.spos_heads:
                out += _pair(plan, tuned, "transformer", a_star, heads=h, dropout=p)
        return out
    # spos_models
    out = []
    if "self_attentive" in plan.spos_models:
        for ds in plan.spos_sets:
            out += _pair(plan, ds, "self_attentive", a_star)
    if "minilm" in plan.spos_models:
        strength = minilm_strength(plan, records)
        out += minilm_trials(plan)
        if strength is not None:
            for ds in plan.spos_sets:
                out += _pair(plan, ds, "minilm", strength)
    return out


# ---------------------------------------------------------------------------------------------
# results and report section (from the records only)

def _runs(plan, records, dataset, model, method, value, **extra) -> List[dict]:
    out = []
    for s in plan.seeds:
        k = plan.config(dataset, model, method, value, s, **extra).key()
        if k in records:
            out.append(records[k])
    return out


def _layer(div, key) -> float:
    from .report import _layer_mean

    return _layer_mean(div, key)


def _arm_summary(runs: List[dict], base: List[dict], full: Optional[List[dict]]) -> Dict:
    from .report import _compare, _mean

    out = {"seeds": sorted(r["config"]["seed"] for r in runs), "test_accuracy": [r["test"]["accuracy"] for r in runs],
           "param_cos_end": [_layer(r["diversity_end"], "param_cos") for r in runs],
           "output_cos_end": [_layer(r["diversity_end"], "output_cos") for r in runs],
           "map_js_end": [_layer(r["diversity_end"], "map_js") for r in runs],
           "grad_norm": [r["grad_norm_median"] for r in runs if "grad_norm_median" in r]}
    if runs and base:
        out["vs_baseline"] = _compare(runs, base)
    if runs and full:
        out["vs_full"] = _compare(runs, full)
    out["seconds_per_step"] = _mean([r["seconds_per_step"] for r in runs])
    return out


def _pooled(per_set: Dict[str, Tuple[List[dict], List[dict]]]) -> Optional[Dict]:
    """Paired differences (arm − baseline, test accuracy) averaged over the data sets seed by seed, then mean ±
    SE over the seeds every set has (the 2 SE rule of :func:`.report.paired`)."""
    from .report import paired

    diffs = []
    for runs, base in per_set.values():
        a = {r["config"]["seed"]: r["test"]["accuracy"] for r in runs}
        b = {r["config"]["seed"]: r["test"]["accuracy"] for r in base}
        diffs.append({s: a[s] - b[s] for s in set(a) & set(b)})
    if not diffs:
        return None
    seeds = set.intersection(*(set(d) for d in diffs))
    if not seeds:
        return None
    pooled = {s: sum(d[s] for d in diffs) / len(diffs) for s in seeds}
    out = paired(pooled, {s: 0.0 for s in seeds})
    out["sets"] = len(diffs)
    return out


def build(records: Dict[str, dict], plan) -> Dict:
    """Everything the report section shows, as JSON-ready data."""
    from .methods import METHODS
    from .plan import choose

    res: Dict = {"sets": list(plan.spos_sets), "grid": [], "limit": None, "a_star": tuned_repulsion(plan, records),
                 "ablation": {}, "coverage": [], "pooled": {}}
    first = plan.spos_sets[0]
    old = plan.trials(first, "transformer", "spos_posterior") if "spos_posterior" in METHODS else []
    seen = set()
    for t in old + grid_trials(plan) + [limit_trial(plan)]:
        if t.key() in seen:
            continue
        seen.add(t.key())
        r = records.get(t.key())
        row = {"method": t.method, "value": t.value, "recorded": r is not None}
        if r is not None:
            row.update(dev_accuracy=r["dev"]["accuracy"], dev_nll=r["dev"]["nll"],
                       param_cos_end=_layer(r["diversity_end"], "param_cos"),
                       grad_norm=r.get("grad_norm_median"), stein=r.get("stein_norms_median"))
        if t.method == "spos_posterior":
            res["grid"].append(row)
        else:
            res["limit"] = row
    res["old_chosen"] = choose(records, old) if old else None
    a = res["a_star"]
    if a is None:
        return res
    # ablation, per data set
    per_arm_sets: Dict[str, Dict[str, Tuple[List[dict], List[dict]]]] = {}
    for ds in plan.spos_sets:
        base = _runs(plan, records, ds, "transformer", "baseline", None)
        full = _runs(plan, records, ds, "transformer", "spos_posterior", a)
        rows = []
        for label, method, v in ARMS:
            value = _value(v, a)
            runs = _runs(plan, records, ds, "transformer", method, value)
            rows.append({"arm": label, "method": method, "value": value,
                         **_arm_summary(runs, base, None if label == ARMS[0][0] else full)})
            if runs and base:
                per_arm_sets.setdefault(label, {})[ds] = (runs, base)
        res["ablation"][ds] = {"baseline": _arm_summary(base, [], None), "arms": rows}
    for label, sets in per_arm_sets.items():
        if len(sets) == len(plan.spos_sets):
            res["pooled"][f"transformer: {label}"] = _pooled(sets)
    # coverage: baseline against the full arm
    cells = [("transformer", ds, {}) for ds in plan.spos_sets]
    cells += [("transformer", first, {"heads": h, "dropout": p}) for p in plan.spos_dropouts for h in plan.spos_heads
              if (h, p) != (8, 0.1)]
    if "self_attentive" in plan.spos_models:
        cells += [("self_attentive", ds, {}) for ds in plan.spos_sets]
    strength = minilm_strength(plan, records) if "minilm" in plan.spos_models else None
    res["minilm_strength"] = strength
    res["minilm_trials"] = [{"value": t.value, "param_cos_change": _param_cos(records[t.key()]["diversity_end"])
                             - _param_cos(records[t.key()]["diversity_start"])}
                            for t in minilm_trials(plan) if t.key() in records]
    if strength is not None:
        cells += [("minilm", ds, {}) for ds in plan.spos_sets]
    by_model: Dict[str, Dict[str, Tuple[List[dict], List[dict]]]] = {}
    for model, ds, extra in cells:
        value = strength if model == "minilm" else a
        base = _runs(plan, records, ds, model, "baseline", None, **extra)
        full = _runs(plan, records, ds, model, "spos_posterior", value, **extra)
        from .models import DEFAULT_HEADS

        row = {"model": model, "dataset": ds, "heads": extra.get("heads", DEFAULT_HEADS[model]),
               "dropout": extra.get("dropout", 0.1), "value": value, "baseline": _arm_summary(base, [], None),
               "full": _arm_summary(full, base, None)}
        res["coverage"].append(row)
        if not extra and full and base:
            by_model.setdefault(model, {})[ds] = (full, base)
    for model, sets in by_model.items():
        if model != "transformer" and len(sets) == len(plan.spos_sets):
            res["pooled"][f"{model}: full SPOS posterior"] = _pooled(sets)
    return res


def plot(res: Dict, save) -> Optional[str]:
    """The dev curve of the grid extension (``save(fig, name)`` writes it); returns the image name."""
    rows = [r for r in res["grid"] if r["recorded"]]
    if not rows:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["value"] for r in rows], [r["dev_accuracy"] for r in rows], marker="o", ms=4, label="SPOS posterior")
    lim = res.get("limit")
    if lim and lim["recorded"]:
        ax.plot([lim["value"] * 3], [lim["dev_accuracy"]], marker="s", ls="", ms=5, color="C3",
                label="driving terms off (limit)")
    ax.set_xscale("log")
    ax.set_xlabel("repulsion a")
    ax.set_ylabel(f"dev accuracy ({res['sets'][0]}, tuning seed)")
    ax.legend(fontsize=7)
    save(fig, "spos_repulsion_dev_curve")
    return "spos_repulsion_dev_curve"


#: what each arm keeps of the SPOS update (drift S/beta, kernel drive KS/M, repulsion aR/M, noise)
KEEPS = {"spos_posterior": "all four", "spos_no_noise": "drift, drive, repulsion",
         "svgd_posterior": "drive, repulsion", "langevin_heads": "drift, noise",
         "spos_repulsion_only": "drift, repulsion", "spos_no_drive": "repulsion, noise"}


def _keeps(method, value) -> str:
    if method == "spos_posterior" and value == 0.0:
        return "drift, drive, noise"
    return KEEPS.get(method, "?")


def markdown(res: Dict, plan, images: Dict[str, str], image_dir: str) -> List[str]:
    """The report section (lines of Markdown)."""
    from .report import SE_MULTIPLE, _diff, _pm, _verdict_word

    n = len(plan.seeds)
    L: List[str] = []
    a = L.append
    a("## The SPOS posterior mode with strong repulsion: what causes the gain, where it holds")
    a("")
    a("The SPOS posterior mode (`spos_posterior`: the heads as SPOS particles of the posterior with N = training-set "
      "size and a N(0, 1) prior, AdamW as in every arm) writes each head group's gradient as "
      "`Ĝ = -e [S/β + (1/M) K S + (a/M) R] - sqrt(2e/(β lr)) ξ`, with `S = -N G + ∇log p`: the Langevin *drift* "
      "`S/β`, the kernel-smoothed *drive* `K S / M`, the *repulsion* `a R / M` and the *noise* (`e = β = 1`). "
      "Each arm below switches parts off through `RepulsiveHeads` options (`repulsion=0`, `noise=False`, "
      "`kernel_drive=False`, `langevin_drift=False`), everything else equal: optimiser, schedule, seeds and, "
      "where noise is kept, its stream. Columns 'grad norm' give the median over steps of the total gradient norm "
      "before clipping at 1 (after the adapter); clipping divides every gradient of the model by it when it "
      "exceeds 1, the heads' and all the others'.")
    a("")
    a(f"### Past the grid's edge ({res['sets'][0]}, small transformer, dev accuracy at the tuning seed {plan.tune_seed})")
    a("")
    a("| arm | repulsion a | dev accuracy | dev NLL | param cos end | grad norm | repulsion / drive norm |")
    a("|---|---|---|---|---|---|---|")
    rows = list(res["grid"]) + ([res["limit"]] if res.get("limit") else [])
    for r in rows:
        arm = "SPOS posterior" if r["method"] == "spos_posterior" else "driving terms off (the limit)"
        if not r["recorded"]:
            a(f"| {arm} | {r['value']:g} | pending | | | | |")
            continue
        st = r.get("stein")
        ratio = (f"{st['repulsion'] / st['driving']:.3g}" if st and st["driving"] > 0 else
                 "drive off" if st else "–")
        gn = f"{r['grad_norm']:.3g}" if r.get("grad_norm") is not None else "–"
        a(f"| {arm} | {r['value']:g} | {r['dev_accuracy']:.4f} | {r['dev_nll']:.4f} | {r['param_cos_end']:.3f} | "
          f"{gn} | {ratio} |")
    a("")
    a_star = res["a_star"]
    a(f"Chosen (best dev accuracy over a in {[format(v, 'g') for v in plan.spos_grid]}, ties: lower dev NLL): "
      + (f"**a* = {a_star:g}**" if a_star is not None else "pending") + "; the first study's grid "
      + (f"chose {res['old_chosen']:g}." if res.get("old_chosen") is not None else "is incomplete."))
    if res.get("limit") and res["limit"]["recorded"] and a_star is not None:
        best = max(r["dev_accuracy"] for r in res["grid"] if r["recorded"] and r["value"] in plan.spos_grid)
        a(f"The limit with both driving terms off reaches dev accuracy {res['limit']['dev_accuracy']:.4f} against "
          f"{best:.4f} at a*.")
    if "spos_repulsion_dev_curve" in images:
        a("")
        a(f"![dev curve]({image_dir}/{images['spos_repulsion_dev_curve']})")
    a("")
    if a_star is None:
        a("The ablation and coverage runs start once the grid's trials are recorded.")
        return L
    a(f"### Which part does the work (small transformer, 8 heads, dropout 0.1, a = a* = {a_star:g})")
    a("")
    a(f"Paired by seed; ▲/▼ beyond {SE_MULTIPLE:g} SE. 'Δ vs full' compares the arm with the full SPOS posterior: "
      "a part whose removal costs accuracy shows there as ▼. The time ratios compare runs made at different "
      "times under different loads of the shared machine (this part's runs ran beside other heavy work), so "
      "they are not the adapter's cost (`benchmarks/results/adapter_overhead.md` measures that side by side).")
    a("")
    for ds, block in res["ablation"].items():
        b = block["baseline"]
        a(f"#### {ds}")
        a("")
        a("| arm | keeps | seeds | test accuracy | Δ accuracy vs baseline | Δ vs full | Δ NLL | Δ ECE | param cos end | "
          "head-output cos end | map JS end | grad norm | time/step vs baseline |")
        a("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        a(f"| baseline | – | {len(b['seeds'])}" + ("" if len(b["seeds"]) == n else f" (pending {n - len(b['seeds'])})")
          + f" | {_pm(b['test_accuracy'])} | – | – | – | – | {_pm(b['param_cos_end'], 3)} | "
          f"{_pm(b['output_cos_end'], 3)} | {_pm(b['map_js_end'], 3)} | {_pm(b['grad_norm'], 0)} | 1.00x |")
        for r in block["arms"]:
            k = len(r["seeds"])
            seeds = f"{k}" + ("" if k == n else f" (pending {n - k})")
            if not k:
                a(f"| {r['arm']} | {_keeps(r['method'], r['value'])} | pending | | | | | | | | | | |")
                continue
            vs, vf = r.get("vs_baseline"), r.get("vs_full")
            ratio = (f"{r['seconds_per_step'] / b_time:.2f}x" if (b_time := _time(b)) else "–")
            a(f"| {r['arm']} | {_keeps(r['method'], r['value'])} | {seeds} | {_pm(r['test_accuracy'])} | "
              f"{_diff(vs and vs['accuracy'])} | {_diff(vf and vf['accuracy'])} | {_diff(vs and vs['nll'], 1, '')} | "
              f"{_diff(vs and vs['ece'], 1, '')} | {_pm(r['param_cos_end'], 3)} | {_pm(r['output_cos_end'], 3)} | "
              f"{_pm(r['map_js_end'], 3)} | {_pm(r['grad_norm'], 0)} | {ratio} |")
        a("")
    a("### Where it holds (baseline against the full SPOS posterior)")
    a("")
    ms = res.get("minilm_strength")
    trials = ", ".join(f"{t['value']:g}: {t['param_cos_change']:+.4f}" for t in res.get("minilm_trials", []))
    a(f"The small transformer and the self-attentive encoder at a = a* = {a_star:g} (the value tuned on "
      f"{res['sets'][0]}, carried over as a user would)."
      + (f" MiniLM at the smallest a of {[format(v, 'g') for v in plan.spos_grid]} whose tuning-seed run changes "
         f"the mean head-parameter cosine by at least {MOVED:g} over training (changes: {trials or 'pending'}): "
         + (f"a = {ms:g}." if ms is not None else "pending.") if "minilm" in plan.spos_models else ""))
    a("")
    a("| model | data | heads | dropout | a | seeds (baseline / SPOS) | baseline accuracy | SPOS accuracy | Δ accuracy | "
      "Δ NLL | Δ ECE | param cos end (baseline → SPOS) | time/step vs baseline |")
    a("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in res["coverage"]:
        b, f = c["baseline"], c["full"]
        vs = f.get("vs_baseline")
        ratio = f"{f['seconds_per_step'] / _time(b):.2f}x" if f["seeds"] and _time(b) else "–"
        pend = (2 * n - len(b["seeds"]) - len(f["seeds"]))
        a(f"| {c['model']} | {c['dataset']} | {c['heads']} | {c['dropout']:g} | {c['value']:g} | {len(b['seeds'])} / "
          f"{len(f['seeds'])}" + (f" ({pend} pending)" if pend else "") + f" | {_pm(b['test_accuracy'])} | "
          f"{_pm(f['test_accuracy'])} | {_diff(vs and vs['accuracy'])} | {_diff(vs and vs['nll'], 1, '')} | "
          f"{_diff(vs and vs['ece'], 1, '')} | {_pm(b['param_cos_end'], 3)} → {_pm(f['param_cos_end'], 3)} | {ratio} |")
    a("")
    a("### Pooled across data sets")
    a("")
    a(f"Per seed, the paired difference (arm − baseline, test accuracy) averaged over the data sets "
      f"{res['sets']}; mean ± SE over the seeds; shown once every data set has the arm and its baseline.")
    a("")
    if res["pooled"]:
        a("| model: arm | pooled Δ accuracy |")
        a("|---|---|")
        for name, p in res["pooled"].items():
            a(f"| {name} | {_diff(p)} |")
    else:
        a("Pending.")
    a("")
    a("### Verdicts")
    a("")
    for line in verdicts(res):
        a(f"- **For users:** {line[len('Answer: '):]}" if line.startswith("Answer: ") else f"- {line}")
    a("")
    return L


def _time(summary: Dict) -> Optional[float]:
    t = summary.get("seconds_per_step")
    return t if t and t == t else None


def verdicts(res: Dict) -> List[str]:
    """Sentences from the comparisons (2 SE rule), ending with the answer for users."""
    from .report import _called, _diff, _verdict_word

    out: List[str] = []
    if res["a_star"] is None:
        return ["pending: the grid's trials are not all recorded."]
    for ds, block in res["ablation"].items():
        for r in block["arms"][1:]:
            if r.get("vs_full"):
                out.append(f"{ds}: " + _verdict_word(r["vs_full"]["accuracy"], r["arm"], "the full SPOS posterior"))
    pooled_full = res["pooled"].get("transformer: full SPOS posterior")
    per_set = {c["dataset"]: (c["full"].get("vs_baseline") or {}).get("accuracy")
               for c in res["coverage"] if c["model"] == "transformer" and c["heads"] == 8 and c["dropout"] == 0.1}
    worse = [ds for ds, c in per_set.items() if _called(c, "worse")]
    if pooled_full is None:
        out.append("Answer: pending (the pooled estimate needs every data set's baseline and full arm).")
        return out
    noise_only = res["pooled"].get("transformer: noise only (Langevin heads)")
    if _called(pooled_full, "better") and not worse:
        text = (f"Answer: on the small transformer the full SPOS posterior at a* helps across data sets (pooled "
                f"{_diff(pooled_full)}; no data set worse beyond 2 SE)")
        if noise_only and _called(noise_only, "better"):
            text += f"; the noise alone (Langevin heads) also helps (pooled {_diff(noise_only)})"
        out.append(text + ".")
    else:
        out.append(f"Answer: the full SPOS posterior at a* does not help detectably across data sets on the small "
                   f"transformer (pooled {_diff(pooled_full)}" + (f"; worse on {worse}" if worse else "") + ").")
    return out
