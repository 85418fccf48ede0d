"""The study of the SPOS posterior mode with strong repulsion (benchmarks/attention/strong_repulsion.py)."""

import math

import pytest

from benchmarks.attention import plan as study_plan
from benchmarks.attention import strong_repulsion as sr

PLAN = study_plan.FULL


def _fake(cfg, dev=0.7, test=0.7, nll=0.5, cos_start=0.0, cos_end=0.0):
    div = lambda c: {"layer0": {"param_cos_q": c, "output_cos": 0.0, "map_js": 0.1}}  # noqa: E731
    return {"key": cfg.key(), "config": {"seed": cfg.seed}, "dev": {"accuracy": dev, "nll": nll},
            "test": {"accuracy": test, "nll": nll, "ece": 0.05}, "diversity_start": div(cos_start),
            "diversity_end": div(cos_end), "seconds_per_step": 0.1, "grad_norm_median": 10.0}


def test_grid_reuses_the_first_studys_trial_and_waits_before_the_ablation():
    first = {t.key() for t in PLAN.trials("mr", "transformer", "spos_posterior")}
    grid = sr.grid_trials(PLAN)
    assert [t.value for t in grid] == [1e4, 1e5, 1e6] and all(t.purpose == "tune" and t.seed == 100 for t in grid)
    assert grid[0].key() in first  # 10^4 was the first grid's largest value: the same run
    todo = study_plan.pending(PLAN, {}, ["spos_ablation", "spos_sets"])
    assert {c.key() for c in todo} <= {t.key() for t in grid}  # nothing past the grid until a* is known


def test_ablation_arms_run_at_the_tuned_repulsion_with_the_reported_seeds():
    records = {}
    for t, acc in zip(sr.grid_trials(PLAN), (0.70, 0.72, 0.71)):
        records[t.key()] = _fake(t, dev=acc)
    assert sr.tuned_repulsion(PLAN, records) == 1e5
    todo = study_plan.pending(PLAN, records, ["spos_ablation"])
    assert todo and all(c.dataset == "mr" and c.model == "transformer" and c.purpose == "eval" for c in todo)
    by_method = {}
    for c in todo:
        by_method.setdefault((c.method, c.value), set()).add(c.seed)
    assert by_method[("spos_posterior", 1e5)] == set(PLAN.seeds)
    assert by_method[("spos_posterior", 0.0)] == set(PLAN.seeds)  # no repulsive term
    assert by_method[("svgd_posterior", 1e5)] == set(PLAN.seeds)
    for method in ("spos_no_noise", "spos_repulsion_only", "spos_no_drive"):
        assert by_method[(method, 1e5)] == set(PLAN.seeds)
    assert by_method[("langevin_heads", None)] == set(PLAN.seeds)
    assert [c.method for c in todo[:5]] == ["baseline"] * 5 and todo[5].method == "spos_posterior"
    # the other data sets: the full arm and its baseline come before the remaining arms
    sets = study_plan.pending(PLAN, records, ["spos_sets"])
    first_arm = [(c.dataset, c.method, c.value) for c in sets[:20]]
    assert set(first_arm) == {(ds, m, v) for ds in ("rt", "trec") for m, v in (("spos_posterior", 1e5),
                                                                                ("baseline", None))}


def test_grid_has_the_drive_negligible_limit_at_the_largest_value():
    runs = study_plan.pending(PLAN, {}, ["spos_grid"])
    assert [(c.method, c.value) for c in runs] == [("spos_posterior", 1e4), ("spos_posterior", 1e5),
                                                   ("spos_posterior", 1e6), ("spos_no_drive", 1e6)]


@pytest.mark.parametrize("name, terms, repulsion", [
    ("spos_no_noise", {"kernel_drive": True, "langevin_drift": True, "noise": False}, 1e4),
    ("langevin_heads", {"kernel_drive": False, "langevin_drift": True, "noise": True}, 0.0),
    ("spos_repulsion_only", {"kernel_drive": False, "langevin_drift": True, "noise": False}, 1e4),
    ("spos_no_drive", {"kernel_drive": False, "langevin_drift": False, "noise": True}, 1e4)])
def test_ablation_methods_set_the_adapters_switches(name, terms, repulsion):
    import torch

    from benchmarks.attention.methods import activate
    from benchmarks.attention.models import build_model

    model = build_model("transformer", num_classes=2, vocab_size=30, heads=4, dropout=0.0, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rh = activate(name, None if name == "langevin_heads" else 1e4, model, train_size=100, seed=0,
                  optimizer=opt).repulsive
    assert rh.method == "spos" and rh.state_dict()["terms"] == terms
    assert rh.settings.repulsion == repulsion and rh.settings.posterior.dataset_size == 100


def test_minilm_strength_is_the_smallest_value_that_moves_the_heads():
    records = {}
    for t, change in zip(sr.minilm_trials(PLAN), (0.001, 0.02, 0.05)):
        records[t.key()] = _fake(t, cos_start=0.1, cos_end=0.1 + change)
    assert sr.minilm_strength(PLAN, records) == 1e5
    for t in sr.minilm_trials(PLAN):
        records[t.key()] = _fake(t, cos_start=0.1, cos_end=0.1)
    assert sr.minilm_strength(PLAN, records) == 1e6  # none moves: the largest
    del records[sr.minilm_trials(PLAN)[0].key()]
    assert sr.minilm_strength(PLAN, records) is None


def test_pooled_estimate_averages_the_paired_differences_over_sets_seed_by_seed():
    def runs(acc):
        return [{"config": {"seed": s}, "test": {"accuracy": a}} for s, a in acc.items()]

    # differences per seed: set A 0.02, 0.04, 0.00; set B 0.00, 0.02, 0.04 (seed 3 only in A: left out)
    a = (runs({0: 0.82, 1: 0.84, 2: 0.80, 3: 0.9}), runs({0: 0.80, 1: 0.80, 2: 0.80, 3: 0.5}))
    b = (runs({0: 0.70, 1: 0.72, 2: 0.74}), runs({0: 0.70, 1: 0.70, 2: 0.70}))
    p = sr._pooled({"A": a, "B": b})
    # per-seed means 0.01, 0.03, 0.02 -> mean 0.02, sd 0.01, SE 0.01 / sqrt 3
    assert p["n"] == 3 and p["sets"] == 2
    assert p["mean"] == pytest.approx(0.02) and p["se"] == pytest.approx(0.01 / math.sqrt(3))
    assert p["verdict"] == "better"  # 0.02 > 2 * 0.0058


def test_report_section_shows_pending_runs_and_verdicts():
    records = {}
    for t, acc in zip(sr.grid_trials(PLAN), (0.72, 0.70, 0.71)):
        records[t.key()] = _fake(t, dev=acc)
    for ds, gain in (("mr", 0.02), ("rt", 0.01), ("trec", -0.01)):
        for s in PLAN.seeds:
            base = PLAN.config(ds, "transformer", "baseline", None, s)
            full = PLAN.config(ds, "transformer", "spos_posterior", 1e4, s)
            records[base.key()] = _fake(base, test=0.7 + 0.001 * s)
            records[full.key()] = _fake(full, test=0.7 + 0.001 * s + gain + 0.002 * (s % 2))
    res = sr.build(records, PLAN)
    assert res["a_star"] == 1e4
    pooled = res["pooled"]["transformer: full SPOS posterior"]
    assert pooled["mean"] == pytest.approx((0.02 + 0.01 - 0.01) / 3 + 0.002 * 2 / 5)
    text = "\n".join(sr.markdown(res, PLAN, {}, "img"))
    assert "**a* = 10000**" in text
    assert "| no repulsive term | drift, drive, noise | pending |" in text
    trec_table = text.split("#### trec")[1].split("###")[0]
    assert "| full SPOS posterior | all four | 5 |" in trec_table and "(n=5) ▼" in trec_table
    answer = sr.verdicts(res)[-1]
    assert answer.startswith("Answer: ")
    # trec is worse by 1 point with SE ~ 0.0004: called worse, so no recommendation
    assert "does not help detectably" in answer and "worse on ['trec']" in answer
