"""Training as Prefect tasks: one task per pipeline, its folds fitted inside it.

Shape, chosen on numbers measured on this machine (Prefect 3.9.1, local server; see
bench/flow_bench.py and issue 22): a task run costs ~20-36 ms of CPU (client and server)
whatever it does, about what a PLS fold fit takes. A task per fold made the ``train``
flow 2.1-2.7x the plain training core on 2 cores; on Dask's and Ray's Prefect task
runners a task run cost 150-220 ms of CPU. So a pipeline is a *task* whose state hooks
mirror it in the store (``tasks.lifecycle``), and its folds and refit are fitted inside
it by an executor (``nirs.executors``: threads, loky processes, or a Dask cluster), while
the flow-run process stays the only writer of the store. The UI still shows every fold:
a line in the pipeline's log with its score and time, and a row of the pipeline's
result (``TrainedPipeline.folds``, which also lands in the chain's metadata).

Caching and results, on purpose:

* ``cache_policy=NO_CACHE``: the inputs are spectra matrices and the result holds fitted
  estimators. Prefect's default policy hashes every input on every call (178 ms for an
  80 MB array, a logged traceback for objects it cannot hash), and a cached pipeline
  would hand back estimators fitted in another run, which is not what training means.
* ``persist_result=False``: the workspace is the result's durable home (content-addressed
  artifacts, prediction arrays); writing it a second time to Prefect's result storage
  would double the disk use and the time. The result stays in memory, which is what the
  pipeline's completion hook reads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from nirs.executors import fold_executor
from nirs.metrics import DEFAULT_METRIC, score_name
from nirs.trace import ExecutionTrace
from nirs.training import FoldPlan, FoldResult, assemble_trace, plan_folds
from tasks.lifecycle import StoreWriteError, current_book, describe_exception

__all__ = ["TrainedPipeline", "train_pipeline", "refit_plan", "fold_row"]


@dataclass
class TrainedPipeline:
    """A pipeline task's result: the trace its hooks store, and one row per fold (fold id,
    scores per partition in the pipeline's metric, fit time) for the UI and the chain."""

    trace: ExecutionTrace
    folds: list = field(default_factory=list)
    executor: str = ""
    wall_ms: int = 0


def fold_row(result: FoldResult, metric: str) -> dict:
    scores = {rec.partition: rec.scores.get(metric) for rec in result.predictions}
    return {"fold_id": result.fold_id, "metric": metric, "ms": int(result.duration_ms),
            **{partition: (None if value is None else float(value)) for partition, value in scores.items()}}


def _fold_line(label: str, row: dict) -> str:
    shown = ", ".join(f"{part} {row[part]:.4g}" for part in ("train", "val", "test") if row.get(part) is not None)
    return f"{label} · {row['fold_id']}: {row['metric']} {shown or 'no scores'} ({row['ms']} ms)"


@task(name="pipeline", task_run_name="{label}", cache_policy=NO_CACHE, persist_result=False)
def train_pipeline(label: str, key: str, dataset, pipeline, test=None, refit: bool = False,
                   executor: str | None = None, processes: int = 0) -> TrainedPipeline:
    """Plan a pipeline's folds, fit them (and the refit) on the run's executor, gather
    them into an ExecutionTrace. A fold that raises fails the pipeline (after the other
    folds finish, so none is left running); the store writes happen in this task's hooks."""
    started = time.perf_counter()
    entry = current_book().entry(key)
    if entry.pipeline_id is None:
        # its on_running hook could not write begin_pipeline: do not fit what cannot be kept
        raise StoreWriteError(f"pipeline {key} has no store row: {entry.store_error}")
    fits = fold_executor(executor, processes)
    plans = plan_folds(dataset, pipeline)  # a splitter that cannot split: raised here, recorded by the hooks
    if refit:
        plans.append(refit_plan(dataset))
    futures = [fits.submit(dataset, pipeline, plan, test=test) for plan in plans]
    logger = get_run_logger()
    metric = DEFAULT_METRIC[dataset.task_type]
    results, rows, first_error = {}, [], None
    for plan, future in zip(plans, futures):
        try:
            results[plan.fold_id] = result = future.result()
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the others finish
            first_error = first_error or exc
            logger.error("%s · %s failed: %s", label, plan.fold_id, describe_exception(exc))
            continue
        rows.append(fold_row(result, metric))
        logger.info(_fold_line(label, rows[-1]))
    if first_error is not None:
        raise first_error
    refit_result = results.pop("refit", None)
    trace = assemble_trace(dataset, pipeline, list(results.values()), test=test, refit_result=refit_result)
    scores = {r.partition: r.scores.get(trace.metric) for r in trace.records(fold_id="avg")}
    shown = ", ".join(f"{score_name(trace.metric, part)} {value:.4g}" for part, value in scores.items()
                      if value is not None)
    wall_ms = int((time.perf_counter() - started) * 1000)
    logger.info("%s on %s: %s (%d folds%s, %d ms of fitting, %d ms in all)", trace.pipeline_name,
                trace.dataset_name, shown or "no scores", len(results), " + refit" if refit_result else "",
                trace.duration_ms, wall_ms)
    return TrainedPipeline(trace=trace, folds=rows, executor=getattr(fits, "describe", lambda: "")(), wall_ms=wall_ms)


def refit_plan(dataset) -> FoldPlan:
    return FoldPlan("refit", np.arange(dataset.n_samples, dtype=np.int64), np.zeros(0, dtype=np.int64))
