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
    assert {row["backend"] for row in res["floor"]} == set(bench_floor.BACKENDS)  # every backend has rows
    for row in res["floor"]:
        assert row["floor_ms"] > 0 and row["default_ms"] > 0 and row["median_ms"] > 0
        assert abs(row["default_over_floor"] - row["default_ms"] / row["floor_ms"]) < 1e-9
        assert abs(row["median_over_floor"] - row["median_ms"] / row["floor_ms"]) < 1e-9
        if row["backend"].startswith("torch"):
            assert abs(row["fixed_over_gemm_only"] - row["fixed_ms"] / row["gemm_only_ms"]) < 1e-9
        if row["backend"].startswith("jax"):
            assert "unchecked_ms" not in row  # no finiteness check under jax.jit
        else:
            assert abs(row["unchecked_over_floor"] - row["unchecked_ms"] / row["floor_ms"]) < 1e-9
    for row in res["profile"]:  # every part measured, each a fraction of the whole call
        assert min(row["gemm_only_ms"], row["d2_upper_ms"], row["median_ms"], row["median_pass_ms"]) > 0
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


def test_a_run_without_the_large_section_keeps_the_date_of_the_large_run_before(tmp_path):
    out = tmp_path / "floor.json"
    out.write_text(json.dumps({"meta": {"when": {"large": "2026-01-02 03:04", "large_before": "2026-01-01 00:00"}}}))
    assert bench_floor.main(["--quick", "--threads", "1", "--sections", "profile", "--out", str(out)]) == 0
    when = json.loads(out.read_text())["meta"]["when"]
    assert when["large"] == "2026-01-02 03:04" and when["large_before"] == "2026-01-01 00:00"


def test_report_marks_targets_met_and_not_met():
    torch_row = dict(backend="torch float32", n=1000, d=100, threads=2, floor_ms=10.0, default_ms=14.0, fixed_ms=11.0,
                     unchecked_ms=13.5, median_ms=2.5, gemm_only_ms=8.0, exp_pass_ms=1.0, default_over_floor=1.4,
                     fixed_over_floor=1.1, unchecked_over_floor=1.35, median_over_floor=0.25)
    jax_row = dict(backend="jax float32 jit", n=1000, d=100, threads=1, floor_ms=10.0, default_ms=14.0, fixed_ms=11.0,
                   median_ms=2.0, default_over_floor=1.4, fixed_over_floor=1.1, median_over_floor=0.2)
    text = bench_floor.markdown({"floor": [torch_row, jax_row]})
    assert "| torch float32 | 1000 | 100 | 2 | 10.00 | 14.00 | 1.40 (not met: ≤ 1.3) | 1.10 | 1.35 | 2.50 | 0.25 | " \
           "8.00 | 1.75 |" in text
    assert "| jax float32 jit | 1000 | 100 | 1 | 10.00 | 14.00 | 1.40 (met: ≤ 1.5) | 1.10 | – (no check under jit) |" in text
    # the miss is explained from its own row: the median's share beside the median alone
    assert "- torch float32, n = 1000, 2 thread(s): default 14.00 ms = fixed 11.00 ms (1.10× floor) + 3.00 ms; " \
           "the median alone takes 2.50 ms (0.25× floor)." in text
    assert "- jax float32 jit" not in text


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


def test_report_says_when_more_threads_made_the_floor_slower():
    base = dict(backend="numpy float32", n=1000, d=100, floor_ms=10.0, default_ms=12.0, fixed_ms=11.0,
                default_over_floor=1.2, fixed_over_floor=1.1)
    rows = [dict(base, threads=1), dict(base, threads=2, floor_ms=30.0, default_ms=36.0, default_over_floor=1.2)]
    text = bench_floor.markdown({"floor": rows})
    assert "numpy float32 n = 1000, d = 100: 30.00 ms with 2 threads against 10.00 ms with 1" in text
    rows[1].update(floor_ms=6.0, default_ms=7.2)
    assert "Thread contention" not in bench_floor.markdown({"floor": rows})


def test_growth_table_dates_its_last_row_by_the_10_5_run_it_copies():
    # growth_section copies the 10^5 step of its own run; a later run of the large section alone
    # moves that step to large_previous, and the last row must then carry that run's date
    big = dict(n=100000, d=100, threads=2, budget_bytes=2**30, budget_given=False, tiled=True, finite=True,
               peak_growth_mb=480.0)
    old = dict(big, step_s=80.0, floor_s=60.0, step_over_floor=80 / 60, when="2026-01-01 00:05")
    new = dict(big, step_s=85.0, floor_s=67.0, step_over_floor=85 / 67)
    growth = [dict(n=1000, d=100, default_s=0.01, floor_s=0.005, tiled=False),
              dict(n=100000, d=100, default_s=80.0, floor_s=60.0, tiled=True)]
    res = {"meta": {"when": {"growth": "2026-01-01 00:00", "large": "2026-01-01 00:21"}},
           "large": new, "large_previous": old, "growth": growth}
    text = bench_floor.markdown(res)
    assert "The last row is the 10⁵ section's step measured 2026-01-01 00:05 (the run before the one above)" in text
    assert "measured 2026-01-01 00:21" not in text
    growth[-1].update(default_s=85.0, floor_s=67.0)  # the growth section copied the latest step
    assert "The last row is the 10⁵ section's step measured 2026-01-01 00:21 (the other rows" in bench_floor.markdown(res)
