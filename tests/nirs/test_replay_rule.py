"""The replay rule's details that drifted apart when it was written twice: one output vs
several, and when two wavelength grids are the same (nirs/replay.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cross_decomposition import PLSRegression
from sklearn.preprocessing import StandardScaler

from nirs import replay


@pytest.fixture(scope="module")
def tablet():
    from nirs.datasets import load_tablet

    return load_tablet(instrument=1)


def test_one_output_is_a_vector_and_several_stay_columns_through_the_target_scaler(tablet):
    train, test = tablet
    Y = np.column_stack([train.y, 10.0 * train.y])
    scaler = StandardScaler().fit(Y)
    two = PLSRegression(6).fit(train.X, scaler.transform(Y))
    out = replay.fold_output(two, test.X, "regression", y_transformers=[scaler])
    assert out.shape == (len(test.y), 2)
    np.testing.assert_allclose(out, scaler.inverse_transform(two.predict(test.X)), rtol=0, atol=1e-9)
    np.testing.assert_allclose(out[:, 1], 10.0 * out[:, 0], rtol=1e-6)
    one = PLSRegression(6).fit(train.X, train.y)
    single = replay.fold_output(one, test.X, "regression")
    assert single.shape == (len(test.y),)
    np.testing.assert_array_equal(single, one.predict(test.X).ravel())


def test_grids_are_the_same_within_a_millionth_of_the_largest_wavelength(tablet):
    train, _ = tablet
    wl = train.wavelengths
    step = replay.GRID_RTOL * wl.max()
    assert replay.same_grid(wl + 0.9 * step, wl) and not replay.same_grid(wl + 1.1 * step, wl)
    assert replay.check_input(wl, wl.size, wl + 0.9 * step, wl.size) is None  # used as it is
    wider = np.linspace(wl.min() - 1.0, wl.max() + 1.0, 1000)
    np.testing.assert_array_equal(replay.check_input(wl, wl.size, wider, 1000), wider)  # resampled from it


@pytest.mark.parametrize("grid, columns, problem, expected, found", [
    (np.linspace(700.0, 1700.0, 597), 597, "the new wavelength grid (700-1700) does not cover the trained range",
     "597 wavelengths, 600-1792", "597 wavelengths, 700-1700"),
    (np.arange(600.0, 1791.0, 2.0), 596, "wrong number of wavelengths: 596 where the chain was trained on 597",
     "597 wavelengths, 600-1792", "596 wavelengths, 600-1790"),
    (None, 596, "wrong number of wavelengths: X has 596 features but the chain was trained on 597",
     "597 wavelength columns", "596 wavelength columns"),
])
def test_what_cannot_be_replayed_is_said_with_expected_and_found(tablet, grid, columns, problem, expected, found):
    train, _ = tablet
    with pytest.raises(replay.ReplayError) as raised:
        replay.check_input(train.wavelengths, 597, grid, columns)
    assert problem in raised.value.problem
    assert expected in raised.value.expected and raised.value.found == found
