import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from nirs.operators import (
    MSC,
    SNV,
    CropWavelengths,
    Detrend,
    Normalize,
    Resample,
    SavitzkyGolay,
    fit_transform_with_grid,
    transform_with_grid,
)

ALL = [
    SNV(),
    MSC(),
    SavitzkyGolay(window_length=7, polyorder=3, deriv=1),
    Detrend(order=2),
    Normalize(norm="area"),
    CropWavelengths(1000, 1500),
    Resample(np.linspace(900, 1700, 41)),
]


@pytest.fixture
def spectra():
    rng = np.random.default_rng(0)
    wl = np.linspace(800.0, 1800.0, 101)
    base = np.exp(-((wl - 1200) / 150) ** 2)
    X = 0.2 + rng.uniform(0.5, 2.0, (30, 1)) * base + rng.normal(0, 0.01, (30, 101)) + rng.uniform(0, 0.3, (30, 1))
    return X, wl


def _apply(op, X, wl):
    return fit_transform_with_grid(op, X, None, wl)


def test_snv_rows_have_mean_zero_std_one(spectra):
    X, wl = spectra
    Z = SNV().fit_transform(X)
    np.testing.assert_allclose(Z.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(Z.std(axis=1), 1, atol=1e-12)


def test_snv_names_a_flat_row():
    X = np.ones((3, 5))
    X[1] = np.arange(5)
    with pytest.raises(ValueError, match="row 0 has zero standard deviation"):
        SNV().fit_transform(X)


def test_msc_removes_pure_scatter():
    ref = np.sin(np.linspace(0, 3, 50)) + 2
    X = np.array([0.5 + 2.0 * ref, -0.1 + 0.7 * ref, ref])
    msc = MSC().fit(X)
    out = msc.transform(X)
    # Every row is an affine copy of the mean, so all become the same spectrum: the reference.
    np.testing.assert_allclose(out, np.tile(msc.reference_, (3, 1)), atol=1e-10)
    with pytest.raises(ValueError, match="must be fitted"):
        MSC().transform(X)
    with pytest.raises(ValueError, match="X has 49 features, but it was fitted on 50"):
        msc.transform(X[:, :49])


def test_savgol_derivatives_of_a_known_polynomial():
    x = np.arange(60, dtype=float)
    X = np.vstack([2 + 3 * x - 0.5 * x**2, 1 + x**2])
    d1 = SavitzkyGolay(window_length=9, polyorder=2, deriv=1).fit_transform(X)
    d2 = SavitzkyGolay(window_length=9, polyorder=2, deriv=2).fit_transform(X)
    smooth = SavitzkyGolay(window_length=9, polyorder=2).fit_transform(X)
    np.testing.assert_allclose(d1[0], 3 - x, atol=1e-8)
    np.testing.assert_allclose(d1[1], 2 * x, atol=1e-8)
    np.testing.assert_allclose(d2, [[-1.0] * 60, [2.0] * 60], atol=1e-8)
    np.testing.assert_allclose(smooth, X, atol=1e-8)  # a quadratic is its own smoothing
    # delta scales derivatives to the grid spacing
    d1_half = SavitzkyGolay(window_length=9, polyorder=2, deriv=1, delta=0.5).fit_transform(X)
    np.testing.assert_allclose(d1_half, 2 * d1, atol=1e-8)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"window_length": 8}, "window_length must be odd"),
        ({"window_length": 5, "polyorder": 5}, r"polyorder \(5\) must be less than window_length \(5\)"),
        ({"window_length": 5, "polyorder": 1, "deriv": 2}, "deriv"),
        ({"window_length": 101}, "longer than the spectrum"),
    ],
)
def test_savgol_bad_settings_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        SavitzkyGolay(**params).fit(np.zeros((2, 20)))


def test_detrend_removes_polynomial_baselines():
    x = np.linspace(0, 1, 80)
    peak = np.exp(-((x - 0.5) / 0.05) ** 2)
    X = np.vstack([peak + 3 + 2 * x, peak - 1 + 0.5 * x])
    out = Detrend(order=1).fit_transform(X)
    np.testing.assert_allclose(out[0], out[1], atol=1e-10)  # same peak left once the lines are gone
    quad = Detrend(order=2).fit_transform(np.vstack([1 + x + 4 * x**2]))
    np.testing.assert_allclose(quad, 0, atol=1e-10)


def test_normalize_norms(spectra):
    X, _ = spectra
    np.testing.assert_allclose(np.linalg.norm(Normalize("l2").fit_transform(X), axis=1), 1)
    np.testing.assert_allclose(np.abs(Normalize("max").fit_transform(X)).max(axis=1), 1)
    np.testing.assert_allclose(np.abs(Normalize("area").fit_transform(X)).sum(axis=1), 1)
    with pytest.raises(ValueError, match="norm"):
        Normalize("l7").fit(X)


def test_crop_by_wavelength_range(spectra):
    X, wl = spectra
    out, grid = _apply(CropWavelengths(1000, 1500), X, wl)
    assert grid[0] == 1000 and grid[-1] == 1500
    assert out.shape == (30, grid.size) == (30, 51)
    np.testing.assert_array_equal(out, X[:, (wl >= 1000) & (wl <= 1500)])
    with pytest.raises(ValueError, match=r"no wavelength in \[2000, 2100\]; the grid covers 800-1800"):
        _apply(CropWavelengths(2000, 2100), X, wl)


def test_resample_onto_a_new_grid_and_refuse_extrapolation(spectra):
    _, wl = spectra
    X = np.vstack([3 * wl + 1, -wl])  # linear spectra resample exactly
    target = np.linspace(850.5, 1750.25, 37)
    out, grid = _apply(Resample(target), X, wl)
    np.testing.assert_array_equal(grid, target)
    np.testing.assert_allclose(out, np.vstack([3 * target + 1, -target]), rtol=1e-12)
    # identical grid gives the input back
    same, _ = _apply(Resample(wl), X, wl)
    np.testing.assert_allclose(same, X)
    with pytest.raises(ValueError, match=r"target grid 700-1750 reaches outside the input grid 800-1800"):
        _apply(Resample(np.linspace(700, 1750, 5)), X, wl)


def test_grid_protocol_for_ordinary_transformers(spectra):
    X, wl = spectra
    out, grid = fit_transform_with_grid(StandardScaler(), X, None, wl)
    assert grid is wl  # same feature count: the grid passes through
    out, grid = fit_transform_with_grid(PCA(3), X, None, wl)
    assert grid is None and out.shape == (30, 3)
    with pytest.raises(ValueError, match="CropWavelengths works on wavelengths, but none are known"):
        transform_with_grid(CropWavelengths(1, 2), out, grid)


@pytest.mark.parametrize("op", ALL, ids=lambda o: type(o).__name__)
def test_pickle_round_trip_and_clone(op, spectra):
    X, wl = spectra
    fitted = clone(op)
    expected, grid = _apply(fitted, X, wl)
    again = pickle.loads(pickle.dumps(fitted))
    out, grid2 = transform_with_grid(again, X, wl)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(grid, grid2)
    twin = clone(op)
    assert type(twin) is type(op) and twin is not op
    assert set(twin.get_params()) == set(op.get_params())
    assert type(op).__module__ == "nirs.operators"  # pickles name this path forever
