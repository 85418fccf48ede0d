"""benchmarks/run_uci_ensemble.py: records per finished split, resume from them, the page's split lists."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from benchmarks import run_uci_ensemble  # noqa: E402
from benchmarks.evidence import uci_bnn  # noqa: E402


def test_split_ranges():
    assert run_uci_ensemble.split_ranges([4, 0, 1, 2, 7, 8]) == "0-2, 4, 7-8"
    assert run_uci_ensemble.split_ranges([3]) == "3" and run_uci_ensemble.split_ranges([]) == ""


def test_records_resume_and_the_page_lists_the_splits_of_each_row(tmp_path, write_dataset):
    write_dataset(tmp_path / "data", "toy", n=150, p=3, splits=3)
    records = tmp_path / "records"
    common = ["--uci-dir", str(tmp_path / "data"), "--datasets", "toy", "--records-dir", str(records),
              "--iters", "20", "--eval-every", "10", "--patience", "1", "--out", str(tmp_path / "out")]
    assert run_uci_ensemble.main(common + ["--methods", "svgd,sgld", "--splits", "2", "--no-report"]) == 0
    assert not (tmp_path / "out").exists()  # --no-report: records only
    lines = {m: (records / f"uci_runs_{m}.jsonl").read_text().splitlines() for m in ("svgd", "sgld")}
    assert [len(v) for v in lines.values()] == [2, 2]
    # SPOS on split 0 only; the SVGD and SGLD records are not rerun (resume from the records)
    assert run_uci_ensemble.main(common + ["--methods", "svgd,spos,sgld", "--splits", "1"]) == 0
    for m in ("svgd", "sgld"):
        assert (records / f"uci_runs_{m}.jsonl").read_text().splitlines() == lines[m]
    assert len((records / "uci_runs_spos.jsonl").read_text().splitlines()) == 1
    assert run_uci_ensemble.main(common + ["--methods", "svgd,spos,sgld", "--splits", "2", "--report-only"]) == 0
    page = (tmp_path / "out" / "docs" / "uci_ensemble.md").read_text()
    rows = {line.split(" | ")[1]: line for line in page.splitlines() if line.startswith("| toy |")}
    assert "| 0-1 (2) |" in rows["SVGD (ensemble)"] and "| 0-1 (2) |" in rows["SGLD (ensemble)"]
    assert "| 0 (1) |" in rows["SPOS (ensemble)"]
    assert "toy SPOS 1" in page  # the split not run is named
    assert "SPOS: drift φ + s/β with β = 1·N" in page  # the method's step settings
    assert "splits every method has finished on every data set, 0 (1 splits)" in page
    result = json.loads((tmp_path / "out" / "benchmarks" / "results" / "uci_bnn_ensemble.json").read_text())
    assert result["versus_svgd"]["sgld"]["toy"]["splits"] == [0, 1]
    assert result["versus_svgd"]["spos"]["toy"]["splits"] == [0]
    assert result["common_splits"]["splits"] == [0]
    svgd0 = json.loads(lines["svgd"][0])
    assert result["common_splits"]["summary"]["toy"]["svgd"]["rmse_mean"] == svgd0["rmse"]


def test_run_many_reports_each_new_record_with_its_file(tmp_path, write_dataset):
    write_dataset(tmp_path / "data", "toy", n=150, p=3, splits=1)
    seen = []
    cfgs = {"svgd": uci_bnn.BNNConfig(iters=5, n_particles=3, n_hidden=4)}
    uci_bnn.run_many(["toy"], [0], ["svgd"], cfgs, tmp_path / "c", root=tmp_path / "data", log=lambda _: None,
                     on_record=lambda rec, path: seen.append((rec["split"], path.read_text().count("\n"))))
    assert seen == [(0, 1)]  # called once, after the record was written


def test_workers_run_side_by_side_and_give_the_records_of_one_worker(tmp_path, write_dataset):
    write_dataset(tmp_path / "data", "toy", n=150, p=3, splits=2)
    common = ["--uci-dir", str(tmp_path / "data"), "--datasets", "toy", "--iters", "20", "--eval-every", "10",
              "--patience", "1", "--methods", "svgd", "--splits", "2", "--no-report"]

    def runs(workers):
        records = tmp_path / f"records{workers}"
        assert run_uci_ensemble.main(common + ["--records-dir", str(records), "--workers", str(workers)]) == 0
        lines = (records / "uci_runs_svgd.jsonl").read_text().splitlines()
        return {(r["split"], r["rmse"], r["loglik"]) for r in map(json.loads, lines)}

    one, two = runs(1), runs(2)
    assert len(one) == 2 and two == one  # same seeds, same numbers, in whichever order the workers end


def test_workers_below_one_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        run_uci_ensemble.main(["--workers", "0", "--report-only"])
    assert "expected --workers >= 1, received 0" in capsys.readouterr().err
