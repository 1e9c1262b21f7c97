"""Replaying a stored chain on new spectra.

The rule (the training core in ``nirs`` computes its "avg" predictions the same way,
so a replay reproduces training-time test predictions):

* models to use: the ``refit`` fold alone when the chain has one
  (``fold_strategy == "refit"``), otherwise every fold;
* for each fold: apply the chain's transformer steps in order, each with that fold's
  fitted object (or the shared one); wavelength-aware operators
  (``requires_wavelengths = True``) get the current grid as ``wavelengths=`` and say
  the grid after them via ``output_wavelengths``; other operators keep the grid when
  they keep the width, and drop it otherwise;
* regression: the fold model's ``predict``, undone through the fold's target scaler
  (``y_transformer`` step) when there is one; folds combined by their weights
  (equal when none are stored);
* classification: each fold's ``predict_proba`` aligned to the chain's ``classes``
  (a class a fold never saw gets 0), averaged by weight; the label is the class of
  highest mean probability, in its original type (strings stay strings). A model
  without ``predict_proba`` contributes a one-hot vote.

Before computing, the input is checked: a different grid is resampled onto the
training grid when it covers the trained range, and refused otherwise; a different
number of features is refused with both counts.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import numpy as np

from .errors import ReplayError

Loader = Callable[[str], Any]


def _grid_matches(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.allclose(a, b, rtol=0, atol=1e-6 * max(1.0, float(np.abs(b).max())))


def prepare_input(chain: dict, X, wavelengths=None) -> np.ndarray:
    """Check X against the chain's training input; resample onto its grid if needed."""
    try:
        X = np.asarray(X, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ReplayError(f"X must be a numeric matrix: {exc}") from exc
    if X.ndim == 1:
        X = X.reshape(1, -1)
    if X.ndim != 2:
        raise ReplayError(f"X must be 2-D (samples x wavelengths), got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        rows, cols = np.nonzero(~np.isfinite(X))
        raise ReplayError(f"X has {rows.size} NaN or infinite values (first at row {rows[0]}, column {cols[0]})")
    trained = chain.get("wavelengths")
    if wavelengths is not None and trained is not None:
        grid = np.asarray(wavelengths, dtype=float)
        if grid.ndim != 1 or grid.size != X.shape[1]:
            raise ReplayError(f"wavelengths has {grid.size} values but X has {X.shape[1]} columns")
        if not _grid_matches(grid, trained):
            X = resample(X, grid, trained)
    expected = chain.get("n_features")
    if expected is not None and X.shape[1] != expected:
        raise ReplayError(f"X has {X.shape[1]} features but chain {chain['chain_id']} was trained on "
                          f"{expected}; pass wavelengths= to resample from another grid")
    return X


def resample(X: np.ndarray, grid: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Linear interpolation of every spectrum from `grid` onto `target` (no extrapolation)."""
    order = np.argsort(grid)
    grid, X = grid[order], X[:, order]
    lo, hi = float(target.min()), float(target.max())
    if grid[0] > lo + 1e-9 or grid[-1] < hi - 1e-9:
        raise ReplayError(f"the new wavelength grid ({grid[0]:g}-{grid[-1]:g}) does not cover the "
                          f"trained range ({lo:g}-{hi:g}); refusing to extrapolate")
    return np.vstack([np.interp(target, grid, row) for row in X])


def replay_folds(chain: dict) -> list[str]:
    folds = list(chain["fold_artifacts"])
    if chain["fold_strategy"] == "refit":
        if "refit" not in folds:
            raise ReplayError(f"chain {chain['chain_id']} says refit but has no 'refit' fold")
        return ["refit"]
    return [f for f in folds if f != "refit"] or folds


def _artifact_for(chain: dict, fold: str, step_idx: int) -> str | None:
    per_fold = chain["fold_artifacts"].get(fold)
    if isinstance(per_fold, dict) and str(step_idx) in per_fold:
        return per_fold[str(step_idx)]
    if isinstance(per_fold, str) and step_idx == chain["model_step_idx"]:
        return per_fold  # the spec's original: a fold maps to its model artifact
    shared = chain["shared_artifacts"].get(str(step_idx))
    if isinstance(shared, list):
        return shared[0] if shared else None
    return shared


def _transform(op: Any, X: np.ndarray, grid):
    if getattr(op, "requires_wavelengths", False):
        if grid is None:
            raise ReplayError(f"{type(op).__name__} needs the wavelength grid, which this chain does not know")
        return op.transform(X, wavelengths=grid), np.asarray(op.output_wavelengths(grid), dtype=float)
    out = op.transform(X)
    return out, (grid if grid is not None and out.shape[1] == X.shape[1] else None)


def preprocess(chain: dict, X: np.ndarray, load: Loader, fold: str | None = None):
    """X and its grid after the chain's transformer steps of one fold (the first replay
    fold by default): what the model of that fold sees."""
    fold = fold or replay_folds(chain)[0]
    grid = chain.get("wavelengths")
    for step in sorted(chain["steps"], key=lambda s: s["step_idx"]):
        if step["step_idx"] == chain["model_step_idx"] or step.get("kind", "transformer") != "transformer":
            continue
        X, grid = _transform(load(_artifact_for(chain, fold, step["step_idx"])), X, grid)
    return X, grid


def run_chain(chain: dict, X: np.ndarray, load: Loader) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions (and, for classifiers, mean probabilities) of a checked input."""
    steps = sorted(chain["steps"], key=lambda s: s["step_idx"])
    model_idx = chain["model_step_idx"]
    transformers = [s["step_idx"] for s in steps
                    if s["step_idx"] != model_idx and s.get("kind", "transformer") == "transformer"]
    y_steps = [s["step_idx"] for s in steps if s.get("kind") == "y_transformer"]
    folds = replay_folds(chain)
    weights = chain.get("fold_weights") or {}
    w = np.array([float(weights.get(f, 1.0)) for f in folds])
    classes = chain.get("classes")
    is_classifier = chain.get("task_type") == "classification"
    grid0 = chain.get("wavelengths")
    # Folds that share a fitted prefix (e.g. a stateless SNV saved once) share its output,
    # which is kept only until the last fold that needs it has used it: a chunk being
    # scored then costs a few copies of itself, not one per fold and step.
    prefixes: dict[str, list[tuple]] = {}
    uses: Counter = Counter()
    for fold in folds:
        key, keys = (), []
        for idx in transformers:
            artifact_id = _artifact_for(chain, fold, idx)
            if artifact_id is None:
                raise ReplayError(f"chain {chain['chain_id']} has no artifact for step {idx} of {fold}")
            key = key + (artifact_id,)
            keys.append(key)
        prefixes[fold] = keys
        uses.update(keys)
    memo: dict[tuple, tuple[np.ndarray, Any]] = {}
    outputs = []
    for fold in folds:
        Xf, grid = X, grid0
        for key in prefixes[fold]:
            if key not in memo:
                memo[key] = _transform(load(key[-1]), Xf, grid)
            Xf, grid = memo[key]
            uses[key] -= 1
            if not uses[key]:
                del memo[key]
        model = load(_artifact_for(chain, fold, model_idx))
        if is_classifier:
            outputs.append(_class_scores(model, Xf, classes))
        else:
            pred = np.asarray(model.predict(Xf), dtype=float)
            pred = pred.reshape(len(Xf), -1)
            for idx in y_steps:
                pred = load(_artifact_for(chain, fold, idx)).inverse_transform(pred)
            outputs.append(np.asarray(pred).reshape(len(Xf), -1))
    stacked = np.stack(outputs)
    combined = np.tensordot(w, stacked, axes=1) / w.sum()
    if is_classifier:
        return np.asarray(classes)[np.argmax(combined, axis=1)], combined
    return (combined[:, 0] if combined.shape[1] == 1 else combined), None


def _class_scores(model: Any, X: np.ndarray, classes: list) -> np.ndarray:
    index = {_key(c): i for i, c in enumerate(classes)}
    out = np.zeros((len(X), len(classes)))
    model_classes = list(getattr(model, "classes_", classes))
    if hasattr(model, "predict_proba"):
        proba = np.asarray(model.predict_proba(X), dtype=float)
        for j, c in enumerate(model_classes):
            out[:, index[_key(c)]] = proba[:, j]
    else:
        for row, label in enumerate(model.predict(X)):
            out[row, index[_key(label)]] = 1.0
    return out


def _key(label: Any) -> Any:
    return label.item() if isinstance(label, np.generic) else label
