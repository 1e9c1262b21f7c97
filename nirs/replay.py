"""Apply fitted steps to new spectra, by the replay rule written down in `nirs.trace`.

Training uses these same functions for every prediction it records, so a chain that storage
replays by the same rule reproduces the training-time predictions.
"""

from __future__ import annotations

import numpy as np

from nirs.operators import transform_with_grid


def _steps_of(steps, kind):
    return [s for s in steps if s.kind == kind]


def transform(steps, fold_id: str, X, wavelengths=None):
    """X after every "transformer" step fitted on `fold_id`; returns (X, grid)."""
    Xf, grid = np.asarray(X, dtype=np.float64), wavelengths
    for step in _steps_of(steps, "transformer"):
        Xf, grid = transform_with_grid(step.fitted[fold_id], Xf, grid)
    return Xf, grid


def align_proba(proba, model_classes, classes) -> np.ndarray:
    """Columns of `proba` (in the model's class order) moved into `classes` order; classes the
    model never saw get zeros."""
    index = {c: j for j, c in enumerate(classes)}
    out = np.zeros((proba.shape[0], len(classes)), dtype=np.float64)
    for k, c in enumerate(np.asarray(model_classes).tolist()):
        out[:, index[c]] = proba[:, k]
    return out


def predict_fold(steps, fold_id: str, X, wavelengths, task_type: str, classes=None):
    """One fold's output on X: regression predictions (n,) in target units, or
    classification probabilities (n, len(classes)) in `classes` order."""
    Xf, _ = transform(steps, fold_id, X, wavelengths)
    (model_step,) = _steps_of(steps, "model")
    model = model_step.fitted[fold_id]
    if task_type == "regression":
        p = np.asarray(model.predict(Xf), dtype=np.float64).ravel()
        for yt in _steps_of(steps, "y_transformer"):
            p = np.asarray(yt.fitted[fold_id].inverse_transform(p.reshape(-1, 1)), dtype=np.float64).ravel()
        return p
    if hasattr(model, "predict_proba"):
        return align_proba(np.asarray(model.predict_proba(Xf), dtype=np.float64), model.classes_, classes)
    labels = np.asarray(model.predict(Xf)).tolist()
    index = {c: j for j, c in enumerate(classes)}
    onehot = np.zeros((len(labels), len(classes)), dtype=np.float64)
    onehot[np.arange(len(labels)), [index[c] for c in labels]] = 1.0
    return onehot


def combine(outputs: list, weights: list | None = None) -> np.ndarray:
    """sum(w_f * out_f) / sum(w_f), equal weights when `weights` is None."""
    w = [1.0] * len(outputs) if weights is None else [float(x) for x in weights]
    acc = w[0] * outputs[0]
    for wf, out in zip(w[1:], outputs[1:]):
        acc = acc + wf * out
    return acc / sum(w)


def labels_from_proba(proba: np.ndarray, classes, dtype=None) -> np.ndarray:
    """classes[argmax] per row; strings come back as an object array, numbers as numbers."""
    if dtype is None:
        dtype = np.asarray(list(classes)).dtype
        dtype = dtype if dtype.kind in "iufb" else object
    labels = np.asarray(list(classes), dtype=dtype)
    return labels[np.argmax(proba, axis=1)]


def replay(trace, X, wavelengths=None):
    """Predict X with a trace's fitted steps, combined by the replay rule.

    Returns (y_pred, y_proba); y_proba is None for regression. The grid must be the
    training grid (storage resamples other grids first; this function does not).
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != trace.n_features:
        raise ValueError(f"X has {X.shape[-1]} features; the chain was trained on {trace.n_features}")
    grid = trace.wavelengths
    if wavelengths is not None and grid is not None:
        given = np.asarray(wavelengths, dtype=np.float64).ravel()
        if given.shape != grid.shape or not np.allclose(given, grid, rtol=0, atol=1e-9):
            raise ValueError(
                f"X is on grid {given[0]:g}-{given[-1]:g} ({given.size} points); the chain was trained on "
                f"{grid[0]:g}-{grid[-1]:g} ({grid.size} points); resample X onto the training grid first"
            )
    folds = ["refit"] if trace.refit else list(trace.fold_ids)
    weights = None if trace.fold_weights is None else [trace.fold_weights[f] for f in folds]
    outputs = [predict_fold(trace.steps, f, X, grid, trace.task_type, trace.classes) for f in folds]
    combined = combine(outputs, None if trace.refit else weights)
    if trace.task_type == "regression":
        return combined, None
    return labels_from_proba(combined, trace.classes), combined
