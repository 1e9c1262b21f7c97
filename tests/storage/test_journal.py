"""Small write transactions (a single save_prediction, a pipeline recorded whole in a
batch) commit to the journal file and are settled into their tables before anything
reads them (storage/journal.py, storage/journal_file.py, storage/writes.py).

The tables are looked at through the store's own connection where a test must see the
journal unsettled (nothing else may open the database while the store holds it)."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest

from storage import InvalidInputError, NotFoundError, WorkspaceStore, arrays, schema, writes
from storage.journal_file import JournalFile
from tests.storage.store_worker import fitted, probe_input, save_fitted_chain, save_seeded_prediction, score_of
from tests.storage.test_processes import assert_prediction_content, read_acks
from tests.waiting import wait_for


def journal_records(ws: Path) -> int:
    """The records in a workspace's journal file not yet settled (or, after a crash
    between a settle and its reset, settled but still there)."""
    return len(JournalFile(Path(ws) / "store.duckdb.journal").read()[1])


def _table_counts(store: WorkspaceStore, *tables: str) -> list[int]:
    """Rows of `tables` as the database holds them now, without the settling a store
    call would do first: through the store's attachment, or the file if it has none."""
    con = store._db._con
    if con is None:
        with duckdb.connect(str(store.db_path), read_only=True) as con:
            return [con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in tables]
    return [con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in tables]


def _raw_counts(store: WorkspaceStore) -> tuple[int, int, int]:
    """(journal records, predictions rows, prediction_arrays rows) as they are now."""
    return (journal_records(store.path), *_table_counts(store, "predictions", "prediction_arrays"))


def _killed_after_writing(writer, ws, table: str) -> dict[str, int]:
    """Let a worker write, kill it (-9) while it holds the workspace with everything still
    in the journal, and count the journal's records and the rows of `table`."""
    writer.expect("ready")
    writer.go()
    writer.expect("written")
    writer.kill()
    with duckdb.connect(str(ws / "store.duckdb"), read_only=True) as con:
        rows = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
    return {"journal": journal_records(ws), table: rows}


@pytest.fixture
def kept(tmp_path):
    """A store whose connection stays open (no other process waits, a long idle window)."""
    with WorkspaceStore(tmp_path / "ws", idle=60) as store:
        run_id = store.begin_run("journal")
        pipeline_id = store.begin_pipeline(run_id, "p", None, [], "tablet")
        store.list_pipelines()  # a read: the pipeline's journal row settled
        yield store, pipeline_id


def test_single_calls_land_in_the_journal_and_reads_see_them_settled(kept):
    store, pipeline_id = kept
    labels = np.array(["coffee", "tea", "coffee"], dtype=object)
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], dtype=np.float32)
    ids = [store.save_prediction(pipeline_id, val_score=0.5, task_type="classification", metric="accuracy",
                                 y_true=labels, y_pred=labels[::-1], y_proba=proba,
                                 sample_indices=np.arange(3, dtype=np.int32), weights=None)
           for _ in range(3)]
    assert _raw_counts(store) == (3, 0, 0)  # committed, not yet in the final tables

    frame = store.query_predictions(pipeline_id=pipeline_id)
    assert sorted(frame["prediction_id"].to_list()) == sorted(ids)
    assert _raw_counts(store) == (0, 3, 3)
    row = store.get_prediction(ids[1], load_arrays=True)
    assert row["val_score"] == 0.5 and row["dataset_name"] == "tablet" and row["test_score"] is None
    assert row["y_proba"].shape == (3, 2) and row["y_proba"].dtype == np.float32
    assert row["y_true"].tolist() == ["coffee", "tea", "coffee"]
    assert row["sample_indices"].dtype == np.int32 and row["weights"] is None


def test_settling_keeps_the_order_of_the_calls(kept):
    store, pipeline_id = kept
    x = np.linspace(0.0, 1.0, 10)
    ids = [store.save_prediction(pipeline_id, val_score=1.0, y_true=x, y_pred=x) for _ in range(6)]
    assert _raw_counts(store)[0] == 6
    # equal scores rank in the order they were saved
    assert store.top_predictions(6, metric="rmse")["prediction_id"].to_list() == ids


def test_release_settles_the_journal_so_a_plain_reader_finds_every_row(kept, tmp_path):
    store, pipeline_id = kept
    x = np.linspace(0.0, 1.0, 100)
    for k in range(20):
        store.save_prediction(pipeline_id, val_score=float(k), y_true=x, y_pred=x)
    assert journal_records(store.path) == 20
    store.release()
    with duckdb.connect(str(store.db_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM predictions").fetchall()[0][0] == 20
    assert journal_records(store.path) == 0


def test_a_given_prediction_id_is_refused_twice_while_the_first_is_still_in_the_journal(kept):
    store, pipeline_id = kept
    store.save_prediction(pipeline_id, val_score=1.0, prediction_id="pred-1", y_true=[1.0], y_pred=[1.0])
    assert _raw_counts(store)[0] == 1
    with pytest.raises(InvalidInputError, match="pred-1"):
        store.save_prediction(pipeline_id, val_score=2.0, prediction_id="pred-1", y_true=[1.0], y_pred=[1.0])
    assert store.query_predictions(pipeline_id=pipeline_id).height == 1


def test_a_failed_call_after_journal_writes_keeps_them(kept):
    store, pipeline_id = kept
    first = store.save_prediction(pipeline_id, val_score=1.0, y_true=[1.0], y_pred=[1.0])
    with pytest.raises(NotFoundError):  # it settled the journal first, then rolled back
        store.complete_pipeline("no-such-pipeline", 1.0, 1.0, "rmse", 1)
    assert _raw_counts(store) == (1, 0, 0)
    assert store.get_prediction(first)["val_score"] == 1.0
    assert _raw_counts(store) == (0, 1, 1)


def test_a_settle_applies_the_journal_from_memory_only_while_it_holds_this_process_rows_alone(kept):
    """While it holds the lock, the store keeps the operations of the journal records it
    wrote and a settle applies them without reading the journal back. A record it did
    not write (as a writer killed before this process took the lock leaves one) must make
    it read the journal instead: applying only what it kept would drop that record."""
    from storage import journal

    store, pipeline_id = kept
    mine = [store.save_prediction(pipeline_id, val_score=float(k), y_true=[1.0], y_pred=[2.0]) for k in range(3)]
    assert len(store._db.journal_ops) == 3  # kept: a settle now reads nothing back
    ops = journal.decode(store._journal.read()[1][0])
    foreign = "foreign-prediction"
    ops = [(kind, table, columns, [foreign, *values[1:]]) for kind, table, columns, values in ops]
    store._journal.append(journal.encode(ops))  # a record this store object did not journal
    assert _raw_counts(store)[0] == 4
    frame = store.query_predictions(pipeline_id=pipeline_id)
    assert sorted(frame["prediction_id"].to_list()) == sorted(mine + [foreign])
    assert _raw_counts(store) == (0, 4, 4) and store._db.journal_ops == []
    later = store.save_prediction(pipeline_id, val_score=9.0, y_true=[1.0], y_pred=[2.0])
    assert store.get_prediction(later)["val_score"] == 9.0 and _raw_counts(store) == (0, 5, 5)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_writer_killed_with_unsettled_rows_loses_none_and_the_next_reader_settles_them(tmp_path, workers):
    ws = tmp_path / "ws"
    with WorkspaceStore(ws) as store:
        pipeline_id = store.begin_pipeline(store.begin_run("r"), "p", None, [], "tablet")
    acks = tmp_path / "acks.txt"
    counts = _killed_after_writing(workers("journaler", workspace=str(ws), acks=str(acks), pipeline_id=pipeline_id,
                                           first_seed=100, n=25, idle=600), ws, "predictions")
    assert counts == {"journal": 25, "predictions": 0}

    t0 = time.monotonic()
    reader = WorkspaceStore(ws)
    found = {r[0]: r[1:] for r in reader.sql(
        "SELECT p.prediction_id, p.val_score, a.y_true, a.y_pred, a.sample_indices "
        "FROM predictions p JOIN prediction_arrays a USING (prediction_id)").rows()}
    acked = [(line[1], int(line[2])) for line in read_acks(acks) if line[0] == "pred"]
    assert len(acked) == 25
    for pid, seed in acked:
        assert_prediction_content(found.get(pid), seed, pid)
    reader.close()
    assert journal_records(ws) == 0
    assert time.monotonic() - t0 < 10


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_appends_made_while_this_process_reads_are_settled_by_the_next_reader(kept, workers):
    """Single calls append to the journal without the workspace lock: this process holds
    it for reading (its idle window) all along. A reader in another process waits for
    it, gets it handed over, and settles what it finds in the journal."""
    store, pipeline_id = kept
    store.release()
    store.list_runs()  # a read: the workspace lock held shared, for the idle window
    assert store._db._mode == "shared"
    ids = [store.save_prediction(pipeline_id, val_score=float(k), y_true=[1.0], y_pred=[2.0]) for k in range(3)]
    assert store._db._mode == "shared" and _raw_counts(store) == (3, 0, 0)
    reader = workers("waiter", workspace=str(store.path))
    reader.expect("ready")
    reader.go()
    assert reader.result(timeout=60)["runs"] == 1  # our idle connection was handed over at once
    assert not store._db.is_open
    assert journal_records(store.path) == 0
    with duckdb.connect(str(store.db_path), read_only=True) as con:
        settled = {r[0] for r in con.execute("SELECT prediction_id FROM predictions").fetchall()}
    assert settled == set(ids)


def _record_pipeline(store, run_id: str, seed: int) -> tuple[str, str]:
    """A pipeline whole in one batch: its row, two real fitted artifacts, a chain, a
    prediction, its completion."""
    with store.batch():
        pipeline_id = store.begin_pipeline(run_id, f"p{seed}", {"seed": seed}, [], "tablet")
        chain_id, _ = save_fitted_chain(store, pipeline_id, seed)
        save_seeded_prediction(store, pipeline_id, seed, chain_id)
        store.complete_pipeline(pipeline_id, best_val=score_of(seed), metric="rmse", duration_ms=seed)
    return pipeline_id, chain_id


def test_a_pipeline_recorded_in_a_batch_is_one_journal_row_and_lands_whole(kept):
    store, _ = kept
    run_id = store.begin_run("grid")
    recorded = [_record_pipeline(store, run_id, seed) for seed in (1, 2, 3)]
    assert journal_records(store.path) == 3
    assert _table_counts(store, "chains", "chain_artifacts", "artifacts") == [0, 0, 0]

    pipelines = store.list_pipelines(run_id=run_id)  # a read: settled first
    assert _raw_counts(store)[0] == 0
    assert pipelines.height == 3 and set(pipelines["status"]) == {"completed"}
    X = probe_input()
    for (pipeline_id, chain_id), seed in zip(recorded, (1, 2, 3)):
        row = store.get_pipeline(pipeline_id)
        assert (row["best_val"], row["duration_ms"], row["expanded_config"]) == (score_of(seed), seed, {"seed": seed})
        scaler, model = fitted(seed)
        np.testing.assert_allclose(store.replay_chain(chain_id, X), model.predict(scaler.transform(X)))
        assert store.query_predictions(chain_id=chain_id)["val_score"].to_list() == [score_of(seed)]
    assert store.list_artifacts()["ref_count"].to_list() == [1] * 6


def test_a_completion_journaled_after_its_pipeline_settled_updates_the_row(kept):
    store, _ = kept
    run_id = store.begin_run("r")
    ids = [store.begin_pipeline(run_id, f"p{k}", None, [], "tablet") for k in range(3)]
    store.list_pipelines()  # the pipelines settled
    for k, pipeline_id in enumerate(ids[:2]):
        store.complete_pipeline(pipeline_id, best_val=float(k), best_test=None, metric="r2", duration_ms=k)
    store.complete_pipeline(ids[0], best_val=9.0, metric="r2")  # the later completion wins
    assert _raw_counts(store)[0] == 3
    found = {r["pipeline_id"]: r for r in store.list_pipelines(run_id=run_id).iter_rows(named=True)}
    assert (found[ids[0]]["status"], found[ids[0]]["best_val"], found[ids[0]]["duration_ms"]) == ("completed", 9.0, None)
    assert (found[ids[1]]["status"], found[ids[1]]["best_val"], found[ids[1]]["metric"]) == ("completed", 1.0, "r2")
    assert found[ids[2]]["status"] == "running" and found[ids[2]]["completed_at"] is None


def test_a_large_batch_goes_straight_to_its_tables(kept):
    store, pipeline_id = kept
    with store.batch():
        for k in range(writes.JOURNAL_MAX_ROWS):  # two operations each
            store.save_prediction(pipeline_id, val_score=float(k), y_true=[1.0], y_pred=[2.0])
    assert _raw_counts(store) == (0, writes.JOURNAL_MAX_ROWS, writes.JOURNAL_MAX_ROWS)


def test_a_row_still_in_the_journal_is_found_after_a_rollback_forgot_it(kept):
    """A failed batch drops what the connection remembered; the pipelines it knew are still
    in the journal, not yet in their table: a write naming one settles and finds it."""
    store, _ = kept
    run_id = store.begin_run("r")
    pipeline_id = store.begin_pipeline(run_id, "p", None, [], "tablet")
    assert _raw_counts(store)[0] == 1
    with pytest.raises(RuntimeError, match="boom"):
        with store.batch():
            store.save_prediction(pipeline_id, val_score=1.0, y_true=[1.0], y_pred=[1.0])
            raise RuntimeError("boom")
    assert ("pipelines", pipeline_id) not in store._db.conn_cache.get("rows", {})
    prediction_id = store.save_prediction(pipeline_id, val_score=2.0, y_true=[1.0], y_pred=[1.0])
    assert store.get_prediction(prediction_id)["dataset_name"] == "tablet"
    assert store.query_predictions(pipeline_id=pipeline_id)["val_score"].to_list() == [2.0]
    with pytest.raises(NotFoundError, match="no-such-pipeline"):  # a real miss is still one
        store.save_prediction("no-such-pipeline", val_score=2.0, y_true=[1.0], y_pred=[1.0])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_pipelines_a_killed_writer_left_in_the_journal_land_whole(tmp_path, workers):
    ws = tmp_path / "ws"
    WorkspaceStore(ws).close()
    acks = tmp_path / "acks.txt"
    counts = _killed_after_writing(workers("pipeline_journaler", workspace=str(ws), acks=str(acks), first_seed=11,
                                           n=8, idle=600), ws, "pipelines")
    assert counts == {"journal": 8, "pipelines": 0}

    acked = [line[1:] for line in read_acks(acks) if line[0] == "pipeline"]
    assert len(acked) == 8
    X = probe_input()
    with WorkspaceStore(ws) as reader:
        pipelines = {r["pipeline_id"]: r for r in reader.list_pipelines().iter_rows(named=True)}
        assert len(pipelines) == 8
        for pipeline_id, chain_id, prediction_id, seed in acked:
            seed = int(seed)
            assert pipelines[pipeline_id]["status"] == "completed"
            assert pipelines[pipeline_id]["best_val"] == score_of(seed)
            scaler, model = fitted(seed)
            np.testing.assert_allclose(reader.replay_chain(chain_id, X), model.predict(scaler.transform(X)))
            found = reader.sql("SELECT p.prediction_id, p.val_score, a.y_true, a.y_pred, a.sample_indices "
                               "FROM predictions p JOIN prediction_arrays a USING (prediction_id) "
                               "WHERE p.prediction_id = ?", [prediction_id]).rows()
            assert_prediction_content(found[0][1:] if found else None, seed, prediction_id)
        assert reader.gc_artifacts(grace=0) == 0  # every artifact is referenced by its chain


def test_rows_another_process_deleted_are_not_remembered_across_attachments(tmp_path):
    """A store remembers the pipelines it has looked up across attachments (it saves a
    lookup on every turn), unless some process deleted rows since: then a prediction for
    a deleted pipeline is refused, not journaled as an orphan. Two store objects on one
    workspace lock each other out like two processes."""
    ws = tmp_path / "ws"
    mine, other = WorkspaceStore(ws), WorkspaceStore(ws)
    kept = mine.begin_pipeline(mine.begin_run("kept"), "p", None, [], "tablet")
    doomed_run = mine.begin_run("doomed")
    doomed = mine.begin_pipeline(doomed_run, "p", None, [], "tablet")
    for pipeline_id in (kept, doomed):
        mine.save_prediction(pipeline_id, val_score=1.0, y_true=[1.0], y_pred=[1.0])
    mine.release()
    other.save_prediction(kept, val_score=2.0, y_true=[1.0], y_pred=[1.0])  # no deletion yet
    other.release()
    assert mine._db._read_epoch() == mine._db._rows_epoch  # nothing deleted: still remembered
    other.delete_run(doomed_run)
    other.release()
    with pytest.raises(NotFoundError, match=doomed):
        mine.save_prediction(doomed, val_score=1.0, y_true=[1.0], y_pred=[1.0])
    mine.save_prediction(kept, val_score=3.0, y_true=[1.0], y_pred=[1.0])
    assert sorted(mine.query_predictions()["val_score"].to_list()) == [1.0, 2.0, 3.0]
    mine.close(), other.close()


def test_single_calls_take_neither_the_workspace_nor_the_database_and_lose_nothing(tmp_path):
    """A process taking its turn for one small write takes the journal's lock and
    appends: it attaches the database only to look up what it does not remember, and
    leaves no WAL for the next process to replay."""
    ws = tmp_path / "ws"
    store = WorkspaceStore(ws, idle=60)
    pipeline_id = store.begin_pipeline(store.begin_run("r"), "p", None, [], "tablet")
    store.release()  # the run and pipeline: settled, checkpointed
    wal = ws / "store.duckdb.wal"
    assert not wal.exists() or wal.stat().st_size == 0
    ids = [store.save_prediction(pipeline_id, val_score=float(k), y_true=[1.0], y_pred=[2.0]) for k in range(3)]
    assert not store._db.is_open and store._db._con is None  # neither the lock nor the file
    assert store._db.journal_lock._file is None  # the journal's lock: only during each append
    assert journal_records(ws) == 3 and (not wal.exists() or wal.stat().st_size == 0)
    with WorkspaceStore(ws) as other:  # settles the journal, checkpoints
        assert sorted(other.query_predictions()["prediction_id"].to_list()) == sorted(ids)
    assert journal_records(ws) == 0 and (not wal.exists() or wal.stat().st_size == 0)
    store.close()


def test_payloads_of_the_first_journal_format_still_decode():
    from datetime import datetime

    from storage import journal

    created = datetime(2026, 11, 27, 13, 0, 0)
    row = ["pred", "pipe", None, "ds", "m", "mc", "", "val", 1.0, None, None, "rmse", "regression",
           1, None, None, None, "", None, None, None, created, None]
    old_row = list(row)
    old_row[21] = created.isoformat()
    header = json.dumps([old_row, [3, None, None, None, None]]).encode()  # no timestamp list
    payload = struct.pack("<I", len(header)) + header + b"abc"
    assert journal.decode(payload) == [
        ("insert", "predictions", journal.LEGACY_PREDICTION_COLUMNS, row),
        ("insert", "prediction_arrays", journal.LEGACY_ARRAY_COLUMNS, ["pred", b"abc", None, None, None, None])]


def test_operations_round_trip_through_a_payload():
    from datetime import datetime

    from storage import journal

    ops = [("insert", "chains", None, ["c", 1, 2.5, None, True, [1.0, 2.25], datetime(2026, 1, 2, 3, 4, 5, 6)]),
           ("insert", "prediction_arrays", ("prediction_id", "y_true"), ["p", b"\x00\x01{\"b\": 3}"]),
           ("update", "pipelines", "pipeline_id", "p1", ("status", "best_val"), ["completed", None])]
    assert journal.decode(journal.encode(ops)) == ops
    with pytest.raises(Exception, match="plain values"):  # anything else is refused, not imported
        journal.decode(journal.encode([("insert", "t", None, [Path("/tmp")])]))


def test_a_workspace_with_rows_in_the_old_prediction_journal_keeps_them(tmp_path):
    """Migration 0004 moves the prediction journal's rows into the write journal."""
    ws = tmp_path / "ws"
    with WorkspaceStore(ws) as store:
        pipeline_id = store.begin_pipeline(store.begin_run("r"), "p", None, [], "tablet")
    # back to schema 3, with one prediction left in its journal by a killed writer
    row = ["pred-old", pipeline_id, None, "tablet", "", "", "", "val", 0.25, None, None, "rmse", "regression",
           2, None, None, None, "", None, None, None, "2026-11-27T13:00:00", None]
    blobs = [arrays.encode("y_true", np.array([1.0, 2.0])), arrays.encode("y_pred", np.array([1.5, 2.5]))]
    header = json.dumps([row, [len(b) for b in blobs] + [None] * 3, [21]]).encode()
    with duckdb.connect(str(ws / "store.duckdb")) as con:
        con.execute("DROP TABLE journal")
        con.execute("CREATE TABLE prediction_journal (prediction_id VARCHAR NOT NULL, payload BLOB NOT NULL)")
        con.execute("INSERT INTO prediction_journal VALUES (?, ?)",
                    ["pred-old", struct.pack("<I", len(header)) + header + b"".join(blobs)])
        con.execute("DELETE FROM migrations WHERE name > '0004'")
        con.execute("DELETE FROM meta WHERE key = 'journal_settled'")
        con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    with WorkspaceStore(ws) as store:
        assert store.schema_version == schema.SCHEMA_VERSION
        found = store.get_prediction("pred-old", load_arrays=True)
        assert found["val_score"] == 0.25 and found["y_pred"].tolist() == [1.5, 2.5]
        assert store.sql("SELECT count(*) AS n FROM journal")["n"][0] == 0


def _turn(store, pipeline_id: str, calls: int) -> int:
    """`calls` single predictions, and the settle they asked for, if any; the journal's
    records after it."""
    for _ in range(calls):
        store.save_prediction(pipeline_id, val_score=0.5, y_true=np.zeros(3), y_pred=np.ones(3))
    wait_for(store._db._settler.quiescent, 10, "the settle asked for to end", interval=0.01)
    return journal_records(store.path)


def _calls_to_reach(store, pipeline_id: str, size: int) -> int:
    """How many single predictions (of `_turn`'s size) make the journal `size` bytes."""
    path = store.path / "store.duckdb.journal"
    before = path.stat().st_size
    _turn(store, pipeline_id, 1)
    record = path.stat().st_size - before
    store.query_predictions()  # settled again
    store.release()
    return -(-(size - path.stat().st_size) // record)


def test_rows_an_older_nirsflow_left_in_the_journal_table_settle_when_the_workspace_opens(tmp_path):
    """Schema 4 journaled into a table; a writer killed before it settled left rows
    there. Migration 0005 (the journal file) keeps the table, and the store opening the
    workspace applies its rows, in the migration's transaction."""
    from storage import journal

    ws = tmp_path / "ws"
    with WorkspaceStore(ws) as store:
        pipeline_id = store.begin_pipeline(store.begin_run("r"), "p", None, [], "tablet")
        store.save_prediction(pipeline_id, val_score=0.5, y_true=[1.0], y_pred=[2.0])
        ops = journal.decode(store._journal.read()[1][-1])  # the prediction's record
    ops = [(kind, table, columns, ["pred-v4", *values[1:]]) for kind, table, columns, values in ops]
    with duckdb.connect(str(ws / "store.duckdb")) as con:  # back to schema 4, one row in its journal
        con.execute("INSERT INTO journal VALUES (?)", [journal.encode(ops)])
        con.execute("DELETE FROM migrations WHERE name > '0005'")
        con.execute("DELETE FROM meta WHERE key = 'journal_settled'")
        con.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    with WorkspaceStore(ws) as store:
        assert store.schema_version == schema.SCHEMA_VERSION
        assert store.get_prediction("pred-v4", load_arrays=True)["y_pred"].tolist() == [2.0]
        assert store.sql("SELECT count(*) AS n FROM journal")["n"][0] == 0
        assert store.query_predictions().height == 2


def test_a_long_journal_is_settled_whoever_wrote_it(tmp_path):
    """Two writers (two stores, as two processes would be) take turns. Each leaves a
    short journal of its own; the one that finds the journal long (its records and the
    other's) has it settled, so writers taking turns do not each pay for a settle a few
    turns apart."""
    from storage.connection import HAND_OVER_JOURNAL_BYTES

    ws = tmp_path / "ws"
    with WorkspaceStore(ws, idle=60) as setup:
        run_id = setup.begin_run("turns")
        pipeline_id = setup.begin_pipeline(run_id, "p", None, [], "tablet")
        long = _calls_to_reach(setup, pipeline_id, HAND_OVER_JOURNAL_BYTES)
    first, second = WorkspaceStore(ws, idle=60), WorkspaceStore(ws, idle=60)
    few = long // 2 + 1  # each writer's share: short, both together: long
    try:
        assert _turn(first, pipeline_id, few) == few  # short: left
        assert _turn(second, pipeline_id, few) == 0  # long: settled
        assert first.query_predictions().height == 2 * few + 1
    finally:
        first.close()
        second.close()


def test_a_writer_does_not_settle_a_short_journal_because_it_wrote_much_since_its_last_settle(tmp_path):
    """Whoever settles empties the journal for everyone: a writer whose own records since
    its last settle reach the limit, while the journal holds a record or two because
    another writer's settle emptied it, asks for no settle. (Counted per writer, every
    writer of the four-process interleave settled a near-empty journal within a few turns
    of each other, each with its checkpoint: 80-100 ms waits.)"""
    from storage.connection import HAND_OVER_JOURNAL_BYTES

    ws = tmp_path / "ws"
    with WorkspaceStore(ws, idle=60) as setup:
        pipeline_id = setup.begin_pipeline(setup.begin_run("turns"), "p", None, [], "tablet")
        long = _calls_to_reach(setup, pipeline_id, HAND_OVER_JOURNAL_BYTES)
    first, second = WorkspaceStore(ws, idle=60), WorkspaceStore(ws, idle=60)
    try:
        assert _turn(first, pipeline_id, long - 1) == long - 1  # short: left
        assert _turn(second, pipeline_id, 1) == 0  # the journal reached the limit: settled
        assert _turn(first, pipeline_id, 1) == 1  # its own long-th record since it settled: left
        assert first.query_predictions().height == long + 2
    finally:
        first.close()
        second.close()


def test_a_writer_that_never_goes_idle_settles_a_journal_that_grows_past_the_bound(kept, monkeypatch):
    """No waiter, no idle moment: the journal would grow as long as the writer writes.
    Past SETTLE_JOURNAL_BYTES the next write settles it first, so the file (and what a
    settle must hold in memory) stays bounded."""
    import storage.appends as appends

    store, pipeline_id = kept
    journal = JournalFile(store.path / "store.duckdb.journal")
    monkeypatch.setattr(appends, "SETTLE_JOURNAL_BYTES", 16 * 1024)
    sizes, ids = [], []
    for k in range(60):
        ids.append(store.save_prediction(pipeline_id, val_score=float(k), y_true=np.zeros(100), y_pred=np.ones(100)))
        sizes.append(journal.size())
    record = sizes[1] - sizes[0]
    assert max(sizes) <= 16 * 1024 + record  # one write past the bound at most
    assert sum(1 for a, b in zip(sizes, sizes[1:]) if b < a) >= 3  # it was settled, again and again
    assert 0 < _table_counts(store, "predictions")[0] < 60  # settled rows landed; the last few wait
    assert store.query_predictions(pipeline_id=pipeline_id)["prediction_id"].to_list() == ids
