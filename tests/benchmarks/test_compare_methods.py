"""benchmarks/compare_methods.py: a quick run writes a page with a row per method in every table, whose
numbers are the JSON's, and a rerun of some methods replaces only their rows."""

from __future__ import annotations

import json

import pytest

from benchmarks import compare_methods as cm


@pytest.mark.slow
def test_quick_run_and_partial_rerun(tmp_path, monkeypatch):
    res = cm.main(["--quick", "--out", str(tmp_path)])
    page = (tmp_path / "methods.md").read_text()
    stored = json.loads((tmp_path / "methods.json").read_text())
    for m in cm.METHODS:
        # the list of methods, the two mixture tables, the variance-collapse and BLR tables
        assert page.count(f"| `{m}` |") == 5, m
    assert "python benchmarks/compare_methods.py --quick" in page
    svgd = next(r for r in stored["mixtures"] if r["target"] == "mixture2d" and r["method"] == "svgd")
    assert f"| {svgd['tv']:.3f} |" in page
    assert len(stored["logistic"]["rows"]) == len(cm.METHODS) + 1  # and the exact-draw yardstick row
    assert stored["measured"] == {m: stored["when"] for m in cm.METHODS}
    before = {(r["d"], r["method"]): r for r in res["variance_collapse"]}
    monkeypatch.setattr(cm, "now", lambda: "2099-01-02 03:04 UTC")  # the rerun's time, told apart from the first
    again = cm.main(["--quick", "--out", str(tmp_path), "--methods", "gfsf"])
    after = {(r["d"], r["method"]): r for r in again["variance_collapse"]}
    assert after.keys() == before.keys()
    assert after[(5, "svgd")] == before[(5, "svgd")]  # kept, not rerun
    assert after[(5, "gfsf")]["seconds"] != before[(5, "gfsf")]["seconds"]  # rerun (a new timing)
    page = (tmp_path / "methods.md").read_text()
    assert "--quick --methods gfsf" in page
    # each method's row in the list says when its rows were measured: the rerun's own time for gfsf only
    stored = json.loads((tmp_path / "methods.json").read_text())
    assert stored["measured"]["gfsf"] == "2099-01-02 03:04 UTC" and stored["measured"]["svgd"] == stored["when"]
    assert f"| `gfsf` | {cm.PAPERS['gfsf']} | 2099-01-02 03:04 UTC |" in page
    assert f"| `svgd` | {cm.PAPERS['svgd']} | {stored['when']} |" in page
    assert stored["when"] != "2099-01-02 03:04 UTC"
    with pytest.raises(SystemExit):
        cm.main(["--quick", "--out", str(tmp_path), "--methods", "nope"])
