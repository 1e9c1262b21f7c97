"""Runs, pipelines and logs: the lifecycle rows of the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from .base import (LOG_LEVELS, check_id, check_int, check_score, check_text, frame, from_json,
                   new_id, now, one_dict, to_json, where_equal)
from .chains import LoadedChains
from .connection import Connector
from .errors import InvalidInputError
from .operations import Insert, Update

RUN_FINAL = ("completed", "failed", "crashed", "cancelled")
# The columns begin_pipeline writes, and those complete_pipeline sets.
_PIPELINE_START = ("pipeline_id", "run_id", "name", "status", "expanded_config", "generator_choices",
                   "dataset_name", "dataset_hash", "created_at", "flow_run_id", "task_run_id")
_PIPELINE_END = ("status", "best_val", "best_test", "metric", "duration_ms", "completed_at", "error")


class Records:
    """Built with the connector, the workspace path (for messages) and the loaded chains
    (the chains a failed pipeline drops are forgotten there)."""

    def __init__(self, db: Connector, path: Path, loaded: LoadedChains) -> None:
        self._db, self.path, self._loaded = db, path, loaded

    # -- runs ------------------------------------------------------------------
    def begin_run(self, name: str, config: Any = None, datasets: list | None = None, *,
                  flow_run_id: str | None = None, tags: list[str] | None = None) -> str:
        """Create a run in status ``running`` and return its id."""
        check_text("run name", name)
        row = [new_id(), name, "running", to_json("config", config), to_json("datasets", datasets or []),
               now(), check_text("flow_run_id", flow_run_id, optional=True), to_json("tags", tags or [])]
        with self._db.writing() as con:
            con.execute("INSERT INTO runs (run_id, name, status, config, datasets, created_at, "
                        "flow_run_id, tags) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
            con.remember_row("runs", row[0], (row[0], row[1]))
        return row[0]

    def complete_run(self, run_id: str, summary: dict | None = None) -> None:
        self._finish_run(run_id, "completed", summary=summary, error=None)

    def fail_run(self, run_id: str, error: str, *, status: str = "failed") -> None:
        """Mark a run failed (or ``crashed``/``cancelled``) with its reason; pipelines still
        running under it are marked failed too, since nothing will finish them."""
        if status not in ("failed", "crashed", "cancelled"):
            raise InvalidInputError(f"fail_run status must be failed, crashed or cancelled, got {status!r}")
        self._finish_run(run_id, status, summary=None, error=str(error))

    def _finish_run(self, run_id: str, status: str, *, summary, error) -> None:
        check_id("run", run_id)
        summary_json = to_json("summary", summary)
        with self._db.writing() as con:
            con.require("runs", "run_id", run_id)
            con.execute("UPDATE runs SET status = ?, summary = coalesce(?, summary), error = ?, "
                        "completed_at = ? WHERE run_id = ?", [status, summary_json, error, now(), run_id])
            if status != "completed":
                con.execute("UPDATE pipelines SET status = 'failed', error = ?, completed_at = ? "
                            "WHERE run_id = ? AND status = 'running'",
                            [f"run {status}: {error}", now(), run_id])

    def get_run(self, run_id: str) -> dict:
        check_id("run", run_id)
        with self._db.reading() as con:
            row = one_dict(con, "SELECT * FROM runs WHERE run_id = ?", [run_id], "run", run_id, self.path)
        for field in ("config", "datasets", "summary", "tags"):
            row[field] = from_json(row[field])
        return row

    def list_runs(self, status: str | None = None, dataset: str | None = None,
                  limit: int = 100, offset: int = 0) -> pl.DataFrame:
        where, params = [], []
        if status is not None:
            where.append("status = ?"), params.append(check_text("status", status))
        if dataset is not None:
            where.append("list_contains(json_extract_string(datasets, '$[*].name'), ?)")
            params.append(check_text("dataset", dataset))
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created_at DESC, run_id LIMIT ? OFFSET ?"
        return frame(self._db, sql, params + [check_int("limit", limit), check_int("offset", offset)])

    # -- pipelines -------------------------------------------------------------
    def begin_pipeline(self, run_id: str, name: str, expanded_config: Any = None,
                       generator_choices: list | None = None, dataset_name: str = "",
                       dataset_hash: str | None = None, *, flow_run_id: str | None = None,
                       task_run_id: str | None = None) -> str:
        check_id("run", run_id)
        check_text("pipeline name", name)
        check_text("dataset_name", dataset_name)
        pipeline_id = new_id()
        row = [pipeline_id, run_id, name, "running", to_json("expanded_config", expanded_config),
               to_json("generator_choices", generator_choices or []), dataset_name,
               check_text("dataset_hash", dataset_hash, optional=True), now(),
               check_text("flow_run_id", flow_run_id, optional=True),
               check_text("task_run_id", task_run_id, optional=True)]
        def write(con) -> None:
            con.require("runs", "run_id", run_id)
            con.buffer(Insert("pipelines", _PIPELINE_START, row))
            con.remember_row("pipelines", pipeline_id, (pipeline_id, run_id))
            con.remember("pipelines", pipeline_id, "dataset_name", dataset_name)

        self._db.buffered(write)
        return pipeline_id

    def complete_pipeline(self, pipeline_id: str, best_val: float | None = None,
                          best_test: float | None = None, metric: str | None = None,
                          duration_ms: int | None = None) -> None:
        check_id("pipeline", pipeline_id)
        values = ["completed", check_score("best_val", best_val), check_score("best_test", best_test),
                  check_text("metric", metric, optional=True), check_int("duration_ms", duration_ms),
                  now(), None]
        def write(con) -> None:
            con.require("pipelines", "pipeline_id", pipeline_id)
            con.buffer(Update("pipelines", "pipeline_id", pipeline_id, _PIPELINE_END, values))

        self._db.buffered(write)

    def fail_pipeline(self, pipeline_id: str, error: str) -> None:
        """Mark a pipeline failed with its error (also in the logs table) and drop its
        chains, so that its artifacts are no longer kept alive by it. Its predictions
        stay, detached from the dropped chains, as a record of what was scored."""
        check_id("pipeline", pipeline_id)
        error = str(error)
        with self._db.writing() as con:
            row = con.require("pipelines", "pipeline_id", pipeline_id)
            run_id = row[1]
            con.execute("UPDATE pipelines SET status = 'failed', error = ?, completed_at = ? "
                        "WHERE pipeline_id = ?", [error, now(), pipeline_id])
            self._drop_chains(con, "pipeline_id = ?", [pipeline_id])
            con.execute("UPDATE predictions SET chain_id = NULL WHERE pipeline_id = ? "
                        "AND chain_id IS NOT NULL", [pipeline_id])
            self._insert_log(con, run_id, pipeline_id, None, None, "error", None, error, None, "error")

    def _drop_chains(self, con, where: str, params: list) -> None:
        ids = [r[0] for r in con.execute(f"SELECT chain_id FROM chains WHERE {where}", params).fetchall()]
        if ids:
            con.execute("DELETE FROM chain_artifacts WHERE list_contains(?, chain_id)", [ids])
            con.execute("DELETE FROM chains WHERE list_contains(?, chain_id)", [ids])
            self._loaded.forget_chains(ids)
            con.forget_rows()

    def get_pipeline(self, pipeline_id: str) -> dict:
        check_id("pipeline", pipeline_id)
        with self._db.reading() as con:
            row = one_dict(con, "SELECT * FROM pipelines WHERE pipeline_id = ?", [pipeline_id],
                           "pipeline", pipeline_id, self.path)
        for field in ("expanded_config", "generator_choices"):
            row[field] = from_json(row[field])
        return row

    def list_pipelines(self, run_id: str | None = None, dataset_name: str | None = None,
                       status: str | None = None) -> pl.DataFrame:
        where, params = where_equal(run_id=run_id, dataset_name=dataset_name, status=status)
        return frame(self._db, f"SELECT * FROM pipelines{where} ORDER BY created_at DESC, pipeline_id", params)

    # -- logs ------------------------------------------------------------------
    def log_step(self, pipeline_id: str | None, step_idx: int | None = None,
                 operator_class: str | None = None, event: str = "info",
                 duration_ms: int | None = None, message: str | None = None,
                 details: dict | None = None, level: str = "info", *, run_id: str | None = None) -> str:
        """Record a structured log entry for a pipeline step (or, with ``run_id`` and no
        pipeline, for the run as a whole)."""
        if pipeline_id is None and run_id is None:
            raise InvalidInputError("log_step needs a pipeline_id or a run_id")
        if level not in LOG_LEVELS:
            raise InvalidInputError(f"log level must be one of {LOG_LEVELS}, got {level!r}")
        check_text("event", event)
        details_json = to_json("details", details)
        step_idx, duration_ms = check_int("step_idx", step_idx), check_int("duration_ms", duration_ms)
        operator_class = check_text("operator_class", operator_class, optional=True)
        message = check_text("message", message, optional=True)
        if pipeline_id is not None:
            check_id("pipeline", pipeline_id)
        else:
            check_id("run", run_id)

        def write(con) -> str:
            owner = run_id
            if pipeline_id is not None:
                owner = con.require("pipelines", "pipeline_id", pipeline_id)[1]
            else:
                con.require("runs", "run_id", run_id)
            return self._insert_log(con, owner, pipeline_id, step_idx, operator_class, event, duration_ms,
                                    message, details_json, level)

        return self._db.buffered(write)

    def _insert_log(self, con, run_id, pipeline_id, step_idx, operator_class, event, duration_ms,
                    message, details_json, level) -> str:
        """Buffer a log row (applied with the transaction's other buffered writes)."""
        log_id = new_id()
        con.buffer(Insert("logs", None, [log_id, run_id, pipeline_id, step_idx, operator_class, event,
                                         duration_ms, message, details_json, level, now()]))
        return log_id

    def get_logs(self, pipeline_id: str | None = None, run_id: str | None = None,
                 level: str | None = None) -> pl.DataFrame:
        where, params = where_equal(pipeline_id=pipeline_id, run_id=run_id, level=level)
        return frame(self._db, f"SELECT * FROM logs{where} ORDER BY created_at, log_id", params)

    def get_pipeline_log(self, pipeline_id: str) -> pl.DataFrame:
        """The spec's original name for the logs of one pipeline."""
        return self.get_logs(pipeline_id=check_id("pipeline", pipeline_id))
