"""The replay rule: how fitted steps turn spectra into predictions. One module, numpy only.

Training (`nirs.training`) computes every prediction it records with these functions, and
storage replays a stored chain with them (`storage.replay.ReplayableChain`), so a stored
chain gives back its training-time predictions. Storage imports this module and
`nirs.trace`, nothing else of `nirs`; so it imports numpy alone (tests/test_boundaries.py).

The rule, for new spectra X:

1. The input (`fit_to_grid`): a numeric, finite 2-D matrix. Given with its wavelength
   grid, a grid other than the training grid is resampled onto it by linear interpolation
   when it covers the trained range, and refused when it does not (no extrapolation).
   Grids are the same when every wavelength agrees within GRID_RTOL of the largest one:
   wavelengths read back from file headers carry their printing's rounding, and an
   absolute 1e-9 resampled grids that were the same. Then the number of columns must be
   the trained one.
2. The folds (`replay_folds`): the "refit" model alone when there is one, otherwise every
   cross-validation fold.
3. Each fold: its transformer steps in order (`transform_with_grid`: wavelength-aware
   operators, ``requires_wavelengths = True``, get the grid as ``wavelengths=`` and say
   the grid after them through ``output_wavelengths``; other transformers keep the grid
   when they keep the width, and drop it otherwise), then its model (`fold_output`):
   * regression: ``predict`` as (n, k) columns, passed back through the target scaler's
     ``inverse_transform`` when there is one; one column comes back as (n,), several stay
     (n, k) (a multi-output model's columns are never flattened into one vector);
   * classification: ``predict_proba`` aligned to the chain's classes through the model's
     ``classes_`` (a class the fold never saw gets 0), or the one-hot of ``predict`` for a
     model without ``predict_proba``.
   Steps saved with no fitted artifact, as the spec's original records every step of a
   pipeline (`step_role`): a splitter (an object with ``split`` and no ``transform``, e.g.
   ``sklearn.model_selection.KFold``) is not applied at prediction time; a transformer
   saved ``stateless`` is rebuilt from its ``operator_class`` and ``params`` (and fitted on
   the input, which a stateless transformer learns nothing from) when its module is
   trusted (`trusted_modules`: nirs and sklearn, plus ``NIRSFLOW_TRUSTED_MODULES``);
   anything else is an error naming the step, never a step silently skipped.
   A chain that does not say its task is a classifier when its fitted model has
   ``classes_`` (scikit-learn's own mark of a classifier); its classes are then the
   models' ``classes_``.
4. Combined (`combine`): sum(w_f * out_f) / sum(w_f), equal weights unless given; a
   classifier's label is the class of highest mean probability, in its original type
   (`labels_from_proba`).
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["GRID_RTOL", "ReplayError", "DEFAULT_TRUSTED", "TRUSTED_ENV", "trusted_modules", "is_trusted",
           "operator_class_of", "step_role", "rebuild_stateless", "is_classifier", "classes_of", "check_width", "same_grid", "covers", "grid_text", "as_spectra", "check_input",
           "resample", "fit_to_grid", "require_grid", "transform_with_grid", "fold_output", "replay_folds",
           "combine", "labels_from_proba", "predict_fold", "replay"]

#: Two grids are the same when each wavelength agrees within this fraction of the largest.
GRID_RTOL = 1e-6


class ReplayError(ValueError):
    """Spectra that cannot be replayed through a chain. ``problem``, ``expected`` and
    ``found`` say it as data (for notes and the UI); they survive pickling."""

    def __init__(self, message: str, *, problem: str | None = None, expected: str | None = None,
                 found: str | None = None) -> None:
        super().__init__(message)
        self.problem = problem or message
        self.expected, self.found = expected, found


# -- 1. the input -------------------------------------------------------------------------
def _tolerance(grid: np.ndarray) -> float:
    return GRID_RTOL * max(1.0, float(np.abs(grid).max()))


def same_grid(a, b) -> bool:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= _tolerance(b)))


def covers(grid, target) -> bool:
    """Whether `grid` spans `target`'s range, so `target` can be interpolated from it."""
    grid, target = np.asarray(grid, dtype=np.float64), np.asarray(target, dtype=np.float64)
    tol = _tolerance(target)
    return float(grid.min()) <= float(target.min()) + tol and float(grid.max()) >= float(target.max()) - tol


def grid_text(grid) -> str:
    grid = np.asarray(grid, dtype=np.float64)
    return f"{grid.size} wavelengths, {float(grid.min()):g}-{float(grid.max()):g}"


def _range(grid: np.ndarray) -> str:
    return f"{float(grid.min()):g}-{float(grid.max()):g}"


def as_spectra(X) -> np.ndarray:
    """X as a float matrix (one spectrum: one row), or ReplayError naming what is wrong."""
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ReplayError(f"X must be a numeric matrix: {exc}") from exc
    if X.ndim == 1:
        X = X.reshape(1, -1)
    if X.ndim != 2:
        raise ReplayError(f"X must be 2-D (samples x wavelengths), got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        rows, cols = np.nonzero(~np.isfinite(X))
        raise ReplayError(f"X has {rows.size} NaN or infinite values (first at row {rows[0]}, column {cols[0]})")
    return X


def check_input(trained, n_features: int | None, wavelengths, n_columns: int,
                name: str = "the chain") -> np.ndarray | None:
    """Whether spectra of `n_columns` columns on grid `wavelengths` (None: not known) can
    be replayed through a chain trained on grid `trained` with `n_features` columns (either
    may be None: not recorded). Returns the grid to resample from, or None when the
    spectra are used as they are; raises ReplayError with expected and found otherwise."""
    if trained is not None and wavelengths is not None:
        trained = np.asarray(trained, dtype=np.float64)
        grid = np.asarray(wavelengths, dtype=np.float64).ravel()
        if grid.size != n_columns:
            raise ReplayError(f"wavelengths has {grid.size} values but X has {n_columns} columns",
                              expected=f"{n_columns} wavelengths", found=f"{grid.size} wavelengths")
        if same_grid(grid, trained):
            return None
        if covers(grid, trained):
            return grid
        ranges = (f"the new wavelength grid ({_range(grid)}) does not cover the trained range "
                  f"({_range(trained)})")
        if grid.size != trained.size:
            problem = (f"wrong number of wavelengths: {grid.size} where {name} was trained on {trained.size}, "
                       f"and {ranges}, so it cannot be resampled")
        else:
            problem = f"{ranges}; refusing to extrapolate"
        raise ReplayError(problem, expected=f"{grid_text(trained)} (the grid {name} was trained on)",
                          found=grid_text(grid))
    if n_features is not None and n_columns != n_features:
        problem = f"wrong number of wavelengths: X has {n_columns} features but {name} was trained on {n_features}"
        raise ReplayError(f"{problem}; give its wavelength grid to resample it from another grid", problem=problem,
                          expected=f"{n_features} wavelength columns", found=f"{n_columns} wavelength columns")
    return None


def resample(X: np.ndarray, grid, target) -> np.ndarray:
    """Every spectrum linearly interpolated from `grid` onto `target` (never extrapolated)."""
    grid, target = np.asarray(grid, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if not covers(grid, target):
        raise ReplayError(f"the new wavelength grid ({_range(grid)}) does not cover the trained range "
                          f"({_range(target)}); refusing to extrapolate")
    order = np.argsort(grid)
    grid, X = grid[order], X[:, order]
    return np.vstack([np.interp(target, grid, row) for row in X])


def fit_to_grid(X, trained, n_features: int | None, wavelengths=None,
                name: str = "the chain") -> np.ndarray:
    """X checked (`as_spectra`, `check_input`) and on the training grid."""
    X = as_spectra(X)
    source = check_input(trained, n_features, wavelengths, X.shape[1], name)
    return X if source is None else resample(X, source, trained)


# -- 3. one fold ------------------------------------------------------------------------------
def require_grid(op: Any, wavelengths) -> None:
    if wavelengths is None:
        raise ReplayError(f"{type(op).__name__} works on wavelengths, but none are known here: the data has no "
                          "wavelength grid, or an earlier step changed the number of features")


def transform_with_grid(op: Any, X, wavelengths):
    """A fitted transformer applied; returns (X_out, the grid after it, or None)."""
    X = np.asarray(X)
    if getattr(op, "requires_wavelengths", False):
        require_grid(op, wavelengths)
        out = np.asarray(op.transform(X, wavelengths=wavelengths))
        grid = np.asarray(op.output_wavelengths(wavelengths), dtype=np.float64)
        if grid.shape[0] != out.shape[1]:
            raise ValueError(f"{type(op).__name__}.output_wavelengths gave {grid.shape[0]} wavelengths "
                             f"for {out.shape[1]} output columns")
        return out, grid
    out = np.asarray(op.transform(X))
    return out, (wavelengths if wavelengths is not None and out.shape[1] == X.shape[1] else None)


def _plain(label: Any) -> Any:
    return label.item() if isinstance(label, np.generic) else label


def fold_output(model: Any, X: np.ndarray, task_type: str, classes: Sequence | None = None,
                y_transformers: Iterable[Any] = ()) -> np.ndarray:
    """One fold model's output on transformed X: regression predictions in target units,
    (n,) or (n, k); or class probabilities (n, len(classes)) in `classes` order."""
    n = len(X)
    if task_type == "classification":
        index = {_plain(c): j for j, c in enumerate(classes)}
        out = np.zeros((n, len(index)), dtype=np.float64)
        if hasattr(model, "predict_proba"):
            proba = np.asarray(model.predict_proba(X), dtype=np.float64)
            for k, label in enumerate(np.asarray(getattr(model, "classes_", classes)).tolist()):
                out[:, index[label]] = proba[:, k]
        else:
            out[np.arange(n), [index[label] for label in np.asarray(model.predict(X)).tolist()]] = 1.0
        return out
    pred = np.asarray(model.predict(X), dtype=np.float64).reshape(n, -1)
    for scaler in y_transformers:
        pred = np.asarray(scaler.inverse_transform(pred), dtype=np.float64).reshape(n, -1)
    return pred[:, 0] if pred.shape[1] == 1 else pred


# -- steps saved with no artifact ------------------------------------------------------------
#: Modules whose classes a stateless step may be rebuilt from (their top-level package).
DEFAULT_TRUSTED = ("nirs", "sklearn")
#: More trusted modules, comma-separated (e.g. ``mylab.preprocessing``).
TRUSTED_ENV = "NIRSFLOW_TRUSTED_MODULES"


def trusted_modules(extra: Iterable[str] | None = None) -> tuple[str, ...]:
    """The default trusted modules, those of ``NIRSFLOW_TRUSTED_MODULES``, and `extra`."""
    named = [m.strip() for m in os.environ.get(TRUSTED_ENV, "").split(",") if m.strip()]
    return tuple(dict.fromkeys([*DEFAULT_TRUSTED, *named, *(extra or ())]))


def is_trusted(operator_class: str, trusted: Iterable[str]) -> bool:
    module = operator_class.rpartition(".")[0]
    return any(module == t or module.startswith(t + ".") for t in trusted)


def operator_class_of(step: dict, trusted: Iterable[str], name: str = "the chain") -> type:
    """The class a step names, imported only from a trusted module (importing runs code)."""
    trusted = tuple(trusted)
    where = f"step {step.get('step_idx')} ({step.get('operator_class')}) of {name}"
    path = step.get("operator_class")
    if not isinstance(path, str) or "." not in path:
        raise ReplayError(f"{where} has no fitted artifact and no importable operator_class")
    if not is_trusted(path, trusted):
        raise ReplayError(f"{where} has no fitted artifact, and its module is not trusted to rebuild it from "
                          f"operator_class and params (trusted: {', '.join(trusted)}; add modules with "
                          f"{TRUSTED_ENV})", expected="a trusted module", found=path.rpartition(".")[0])
    module, _, cls = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        raise ReplayError(f"{where} has no fitted artifact and its class cannot be imported here: {exc}") from None


def step_role(step: dict, trusted: Iterable[str], name: str = "the chain") -> str:
    """What a step with no fitted artifact is at prediction time: "skip" (a splitter) or
    "rebuild" (a stateless transformer). Anything else raises ReplayError naming the step."""
    cls = operator_class_of(step, trusted, name)
    if hasattr(cls, "split") and not hasattr(cls, "transform"):
        return "skip"
    where = f"step {step.get('step_idx')} ({step.get('operator_class')}) of {name}"
    if not hasattr(cls, "transform"):
        raise ReplayError(f"{where} has no fitted artifact and is neither a splitter nor a transformer")
    if step.get("stateless") is not True:
        raise ReplayError(f"{where} has no fitted artifact and is not marked stateless: its fitted state was "
                          "not saved, so it cannot be replayed (the spec's original skipped such a step, "
                          "which gives wrong predictions)")
    return "rebuild"


def rebuild_stateless(step: dict, trusted: Iterable[str], X: np.ndarray, wavelengths,
                      name: str = "the chain") -> Any:
    """A stateless step built from its class and params, fitted on X (it learns nothing)."""
    cls = operator_class_of(step, trusted, name)
    params = step.get("params") or {}
    try:
        op = cls(**params)
        if getattr(op, "requires_wavelengths", False):
            require_grid(op, wavelengths)
            op.fit(X, wavelengths=wavelengths)
        else:
            op.fit(X)
    except ReplayError:
        raise
    except Exception as exc:
        raise ReplayError(f"step {step.get('step_idx')} ({step.get('operator_class')}) of {name} cannot be "
                          f"rebuilt from its params {params!r}: {type(exc).__name__}: {exc}") from exc
    return op


def is_classifier(model: Any) -> bool:
    """scikit-learn's mark of a fitted classifier: its ``classes_``."""
    return hasattr(model, "classes_")


def classes_of(models: Iterable[Any]) -> list:
    """The sorted union of the models' ``classes_`` (a fold may not have seen every class)."""
    return np.unique(np.concatenate([np.asarray(m.classes_) for m in models])).tolist()


def check_width(first: Any, n_columns: int, name: str = "the chain") -> None:
    """Refuse X of the wrong width before any transform runs, by what the fitted first
    step knows (``n_features_in_``), for a chain that did not record its width."""
    expected = getattr(first, "n_features_in_", None)
    if expected is not None and int(expected) != n_columns:
        problem = (f"wrong number of wavelengths: X has {n_columns} features but {name} was fitted on "
                   f"{int(expected)} ({type(first).__name__}.n_features_in_)")
        raise ReplayError(problem, expected=f"{int(expected)} wavelength columns",
                          found=f"{n_columns} wavelength columns")


# -- 2 and 4. which folds, and how they combine ------------------------------------------------
def replay_folds(folds: Iterable[str], refit: bool, name: str = "the chain") -> list[str]:
    folds = list(folds)
    if refit:
        if "refit" not in folds:
            raise ReplayError(f"{name} says refit but has no 'refit' fold")
        return ["refit"]
    return [f for f in folds if f != "refit"] or folds


def combine(outputs: list, weights: Sequence[float] | None = None) -> np.ndarray:
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


# -- the rule on a training trace (nirs.trace.ExecutionTrace) ------------------------------------
def predict_fold(steps, fold_id: str, X, wavelengths, task_type: str, classes=None) -> np.ndarray:
    """One fold's output on X (`fold_output`), from a trace's steps (`FittedStep`s)."""
    Xf, grid = np.asarray(X, dtype=np.float64), wavelengths
    for step in steps:
        if step.kind == "transformer":
            Xf, grid = transform_with_grid(step.fitted[fold_id], Xf, grid)
    (model,) = [s.fitted[fold_id] for s in steps if s.kind == "model"]
    y_transformers = [s.fitted[fold_id] for s in steps if s.kind == "y_transformer"]
    return fold_output(model, Xf, task_type, classes, y_transformers)


def replay(trace, X, wavelengths=None):
    """Predict X with a trace's fitted steps by the rule. Returns (y_pred, y_proba);
    y_proba is None for regression."""
    X = fit_to_grid(X, trace.wavelengths, trace.n_features, wavelengths, "the trace")
    folds = replay_folds([*trace.fold_ids, *(["refit"] if trace.refit else [])], trace.refit)
    weights = None if trace.fold_weights is None else [trace.fold_weights.get(f, 1.0) for f in folds]
    outputs = [predict_fold(trace.steps, f, X, trace.wavelengths, trace.task_type, trace.classes) for f in folds]
    combined = combine(outputs, weights)
    if trace.task_type == "regression":
        return combined, None
    return labels_from_proba(combined, trace.classes), combined
