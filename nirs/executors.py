"""Where a pipeline's fold fits run: threads, loky worker processes, or a Dask cluster.
Pure: no Prefect, no store.

A pipeline is one Prefect task (tasks/training.py); it hands its folds (and refit) to an
executor and gathers them. An executor's ``submit(dataset, pipeline, plan, test)`` returns
a future whose ``result()`` is the ``FoldResult`` of ``training.fit_fold``, or raises the
fit's own error (type, message and nirs's notes kept). Executors are made once per process
and spec (``fold_executor``) and shared by the pipelines that run at the same time.

* ``threads``: a pool of threads in this process. PLS holds the GIL, so two threads do
  not fit two folds at once, but nothing is copied and nothing starts.
* ``loky``: ``nirs.parallel``'s worker processes (a dataset crosses once per worker).
* ``dask://HOST:PORT`` / ``dask://local``: a ``distributed.Client`` (``local``: a
  LocalCluster of ``workers`` single-threaded processes). Each dataset is scattered
  once, then only pipelines and fold plans travel; Dask reruns a fit whose worker died
  (its ``allowed-failures``), and a fit that raises fails its pipeline. The workers
  need nirsflow installed, as the flow's machine has it.

The default, and the figures behind it, are in ``DEFAULT_EXECUTOR``'s comment.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from .errors import ConfigError
from .parallel import _BLAS_SINGLE, _token, fold_pool
from .training import FoldPlan, fit_fold

__all__ = ["DEFAULT_EXECUTOR", "ExecutorError", "parse_spec", "fold_executor", "describe_executor", "close_executors"]

#: Threads, on the numbers. bench/flow_bench.py, 20 pipelines x 5 PLS folds on Tablet,
#: 2 cores shared with other engineers' test suites (load average 3-8), local Prefect
#: server, medians of 5-7 alternating runs; the train flow's wall time over the plain core
#: and its store, one column per bench run (2 pipelines at a time):
#:
#:     threads            1.13x  1.02x  1.58x  1.60x  1.57x  1.51x   CPU 4.9-6.1 s (220-300 ms a pipeline)
#:     loky, 2 processes  1.11x  1.24x  1.59x  1.59x  1.23x  1.51x   CPU 4.8-6.1 s (240-300 ms a pipeline)
#:     dask://local (2)   2.37x    -    2.15x    -      -      -     27-66 ms of wall time a fit over the core
#:     a task per fold (issue 4's shape, same hour): 1.21-1.35x, CPU 7.9-8.8 s
#:
#: Without the flow run's own start and end (~0.5-1 s, most of it Prefect joining its
#: heartbeat thread, deployments/README.md), the body is 1.05-1.27x. Threads and loky
#: tie across runs (one quiet window gave loky 1.21-1.23x against 1.39-1.58x, the next
#: tied at 1.51x; the machine's load decides more than the executor); threads start
#: nothing (loky: 3-11 s to start its workers in each new process, e.g. every
#: ``nirsflow train``) and copy nothing. So threads are the default, and ``processes=N``
#: (loky) is for slow fits, where processes use the cores a GIL-bound fit cannot (a
#: random-forest grid ran a third faster on 2 cores). max_concurrency 1-4 changed
#: little (threads 1.39-1.58x, loky 1.21-1.51x). Every executor gives the same scores and
#: replays, to the bit.
DEFAULT_EXECUTOR = "threads"

_KEPT_DATASETS = 4  # scattered datasets a Dask executor keeps on the cluster


class ExecutorError(ConfigError):
    """An executor spec nirsflow does not know, or a cluster it cannot reach."""


def default_workers() -> int:
    """flows.workers.DEFAULT_WORKERS (nirs may not import flows): cores - 1, at least 2."""
    return max(2, (os.cpu_count() or 2) - 1)


class ThreadFits:
    """Fits in a thread pool of this process."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="nirsflow-fit")

    def submit(self, dataset, pipeline, plan: FoldPlan, test=None):
        return self._pool.submit(fit_fold, dataset, pipeline, plan, test=test)

    def describe(self) -> str:
        return f"threads ({self.workers})"

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class LokyFits:
    """Fits in ``nirs.parallel``'s loky worker processes. Its ``fit`` blocks (it may send
    the dataset on a second try), so a waiting thread per fit in flight carries it."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = fold_pool(workers)
        self._waiters = ThreadPoolExecutor(workers * 4, thread_name_prefix="nirsflow-loky-wait")

    def submit(self, dataset, pipeline, plan: FoldPlan, test=None):
        return self._waiters.submit(self._pool.fit, dataset, pipeline, plan, test=test)

    def describe(self) -> str:
        return f"loky ({self.workers} processes)"

    def close(self) -> None:
        self._waiters.shutdown(wait=False, cancel_futures=True)


def _fit_scattered(data, pipeline, plan: FoldPlan):
    dataset, test = data
    return fit_fold(dataset, pipeline, plan, test=test)


class DaskFits:
    """Fits on a Dask cluster through ``distributed.Client``."""

    def __init__(self, address: str, workers: int) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:
            raise ExecutorError(f"executor dask://{address} needs the 'distributed' package: "
                                "pip install 'nirsflow[dask]'") from exc
        self.address, self.cluster = address, None
        if address == "local":
            # processes, one thread each: fits hold the GIL; BLAS single-threaded, as loky's
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        dashboard_address=None, env=dict(_BLAS_SINGLE))
            self.client = Client(self.cluster, set_as_default=False)
        else:
            try:
                self.client = Client(f"tcp://{address}", timeout=30, set_as_default=False)
            except OSError as exc:
                raise ExecutorError(f"no Dask scheduler answered at tcp://{address} within 30 s: {exc}") from exc
        self._scattered: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def _data(self, dataset, test):
        key = f"{_token(dataset)}:{_token(test)}"
        with self._lock:
            found = self._scattered.get(key)
            if found is None:
                # once per dataset: every fold of every pipeline then sends only its plan.
                # broadcast: a copy on every worker at once (each would fetch one for its
                # first fit anyway), so a worker that dies takes no dataset with it and
                # Dask can rerun its fits elsewhere. hash=False: tokenizing the spectra
                # would cost a pass over them for nothing
                [found] = self.client.scatter([(dataset, test)], hash=False, broadcast=True)
                self._scattered[key] = found
                while len(self._scattered) > _KEPT_DATASETS:
                    self._scattered.popitem(last=False)  # its last reference: Dask frees it
            self._scattered.move_to_end(key)
            return found

    def submit(self, dataset, pipeline, plan: FoldPlan, test=None):
        return self.client.submit(_fit_scattered, self._data(dataset, test), pipeline, plan, pure=False)

    def describe(self) -> str:
        return f"dask ({self.address})"

    def close(self) -> None:
        self.client.cancel(list(self._scattered.values()))  # released before the workers go
        self._scattered.clear()
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


_EXECUTORS: dict[tuple[str, int], object] = {}
_EXECUTORS_LOCK = threading.Lock()


def parse_spec(spec: str | None, processes: int = 0) -> tuple[str, int]:
    """(kind or dask address, workers) of an executor spec. ``processes`` > 0 with no
    spec asks for loky with that many processes, as ``train(processes=N)`` always has."""
    processes = max(0, int(processes or 0))
    spec = (spec or "").strip()
    if not spec:
        spec = "loky" if processes else DEFAULT_EXECUTOR
    workers = processes or default_workers()
    if spec in ("threads", "loky"):
        return spec, workers
    if spec.startswith("dask://"):
        address = spec[len("dask://"):].rstrip("/")
        if address != "local" and (":" not in address or not address.rsplit(":", 1)[1].isdigit()):
            raise ExecutorError(f"executor {spec!r}: expected dask://HOST:PORT or dask://local")
        return f"dask://{address}", workers
    raise ExecutorError(f"executor {spec!r}: expected 'threads', 'loky', 'dask://HOST:PORT' or 'dask://local'")


def fold_executor(spec: str | None = None, processes: int = 0):
    """The process's executor for ``spec`` (see ``parse_spec``), made on first use."""
    kind, workers = parse_spec(spec, processes)
    with _EXECUTORS_LOCK:
        found = _EXECUTORS.get((kind, workers))
        if found is None:
            if kind == "threads":
                found = ThreadFits(workers)
            elif kind == "loky":
                found = LokyFits(workers)
            else:
                found = DaskFits(kind[len("dask://"):], workers)
                # registered after distributed's own exit hooks, so it runs before them:
                # the cluster is closed while the client still knows what it scattered
                atexit.register(close_executors)
            _EXECUTORS[(kind, workers)] = found
        return found


def describe_executor(spec: str | None = None, processes: int = 0) -> str:
    kind, workers = parse_spec(spec, processes)
    return kind if kind.startswith("dask://") else f"{kind} ({workers})"


@atexit.register
def close_executors() -> None:
    """Close every executor of this process (a LocalCluster's workers go with it)."""
    with _EXECUTORS_LOCK:
        found = list(_EXECUTORS.values())
        _EXECUTORS.clear()
    for executor in found:
        executor.close()
