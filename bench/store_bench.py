"""Workspace store benchmark (issues 2 and 18). Run by hand: python bench/store_bench.py

Prints a markdown table of what is measured, with the target beside it:

1. ``save_prediction`` with 100-float arrays (y_true, y_pred), one durable call at a time
   from one process: calls/s over the first 1,000 rows, and over 1,000 calls made around
   the 10,000th and the 100,000th row (the table is filled up to those points with
   ``batch()``: the rows are the same, only faster to make). The settling of what the
   calls journaled and the release of the workspace are included.
2. The same call inside one ``batch()``: predictions/s.
3. 4 processes interleaving single calls for 5 s: each one's share of all calls, and how
   long a call waited (p50, p99, max).
4. ``top_predictions`` over 1,000,000 predictions, warm (connection open) and cold.
5. ``vacuum`` after deleting 90 % of the predictions: how much of the file it gives back.
6. The open/lock/close cost on its own (a read after the idle window let go).

Then what one durable single call costs, step by step: its rows written into the spec's
two tables, as one narrow row of a journal table, or as one record appended to a file
(why single calls journal, and to a file), and a cProfile of the single-call path. Public API only (and DuckDB itself), so it runs
against any tree: ``PYTHONPATH=<tree> python <tree>/bench/store_bench.py``.
Nothing here is collected by pytest (not under tests/, not named test_*).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import multiprocessing as mp
import os
import pickle
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import duckdb
import numpy as np

from storage import WorkspaceStore
from storage.locking import FileLock
from timing import median_seconds

ROWS: list[tuple[str, str, str]] = []


def row(what: str, measured: str, target: str = "") -> None:
    ROWS.append((what, measured, target))
    print(f"  {what}: {measured}" + (f"   (target {target})" if target else ""), flush=True)


def arrays(n: int = 100) -> dict:
    x = np.linspace(0.0, 1.0, n)
    return {"y_true": x, "y_pred": x + 0.01}


def new_pipeline(store: WorkspaceStore, name: str) -> str:
    return store.begin_pipeline(store.begin_run(name), "p", None, [], "bench")


def single_calls(store: WorkspaceStore, pipeline_id: str, n: int) -> float:
    """Calls/s of n single calls, the settling of what they journaled and the hand-over
    of the workspace included (``release``)."""
    a = arrays()
    t = time.perf_counter()
    for i in range(n):
        store.save_prediction(pipeline_id, val_score=float(i % 97), **a)
    store.release()
    return n / (time.perf_counter() - t)


def fill(store: WorkspaceStore, pipeline_id: str, n: int, with_arrays: bool = True, chunk: int = 20_000) -> None:
    a = arrays() if with_arrays else {}
    scores = np.random.default_rng(0).random(n)
    for start in range(0, n, chunk):
        with store.batch():
            for i in range(start, min(start + chunk, n)):
                store.save_prediction(pipeline_id, val_score=float(scores[i]), **a)


def count(store: WorkspaceStore) -> int:
    return int(store.sql("SELECT count(*) AS n FROM predictions")["n"][0])


# -- 1 and 2 -------------------------------------------------------------------------------
def bench_single_and_batch(folder: Path) -> None:
    print("1. single durable calls from one process", flush=True)
    store = WorkspaceStore(folder / "single")
    pipeline_id = new_pipeline(store, "single")
    single_calls(store, pipeline_id, 50)  # first-call costs (imports, appenders) out of the way
    rates = {1_000: single_calls(store, pipeline_id, 1_000)}
    for point in (10_000, 100_000):
        fill(store, pipeline_id, point - 500 - count(store))
        rates[point] = single_calls(store, pipeline_id, 1_000)
    row("save_prediction, single calls, rows 0-1,000 (settling and release included)",
        f"{rates[1_000]:.0f} calls/s", ">= 300 calls/s")
    for point in (10_000, 100_000):
        row(f"save_prediction, single calls, around row {point:,}", f"{rates[point]:.0f} calls/s",
            ">= 300 calls/s, flat")
    store.close()

    print("2. inside one batch()", flush=True)
    store = WorkspaceStore(folder / "batch")
    pipeline_id = new_pipeline(store, "batch")
    a = arrays()
    n, rates = 20_000, []
    for _ in range(3):  # one batch is ~1 s: the machine's noise shows, so the median of three
        t = time.perf_counter()
        with store.batch():
            for i in range(n):
                store.save_prediction(pipeline_id, val_score=float(i % 97), **a)
        rates.append(n / (time.perf_counter() - t))
    row(f"save_prediction inside one batch() ({n:,} rows, commit included; median of 3)",
        f"{statistics.median(rates):,.0f} predictions/s", ">= 20,000/s")
    store.close()


# -- 3 ----------------------------------------------------------------------------------------
def _interleaver(workspace: str, pipeline_id: str, seconds: float, start_at: float, out) -> None:
    store = WorkspaceStore(workspace, lock_timeout=120)
    store.release()
    a = arrays()
    while time.time() < start_at:
        time.sleep(0.001)
    calls = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        store.save_prediction(pipeline_id, val_score=0.5, **a)
        calls.append((t, time.monotonic()))
    store.close()
    out.put((os.getpid(), calls))


def bench_interleaving(folder: Path, seconds: float = 5.0) -> None:
    print("3. 4 processes interleaving single calls", flush=True)
    ws = folder / "interleave"
    with WorkspaceStore(ws) as store:
        pipeline_id = new_pipeline(store, "interleave")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 6.0  # after the spawned interpreters have imported
    procs = [ctx.Process(target=_interleaver, args=(str(ws), pipeline_id, seconds, start_at, out))
             for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    counts = [len(calls) for _, calls in results]
    waits = np.array([end - start for _, calls in results for start, end in calls])
    shares = ", ".join(f"{100 * c / sum(counts):.0f} %" for c in counts)
    row("4 processes interleaving single calls for 5 s: each one's share of all calls (calls/s in all)",
        f"{shares} ({sum(counts) / seconds:.0f}/s)", "each >= 15 %")
    row("... how long a call waited: p50 / p99 / max",
        f"{np.percentile(waits, 50) * 1000:.0f} / {np.percentile(waits, 99) * 1000:.0f} / {waits.max() * 1000:.0f} ms",
        "max <= 1 s")


# -- 4, 5 and 6 --------------------------------------------------------------------------------
def bench_top_and_open(folder: Path, n: int) -> None:
    print(f"4. top_predictions over {n:,} predictions (building them with batch())", flush=True)
    ws, idle = folder / "top", 0.2
    store = WorkspaceStore(ws, idle=idle)
    pipeline_id = new_pipeline(store, "top")
    t = time.perf_counter()
    fill(store, pipeline_id, n, with_arrays=False, chunk=100_000)
    build = time.perf_counter() - t
    print(f"  built {n:,} predictions in {build:.1f} s ({n / build:,.0f}/s, no arrays)", flush=True)
    store.release()

    def cold(fn) -> float:
        store.release()
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    def warm(fn, repeat: int = 15) -> float:
        fn()
        return median_seconds(fn, repeat)

    top = lambda: store.top_predictions(10)  # noqa: E731
    top_asc = lambda: store.top_predictions(10, ascending=True)  # noqa: E731
    cold_top = statistics.median(cold(top) for _ in range(5))
    row(f"top_predictions(10) over {n:,} predictions, warm", f"{warm(top) * 1000:.1f} ms", "<= 20 ms")
    row("... with ascending= given (no direction query)", f"{warm(top_asc) * 1000:.1f} ms", "")
    row("... cold (open + lock + query)", f"{cold_top * 1000:.1f} ms", "")

    print("6. open/lock/close on its own", flush=True)
    small = lambda: store.list_runs(limit=1)  # noqa: E731
    warm_small = warm(small)
    lock = FileLock(ws / ".nirsflow")
    after_idle = []
    for _ in range(7):
        time.sleep(idle * 4)  # the idle window passes: the workspace is let go
        assert not lock.holders()
        t = time.perf_counter()
        small()
        after_idle.append(time.perf_counter() - t)
    store.close()
    cold_small = statistics.median(after_idle)
    row("open + lock + close: a read after the idle window, minus the same read warm",
        f"{(cold_small - warm_small) * 1000:.1f} ms (cold {cold_small * 1000:.1f} ms, warm "
        f"{warm_small * 1000:.2f} ms)", "")
    db = str(ws / "store.duckdb")
    raw = []
    for read_only in (True, False):
        times = []
        for _ in range(7):
            t = time.perf_counter()
            duckdb.connect(db, read_only=read_only).close()
            times.append(time.perf_counter() - t)
        raw.append(statistics.median(times))
    row(f"raw duckdb.connect + close on this {os.path.getsize(db) / 1e6:.0f} MB file (read-only, read-write)",
        f"{raw[0] * 1000:.1f} ms, {raw[1] * 1000:.1f} ms", "")
    kept = duckdb.connect(":memory:")  # what the store does instead: attach to a kept instance
    raw = []
    for options in (" (READ_ONLY)", ""):
        times = []
        for _ in range(7):
            t = time.perf_counter()
            kept.execute(f"ATTACH '{db}' AS ws{options}")
            kept.execute("DETACH ws")
            times.append(time.perf_counter() - t)
        raw.append(statistics.median(times))
    kept.close()
    row("ATTACH + DETACH of the same file on a kept in-memory instance (read-only, read-write)",
        f"{raw[0] * 1000:.1f} ms, {raw[1] * 1000:.1f} ms", "")
    times = []
    for _ in range(50):
        t = time.perf_counter()
        lock.acquire("exclusive")
        lock.release()
        times.append(time.perf_counter() - t)
    row("workspace lock acquire + release alone (flock + holder note)", f"{statistics.median(times) * 1000:.2f} ms", "")


def bench_vacuum(folder: Path) -> None:
    print("5. vacuum after deleting 90 %", flush=True)
    with WorkspaceStore(folder / "vacuum") as store:
        runs = []
        for r in range(10):
            run_id = store.begin_run(f"run-{r}")
            pipeline_id = store.begin_pipeline(run_id, "p", None, [], "vacuum")
            x = np.random.default_rng(r).normal(size=1000)
            with store.batch():
                for k in range(150):
                    store.save_prediction(pipeline_id, val_score=float(k), y_true=x, y_pred=x + k)
            runs.append(run_id)
        store.release()  # written in an earlier session, as predictions are when a lab cleans up
        for run_id in runs[:-1]:
            store.delete_run(run_id)
        store.release()
        t = time.perf_counter()
        result = store.vacuum()
        took = time.perf_counter() - t
    row("vacuum after deleting 90 % of the predictions: space given back",
        f"{100 * (1 - result.bytes_after / result.bytes_before):.0f} % ({result.bytes_before / 1e6:.1f} MB -> "
        f"{result.bytes_after / 1e6:.2f} MB, {took:.2f} s)", ">= 80 %")


# -- what one durable single call costs DuckDB ---------------------------------------------------
PRED_COLUMNS = ("prediction_id", "pipeline_id", "chain_id", "dataset_name", "model_name", "model_class", "fold_id",
                "partition", "val_score", "test_score", "train_score", "metric", "task_type", "n_samples",
                "n_features", "scores", "best_params", "preprocessings", "branch_id", "branch_name",
                "refit_context", "created_at", "task_run_id")
ARRAY_COLUMNS = ("prediction_id", "y_true", "y_pred", "y_proba", "sample_indices", "weights")


def statement_costs(folder: Path, n: int = 600) -> str:
    """The same durable one-call transaction written straight into the spec's two tables
    (29 columns), and as one narrow BLOB row of a journal table, timed step by step (no
    profiler), in alternating rounds so that the machine's load falls on both alike."""
    path = folder / "statements.duckdb"
    con = duckdb.connect(str(path))
    con.execute(f"CREATE TABLE predictions ({', '.join(c + ' VARCHAR' for c in PRED_COLUMNS)})")
    con.execute(f"CREATE TABLE prediction_arrays ({', '.join(c + ' BLOB' for c in ARRAY_COLUMNS)})")
    con.execute("CREATE TABLE journal (payload BLOB NOT NULL)")
    preds = con.appender("predictions")
    blobs = con.appender("prediction_arrays")
    blob = np.linspace(0.0, 1.0, 100).tobytes()

    def values(pid: str) -> list:
        return [pid, "p", None, "bench", "", "", "", "val", "0.5", None, None, "rmse", "regression",
                "100", None, None, None, "", None, None, None, str(datetime.datetime.now()), None]

    paths = {
        "wide rows": ["BEGIN TRANSACTION", "append + flush predictions (23 columns)",
                      "append + flush prediction_arrays (6 columns)", "COMMIT (WAL + fsync)"],
        "journal table": ["BEGIN TRANSACTION", "encode + INSERT journal (1 column)", "COMMIT (WAL + fsync)"],
        "journal file": ["encode", "append + fsync"],
    }
    journal_file = open(folder / "statements.journal", "ab")
    times = {kind: {step: [] for step in steps} for kind, steps in paths.items()}

    def timed(kind: str, actions: list) -> None:
        for step, action in zip(paths[kind], actions):
            t = time.perf_counter()
            action()
            times[kind][step].append(time.perf_counter() - t)

    for _ in range(8):
        for _ in range(n // 8):
            pid = str(uuid.uuid4())
            row_values = values(pid)
            timed("wide rows", [
                lambda: con.execute("BEGIN TRANSACTION"),
                lambda: (preds.append_row(*row_values), preds.flush()),
                lambda: (blobs.append_row(pid, blob, blob, None, None, None), blobs.flush()),
                lambda: con.execute("COMMIT")])
        for _ in range(n // 8):
            ops = [(0, "predictions", PRED_COLUMNS, values(str(uuid.uuid4()))),
                   (0, "prediction_arrays", ARRAY_COLUMNS, ["x", blob, blob, None, None, None])]
            timed("journal table", [
                lambda: con.execute("BEGIN TRANSACTION"),
                lambda: con.execute("INSERT INTO journal VALUES (?)", [pickle.dumps(ops, protocol=5)]),
                lambda: con.execute("COMMIT")])
        for _ in range(n // 8):
            ops = [(0, "predictions", PRED_COLUMNS, values(str(uuid.uuid4()))),
                   (0, "prediction_arrays", ARRAY_COLUMNS, ["x", blob, blob, None, None, None])]
            encoded: list = []
            timed("journal file", [
                lambda: encoded.append(pickle.dumps(ops, protocol=5)),
                lambda: (journal_file.write(len(encoded[0]).to_bytes(4, "little") + encoded[0]), journal_file.flush(),
                         os.fsync(journal_file.fileno()))])
    journal_file.close()
    con.close()
    lines = [f"One durable single-call transaction, step by step (median of {n}, alternating rounds):", "",
             "| path | step | us |", "|---|---|---|"]
    for kind, steps in times.items():
        meds = {k: statistics.median(v) for k, v in steps.items()}
        lines += [f"| {kind} | {k} | {v * 1e6:.0f} |" for k, v in meds.items()]
        total = sum(meds.values())
        lines.append(f"| {kind} | **total** | **{total * 1e6:.0f}** (at most {1 / total:.0f} calls/s) |")
    return "\n".join(lines)


def profile_single(folder: Path, n: int = 2_000) -> str:
    store = WorkspaceStore(folder / "profile")
    pipeline_id = new_pipeline(store, "profile")
    single_calls(store, pipeline_id, 200)
    prof = cProfile.Profile()
    a = arrays()
    prof.enable()
    t = time.perf_counter()
    for i in range(n):
        store.save_prediction(pipeline_id, val_score=float(i % 97), **a)
    store.release()
    wall = time.perf_counter() - t
    prof.disable()
    store.close()
    stats = pstats.Stats(prof)
    top = []
    for (filename, line, name), (cc, nc, tt, ct, callers) in stats.stats.items():
        where = f"C: {name}" if filename == "~" else f"{Path(filename).parent.name}/{Path(filename).name}:{name}"
        top.append((tt, where))
    lines = [f"cProfile of {n:,} single save_prediction calls (100-float arrays): {wall / n * 1e6:.0f} us/call "
             "under the profiler (DuckDB's C++ time counts as the own time of the method that calls it).", "",
             "| function (own time) | us per call |", "|---|---|"]
    for tt, where in sorted(top, reverse=True)[:12]:
        lines.append(f"| {where} | {tt / n * 1e6:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top-rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspaces")
    args = parser.parse_args()
    import storage

    folder = Path(tempfile.mkdtemp(prefix="nirsflow-store-bench-"))
    load = os.getloadavg()
    print(f"workspaces in {folder}; storage from {Path(storage.__file__).parent}; {os.cpu_count()} cores, "
          f"load average {load[0]:.2f}; duckdb {duckdb.__version__}, python {sys.version.split()[0]}", flush=True)
    started = time.perf_counter()
    bench_single_and_batch(folder)
    bench_interleaving(folder)
    bench_top_and_open(folder, args.top_rows)
    bench_vacuum(folder)
    profile = profile_single(folder)
    statements = statement_costs(folder)
    load_after = os.getloadavg()
    print()
    print(f"## Store benchmark ({Path(storage.__file__).parent.parent.name}; {os.cpu_count()} cores, load average "
          f"{load[0]:.2f} before / {load_after[0]:.2f} after, {time.perf_counter() - started:.0f} s)")
    print()
    print("| measure | measured | target |")
    print("|---|---|---|")
    for what, measured, target in ROWS:
        print(f"| {what} | {measured} | {target} |")
    print()
    print(statements)
    print()
    print(profile)
    if not args.keep:
        import shutil
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
