"""``WorkspaceStore``: the facade over one workspace folder.

    workspace/
    ├── store.duckdb          all structured data
    ├── artifacts/ab/<sha256>.joblib
    ├── exports/              on-demand exports
    ├── library/templates/    pipeline templates
    ├── store.duckdb.journal  small writes not yet moved into store.duckdb (journal_file.py)
    └── .nirsflow/            the inter-process lock and its holder/waiter notes

The facade holds no connection of its own between calls: see ``connection.py``.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from . import replay as replaying
from .artifacts import ArtifactFiles
from .chains import ChainsMixin
from .connection import Connector
from .errors import ArtifactLoadError, WorkspaceCorruptError, WorkspaceError
from .exports import ExportsMixin
from .journal_file import JournalFile
from .locking import FileLock
from .maintenance import MaintenanceMixin
from .predictions import PredictionsMixin
from .records import RecordsMixin
from .aliases import AliasesMixin
from .scoring import ScoringMixin
from .versions import unloadable_in_chain
from .check import CheckMixin
from . import journal, references, schema
from .base import now

DB_NAME = "store.duckdb"
_DUCKDB_MAGIC = b"DUCK"


DEFAULT_IDLE = 1.0  # seconds; see `idle` below


class WorkspaceStore(RecordsMixin, PredictionsMixin, ChainsMixin, MaintenanceMixin,
                     ExportsMixin, AliasesMixin, ScoringMixin, CheckMixin):
    """All persistence of one workspace.

    Args:
        path: the workspace folder (created if missing).
        lock_timeout: seconds to wait for another process before ``LockTimeoutError``.
        idle: seconds the workspace stays attached after a call, for the next call of a
            burst. Other processes do not wait for it: the workspace is handed over as soon
            as one is seen waiting (checked every few ms), so the window only saves this
            process the attach, the checkpoint and the detach (~5-8 ms) between calls a
            little apart, such as the pipelines of a grid.
    """

    def __init__(self, path: str | Path, *, lock_timeout: float = 60.0, idle: float = DEFAULT_IDLE) -> None:
        self.path = Path(path).expanduser().absolute()
        self.db_path = self.path / DB_NAME
        self._check_layout()
        self.path.mkdir(parents=True, exist_ok=True)
        self.files = ArtifactFiles(self.path)
        self.lock = FileLock(self.path / ".nirsflow", timeout=lock_timeout, workspace=self.path)
        # appends to the journal file take a lock of their own (storage/connection.py)
        journal_lock = FileLock(self.path / ".nirsflow" / "journal", timeout=lock_timeout, workspace=self.path,
                                what="journal")
        self._db = Connector(self.db_path, self.lock, idle=idle, journal_lock=journal_lock)
        self._db.flush, self._db.to_journal = self._flush_pending, self._journal_pending
        self._journal = JournalFile(self.db_path.with_name(DB_NAME + ".journal"),
                                    applied_note=self.path / ".nirsflow" / "journal" / "applied")
        self._artifact_cache: OrderedDict = OrderedDict()
        self._chain_cache: OrderedDict = OrderedDict()
        try:
            self._open_schema()
        except BaseException:
            self._db.close()  # a refused workspace keeps no connection and no lock
            raise
        (self.path / "artifacts").mkdir(exist_ok=True)

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

    def _open_schema(self) -> None:
        version = 0
        if self.db_path.exists():
            with self._db.reading() as con:
                version = schema.stored_version(con)
            schema.check_version(version, self.path)
        if version < schema.SCHEMA_VERSION:
            with self._db.writing() as con:
                schema.migrate(con, self.path, now())
                # rows an older nirsflow committed to the journal table (a writer killed
                # before it settled them): nothing writes there any more
                self._apply(con, journal.take(con))
        # From here on every read first checks for journal records a writer left behind.
        self._db.unsettled, self._db.settle = self._journal.has_unapplied, self._settle
        self._db.journal_length, self._db.journal_size = self._journal.unapplied_bytes, self._journal.size

    # -- life ----------------------------------------------------------------------
    @contextmanager
    def batch(self) -> Iterator["WorkspaceStore"]:
        """Every call inside runs in one write transaction: all of it lands, or none."""
        with self._db.batch():
            yield self

    def release(self) -> None:
        """Close the connection and free the workspace now, without waiting for the idle window."""
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
        return self._frame(query, params)

    def resolve_chain(self, ref: str) -> str:
        """The chain id that ``ref`` names: an id, a unique prefix of one (8 hex digits
        are what tables show), or ``DATASET:ALIAS``; see ``storage.references``."""
        return references.resolve_chain(self, ref)

    # -- replay --------------------------------------------------------------------
    def replay_chain(self, chain_id: str, X, wavelengths=None, *, return_proba: bool = False):
        """Predict new spectra with a stored chain (see ``storage.replay`` for the rule).

        Returns predictions; for a classifier with ``return_proba=True``, a
        ``(labels, probabilities)`` pair whose columns follow ``get_chain(...)["classes"]``."""
        chain = self._cached_chain(chain_id)
        X = replaying.prepare_input(chain, X, wavelengths)
        pred, proba = replaying.run_chain(chain, X, self._chain_loader(chain))
        if return_proba:
            if proba is None:
                raise replaying.ReplayError(f"chain {chain_id} is a regression chain: it has no probabilities")
            return pred, proba
        return pred

    def preprocess_chain(self, chain_id: str, X, wavelengths=None, *, fold: str | None = None):
        """``(X, grid)`` after the chain's preprocessing (one fold's), e.g. to plot it."""
        chain = self._cached_chain(chain_id)
        X = replaying.prepare_input(chain, X, wavelengths)
        return replaying.preprocess(chain, X, self._chain_loader(chain), fold)

    def _chain_loader(self, chain: dict):
        """artifact id -> the loaded object, cached; an artifact that cannot be loaded here
        is reported with the chain it belongs to and what fitted it."""
        formats = self._chain_formats(chain)

        def load(artifact_id: str):
            try:
                return self._cached_artifact(artifact_id, formats.get(artifact_id))
            except ArtifactLoadError as exc:
                said = unloadable_in_chain(exc, chain, f"chain {chain['chain_id']} cannot be replayed: ")
                raise said from exc.__cause__

        return load

    def _chain_formats(self, chain: dict) -> dict[str, str]:
        if "_formats" not in chain:
            with self._db.reading() as con:
                rows = con.execute("SELECT artifact_id, format FROM artifacts WHERE artifact_id IN "
                                   "(SELECT artifact_id FROM chain_artifacts WHERE chain_id = ?)",
                                   [chain["chain_id"]]).fetchall()
            chain["_formats"] = dict(rows)
        return chain["_formats"]


