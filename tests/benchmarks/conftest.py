"""Tests of the repository's ``benchmarks/`` code (not part of the installed library).

``benchmarks`` is a package at the repository root, which is not installed: the root goes on
``sys.path`` here so that ``import benchmarks.evidence`` works however pytest was started.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def write_uci_dataset(root: Path, name: str, n=40, p=3, splits=2, nested=False, seed=0) -> np.ndarray:
    """A random data set in the UCI layout of ``benchmarks/evidence/uci.py``; returns its data matrix."""
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(n, p + 1))
    d = root / name / "data" if nested else root / name
    d.mkdir(parents=True)
    np.savetxt(d / "data.txt", data)
    (d / "index_features.txt").write_text("\n".join(str(i) for i in range(p)) + "\n")
    (d / "index_target.txt").write_text(f"{p}\n")
    for k in range(splits):
        perm = np.random.default_rng(100 + k).permutation(n)
        ntr = int(0.9 * n)
        (d / f"index_train_{k}.txt").write_text("\n".join(map(str, perm[:ntr])) + "\n")
        (d / f"index_test_{k}.txt").write_text("\n".join(map(str, perm[ntr:])) + "\n")
    return data


@pytest.fixture
def write_dataset():
    """:func:`write_uci_dataset` as a fixture (test modules do not import one another)."""
    return write_uci_dataset
