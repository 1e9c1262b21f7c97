"""Journal-only writes (storage/connection.py, storage/settler.py): a small write whose
lookups this process remembers is appended to the journal under the journal's lock
alone, never waiting for the workspace lock; a background thread settles the journal;
a settle and appends go on at once, and nothing is applied twice or lost.

Real processes on a real workspace in a temporary folder."""

from __future__ import annotations

import time
from pathlib import Path
from collections import Counter

import duckdb
import numpy as np
import pytest

from storage import WorkspaceStore
from storage.connection import HAND_OVER_JOURNAL_BYTES
from tests.storage.test_journal import journal_records
from tests.waiting import wait_for
from tests.storage.worker_pool import start_together


def _pipeline(ws, **kwargs) -> tuple[WorkspaceStore, str]:
    store = WorkspaceStore(ws, **kwargs)
    pipeline_id = store.begin_pipeline(store.begin_run("r"), "p", None, [], "tablet")
    store.list_pipelines()  # read: everything settled, the pipeline remembered
    store.release()
    return store, pipeline_id


def _stored_ids(ws) -> list[str]:
    """Prediction ids in the tables, read with DuckDB alone (no settling)."""
    with duckdb.connect(str(ws / "store.duckdb"), read_only=True) as con:
        return [r[0] for r in con.execute("SELECT prediction_id FROM predictions").fetchall()]


@pytest.mark.timeout(90)
def test_single_calls_do_not_wait_while_another_process_holds_the_workspace(tmp_path, workers):
    """A settle, a vacuum or a reader holding the workspace lock does not hold up a
    process that only appends: only the journal's lock is taken."""
    ws = tmp_path / "ws"
    store, pipeline_id = _pipeline(ws, idle=60, lock_timeout=5)
    holder = workers("lock_holder", workspace=str(ws), hold=20)
    start_together([holder])
    holder.expect("held")
    x = np.linspace(0.0, 1.0, 100)
    t0 = time.monotonic()
    ids = [store.save_prediction(pipeline_id, val_score=float(k), y_true=x, y_pred=x) for k in range(20)]
    store.log_step(pipeline_id, 0, "sklearn.cross_decomposition.PLSRegression", "fit", 3)
    store.complete_pipeline(pipeline_id, 0.1, 0.2, "rmse", 10)
    assert time.monotonic() - t0 < 3.0  # the lock timeout is 5 s: none of them waited for it
    assert not store._db.is_open and journal_records(ws) == 22
    holder.kill()
    assert sorted(store.query_predictions(pipeline_id=pipeline_id)["prediction_id"].to_list()) == sorted(ids)
    assert store.get_pipeline(pipeline_id)["status"] == "completed"
    assert store.get_logs(pipeline_id=pipeline_id).height == 1
    store.close()


@pytest.mark.timeout(60)
def test_a_write_that_needs_the_database_waits_for_the_workspace_and_says_who_holds_it(tmp_path, workers):
    """A pipeline this process never saw must be looked up: that write takes the
    workspace lock, and times out naming the holder like any other call."""
    ws = tmp_path / "ws"
    store, pipeline_id = _pipeline(ws, idle=60, lock_timeout=1)
    store.close()
    stranger = WorkspaceStore(ws, idle=60, lock_timeout=1)  # remembers nothing
    holder = workers("lock_holder", workspace=str(ws), hold=20)
    start_together([holder])
    holder.expect("held")
    with pytest.raises(Exception, match=rf"workspace {ws} is locked.*pid {holder.pid}"):
        stranger.save_prediction(pipeline_id, val_score=1.0, y_true=[1.0], y_pred=[1.0])
    assert journal_records(ws) == 0  # nothing appended: the write did not happen
    holder.kill()
    stranger.save_prediction(pipeline_id, val_score=1.0, y_true=[1.0], y_pred=[1.0])
    assert stranger.query_predictions().height == 1
    stranger.close()


def test_the_background_settler_empties_a_long_journal_without_a_call(tmp_path):
    ws = tmp_path / "ws"
    store, pipeline_id = _pipeline(ws, idle=60)
    x = np.linspace(0.0, 1.0, 100)
    ids = []
    while (ws / "store.duckdb.journal").stat().st_size <= HAND_OVER_JOURNAL_BYTES:
        ids.append(store.save_prediction(pipeline_id, val_score=0.5, y_true=x, y_pred=x))
    # the idle window is a minute: only the journal's length makes it settle now, and it
    # lets the workspace go again
    wait_for(lambda: journal_records(ws) == 0 and not store._db.is_open, 10, "the long journal settled",
             interval=0.02)
    assert sorted(_stored_ids(ws)) == sorted(ids)
    store.close()


def _three_appends(ws, idle: float) -> tuple[WorkspaceStore, list[str]]:
    store, pipeline_id = _pipeline(ws, idle=idle)
    ids = [store.save_prediction(pipeline_id, val_score=1.0, y_true=[1.0], y_pred=[1.0]) for _ in range(3)]
    assert journal_records(ws) == 3
    return store, ids


def test_what_a_quiet_process_appended_is_settled_after_its_idle_window(tmp_path):
    ws = tmp_path / "ws"
    store, ids = _three_appends(ws, idle=0.2)
    wait_for(lambda: journal_records(ws) == 0 and not store._db.is_open, 10, "the quiet journal settled",
             interval=0.02)
    assert sorted(_stored_ids(ws)) == sorted(ids)
    store.close()


def test_close_settles_what_this_process_appended(tmp_path):
    ws = tmp_path / "ws"
    store, ids = _three_appends(ws, idle=60)
    store.close()
    assert journal_records(ws) == 0 and sorted(_stored_ids(ws)) == sorted(ids)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_settles_racing_appends_apply_every_record_once(tmp_path, workers):
    """Three processes append call by call while this one reads without pause: every
    read settles while appends go on, and each settle replaces the journal with the
    records appended meanwhile. Every acknowledged prediction is there exactly once."""
    ws = tmp_path / "ws"
    store, pipeline_id = _pipeline(ws, idle=60)
    appenders = [workers("fair", workspace=str(ws), pipeline_id=pipeline_id, seconds=4) for _ in range(3)]
    start_together(appenders)
    reads = 0
    while any(w.proc.poll() is None for w in appenders):
        store.query_predictions(pipeline_id=pipeline_id).height
        reads += 1
    acked = [pid for w in appenders for pid in w.result()["ids"]]
    counts = Counter(store.query_predictions(pipeline_id=pipeline_id)["prediction_id"].to_list())
    assert reads > 10 and len(acked) > 100
    assert set(counts) == set(acked)
    assert max(counts.values()) == 1, [p for p, n in counts.items() if n > 1][:5]
    store.close()


def test_an_append_is_fsynced_after_the_journal_lock_is_let_go_and_before_the_call_returns(tmp_path, monkeypatch):
    """Appenders taking turns do not wait for each other's fsync (one flushes every
    record written before it), but nobody is told a write is done before its record is
    on disk. Watched, not replaced: the real fsync and the real lock run."""
    import os

    ws = tmp_path / "ws"
    store, pipeline_id = _pipeline(ws, idle=60)
    journal = (ws / "store.duckdb.journal").resolve()
    events = []
    real_fsync, real_release = os.fsync, store._db.journal_lock.release

    def fsync(fd):
        real_fsync(fd)
        if Path(os.readlink(f"/proc/self/fd/{fd}")) == journal:
            events.append("journal fsynced")

    def release():
        real_release()
        events.append("journal lock let go")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(store._db.journal_lock, "release", release)
    store.save_prediction(pipeline_id, val_score=1.0, y_true=[1.0], y_pred=[1.0])
    events.append("returned")
    assert events == ["journal lock let go", "journal fsynced", "returned"]
    monkeypatch.undo()
    store.close()


@pytest.mark.timeout(60)
def test_an_append_that_waits_too_long_names_the_journal_and_its_holder(tmp_path, workers):
    """A batch holds both locks; an append waits for the journal's, and past the lock
    timeout says whose it is and who holds it. Nothing is appended."""
    from storage import LockTimeoutError

    ws = tmp_path / "ws"
    store, pipeline_id = _pipeline(ws, idle=60, lock_timeout=1)
    holder = workers("holder", workspace=str(ws), pipeline_id=pipeline_id, hold=20)
    start_together([holder])
    holder.expect("held")
    with pytest.raises(LockTimeoutError, match=rf"the journal of workspace {ws} is locked.*pid {holder.pid}"):
        store.save_prediction(pipeline_id, val_score=1.0, y_true=[1.0], y_pred=[1.0])
    assert journal_records(ws) == 0
    holder.kill()
    store.save_prediction(pipeline_id, val_score=1.0, y_true=[1.0], y_pred=[1.0])
    assert store.query_predictions().height == 1
    store.close()
