"""Prediction outlier statistics: is a new spectrum like the ones the model was calibrated on?

ASTM E1655's checks, as every commercial NIR package makes them before it reports a value:

* **Hotelling's T²**: the Mahalanobis distance of a spectrum's scores from the calibration
  scores' centre (leverage inside the model's latent space). Limit for a NEW observation
  (not one of the calibration set) at level alpha:
  ``a (n-1)(n+1) / (n (n-a)) * F(1-alpha; a, n-a)`` (Tracy, Young & Mason 1992).
* **Q / SPE**: the squared residual of the spectrum after projection onto the latent space
  (what the model cannot describe). Limit by **Box's chi² approximation** (Box 1954):
  ``Q ~ g chi²(h)`` with ``g = theta2/theta1``, ``h = theta1²/theta2``, where ``theta_k``
  is the sum of the k-th powers of the residual covariance's eigenvalues. Not
  Jackson-Mudholkar: its normal approximation needs ``h0 = 1 - 2 theta1 theta3 / (3
  theta2²)`` > 0, and on the Tablet calibration (SNV > scaler > PLS 8) h0 comes out
  negative (a few large residual eigenvalues dominate), so its limit is meaningless there;
  Box's needs no such condition. ``h0`` is kept in the summary for the record.
* **y range**: a prediction outside the calibration range of the reference values is an
  extrapolation.

The latent space is the model's own when it has one (PLS: ``x_rotations_`` takes
centred, scaled spectra to scores, ``x_loadings_`` takes scores back), else a PCA of the
preprocessed calibration spectra (components for 99 % of the variance, at most 20).

`build_diagnostics` runs at training, once per fold, on what that fold's model saw; the
`CalibrationDiagnostics` it returns is numpy only (no estimator inside), so it pickles
small and loads anywhere. `CalibrationDiagnostics.evaluate` works row by row, so a file
scored in chunks gets the very numbers it gets whole; `combine` merges the folds'
evaluations the way the replay rule merges their predictions (a weighted mean).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

__all__ = ["FLAGS", "LEVELS", "PCA_VARIANCE", "PCA_MAX_COMPONENTS", "CalibrationDiagnostics",
           "build_diagnostics", "evaluate", "combine", "flags_of", "COLUMNS"]

#: The flags, most serious first: a row gets the first that applies.
FLAGS = ("both", "t2", "q", "y_range", "ok")
#: The confidence levels limits are computed at; ratios and flags use the first.
LEVELS = (0.95, 0.99)
PCA_VARIANCE = 0.99
PCA_MAX_COMPONENTS = 20
#: What an evaluation holds per row, and what outbox rows carry.
COLUMNS = ("t2", "q", "t2_ratio", "q_ratio", "flag")


@dataclass(frozen=True)
class CalibrationDiagnostics:
    """What prediction-time checks need of one fitted fold. Spectra X (as the fold's model
    sees them, after its preprocessing) go to scores ``T = ((X - mean) / scale) @ rotations``,
    back to ``T @ loadings_t``; ``score_cov_inv`` is the inverse covariance of the
    calibration scores."""

    method: str  # "pls" (the model's latent space) or "pca" (of the preprocessed spectra)
    mean: np.ndarray  # (p,)
    scale: np.ndarray  # (p,)
    rotations: np.ndarray  # (p, a)
    # (a, p), stored transposed and C-contiguous: numpy's matmul hands only contiguous
    # operands to BLAS, and a transposed view went through its own loop, 15x slower
    loadings_t: np.ndarray
    score_cov_inv: np.ndarray  # (a, a)
    n_calibration: int
    t2_limits: dict  # {0.95: limit, 0.99: limit}
    q_limits: dict
    theta: tuple  # (theta1, theta2, theta3) of the calibration residuals
    y_min: np.ndarray | None  # (k,) per target, None for class labels
    y_max: np.ndarray | None
    calibration_flagged: float  # share of the calibration set over a 95 % limit (or y range)

    @property
    def n_components(self) -> int:
        return int(self.rotations.shape[1])

    @property
    def jackson_mudholkar_h0(self) -> float | None:
        t1, t2, t3 = self.theta
        return float(1.0 - 2.0 * t1 * t3 / (3.0 * t2 * t2)) if t2 > 0 else None

    def statistics(self, Xf) -> tuple[np.ndarray, np.ndarray]:
        """(T², Q) of every row of Xf; each row's numbers depend on that row alone.

        With z = X - mean, w = 1/scale²: T = z @ (rotations / scale) and, expanding the
        residual r = z / scale - T @ loadings_t,
        Q = sum(z² w) - 2 T·(z @ (loadings_t.T / scale)) + T (loadings_t loadings_t.T) Tᵀ.
        One pass to centre, one product and one weighted sum of squares: a third of the
        passes over the chunk that forming r takes (each costs about what the arithmetic
        does), and centred first, so no large mean cancels."""
        a = self.n_components
        X = np.asarray(Xf, dtype=np.float64)
        w = self._weights
        if self._centred_already:
            # the spectra the model sees are centred already (a scaler before it): the mean
            # goes through the products instead of a pass over the chunk; with |mean| under
            # a tenth of a std, expanding sum((x - m)² w) loses no digit that matters
            m = self.mean
            both = _rowwise(X, self._projection_and_mean)
            T, zl = both[:, :a] - self._mean_through[:a], both[:, a:2 * a] - self._mean_through[a:]
            zz = np.einsum("ij,ij,j->i", X, X, w, optimize=False) - 2.0 * both[:, 2 * a] + float(np.sum(m * m * w))
        else:
            z = np.subtract(X, self.mean)
            both = _rowwise(z, self._projection)
            T, zl = both[:, :a], both[:, a:]
            zz = np.einsum("ij,ij,j->i", z, z, w, optimize=False)
        t2 = np.einsum("ij,jk,ik->i", T, self.score_cov_inv, T, optimize=False)
        q = zz - 2.0 * np.einsum("ij,ij->i", T, zl) + np.einsum("ij,jk,ik->i", T, self._loadings_gram, T, optimize=False)
        return t2, np.maximum(q, 0.0)  # a rounding below 0 is a residual of 0

    @property
    def _centred_already(self) -> bool:
        return self._derived("_c", lambda: bool(np.max(np.abs(self.mean) / self.scale) <= 0.1))

    @property
    def _projection_and_mean(self) -> np.ndarray:
        """(p, 2a + 1): the projection, and mean * w for the cross term of the expansion."""
        return self._derived("_pm", lambda: np.ascontiguousarray(
            np.hstack([self._projection, (self.mean * self._weights)[:, None]])))

    @property
    def _mean_through(self) -> np.ndarray:
        """mean @ projection: what the uncentred product has in excess."""
        return self._derived("_mt", lambda: self.mean @ self._projection)

    @property
    def _projection(self) -> np.ndarray:
        """(p, 2a): [rotations / scale, loadings_t.T / scale], C-contiguous."""
        return self._derived("_proj", lambda: np.ascontiguousarray(
            np.hstack([self.rotations, self.loadings_t.T]) / self.scale[:, None]))

    @property
    def _weights(self) -> np.ndarray:
        return self._derived("_w", lambda: 1.0 / (self.scale * self.scale))

    @property
    def _loadings_gram(self) -> np.ndarray:
        return self._derived("_g", lambda: self.loadings_t @ self.loadings_t.T)

    def _derived(self, name: str, make):
        """Matrices computed once per loaded object, and never pickled (__getstate__)."""
        found = self.__dict__.get(name)
        if found is None:
            found = make()
            object.__setattr__(self, name, found)
        return found

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    @property
    def loadings(self) -> np.ndarray:
        return self.loadings_t.T

    def evaluate(self, Xf, y_pred=None) -> dict:
        """{t2, q, t2_ratio, q_ratio (to the 95 % limits), y_out, flag} per row."""
        t2, q = self.statistics(Xf)
        out = {"t2": t2, "q": q, "t2_ratio": t2 / self.t2_limits[LEVELS[0]],
               "q_ratio": q / self.q_limits[LEVELS[0]] if self.q_limits[LEVELS[0]] > 0 else np.where(q > 0, np.inf, 0.0)}
        out["y_out"] = self.outside_y(y_pred, len(t2))
        out["flag"] = flags_of(out["t2_ratio"], out["q_ratio"], out["y_out"])
        return out

    def outside_y(self, y_pred, n: int) -> np.ndarray:
        if y_pred is None or self.y_min is None:
            return np.zeros(n, dtype=bool)
        y = np.asarray(y_pred, dtype=np.float64).reshape(n, -1)
        return np.any((y < self.y_min) | (y > self.y_max), axis=1)

    def combine(self, evaluations: list[dict], weights: Sequence[float] | None, y_pred,
                others: Sequence["CalibrationDiagnostics"] = ()) -> dict:
        """`combine` with this object's and `others`' y ranges (the method a stored
        chain's replay calls on a loaded object: storage does not import this module)."""
        return combine(evaluations, weights, y_pred, [self, *others])

    def summary(self) -> dict:
        """Plain numbers for the chain's metadata (JSON)."""
        return {"method": self.method, "n_components": self.n_components, "n_calibration": self.n_calibration,
                "t2_limit_95": float(self.t2_limits[0.95]), "t2_limit_99": float(self.t2_limits[0.99]),
                "q_limit_95": float(self.q_limits[0.95]), "q_limit_99": float(self.q_limits[0.99]),
                "q_limit_method": "box_chi2", "jackson_mudholkar_h0": self.jackson_mudholkar_h0,
                "y_min": None if self.y_min is None else self.y_min.tolist(),
                "y_max": None if self.y_max is None else self.y_max.tolist(),
                "calibration_flagged": float(self.calibration_flagged)}


def _rowwise(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """A @ B one row at a time, as a stack of (1, k) @ (k, m) products. Not ``A @ B``:
    BLAS picks its kernel, and so its order of summation, by the matrix's shape, so a row's
    product can differ in the last bit between a chunk of 7 rows and the whole file (seen
    here); a stack calls the same small product for every row whatever the rows around it,
    and costs about what one big product does (numpy's own einsum loop, the other row-wise
    way, was 4x slower)."""
    return np.matmul(A[:, None, :], B)[:, 0, :]


def flags_of(t2_ratio, q_ratio, y_out) -> np.ndarray:
    """'both' > 't2' > 'q' > 'y_range' > 'ok', on ratios to the 95 % limits."""
    t2_over, q_over = np.asarray(t2_ratio) > 1.0, np.asarray(q_ratio) > 1.0
    return np.select([t2_over & q_over, t2_over, q_over, np.asarray(y_out, dtype=bool)],
                     list(FLAGS[:4]), default=FLAGS[4]).astype(object)


def evaluate(diagnostics: CalibrationDiagnostics, Xf, y_pred=None) -> dict:
    return diagnostics.evaluate(Xf, y_pred)


def combine(evaluations: list[dict], weights: Sequence[float] | None, y_pred,
            diagnostics: Sequence[CalibrationDiagnostics] = ()) -> dict:
    """The folds' evaluations merged as the replay rule merges predictions:
    sum(w_f * x_f) / sum(w_f) of t2, q and the ratios; the flag recomputed from the merged
    ratios, and the y range from the merged prediction against the union of the folds'
    calibration ranges (for K-fold, the whole calibration set's range)."""
    w = [1.0] * len(evaluations) if weights is None else [float(x) for x in weights]
    total = sum(w)
    out = {}
    for name in ("t2", "q", "t2_ratio", "q_ratio"):
        acc = w[0] * evaluations[0][name]
        for wf, ev in zip(w[1:], evaluations[1:]):
            acc = acc + wf * ev[name]
        out[name] = acc / total
    n = len(out["t2"])
    ranged = [d for d in diagnostics if d.y_min is not None]
    if y_pred is not None and ranged:
        lo = np.min([d.y_min for d in ranged], axis=0)
        hi = np.max([d.y_max for d in ranged], axis=0)
        y = np.asarray(y_pred, dtype=np.float64).reshape(n, -1)
        out["y_out"] = np.any((y < lo) | (y > hi), axis=1)
    else:
        out["y_out"] = np.zeros(n, dtype=bool)
        for ev in evaluations if not ranged else ():
            out["y_out"] |= ev["y_out"]
    out["flag"] = flags_of(out["t2_ratio"], out["q_ratio"], out["y_out"])
    return out


# -- building, at training -------------------------------------------------------------------
def _latent_space(Xf: np.ndarray, model) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(method, mean, scale, rotations, loadings)."""
    mean = Xf.mean(axis=0)
    if all(hasattr(model, name) for name in ("x_rotations_", "x_loadings_")):
        # sklearn's PLS centres X and, with scale=True (its default), divides by the std
        # (ddof=1), a zero std by 1: the same here, so T reproduces model.x_scores_
        if getattr(model, "scale", True):
            scale = Xf.std(axis=0, ddof=1)
            scale[scale == 0.0] = 1.0
        else:
            scale = np.ones(Xf.shape[1])
        return ("pls", mean, scale, np.asarray(model.x_rotations_, dtype=np.float64),
                np.asarray(model.x_loadings_, dtype=np.float64))
    Xc = Xf - mean
    _, s, vt = np.linalg.svd(Xc, full_matrices=False)
    variance = s ** 2
    share = np.cumsum(variance) / variance.sum() if variance.sum() > 0 else np.ones_like(variance)
    rank = int(np.sum(s > s[0] * max(Xc.shape) * np.finfo(float).eps)) if s.size else 0
    # leave at least one dimension for the residual, or Q and its limit are 0
    a = min(int(np.searchsorted(share, PCA_VARIANCE) + 1), PCA_MAX_COMPONENTS, max(1, rank - 1))
    V = vt[:a].T.copy()
    return "pca", mean, np.ones(Xf.shape[1]), V, V


def _thetas(residual: np.ndarray) -> tuple[float, float, float]:
    """theta_k = trace(C^k), C the residual covariance (ddof=1), through the smaller Gram
    matrix (its nonzero eigenvalues are C's)."""
    n, p = residual.shape
    G = (residual @ residual.T if n <= p else residual.T @ residual) / (n - 1)
    G2 = G @ G
    return float(np.trace(G)), float(np.trace(G2)), float(np.einsum("ij,ji->", G2, G))


def t2_limit(n: int, a: int, level: float) -> float:
    from scipy.stats import f

    return float(a * (n - 1) * (n + 1) / (n * (n - a)) * f.ppf(level, a, n - a))


def q_limit_box(theta1: float, theta2: float, level: float) -> float:
    from scipy.stats import chi2

    if theta1 <= 0 or theta2 <= 0:
        return 0.0
    return float(theta2 / theta1 * chi2.ppf(level, theta1 * theta1 / theta2))


def build_diagnostics(Xf, model, y=None) -> CalibrationDiagnostics | None:
    """The checks of one fold, from the spectra its model was fitted on (after the fold's
    preprocessing), the fitted model and the fold's reference values (numbers: a y range
    is kept; class labels: none). None when the fold has too few spectra for limits (at
    least components + 2: the F distribution needs n - a >= 1, the residual n - 1 >= 1)."""
    Xf = np.asarray(Xf, dtype=np.float64)
    n = Xf.shape[0]
    if n < 3:
        return None
    method, mean, scale, rotations, loadings = _latent_space(Xf, model)
    a = rotations.shape[1]
    if n - a < 2:
        return None
    Xc = (Xf - mean) / scale
    T = Xc @ rotations
    score_cov_inv = np.linalg.pinv(T.T @ T / (n - 1))
    theta = _thetas(Xc - T @ loadings.T)
    y_min = y_max = None
    if y is not None:
        y_arr = np.asarray(y)
        if y_arr.dtype.kind in "iuf":
            y2 = y_arr.astype(np.float64).reshape(n, -1)
            y_min, y_max = y2.min(axis=0), y2.max(axis=0)
    diag = CalibrationDiagnostics(
        method=method, mean=mean, scale=scale, rotations=np.ascontiguousarray(rotations), loadings_t=np.ascontiguousarray(loadings.T),
        score_cov_inv=score_cov_inv,
        n_calibration=n, t2_limits={lv: t2_limit(n, a, lv) for lv in LEVELS},
        q_limits={lv: q_limit_box(theta[0], theta[1], lv) for lv in LEVELS}, theta=theta,
        y_min=y_min, y_max=y_max, calibration_flagged=0.0)
    flagged = diag.evaluate(Xf, None if y_min is None else y)["flag"] != "ok"
    return replace(diag, calibration_flagged=float(np.mean(flagged)))
