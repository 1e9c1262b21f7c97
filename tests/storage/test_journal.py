"""Small write transactions (a single save_prediction, a pipeline recorded whole in a
batch) commit as one record of the journal file and are settled into their tables before
anything reads them (storage/journal.py, storage/connection.py).

Seen through the store's public API, and through the files themselves (plain DuckDB, and
the journal read by its own format) once the writer has let the workspace go or was killed."""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb
import numpy as np
import pytest

from storage import InvalidInputError, NotFoundError, WorkspaceCorruptError, WorkspaceStore
from storage.connection import SETTLE_BYTES
from storage.journal import HEADER_SIZE, JournalFile, record, settled_marker
from tests.storage.store_worker import fitted, probe_input, save_fitted_chain, save_seeded_prediction, score_of
from tests.storage.test_processes import assert_prediction_content, read_acks


def on_disk(ws: Path, *tables: str) -> dict[str, int]:
    """Rows of `tables` in the database file as it is (no store, so nothing settled)."""
    with duckdb.connect(str(Path(ws) / "store.duckdb"), read_only=True) as con:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in tables}


def journal_file(ws: Path) -> JournalFile:
    return JournalFile(Path(ws) / "store.duckdb.journal")


def journal_records(ws: Path) -> int:
    """Records of the journal file not yet applied (past the settled marker), as on disk."""
    with duckdb.connect(str(Path(ws) / "store.duckdb"), read_only=True) as con:
        marker = settled_marker(con)
    return len(journal_file(ws).read(marker)[1])


def _killed_after_writing(writer) -> None:
    """Let a worker write, and kill it (-9) while it holds the workspace."""
    writer.expect("ready")
    writer.go()
    writer.expect("written", timeout=120)
    writer.kill()


@pytest.fixture
def kept(tmp_path):
    """A store that keeps the workspace between calls (no other process waits, a long idle window)."""
    with WorkspaceStore(tmp_path / "ws", idle=60) as store:
        run_id = store.begin_run("journal")
        pipeline_id = store.begin_pipeline(run_id, "p", None, [], "tablet")
        yield store, pipeline_id


def test_single_calls_are_read_back_as_they_were_saved(kept):
    store, pipeline_id = kept
    labels = np.array(["coffee", "tea", "coffee"], dtype=object)
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], dtype=np.float32)
    ids = [store.save_prediction(pipeline_id, val_score=0.5, task_type="classification", metric="accuracy",
                                 y_true=labels, y_pred=labels[::-1], y_proba=proba,
                                 sample_indices=np.arange(3, dtype=np.int32), weights=None)
           for _ in range(3)]
    assert sorted(store.query_predictions(pipeline_id=pipeline_id)["prediction_id"].to_list()) == sorted(ids)
    row = store.get_prediction(ids[1], load_arrays=True)
    assert row["val_score"] == 0.5 and row["dataset_name"] == "tablet" and row["test_score"] is None
    assert row["y_proba"].shape == (3, 2) and row["y_proba"].dtype == np.float32
    assert row["y_true"].tolist() == ["coffee", "tea", "coffee"]
    assert row["sample_indices"].dtype == np.int32 and row["weights"] is None


def test_settling_keeps_the_order_of_the_calls(kept):
    store, pipeline_id = kept
    x = np.linspace(0.0, 1.0, 10)
    ids = [store.save_prediction(pipeline_id, val_score=1.0, y_true=x, y_pred=x) for _ in range(6)]
    # equal scores rank in the order they were saved
    assert store.top_predictions(6, metric="rmse")["prediction_id"].to_list() == ids


def test_release_settles_the_journal_so_a_plain_reader_finds_every_row(kept):
    store, pipeline_id = kept
    x = np.linspace(0.0, 1.0, 100)
    for k in range(20):
        store.save_prediction(pipeline_id, val_score=float(k), y_true=x, y_pred=x)
    store.release()
    assert on_disk(store.path, "predictions", "prediction_arrays", "pipelines") == \
        {"predictions": 20, "prediction_arrays": 20, "pipelines": 1}
    assert journal_file(store.path).size() == HEADER_SIZE  # emptied once applied


def test_a_given_prediction_id_is_refused_twice(kept):
    store, pipeline_id = kept
    store.save_prediction(pipeline_id, val_score=1.0, prediction_id="pred-1", y_true=[1.0], y_pred=[1.0])
    with pytest.raises(InvalidInputError, match="pred-1"):
        store.save_prediction(pipeline_id, val_score=2.0, prediction_id="pred-1", y_true=[1.0], y_pred=[1.0])
    assert store.query_predictions(pipeline_id=pipeline_id).height == 1


def test_a_failed_call_after_small_writes_keeps_them(kept):
    store, pipeline_id = kept
    first = store.save_prediction(pipeline_id, val_score=1.0, y_true=[1.0], y_pred=[1.0])
    with pytest.raises(NotFoundError):  # it settled the journal first, then rolled back
        store.complete_pipeline("no-such-pipeline", 1.0, 1.0, "rmse", 1)
    assert store.get_prediction(first)["val_score"] == 1.0
    store.release()
    assert on_disk(store.path, "predictions") == {"predictions": 1} and journal_records(store.path) == 0


def test_a_short_journal_handed_over_is_settled_by_the_reader_who_finds_it(kept):
    """A writer hands the workspace over without settling a short journal; a reader (another
    store object: as separate as another process) finds the rows there, takes the write
    lock, settles them, and reads every one."""
    store, pipeline_id = kept
    ids = [store.save_prediction(pipeline_id, val_score=float(k), y_true=[1.0], y_pred=[2.0]) for k in range(3)]
    seen: list = []
    with WorkspaceStore(store.path, lock_timeout=30) as reader:
        thread = threading.Thread(target=lambda: seen.append(reader.query_predictions()["prediction_id"].to_list()))
        thread.start()  # waits for the workspace: the writer's idle window gives way at once
        thread.join(timeout=30)
    assert sorted(seen[0]) == sorted(ids)
    assert journal_records(store.path) == 0 and on_disk(store.path, "predictions") == {"predictions": 3}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_writer_killed_with_journaled_rows_loses_none_and_its_journal_stayed_bounded(tmp_path, workers):
    """A writer appending call after call settles the journal once it passes SETTLE_BYTES,
    so the journal (and a settle's memory) stays bounded; killed with rows still
    journaled, it loses none: the next reader settles them."""
    ws = tmp_path / "ws"
    with WorkspaceStore(ws) as store:
        pipeline_id = store.begin_pipeline(store.begin_run("r"), "p", None, [], "tablet")
    acks = tmp_path / "acks.txt"
    n = 2000  # ~2.3 KB a record: past SETTLE_BYTES once
    _killed_after_writing(workers("journaler", workspace=str(ws), acks=str(acks), pipeline_id=pipeline_id,
                                  first_seed=100, n=n, idle=600))
    left = journal_records(ws), on_disk(ws, "predictions")["predictions"]
    assert sum(left) == n and left[1] > 0, left  # each in its table or in the journal, once
    assert journal_file(ws).size() <= SETTLE_BYTES + 3000  # bounded: settled when long (+ one record)

    with WorkspaceStore(ws) as reader:
        found = {r[0]: r[1:] for r in reader.sql(
            "SELECT p.prediction_id, p.val_score, a.y_true, a.y_pred, a.sample_indices "
            "FROM predictions p JOIN prediction_arrays a USING (prediction_id)").rows()}
    acked = [(line[1], int(line[2])) for line in read_acks(acks) if line[0] == "pred"]
    assert len(acked) == n
    for pid, seed in acked:
        assert_prediction_content(found.get(pid), seed, pid)
    assert journal_records(ws) == 0 and on_disk(ws, "predictions") == {"predictions": n}


def _record_pipeline(store, run_id: str, seed: int) -> tuple[str, str]:
    """A pipeline whole in one batch: its row, two real fitted artifacts, a chain, a
    prediction, its completion."""
    with store.batch():
        pipeline_id = store.begin_pipeline(run_id, f"p{seed}", {"seed": seed}, [], "tablet")
        chain_id, _ = save_fitted_chain(store, pipeline_id, seed)
        save_seeded_prediction(store, pipeline_id, seed, chain_id)
        store.complete_pipeline(pipeline_id, best_val=score_of(seed), metric="rmse", duration_ms=seed)
    return pipeline_id, chain_id


def test_pipelines_recorded_in_batches_land_whole(kept):
    store, _ = kept
    run_id = store.begin_run("grid")
    recorded = [_record_pipeline(store, run_id, seed) for seed in (1, 2, 3)]
    pipelines = store.list_pipelines(run_id=run_id)
    assert pipelines.height == 3 and set(pipelines["status"]) == {"completed"}
    X = probe_input()
    for (pipeline_id, chain_id), seed in zip(recorded, (1, 2, 3)):
        row = store.get_pipeline(pipeline_id)
        assert (row["best_val"], row["duration_ms"], row["expanded_config"]) == (score_of(seed), seed, {"seed": seed})
        scaler, model = fitted(seed)
        np.testing.assert_allclose(store.replay_chain(chain_id, X), model.predict(scaler.transform(X)))
        assert store.query_predictions(chain_id=chain_id)["val_score"].to_list() == [score_of(seed)]
    assert store.list_artifacts()["ref_count"].to_list() == [1] * 6


def test_a_completion_saved_after_its_pipeline_was_read_updates_the_row(kept):
    store, _ = kept
    run_id = store.begin_run("r")
    ids = [store.begin_pipeline(run_id, f"p{k}", None, [], "tablet") for k in range(3)]
    store.list_pipelines()  # a read: the pipelines settled
    for k, pipeline_id in enumerate(ids[:2]):
        store.complete_pipeline(pipeline_id, best_val=float(k), best_test=None, metric="r2", duration_ms=k)
    store.complete_pipeline(ids[0], best_val=9.0, metric="r2")  # the later completion wins
    found = {r["pipeline_id"]: r for r in store.list_pipelines(run_id=run_id).iter_rows(named=True)}
    assert (found[ids[0]]["status"], found[ids[0]]["best_val"], found[ids[0]]["duration_ms"]) == ("completed", 9.0, None)
    assert (found[ids[1]]["status"], found[ids[1]]["best_val"], found[ids[1]]["metric"]) == ("completed", 1.0, "r2")
    assert found[ids[2]]["status"] == "running" and found[ids[2]]["completed_at"] is None


def test_a_row_still_in_the_journal_is_found_after_a_rollback_forgot_it(kept):
    """A failed batch drops what the store remembered; the pipeline it knew is still in the
    journal, not yet in its table: a write naming it settles and finds it."""
    store, _ = kept
    run_id = store.begin_run("r")
    pipeline_id = store.begin_pipeline(run_id, "p", None, [], "tablet")
    with pytest.raises(RuntimeError, match="boom"):
        with store.batch():
            store.save_prediction(pipeline_id, val_score=1.0, y_true=[1.0], y_pred=[1.0])
            raise RuntimeError("boom")
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
    _killed_after_writing(workers("pipeline_journaler", workspace=str(ws), acks=str(acks), first_seed=11, n=8,
                                  idle=600))
    left = journal_records(ws), on_disk(ws, "pipelines")["pipelines"]
    assert sum(left) == 8, left  # each pipeline whole in the tables or in the journal, once

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


def test_rows_another_process_deleted_are_not_remembered(tmp_path):
    """A prediction for a pipeline another process deleted is refused, not journaled as an
    orphan. Two store objects on one workspace lock each other out like two processes."""
    ws = tmp_path / "ws"
    mine, other = WorkspaceStore(ws), WorkspaceStore(ws)
    kept = mine.begin_pipeline(mine.begin_run("kept"), "p", None, [], "tablet")
    doomed_run = mine.begin_run("doomed")
    doomed = mine.begin_pipeline(doomed_run, "p", None, [], "tablet")
    for pipeline_id in (kept, doomed):
        mine.save_prediction(pipeline_id, val_score=1.0, y_true=[1.0], y_pred=[1.0])
    mine.release()
    other.save_prediction(kept, val_score=2.0, y_true=[1.0], y_pred=[1.0])
    other.delete_run(doomed_run)
    other.release()
    with pytest.raises(NotFoundError, match=doomed):
        mine.save_prediction(doomed, val_score=1.0, y_true=[1.0], y_pred=[1.0])
    mine.save_prediction(kept, val_score=3.0, y_true=[1.0], y_pred=[1.0])
    assert sorted(mine.query_predictions()["val_score"].to_list()) == [1.0, 2.0, 3.0]
    mine.close(), other.close()


def test_operations_round_trip_through_a_payload_that_imports_nothing():
    from datetime import datetime

    from storage import journal
    from storage.operations import Insert, SaveArtifact, Update

    ops = [Insert("chains", None, ["c", 1, 2.5, None, True, [1.0, 2.25], datetime(2026, 1, 2, 3, 4, 5, 6)]),
           Insert("prediction_arrays", ("prediction_id", "y_true"), ["p", b"\x00\x01{\"b\": 3}"]),
           Update("pipelines", "pipeline_id", "p1", ("status", "best_val"), ["completed", None]),
           SaveArtifact(["a" * 64, "artifacts/aa/x.joblib", "a" * 64, None, "model", "joblib", 3,
                         datetime(2026, 1, 2), datetime(2026, 1, 3)])]
    decoded = journal.decode(journal.encode(ops))
    assert decoded == ops and [type(op) for op in decoded] == [Insert, Insert, Update, SaveArtifact]
    with pytest.raises(Exception, match="plain values"):  # anything else is refused, not imported
        journal.decode(journal.encode([Insert("t", None, [Path("/tmp")])]))


# -- the journal file -------------------------------------------------------------------------
def _writer(ws: Path, pipeline_id: str) -> WorkspaceStore:
    """A store that has looked its pipeline up and let the workspace go: its single calls
    append to the journal alone, and stay there until someone settles them."""
    store = WorkspaceStore(ws, idle=60)
    store.get_pipeline(pipeline_id)
    store.save_prediction(pipeline_id, val_score=0.0, y_true=[0.0], y_pred=[0.0])  # the pipeline remembered
    store.release()
    return store


def _save(store, pipeline_id: str, k: int) -> str:
    return store.save_prediction(pipeline_id, val_score=float(k), y_true=np.arange(50.0), y_pred=np.full(50, float(k)))


def _stored(ws: Path) -> dict[str, float]:
    """The predictions saved by a test (not `_writer`'s first, of score 0), as a store reads them."""
    with WorkspaceStore(ws) as store:
        return dict(store.sql("SELECT prediction_id, val_score FROM predictions WHERE val_score > 0").rows())


@pytest.fixture
def workspace(tmp_path):
    ws = tmp_path / "ws"
    with WorkspaceStore(ws) as store:
        pipeline_id = store.begin_pipeline(store.begin_run("r"), "p", None, [], "tablet")
    return ws, pipeline_id


def test_a_record_cut_short_is_cut_back_by_the_next_append_and_never_applied(workspace):
    """A writer killed in the middle of a large append leaves part of a record, never
    acknowledged (written here as SIGKILL leaves it). The next append goes after the last
    whole record, not after the fragment; the settle applies every acknowledged record."""
    ws, pipeline_id = workspace
    store = _writer(ws, pipeline_id)
    first = _save(store, pipeline_id, 1)
    journal = journal_file(ws)
    whole = journal.size()
    fragment = record(b"x" * 5000)[:3000]
    with open(journal.path, "ab") as fh:
        fh.write(fragment)
    assert journal_records(ws) == 1  # the fragment is not a record
    second = _save(store, pipeline_id, 2)
    assert journal.size() == 2 * whole - HEADER_SIZE  # cut back, then one more record of the same size
    assert journal_records(ws) == 2
    store.close()
    assert _stored(ws) == {first: 1.0, second: 2.0}
    assert journal.size() == HEADER_SIZE


def test_a_damaged_record_with_records_after_it_is_refused_and_nothing_is_changed(workspace):
    ws, pipeline_id = workspace
    store = _writer(ws, pipeline_id)
    for k in range(1, 4):
        _save(store, pipeline_id, k)
    journal = journal_file(ws)
    data = bytearray(journal.path.read_bytes())
    second_record = HEADER_SIZE + (len(data) - HEADER_SIZE) // 3
    data[second_record + 100] ^= 0xFF  # a flipped byte inside the second record's payload
    journal.path.write_bytes(bytes(data))
    with pytest.raises(WorkspaceCorruptError, match=rf"journal .*journal: the record at byte {second_record} "
                                                    r"is damaged \(its checksum does not match\)"):
        WorkspaceStore(ws).list_runs()  # any reader, any process
    assert journal.path.read_bytes() == bytes(data)  # not cut back, not emptied
    with pytest.raises(WorkspaceCorruptError, match="the record at byte"):
        store.release()  # it would settle what it appended: the same error
    assert journal.path.read_bytes() == bytes(data) and on_disk(ws, "predictions") == {"predictions": 1}


def test_a_settle_whose_reset_failed_does_not_apply_its_records_twice(workspace, monkeypatch):
    """A settle's transaction records how far it applied the journal; emptying the file
    comes after the commit. If that fails (a full disk: the one fault here that is made
    up), the next settle skips what is already applied."""
    ws, pipeline_id = workspace
    store = _writer(ws, pipeline_id)
    ids = [_save(store, pipeline_id, k) for k in range(1, 4)]

    def refuse(self, records=b""):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(JournalFile, "reset", refuse)
        with pytest.raises(OSError, match="No space left"):
            store.release()
    assert len(journal_file(ws).read(None)[1]) == 3 and journal_records(ws) == 0  # in the file, marked applied
    later = _save(store, pipeline_id, 9)  # appended after them, in the same generation
    assert journal_records(ws) == 1
    with WorkspaceStore(ws) as other:  # another process settles: the applied records are skipped
        found = other.query_predictions()["prediction_id"].to_list()
    assert len(found) == len(set(found)) == 5 and set(ids + [later]) <= set(found)
    store.close()
    assert sorted(_stored(ws)) == sorted(ids + [later])
    assert journal_file(ws).size() == HEADER_SIZE


def test_a_journal_that_is_not_one_is_refused_by_name(workspace):
    ws, _ = workspace
    journal = journal_file(ws)
    journal.path.write_bytes(b"PK\x03\x04 not a journal at all")
    with pytest.raises(WorkspaceCorruptError, match=r"journal .*/store\.duckdb\.journal starts with b'PK\\x03\\x04 ', "
                                                    r"expected b'NFJF' format 1"):
        WorkspaceStore(ws).query_predictions()
    assert journal.path.read_bytes() == b"PK\x03\x04 not a journal at all"


def test_check_repair_sets_a_damaged_journal_aside_and_applies_its_whole_records(workspace, monkeypatch):
    """Records a settle had applied (the file not emptied after) are not applied twice;
    of the rest, the whole ones land, the damaged one is left out; the file is kept for
    a person; the workspace reads again."""
    ws, pipeline_id = workspace
    store = _writer(ws, pipeline_id)
    applied = [_save(store, pipeline_id, k) for k in range(1, 3)]
    with monkeypatch.context() as patch:  # applied and marked, but still in the file
        patch.setattr(JournalFile, "reset", lambda self, records=b"": (_ for _ in ()).throw(OSError(28, "No space")))
        with pytest.raises(OSError):
            store.release()
    rest = [_save(store, pipeline_id, k) for k in range(10, 13)]
    journal = journal_file(ws)
    data = bytearray(journal.path.read_bytes())
    ends = [HEADER_SIZE]
    for _ in range(5):
        length = int.from_bytes(data[ends[-1]:ends[-1] + 4], "little")
        ends.append(ends[-1] + 8 + length + 8)
    data[ends[3] + 50] ^= 0xFF  # the fourth record (the second of `rest`): damaged
    journal.path.write_bytes(bytes(data))
    with pytest.raises(WorkspaceCorruptError, match=rf"the record at byte {ends[3]} is damaged.*check --repair"):
        WorkspaceStore(ws).query_predictions()

    with WorkspaceStore(ws) as repairer:
        report = repairer.check_workspace(repair=True)
    (aside,) = ws.glob("store.duckdb.journal.damaged-*")
    assert aside.read_bytes() == bytes(data)
    assert any(f"bytes {ends[3]}-{ends[4]} (its checksum does not match)" in line and "kept its 2 whole" in line
               and str(aside) in line for line in report.repaired), report.repaired
    assert _stored(ws) == {applied[0]: 1.0, applied[1]: 2.0, rest[0]: 10.0, rest[2]: 12.0}
    assert journal.size() == HEADER_SIZE
    with WorkspaceStore(ws) as again:  # nothing left to repair
        assert not any("journal" in line for line in again.check_workspace(repair=True).repaired)
    store.close()
