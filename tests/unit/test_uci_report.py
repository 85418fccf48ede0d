"""Aggregation, verdicts and the Markdown table of the UCI evidence report."""

import math

import pytest

from particlesampling.experiments import report


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
