"""Fold fits in worker processes.

scikit-learn's PLS (and most of a NIRS pipeline: many small numpy operations) holds the
GIL, so two threads cannot fit two folds at once: measured on 2 cores, a second fit
thread gained nothing. Two worker processes fit a 20-pipeline x 5-fold grid on Tablet
in 1.33-1.41 s against 1.96-2.17 s on one thread (1.5x).

``fold_pool(n).fit(dataset, pipeline, plan, test)`` is ``training.fit_fold`` run in one
of ``n`` processes (joblib's loky executor: reused across calls and runs of a process,
workers that die are replaced and their fit fails with an error, workers exit with
their parent). Each worker keeps the last few datasets it was sent, so a dataset
crosses the process boundary once per worker rather than once per fold. BLAS runs
single-threaded in the workers: the processes are the parallelism.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections import OrderedDict
from typing import Any

from .training import FoldPlan, FoldResult, fit_fold

_BLAS_SINGLE = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
_KEPT_DATASETS = 4
_MISSING = "nirsflow: dataset not in this worker"  # a plain string survives pickling as itself

# in a worker process: datasets by the key their parent gave them
_DATASETS: OrderedDict[str, tuple[Any, Any]] = OrderedDict()


def _fit_in_worker(key: str, data: tuple[Any, Any] | None, pipeline, plan: FoldPlan):
    if data is not None:
        _DATASETS[key] = data
        while len(_DATASETS) > _KEPT_DATASETS:
            _DATASETS.popitem(last=False)
    found = _DATASETS.get(key)
    if found is None:
        return _MISSING
    _DATASETS.move_to_end(key)
    dataset, test = found
    return fit_fold(dataset, pipeline, plan, test=test)


class FoldPool:
    """Fits folds in ``processes`` worker processes; safe to call from several threads."""

    def __init__(self, processes: int, *, idle_timeout: float = 300.0) -> None:
        if processes < 1:
            raise ValueError(f"a fold pool needs at least one process, got {processes}")
        self.processes, self.idle_timeout = processes, idle_timeout

    @property
    def _executor(self):
        # asked for each fit: the same executor while it is sound, a new one once a dead
        # worker has broken it (its running fits failed with TerminatedWorkerError)
        from joblib.externals.loky import get_reusable_executor

        return get_reusable_executor(max_workers=self.processes, timeout=self.idle_timeout, env=_BLAS_SINGLE)

    def fit(self, dataset, pipeline, plan: FoldPlan, test=None) -> FoldResult:
        key = f"{_token(dataset)}:{_token(test)}"
        result = self._executor.submit(_fit_in_worker, key, None, pipeline, plan).result()
        if isinstance(result, str) and result == _MISSING:  # this worker has not seen it yet
            result = self._executor.submit(_fit_in_worker, key, (dataset, test), pipeline, plan).result()
        return result


_TOKENS: dict[int, str] = {}  # id(dataset object) -> its token, while the object lives
_TOKENS_LOCK = threading.Lock()


def _token(obj) -> str:
    if obj is None:
        return "-"
    with _TOKENS_LOCK:
        token = _TOKENS.get(id(obj))
        if token is None:
            token = _TOKENS[id(obj)] = uuid.uuid4().hex
            weakref.finalize(obj, _TOKENS.pop, id(obj), None)  # its id may be reused after
        return token


_POOLS: dict[int, FoldPool] = {}


def fold_pool(processes: int) -> FoldPool | None:
    """The process's pool of ``processes`` workers (None for 0: fit in the caller)."""
    if processes <= 0:
        return None
    with _TOKENS_LOCK:
        if processes not in _POOLS:
            _POOLS[processes] = FoldPool(processes)
        return _POOLS[processes]
