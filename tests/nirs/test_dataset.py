import numpy as np
import polars as pl
import pytest

from nirs.dataset import SpectraDataset


def _ds(**kw):
    base = dict(X=np.arange(12, dtype=float).reshape(3, 4) + 1, wavelengths=[1000, 1002, 1004, 1006])
    base.update(kw)
    return SpectraDataset(**base)


def test_valid_dataset_and_task_types():
    ds = _ds(y=[1, 2, 3], sample_ids=["a", "b", "c"], metadata=pl.DataFrame({"batch": [1, 1, 2]}))
    assert ds.X.dtype == np.float64 and ds.y.dtype == np.float64
    assert ds.task_type == "regression" and ds.n_samples == 3 and ds.n_features == 4
    assert _ds(y=["x", "y", "x"]).task_type == "classification"
    assert _ds(y=[True, False, True]).task_type == "classification"
    codes = _ds(y=[0, 1, 0], task="classification")
    assert codes.task_type == "classification" and codes.y.dtype.kind == "i"  # labels keep their dtype
    assert _ds().task_type is None
    sub = ds.subset([2, 0])
    assert list(sub.sample_ids) == ["c", "a"] and sub.metadata["batch"].to_list() == [2, 1]


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"wavelengths": [1, 2, 3]}, "3 wavelengths for 4 columns"),
        ({"wavelengths": [1, 2, 2, 3]}, r"strictly increasing; column 2 \(2\) follows column 1 \(2\)"),
        ({"y": [1, 2]}, "2 targets for 3 rows"),
        ({"sample_ids": ["a", "b", "a"]}, "duplicate sample ids 'a'"),
        ({"sample_ids": ["a", "b"]}, "2 sample ids for 3 rows"),
        ({"y": [1.0, np.nan, 2.0]}, "target y is nan at row 1"),
        ({"metadata": pl.DataFrame({"m": [1]})}, "metadata has 1 rows for 3 samples"),
        ({"task": "clustering", "y": [1, 2, 3]}, "task must be one of"),
    ],
)
def test_invalid_datasets_are_named(kw, message):
    with pytest.raises(ValueError, match=message):
        _ds(**kw)


def test_nonfinite_x_names_row_column_and_sample():
    X = np.ones((3, 4))
    X[2, 1] = np.inf
    with pytest.raises(ValueError, match=r"inf at row 2 \(sample 'c'\), column 1 \(wavelength 1002\)"):
        _ds(X=X, sample_ids=["a", "b", "c"])


def test_content_hash_tracks_x_grid_and_y():
    a = _ds(y=[1, 2, 3])
    assert a.content_hash() == _ds(y=[1, 2, 3], sample_ids=["p", "q", "r"]).content_hash()
    assert a.content_hash() != _ds(y=[1, 2, 4]).content_hash()
    assert a.content_hash() != _ds(y=[1, 2, 3], wavelengths=[1, 2, 3, 4]).content_hash()
    assert a.content_hash() != _ds(y=["1", "2", "3"]).content_hash()
    X = a.X.copy()
    X[0, 0] += 1e-12
    assert a.content_hash() != _ds(X=X, y=[1, 2, 3]).content_hash()
