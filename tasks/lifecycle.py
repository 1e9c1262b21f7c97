"""The store mirrors Prefect's states: the hooks that carry a run's and its pipelines'
lifecycles into the workspace.

Prefect calls a state hook in the process that owns the state change, and only logs an
exception the hook raises: the run still ends Completed. So a failed store write must
not vanish. Every hook keeps what it did (or failed to do) in the run's ``RunBook``, an
in-process record keyed by the Prefect flow-run id:

* ``run_started`` (flow ``on_running``): ``begin_run``, and a ``process`` log entry
  (host, pid) that reconciliation uses to tell a dead process from a slow one;
* ``pipeline_started`` (pipeline task ``on_running``): ``begin_pipeline`` with the
  flow-run and task-run ids;
* ``pipeline_completed`` (``on_completion``): the trace's artifacts, chain, predictions
  and ``complete_pipeline``, in one ``store.batch()`` so a pipeline lands whole or not
  at all;
* ``pipeline_failed`` (``on_failure``): ``fail_pipeline`` with the error (which also
  drops its chains, so its artifacts are no longer kept alive by it);
* ``run_completed`` (``on_completion``): ``complete_run`` only when every planned
  pipeline landed and no store write failed; otherwise ``fail_run`` with the reason,
  and if even that write fails the row stays ``running`` for ``reconcile``;
* ``run_failed`` / ``run_crashed`` / ``run_cancelled``: ``fail_run`` with the status
  and Prefect's message.

Only the flow-run process writes the store (the hooks run there; the executors that
fit the folds, in threads, processes or a Dask cluster, only return fitted objects). A cancellation hook may run in a runner process instead, after
it killed the flow's process: then there is no book, and the hook finds the run by its
flow-run id in the store.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from storage import ChainBuilder, WorkspaceStore, best_scores, process_identity, save_trace_predictions
from tasks.signals import raise_swallowed

log = logging.getLogger("nirsflow.lifecycle")

#: Where a flow's parameters say the workspace is, and how long to wait for its lock.
WORKSPACE_PARAM = "workspace"
LOCK_TIMEOUT_PARAM = "lock_timeout"
DEFAULT_LOCK_TIMEOUT = 60.0
#: A run's store keeps its connection this long between writes. Between two pipelines'
#: writes there are fold fits; reopening DuckDB each time cost ~45 ms per write here (two
#: per pipeline). Other processes lose nothing: the store hands the workspace over as
#: soon as it sees a waiter (checked every ~20 ms), see storage/connection.py.
RUN_STORE_IDLE = 2.0
MAX_ERROR_CHARS = 4000


class StoreWriteError(RuntimeError):
    """A store write that the run depends on did not happen; the run is not completed."""


def describe_exception(exc: BaseException | None, fallback: str | None = None) -> str:
    """``Type: message`` plus the notes nirs adds (pipeline, fold, step), on one line each."""
    if exc is None or not isinstance(exc, BaseException):
        return fallback or "unknown error"
    text = f"{type(exc).__name__}: {exc}"
    notes = getattr(exc, "__notes__", None) or []
    if notes:
        text += " (" + "; ".join(str(n) for n in notes) + ")"
    return text[:MAX_ERROR_CHARS]


# -- the run book ------------------------------------------------------------------------
@dataclass
class PipelineEntry:
    """One planned pipeline of a run (one expanded pipeline on one dataset)."""

    key: str
    name: str
    dataset_name: str
    dataset_hash: str | None
    expanded_config: Any
    generator_choices: list
    task_run_id: str | None = None
    pipeline_id: str | None = None
    status: str = "planned"  # planned | running | completed | failed
    landed: bool = False  # the store holds its final state
    error: str | None = None
    store_error: str | None = None
    metric: str | None = None
    best_val: float | None = None
    best_test: float | None = None
    chain_id: str | None = None
    duration_ms: int | None = None
    wall_s: float | None = None
    started: float | None = None
    folds: list = field(default_factory=list)  # one row per fitted fold: id, scores, ms


@dataclass
class RunBook:
    flow_run_id: str
    flow_run_name: str
    store: WorkspaceStore | None  # None when the workspace could not even be opened
    run_id: str | None = None
    begin_error: str | None = None
    entries: dict = field(default_factory=dict)  # key -> PipelineEntry, in plan order
    by_task_run: dict = field(default_factory=dict)  # pipeline task run id -> key
    store_errors: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    closed: bool = False
    _logs: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # planning ---------------------------------------------------------------------
    def plan(self, entry: PipelineEntry) -> PipelineEntry:
        if entry.key in self.entries:
            raise ValueError(f"pipeline {entry.key!r} is planned twice in one run")
        self.entries[entry.key] = entry
        return entry

    def entry(self, key: str) -> PipelineEntry:
        return self.entries[key]

    def note_task_run(self, task_run_id, key: str) -> None:
        if task_run_id is not None:
            self.by_task_run[str(task_run_id)] = key

    def store_failed(self, where: str, exc: BaseException) -> str:
        # a SIGTERM that DuckDB swallowed mid-statement is not a store failure: the
        # termination goes on (tasks/signals.py)
        raise_swallowed(exc)
        message = f"{where}: {describe_exception(exc)}"
        self.store_errors.append(message)
        return message

    # what is missing before the run may be called completed --------------------------
    def problems(self) -> list[str]:
        found = list(self.store_errors)
        if self.run_id is None:
            found.insert(0, f"the run was never recorded in the store ({self.begin_error or 'no begin_run'})")
        missing = [e.name if len(self.entries) < 2 else e.key for e in self.entries.values() if not e.landed]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            found.append(f"{len(missing)} of {len(self.entries)} pipelines did not land in the store: {shown}")
        return found

    def counts(self) -> dict:
        values = list(self.entries.values())
        return {"planned": len(values),
                "completed": sum(e.status == "completed" for e in values),
                "failed": sum(e.status == "failed" for e in values),
                "landed": sum(e.landed for e in values),
                "store_errors": len(self.store_errors)}

    # logs kept in the store's logs table ---------------------------------------------
    def buffer_log(self, record: dict) -> None:
        with self._lock:
            self._logs.append(record)

    def flush_logs(self) -> None:
        """Write the buffered log records (inside the caller's batch when there is one).
        On failure they are kept for the next flush."""
        with self._lock:
            pending, self._logs = self._logs, []
        if not pending or self.run_id is None:
            with self._lock:
                self._logs[:0] = pending
            return
        try:
            with self.store.batch():
                for rec in pending:
                    key = self.by_task_run.get(rec.get("task_run_id") or "")
                    pipeline_id = self.entries[key].pipeline_id if key in self.entries else None
                    self.store.log_step(pipeline_id, event="log", message=rec["message"],
                                        details=rec["details"], level=rec["level"], run_id=self.run_id)
        except Exception:
            with self._lock:
                self._logs[:0] = pending
            raise

    def close(self) -> None:
        self.closed = True
        if self.store is None:
            return
        try:
            self.store.close()
        except Exception as exc:  # noqa: BLE001 - closing must not hide the run's outcome
            log.warning("could not close workspace %s: %s", self.store.path, exc)


_BOOKS: dict[str, RunBook] = {}
_BOOKS_LOCK = threading.Lock()


def get_book(flow_run_id) -> RunBook | None:
    with _BOOKS_LOCK:
        return _BOOKS.get(str(flow_run_id))


def current_book() -> RunBook:
    """The book of the flow run this code runs in (created by its ``run_started`` hook)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        raise RuntimeError("current_book() needs a running flow")
    book = get_book(ctx.flow_run.id)
    if book is None:
        raise RuntimeError(f"flow run {ctx.flow_run.name!r} has no run book: was it decorated "
                           "with the run hooks of tasks.lifecycle?")
    return book


def _drop_book(flow_run_id) -> RunBook | None:
    with _BOOKS_LOCK:
        return _BOOKS.pop(str(flow_run_id), None)


def open_store(parameters: dict) -> WorkspaceStore:
    workspace = parameters.get(WORKSPACE_PARAM)
    if not workspace:
        raise ValueError(f"the flow has no {WORKSPACE_PARAM!r} parameter: which workspace should it write?")
    timeout = parameters.get(LOCK_TIMEOUT_PARAM) or DEFAULT_LOCK_TIMEOUT
    return WorkspaceStore(Path(workspace), lock_timeout=float(timeout), idle=RUN_STORE_IDLE)


def find_run(store: WorkspaceStore, flow_run_id) -> tuple[str, str] | None:
    """(run_id, status) of the store run that a flow run owns, or None."""
    frame = store.sql("SELECT run_id, status FROM runs WHERE flow_run_id = ? ORDER BY created_at DESC LIMIT 1",
                      [str(flow_run_id)])
    return None if frame.is_empty() else (frame["run_id"][0], frame["status"][0])


# -- describing a run for begin_run --------------------------------------------------------
@dataclass
class RunDescription:
    name: str
    config: Any
    datasets: list
    tags: list


Describe = Callable[[dict], RunDescription]


def _describe_safely(describe: Describe, flow_run) -> RunDescription:
    params = dict(flow_run.parameters or {})
    try:
        description = describe(params)
    except Exception as exc:  # noqa: BLE001 - a bad parameter is the body's error to raise; record what we have
        description = RunDescription(name=flow_run.name, config={"parameters": params, "note": describe_exception(exc)},
                                     datasets=[], tags=[])
    description.tags = sorted(set(description.tags) | set(flow_run.tags or []))
    return description


def _begin(store: WorkspaceStore, description: RunDescription, flow_run) -> str:
    with store.batch():
        run_id = store.begin_run(description.name, description.config, description.datasets,
                                 flow_run_id=str(flow_run.id), tags=description.tags)
        store.log_step(None, event="process", run_id=run_id, level="info",
                       message=f"flow run {flow_run.name!r} ({flow_run.id}) started",
                       details={"flow_run_id": str(flow_run.id), "flow_run_name": flow_run.name,
                                **process_identity()})
    return run_id


# -- the run-level hooks ---------------------------------------------------------------------
# Module-level functions bound with functools.partial, never closures: Prefect pickles the
# flow object (hooks included) for process-pool task runners, and a closure would drag
# this module's locks and books along by value.
def run_started(describe: Describe, flow, flow_run, state) -> None:
    book = get_book(flow_run.id)
    if book is not None and book.run_id is not None:
        return  # Running again after a retry: the run is already recorded
    install_store_log_handler()
    params = dict(flow_run.parameters or {})
    book = RunBook(flow_run_id=str(flow_run.id), flow_run_name=flow_run.name, store=None)
    with _BOOKS_LOCK:
        _BOOKS[book.flow_run_id] = book
    try:
        book.store = open_store(params)
        found = find_run(book.store, flow_run.id)
        book.run_id = found[0] if found else _begin(book.store, _describe_safely(describe, flow_run), flow_run)
    except Exception as exc:
        book.begin_error = describe_exception(exc)
        raise


def run_completed(describe: Describe, flow, flow_run, state) -> None:
    book = _drop_book(flow_run.id)
    if book is None:
        log.error("flow run %s completed without a run book; nothing was recorded", flow_run.id)
        return
    try:
        problems = book.problems()
        if book.run_id is None or book.store is None:
            raise StoreWriteError("; ".join(problems))
        _flush_quietly(book)
        if problems:
            # Never `completed` when writes are missing. If this write fails too, the
            # row stays `running` and reconcile settles it against Prefect's state.
            book.store.fail_run(book.run_id, "completed in Prefect, but " + "; ".join(problems),
                                status="failed")
        else:
            book.store.complete_run(book.run_id, summary=book.summary or book.counts())
    finally:
        book.close()


def run_failed(describe: Describe, flow, flow_run, state) -> None:
    _end_run(describe, flow_run, state, "failed")


def run_crashed(describe: Describe, flow, flow_run, state) -> None:
    _end_run(describe, flow_run, state, "crashed")


def run_cancelled(describe: Describe, flow, flow_run, state) -> None:
    _end_run(describe, flow_run, state, "cancelled")


def run_hooks(describe: Describe) -> dict:
    """The ``@flow(...)`` keyword arguments that mirror a run in the store. ``describe``
    must be a module-level function (it is pickled by reference with the flow)."""
    from functools import partial

    from tasks import engine_logs

    engine_logs.install()  # hooks log at DEBUG (tasks/engine_logs.py)

    return {"on_running": [partial(run_started, describe)], "on_completion": [partial(run_completed, describe)],
            "on_failure": [partial(run_failed, describe)], "on_crashed": [partial(run_crashed, describe)],
            "on_cancellation": [partial(run_cancelled, describe)]}


def state_reason(state) -> str:
    """The exception behind a failed state (type, message, nirs's notes) when Prefect still
    holds it, else the state's message. A crash is told by Prefect's own message
    ("Execution was aborted by a termination signal."), not by the signal's exception,
    which has none."""
    if state.is_crashed() and state.message:
        return state.message[:MAX_ERROR_CHARS]
    exc = None
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - the result may not be retrievable; the message is enough
        exc = None
    if isinstance(exc, BaseException):
        return describe_exception(exc)
    return (state.message or state.name or "no reason given")[:MAX_ERROR_CHARS]


def _end_run(describe: Describe, flow_run, state, status: str) -> None:
    book = _drop_book(flow_run.id)
    if book is not None and book.store is None:
        book.close()
        book = None  # the workspace could not be opened at the start: try afresh
    store = book.store if book is not None else open_store(dict(flow_run.parameters or {}))
    try:
        run_id = book.run_id if book is not None else None
        if run_id is None:
            found = find_run(store, flow_run.id)
            run_id = found[0] if found else None
            if found and found[1] != "running":
                return  # already final (e.g. a runner's cancellation hook after our own)
        if run_id is None:
            # Rejected before it could begin (bad parameters, workspace locked at start):
            # the store still gets a record of the attempt and why it ended.
            run_id = _begin(store, _describe_safely(describe, flow_run), flow_run)
        if book is not None:
            book.run_id = run_id
            _flush_quietly(book)
        reason = state_reason(state)
        if book is not None and book.store_errors:
            reason += "; also, store writes failed: " + "; ".join(book.store_errors)
        store.fail_run(run_id, reason[:MAX_ERROR_CHARS], status=status)
    finally:
        if book is not None:
            book.close()
        else:
            store.close()


def _flush_quietly(book: RunBook) -> None:
    try:
        book.flush_logs()
    except Exception as exc:  # noqa: BLE001 - logs are also in Prefect; the run's status matters more
        log.warning("could not keep %d log records in the store: %s", len(book._logs), exc)


# -- the pipeline-level hooks -----------------------------------------------------------------
def _book_entry(task_run, key: str) -> tuple[RunBook, PipelineEntry]:
    book = get_book(task_run.flow_run_id)
    if book is None:
        raise RuntimeError(f"task run {task_run.name!r}: its flow run {task_run.flow_run_id} has no run book")
    return book, book.entry(key)


def pipeline_started(key: str, task, task_run, state) -> None:
    book, entry = _book_entry(task_run, key)
    entry.task_run_id = str(task_run.id)
    entry.started = time.perf_counter()
    entry.status = "running"
    book.note_task_run(task_run.id, key)
    if entry.pipeline_id is not None:
        return  # a retry: the pipeline row exists
    try:
        entry.pipeline_id = book.store.begin_pipeline(
            book.run_id, entry.name, entry.expanded_config, entry.generator_choices, entry.dataset_name,
            entry.dataset_hash, flow_run_id=book.flow_run_id, task_run_id=entry.task_run_id)
    except Exception as exc:
        entry.store_error = book.store_failed(f"begin_pipeline {entry.key}", exc)
        raise


def pipeline_completed(key: str, task, task_run, state) -> None:
    book, entry = _book_entry(task_run, key)
    entry.wall_s = time.perf_counter() - entry.started if entry.started else None
    outcome = state.result()  # tasks.training.TrainedPipeline: the trace and its fold rows
    trace = getattr(outcome, "trace", outcome)
    entry.folds = list(getattr(outcome, "folds", None) or [])
    try:
        if entry.pipeline_id is None:
            raise StoreWriteError(f"pipeline {entry.key} has no store row (begin_pipeline failed)")
        store = book.store
        with store.batch():
            chain = ChainBuilder(trace, store).build()
            chain["metadata"] = {**chain["metadata"], "flow_run_id": book.flow_run_id, "folds": entry.folds}
            chain_id = store.save_chain(entry.pipeline_id, task_run_id=entry.task_run_id, **chain)
            save_trace_predictions(store, entry.pipeline_id, chain_id, trace, entry.task_run_id)
            best_val, best_test = best_scores(trace)
            store.complete_pipeline(entry.pipeline_id, best_val=best_val, best_test=best_test,
                                    metric=trace.metric, duration_ms=int(trace.duration_ms))
            book.flush_logs()
    except Exception as exc:
        entry.store_error = book.store_failed(f"recording pipeline {entry.key}", exc)
        entry.status = "failed"
        entry.error = f"its results could not be written: {entry.store_error}"
        _try_fail_pipeline(book, entry)
        raise
    entry.status, entry.landed = "completed", True
    entry.chain_id, entry.metric = chain_id, trace.metric
    entry.best_val, entry.best_test, entry.duration_ms = best_val, best_test, int(trace.duration_ms)


def pipeline_failed(key: str, task, task_run, state) -> None:
    book, entry = _book_entry(task_run, key)
    entry.wall_s = time.perf_counter() - entry.started if entry.started else None
    entry.status = "failed"
    entry.error = state_reason(state)
    try:
        if entry.pipeline_id is None:
            entry.pipeline_id = book.store.begin_pipeline(
                book.run_id, entry.name, entry.expanded_config, entry.generator_choices, entry.dataset_name,
                entry.dataset_hash, flow_run_id=book.flow_run_id,
                task_run_id=entry.task_run_id or str(task_run.id))
        with book.store.batch():
            book.store.fail_pipeline(entry.pipeline_id, entry.error)
            book.flush_logs()
        entry.landed = True
    except Exception as exc:
        entry.store_error = book.store_failed(f"fail_pipeline {entry.key}", exc)
        raise


def _try_fail_pipeline(book: RunBook, entry: PipelineEntry) -> None:
    if entry.pipeline_id is None:
        return
    try:
        book.store.fail_pipeline(entry.pipeline_id, entry.error)
    except Exception as exc:  # noqa: BLE001 - the first error is already recorded
        log.warning("could not mark pipeline %s failed either: %s", entry.key, exc)


def pipeline_hooks(key: str) -> dict:
    """The ``task.with_options(...)`` hooks of one planned pipeline."""
    from functools import partial

    return {"on_running": [partial(pipeline_started, key)],
            "on_completion": [partial(pipeline_completed, key)],
            "on_failure": [partial(pipeline_failed, key)]}


# -- logs from get_run_logger, kept in the store ------------------------------------------------
_PREFECT_DIR = None
_HANDLER_INSTALLED = False
_LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
           logging.ERROR: "error", logging.CRITICAL: "critical"}


class StoreLogHandler(logging.Handler):
    """Copies the run loggers' records (``get_run_logger``) of runs that have a book into
    the book, which writes them to the store's logs table at the next pipeline write or
    at the end of the run. Prefect's own engine chatter below WARNING is left out."""

    def emit(self, record: logging.LogRecord) -> None:
        flow_run_id = getattr(record, "flow_run_id", None)
        if flow_run_id is None:
            return
        book = get_book(flow_run_id)
        if book is None or book.closed:
            return
        if record.levelno < logging.WARNING and record.pathname.startswith(_PREFECT_DIR):
            return
        try:
            details = {"logger": record.name, "flow_run_id": str(flow_run_id), "at": record.created}
            task_run_id = getattr(record, "task_run_id", None)
            if task_run_id is not None:
                details["task_run_id"] = str(task_run_id)
                details["task_run_name"] = getattr(record, "task_run_name", None)
            if record.exc_info:
                details["traceback"] = "".join(traceback.format_exception(*record.exc_info))[-MAX_ERROR_CHARS:]
            book.buffer_log({"message": record.getMessage()[:MAX_ERROR_CHARS],
                             "level": _LEVELS.get(record.levelno, "info" if record.levelno < 30 else "error"),
                             "details": details,
                             "task_run_id": None if task_run_id is None else str(task_run_id)})
        except Exception:  # noqa: BLE001 - a log line must never break the run
            self.handleError(record)


def install_store_log_handler() -> None:
    global _HANDLER_INSTALLED, _PREFECT_DIR
    if _HANDLER_INSTALLED:
        return
    import prefect

    _PREFECT_DIR = str(Path(prefect.__file__).parent)
    handler = StoreLogHandler(level=logging.INFO)
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addHandler(handler)
    _HANDLER_INSTALLED = True
