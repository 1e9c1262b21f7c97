"""The execution trace: what training hands to storage (`storage.ChainBuilder` reads it by
duck typing, so these attribute names are a contract; add fields, never rename them).

How storage replays what it stores: by the replay rule of `nirs.replay`, the same functions
training computes its predictions with. The vocabulary both sides share lives here:
the step kinds, the partitions, and which way each metric points. Storage imports this
module and `nirs.replay` (numpy only), nothing else of `nirs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STEP_KINDS = ("transformer", "y_transformer", "model")
PARTITIONS = ("train", "val", "test")

# Which way each metric points, for whoever ranks by it (training's leaderboard, promotion,
# the store's top_predictions): "min", lower is better; "max", higher is better; "min_abs",
# closest to zero is better (a bias of -3 is as bad as +3).
METRIC_DIRECTION = {
    "rmse": "min", "mse": "min", "mae": "min", "sep": "min", "rmsecv": "min", "rmsep": "min",
    "bias": "min_abs",
    "r2": "max", "rpd": "max",
    "accuracy": "max", "balanced_accuracy": "max", "f1": "max", "precision": "max", "recall": "max",
    "roc_auc": "max",
    "log_loss": "min", "logloss": "min",
}


@dataclass
class FittedStep:
    step_idx: int
    kind: str  # "transformer" | "y_transformer" | "model"
    operator_class: str  # public dotted path, e.g. "nirs.operators.SNV"
    params: dict  # JSON-safe get_params(deep=False)
    requires_wavelengths: bool
    fitted: dict  # fold_id -> the object fitted on that fold's training part (+ "refit")


@dataclass
class PredictionRecord:
    fold_id: str  # "fold_0".. ; "avg" for the combined fold models; "refit" for the refit model
    partition: str  # "train" | "val" | "test"
    y_true: np.ndarray  # (n,), original dtype (string labels stay strings)
    y_pred: np.ndarray  # (n,), original dtype/labels
    y_proba: np.ndarray | None  # (n, n_classes) in `classes` order, classification only
    sample_indices: np.ndarray  # int32 indices into the dataset the partition came from
    weights: np.ndarray | None
    scores: dict  # metric -> float | None


@dataclass
class ExecutionTrace:
    pipeline_name: str
    dataset_name: str
    dataset_hash: str
    task_type: str  # "regression" | "classification"
    classes: list | None  # original class labels in proba column order (sorted like sklearn)
    metric: str  # primary metric, e.g. "rmse" / "accuracy"
    wavelengths: np.ndarray | None  # the training input grid
    n_features: int  # training input feature count
    steps: list  # [FittedStep] in pipeline order; exactly one "model"; at most one "y_transformer"
    fold_ids: list  # ["fold_0", ...]
    fold_weights: dict | None  # None = equal weights
    refit: bool  # a "refit" model fitted on all training data exists; replay then uses it alone
    splitter: dict  # {"class": dotted path, "params": {...}}
    expanded_config: list  # JSON-safe
    generator_choices: list
    model_class: str
    model_name: str  # short, e.g. "PLSRegression"
    preprocessings: str  # display string, e.g. "SNV>StandardScaler"
    predictions: list  # [PredictionRecord]
    duration_ms: int
    diagnostics: dict | None = None  # fold_id -> nirs.diagnostics.CalibrationDiagnostics (+ "refit")

    def records(self, fold_id: str | None = None, partition: str | None = None) -> list:
        """The prediction records matching a fold id and/or a partition."""
        return [
            r for r in self.predictions
            if (fold_id is None or r.fold_id == fold_id) and (partition is None or r.partition == partition)
        ]

    def record(self, fold_id: str, partition: str) -> PredictionRecord:
        found = self.records(fold_id, partition)
        if len(found) != 1:
            raise KeyError(f"{len(found)} records for fold {fold_id!r}, partition {partition!r}")
        return found[0]
