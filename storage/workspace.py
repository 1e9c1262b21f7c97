"""``WorkspaceStore``: the facade over one workspace folder.

    workspace/
    ├── store.duckdb          all structured data
    ├── store.duckdb.journal  small writes not yet moved into store.duckdb (storage/journal.py)
    ├── artifacts/ab/<sha256>.joblib
    ├── exports/              on-demand exports
    ├── library/templates/    pipeline templates
    └── .nirsflow/            the workspace's lock, the journal's (journal/), their holder and
                              waiter notes, and rows-epoch (storage/transaction.py)

The store is built from parts, each given its collaborators: the connector (the only way
to the database and the journal: storage/connection.py, itself given the two locks, the
journal file and the remembered rows), the artifact files, the loaded chains, and the
other parts it works through. The facade only says which part answers each public call.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from . import schema
from .aliases import Aliases
from .artifacts import ArtifactFiles
from .base import frame, now
from .chains import Chains, LoadedChains
from .check import Check
from .connection import Connector
from .errors import WorkspaceCorruptError, WorkspaceError
from .exports import Exports
from .imports import Imports
from .journal import JournalFile
from .locking import FileLock
from .maintenance import Maintenance
from .predictions import Predictions
from .records import Records
from .scored_files import ScoredFiles
from .transaction import RememberedRows
from . import references

DB_NAME = "store.duckdb"
_DUCKDB_MAGIC = b"DUCK"
DEFAULT_IDLE = 1.0  # seconds; see `idle` below


def _by(part: str, method: Callable) -> Callable:
    """A public method of the store, answered by one of its parts (same name, signature
    and documentation)."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return method(getattr(self, part), *args, **kwargs)
    return call


class WorkspaceStore:
    """All persistence of one workspace.

    Args:
        path: the workspace folder (created if missing).
        lock_timeout: seconds to wait for another process before ``LockTimeoutError``.
        idle: seconds the workspace stays attached after a call, for the next call of a
            burst. Other processes do not wait for it: the workspace is handed over as soon
            as one is seen waiting (checked every few ms), so the window only saves this
            process the attach, the checkpoint and the detach between calls a little
            apart, such as the pipelines of a grid.
    """

    def __init__(self, path: str | Path, *, lock_timeout: float = 60.0, idle: float = DEFAULT_IDLE) -> None:
        self.path = Path(path).expanduser().absolute()
        self.db_path = self.path / DB_NAME
        self._check_layout()
        self.path.mkdir(parents=True, exist_ok=True)
        self.files = ArtifactFiles(self.path)
        self.lock = FileLock(self.path / ".nirsflow", timeout=lock_timeout, workspace=self.path)
        journal_lock = FileLock(self.path / ".nirsflow" / "journal", timeout=lock_timeout, workspace=self.path,
                                what="journal")
        self._db = Connector(self.db_path, self.lock, journal_lock, JournalFile(self.path / (DB_NAME + ".journal")),
                             RememberedRows(self.path / ".nirsflow" / "rows-epoch"), idle=idle)
        try:
            schema.open_workspace(self._db, self.path, now())
        except BaseException:
            self._db.close()  # a refused workspace keeps no connection and no lock
            raise
        (self.path / "artifacts").mkdir(exist_ok=True)
        loaded = LoadedChains()
        self._records = Records(self._db, self.path, loaded)
        self._predictions = Predictions(self._db, self.path)
        self._chains = Chains(self._db, self.files, loaded, self.path)
        self._aliases = Aliases(self._db, self.path)
        self._scored_files = ScoredFiles(self._db, self.path)
        self._maintenance = Maintenance(self._db, self.files, loaded, self.path)
        self._exports = Exports(self._db, self.files, self._records, self._predictions, self._chains, self.path)
        self._imports = Imports(self._db, self._chains, self.path)
        self._check = Check(self._db, self.files, self._records, self._maintenance, self.path)

    def _check_layout(self) -> None:
        # Everything that can be refused is refused before anything is created.
        if self.path.exists() and not self.path.is_dir():
            raise WorkspaceError(f"workspace path {self.path} is a file, expected a folder")
        if self.db_path.is_dir():
            raise WorkspaceError(f"{self.db_path} is a folder, expected a DuckDB file")
        if self.db_path.exists():
            with open(self.db_path, "rb") as fh:
                head = fh.read(12)
            if len(head) < 12 or head[8:12] != _DUCKDB_MAGIC:
                raise WorkspaceCorruptError(
                    f"{self.db_path} is not a DuckDB database (it starts with {head[:12]!r}); "
                    "restore it from a backup or move it away. Nothing was changed.")

    # -- runs, pipelines, logs (storage/records.py) -----------------------------------------
    begin_run = _by("_records", Records.begin_run)
    complete_run = _by("_records", Records.complete_run)
    fail_run = _by("_records", Records.fail_run)
    get_run = _by("_records", Records.get_run)
    list_runs = _by("_records", Records.list_runs)
    begin_pipeline = _by("_records", Records.begin_pipeline)
    complete_pipeline = _by("_records", Records.complete_pipeline)
    fail_pipeline = _by("_records", Records.fail_pipeline)
    get_pipeline = _by("_records", Records.get_pipeline)
    list_pipelines = _by("_records", Records.list_pipelines)
    log_step = _by("_records", Records.log_step)
    get_logs = _by("_records", Records.get_logs)
    get_pipeline_log = _by("_records", Records.get_pipeline_log)

    # -- predictions (storage/predictions.py) ---------------------------------------------------
    save_prediction = _by("_predictions", Predictions.save_prediction)
    get_prediction = _by("_predictions", Predictions.get_prediction)
    get_prediction_arrays = _by("_predictions", Predictions.get_prediction_arrays)
    query_predictions = _by("_predictions", Predictions.query_predictions)
    top_predictions = _by("_predictions", Predictions.top_predictions)

    # -- artifacts, chains, replay (storage/chains.py) ------------------------------------------
    save_artifact = _by("_chains", Chains.save_artifact)
    save_artifact_bytes = _by("_chains", Chains.save_artifact_bytes)
    save_artifacts = _by("_chains", Chains.save_artifacts)
    load_artifact = _by("_chains", Chains.load_artifact)
    get_artifact_path = _by("_chains", Chains.get_artifact_path)
    list_artifacts = _by("_chains", Chains.list_artifacts)
    save_chain = _by("_chains", Chains.save_chain)
    get_chain = _by("_chains", Chains.get_chain)
    get_chains_for_pipeline = _by("_chains", Chains.get_chains_for_pipeline)
    replay_chain = _by("_chains", Chains.replay_chain)
    preprocess_chain = _by("_chains", Chains.preprocess_chain)
    spectral_steps_of_chain = _by("_chains", Chains.spectral_steps_of_chain)
    load_chain = _by("_chains", Chains.load_chain)

    # -- aliases (storage/aliases.py), scored inbox files (storage/scored_files.py) ------------------
    set_alias = _by("_aliases", Aliases.set_alias)
    get_alias = _by("_aliases", Aliases.get_alias)
    remove_alias = _by("_aliases", Aliases.remove_alias)
    list_aliases = _by("_aliases", Aliases.list_aliases)
    alias_history = _by("_aliases", Aliases.alias_history)
    record_scored_file = _by("_scored_files", ScoredFiles.record_scored_file)
    find_scored_file = _by("_scored_files", ScoredFiles.find_scored_file)
    list_scored_files = _by("_scored_files", ScoredFiles.list_scored_files)

    # -- deleting, gc, vacuum (storage/maintenance.py), health (storage/check.py) ---------------
    delete_run = _by("_maintenance", Maintenance.delete_run)
    delete_prediction = _by("_maintenance", Maintenance.delete_prediction)
    gc_artifacts = _by("_maintenance", Maintenance.gc_artifacts)
    vacuum = _by("_maintenance", Maintenance.vacuum)
    check_workspace = _by("_check", Check.check_workspace)

    # -- exports and bundles (storage/exports.py) -----------------------------------------------
    export_chain = _by("_exports", Exports.export_chain)
    import_bundle = _by("_exports", Exports.import_bundle)
    export_pipeline_config = _by("_exports", Exports.export_pipeline_config)
    import_workspace = _by("_imports", Imports.import_workspace)
    export_run = _by("_exports", Exports.export_run)
    export_predictions_parquet = _by("_exports", Exports.export_predictions_parquet)

    # -- the store itself -----------------------------------------------------------------------
    @contextmanager
    def batch(self) -> Iterator["WorkspaceStore"]:
        """Every call inside runs in one write transaction: all of it lands, or none."""
        with self._db.batch():
            yield self

    def release(self) -> None:
        """Settle, close the connection and free the workspace now, without waiting for
        the idle window."""
        self._db.release()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "WorkspaceStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WorkspaceStore({str(self.path)!r})"

    @property
    def schema_version(self) -> int:
        with self._db.reading() as con:
            return schema.stored_version(con)

    def sql(self, query: str, params: list | None = None):
        """Run a read-only query on the store and return a polars DataFrame."""
        return frame(self._db, query, params)

    def resolve_chain(self, ref: str) -> str:
        """The chain id that ``ref`` names: an id, a unique prefix of one (8 hex digits
        are what tables show), or ``DATASET:ALIAS``; see ``storage.references``."""
        return references.resolve_chain(self, ref)
