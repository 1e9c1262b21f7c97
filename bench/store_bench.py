"""Workspace store benchmark (issue 2). Run by hand: python bench/store_bench.py [--full]

Prints a markdown table of what is measured, with the issue's target beside it:

1. ``save_prediction`` with 100-float arrays (y_true, y_pred), one call at a time from
   one process (each an append under the journal's lock; the background settler moves
   them into their tables as the journal grows): calls/s over the first
   1,000 rows, and over 1,000 calls made around the 10,000th row (and, with ``--full``,
   the 100,000th); the table is filled up to those points with ``batch()`` (the rows are
   the same, only faster to make).
2. The same call inside one ``batch()``: predictions/s.
3. 4 processes interleaving single calls: calls/s of each and the longest wait of a call
   (each process's first call included: it looks its pipeline up in the tables).
4. ``top_predictions`` over 1,000,000 predictions, warm (connection open) and cold.
5. The open/lock/close cost on its own (a read after the idle window closed the connection).

Then a cProfile of the single-call path: where one call's time goes.
Nothing here is collected by pytest (not under tests/, not named test_*).
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing as mp
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

from storage import WorkspaceStore
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
    """Calls/s of n single calls, the settling of their journal records into the final
    tables and the hand-over of the workspace included (``release``)."""
    a = arrays()
    t = time.perf_counter()
    for i in range(n):
        store.save_prediction(pipeline_id, val_score=float(i % 97), **a)
    store.release()
    return n / (time.perf_counter() - t)


def fill(store: WorkspaceStore, pipeline_id: str, n: int, with_arrays: bool = True, chunk: int = 20_000) -> None:
    a = arrays() if with_arrays else {}
    rng = np.random.default_rng(0)
    scores = rng.random(n)
    for start in range(0, n, chunk):
        with store.batch():
            for i in range(start, min(start + chunk, n)):
                store.save_prediction(pipeline_id, val_score=float(scores[i]), **a)


def count(store: WorkspaceStore) -> int:
    return int(store.sql("SELECT count(*) AS n FROM predictions")["n"][0])


# -- 1 and 2 -------------------------------------------------------------------------------
def bench_single_and_batch(folder: Path, full: bool) -> None:
    print("1. single calls from one process holding the workspace", flush=True)
    store = WorkspaceStore(folder / "single")
    pipeline_id = new_pipeline(store, "single")
    single_calls(store, pipeline_id, 50)  # first-call costs (imports, appenders) out of the way
    rates = {1_000: single_calls(store, pipeline_id, 1_000)}
    points = [10_000, 100_000] if full else [10_000]
    for point in points:
        fill(store, pipeline_id, point - 500 - count(store))
        rates[point] = single_calls(store, pipeline_id, 1_000)
    row("save_prediction, single calls, rows 0-1,000 (settling and release included)",
        f"{rates[1_000]:.0f} calls/s", ">= 400 calls/s")
    for point in points:
        row(f"save_prediction, single calls, around row {point:,}", f"{rates[point]:.0f} calls/s",
            ">= 400 calls/s, flat")
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
    row(f"save_prediction inside one batch() ({n:,} rows, commit included; median of 3, first)",
        f"{statistics.median(rates):,.0f} predictions/s ({rates[0]:,.0f})", ">= 20,000/s")
    store.close()


# -- 3 ----------------------------------------------------------------------------------------
def _interleaver(workspace: str, pipeline_id: str, seconds: float, start_at: float, out) -> None:
    store = WorkspaceStore(workspace, lock_timeout=120, idle=INTERLEAVE_IDLE)
    store.release()
    a = arrays()
    while time.time() < start_at:
        time.sleep(0.001)
    waits = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        store.save_prediction(pipeline_id, val_score=0.5, **a)
        waits.append(time.perf_counter() - t)
    store.close()
    out.put((os.getpid(), len(waits), max(waits), float(np.percentile(waits, 99)), statistics.median(waits)))


# The bound is "one idle window + one call"; the window does not change how the
# processes take turns (appends take the journal's lock for one call each; a holder of
# the workspace hands it over as soon as it sees a waiter), so it is set to the 50 ms the
# bound was written for rather than the 1 s default, which would make the bound
# meaningless. It is also the quiet time after which a process's settler settles.
INTERLEAVE_IDLE = 0.05


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
    rates = ", ".join(f"{n / seconds:.0f}" for _, n, *_ in results)
    worst = max(r[2] for r in results)
    p99 = max(r[3] for r in results)
    med = statistics.median(r[4] for r in results)
    row("4 processes interleaving single calls: calls/s of each", rates,
        "each makes progress")
    row("... longest wait of one call (p99, median)", f"{worst * 1000:.0f} ms ({p99 * 1000:.0f} ms, "
        f"{med * 1000:.0f} ms)", f"<= one idle window ({INTERLEAVE_IDLE * 1000:.0f} ms) + one call")


# -- 4 and 5 ---------------------------------------------------------------------------------
def bench_top_and_open(folder: Path, n: int) -> None:
    print(f"4. top_predictions over {n:,} predictions (building them with batch())", flush=True)
    ws = folder / "top"
    store = WorkspaceStore(ws)
    pipeline_id = new_pipeline(store, "top")
    t = time.perf_counter()
    fill(store, pipeline_id, n, with_arrays=False, chunk=100_000)
    build = time.perf_counter() - t
    print(f"  built {n:,} predictions in {build:.1f} s ({n / build:,.0f}/s, no arrays)", flush=True)
    store.release()
    idle = store._db.idle

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
    row("... cold (open + lock + query + the idle close later)", f"{cold_top * 1000:.1f} ms", "")

    print("5. open/lock/close on its own", flush=True)
    small = lambda: store.list_runs(limit=1)  # noqa: E731
    warm_small = warm(small)
    after_idle = []
    for _ in range(7):
        time.sleep(idle * 4)  # the idle window passes: the connection is closed
        assert not store._db.is_open
        t = time.perf_counter()
        small()
        after_idle.append(time.perf_counter() - t)
    store.close()
    cold_small = statistics.median(after_idle)
    row("open + lock + close: a read after the idle window, minus the same read warm",
        f"{(cold_small - warm_small) * 1000:.1f} ms (cold {cold_small * 1000:.1f} ms, warm "
        f"{warm_small * 1000:.2f} ms)", "~14 ms measured by the issue")
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
    from storage.locking import FileLock
    lock = FileLock(ws / ".nirsflow", timeout=10, workspace=ws)
    times = []
    for _ in range(50):
        t = time.perf_counter()
        lock.acquire("exclusive")
        lock.release()
        times.append(time.perf_counter() - t)
    row("workspace lock acquire + release alone (flock + holder note)", f"{statistics.median(times) * 1000:.2f} ms", "")


# -- where one call's time goes ----------------------------------------------------------------
# cProfile cannot see inside DuckDB: the C++ time of an appender flush or a COMMIT is
# counted as the own time of the Python function that called it.
_DUCKDB_INSIDE = {
    "_append_rows": "DuckDB: the settle's appenders",
    "_commit": "DuckDB: the settle's COMMIT (WAL write + fsync)",
    "_take_journal": "DuckDB: the settle's mark (read, update)",
    "_disconnect": "DuckDB: CHECKPOINT before the file is let go",
    "_attach": "DuckDB: ATTACH",
    "_detach": "DuckDB: DETACH",
    "_call": "the call's bookkeeping (a journal write runs no DuckDB)",
    "append": "the journal record: pwrite (the fsync is listed on its own)",
    "_buffer_prediction": "a cached dict lookup (the pipeline checked once per lock hold)",
}


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
        top.append((tt, where, _DUCKDB_INSIDE.get(name, "") if "/storage/" in filename else ""))
    duck = sum(tt for tt, where, note in top if note.startswith("DuckDB"))
    lines = [f"cProfile of {n:,} single save_prediction calls (100-float arrays): {wall / n * 1e6:.0f} us/call "
             f"under the profiler, of which {duck / n * 1e6:.0f} us in the functions that call into "
             f"DuckDB and {(wall - duck) / n * 1e6:.0f} us everything else (Python, checks, encoding, "
             f"profiler overhead).", "",
             "| function (own time, DuckDB's C++ included where noted) | us per call | what it is |",
             "|---|---|---|"]
    for tt, where, note in sorted(top, reverse=True)[:12]:
        lines.append(f"| {where} | {tt / n * 1e6:.1f} | {note} |")
    return "\n".join(lines)


def statement_costs(folder: Path, n: int = 600) -> str:
    """Why single calls go through the journal file: the same durable one-call
    transaction written straight into the spec's two tables, as one row of a journal
    table (schema 4), and as one record of the journal file (now), timed step by step
    (no profiler), in alternating rounds so that the machine's load falls on all alike;
    then what settling the file costs per record."""
    import datetime
    import uuid

    from storage import arrays as A
    from storage import journal
    from storage.journal_file import JournalFile
    from storage.predictions import _ARRAY_COLUMNS, _PRED_COLUMNS

    store = WorkspaceStore(folder / "statements")
    pipeline_id = new_pipeline(store, "statements")
    store.close()
    con = duckdb.connect(str(folder / "statements" / "store.duckdb"))
    preds = con.appender("predictions", columns=list(_PRED_COLUMNS))
    blobs = con.appender("prediction_arrays", columns=list(_ARRAY_COLUMNS))
    blob = A.encode("y_true", np.linspace(0.0, 1.0, 100))
    journal_file = JournalFile(folder / "statements" / "bench.journal")

    def values(pid: str) -> list:
        return [pid, pipeline_id, None, "bench", "", "", "", "val", 0.5, None, None, "rmse", "regression",
                100, None, None, None, "", None, None, None, datetime.datetime.now(), None]

    def ops(pid: str) -> list:
        return [("insert", "predictions", _PRED_COLUMNS, values(pid)),
                ("insert", "prediction_arrays", _ARRAY_COLUMNS, [pid, blob, blob, None, None, None])]

    paths = {
        "wide": ["BEGIN TRANSACTION", "append + flush predictions (23 columns)",
                 "append + flush prediction_arrays (6 columns)", "COMMIT (WAL + fsync)"],
        "journal table (schema 4)": ["BEGIN TRANSACTION", "INSERT journal (1 column)", "COMMIT (WAL + fsync)"],
        "journal file (now)": ["encode the operations", "append the record + fsync"],
    }
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
            timed("wide", [
                lambda: con.execute("BEGIN TRANSACTION"),
                lambda: (preds.append_row(*row_values), preds.flush()),
                lambda: (blobs.append_row(pid, blob, blob, None, None, None), blobs.flush()),
                lambda: con.execute("COMMIT")])
        for _ in range(n // 8):
            payload = journal.encode(ops(str(uuid.uuid4())))
            timed("journal table (schema 4)", [
                lambda: con.execute("BEGIN TRANSACTION"),
                lambda: con.execute("INSERT INTO journal VALUES (?)", [payload]),
                lambda: con.execute("COMMIT")])
        for _ in range(n // 8):
            pid, encoded = str(uuid.uuid4()), []
            timed("journal file (now)", [
                lambda: encoded.append(journal.encode(ops(pid))),
                lambda: journal_file.append(encoded[0])])
    con.execute("DELETE FROM journal")
    t = time.perf_counter()
    _, payloads, _ = journal_file.read()
    con.execute("BEGIN TRANSACTION")
    for payload in payloads:
        for op in journal.decode(payload):
            (preds if op[1] == "predictions" else blobs).append_row(*op[3])
    preds.flush(), blobs.flush()
    con.execute("COMMIT")
    settle = (time.perf_counter() - t) / len(payloads)
    con.close()
    lines = [f"One durable single-call transaction, step by step (median of {n}, alternating rounds):", "",
             "| path | step | us |", "|---|---|---|"]
    for kind, steps in times.items():
        meds = {k: statistics.median(v) for k, v in steps.items()}
        lines += [f"| {kind} | {k} | {v * 1e6:.0f} |" for k, v in meds.items()]
        total = sum(meds.values())
        lines.append(f"| {kind} | **total** | **{total * 1e6:.0f}** (at most {1 / total:.0f} calls/s) |")
    lines += ["", f"Settling the journal file into the final tables afterwards: {settle * 1e6:.0f} us per record "
              f"({len(payloads)} records in one transaction)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="also measure around the 100,000th row")
    parser.add_argument("--top-rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspaces")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="nirsflow-store-bench-"))
    load = os.getloadavg()
    print(f"workspaces in {folder}; {os.cpu_count()} cores, load average {load[0]:.2f}; "
          f"duckdb {duckdb.__version__}, python {sys.version.split()[0]}", flush=True)
    started = time.perf_counter()
    bench_single_and_batch(folder, args.full)
    bench_interleaving(folder)
    bench_top_and_open(folder, args.top_rows)
    profile = profile_single(folder)
    statements = statement_costs(folder)
    load_after = os.getloadavg()
    print()
    print(f"## Store benchmark ({os.cpu_count()} cores, load average {load[0]:.2f} before / "
          f"{load_after[0]:.2f} after, {time.perf_counter() - started:.0f} s)")
    print()
    print("| measure | measured | target |")
    print("|---|---|---|")
    for what, measured, target in ROWS:
        print(f"| {what} | {measured} | {target} |")
    print()
    print(profile)
    print()
    print(statements)
    if not args.keep:
        import shutil
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
