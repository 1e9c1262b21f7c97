"""Opening a workspace: layout, schema version and migrations, and the refusals that
leave everything on disk as it was."""

from __future__ import annotations

import os
import uuid

import duckdb
import pytest

from storage import (FileLock, InvalidInputError, NotFoundError, SchemaVersionError, WorkspaceCorruptError,
                     WorkspaceError, WorkspaceStore)
from storage import schema
from tests.waiting import wait_for


def _snapshot(folder):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_new_workspace_is_stamped_with_the_schema_version(tmp_path):
    with WorkspaceStore(tmp_path / "ws") as store:
        assert store.schema_version == schema.SCHEMA_VERSION
        applied = store.sql("SELECT name FROM migrations ORDER BY name")["name"].to_list()
        assert applied == [name for name, _ in schema.MIGRATIONS]
        tables = set(store.sql("SELECT table_name FROM information_schema.tables")["table_name"])
        assert {"runs", "pipelines", "chains", "predictions", "prediction_arrays", "artifacts",
                "logs", "chain_artifacts"} <= tables


def test_reopening_does_not_migrate_again(tmp_path):
    WorkspaceStore(tmp_path / "ws").close()
    before = (tmp_path / "ws" / "store.duckdb").stat().st_mtime_ns
    with WorkspaceStore(tmp_path / "ws") as store:
        assert store.list_runs().height == 0
    assert (tmp_path / "ws" / "store.duckdb").stat().st_mtime_ns == before


def test_a_workspace_from_a_newer_schema_is_refused_untouched(tmp_path):
    WorkspaceStore(tmp_path / "ws").close()
    con = duckdb.connect(str(tmp_path / "ws" / "store.duckdb"))
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(schema.SCHEMA_VERSION + 1)])
    con.close()
    before = _snapshot(tmp_path / "ws")
    with pytest.raises(SchemaVersionError, match=f"schema version {schema.SCHEMA_VERSION + 1}.*upgrade nirsflow"):
        WorkspaceStore(tmp_path / "ws")
    after = _snapshot(tmp_path / "ws")
    assert {p: v for p, v in after.items() if ".nirsflow" not in str(p)} == \
           {p: v for p, v in before.items() if ".nirsflow" not in str(p)}


def test_a_failed_migration_leaves_the_old_version(tmp_path, monkeypatch):
    WorkspaceStore(tmp_path / "ws").close()

    def broken(con):
        con.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("migration 9999 failed")

    current = schema.SCHEMA_VERSION
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS + [("9999_broken", broken)])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", len(schema.MIGRATIONS))
    with pytest.raises(RuntimeError, match="migration 9999 failed"):
        WorkspaceStore(tmp_path / "ws")
    con = duckdb.connect(str(tmp_path / "ws" / "store.duckdb"), read_only=True)
    assert schema.stored_version(con) == current
    assert not con.execute("SELECT count(*) FROM information_schema.tables "
                           "WHERE table_name = 'half_done'").fetchall()[0][0]
    con.close()


def test_workspace_path_that_is_a_file(tmp_path):
    target = tmp_path / "ws"
    target.write_text("not a folder")
    with pytest.raises(WorkspaceError, match=f"workspace path {target} is a file"):
        WorkspaceStore(target)
    assert target.read_text() == "not a folder"


@pytest.mark.parametrize("content", [b"", b"hello, this is not a database" * 10, os.urandom(4096)])
def test_a_store_that_is_not_duckdb_is_refused_and_left_alone(tmp_path, content):
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "store.duckdb").write_bytes(content)
    with pytest.raises(WorkspaceCorruptError, match="store.duckdb is not a DuckDB database"):
        WorkspaceStore(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["store.duckdb"]
    assert (folder / "store.duckdb").read_bytes() == content


def test_a_truncated_duckdb_file_is_reported_as_corrupt(tmp_path):
    with WorkspaceStore(tmp_path / "ws") as store:
        store.begin_run("r")
    db = tmp_path / "ws" / "store.duckdb"
    db.write_bytes(db.read_bytes()[:5000])
    with pytest.raises((WorkspaceCorruptError, duckdb.Error)):
        WorkspaceStore(tmp_path / "ws")


def test_connection_is_released_after_the_idle_window(tmp_path):
    store = WorkspaceStore(tmp_path / "ws", idle=0.05)
    store.list_runs()
    lock = FileLock(tmp_path / "ws" / ".nirsflow")
    assert [h["pid"] for h in lock.holders()] == [os.getpid()]  # kept for the next call of a burst
    wait_for(lambda: not lock.holders(), 10, "the idle window to let the workspace go", interval=0.02)
    # and a plain DuckDB client can now open the file, as another process would
    duckdb.connect(str(tmp_path / "ws" / "store.duckdb"), read_only=True).close()
    store.close()


def test_lifecycle_rows_and_logs(store):
    run_id = store.begin_run("grid", config={"cv": 5}, datasets=[{"name": "tablet"}], flow_run_id="fr-1",
                             tags=["nightly"])
    p1 = store.begin_pipeline(run_id, "0001", dataset_name="tablet", task_run_id="tr-1")
    p2 = store.begin_pipeline(run_id, "0002", dataset_name="tablet")
    store.log_step(p1, 0, "nirs.operators.SNV", "start")
    store.log_step(p1, 0, "nirs.operators.SNV", "end", duration_ms=3, details={"rows": 400})
    store.log_step(None, event="note", message="run-level", run_id=run_id, level="warning")
    store.complete_pipeline(p1, best_val=0.5, best_test=0.6, metric="rmse", duration_ms=10)
    store.fail_run(run_id, "worker lost", status="crashed")
    run = store.get_run(run_id)
    assert run["status"] == "crashed" and run["error"] == "worker lost" and run["flow_run_id"] == "fr-1"
    assert run["datasets"] == [{"name": "tablet"}] and run["tags"] == ["nightly"]
    assert store.get_pipeline(p1)["status"] == "completed"
    assert store.get_pipeline(p2)["status"] == "failed"       # nothing will finish it now
    assert store.get_logs(pipeline_id=p1)["event"].to_list() == ["start", "end"]
    assert store.get_logs(run_id=run_id).height == 3
    assert store.list_runs(dataset="tablet").height == 1 and store.list_runs(dataset="corn").height == 0


def test_the_ids_the_store_mints_are_distinct_version_4_uuids(store):
    run_id = store.begin_run("grid")
    pipeline_ids = [store.begin_pipeline(run_id, f"{i:04d}") for i in range(50)]
    with store.batch():
        prediction_ids = [store.save_prediction(pipeline_ids[0], y_true=[1.0], y_pred=[1.5]) for _ in range(500)]
    ids = [run_id, *pipeline_ids, *prediction_ids]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122


@pytest.mark.parametrize("call,message", [
    (lambda s: s.begin_run(42), "run name must be a string"),
    (lambda s: s.begin_run("r", config={"bad": object()}), "config cannot be stored as JSON"),
    (lambda s: s.begin_pipeline("nope", "p"), "unknown run id 'nope'"),
    (lambda s: s.complete_run("nope"), "unknown run id 'nope'"),
    (lambda s: s.fail_run("nope", "x", status="exploded"), "status must be failed, crashed or cancelled"),
    (lambda s: s.complete_pipeline("nope"), "unknown pipeline id 'nope'"),
    (lambda s: s.log_step(None), "needs a pipeline_id or a run_id"),
    (lambda s: s.delete_run("nope"), "unknown run id 'nope'"),
    (lambda s: s.get_chain("nope"), "unknown chain id 'nope'"),
    (lambda s: s.list_runs(limit="ten"), "limit must be an integer"),
])
def test_bad_calls_get_one_clear_error_and_change_nothing(store, call, message):
    before = store.sql("SELECT (SELECT count(*) FROM runs) + (SELECT count(*) FROM pipelines) AS n")["n"][0]
    with pytest.raises((InvalidInputError, NotFoundError), match=message):
        call(store)
    after = store.sql("SELECT (SELECT count(*) FROM runs) + (SELECT count(*) FROM pipelines) AS n")["n"][0]
    assert before == after


def test_delete_run_twice_is_a_clear_error(store):
    run_id = store.begin_run("r")
    assert store.delete_run(run_id) == 1
    with pytest.raises(NotFoundError, match=f"unknown run id '{run_id}'"):
        store.delete_run(run_id)


def test_an_older_workspace_is_migrated_in_place_keeping_its_data(tmp_path):
    folder = tmp_path / "ws"
    folder.mkdir()
    con = duckdb.connect(str(folder / "store.duckdb"))
    con.execute("BEGIN")
    schema.MIGRATIONS[0][1](con)  # a workspace written by the first schema
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    con.execute("INSERT INTO runs (run_id, name, status, created_at) VALUES ('old', 'kept', 'completed', now())")
    con.execute("COMMIT")
    con.close()
    with WorkspaceStore(folder) as store:
        assert store.schema_version == schema.SCHEMA_VERSION
        assert store.get_run("old")["name"] == "kept"
        assert store.list_scored_files().height == 0


def test_scored_files_are_recorded_once_per_content_dataset_and_chain(store, fitted_folds, tablet):
    from tests.storage.conftest import make_run, save_scaler_pls_chain

    _, pipeline_id = make_run(store)
    chain_id = save_scaler_pls_chain(store, pipeline_id, fitted_folds, tablet[0].shape[1])
    other_chain = save_scaler_pls_chain(store, pipeline_id, fitted_folds, tablet[0].shape[1])
    store.record_scored_file("ab" * 32, "tablet/batch1.csv", chain_id, "outbox/batch1.parquet", n_spectra=12,
                             dataset_name="tablet", alias="production")
    assert store.find_scored_file("ab" * 32)["result_path"] == "outbox/batch1.parquet"
    assert store.find_scored_file("ab" * 32, "tablet", chain_id)["file_name"] == "tablet/batch1.csv"
    assert store.find_scored_file("ab" * 32, "moisture", chain_id) is None  # another property of the same file
    assert store.find_scored_file("ab" * 32, "tablet", other_chain) is None  # a promotion since
    assert store.find_scored_file("cd" * 32) is None
    with pytest.raises(InvalidInputError, match="tablet/copy.csv.*already scored for dataset 'tablet' by chain "
                                                ".*as tablet/batch1.csv; its result is outbox/batch1.parquet"):
        store.record_scored_file("ab" * 32, "tablet/copy.csv", chain_id, "outbox/x.parquet", n_spectra=12,
                                 dataset_name="tablet")
    store.record_scored_file("ab" * 32, "moisture/batch1.csv", chain_id, "outbox/m.parquet", n_spectra=12,
                             dataset_name="moisture")
    store.record_scored_file("ab" * 32, "tablet/batch1.csv", other_chain, "outbox/b.parquet", n_spectra=12,
                             dataset_name="tablet")
    with pytest.raises(NotFoundError, match="unknown chain id"):
        store.record_scored_file("ef" * 32, "b.csv", "ghost", "outbox/b.parquet", n_spectra=1)
    assert store.list_scored_files().height == 3 and store.list_scored_files("moisture").height == 1


def test_scored_files_of_an_older_workspace_keep_their_rows_under_the_new_key(tmp_path):
    folder = tmp_path / "ws"
    folder.mkdir()
    con = duckdb.connect(str(folder / "store.duckdb"))
    con.execute("BEGIN")
    schema.MIGRATIONS[0][1](con), schema.MIGRATIONS[1][1](con)  # a workspace of schema 2
    con.execute("INSERT INTO meta VALUES ('schema_version', '2')")
    con.execute("INSERT INTO scored_files VALUES ('ab', 'tablet/a.csv', 'tablet', 'production', 'c1', 'out/a.parquet', "
                "3, now(), NULL), ('cd', 'b.csv', NULL, NULL, 'c1', 'out/b.parquet', 1, now(), NULL)")
    con.execute("COMMIT")
    con.close()
    with WorkspaceStore(folder) as store:
        assert store.find_scored_file("ab", "tablet", "c1")["result_path"] == "out/a.parquet"
        assert store.find_scored_file("cd", "", "c1")["file_name"] == "b.csv"

