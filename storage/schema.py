"""The workspace schema and its named, transactional migrations.

The seven tables of the spec (runs, pipelines, chains, predictions, prediction_arrays,
artifacts, logs), plus bookkeeping: ``chain_artifacts`` (which chain references which
artifact; artifact liveness and ``ref_count`` are derived from it, never counted by
hand), ``aliases``/``alias_history`` (named pointers such as ``production``), and
``meta``/``migrations`` (the schema version and what has been applied).

Migrations only ever append. Each runs inside the caller's transaction, so a crash
leaves the workspace at the old version, never half-migrated. A workspace whose version
is newer than this code knows is refused before anything is written.

No foreign keys: DuckDB cannot delete a parent and its children in one transaction
when they are declared, so the store keeps referential integrity in code, inside
transactions, under the exclusive lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import duckdb

from .base import first
from .errors import SchemaVersionError

if TYPE_CHECKING:
    from .connection import Connector

_INITIAL = """
CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP);

CREATE TABLE runs (
    run_id VARCHAR PRIMARY KEY,
    name VARCHAR NOT NULL,
    status VARCHAR NOT NULL,            -- running | completed | failed | crashed | cancelled
    config JSON,
    datasets JSON,
    summary JSON,
    error VARCHAR,
    created_at TIMESTAMP NOT NULL,      -- UTC
    completed_at TIMESTAMP,
    flow_run_id VARCHAR,                -- the Prefect flow run that owns it, when there is one
    tags JSON
);

CREATE TABLE pipelines (
    pipeline_id VARCHAR PRIMARY KEY,
    run_id VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    status VARCHAR NOT NULL,            -- running | completed | failed
    expanded_config JSON,
    generator_choices JSON,
    dataset_name VARCHAR NOT NULL,
    dataset_hash VARCHAR,
    best_val DOUBLE,
    best_test DOUBLE,
    metric VARCHAR,
    duration_ms BIGINT,
    error VARCHAR,
    created_at TIMESTAMP NOT NULL,
    completed_at TIMESTAMP,
    flow_run_id VARCHAR,
    task_run_id VARCHAR
);
CREATE INDEX idx_pipelines_run ON pipelines(run_id);

CREATE TABLE chains (
    chain_id VARCHAR PRIMARY KEY,
    pipeline_id VARCHAR NOT NULL,
    steps JSON NOT NULL,
    model_step_idx INTEGER NOT NULL,
    model_class VARCHAR NOT NULL,
    preprocessings VARCHAR NOT NULL DEFAULT '',
    fold_strategy VARCHAR NOT NULL,     -- per_fold (combine the folds) | refit (one model)
    fold_artifacts JSON NOT NULL,       -- {fold_id: {step_idx: artifact_id}}
    shared_artifacts JSON NOT NULL,     -- {step_idx: artifact_id}: fitted once, used by every fold
    fold_weights JSON,                  -- {fold_id: weight}; null = equal
    task_type VARCHAR,                  -- regression | classification
    classes JSON,                       -- class labels in probability-column order
    wavelengths DOUBLE[],               -- the training grid, when known
    n_features INTEGER,                 -- the training input width
    branch_path JSON,
    source_index INTEGER,
    metadata JSON,
    created_at TIMESTAMP NOT NULL,
    task_run_id VARCHAR
);
CREATE INDEX idx_chains_pipeline ON chains(pipeline_id);

CREATE TABLE chain_artifacts (
    chain_id VARCHAR NOT NULL,
    artifact_id VARCHAR NOT NULL,
    PRIMARY KEY (chain_id, artifact_id)
);
CREATE INDEX idx_chain_artifacts_artifact ON chain_artifacts(artifact_id);

-- predictions and prediction_arrays carry no key index: an ART index costs more than
-- the rest of an insert (0.35 ms + 0.25 ms at commit, measured), and ids are uuid4s
-- made by the store (a caller-given id is checked for uniqueness when it is given).
CREATE TABLE predictions (
    prediction_id VARCHAR NOT NULL,
    pipeline_id VARCHAR NOT NULL,
    chain_id VARCHAR,
    dataset_name VARCHAR NOT NULL,
    model_name VARCHAR NOT NULL,
    model_class VARCHAR NOT NULL,
    fold_id VARCHAR NOT NULL,
    partition VARCHAR NOT NULL,
    val_score DOUBLE,                   -- NULL when missing, never 0.0
    test_score DOUBLE,
    train_score DOUBLE,
    metric VARCHAR NOT NULL,
    task_type VARCHAR NOT NULL,
    n_samples INTEGER,
    n_features INTEGER,
    scores JSON,
    best_params JSON,
    preprocessings VARCHAR NOT NULL DEFAULT '',
    branch_id INTEGER,
    branch_name VARCHAR,
    refit_context VARCHAR,
    created_at TIMESTAMP NOT NULL,
    task_run_id VARCHAR
);

-- Arrays are stored as .npy bytes, so shape (2-D y_proba), dtype and string labels
-- come back exactly as they went in.
CREATE TABLE prediction_arrays (
    prediction_id VARCHAR NOT NULL,
    y_true BLOB,
    y_pred BLOB,
    y_proba BLOB,
    sample_indices BLOB,
    weights BLOB
);

CREATE TABLE artifacts (
    artifact_id VARCHAR PRIMARY KEY,    -- = content_hash: SHA-256 of the serialized bytes
    artifact_path VARCHAR NOT NULL,     -- relative to the workspace
    content_hash VARCHAR NOT NULL,
    operator_class VARCHAR,
    artifact_type VARCHAR,
    format VARCHAR NOT NULL,
    size_bytes BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    last_saved_at TIMESTAMP NOT NULL    -- every (deduplicated) save renews the grace period
);

CREATE TABLE logs (
    log_id VARCHAR PRIMARY KEY,
    run_id VARCHAR,
    pipeline_id VARCHAR,
    step_idx INTEGER,
    operator_class VARCHAR,
    event VARCHAR NOT NULL,
    duration_ms BIGINT,
    message VARCHAR,
    details JSON,
    level VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL
);

CREATE TABLE aliases (
    dataset_name VARCHAR NOT NULL,
    alias VARCHAR NOT NULL,
    chain_id VARCHAR NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (dataset_name, alias)
);
CREATE TABLE alias_history (
    dataset_name VARCHAR NOT NULL,
    alias VARCHAR NOT NULL,
    chain_id VARCHAR,                   -- NULL when the alias was removed
    previous_chain_id VARCHAR,
    changed_at TIMESTAMP NOT NULL,
    changed_by VARCHAR,
    reason VARCHAR
);
"""


def _initial(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(_INITIAL)


def _scored_files(con: duckdb.DuckDBPyConnection) -> None:
    # Batch scoring: every input file scored, by the SHA-256 of its bytes, so a file seen
    # again is not scored twice and the record says where its result is.
    con.execute("""
CREATE TABLE scored_files (
    content_hash VARCHAR PRIMARY KEY,
    file_name VARCHAR NOT NULL,         -- as it arrived in the inbox
    dataset_name VARCHAR,
    alias VARCHAR,
    chain_id VARCHAR NOT NULL,
    result_path VARCHAR NOT NULL,       -- relative to the workspace when inside it
    n_spectra BIGINT NOT NULL,
    scored_at TIMESTAMP NOT NULL,
    flow_run_id VARCHAR
);
""")


def _journal_marker(con: duckdb.DuckDBPyConnection) -> None:
    # Small write transactions commit as records of store.duckdb.journal, appended without
    # the workspace lock (storage/journal.py); a settle records here how far the file has
    # been applied, in its own transaction, so no record is ever applied twice.
    # Versioned, so that an older nirsflow, which knows nothing of the file, refuses the
    # workspace rather than read its tables without those records.
    con.execute("INSERT OR REPLACE INTO meta VALUES ('journal_settled', '')")


def _scored_files_per_dataset(con: duckdb.DuckDBPyConnection) -> None:
    # A lab scores one spectrum file for several properties, one dataset (and chain)
    # each: a file is scored once per (bytes, dataset, chain), no longer once per bytes.
    # Rows of the old table keep their dataset ('' where none was recorded). A no-op
    # on a table already keyed so (a migration replayed from an older version stamp).
    keyed = con.execute("SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'scored_files' "
                        "AND constraint_type = 'PRIMARY KEY' AND list_contains(constraint_column_names, 'chain_id') "
                        "AND database_name = current_database()").fetchall()[0][0]
    if keyed:
        return
    con.execute("""
CREATE TABLE scored_files_by_chain (
    content_hash VARCHAR NOT NULL,
    dataset_name VARCHAR NOT NULL,      -- the inbox folder it was dropped in
    chain_id VARCHAR NOT NULL,          -- the chain its alias named when it was scored
    file_name VARCHAR NOT NULL,         -- as it arrived in the inbox
    alias VARCHAR,
    result_path VARCHAR NOT NULL,
    n_spectra BIGINT NOT NULL,
    scored_at TIMESTAMP NOT NULL,
    flow_run_id VARCHAR,
    PRIMARY KEY (content_hash, dataset_name, chain_id)
);
INSERT INTO scored_files_by_chain SELECT content_hash, coalesce(dataset_name, ''), chain_id, file_name, alias,
    result_path, n_spectra, scored_at, flow_run_id FROM scored_files;
DROP TABLE scored_files;
ALTER TABLE scored_files_by_chain RENAME TO scored_files;
""")


def _imported_ids(con: duckdb.DuckDBPyConnection) -> None:
    # What came from elsewhere (a nirs4all workspace, a bundle), by its id there: so an
    # import run twice adds nothing, and every imported row says where it came from.
    con.execute("""
CREATE TABLE imported_ids (
    source_kind VARCHAR NOT NULL,       -- run | pipeline | chain | prediction | log | bundle
    source_id VARCHAR NOT NULL,         -- its id in the source (a bundle: its manifest's SHA-256)
    local_id VARCHAR NOT NULL,          -- its id here
    source VARCHAR NOT NULL,            -- the workspace folder or bundle file it came from
    imported_at TIMESTAMP NOT NULL,
    PRIMARY KEY (source_kind, source_id)
);
""")


# (name, function): append only; never edit one that has shipped.
MIGRATIONS: list[tuple[str, Callable[[duckdb.DuckDBPyConnection], None]]] = [
    ("0001_initial", _initial),
    ("0002_scored_files", _scored_files),
    ("0003_journal_marker", _journal_marker),
    ("0004_scored_files_per_dataset", _scored_files_per_dataset),
    ("0005_imported_ids", _imported_ids),
]
SCHEMA_VERSION = len(MIGRATIONS)


def stored_version(con: duckdb.DuckDBPyConnection) -> int:
    """The schema version a workspace was written with (0 for an empty database)."""
    has_meta = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta' "
        "AND table_catalog = current_database()"
    ).fetchall()[0][0]
    if not has_meta:
        return 0
    row = first(con.execute("SELECT value FROM meta WHERE key = 'schema_version'"))
    return int(row[0]) if row else 0


def check_version(version: int, where: object) -> None:
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"workspace {where} has schema version {version}, newer than this nirsflow "
            f"understands ({SCHEMA_VERSION}); upgrade nirsflow. The workspace was not changed."
        )


def open_workspace(db: "Connector", where: object, now) -> list[str]:
    """Check a workspace's schema version and bring it up to date (in one transaction,
    under the exclusive lock), before anything else reads it. Returns what was applied."""
    version = 0
    if db.db_path.exists():
        with db.opening("shared") as con:
            version = stored_version(con)
        check_version(version, where)
    if version == SCHEMA_VERSION:
        return []
    with db.opening("exclusive") as con:
        return migrate(con, where, now)


def migrate(con: duckdb.DuckDBPyConnection, where: object, now) -> list[str]:
    """Apply pending migrations inside the caller's transaction; return their names."""
    version = stored_version(con)
    check_version(version, where)
    applied = []
    for name, step in MIGRATIONS[version:]:
        step(con)
        con.execute("INSERT INTO migrations VALUES (?, ?)", [name, now])
        applied.append(name)
    if applied:
        con.execute(
            "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)]
        )
    return applied
