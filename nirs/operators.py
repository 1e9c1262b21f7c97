"""Spectral preprocessing operators (scikit-learn transformers).

The module path of every class here is a public contract: fitted operators are pickled into
the workspace, and a pickle names its class by module path. Never move or rename a class.

Wavelength-aware operators: one protocol
----------------------------------------
Some operators need the wavelength grid (cropping by a wavelength range, resampling onto a
new grid). They follow one protocol, used identically when fitting (`nirs.training`) and when
a stored chain is replayed (through `nirs.replay`, the one module of `nirs` storage imports):

* the class attribute ``requires_wavelengths = True``;
* ``fit(X, y=None, *, wavelengths)`` and ``transform(X, *, wavelengths)`` take the grid of
  their input as a keyword argument;
* ``output_wavelengths(wavelengths) -> np.ndarray`` gives the grid of their output (it may
  use fitted state).

For every other transformer the grid passes through unchanged when the feature count is
unchanged, and becomes None (unknown) otherwise. `transform_with_grid` (the replay rule's,
`nirs.replay`, re-exported here) and `fit_transform_with_grid` implement exactly this, for
training and replay alike. Any scikit-learn transformer works in a pipeline.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import savgol_filter
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._param_validation import Interval, StrOptions
from numbers import Integral, Real

from nirs.replay import require_grid, transform_with_grid

__all__ = [
    "SNV",
    "MSC",
    "SavitzkyGolay",
    "Detrend",
    "Normalize",
    "CropWavelengths",
    "Resample",
    "transform_with_grid",
    "fit_transform_with_grid",
]


# -- the grid protocol (applying a fitted step is the replay rule's: nirs/replay.py) ------------


def fit_transform_with_grid(op, X, y, wavelengths):
    """Fit `op` on (X, y) and transform X; return (X_out, grid_out).

    Fit then transform, not fit_transform: a few estimators (PCA) compute fit_transform by
    another formula, and training predictions should come from the same arithmetic as replay.
    """
    X = np.asarray(X)
    if getattr(op, "requires_wavelengths", False):
        require_grid(op, wavelengths)
        op.fit(X, y, wavelengths=wavelengths)
    else:
        op.fit(X, y)
    return transform_with_grid(op, X, wavelengths)


# -- shared checks -------------------------------------------------------------------------


class _SpectralTransformer(TransformerMixin, BaseEstimator):
    """Row-wise spectral transformers: check input, remember the feature count."""

    def _check_X(self, X, *, fitting: bool) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(f"{type(self).__name__}: expected a 2-D array (samples x wavelengths), got {X.ndim}-D")
        if fitting:
            self.n_features_in_ = X.shape[1]
        elif hasattr(self, "n_features_in_") and X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"{type(self).__name__}: X has {X.shape[1]} features, but it was fitted on {self.n_features_in_}"
            )
        return X

    def fit(self, X, y=None):
        self._validate_params()
        self._check_X(X, fitting=True)
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags


def _refuse_zero(values: np.ndarray, what: str, op: str) -> None:
    bad = np.flatnonzero(~(np.abs(values) > 0))
    if bad.size:
        raise ValueError(f"{op}: row {bad[0]} has zero {what} (a flat or empty spectrum); {bad.size} row(s) in total")


# -- operators -----------------------------------------------------------------------------


class SNV(_SpectralTransformer):
    """Standard normal variate: centre each spectrum and divide by its own standard deviation.

    Removes multiplicative scatter and baseline offset per sample; stateless (fit only records
    the feature count). A flat spectrum (zero standard deviation) is an error naming the row.
    """

    _parameter_constraints: dict = {}

    def transform(self, X):
        X = self._check_X(X, fitting=False)
        mean = X.mean(axis=1, keepdims=True)
        std = X.std(axis=1, keepdims=True)
        _refuse_zero(std[:, 0], "standard deviation", "SNV")
        return (X - mean) / std


class MSC(_SpectralTransformer):
    """Multiplicative scatter correction against the mean training spectrum.

    fit learns `reference_` (the mean spectrum); transform regresses each spectrum on it,
    x = a + b * reference, and returns (x - a) / b.
    """

    _parameter_constraints: dict = {}

    def fit(self, X, y=None):
        X = self._check_X(X, fitting=True)
        self.reference_ = X.mean(axis=0)
        return self

    def transform(self, X):
        if not hasattr(self, "reference_"):
            raise ValueError("MSC must be fitted before transform (it learns a reference spectrum)")
        X = self._check_X(X, fitting=False)
        ref = self.reference_
        ref_c = ref - ref.mean()
        denom = float(ref_c @ ref_c)
        if denom == 0.0:
            raise ValueError("MSC: the reference spectrum is flat; scatter cannot be estimated")
        row_mean = X.mean(axis=1)
        b = (X - row_mean[:, None]) @ ref_c / denom
        _refuse_zero(b, "slope against the reference", "MSC")
        a = row_mean - b * ref.mean()
        return (X - a[:, None]) / b[:, None]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = True
        return tags


class SavitzkyGolay(_SpectralTransformer):
    """Savitzky–Golay smoothing (deriv=0) or derivative (deriv=1, 2, ...) along each spectrum.

    Uses scipy.signal.savgol_filter with mode="interp". `delta` is the sample spacing used to
    scale derivatives; the default 1.0 gives derivatives per point, the chemometric habit.
    """

    _parameter_constraints: dict = {
        "window_length": [Interval(Integral, 1, None, closed="left")],
        "polyorder": [Interval(Integral, 0, None, closed="left")],
        "deriv": [Interval(Integral, 0, None, closed="left")],
        "delta": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(self, window_length=11, polyorder=2, deriv=0, delta=1.0):
        self.window_length = window_length
        self.polyorder = polyorder
        self.deriv = deriv
        self.delta = delta

    def _validate_params(self):
        # scikit-learn's declared constraints, then how the parameters fit together: both
        # checked when a config is read (nirs.config), long before a fit
        super()._validate_params()
        self._check_combination()

    def _check_combination(self) -> None:
        w, k = self.window_length, self.polyorder
        if w % 2 == 0:
            raise ValueError(f"SavitzkyGolay: window_length must be odd, got {w}")
        if k >= w:
            raise ValueError(f"SavitzkyGolay: polyorder ({k}) must be less than window_length ({w})")
        if self.deriv > k:
            raise ValueError(f"SavitzkyGolay: deriv ({self.deriv}) cannot exceed polyorder ({k})")

    def _check_window(self, n_features: int) -> None:
        self._check_combination()
        w = self.window_length
        if w > n_features:
            raise ValueError(f"SavitzkyGolay: window_length ({w}) is longer than the spectrum ({n_features} points)")

    def fit(self, X, y=None):
        self._validate_params()
        X = self._check_X(X, fitting=True)
        self._check_window(X.shape[1])
        return self

    def transform(self, X):
        X = self._check_X(X, fitting=False)
        self._check_window(X.shape[1])
        return savgol_filter(
            X, self.window_length, self.polyorder, deriv=self.deriv, delta=self.delta, axis=1, mode="interp"
        )


class Detrend(_SpectralTransformer):
    """Subtract a per-spectrum polynomial trend of the given order (1 = straight baseline).

    The trend is fitted against the column position (scaled to [-1, 1] for a well-conditioned
    fit), not the wavelength value, so the operator needs no grid; on the usual evenly spaced
    grids the two are identical.
    """

    _parameter_constraints: dict = {"order": [Interval(Integral, 0, None, closed="left")]}

    def __init__(self, order=1):
        self.order = order

    def transform(self, X):
        X = self._check_X(X, fitting=False)
        p = X.shape[1]
        if self.order >= p:
            raise ValueError(f"Detrend: order {self.order} needs more than {p} points per spectrum")
        t = np.linspace(-1.0, 1.0, p)
        V = np.vander(t, self.order + 1)
        # One least-squares solve for all rows: the design matrix is shared.
        coef, *_ = np.linalg.lstsq(V, X.T, rcond=None)
        return X - (V @ coef).T


class Normalize(_SpectralTransformer):
    """Scale each spectrum to unit norm: "l2" (Euclidean), "max" (largest absolute value) or
    "area" (sum of absolute values, i.e. the area under |x| at unit spacing)."""

    _parameter_constraints: dict = {"norm": [StrOptions({"l2", "max", "area"})]}

    def __init__(self, norm="l2"):
        self.norm = norm

    def transform(self, X):
        self._validate_params()
        X = self._check_X(X, fitting=False)
        if self.norm == "l2":
            scale = np.sqrt(np.einsum("ij,ij->i", X, X))
        elif self.norm == "max":
            scale = np.abs(X).max(axis=1)
        else:
            scale = np.abs(X).sum(axis=1)
        _refuse_zero(scale, f"{self.norm} norm", "Normalize")
        return X / scale[:, None]


class _WavelengthAware(_SpectralTransformer):
    """Base of operators that follow the wavelength protocol described at the top."""

    requires_wavelengths = True

    def _check_grid(self, X, wavelengths) -> np.ndarray:
        if wavelengths is None:
            raise ValueError(f"{type(self).__name__} needs the wavelength grid: pass wavelengths=")
        wl = np.asarray(wavelengths, dtype=np.float64).ravel()
        if wl.shape[0] != X.shape[1]:
            raise ValueError(f"{type(self).__name__}: {wl.shape[0]} wavelengths for {X.shape[1]} columns")
        if wl.shape[0] > 1 and np.any(np.diff(wl) <= 0):
            raise ValueError(f"{type(self).__name__}: wavelengths must be strictly increasing")
        return wl

    def fit(self, X, y=None, *, wavelengths=None):
        self._validate_params()
        X = self._check_X(X, fitting=True)
        self._fit_grid(self._check_grid(X, wavelengths))
        return self

    def fit_transform(self, X, y=None, *, wavelengths=None):
        return self.fit(X, y, wavelengths=wavelengths).transform(X, wavelengths=wavelengths)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = True
        return tags


class CropWavelengths(_WavelengthAware):
    """Keep the columns whose wavelength lies in [start, stop] (inclusive; None = open end)."""

    _parameter_constraints: dict = {"start": [Real, None], "stop": [Real, None]}

    def __init__(self, start=None, stop=None):
        self.start = start
        self.stop = stop

    def _mask(self, wl: np.ndarray) -> np.ndarray:
        lo = -np.inf if self.start is None else float(self.start)
        hi = np.inf if self.stop is None else float(self.stop)
        if lo > hi:
            raise ValueError(f"CropWavelengths: start ({lo:g}) is after stop ({hi:g})")
        mask = (wl >= lo) & (wl <= hi)
        if not mask.any():
            raise ValueError(
                f"CropWavelengths: no wavelength in [{lo:g}, {hi:g}]; the grid covers {wl[0]:g}-{wl[-1]:g}"
            )
        return mask

    def _fit_grid(self, wl):
        self._mask(wl)

    def transform(self, X, *, wavelengths=None):
        X = self._check_X(X, fitting=False)
        return X[:, self._mask(self._check_grid(X, wavelengths))]

    def output_wavelengths(self, wavelengths):
        wl = np.asarray(wavelengths, dtype=np.float64).ravel()
        return wl[self._mask(wl)]


class Resample(_WavelengthAware):
    """Linear interpolation of each spectrum onto `target_wavelengths`.

    Extrapolation is refused: a target grid reaching outside the input grid is an error that
    names both ranges, because invented edge values would silently bias a model.
    """

    _parameter_constraints: dict = {"target_wavelengths": ["array-like"]}

    def __init__(self, target_wavelengths=None):
        self.target_wavelengths = target_wavelengths

    def _target(self) -> np.ndarray:
        if self.target_wavelengths is None:
            raise ValueError("Resample: target_wavelengths is required")
        t = np.asarray(self.target_wavelengths, dtype=np.float64).ravel()
        if t.size == 0 or not np.all(np.isfinite(t)) or (t.size > 1 and np.any(np.diff(t) <= 0)):
            raise ValueError("Resample: target_wavelengths must be finite and strictly increasing")
        return t

    def _weights(self, wl: np.ndarray):
        t = self._target()
        # A relative tolerance absorbs float noise in grids written as text (1100.0000001).
        tol = 1e-9 * max(1.0, float(np.abs(wl).max()))
        if t[0] < wl[0] - tol or t[-1] > wl[-1] + tol:
            raise ValueError(
                f"Resample: target grid {t[0]:g}-{t[-1]:g} reaches outside the input grid "
                f"{wl[0]:g}-{wl[-1]:g}; extrapolation is refused"
            )
        t = np.clip(t, wl[0], wl[-1])
        if wl.size == 1:
            return np.zeros(t.size, dtype=np.intp), np.zeros(t.size), np.zeros(t.size, dtype=np.intp)
        right = np.clip(np.searchsorted(wl, t, side="right"), 1, wl.size - 1)
        left = right - 1
        frac = (t - wl[left]) / (wl[right] - wl[left])
        return left, frac, right

    def _fit_grid(self, wl):
        self._weights(wl)
        self.wavelengths_out_ = self._target()

    def transform(self, X, *, wavelengths=None):
        X = self._check_X(X, fitting=False)
        left, frac, right = self._weights(self._check_grid(X, wavelengths))
        return X[:, left] * (1.0 - frac) + X[:, right] * frac

    def output_wavelengths(self, wavelengths):
        return self._target()
