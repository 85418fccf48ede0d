"""Design matrices of the two real-data targets (scikit-learn's bundled data, no download).

scikit-learn is an optional dependency (``pip install particlesampling[data]``); it is imported
only when one of these functions is called.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "require_sklearn",
    "standardise",
    "stratified_split",
    "load_diabetes_design",
    "load_breast_cancer_design",
]


def require_sklearn() -> Any:
    """Import ``sklearn.datasets`` or raise an ImportError that says how to install it."""
    try:
        import sklearn.datasets as skd
    except ImportError as exc:
        raise ImportError(
            "this target needs scikit-learn (for its bundled data sets); install it with "
            "`pip install particlesampling[data]`"
        ) from exc
    return skd


def standardise(x_fit: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """z-score the columns with the mean and population std (ddof=0) of ``x_fit``.

    Returns ``(mean, std, x_fit_std, *others_std)``.
    """
    mean = np.mean(x_fit, axis=0)
    std = np.std(x_fit, axis=0)
    if np.any(std <= 0):
        raise ValueError("standardise: a column is constant, cannot standardise it")
    return (mean, std) + tuple((a - mean) / std for a in (x_fit,) + others)


def _with_intercept(x: np.ndarray) -> np.ndarray:
    return np.concatenate([np.ones((x.shape[0], 1)), x], axis=1)


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified train/test split of the row indices.

    For each class c (sorted), its rows are permuted with ``numpy.random.default_rng(seed)``
    (one generator, classes in order) and the first ``round(test_fraction * n_c)`` go to the test
    part.  Both index arrays are returned sorted.

    Parameters
    ----------
    y : numpy.ndarray of shape (N,)
        Class labels.
    test_fraction : float
        In (0, 1).
    seed : int

    Returns
    -------
    train_index, test_index : numpy.ndarray of int64
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a value in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        perm = rng.permutation(rows)
        test.append(perm[: int(round(test_fraction * rows.shape[0]))])
    test_index = np.sort(np.concatenate(test))
    train_index = np.setdiff1d(np.arange(y.shape[0]), test_index)
    return train_index, test_index


def load_diabetes_design() -> dict[str, Any]:
    """Diabetes regression data (442 x 10) as a standardised design matrix with intercept.

    Features (raw, ``scaled=False``) and the response are z-scored with their own mean and
    population standard deviation; column 0 of ``X`` is the intercept (ones).

    Returns
    -------
    dict
        ``X`` (442, 11), ``y`` (442,), ``x_mean``, ``x_std`` (10,), ``y_mean``, ``y_std``,
        ``feature_names`` (``["intercept", "age", ...]``).
    """
    skd = require_sklearn()
    data = skd.load_diabetes(scaled=False)
    x_raw = np.asarray(data.data, dtype=np.float64)
    y_raw = np.asarray(data.target, dtype=np.float64)
    x_mean, x_std, xs = standardise(x_raw)
    y_mean = float(np.mean(y_raw))
    y_std = float(np.std(y_raw))
    return {
        "X": _with_intercept(xs),
        "y": (y_raw - y_mean) / y_std,
        "x_mean": x_mean,
        "x_std": x_std,
        "y_mean": y_mean,
        "y_std": y_std,
        "feature_names": ["intercept"] + list(data.feature_names),
    }


def load_breast_cancer_design(train_index: np.ndarray, test_index: np.ndarray) -> dict[str, Any]:
    """Breast-cancer classification data (569 x 30) split, standardised on the train part.

    Parameters
    ----------
    train_index, test_index : numpy.ndarray of int
        Row indices of the two parts (disjoint, together all 569 rows).

    Returns
    -------
    dict
        ``X_train`` (n_train, 31), ``y_train`` (n_train,), ``X_test``, ``y_test``, ``x_mean``,
        ``x_std`` (30,), ``feature_names``, ``checksum`` (sum of the raw feature matrix, to detect
        a changed data set).  Column 0 is the intercept; labels are 1 = benign, 0 = malignant
        (scikit-learn's coding).
    """
    skd = require_sklearn()
    data = skd.load_breast_cancer()
    x_raw = np.asarray(data.data, dtype=np.float64)
    y = np.asarray(data.target, dtype=np.float64)
    train_index = np.asarray(train_index, dtype=np.int64)
    test_index = np.asarray(test_index, dtype=np.int64)
    both = np.concatenate([train_index, test_index])
    if both.shape[0] != x_raw.shape[0] or not np.array_equal(np.sort(both), np.arange(x_raw.shape[0])):
        raise ValueError(
            f"train_index/test_index: expected a partition of the {x_raw.shape[0]} rows, got "
            f"{train_index.shape[0]} + {test_index.shape[0]} indices"
        )
    x_mean, x_std, x_train, x_test = standardise(x_raw[train_index], x_raw[test_index])
    return {
        "X_train": _with_intercept(x_train),
        "y_train": y[train_index],
        "X_test": _with_intercept(x_test),
        "y_test": y[test_index],
        "x_mean": x_mean,
        "x_std": x_std,
        "feature_names": ["intercept"] + list(data.feature_names),
        "checksum": float(np.sum(x_raw)),
    }
