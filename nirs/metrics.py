"""Scores for regression and classification predictions.

A score that cannot be computed (too few samples, no probabilities, a zero denominator) is
None, never 0.0: a made-up 0.0 would rank a failed fold best under rmse.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn import metrics as skm

# Which way each metric points: one table, in the trace contract, that storage ranks by too
from nirs.trace import METRIC_DIRECTION  # noqa: F401 - re-exported

REGRESSION_METRICS = ("rmse", "r2", "mae", "bias", "sep", "rpd")
CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "f1", "log_loss")

DEFAULT_METRIC = {"regression": "rmse", "classification": "accuracy"}


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _regression(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    n = y_true.size
    out = dict.fromkeys(REGRESSION_METRICS)
    if n == 0:
        return out
    resid = y_pred - y_true
    out["rmse"] = _finite(np.sqrt(np.mean(resid**2)))
    out["mae"] = _finite(np.mean(np.abs(resid)))
    out["bias"] = _finite(np.mean(resid))
    if n >= 2:
        ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
        out["r2"] = _finite(1.0 - float(np.sum(resid**2)) / ss_tot) if ss_tot > 0 else None
        # SEP is the standard deviation of the residuals around their mean: the error left
        # once the bias is taken out.
        sep = float(np.std(resid, ddof=1))
        out["sep"] = _finite(sep)
        sd = float(np.std(y_true, ddof=1))
        out["rpd"] = _finite(sd / sep) if sep > 0 else None
    return out


def _classification(y_true, y_pred, y_proba, classes) -> dict:
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    out = dict.fromkeys(CLASSIFICATION_METRICS)
    if y_true.size == 0:
        return out
    with warnings.catch_warnings():
        # balanced accuracy warns when a fold's predictions hold classes its truth lacks;
        # the score is still well defined.
        warnings.simplefilter("ignore")
        out["accuracy"] = _finite(skm.accuracy_score(y_true, y_pred))
        out["balanced_accuracy"] = _finite(skm.balanced_accuracy_score(y_true, y_pred))
        out["f1"] = _finite(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
    if y_proba is not None and classes is not None:
        proba = np.asarray(y_proba, dtype=np.float64)
        known = set(np.asarray(classes).tolist())
        # log loss is undefined for a true label the model never saw.
        if len(classes) >= 2 and all(v in known for v in y_true.tolist()):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out["log_loss"] = _finite(skm.log_loss(y_true, proba, labels=list(classes)))
    return out


def score_all(task_type: str, y_true, y_pred, y_proba=None, classes=None) -> dict:
    """Every metric of `task_type` for one set of predictions; uncomputable ones are None."""
    if task_type == "regression":
        return _regression(y_true, y_pred)
    if task_type == "classification":
        return _classification(y_true, y_pred, y_proba, classes)
    raise ValueError(f"task_type must be 'regression' or 'classification', got {task_type!r}")


def rmse(y_true, y_pred) -> float | None:
    return _regression(y_true, y_pred)["rmse"]


def r2(y_true, y_pred) -> float | None:
    return _regression(y_true, y_pred)["r2"]


def mae(y_true, y_pred) -> float | None:
    return _regression(y_true, y_pred)["mae"]


def bias(y_true, y_pred) -> float | None:
    return _regression(y_true, y_pred)["bias"]


def sep(y_true, y_pred) -> float | None:
    return _regression(y_true, y_pred)["sep"]


def rpd(y_true, y_pred) -> float | None:
    return _regression(y_true, y_pred)["rpd"]


def slope(y_true, y_pred) -> float | None:
    """Slope of the least-squares line of predicted on observed: 1 for a calibration that
    neither compresses nor stretches the range (the line a predicted-vs-observed plot draws)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.size < 2 or float(np.var(y_true)) == 0.0:
        return None
    return _finite(np.polyfit(y_true, y_pred, 1)[0])


#: What a chemometrician calls the primary error of each partition: the root mean squared
#: error of cross-validation (RMSECV), of prediction on a test set (RMSEP), of calibration.
_RMSE_NAMES = {"val": "RMSECV", "test": "RMSEP", "train": "RMSEC"}
_SHORT_NAMES = {"r2": "R²", "bias": "bias", "sep": "SEP", "rpd": "RPD", "mae": "MAE", "slope": "slope",
                "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "f1": "F1", "log_loss": "log loss"}
_PARTITION_WORDS = {"val": "CV", "test": "test", "train": "calibration"}


def score_name(metric: str | None, partition: str = "val") -> str:
    """The name of a score as a chemometrician writes it: ``rmse`` on ``val`` is RMSECV, on
    ``test`` RMSEP; other metrics get their partition in words ("accuracy (CV)")."""
    metric = (metric or "").lower()
    if metric == "rmse" and partition in _RMSE_NAMES:
        return _RMSE_NAMES[partition]
    return f"{_SHORT_NAMES.get(metric, metric or 'score')} ({_PARTITION_WORDS.get(partition, partition)})"


def regression_summary(y_true, y_pred) -> dict:
    """Everything a predicted-vs-observed figure or a chain's report states: n, RMSE, R²,
    bias, SEP, RPD (as defined above) and the slope."""
    out = _regression(y_true, y_pred)
    return {"n": int(np.asarray(y_true).size), "rmse": out["rmse"], "r2": out["r2"], "bias": out["bias"],
            "sep": out["sep"], "rpd": out["rpd"], "slope": slope(y_true, y_pred)}


def accuracy(y_true, y_pred) -> float | None:
    return _classification(y_true, y_pred, None, None)["accuracy"]


def balanced_accuracy(y_true, y_pred) -> float | None:
    return _classification(y_true, y_pred, None, None)["balanced_accuracy"]


def f1(y_true, y_pred) -> float | None:
    return _classification(y_true, y_pred, None, None)["f1"]


def log_loss(y_true, y_proba, classes) -> float | None:
    return _classification(y_true, np.asarray(y_true), y_proba, classes)["log_loss"]
