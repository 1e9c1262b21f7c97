"""Training as Prefect tasks: a task per fold fit, a task per pipeline.

Shape, chosen on numbers measured on this machine (Prefect 3.9.1, local server; see
bench/flow_bench.py): a synchronous subflow costs ~1.37 s (~0.27 s even with flow
heartbeats switched off), async subflows gathered ~1.6 s each, a task 4-10 ms. So a
pipeline is a *task* whose state hooks mirror it in the store (``tasks.lifecycle``), and
each fold fit is a task submitted to the flow's ThreadPoolTaskRunner (its fit, when the
run asks, in a worker process: ``nirs.parallel``; the fits hold the GIL, so threads alone
cannot run two at once), while the flow-run process stays the only writer of the store.

Caching and results, on purpose:

* ``cache_policy=NO_CACHE`` everywhere here: the inputs are spectra matrices and fitted
  estimators. Prefect's default policy hashes every input on every call (178 ms for an
  80 MB array, a logged traceback for objects it cannot hash), and a cached fold would
  hand back an estimator fitted in another run, which is not what a training run means.
* ``persist_result=False``: fold results are fitted objects plus prediction arrays; the
  workspace is their durable home (content-addressed artifacts, prediction arrays).
  Writing them a second time to Prefect's result storage would double the disk use and
  the time. The results stay in memory (``cache_result_in_memory``), which is what the
  pipeline's completion hook reads.
"""

from __future__ import annotations

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from nirs.parallel import fold_pool
from nirs.training import FoldPlan, assemble_trace, fit_fold, plan_folds
from tasks.lifecycle import StoreWriteError, current_book

__all__ = ["fit_fold_task", "train_pipeline", "plan_pipeline_folds", "refit_plan"]


@task(name="fold", task_run_name="{label}", cache_policy=NO_CACHE, persist_result=False)
def fit_fold_task(label: str, dataset, pipeline, plan: FoldPlan, test=None, processes: int = 0):
    """Fit one fold (or the refit on all training data); returns a picklable FoldResult.
    With ``processes``, the fit runs in one of that many worker processes
    (``nirs.parallel``) while this task's thread waits: the task, its states and its
    logs stay in the flow-run process, only the numbers move."""
    pool = fold_pool(processes)
    if pool is None:
        return fit_fold(dataset, pipeline, plan, test=test)
    return pool.fit(dataset, pipeline, plan, test=test)


@task(name="pipeline", task_run_name="{label}", cache_policy=NO_CACHE, persist_result=False)
def train_pipeline(label: str, key: str, dataset, pipeline, folds, test=None, refit=None, plan_error=None):
    """Gather a pipeline's fold results into an ExecutionTrace.

    ``folds`` are the futures of its fold tasks (passed inside ``quote()`` so that Prefect
    does not resolve them first: a failed fold must fail this task, and so reach its
    ``on_failure`` hook, rather than leave it NotReady). ``plan_error`` is a planning error
    (a splitter that cannot split this dataset) raised here for the same reason.
    The store writes happen in this task's hooks, not here."""
    entry = current_book().entry(key)
    if entry.pipeline_id is None:
        # its on_running hook could not write begin_pipeline: do not fit what cannot be kept
        raise StoreWriteError(f"pipeline {key} has no store row: {entry.store_error}")
    if plan_error is not None:
        raise plan_error
    results, first_error = [], None
    for future in folds:  # wait for every fold, so none is left running after a failure
        try:
            results.append(future.result())
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the others finish
            first_error = first_error or exc
    refit_result = None
    if refit is not None:
        try:
            refit_result = refit.result()
        except Exception as exc:  # noqa: BLE001
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
    trace = assemble_trace(dataset, pipeline, results, test=test, refit_result=refit_result)
    scores = {r.partition: r.scores.get(trace.metric) for r in trace.records(fold_id="avg")}
    shown = ", ".join(f"{part} {trace.metric} {value:.4g}" for part, value in scores.items() if value is not None)
    get_run_logger().info("%s on %s: %s (%d folds, %d ms of fitting)", trace.pipeline_name,
                          trace.dataset_name, shown or "no scores", len(results), trace.duration_ms)
    return trace


def plan_pipeline_folds(dataset, pipeline) -> list[FoldPlan]:
    return plan_folds(dataset, pipeline)


def refit_plan(dataset) -> FoldPlan:
    return FoldPlan("refit", np.arange(dataset.n_samples, dtype=np.int64), np.zeros(0, dtype=np.int64))
