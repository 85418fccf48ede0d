"""Aggregation, verdicts and the Markdown report of the evidence runs (`benchmarks/evidence/report.py`)."""

import math

import pytest

from benchmarks.evidence import report


def _rec(ds, split, method, rmse, ll):
    return {"dataset": ds, "split": split, "method": method, "rmse": rmse, "loglik": ll, "seconds": 1.0,
            "iters": 5000, "finite": True, "config": {"iters": 5000}}


def test_aggregate_mean_and_standard_error():
    recs = [_rec("yacht", k, "svgd", r, -1.0 - 0.1 * k) for k, r in enumerate([0.8, 0.9, 1.0])]
    s = report.aggregate_uci(recs)["yacht"]["svgd"]
    assert s["rmse_mean"] == pytest.approx(0.9)
    assert s["rmse_se"] == pytest.approx(0.1 / math.sqrt(3))
    assert s["n_splits"] == 3 and s["splits"] == [0, 1, 2] and s["iters"] == [5000]


def test_verdicts_respect_the_direction_of_each_metric():
    assert report.verdict("rmse", 2.957 + 0.19, "bostonHousing") == "within"
    assert report.verdict("rmse", 2.957 + 0.21, "bostonHousing") == "worse"
    assert report.verdict("rmse", 2.5, "bostonHousing") == "better"
    assert report.verdict("loglik", -2.4, "bostonHousing") == "better"
    assert report.verdict("loglik", -2.6, "bostonHousing") == "worse"
    assert report.verdict("rmse", 1.0, "unknown-set") == "n/a"


def test_report_puts_published_numbers_beside_ours(tmp_path):
    recs = [_rec("bostonHousing", k, m, 2.9 + 0.01 * k, -2.5) for k in range(2) for m in ("svgd", "spos")]
    summary = report.aggregate_uci(recs)
    report.write_report(tmp_path / "e.md", {"summary": summary}, None, None, "cmd")
    md = (tmp_path / "e.md").read_text()
    assert "| Boston | published SVGD | 20 | ? | 2.957 ± 0.099 |" in md
    assert "| Boston | SVGD (ours) | 2 | 5000 | 2.905 ± 0.005 | within |" in md
    assert "SPOS − SVGD, paired over the splits both ran" in md


def _spos(ds, split, beta, rmse, ll, dev_ll, finite=True):
    r = _rec(ds, split, "spos", rmse, ll)
    r.update(dev_loglik=dev_ll, dev_rmse=1.0, finite=finite, config={"iters": 5000, "beta_per_n": beta})
    return r


def test_sensitivity_chooses_beta_on_dev_rows_never_on_test_rows(tmp_path):
    svgd = [_rec("yacht", k, "svgd", 1.0, -1.2) for k in range(3)]
    # beta 0.1 has the better *test* numbers, beta 1 the better *dev* log likelihood
    beta_recs = {0.1: [_spos("yacht", k, 0.1, 0.5, -0.9, dev_ll=-2.0) for k in range(3)],
                 1.0: [_spos("yacht", k, 1.0, 0.9 + 0.01 * k, -1.1, dev_ll=-1.0) for k in range(3)]}
    sens = report.uci_sensitivity(svgd, svgd, beta_recs)
    e = sens["beta"]["yacht"]
    assert e["selected_beta_per_n"] == 1.0
    # paired over the 3 common splits: SPOS(beta 1) - SVGD = (-0.1, -0.09, -0.08)
    assert e["selected_minus_svgd"]["rmse"]["mean"] == pytest.approx(-0.09)
    assert e["selected_minus_svgd"]["rmse"]["se"] == pytest.approx(0.01 / math.sqrt(3))
    assert e["selected_minus_svgd"]["loglik"]["n"] == 3


def test_sensitivity_never_selects_a_beta_with_a_diverged_split():
    beta_recs = {0.01: [_spos("yacht", 0, 0.01, 0.4, -0.8, dev_ll=0.0),
                        _spos("yacht", 1, 0.01, math.nan, math.nan, dev_ll=math.nan, finite=False)],
                 1.0: [_spos("yacht", k, 1.0, 0.9, -1.1, dev_ll=-1.0) for k in range(2)]}
    e = report.uci_sensitivity([], [], beta_recs)["beta"]["yacht"]
    assert e["grid"]["0.01"]["n_failed"] == 1
    assert e["selected_beta_per_n"] == 1.0


def test_sensitivity_pairs_short_and_long_runs_in_the_report(tmp_path):
    short = [_rec("energy", k, "svgd", 1.4 + 0.01 * k, -1.8) for k in range(4)]
    long_ = [_rec("energy", k, "svgd", 0.6, -0.9) for k in range(3)]  # split 3 not run long
    sens = report.uci_sensitivity(short, long_, {})
    d = sens["iterations"]["energy"]["long_minus_short"]["rmse"]
    assert d["n"] == 3 and d["mean"] == pytest.approx(-0.81)
    assert sens["iterations"]["energy"]["short"]["verdict"]["rmse"] == "within"  # 1.415 vs 1.374 ± 0.09
    report.write_report(tmp_path / "e.md", None, None, None, "cmd", sens=sens)
    md = (tmp_path / "e.md").read_text()
    assert "| Energy | 4 | 1.415 ± 0.006 | within |" in md


def test_blr_discussion_reads_its_claims_off_the_numbers():
    def run(method, errs, cov, ksd, vr):
        traj = [{"step": s, "mean_error_sd": e, "cov_error_rel": cov, "ksd_imq": ksd} for s, e in zip((500, 1000), errs)]
        return {"method": method, "test_accuracy": 0.98, "test_loglik": -0.06, "mean_error_sd": errs[-1],
                "cov_error_rel": cov, "ksd_imq": ksd, "variance_ratio": vr, "trajectory": traj}

    blr = {"dim": 31, "config": {"n_particles": 100, "beta": 1.0}, "rows": [
        run("svgd", (4.0, 3.0), 0.9, 5.0, 0.5),
        run("svgd-adagrad", (0.76, 0.76), 0.8, 1.2, 0.6),
        run("spos", (1.0, 0.6), 0.45, 1.7, 0.95),
        run("sgld", (1.0, 0.6), 0.45, 1.7, 0.95),
        {"method": "reference (HMC draws)", "test_accuracy": 0.98, "test_loglik": -0.058},
        {"method": "100 reference draws", "mean_error_sd": 0.5, "mean_error_sd_sd": 0.1, "cov_error_rel": 0.5,
         "cov_error_rel_sd": 0.02, "ksd_imq": 1.6},
    ]}
    text = report.blr_discussion(blr)
    assert "still falling at the end" in text  # svgd: 4.0 -> 3.0
    assert "(settled)" in text and "underdispersed" in text  # svgd-adagrad: flat, variance ratio 0.6
    assert "1.6× the exact draws'" in text  # 0.8 / 0.5
    assert "differ by at most 0 %" in text and "adds little" in text
    # an SGLD row 20 % off in KSD: the "adds little" reading must go
    blr["rows"][3] = run("sgld", (1.0, 0.6), 0.45, 1.7 / 1.2, 0.95)
    text = report.blr_discussion(blr)
    assert "differ by at most 20 %" in text and "adds little" not in text
    assert "hardly separate the methods" in text


def test_sensitivity_compares_betas_on_the_splits_all_of_them_ran():
    # beta 0.1 has one lucky split; on the shared split 0 beta 1 is better on the dev rows
    beta_recs = {0.1: [_spos("wine", 0, 0.1, 0.6, -0.95, dev_ll=-0.99), _spos("wine", 1, 0.1, 0.6, -0.9, dev_ll=-0.5)],
                 1.0: [_spos("wine", 0, 1.0, 0.6, -0.95, dev_ll=-0.95)]}
    e = report.uci_sensitivity([], [], beta_recs)["beta"]["wine"]
    assert e["selection_splits"] == [0]
    assert e["selected_beta_per_n"] == 1.0


def _summary_with(spos_ll_shift):
    recs = []
    for k in range(6):
        recs.append(dict(_rec("yacht", k, "svgd", 0.9, -1.2 - 0.01 * k), n_train=249, n_dev=28,
                         config={"iters": 5000, "lr": 1e-3}))
        recs.append(dict(_rec("yacht", k, "spos", 0.8, -1.2 - 0.01 * k + spos_ll_shift[k]), n_train=249,
                         n_dev=28, config={"iters": 5000, "lr": 1e-3}))
    return {"summary": report.aggregate_uci(recs), "runs": recs, "iters": 5000}


def test_uci_notes_state_only_what_the_numbers_show():
    worse = _summary_with([-0.05, -0.06, -0.04, -0.05, -0.07, -0.05])  # SPOS log-lik lower on 6 of 6
    text = report.uci_notes(worse)
    assert "On Yacht SPOS at β = N has lower RMSE (-0.100 ± 0.000) but lower log-likelihood" in text
    assert "lower on 6 of 6 splits" in text and "re-tuned on 28 development rows" in text
    assert "2.8e-03–2.8e-03 (N = 249–249)" in text  # sqrt(2e-3 / 249) = 0.00283
    better = _summary_with([0.05, 0.06, 0.04, 0.05, 0.07, 0.05])
    assert "On Yacht" not in report.uci_notes(better)


def test_uci_notes_beta_verdict_follows_the_paired_differences():
    svgd = [_rec("yacht", k, "svgd", 1.0, -1.2) for k in range(3)]
    close = {1.0: [_spos("yacht", k, 1.0, 1.0 + (0.01 if k == 0 else -0.005), -1.2, dev_ll=-1.0) for k in range(3)]}
    far = {1.0: [_spos("yacht", k, 1.0, 1.3 + 0.01 * k, -1.2, dev_ll=-1.0) for k in range(3)]}
    uci = {"summary": report.aggregate_uci(svgd), "runs": svgd}
    assert "at least as good as SVGD on every data set" in report.uci_notes(uci, report.uci_sensitivity([], svgd, close))
    text = report.uci_notes(uci, report.uci_sensitivity([], svgd, far))
    assert "Yacht RMSE +0.310 ± 0.006" in text and "at least as good" not in text


def test_report_cites_the_benchmark_code_and_the_paper_only(tmp_path):
    recs = [_rec("yacht", k, "svgd", 0.8 + 0.1 * k, -1.2) for k in range(2)]
    uci = {"summary": report.aggregate_uci(recs), "iters": 5000, "runs": recs}
    report.write_report(tmp_path / "e.md", uci, None, None, "cmd")
    md = (tmp_path / "e.md").read_text()
    assert "Protocol (`benchmarks/evidence/uci_bnn.py`" in md
    assert "`particlesampling.targets.BayesianNeuralNetwork`" in md
    assert "The main table uses 5000." in md
    assert "DESIGN" not in md and "particlesampling/experiments" not in md
