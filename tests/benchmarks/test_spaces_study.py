"""The head-to-head of particle spaces (benchmarks/attention/spaces_study.py): which runs it plans on
MiniLM, what its answer says, and what its report section shows. Records are built here with known
figures; every expected value follows from them by hand."""

import json

import pytest

from benchmarks.attention import plan as study_plan
from benchmarks.attention import spaces_study
from benchmarks.attention.report import paired


def _record(cfg, *, dev=0.5, test=0.5, nll=0.7):
    div = {"layer0": {"param_cos_q": 0.0, "circuit_cos_qk": 0.1, "output_cos": 0.2}}
    return {"config": json.loads(cfg.key()), "key": cfg.key(), "dev": {"accuracy": dev, "nll": nll},
            "test": {"accuracy": test, "nll": nll, "ece": 0.05}, "diversity_start": div, "diversity_end": div,
            "seconds_per_step": 0.1, "pruning": [{"k": 1, "accuracy": test - 0.01}, {"k": 2, "accuracy": test - 0.02}]}


def _add(records, cfg, **kw):
    records[cfg.key()] = _record(cfg, **kw)


def test_minilm_penalty_takes_the_small_transformers_tuned_weight_and_waits_for_it():
    plan = study_plan.FULL
    records = {}
    # the small transformer's penalty trials on mr only: weight 1.0 has the best dev accuracy
    for v, dev in zip((0.1, 1.0, 10.0), (0.70, 0.74, 0.72)):
        _add(records, plan.config("mr", "transformer", "penalty_outputs_rms", v, plan.tune_seed, purpose="tune"),
             dev=dev)
    runs = spaces_study.phase_runs(plan, records, "spaces_minilm")
    pen = [c for c in runs if c.method == "penalty_outputs_rms"]
    assert {(c.dataset, c.model, c.value) for c in pen} == {("mr", "minilm", 1.0)}  # trec: not tuned yet
    assert sorted(c.seed for c in pen) == list(plan.seeds) and all(c.purpose == "eval" for c in pen)
    # the rules keep the paper's alpha on MiniLM, untuned, on both data sets
    for m in ("svgd_circuits", "spos_outputs"):
        assert {(c.dataset, c.value) for c in runs if c.method == m} == {("mr", 0.01), ("trec", 0.01)}
    assert spaces_study.minilm_value(plan, records, "trec", "penalty_outputs_rms") is None
    # the report's MiniLM cell: the function-space penalty at the transferred weight, no weight-space penalty row
    cell = next(c for c in spaces_study.build(records, plan)["cells"] if (c["dataset"], c["model"]) == ("mr", "minilm"))
    labels = {a["label"]: a for a in cell["arms"]}
    assert labels["penalty / outputs"]["value"] == 1.0 and "penalty / weights" not in labels


def _arm(label, method, acc, base_acc):
    seeds = range(5)
    return {"label": label, "method": method, "seeds": list(seeds), "expected": 5,
            "vs_baseline": {"accuracy": paired(dict(zip(seeds, acc)), dict(zip(seeds, base_acc)))}}


BASE = [0.80, 0.81, 0.79, 0.80, 0.82]
GAIN = [b + d for b, d in zip(BASE, (0.010, 0.012, 0.011, 0.009, 0.010))]  # +1 point, SE ~ 0.05 point
SAME = [b + d for b, d in zip(BASE, (0.004, -0.005, 0.001, -0.002, 0.003))]  # no detectable difference


def _cells(*gains):
    """Two cells; ``gains[i]`` says whether ``spos / outputs`` gains in cell ``i``."""
    out = []
    for (ds, model), gain in zip((("mr", "transformer"), ("trec", "transformer")), gains):
        out.append({"dataset": ds, "model": model, "arms": [
            {"label": "baseline", "method": "baseline", "seeds": list(range(5)), "expected": 5},
            _arm("spos / weights", "spos", SAME, BASE),
            _arm("spos / outputs", "spos_outputs", GAIN if gain else SAME, BASE)]})
    return {"cells": out}


def test_a_gain_in_one_cell_is_not_called_reliable():
    lines = spaces_study.verdicts(_cells(True, False))
    assert lines[0].startswith("mr / transformer: spos / outputs is better than the baseline")
    answer = lines[-1]
    assert answer.startswith("Answer: no space gives a reliable gain: spos / outputs beats the baseline on "
                             "mr / transformer only;")
    assert "of 2 arm(s) in circuit or function space compared so far, 1 beat the baseline" in answer


def test_a_gain_in_two_cells_is_called_one_that_holds():
    answer = spaces_study.verdicts(_cells(True, True))[-1]
    assert answer.startswith("Answer: a space gives a gain that holds beyond one cell: spos / outputs beats the "
                             "baseline on mr / transformer and trec / transformer")


def test_no_gain_anywhere_and_nothing_compared():
    assert spaces_study.verdicts(_cells(False, False))[-1].startswith(
        "Answer: no space gives a reliable gain: none is better than the baseline")
    assert spaces_study.verdicts({"cells": []})[-1].startswith("Answer: pending")


def test_section_lists_the_tuning_trials_and_draws_the_pruning_curves(tmp_path):
    plan = study_plan.QUICK  # mr / transformer, svgd in circuit and function space
    records = {}
    for s in plan.seeds:
        _add(records, plan.config("mr", "transformer", "baseline", None, s), test=0.70)
    for v, dev in zip((0.01, 0.1, 1.0), (0.61, 0.65, 0.63)):
        _add(records, plan.config("mr", "transformer", "svgd_circuits", v, plan.tune_seed, purpose="tune"), dev=dev)
    for s in plan.seeds:
        _add(records, plan.config("mr", "transformer", "svgd_circuits", 0.1, s), test=0.72)
    _add(records, plan.config("mr", "transformer", "svgd_outputs", 0.01, plan.tune_seed, purpose="tune"), dev=0.6)
    res = spaces_study.build(records, plan)
    rows = {(t["method"]): t for t in res["tuning"]}
    assert rows["svgd_circuits"]["chosen"] == 0.1 and len(rows["svgd_circuits"]["trials"]) == 3
    assert rows["svgd_outputs"]["chosen"] is None and len(rows["svgd_outputs"]["trials"]) == 1

    import matplotlib

    matplotlib.use("Agg")
    saved = {}

    def save(fig, name):
        fig.savefig(tmp_path / f"{name}.png")
        saved[name] = f"{name}.png"

    names = spaces_study.plot(res, save)
    assert names == ["spaces_pruning_mr_transformer"] and (tmp_path / "spaces_pruning_mr_transformer.png").is_file()
    text = "\n".join(spaces_study.markdown(res, plan, saved, "img"))
    assert "| mr | transformer | svgd_circuits | alpha | 0.01: 0.6100, 0.1: 0.6500, 1: 0.6300 | 0.1 |" in text
    assert "| mr | transformer | svgd_outputs | alpha | 0.01: 0.6000 (1/3 recorded) | pending |" in text
    assert "![pruning curves by particle space](img/spaces_pruning_mr_transformer.png)" in text
    # the circuit arm: +2 points on every seed, so its paired difference has zero spread and is called
    assert "| svgd / circuits | 0.1 | 0.7200 ± 0.0000 |" in text


def _div(output_cos, map_js):
    d = {"param_cos_q": 0.0, "output_cos": output_cos}
    if map_js is not None:
        d["map_js"] = map_js
    return {"layer0": dict(d), "layer1": dict(d)}


def _strong_records(plan, *, arm_js_end, start_cos=0.006, with_maps=True):
    """The baseline (maps 0.20 -> 0.205 + 0.001 s), the strong trials, and the strong arm's seeds at the
    chosen (largest) value with maps 0.20 -> ``arm_js_end`` + 0.001 s, on the first data set."""
    records = {}
    js = (lambda x: x) if with_maps else (lambda x: None)
    for s in plan.seeds:
        cfg = plan.config("mr", "minilm", "baseline", None, s)
        records[cfg.key()] = {**_record(cfg), "diversity_start": _div(start_cos, js(0.20)),
                              "diversity_end": _div(start_cos, js(0.205 + 0.001 * s))}
        cfg = plan.config("mr", "minilm", "svgd_outputs", plan.space_strong_grid[-1], s)
        records[cfg.key()] = {**_record(cfg), "diversity_start": _div(start_cos, js(0.20)),
                              "diversity_end": _div(start_cos, js(arm_js_end + 0.001 * s + 0.0005 * (s % 2)))}
    for t in spaces_study.strong_trials(plan):  # no trial moves the output cosine by MOVED
        records[t.key()] = {**_record(t), "diversity_start": _div(start_cos, js(0.20)),
                            "diversity_end": _div(start_cos + 0.002, js(arm_js_end))}
    return records


@pytest.mark.parametrize("arm_js_end, moved", [(0.30, True), (0.205, False)])
def test_strong_arm_reports_both_measures_and_says_whether_the_maps_moved(arm_js_end, moved):
    plan = study_plan.FULL
    res = spaces_study.build(_strong_records(plan, arm_js_end=arm_js_end), plan)
    assert res["strong"]["chosen"] == plan.space_strong_grid[-1]  # the rule's fallback: the largest
    assert res["strong"]["baseline"]["map_js_change"] == pytest.approx(0.005 + 0.002)  # mean of 0.005 + 0.001 s
    text = "\n".join(spaces_study.markdown(res, plan))
    change = arm_js_end - 0.20
    assert f"1: +0.002 / {change:+.3f}" in text and "(the baseline: +0.000 / +0.007, mean of its 5 seeds)" in text
    assert "start nearly orthogonal (mean cosine +0.006)" in text
    # paired by seed: arm minus baseline is (arm_js_end - 0.205) + 0.0005 (s odd), mean + 0.0002, SE 0.00012
    diff = arm_js_end - 0.205 + 0.0002
    if moved:
        assert f"mr {diff:+.3f} ± 0.000 (n=5) ▲" in text and "The heads did move" in text
    else:
        assert "did not move detectably beyond the baseline's change" in text and "The heads did move" not in text


def test_strong_arm_makes_no_claim_without_maps_and_no_orthogonality_claim_when_not_orthogonal():
    plan = study_plan.FULL
    text = "\n".join(spaces_study.markdown(spaces_study.build(
        _strong_records(plan, arm_js_end=0.30, with_maps=False), plan), plan))
    assert "is pending" in text and "The heads did move" not in text and "did not move" not in text
    text = "\n".join(spaces_study.markdown(spaces_study.build(
        _strong_records(plan, arm_js_end=0.30, start_cos=0.3), plan), plan))
    assert "No trial moved the head-output cosine by 0.01." in text and "nearly orthogonal" not in text


@pytest.mark.parametrize("method", ["spos_no_noise", "svgd_posterior", "lin_penalty"])
def test_minilm_value_refuses_arms_without_a_transferable_knob(method):
    with pytest.raises(ValueError, match=method):
        spaces_study.minilm_value(study_plan.FULL, {}, "mr", method)


def test_beating_weight_space_while_below_the_baseline_is_no_gain():
    res = _cells(False, False)
    worse = [b - 0.02 + d for b, d in zip(BASE, (0.001, -0.001, 0.0, 0.001, -0.001))]  # 2 points below
    much_worse = [b - 0.03 + d for b, d in zip(BASE, (0.0, 0.001, -0.001, 0.0, 0.001))]  # weight space: 3 below
    arm = _arm("spos / outputs", "spos_outputs", worse, BASE)
    arm["vs_weights"] = paired(dict(enumerate(worse)), dict(enumerate(much_worse)))
    assert arm["vs_weights"]["verdict"] == "better" and arm["vs_baseline"]["accuracy"]["verdict"] == "worse"
    res["cells"][0]["arms"][2] = arm
    answer = spaces_study.verdicts(res)[-1]
    assert answer.startswith("Answer: no space gives a reliable gain: none is better than the baseline beyond 2 SE; "
                             "no arm beats the same rule in weight space without being worse than the baseline")
    assert "1 were worse" in answer


def test_gains_in_two_cells_with_a_loss_elsewhere_are_not_reliable():
    res = _cells(True, True)
    res["cells"].append({"dataset": "trec", "model": "self_attentive", "arms": [
        {"label": "baseline", "method": "baseline", "seeds": list(range(5)), "expected": 5},
        # the mirror image of the gain: about 1 point below the baseline on every seed
        _arm("spos / outputs", "spos_outputs", [2 * b - g for b, g in zip(BASE, GAIN)], BASE)]})
    answer = spaces_study.verdicts(res)[-1]
    assert answer.startswith("Answer: no space gives a reliable gain: spos / outputs beats the baseline on "
                             "mr / transformer and trec / transformer but is worse on trec / self_attentive")


def test_arms_with_seeds_missing_are_not_counted():
    res = _cells(True, True)
    for cell in res["cells"]:
        cell["arms"][2]["seeds"] = [0, 1, 2]  # 3 of 5 recorded
    assert spaces_study.verdicts(res)[-1].startswith("Answer: pending")
