"""``benchmarks/bench_floor.py``: a quick run end to end (fresh processes included) and its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_floor  # noqa: E402
import torch  # noqa: E402


def test_quick_run_measures_every_section_and_keeps_the_others(tmp_path):
    out = tmp_path / "floor.json"
    out.write_text(json.dumps({"jax": {"status": "from an earlier run"}}))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_floor.py"), "--quick", "--threads", "1",
                           "--sections", "floor,profile,cuda,memory,large,growth", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["jax"] == {"status": "from an earlier run"}  # a section not run is kept
    for row in res["floor"]:
        assert row["floor_ms"] > 0 and row["default_ms"] > 0
        assert abs(row["default_over_floor"] - row["default_ms"] / row["floor_ms"]) < 1e-9
        assert abs(row["fixed_over_gemm_only"] - row["fixed_ms"] / row["gemm_only_ms"]) < 1e-9
    for row in res["profile"]:  # every part measured, each a fraction of the whole call
        assert min(row["gemm_only_ms"], row["d2_upper_ms"], row["median_ms"]) > 0
        assert row["d2_and_product_ms"] > row["d2_upper_ms"]  # D2 and then the product take longer than D2
        assert max(row["d2_upper_ms"], row["median_ms"], row["product_ms"]) < row["call_ms"]
    if torch.cuda.is_available():
        assert res["cuda"]["rows"] and all(r["threads"] == "GPU" for r in res["cuda"]["rows"])
    else:
        assert "no CUDA device" in res["cuda"]["status"]
    for part in ("memory", "large"):
        r = res[part]
        assert "status" not in r, r
        assert r["tiled"] and r["finite"]  # the quick budget (4 MiB) is below one n x n matrix
        assert r["budget_bytes"] == 4 * 2**20 and r["peak_growth_mb"] > 0
    assert [b["batch_size"] for b in res["large"]["random_batch"]] == [1000, 100]
    assert res["growth"][-1]["n"] == res["large"]["n"]
    text = bench_floor.markdown(res)
    assert "## The step against its matrix-multiply floor" in text and "### 10⁵ particles" in text
    assert "### Where the default call's time goes (profile)" in text and "### On the GPU" in text
    assert f"| {res['floor'][0]['n']} | {res['floor'][0]['d']} | 1 |" in text


def test_report_marks_targets_met_and_not_met():
    row = dict(n=1000, d=100, threads=1, floor_ms=10.0, default_ms=16.0, fixed_ms=11.0, exp_pass_ms=1.0,
               default_over_floor=1.6, fixed_over_floor=1.1)
    text = bench_floor.markdown({"floor": [row]})
    assert "1.60 (not met: ≤ 1.5)" in text and "1.10 (met: ≤ 1.2)" in text
    row.update(gemm_only_ms=8.0, default_over_gemm_only=2.0, fixed_over_gemm_only=1.375)
    text = bench_floor.markdown({"floor": [row]})
    assert "| 8.00 |" in text and "2.00 (not met: ≤ 1.5)" in text and "1.38 (not met: ≤ 1.2)" in text


@pytest.mark.gpu
def test_floor_rows_on_the_gpu(tmp_path):
    """The floor section runs unchanged on CUDA (a GPU machine checks this; skipped without one)."""
    out = tmp_path / "floor.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_floor.py"), "--quick", "--sections", "cuda",
                           "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["cuda"]["rows"]
    assert rows and all(r["default_ms"] > 0 and r["threads"] == "GPU" for r in rows)


def test_bench_choices_compares_every_choice_it_lists(capsys):
    import bench_choices

    assert bench_choices.main(["--reps", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "ms |" in line]
    assert len(rows) == 7
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        chosen, other = (float(c.split(": ")[1].split()[0]) for c in cells[1:3])
        assert chosen > 0 and other > 0 and abs(float(cells[3]) - other / chosen) < 0.01 * other / chosen + 0.01
