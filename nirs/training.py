"""Cross-validated fitting of one pipeline into an `ExecutionTrace`. Pure: no Prefect, no store.

The work splits in three so a flow can spread folds over tasks or processes:
`plan_folds` (cheap), `fit_fold` (one fold, returns a picklable `FoldResult`), and
`assemble_trace` (gathers the folds, adds the "avg" predictions). `fit_pipeline` runs all
three in-process.

Transformers and the target scaler are fitted on each fold's training part only. Every
recorded prediction goes through `nirs.replay`, the replay rule storage replays stored
chains by, so a stored chain replays to the recorded numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from nirs import replay
from nirs.config import ConfigError, as_pipeline, build
from nirs.dataset import SpectraDataset
from nirs.diagnostics import build_diagnostics
from nirs.metrics import DEFAULT_METRIC, score_all
from nirs.operators import fit_transform_with_grid
from nirs.registry import class_path, init_params, short_name, to_json_safe
from nirs.trace import ExecutionTrace, FittedStep, PredictionRecord

__all__ = ["FoldPlan", "FoldResult", "plan_folds", "fit_fold", "assemble_trace", "fit_pipeline"]

RESERVED_FOLD_IDS = ("avg", "refit")


@dataclass(frozen=True)
class FoldPlan:
    fold_id: str
    train_idx: np.ndarray  # int64 indices into the training dataset
    val_idx: np.ndarray


@dataclass
class FoldResult:
    """One fitted fold: its objects (aligned with the pipeline's steps) and its predictions."""

    fold_id: str
    plan: FoldPlan
    fitted: list
    predictions: list  # [PredictionRecord]
    duration_ms: int
    diagnostics: object = None  # nirs.diagnostics.CalibrationDiagnostics of this fold's model


def _task(dataset: SpectraDataset):
    if dataset.y is None:
        raise ValueError(f"dataset {dataset.name!r} has no targets y; training needs them")
    task = dataset.task_type
    classes = np.unique(dataset.y).tolist() if task == "classification" else None
    return task, classes


def _check_test(dataset: SpectraDataset, test: SpectraDataset | None) -> None:
    if test is None:
        return
    if test.y is None:
        raise ValueError(f"test set {test.name!r} has no targets y; a test set is for scoring")
    if test.n_features != dataset.n_features:
        raise ValueError(
            f"test set {test.name!r} has {test.n_features} features; training set {dataset.name!r} has {dataset.n_features}"
        )
    a, b = dataset.wavelengths, test.wavelengths
    if (a is None) != (b is None) or (a is not None and not replay.same_grid(a, b)):
        raise ValueError(
            f"test set {test.name!r} has grid {_grid_text(b)}, training set {dataset.name!r} has "
            f"{_grid_text(a)}; resample one onto the other first"
        )


def _grid_text(grid) -> str:
    return "no grid" if grid is None else f"{grid[0]:g}-{grid[-1]:g} ({grid.size} points)"


def _record(fold_id, partition, y_true, output, indices, task, classes, label_dtype) -> PredictionRecord:
    if task == "regression":
        y_pred, proba = output, None
    else:
        proba = output
        y_pred = replay.labels_from_proba(proba, classes, dtype=label_dtype)
    return PredictionRecord(
        fold_id=fold_id,
        partition=partition,
        y_true=np.asarray(y_true),
        y_pred=y_pred,
        y_proba=proba,
        # int32: half the bytes of every stored index array (a grid stores ~3,700 indices
        # per pipeline), and no spectra set comes near 2**31 rows
        sample_indices=np.asarray(indices, dtype=np.int32),
        weights=None,
        scores=score_all(task, y_true, y_pred, proba, classes),
    )


def plan_folds(dataset: SpectraDataset, pipeline) -> list[FoldPlan]:
    """The folds the pipeline's splitter makes on `dataset`: fold_0, fold_1, ..."""
    built = build(pipeline)
    _task(dataset)
    groups = split_groups(dataset, built)
    try:
        splits = list(built.splitter.split(dataset.X, dataset.y, groups))
    except ValueError as exc:
        hint = ('; give the split a metadata column to group by: {"split": ..., "group": "<column>"}'
                if groups is None and "groups" in str(exc) else "")
        raise ConfigError(
            f"{built.name}: {type(built.splitter).__name__} cannot split {dataset.name!r} "
            f"({dataset.n_samples} samples): {exc}{hint}"
        ) from None
    plans = []
    for k, (train, val) in enumerate(splits):
        if len(train) == 0:
            raise ConfigError(f"{built.name}: fold {k} of {type(built.splitter).__name__} has no training samples")
        plans.append(FoldPlan(f"fold_{k}", np.asarray(train, dtype=np.int64), np.asarray(val, dtype=np.int64)))
    return plans


def split_groups(dataset: SpectraDataset, built) -> np.ndarray | None:
    """The group of every sample, from the metadata column the split names (None when it
    names none). Splitters that take groups keep each group in one fold; the others
    ignore them, as scikit-learn's do."""
    column = built.split_group
    if column is None:
        return None
    metadata = dataset.metadata
    columns = list(getattr(metadata, "columns", []) or [])
    if column not in columns:
        has = f"its metadata columns are {columns}" if columns else "it has no metadata columns"
        raise ConfigError(f"{built.name}: the split groups samples by {column!r}, but dataset {dataset.name!r} "
                          f"has no such column ({has})")
    groups = metadata[column].to_numpy()
    missing = np.flatnonzero([g is None or (isinstance(g, float) and g != g) for g in groups])
    if missing.size:
        ids = ", ".join(str(dataset.sample_ids[i]) for i in missing[:5])
        raise ConfigError(f"{built.name}: group column {column!r} of dataset {dataset.name!r} is empty for "
                          f"{missing.size} samples (first: {ids}); every sample needs a group")
    return groups


def fit_fold(dataset: SpectraDataset, pipeline, plan: FoldPlan, *, test: SpectraDataset | None = None) -> FoldResult:
    """Fit every step on the plan's training part; predict its train, val (and test) parts."""
    start = time.perf_counter()
    if plan.fold_id in RESERVED_FOLD_IDS and not (plan.fold_id == "refit" and len(plan.val_idx) == 0):
        raise ValueError(f"fold id {plan.fold_id!r} is reserved")
    built = build(pipeline)
    task, classes = _task(dataset)
    _check_test(dataset, test)
    fold = plan.fold_id
    X_tr, y_tr = dataset.X[plan.train_idx], dataset.y[plan.train_idx]

    def context(exc, i, obj):
        exc.add_note(f"while fitting {built.name}, {fold}, step {i + 1} ({type(obj).__name__})")

    # The target scaler is fitted first, wherever it stands: the model must see scaled y.
    y_fit = y_tr
    for i, (kind, obj) in enumerate(built.steps):
        if kind != "y_transformer":
            continue
        if task != "regression":
            raise ConfigError(f"{built.name}: y_processing scales numeric targets; {dataset.name!r} is classification")
        try:
            y_fit = np.asarray(obj.fit(y_tr.reshape(-1, 1)).transform(y_tr.reshape(-1, 1))).ravel()
        except Exception as exc:
            context(exc, i, obj)
            raise

    Xf, grid = X_tr, dataset.wavelengths
    steps = []
    for i, (kind, obj) in enumerate(built.steps):
        try:
            if kind == "transformer":
                Xf, grid = fit_transform_with_grid(obj, Xf, y_tr, grid)
            elif kind == "model":
                obj.fit(Xf, y_fit)
        except Exception as exc:
            context(exc, i, obj)
            raise
        steps.append(FittedStep(i, kind, class_path(obj), {}, bool(getattr(obj, "requires_wavelengths", False)), {fold: obj}))

    # the outlier checks of this fold, from what its model was fitted on (issue 20)
    diagnostics = build_diagnostics(Xf, next(s.fitted[fold] for s in steps if s.kind == "model"),
                                    y_tr if task == "regression" else None)
    parts = [("train", dataset.X[plan.train_idx], y_tr, plan.train_idx)]
    if len(plan.val_idx):
        parts.append(("val", dataset.X[plan.val_idx], dataset.y[plan.val_idx], plan.val_idx))
    if test is not None:
        parts.append(("test", test.X, test.y, np.arange(test.n_samples)))
    records = []
    for partition, X, y_true, idx in parts:
        out = replay.predict_fold(steps, fold, X, dataset.wavelengths, task, classes)
        records.append(_record(fold, partition, y_true, out, idx, task, classes, dataset.y.dtype))
    return FoldResult(
        fold_id=fold,
        plan=plan,
        fitted=[s.fitted[fold] for s in steps],
        predictions=records,
        duration_ms=int((time.perf_counter() - start) * 1000),
        diagnostics=diagnostics,
    )


def _avg_val(dataset, fold_results, task, classes) -> PredictionRecord | None:
    """Each sample's validation predictions averaged over the folds that held it out: the
    out-of-fold predictions for KFold (one fold each), a mean for repeated/shuffled splits."""
    acc, counts = None, np.zeros(dataset.n_samples)
    for result in fold_results:
        for rec in result.predictions:
            if rec.partition != "val":
                continue
            out = rec.y_pred if task == "regression" else rec.y_proba
            if acc is None:
                acc = np.zeros((dataset.n_samples, *out.shape[1:]))
            acc[rec.sample_indices] += out
            counts[rec.sample_indices] += 1
    if acc is None:
        return None
    idx = np.flatnonzero(counts > 0)
    combined = acc[idx] / (counts[idx] if acc.ndim == 1 else counts[idx, None])
    return _record("avg", "val", dataset.y[idx], combined, idx, task, classes, dataset.y.dtype)


def _fold_output(result: FoldResult, partition: str, task: str) -> np.ndarray | None:
    """What ``replay.predict_fold`` returned for this fold and partition when it was fitted
    (predictions in target units, or class probabilities), or None if it made none."""
    for rec in result.predictions:
        if rec.partition == partition:
            return rec.y_pred if task == "regression" else rec.y_proba
    return None


def assemble_trace(
    dataset: SpectraDataset,
    pipeline,
    fold_results: list[FoldResult],
    *,
    test: SpectraDataset | None = None,
    refit_result: FoldResult | None = None,
) -> ExecutionTrace:
    """The trace of a fitted pipeline: steps with every fold's objects, and predictions.

    Adds the "avg" records: validation = out-of-fold predictions gathered over the samples;
    test = the fold models combined on the test set by the replay rule.
    """
    start = time.perf_counter()
    p = as_pipeline(pipeline)
    built = build(p)
    task, classes = _task(dataset)
    _check_test(dataset, test)
    if not fold_results:
        raise ValueError(f"{p.name}: no fold results to assemble")
    fold_ids = [r.fold_id for r in fold_results]
    if len(set(fold_ids)) != len(fold_ids) or set(fold_ids) & set(RESERVED_FOLD_IDS):
        raise ValueError(f"{p.name}: fold ids must be unique and not {RESERVED_FOLD_IDS}; got {fold_ids}")
    if refit_result is not None and refit_result.fold_id != "refit":
        raise ValueError(f"{p.name}: the refit result must have fold id 'refit', got {refit_result.fold_id!r}")

    steps = []
    for i, (kind, proto) in enumerate(built.steps):
        fitted = {r.fold_id: r.fitted[i] for r in fold_results}
        if refit_result is not None:
            fitted["refit"] = refit_result.fitted[i]
        steps.append(
            FittedStep(
                step_idx=i,
                kind=kind,
                operator_class=class_path(proto),
                params=to_json_safe(init_params(proto)),
                requires_wavelengths=bool(getattr(proto, "requires_wavelengths", False)),
                fitted=fitted,
            )
        )

    predictions = [rec for r in fold_results for rec in r.predictions]
    avg_val = _avg_val(dataset, fold_results, task, classes)
    if avg_val is not None:
        predictions.append(avg_val)
    if test is not None:
        # each fold already predicted the test set as it was fitted: combine those outputs
        # rather than run every fold's transforms and model on it a second time
        outputs = [_fold_output(result, "test", task) for result in fold_results]
        outputs = [out if out is not None else
                   replay.predict_fold(steps, result.fold_id, test.X, dataset.wavelengths, task, classes)
                   for out, result in zip(outputs, fold_results)]
        combined = replay.combine(outputs)
        predictions.append(
            _record("avg", "test", test.y, combined, np.arange(test.n_samples), task, classes, dataset.y.dtype)
        )
    if refit_result is not None:
        predictions.extend(refit_result.predictions)

    model = next(obj for kind, obj in built.steps if kind == "model")
    own = int((time.perf_counter() - start) * 1000)
    return ExecutionTrace(
        pipeline_name=p.name,
        dataset_name=dataset.name,
        dataset_hash=dataset.content_hash(),
        task_type=task,
        classes=to_json_safe(classes),
        metric=DEFAULT_METRIC[task],
        wavelengths=dataset.wavelengths,
        n_features=dataset.n_features,
        steps=steps,
        fold_ids=fold_ids,
        fold_weights=None,
        refit=refit_result is not None,
        splitter={"class": class_path(built.splitter), "params": to_json_safe(init_params(built.splitter)),
                  **({"group": built.split_group} if built.split_group else {})},
        expanded_config=p.config,
        generator_choices=p.choices,
        model_class=class_path(model),
        model_name=short_name(model),
        preprocessings=">".join(short_name(obj) for kind, obj in built.steps if kind == "transformer"),
        predictions=predictions,
        diagnostics={r.fold_id: r.diagnostics for r in [*fold_results, *([refit_result] if refit_result else [])]
                     if r.diagnostics is not None} or None,
        duration_ms=own + sum(r.duration_ms for r in fold_results) + (refit_result.duration_ms if refit_result else 0),
    )


def fit_pipeline(
    dataset: SpectraDataset, pipeline, *, test: SpectraDataset | None = None, refit: bool = False
) -> ExecutionTrace:
    """Plan, fit every fold (and a refit on all of `dataset` when asked), assemble the trace."""
    start = time.perf_counter()
    p = as_pipeline(pipeline)
    plans = plan_folds(dataset, p)
    results = [fit_fold(dataset, p, plan, test=test) for plan in plans]
    refit_result = None
    if refit:
        everything = FoldPlan("refit", np.arange(dataset.n_samples, dtype=np.int64), np.zeros(0, dtype=np.int64))
        refit_result = fit_fold(dataset, p, everything, test=test)
    trace = assemble_trace(dataset, p, results, test=test, refit_result=refit_result)
    trace.duration_ms = int((time.perf_counter() - start) * 1000)
    return trace
