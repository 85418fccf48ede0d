"""Pieces of benchmarks/digits_ensemble.py: the split, the calibration error and one short run."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from benchmarks import digits_ensemble as de  # noqa: E402


def test_split_holds_out_digits_8_and_9_and_is_disjoint():
    d = de.load_data(0)
    labels = torch.cat([d[k][1] for k in ("train", "dev", "test")])
    assert int(labels.max()) == 7 and set(np.unique(labels.numpy())) == set(range(8))
    rows = {k: {tuple(r.tolist()) for r in d[k][0]} for k in ("train", "test")}
    assert len(d["train"][0]) > 3 * len(d["test"][0]) / 2 and d["unseen"].shape[1] == 64
    assert d["noise"].shape == (300, 64) and float(d["noise"].min()) >= 0 and float(d["noise"].max()) <= 1
    assert len(rows["train"] & rows["test"]) <= 2  # a few digits images are exact duplicates in the data set


def test_ece_of_perfect_and_of_overconfident_predictions():
    y = np.array([0, 1, 0, 1])
    perfect = np.eye(2)[y]
    assert de.ece(perfect, y) == 0.0
    # always 90 % confident, right half of the time: |0.5 - 0.9| = 0.4
    p = np.tile([0.9, 0.1], (4, 1))
    assert de.ece(p, y) == pytest.approx(0.4)


@pytest.mark.parametrize("method", ["ensemble", "fsvgd", "sgld"])
def test_a_short_run_reports_every_metric_in_range(method):
    r = de.run(method, 0, n_particles=3, steps=20, eval_every=10, repulsion=10.0)
    for k in de.METRICS:
        assert 0.0 <= r[k] <= (np.inf if k == "nll" else 1.0), k
    assert r["accuracy"] > 0.3  # well above chance (1/8) after 20 steps
    assert r["steps"] == 20 and r["best_step"] in (10, 20)
