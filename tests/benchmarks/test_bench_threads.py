"""``benchmarks/bench_threads.py``: a quick run end to end (both machine states, both backends), the
threshold rule, and the report section that bench_speed.py includes in docs/benchmarks.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_threads  # noqa: E402
from particlesampling.runner import ONE_THREAD_MAX_ENTRIES  # noqa: E402


@pytest.mark.slow
def test_quick_run_measures_both_states_and_backends(tmp_path):
    out = tmp_path / "threads.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_threads.py"), "--quick",
                           "--target-ms", "2", "--out", str(out), "--no-docs"], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    keys = [(r["state"], r["backend"], r["n"], r["d"]) for r in res["rows"]]
    assert keys == [(s, b, n, d) for s in bench_threads.STATES for b in ("torch", "numpy")
                    for n, d in bench_threads.QUICK_SIZES]
    for r in res["rows"]:
        assert r["ms_default"] > 0 and r["ms_one"] > 0
        assert r["ratio_default_over_one"] == pytest.approx(r["ms_default"] / r["ms_one"])
    assert set(res["meta"]["load_average"]) == set(bench_threads.STATES)
    assert "| loaded | torch | 20 | 2 |" in proc.stdout


def _row(state, backend, n, d, default, one):
    return {"state": state, "backend": backend, "n": n, "d": d, "default_threads": 2, "ms_default": default,
            "ms_one": one, "ratio_default_over_one": default / one}


def test_threshold_rule_is_minimax_over_both_states():
    rows = [_row("as found", "torch", 100, 2, 2.0, 1.0), _row("as found", "torch", 100, 50, 1.0, 1.05),
            _row("as found", "torch", 300, 2, 1.0, 1.0), _row("as found", "torch", 300, 50, 1.0, 1.5),
            _row("as found", "torch", 1000, 2, 1.0, 1.0), _row("as found", "torch", 1000, 50, 1.0, 1.0),
            _row("loaded", "torch", 300, 50, 9.0, 1.0)]
    # worst auto / best: threshold 0 -> 9 (loaded n = 300 on two threads), 100^2 -> 9, 300^2 -> 1.5 (as found
    # n = 300, d = 50 on one thread), 1000^2 -> 1.5 as well: the tie goes to the larger
    assert bench_threads.derive_threshold(rows) == 1000 * 1000
    # idle rows only: threads help at n = 300, d = 50 (1.5x), so one thread stops at 100^2 (cost 1.05)
    assert bench_threads.derive_threshold(rows[:6]) == 100 * 100
    # threads always at least as good: 0, the default threads everywhere
    assert bench_threads.derive_threshold([_row("as found", "torch", 100, 2, 1.0, 2.0)]) == 0
    # one thread always at least as good: the largest measured size
    assert bench_threads.derive_threshold([_row("loaded", "numpy", 3000, 2, 5.0, 1.0),
                                           _row("as found", "numpy", 100, 2, 1.0, 1.0)]) == 3000 * 3000


def test_report_uses_the_threshold_in_the_code():
    n_small = int(ONE_THREAD_MAX_ENTRIES ** 0.5)
    rows = [_row("as found", "torch", n_small, 2, 4.0, 2.0), _row("as found", "torch", n_small + 1, 2, 1.0, 3.0),
            _row("loaded", "numpy", 10, 2, 3.0, 1.0)]
    res = {"meta": {"command": "python benchmarks/bench_threads.py", "when": "now", "machine": "m", "torch": "t",
                    "numpy": "n", "pairs": 1, "background": "b", "load_average": {"as found": 1.0, "loaded": 3.0},
                    "derived_threshold": 4}, "rows": rows}
    text = bench_threads.markdown(res)
    assert f"{ONE_THREAD_MAX_ENTRIES:,}" in text
    lines = [line for line in text.splitlines() if line.startswith("| as found") or line.startswith("| loaded")]
    # auto / best: the small rows run one thread (torch: 2 ms, the best; NumPy: 1 ms, the best), the large
    # keeps the default (1 ms, the best)
    assert [line.rsplit("|", 2)[1].strip() for line in lines] == ["1.00", "1.00", "1.00"]
    rows[0]["ms_one"], rows[0]["ratio_default_over_one"] = 5.0, 0.8  # one thread slower: auto pays 5 / 4
    text = bench_threads.markdown(res)
    assert "as found 1.25, loaded 1.00" in text


def test_committed_results_back_the_code_and_the_readme():
    """The threshold in the code is the one the committed measurement derived, and the README quotes
    that measurement (the sentence is rebuilt from benchmarks/results/threads.json)."""
    res = json.loads((ROOT / "benchmarks" / "results" / "threads.json").read_text())
    assert not res["meta"]["quick"]
    assert res["meta"]["derived_threshold"] == ONE_THREAD_MAX_ENTRIES
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert bench_threads.readme_sentence(res) in readme
    assert "python benchmarks/bench_threads.py" in readme and f"{ONE_THREAD_MAX_ENTRIES:,}" in readme
    docs = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert bench_threads.markdown(res) in docs


def test_replace_section_keeps_the_other_sections():
    page = "# B\n\n## Floor\n\nfloor text\n\n## Time per SVGD step (ms)\n\nspeed\n"
    first = bench_threads.replace_section(page, f"{bench_threads.HEADING}\n\nv1\n")
    assert first == f"# B\n\n## Floor\n\nfloor text\n\n{bench_threads.HEADING}\n\nv1\n\n## Time per SVGD step (ms)\n\nspeed\n"
    second = bench_threads.replace_section(first, f"{bench_threads.HEADING}\n\nv2\n")
    assert second == first.replace("v1", "v2")
    last = bench_threads.replace_section(f"# B\n\n{bench_threads.HEADING}\n\nold\n", f"{bench_threads.HEADING}\n\nnew\n")
    assert last == f"# B\n\n{bench_threads.HEADING}\n\nnew\n\n"
