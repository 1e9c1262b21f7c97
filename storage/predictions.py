"""Predictions and their arrays: saved whole in one call, ranked and queried as polars.

A saved prediction is buffered (``storage/operations.py``): a call on its own commits it
as one record of the journal file (~0.2 ms, where its 29 columns would cost ~3 ms:
``storage/journal.py``), and inside ``store.batch()`` it joins the batch's other writes.
Rows reach their tables through DuckDB appenders (an INSERT costs about a millisecond of
parsing and planning per statement here, an appended row a few microseconds), before
anything reads them. That makes batching the fast path: tens of thousands of predictions
a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from nirs.trace import METRIC_DIRECTION

from . import arrays
from .base import (PARTITIONS, check_id, check_int, check_score, check_text, first, frame, from_json,
                   new_id, now, one_dict, to_json)
from .connection import Connector
from .errors import InvalidInputError
from .operations import Insert

_PRED_COLUMNS = (
    "prediction_id", "pipeline_id", "chain_id", "dataset_name", "model_name", "model_class", "fold_id",
    "partition", "val_score", "test_score", "train_score", "metric", "task_type", "n_samples",
    "n_features", "scores", "best_params", "preprocessings", "branch_id", "branch_name",
    "refit_context", "created_at", "task_run_id",
)
_ARRAY_COLUMNS = ("prediction_id", *arrays.ARRAY_FIELDS)
_SCORE_COLUMNS = ("val_score", "test_score", "train_score")
TASK_TYPES = ("regression", "classification")


def _check_arrays(given: dict[str, Any]) -> tuple[dict[str, np.ndarray | None], int | None]:
    values = {name: arrays.as_array(name, value) for name, value in given.items()}
    present = {k: v for k, v in values.items() if v is not None}
    lengths = {k: v.shape[0] for k, v in present.items()}
    if len(set(lengths.values())) > 1:
        found = ", ".join(f"{k}={n}" for k, n in lengths.items())
        raise InvalidInputError(f"prediction arrays have different lengths: {found}")
    for name in ("y_true", "y_pred", "sample_indices", "weights"):
        if name in present and present[name].ndim != 1:
            raise InvalidInputError(f"{name} must be 1-D, got shape {present[name].shape}")
    if "y_proba" in present and present["y_proba"].ndim not in (1, 2):
        raise InvalidInputError(f"y_proba must be 1-D or 2-D, got shape {present['y_proba'].shape}")
    idx = present.get("sample_indices")
    if idx is not None and idx.size and idx.dtype.kind not in "iu":
        raise InvalidInputError(f"sample_indices must be integers, got dtype {idx.dtype}")
    w = present.get("weights")
    if w is not None and (w.dtype.kind not in "iuf" or not np.all(np.isfinite(w))):
        raise InvalidInputError("weights must be finite numbers")
    return values, (next(iter(lengths.values())) if lengths else None)


class Predictions:
    def __init__(self, db: Connector, path: Path) -> None:
        self._db, self.path = db, path

    def save_prediction(self, pipeline_id: str, chain_id: str | None = None,
                        dataset_name: str | None = None, model_name: str | None = None,
                        model_class: str | None = None, fold_id: str = "", partition: str = "val",
                        val_score: float | None = None, test_score: float | None = None,
                        train_score: float | None = None, metric: str = "rmse",
                        task_type: str = "regression", n_samples: int | None = None,
                        n_features: int | None = None, scores: dict | None = None,
                        best_params: dict | None = None, branch_id: int | None = None,
                        branch_name: str | None = None, preprocessings: str = "",
                        prediction_id: str | None = None, refit_context: str | None = None, *,
                        y_true=None, y_pred=None, y_proba=None, sample_indices=None, weights=None,
                        task_run_id: str | None = None) -> str:
        """Record one prediction (scores, identity, and its arrays) and return its id.

        ``dataset_name`` defaults to the pipeline's; ``model_class`` to the chain's.
        A missing score is ``None`` and stays missing."""
        check_id("pipeline", pipeline_id)
        if chain_id is not None:
            check_id("chain", chain_id)
        if partition not in PARTITIONS:
            raise InvalidInputError(f"partition must be one of {PARTITIONS}, got {partition!r}")
        if task_type not in TASK_TYPES:
            raise InvalidInputError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
        check_text("metric", metric)
        check_text("fold_id", fold_id)
        if scores is not None:
            if not isinstance(scores, dict):
                raise InvalidInputError(f"scores must be a dict, got {type(scores).__name__}")
            scores = {str(k): check_score(f"scores[{k!r}]", v) for k, v in scores.items()}
        values, length = _check_arrays(dict(y_true=y_true, y_pred=y_pred, y_proba=y_proba,
                                            sample_indices=sample_indices, weights=weights))
        blobs = [arrays.encode(name, values[name]) for name in arrays.ARRAY_FIELDS]
        given_id = prediction_id is not None
        prediction_id = check_id("prediction", prediction_id) if given_id else new_id()
        row = [prediction_id, pipeline_id, chain_id, check_text("dataset_name", dataset_name, optional=True),
               check_text("model_name", model_name, optional=True),
               check_text("model_class", model_class, optional=True), fold_id, partition,
               check_score("val_score", val_score), check_score("test_score", test_score),
               check_score("train_score", train_score), metric, task_type,
               check_int("n_samples", n_samples) if n_samples is not None else length,
               check_int("n_features", n_features), to_json("scores", scores),
               to_json("best_params", best_params), check_text("preprocessings", preprocessings),
               check_int("branch_id", branch_id), check_text("branch_name", branch_name, optional=True),
               check_text("refit_context", refit_context, optional=True), now(),
               check_text("task_run_id", task_run_id, optional=True)]
        # on its own, the call commits one journal record (storage/journal.py)
        self._db.buffered(lambda con: self._buffer_prediction(con, row, blobs, given_id))
        return prediction_id

    def _buffer_prediction(self, con, row: list, blobs: list, given_id: bool) -> None:
        pipeline_id, chain_id = row[1], row[2]
        dataset_name = con.column_of("pipelines", "pipeline_id", pipeline_id, "dataset_name")
        if chain_id is not None:
            model_class = con.column_of("chains", "chain_id", chain_id, "model_class")
            row[5] = row[5] if row[5] is not None else model_class
        row[3] = row[3] if row[3] is not None else dataset_name
        row[5] = row[5] if row[5] is not None else ""
        row[4] = row[4] if row[4] is not None else row[5].rsplit(".", 1)[-1]
        if given_id:
            self._check_new_prediction_id(con, row[0])
        con.directions.clear()
        con.buffer(Insert("predictions", _PRED_COLUMNS, row), Insert("prediction_arrays", _ARRAY_COLUMNS, [row[0], *blobs]))

    def _check_new_prediction_id(self, con, prediction_id: str) -> None:
        if con.may_lag():
            con.catch_up()  # rare (ids are the store's own uuid4s): look in the tables
        if first(con.execute("SELECT 1 FROM predictions WHERE prediction_id = ?", [prediction_id])):
            raise InvalidInputError(f"prediction id {prediction_id!r} is already used")

    # -- reading -----------------------------------------------------------------
    def get_prediction(self, prediction_id: str, load_arrays: bool = False) -> dict:
        check_id("prediction", prediction_id)
        with self._db.reading() as con:
            row = one_dict(con, "SELECT * FROM predictions WHERE prediction_id = ?",
                           [prediction_id], "prediction", prediction_id, self.path)
            if load_arrays:
                row.update(self._arrays(con, prediction_id))
        for field in ("scores", "best_params"):
            row[field] = from_json(row[field])
        return row

    def get_prediction_arrays(self, prediction_id: str) -> dict[str, np.ndarray | None]:
        check_id("prediction", prediction_id)
        with self._db.reading() as con:
            con.require("predictions", "prediction_id", prediction_id)
            return self._arrays(con, prediction_id)

    def _arrays(self, con, prediction_id: str) -> dict:
        found = first(con.execute(f"SELECT {', '.join(arrays.ARRAY_FIELDS)} FROM prediction_arrays "
                            "WHERE prediction_id = ?", [prediction_id]))
        found = found or (None,) * len(arrays.ARRAY_FIELDS)
        return {name: arrays.decode(blob) for name, blob in zip(arrays.ARRAY_FIELDS, found)}

    def query_predictions(self, dataset_name: str | None = None, model_class: str | None = None,
                          partition: str | None = None, fold_id: str | None = None,
                          branch_id: int | None = None, pipeline_id: str | None = None,
                          run_id: str | None = None, chain_id: str | None = None,
                          metric: str | None = None, limit: int | None = None,
                          offset: int = 0) -> pl.DataFrame:
        """Predictions matching every filter given (``model_class`` takes LIKE patterns)."""
        where, params = self._prediction_filters(dataset_name=dataset_name, partition=partition,
                                                 fold_id=fold_id, pipeline_id=pipeline_id,
                                                 chain_id=chain_id, metric=metric, run_id=run_id)
        if model_class is not None:
            where.append("p.model_class LIKE ?"), params.append(check_text("model_class", model_class))
        if branch_id is not None:
            where.append("p.branch_id = ?"), params.append(check_int("branch_id", branch_id))
        sql = "SELECT p.* FROM predictions p" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY p.created_at, p.prediction_id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(check_int("limit", limit))
        sql += " OFFSET ?"
        return frame(self._db, sql, params + [check_int("offset", offset)])

    def _prediction_filters(self, **filters) -> tuple[list[str], list]:
        where, params = [], []
        for column, value in filters.items():
            if value is None:
                continue
            check_text(column, value)
            if column == "run_id":
                where.append("p.pipeline_id IN (SELECT pipeline_id FROM pipelines WHERE run_id = ?)")
            else:
                where.append(f"p.{column} = ?")
            params.append(value)
        return where, params

    def top_predictions(self, n: int = 10, metric: str = "val_score", ascending: bool | None = None,
                        partition: str | None = "val", dataset_name: str | None = None,
                        group_by: str | None = None, run_id: str | None = None,
                        fold_id: str | None = None) -> pl.DataFrame:
        """The best ``n`` predictions (per ``group_by`` value when given).

        ``metric`` is a score column (``val_score``, ``test_score``, ``train_score``),
        ranked in the direction of the rows' metric (rmse, mae, bias: lower is better;
        r2, accuracy, rpd: higher), or a metric name (``"r2"``) ranked by that entry of
        ``scores``. Bias ranks by its distance from zero. ``ascending`` overrides the
        direction. Missing scores rank last. ``fold_id="avg"`` ranks pipelines by their
        combined cross-validated predictions rather than by single folds."""
        n = check_int("n", n, optional=False)
        if n < 0:
            raise InvalidInputError(f"n must be >= 0, got {n}")
        check_text("metric", metric)
        where, params = self._prediction_filters(partition=partition, dataset_name=dataset_name,
                                                 run_id=run_id, fold_id=fold_id)
        if metric in _SCORE_COLUMNS:
            score, metric_name = f"p.{metric}", None
        elif metric.lower() in METRIC_DIRECTION or metric.isidentifier():
            score, metric_name = f"TRY_CAST(json_extract_string(p.scores, '$.{metric}') AS DOUBLE)", metric.lower()
        else:
            raise InvalidInputError(f"metric must be one of {_SCORE_COLUMNS} or a metric name, got {metric!r}")
        if group_by is not None and group_by not in ("model_class", "dataset_name", "pipeline_id",
                                                     "chain_id", "fold_id", "partition", "metric",
                                                     "preprocessings", "model_name"):
            raise InvalidInputError(f"cannot group predictions by {group_by!r}")
        with self._db.reading() as con:
            if ascending is None:
                ascending, metric_name = self._direction(con, where, params, metric_name)
            key = f"abs({score})" if METRIC_DIRECTION.get(metric_name) == "min_abs" else score
            # ties broken by insertion order (rowid): sorting on the text id doubled the
            # cost over a million rows
            order = f"{key} {'ASC' if ascending else 'DESC'} NULLS LAST, p.rowid"
            filt = " WHERE " + " AND ".join(where) if where else ""
            if group_by is None:
                sql = f"SELECT p.* FROM predictions p{filt} ORDER BY {order} LIMIT ?"
            else:
                sql = (f"SELECT * EXCLUDE (_rank) FROM (SELECT p.*, row_number() OVER "
                       f"(PARTITION BY p.{group_by} ORDER BY {order}) AS _rank FROM predictions p{filt}) "
                       f"WHERE _rank <= ? ORDER BY {group_by}, _rank")
            return con.sql(sql, params=params + [n]).pl()

    def _direction(self, con, where, params, metric_name) -> tuple[bool, str]:
        # Which metrics the filtered rows hold is remembered while the connection is open
        # (no one else can write meanwhile; our own prediction writes forget it): the scan
        # costs ~13 ms over a million rows, more than the ranking itself.
        if metric_name is None:
            key = (tuple(where), tuple(params))
            known = con.directions
            if key not in known:
                known[key] = self._direction_uncached(con, where, params)
            return known[key]
        return self._direction_uncached(con, where, params, metric_name)

    def _direction_uncached(self, con, where, params, metric_name=None) -> tuple[bool, str]:
        if metric_name is None:
            filt = " WHERE " + " AND ".join(where) if where else ""
            names = [r[0] for r in con.execute(
                f"SELECT DISTINCT p.metric FROM predictions p{filt} LIMIT 3", params).fetchall()]
            if len(names) > 1:
                raise InvalidInputError(
                    f"predictions of different metrics ({', '.join(sorted(names))}) cannot be ranked "
                    "together: filter them, or pass ascending=")
            if not names:
                return True, ""
            metric_name = names[0].lower()
        if metric_name not in METRIC_DIRECTION:
            raise InvalidInputError(f"which way metric {metric_name!r} points is unknown: pass ascending=")
        return METRIC_DIRECTION[metric_name] != "max", metric_name
