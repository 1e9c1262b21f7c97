"""Writes to the journal alone (storage/connection.py): a single write whose lookups this
process remembers is appended under the journal's lock, never waiting for the workspace;
settles and appends go on side by side, and no record is applied twice or lost.

Real processes on a real workspace in a temporary folder; what a test checks is what the
store returns, and what the files hold."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from storage import FileLock, LockTimeoutError, WorkspaceStore
from tests.storage.test_journal import journal_file, journal_records, on_disk
from tests.storage.worker_pool import start_together


def _pipeline(ws, **kwargs) -> tuple[WorkspaceStore, str]:
    """A store that knows its pipeline, and holds nothing."""
    store = WorkspaceStore(ws, **kwargs)
    pipeline_id = store.begin_pipeline(store.begin_run("r"), "p", None, [], "tablet")
    store.list_pipelines()  # a read: the pipeline remembered
    store.release()
    return store, pipeline_id


@pytest.mark.timeout(90)
def test_single_calls_do_not_wait_while_another_process_holds_the_workspace(tmp_path, workers):
    """A settle, a vacuum or a reader holding the workspace lock does not hold up a process
    that only appends: its lock timeout is 1 s, the holder keeps the workspace for 20."""
    ws = tmp_path / "ws"
    store, pipeline_id = _pipeline(ws, idle=60, lock_timeout=1)
    holder = workers("lock_holder", workspace=str(ws), hold=20)
    start_together([holder])
    holder.expect("held")
    x = np.linspace(0.0, 1.0, 100)
    ids = [store.save_prediction(pipeline_id, val_score=float(k), y_true=x, y_pred=x) for k in range(20)]
    store.log_step(pipeline_id, 0, "sklearn.cross_decomposition.PLSRegression", "fit", 3)
    store.complete_pipeline(pipeline_id, 0.1, 0.2, "rmse", 10)
    assert [h["pid"] for h in FileLock(ws / ".nirsflow").holders()] == [holder.pid]  # held by it all along
    assert journal_records(ws) == 22
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
    with pytest.raises(LockTimeoutError, match=rf"workspace {ws} is locked.*pid {holder.pid}"):
        stranger.save_prediction(pipeline_id, val_score=1.0, y_true=[1.0], y_pred=[1.0])
    assert journal_records(ws) == 0  # nothing appended: the write did not happen
    holder.kill()
    stranger.save_prediction(pipeline_id, val_score=1.0, y_true=[1.0], y_pred=[1.0])
    assert stranger.query_predictions().height == 1
    stranger.close()


@pytest.mark.timeout(60)
def test_an_append_that_waits_too_long_names_the_journal_and_its_holder(tmp_path, workers):
    """A write call (here a batch) holds both locks; an append waits for the journal's,
    and past the lock timeout says whose it is and who holds it. Nothing is appended."""
    ws = tmp_path / "ws"
    store, pipeline_id = _pipeline(ws, idle=60, lock_timeout=1)
    holder = workers("holder", workspace=str(ws), pipeline_id=pipeline_id, hold=20)
    start_together([holder])
    holder.expect("held")
    with pytest.raises(LockTimeoutError, match=rf"the journal of workspace {ws} is locked.*pid {holder.pid}"):
        store.save_prediction(pipeline_id, val_score=1.0, y_true=[1.0], y_pred=[1.0])
    assert not journal_file(ws).has_records()  # (the database is the holder's: the file alone is read)
    holder.kill()
    store.save_prediction(pipeline_id, val_score=1.0, y_true=[1.0], y_pred=[1.0])
    assert store.query_predictions().height == 1
    store.close()


def test_release_and_close_settle_what_this_process_appended(tmp_path):
    ws = tmp_path / "ws"
    for let_go in ("release", "close"):
        store, pipeline_id = _pipeline(ws / let_go, idle=60)
        ids = [store.save_prediction(pipeline_id, val_score=1.0, y_true=[1.0], y_pred=[1.0]) for _ in range(3)]
        assert journal_records(ws / let_go) == 3
        getattr(store, let_go)()
        assert journal_records(ws / let_go) == 0 and on_disk(ws / let_go, "predictions") == {"predictions": 3}
        assert len(ids) == 3
        store.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_settles_racing_appends_apply_every_record_once(tmp_path, workers):
    """Three processes append call by call while this one reads without pause: every read
    settles while appends go on. Every acknowledged prediction is there exactly once."""
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
