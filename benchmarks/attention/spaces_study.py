"""Particle spaces head to head: the heads as particles in their weights, their circuits or their outputs.

The first study compared repulsion with the head particles in weight space (An et al. 2020). A head's
weights do not identify its function (``W_q R, W_k R^{-T}`` and ``W_v S, S^{-1} W_o`` compute the same
attention for any invertible ``R``, ``S``), so part of a weight-space repulsion moves nothing the head
does. This part of the study runs the same update with the particles in the two other spaces of
``RepulsiveHeads(space=...)`` (:mod:`attention_adapter.spaces`): the heads' QK and OV circuits (a
kernel invariant under those moves) and the heads' outputs on the batch (function space, Wang et al.
2019); and the penalty in function space. Exactly the first study's protocol: one knob with three
candidate values chosen on dev accuracy with the tuning seed, then the reported seeds; NLL/ECE,
diversity (parameter, circuit and output cosines), pruning curves.

Phases (names distinct from the other parts of the study):

``spaces_core``
    :attr:`Plan.space_datasets` x :attr:`Plan.space_models` (the two models trained from scratch) x
    :attr:`Plan.space_methods` (``svgd``/``spos`` in circuit and function space, knob ``alpha``;
    ``penalty_outputs_rms``, knob ``weight``): 3 trials, then the seeds. The baselines and the weight-space
    arms are the first study's runs (the same configurations).
``spaces_strong``
    MiniLM: ``svgd_outputs`` strong enough to move the pretrained heads. The trials (first data set,
    tuning seed) run ``alpha`` in :attr:`Plan.space_strong_grid`; the chosen value is the smallest
    whose trial changes the mean head-output cosine by at least :data:`MOVED` over training (the largest
    if none does), then the seeds on every data set.
``spaces_minilm``
    MiniLM at the paper's ``alpha = 0.01`` (as the first study's MiniLM phase, no tuning) with the
    methods of :attr:`Plan.space_minilm_methods`. The function-space penalty has no paper value: on
    MiniLM it takes the weight tuned for the small transformer on the same data set
    (:data:`TRANSFER_MODEL`; its seeds wait for that tuning), so MiniLM is still never tuned.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from .train import RunConfig

__all__ = ["PHASES", "METHODS_BY_SPACE", "MOVED", "TRANSFER_MODEL", "minilm_value", "phase_runs", "strong_trials",
           "strong_alpha", "build", "plot", "markdown", "verdicts"]

PHASES = ("spaces_core", "spaces_strong", "spaces_minilm")
#: the arms compared head to head: (rule, space) -> method of :mod:`.methods`
METHODS_BY_SPACE = {
    ("svgd", "weights"): "svgd", ("svgd", "circuits"): "svgd_circuits", ("svgd", "outputs"): "svgd_outputs",
    ("spos", "weights"): "spos", ("spos", "circuits"): "spos_circuits", ("spos", "outputs"): "spos_outputs",
    ("penalty", "weights"): "penalty", ("penalty", "outputs"): "penalty_outputs_rms",
}
#: the MiniLM strong arm "moves the heads" if the mean head-output cosine changes by at least this much
MOVED = 0.01
STRONG = "svgd_outputs"
MINILM_ALPHA = 0.01
#: the model whose tuned knob a MiniLM arm without a paper value (the function-space penalty) takes
TRANSFER_MODEL = "transformer"


def minilm_value(plan, records: Dict[str, dict], dataset: str, method: str) -> Optional[float]:
    """The knob of ``method`` on MiniLM: the paper's ``alpha`` for the rules in weight, circuit and function
    space; for the penalties (no paper value) the weight chosen for :data:`TRANSFER_MODEL` on ``dataset``
    (None until its trials are recorded)."""
    from .methods import METHODS
    from .plan import choose

    spec = METHODS[method]
    if spec.knob == "alpha":
        return MINILM_ALPHA
    if spec.knob is None:
        return None
    if spec.knob != "weight" or TRANSFER_MODEL not in spec.models or not spec.grid:
        raise ValueError(f"expected a MiniLM arm with knob 'alpha' (the paper's value) or a penalty weight tuned on "
                         f"the {TRANSFER_MODEL}; received {method!r} (knob {spec.knob!r}, models {spec.models})")
    return choose(records, plan.trials(dataset, TRANSFER_MODEL, method))


def strong_trials(plan) -> List[RunConfig]:
    return [plan.config(plan.space_datasets[0], "minilm", STRONG, v, plan.tune_seed, purpose="tune")
            for v in plan.space_strong_grid]


def _output_cos(div) -> float:
    vals = [d["output_cos"] for d in div.values() if "output_cos" in d]
    return float(np.mean(vals)) if vals else float("nan")


def _map_js(div) -> float:
    vals = [d["map_js"] for d in div.values() if "map_js" in d]
    return float(np.mean(vals)) if vals else float("nan")


def _circuit_cos(div) -> float:
    vals = [float(np.mean(v)) for d in div.values()
            if (v := [x for k, x in d.items() if k.startswith("circuit_cos_")])]
    return float(np.mean(vals)) if vals else float("nan")


def _param_cos(div) -> float:
    vals = [float(np.mean(v)) for d in div.values() if (v := [x for k, x in d.items() if k.startswith("param_cos_")])]
    return float(np.mean(vals)) if vals else float("nan")


def strong_alpha(plan, records: Dict[str, dict]) -> Optional[float]:
    """The smallest trial value whose run moves the mean head-output cosine by >= :data:`MOVED` (the largest
    if none does); None until every trial is recorded."""
    trials = strong_trials(plan)
    got = [records.get(t.key()) for t in trials]
    if not trials or any(g is None for g in got):
        return None
    for t, g in zip(trials, got):
        if abs(_output_cos(g["diversity_end"]) - _output_cos(g["diversity_start"])) >= MOVED:
            return t.value
    return trials[-1].value


def phase_runs(plan, records: Dict[str, dict], phase: str) -> List[RunConfig]:
    """The runs of one phase, in priority order (seeds only once their tuning is complete)."""
    from .plan import _method_runs

    if phase not in PHASES:
        raise ValueError(f"expected a phase in {PHASES}, received {phase!r}")
    if phase == "spaces_core":
        return _method_runs(plan, records, plan.space_datasets, plan.space_models, plan.space_methods)
    if phase == "spaces_minilm":
        return [plan.config(ds, "minilm", m, v, s) for ds in plan.space_datasets for m in plan.space_minilm_methods
                if (v := minilm_value(plan, records, ds, m)) is not None for s in plan.seeds]
    alpha = strong_alpha(plan, records)
    out = strong_trials(plan)
    if alpha is not None:
        out += [plan.config(ds, "minilm", STRONG, alpha, s) for ds in plan.space_datasets for s in plan.seeds]
    return out


# --------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------

def _value(plan, records, dataset, model, method) -> Optional[float]:
    from .methods import METHODS
    from .plan import choose

    if METHODS[method].knob is None:
        return None
    if model == "minilm":
        return minilm_value(plan, records, dataset, method) if method != "penalty" else None
    return choose(records, plan.trials(dataset, model, method))


def _runs(plan, records, dataset, model, method, value) -> List[dict]:
    out = []
    for s in plan.seeds:
        r = records.get(plan.config(dataset, model, method, value, s).key())
        if r is not None:
            out.append(r)
    return out


def _arm(plan, records, dataset, model, label, method, value, base, weights_runs) -> Dict:
    from .report import _by_seed, paired

    runs = _runs(plan, records, dataset, model, method, value) if (value is not None or method == "baseline") else []
    entry = {"label": label, "method": method, "value": value, "seeds": [r["config"]["seed"] for r in runs],
             "expected": len(plan.seeds)}
    if runs:
        entry["test_accuracy"] = [r["test"]["accuracy"] for r in runs]
        entry["test_nll"] = [r["test"]["nll"] for r in runs]
        entry["test_ece"] = [r["test"]["ece"] for r in runs]
        for name, fn in (("param_cos", _param_cos), ("circuit_cos", _circuit_cos), ("output_cos", _output_cos),
                         ("map_js", _map_js)):
            entry[f"{name}_start"] = [fn(r["diversity_start"]) for r in runs]
            entry[f"{name}_end"] = [fn(r["diversity_end"]) for r in runs]
        entry["seconds_per_step"] = [r["seconds_per_step"] for r in runs]
        if all("pruning" in r for r in runs):
            entry["pruning"] = [[{"k": p["k"], "accuracy": p["accuracy"]} for p in r["pruning"]] for r in runs]
        if method != "baseline" and base:
            entry["vs_baseline"] = {m: paired(_by_seed(runs, "test", m), _by_seed(base, "test", m), b)
                                    for m, b in (("accuracy", +1), ("nll", -1), ("ece", -1))}
        if weights_runs is not None and weights_runs and method not in ("baseline",) and weights_runs is not runs:
            entry["vs_weights"] = paired(_by_seed(runs, "test", "accuracy"), _by_seed(weights_runs, "test", "accuracy"))
    return entry


def build(records: Dict[str, dict], plan) -> Dict:
    """Per (data set, model): every arm's seeds, metrics, diversity in the three spaces, and the paired
    comparisons with the baseline and with the same rule in weight space (2 SE rule)."""
    from .methods import METHODS

    cells = []
    with_minilm = bool(plan.space_minilm_methods or plan.space_strong_grid)  # the quick plan has no MiniLM arm
    models = list(plan.space_models) + (["minilm"] if with_minilm else [])
    for dataset in plan.space_datasets:
        for model in models:
            base = _runs(plan, records, dataset, model, "baseline", None)
            arms = [_arm(plan, records, dataset, model, "baseline", "baseline", None, base, None)]
            for rule in ("svgd", "spos", "penalty"):
                weights_method = METHODS_BY_SPACE[(rule, "weights")]
                wv = _value(plan, records, dataset, model, weights_method)
                wruns = _runs(plan, records, dataset, model, weights_method, wv) if wv is not None else []
                for space in ("weights", "circuits", "outputs"):
                    method = METHODS_BY_SPACE.get((rule, space))
                    if method is None or model not in METHODS[method].models:
                        continue
                    if model == "minilm" and method not in ("svgd", "spos") + tuple(plan.space_minilm_methods):
                        continue  # the weight-space penalty was never run on MiniLM
                    if model != "minilm" and space != "weights" and method not in plan.space_methods:
                        continue
                    value = wv if space == "weights" else _value(plan, records, dataset, model, method)
                    arms.append(_arm(plan, records, dataset, model, f"{rule} / {space}", method, value, base,
                                     None if space == "weights" else wruns))
            if model == "minilm" and plan.space_strong_grid:
                alpha = strong_alpha(plan, records)
                arms.append(_arm(plan, records, dataset, model, "svgd / outputs, strong", STRONG, alpha, base, None))
            cells.append({"dataset": dataset, "model": model, "arms": arms})
    tuning = []
    for dataset in plan.space_datasets:
        for model in plan.space_models:
            for method in plan.space_methods:
                if model not in METHODS[method].models or METHODS[method].knob is None:
                    continue
                ts = plan.trials(dataset, model, method)
                tuning.append({"dataset": dataset, "model": model, "method": method, "knob": METHODS[method].knob,
                               "trials": [{"value": t.value, "dev_accuracy": records[t.key()]["dev"]["accuracy"]}
                                          for t in ts if t.key() in records],
                               "expected": len(ts), "chosen": _value(plan, records, dataset, model, method)})
    def change(rec, fn):
        return fn(rec["diversity_end"]) - fn(rec["diversity_start"])

    trials = [{"value": t.value, "recorded": t.key() in records,
               "output_cos_change": change(records[t.key()], _output_cos) if t.key() in records else None,
               "map_js_change": change(records[t.key()], _map_js) if t.key() in records else None,
               "output_cos_start": _output_cos(records[t.key()]["diversity_start"]) if t.key() in records else None}
              for t in strong_trials(plan)]
    first = plan.space_datasets[0] if plan.space_datasets else None
    base = _runs(plan, records, first, "minilm", "baseline", None) if first and plan.space_strong_grid else []
    baseline_change = ({"output_cos_change": float(np.mean([change(r, _output_cos) for r in base])),
                        "map_js_change": float(np.mean([change(r, _map_js) for r in base])), "seeds": len(base)}
                       if base else None)
    from .report import paired

    chosen = strong_alpha(plan, records)
    moved_maps = {}
    if chosen is not None:
        for ds in plan.space_datasets:
            arm = _runs(plan, records, ds, "minilm", STRONG, chosen)
            bas = _runs(plan, records, ds, "minilm", "baseline", None)
            if len(arm) == len(plan.seeds) and len(bas) == len(plan.seeds):
                by_seed = lambda runs: {r["config"]["seed"]: change(r, _map_js) for r in runs}  # noqa: E731
                moved_maps[ds] = paired(by_seed(arm), by_seed(bas))
    return {"cells": cells, "tuning": tuning,
            "strong": {"trials": trials, "chosen": chosen, "moved": MOVED, "baseline": baseline_change,
                       "map_js_vs_baseline": moved_maps}}


def plot(res: Dict, save) -> List[str]:
    """One figure per (data set, model) cell: test accuracy after pruning the ``k`` least important heads
    (mean over the seeds) for every arm with all its seeds; ``save(fig, name)`` writes it. Returns the names."""
    import matplotlib.pyplot as plt

    names = []
    for cell in res["cells"]:
        arms = [a for a in cell["arms"] if a.get("pruning") and len(a["seeds"]) == a["expected"]]
        if not arms:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for i, arm in enumerate(arms):
            ks = [p["k"] for p in arm["pruning"][0]]
            acc = np.mean([[p["accuracy"] for p in curve] for curve in arm["pruning"]], axis=0)
            ax.plot([0] + ks, [np.mean(arm["test_accuracy"])] + list(acc), marker="o", ms=3,
                    ls="-" if arm["label"].endswith("weights") or arm["method"] == "baseline" else "--",
                    color=f"C{i % 10}", label=arm["label"])
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("heads pruned (least important first)")
        ax.set_ylabel("test accuracy (mean over seeds)")
        ax.set_title(f"{cell['dataset']} / {cell['model']}: pruning, by particle space", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
        name = f"spaces_pruning_{cell['dataset']}_{cell['model']}"
        save(fig, name)
        names.append(name)
    return names


def _called(c, verdict) -> bool:
    return bool(c) and c.get("n", 0) >= 2 and c.get("verdict") == verdict


def verdicts(res: Dict) -> List[str]:
    """One line per comparison called beyond 2 SE, then the answer they add up to (``Answer: ...``).

    Only arms with all their seeds recorded count. A space gives a *reliable* gain when one of its arms (a
    rule in that space) is better than the baseline beyond 2 SE in at least two (data set, model) cells
    and worse in none; a gain in one cell alone is reported as such. Beating the same rule in weight space
    is reported beside it (where the arm is not worse than the baseline there), never as a gain by itself:
    the weight-space arm may be below the baseline."""
    from .report import _diff

    out, worse_base, better_w, worse_w, compared = [], 0, [], 0, 0
    gains, losses = {}, {}
    for cell in res["cells"]:
        where = f"{cell['dataset']} / {cell['model']}"
        for arm in cell["arms"]:
            if arm["label"].endswith("weights") or arm["method"] == "baseline":
                continue
            if len(arm["seeds"]) < arm["expected"]:
                continue
            vb = (arm.get("vs_baseline") or {}).get("accuracy")
            vw = arm.get("vs_weights")
            if vb and vb["n"] >= 2:
                compared += 1
            for c, ref in ((vb, "the baseline"), (vw, "the same rule in weight space")):
                if _called(c, "better") or _called(c, "worse"):
                    out.append(f"{where}: {arm['label']} is {c['verdict']} than {ref} in test accuracy ({_diff(c)})")
            if _called(vb, "better"):
                gains.setdefault(arm["label"], []).append(where)
            if _called(vb, "worse"):
                losses.setdefault(arm["label"], []).append(where)
                worse_base += 1
            if _called(vw, "better") and not _called(vb, "worse"):
                better_w.append(f"{arm['label']} on {where}")
            worse_w += _called(vw, "worse")
    n_gains = sum(len(v) for v in gains.values())
    reliable = [label for label, cells in gains.items() if len(cells) >= 2 and not losses.get(label)]
    if not compared:
        out.append("Answer: pending: no arm in circuit or function space has been compared with its baseline over all "
                   "its seeds yet.")
        return out
    tally = (f"of {compared} arm(s) in circuit or function space compared so far, {n_gains} beat the baseline "
             f"and {worse_base} were worse, {len(better_w)} beat the same rule in weight space without being worse "
             f"than the baseline and {worse_w} were worse than weight space (beyond 2 SE)")
    over = ("; " + "; ".join(f"{x} beats the same rule in weight space" for x in better_w) if better_w
            else "; no arm beats the same rule in weight space without being worse than the baseline")
    if reliable:
        held = "; ".join(f"{label} beats the baseline on {' and '.join(gains[label])}" for label in reliable)
        out.append(f"Answer: a space gives a gain that holds beyond one cell: {held}{over} ({tally}).")
        return out
    if n_gains:
        where = "; ".join(f"{label} beats the baseline on {' and '.join(cells)}"
                          + (" only" if len(cells) == 1 else "")
                          + (f" but is worse on {' and '.join(losses[label])}" if losses.get(label) else "")
                          for label, cells in gains.items())
        out.append(f"Answer: no space gives a reliable gain: {where}{over} ({tally}).")
        return out
    out.append(f"Answer: no space gives a reliable gain: none is better than the baseline beyond 2 SE{over} ({tally}).")
    return out


def markdown(res: Dict, plan, images: Optional[Dict[str, str]] = None, image_dir: str = "") -> List[str]:
    """The report section (a list of lines); arms without their seeds recorded say "pending"; ``images``:
    the names :func:`plot` saved, under ``image_dir``."""
    images = images or {}
    from .report import _diff, _pm

    L = ["", "## Particle spaces head to head: weights, circuits, outputs", "",
         "The same update with the head particles in their weights (the first study's arms), their QK/OV circuits "
         "(a kernel invariant under the reparametrisations that leave a head's function unchanged) or their outputs "
         "on the batch (function space), and the penalty in weight and function space "
         "(`RepulsiveHeads(space=...)`, `HeadRepulsionPenalty(space=...)`; `docs/attention_adapter.md`). Same protocol: "
         f"knob tuned on dev with seed {plan.tune_seed}, seeds {', '.join(map(str, plan.seeds))} reported; paired "
         "differences in test accuracy (points) against the baseline and against the same rule in weight space, "
         "called only beyond 2 SE (▲ better, ▼ worse); other cells are mean ± SD over seeds. Diversity: mean "
         "off-diagonal cosine between the heads' parameters, between their QK/OV circuits, and between their outputs "
         "`o_h` (the attention-weighted values, before the output projection: the first study's measure, the same "
         "for every arm), at the end of training on 64 dev sentences; the first study's runs were recorded before "
         "the circuit cosine existed (–); 'output cos change' is end minus start, and 'map JS change' the same "
         "for the mean Jensen–Shannon divergence between the heads' attention maps (higher: more diverse maps). "
         "The function-space arms act on "
         "`W_o^h o_h`, each head's term of the output projection's sum, so a function-space repulsion can spread "
         "those terms while the `o_h` cosine stays where it was. Rows whose seeds are not all recorded say "
         "\"pending\". On MiniLM nothing is tuned: the rules take the paper's alpha = "
         f"{MINILM_ALPHA:g}, and the function-space penalty, which has no paper value, the weight chosen for the "
         f"small transformer ({TRANSFER_MODEL}) on the same data set.", ""]
    for cell in res["cells"]:
        L.append(f"### {cell['dataset']} / {cell['model']}")
        L.append("")
        L.append("| arm | value | test accuracy | NLL | ECE | vs baseline | vs weight space | param cos | circuit cos "
                 "| output cos | output cos change | map JS change |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for arm in cell["arms"]:
            n, want = len(arm["seeds"]), arm["expected"]
            value = "–" if arm["value"] is None else format(arm["value"], "g")
            if arm["method"] != "baseline" and arm["value"] is None:
                value = "pending (tuning)"
            if n < want:
                L.append(f"| {arm['label']} | {value} | pending ({n}/{want} seeds) | | | | | | | | | |")
                continue
            vb = (arm.get("vs_baseline") or {}).get("accuracy")
            L.append(f"| {arm['label']} | {value} | {_pm(arm['test_accuracy'])} | {_pm(arm['test_nll'], 3)} "
                     f"| {_pm(arm['test_ece'], 3)} | {_diff(vb) if vb else '–'} "
                     f"| {_diff(arm['vs_weights']) if arm.get('vs_weights') else '–'} "
                     f"| {_pm(arm['param_cos_end'], 3)} | {_pm(arm['circuit_cos_end'], 3)} "
                     f"| {_pm(arm['output_cos_end'], 3)} "
                     f"| {_pm([e - s for s, e in zip(arm['output_cos_start'], arm['output_cos_end'])], 3)} "
                     f"| {_pm([e - s for s, e in zip(arm['map_js_start'], arm['map_js_end'])], 3)} |")
        L.append("")
        name = f"spaces_pruning_{cell['dataset']}_{cell['model']}"
        if name in images:
            L += [f"![pruning curves by particle space]({image_dir}/{images[name]})", ""]
    if res.get("tuning"):
        L += [f"Tuning trials of the arms in circuit and function space (dev accuracy, seed {plan.tune_seed}; "
              "the chosen value is the best, ties broken by the lower dev NLL):", "",
              "| data | model | arm | knob | trials | chosen |", "|---|---|---|---|---|---|"]
        for t in res["tuning"]:
            trials = ", ".join(f"{x['value']:g}: {x['dev_accuracy']:.4f}" for x in t["trials"])
            if len(t["trials"]) < t["expected"]:
                trials += f" ({len(t['trials'])}/{t['expected']} recorded)"
            L.append(f"| {t['dataset']} | {t['model']} | {t['method']} | {t['knob']} | {trials} | "
                     f"{'pending' if t['chosen'] is None else format(t['chosen'], 'g')} |")
        L.append("")
    L += superseded_lines(res.get("superseded", []))
    st = res["strong"]
    if not st["trials"]:
        return L + _verdict_lines(res)
    fmt = lambda x: "pending" if x is None else f"{x:+.3f}"  # noqa: E731
    b = st.get("baseline")
    L.append(f"MiniLM strong arm (`svgd_outputs`): trials on `{plan.space_datasets[0]}` with seed {plan.tune_seed}, "
             "change over training of the mean head-output cosine / of the mean map JS divergence per alpha: "
             + ", ".join(f"{t['value']:g}: {fmt(t['output_cos_change'])} / {fmt(t['map_js_change'])}"
                         for t in st["trials"])
             + (f" (the baseline: {b['output_cos_change']:+.3f} / {b['map_js_change']:+.3f}, mean of its "
                f"{b['seeds']} seeds)" if b else "")
             + f"; chosen (smallest moving the head-output cosine by at least {st['moved']}, else the largest): "
             + ("pending" if st["chosen"] is None else f"{st['chosen']:g}") + ".")
    starts = [t["output_cos_start"] for t in st["trials"] if t["output_cos_start"] is not None]
    if st["chosen"] is None:
        L.append("")
        return L + _verdict_lines(res)
    L.append("")
    text = []
    if starts and all(t["output_cos_change"] is not None and abs(t["output_cos_change"]) < st["moved"]
                      for t in st["trials"]):
        text.append(f"No trial moved the head-output cosine by {st['moved']}"
                    + (f": the pretrained heads' outputs start nearly orthogonal (mean cosine {np.mean(starts):+.3f}), "
                       "so that measure has little room to fall, and the function-space arm acts on the heads' terms of "
                       "the output projection, not on those outputs themselves." if abs(np.mean(starts)) < 0.05 else "."))
    maps = {ds: c for ds, c in (st.get("map_js_vs_baseline") or {}).items() if c and np.isfinite(c.get("mean", np.nan))}
    if not maps:
        text.append("Whether the chosen arm moves the heads' attention maps beyond the baseline's change is pending "
                    "(its seeds or the baseline's, or their map JS, are not all recorded).")
    else:
        from .report import _diff

        text.append("At the chosen value, the change of the attention maps' JS divergence over training against the "
                    "baseline's (paired by seed): " + "; ".join(f"{ds} {_diff(c, scale=1.0, unit='', digits=3)}"
                                                                for ds, c in maps.items()) + ".")
        up = [ds for ds, c in maps.items() if c["verdict"] == "better"]
        text.append(("The heads did move: the arm spreads the pretrained heads' attention maps measurably on "
                     + " and ".join(up) + "." if up else
                     "The maps did not move detectably beyond the baseline's change: on MiniLM even this arm may be "
                     "no force."))
    L.append(" ".join(text))
    L.append("")
    return L + _verdict_lines(res)


def superseded_summary(records: List[dict]) -> List[Dict]:
    """One entry per superseded run (records of a retired arm, kept apart from the study's records):
    its arm, data set, model, knob value, seed, purpose, dev accuracy and mean training loss over
    the last 50 steps."""
    return [{"method": r["config"]["method"], "dataset": r["config"]["dataset"], "model": r["config"]["model"],
             "value": r["config"]["value"], "seed": r["config"]["seed"], "purpose": r["config"].get("purpose", "eval"),
             "dev_accuracy": r["dev"]["accuracy"], "train_loss_last50": r["train_loss_last50"]} for r in records]


def superseded_lines(entries: List[Dict]) -> List[str]:
    """A paragraph on the superseded runs, from :func:`superseded_summary` (none: no lines)."""
    if not entries:
        return []
    runs = "; ".join(f"{e['dataset']}/{e['model']} weight {e['value']:g} seed {e['seed']} ({e['purpose']}): dev "
                     f"{100 * e['dev_accuracy']:.1f}, train loss {e['train_loss_last50']:.3f}" for e in entries)
    return ["The first function-space penalty (`penalty_outputs`, retired) compared the heads' outputs as they were, "
            "with the bandwidth computed on detached features: within a step the mean kernel then falls whenever all "
            "outputs grow, so training inflated them without bound and often stayed at chance. Its runs, kept apart in "
            "`benchmarks/results/attention_runs_superseded.jsonl` and not used above: " + runs + ". The arm above "
            "(`penalty_outputs_rms`) divides each feature part by its group's RMS before the kernel, which makes the "
            "penalty invariant to the outputs' scale.", ""]


def _verdict_lines(res: Dict) -> List[str]:
    """The called comparisons as a list, then the answer as its own paragraph."""
    out = []
    for v in verdicts(res):
        out.append(f"**Answer:** {v[len('Answer: '):]}" if v.startswith("Answer: ") else f"- {v}")
    return out + [""]
