"""From an execution trace (what ``nirs`` fitted) to stored artifacts, a chain and predictions.

``storage`` never imports ``nirs``: the trace is read by attribute name, and its
contract is written down in ``nirs/trace.py``. The parts used here:

    trace.steps[i]: step_idx, kind ("transformer" | "y_transformer" | "model"),
        operator_class, params, requires_wavelengths, fitted {fold_id: object}
    trace.fold_ids, trace.fold_weights, trace.refit, trace.task_type, trace.classes,
    trace.wavelengths, trace.n_features, trace.model_class, trace.preprocessings,
    trace.splitter, trace.metric, trace.predictions[j]: fold_id, partition, y_true,
        y_pred, y_proba, sample_indices, weights, scores
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from .replay import DIAGNOSTICS

_ARTIFACT_TYPES = {"transformer": "transformer", "y_transformer": "y_transformer", "model": "model"}


class ArtifactSaver(Protocol):
    def save_artifact(self, obj: Any, operator_class: str | None = None,
                      artifact_type: str = "model", format: str = "joblib") -> str: ...


class ArtifactRegistry:
    """Saves fitted objects through a store, once per object (memoised by identity)."""

    def __init__(self, store: ArtifactSaver) -> None:
        self.store = store
        self._ids: dict[int, tuple[Any, str]] = {}

    def register(self, obj: Any, operator_class: str, artifact_type: str) -> str:
        known = self._known(obj)
        if known is not None:
            return known
        artifact_id = self.store.save_artifact(obj, operator_class, artifact_type, "joblib")
        self._ids[id(obj)] = (obj, artifact_id)  # keep obj alive so its id() stays unique
        return artifact_id

    def register_many(self, items: list[tuple[Any, str, str]]) -> list[str]:
        """``register`` for several objects, saved in one call when the store can (its
        new files are then written side by side)."""
        save_many = getattr(self.store, "save_artifacts", None)
        todo = [item for item in items if self._known(item[0]) is None]
        todo = list({id(item[0]): item for item in todo}.values())
        if save_many is not None and todo:
            for item, artifact_id in zip(todo, save_many(todo)):
                self._ids[id(item[0])] = (item[0], artifact_id)
        return [self._known(obj) or self.register(obj, operator_class, artifact_type)
                for obj, operator_class, artifact_type in items]

    def _known(self, obj: Any) -> str | None:
        known = self._ids.get(id(obj))
        return known[1] if known is not None and known[0] is obj else None


class ChainBuilder:
    """``ChainBuilder(trace, registry).build()`` -> the keyword arguments of ``save_chain``.

    Every fitted object of every fold is saved as an artifact (identical ones, such as
    a stateless SNV fitted on each fold, deduplicate to one file by their hash)."""

    def __init__(self, trace: Any, artifact_registry: ArtifactRegistry | ArtifactSaver) -> None:
        self.trace = trace
        self.registry = (artifact_registry if isinstance(artifact_registry, ArtifactRegistry)
                         else ArtifactRegistry(artifact_registry))

    def build(self) -> dict:
        trace = self.trace
        steps = sorted(trace.steps, key=lambda s: s.step_idx)
        models = [s for s in steps if s.kind == "model"]
        if len(models) != 1:
            raise ValueError(f"a trace needs exactly one model step, found {len(models)}")
        folds = (["refit"] if trace.refit else []) + list(trace.fold_ids)
        wanted = [(fold, step) for fold in folds for step in steps if fold in step.fitted]
        ids = self.registry.register_many([(step.fitted[fold], step.operator_class,
                                            _ARTIFACT_TYPES.get(step.kind, step.kind)) for fold, step in wanted])
        fold_artifacts: dict[str, dict[str, str]] = {fold: {} for fold in folds}
        for (fold, step), artifact_id in zip(wanted, ids):
            fold_artifacts[fold][str(step.step_idx)] = artifact_id
        metadata = {"splitter": trace.splitter, "metric": trace.metric, **self._diagnostics(folds)}
        wavelengths = getattr(trace, "wavelengths", None)
        return {
            "steps": [{"step_idx": s.step_idx, "kind": s.kind, "operator_class": s.operator_class,
                       "params": s.params, "requires_wavelengths": bool(s.requires_wavelengths)}
                      for s in steps],
            "model_step_idx": models[0].step_idx,
            "model_class": trace.model_class,
            "preprocessings": trace.preprocessings,
            "fold_strategy": "refit" if trace.refit else "per_fold",
            "fold_artifacts": fold_artifacts,
            "shared_artifacts": {},
            "fold_weights": dict(trace.fold_weights) if trace.fold_weights else None,
            "task_type": trace.task_type,
            "classes": _plain_list(trace.classes),
            "wavelengths": None if wavelengths is None else np.asarray(wavelengths, dtype=float),
            "n_features": int(trace.n_features),
            "metadata": metadata,
        }

    def _diagnostics(self, folds: list[str]) -> dict:
        """The folds' outlier checks (``trace.diagnostics``: fold id -> an object with
        ``summary()``), each saved as an artifact: ``{"diagnostics": {fold: artifact_id},
        "diagnostics_summary": {fold: summary}}`` for the chain's metadata; {} without."""
        found = getattr(self.trace, "diagnostics", None) or {}
        folds = [f for f in folds if found.get(f) is not None]
        if not folds:
            return {}
        ids = self.registry.register_many([(found[f], f"{type(found[f]).__module__}.{type(found[f]).__qualname__}",
                                            "diagnostics") for f in folds])
        return {DIAGNOSTICS: dict(zip(folds, ids)),
                "diagnostics_summary": {f: found[f].summary() for f in folds}}


def _plain_list(values) -> list | None:
    if values is None:
        return None
    return [v.item() if isinstance(v, np.generic) else v for v in values]


def fold_scores(trace: Any) -> dict[str, dict[str, float | None]]:
    """{fold_id: {partition: primary-metric score}} for the val/test/train columns."""
    table: dict[str, dict[str, float | None]] = {}
    for record in trace.predictions:
        table.setdefault(record.fold_id, {})[record.partition] = record.scores.get(trace.metric)
    return table


def record_trace(store: Any, run_id: str, trace: Any, *, flow_run_id: str | None = None,
                 task_run_id: str | None = None) -> dict:
    """Store a whole trace (pipeline, artifacts, chain, predictions, completion) in one
    ``store.batch()``: it lands whole or not at all. Returns the new ids."""
    with store.batch():
        pipeline_id = store.begin_pipeline(
            run_id, trace.pipeline_name, trace.expanded_config, trace.generator_choices,
            trace.dataset_name, trace.dataset_hash, flow_run_id=flow_run_id, task_run_id=task_run_id)
        chain_id = store.save_chain(pipeline_id, task_run_id=task_run_id,
                                    **ChainBuilder(trace, store).build())
        prediction_ids = save_trace_predictions(store, pipeline_id, chain_id, trace, task_run_id)
        best_val, best_test = best_scores(trace)
        store.complete_pipeline(pipeline_id, best_val=best_val, best_test=best_test,
                                metric=trace.metric, duration_ms=int(trace.duration_ms))
    return {"pipeline_id": pipeline_id, "chain_id": chain_id, "prediction_ids": prediction_ids}


def save_trace_predictions(store: Any, pipeline_id: str, chain_id: str, trace: Any,
                           task_run_id: str | None = None) -> list[str]:
    scores = fold_scores(trace)
    ids = []
    for record in trace.predictions:
        by_partition = scores.get(record.fold_id, {})
        ids.append(store.save_prediction(
            pipeline_id, chain_id, dataset_name=trace.dataset_name, model_name=trace.model_name,
            model_class=trace.model_class, fold_id=record.fold_id, partition=record.partition,
            val_score=by_partition.get("val"), test_score=by_partition.get("test"),
            train_score=by_partition.get("train"), metric=trace.metric, task_type=trace.task_type,
            n_features=int(trace.n_features), scores=record.scores, preprocessings=trace.preprocessings,
            y_true=record.y_true, y_pred=record.y_pred, y_proba=record.y_proba,
            sample_indices=record.sample_indices, weights=record.weights, task_run_id=task_run_id))
    return ids


def best_scores(trace: Any) -> tuple[float | None, float | None]:
    """The pipeline's headline scores: the cross-validated ("avg") val score, and the
    test score of what replay uses (the refit model when there is one, else "avg")."""
    table = fold_scores(trace)
    val = table.get("avg", {}).get("val")
    test = table.get("refit" if trace.refit else "avg", {}).get("test")
    return val, test
