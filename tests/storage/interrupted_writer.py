"""A writer whose store calls are interrupted by a signal at random moments, as SIGTERM
interrupts a flow (Prefect's handler raises wherever the main thread is, DuckDB's
statements included). After each interruption the next, undisturbed call must work, and
every acknowledged write must be there at the end. Prints one JSON line.

    python -m tests.storage.interrupted_writer WORKSPACE ITERATIONS SEED MAX_DELAY IDLE
"""

from __future__ import annotations

import json
import random
import signal
import sys

import numpy as np

from storage import WorkspaceStore


class Interrupted(BaseException):
    """What the signal handler raises: a BaseException, as Prefect's TerminationSignal is,
    so no ``except Exception`` on the way may take it for an ordinary failure."""


def _interrupt(signum, frame):
    raise Interrupted()


def main(workspace: str, iterations: int, seed: int, max_delay: float, idle: float) -> None:
    signal.signal(signal.SIGALRM, _interrupt)
    rng = random.Random(seed)
    store = WorkspaceStore(workspace, idle=idle, lock_timeout=10)
    run_id = store.begin_run("interrupted")
    pipeline_id = store.begin_pipeline(run_id, "p", None, [], "d")
    acked: list[str] = []
    interrupted = in_duckdb = 0

    def write(i: int) -> list[str]:
        arrays = {"y_true": np.zeros(50), "y_pred": np.full(50, float(i))}
        if i % 3 == 0:
            # a statement of its own: it settles the journal first, in DuckDB (single
            # calls and small batches only append a record to the journal file)
            store.begin_run(f"interrupted {i}")
        if i % 2:
            return [store.save_prediction(pipeline_id, val_score=float(i), **arrays)]
        with store.batch():  # a batch, as a pipeline's hook writes
            return [store.save_prediction(pipeline_id, val_score=float(i), fold_id=str(k), **arrays) for k in range(3)]

    for i in range(iterations):
        try:  # armed inside: the signal may fire before the write even starts
            signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.0001, max_delay))
            ids = write(i)
            signal.setitimer(signal.ITIMER_REAL, 0)
            acked += ids
        except (Interrupted, RuntimeError) as exc:  # RuntimeError: DuckDB's "Query interrupted"
            signal.setitimer(signal.ITIMER_REAL, 0)
            if isinstance(exc, RuntimeError) and str(exc) != "Query interrupted":
                raise
            interrupted += 1
            in_duckdb += isinstance(exc, RuntimeError)
        acked += write(i)  # undisturbed: must work whatever the interruption left
    stored = set(store.query_predictions()["prediction_id"])
    store.close()
    print(json.dumps({"interrupted": interrupted, "in_duckdb": in_duckdb, "acked": len(acked),
                      "missing": [a for a in acked if a not in stored]}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
