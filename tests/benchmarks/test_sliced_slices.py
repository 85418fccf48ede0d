"""benchmarks/sliced_slices.py: a quick run gives a row per dimension, rule and slice mode, with the identity's
|g_rr| = 1 for fixed slices and finite statistics."""

from __future__ import annotations

import math

from benchmarks import sliced_slices


def test_quick_run():
    rows = sliced_slices.main(["--quick"])
    assert len(rows) == 4 and {r["slices"].split()[0] for r in rows} == {"fixed", "optimised"}
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("marginal_variance", "sliced_ksd", "min_abs_g_rr"))
        if r["slices"].startswith("fixed"):
            assert r["min_abs_g_rr"] == 1.0


def test_quick_timing_run():
    """--timing --quick: one row with positive times and their ratio (no timing assertion)."""
    rows = sliced_slices.main(["--timing", "--quick"])
    assert len(rows) == 1 and rows[0]["ascent_s"] > 0 and rows[0]["direction_s"] > 0
    assert math.isclose(rows[0]["ratio"], rows[0]["ascent_s"] / rows[0]["direction_s"])
