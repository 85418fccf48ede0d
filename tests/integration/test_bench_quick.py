"""Smoke test of ``benchmarks/bench_speed.py --quick``: it runs, prints its tables and writes its JSON.

It runs with whatever interpreter runs the tests: where the peers (Pyro, NumPyro, BlackJAX) are not
installed their cells must say "not installed" rather than fail. No timing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is a package of the checkout, not installed
    sys.path.insert(0, str(ROOT))
PEER_OK = ("not installed", "skipped", "timeout", "error")


def test_bench_speed_quick(tmp_path):
    out = tmp_path / "speed_quick.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_speed.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for header in ("## speed", "## accuracy", "## random batch", "## scaling"):
        assert header in proc.stdout
    res = json.loads(out.read_text())
    assert res["meta"]["quick"] is True
    for row in res["speed"]:
        cells = row["cells"]
        for ours in ("ours-torch-float32", "ours-numpy-float32"):
            if ours == "ours-torch-float32" and "status" in cells[ours]:
                assert cells[ours]["status"] == "not installed"  # torch is optional for the project
                continue
            assert cells[ours]["time_ms"] > 0
        for peer in ("pyro", "numpyro", "blackjax"):
            cell = cells[peer]
            assert ("time_ms" in cell) or cell["status"].startswith(PEER_OK), cell
            # a peer that is installed must run on these tiny sizes
            if cell.get("status", "").startswith("error"):
                raise AssertionError(f"{peer}: {cell['status']}")
    ours_acc = [r for r in res["accuracy"] if r["impl"].startswith("ours-torch") and "status" not in r]
    for r in ours_acc:
        for key in ("mean_err", "cov_err", "mmd2", "ksd_imq"):
            assert r[key] == r[key]  # finite numbers (not NaN)
    assert {r["batch"] for r in res["batch"]} == {64, 16}
    assert set(res["scaling"]) == {"n", "d"}


def test_diagnose_spos_loglik_pairs_the_methods(tmp_path):
    from benchmarks.evidence.uci import UCIDataError, num_splits

    try:
        num_splits("yacht")
    except UCIDataError:
        import pytest

        pytest.skip("the shared UCI data (../shared/data/uci) are not beside the checkout")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "diagnose_spos_loglik.py"), "--splits", "2",
                           "--iters", "20", "--workers", "1", "--cache-dir", str(tmp_path / "cache"),
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "spos_loglik_diagnosis_yacht.json").read_text())
    assert res["splits"] == 2
    rows = {r["metric"]: r for r in res["rows"]}
    for m in ("svgd", "spos"):  # Jensen: the mixture is never worse than its particles on average
        assert rows["rmse"][m] <= rows["particle_rmse"][m] + 1e-12
        assert rows["loglik"][m] >= rows["particle_loglik"][m] - 1e-12
