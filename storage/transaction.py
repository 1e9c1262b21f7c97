"""What a part of the store works with: one call's ``Transaction``, the ``Holding`` it runs
under (what is true while this process holds the workspace lock), and the rows this
process remembers (``RememberedRows``).

The connector (``storage/connection.py``, where the invariants are written) begins,
commits and rolls back transactions; a part runs statements through one, looks rows up,
and buffers new rows and completions as operations (``storage/operations.py``) for the
connector to journal or apply. A transaction made without the database (a single write
appended to the journal alone) answers lookups from memory only, and raises
``NeedsDatabase`` for anything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import duckdb

from . import journal
from .base import first
from .errors import NotFoundError
from .journal import JournalFile
from .locking import Mode
from .operations import Appenders, Op, apply


class NeedsDatabase(Exception):
    """A write tried on the journal alone needed the database (a lookup this process does
    not remember, a settle, more than one record takes): it is made again, holding the
    workspace."""


class RememberedRows:
    """Rows this process has looked up or written: their existence, and columns that never
    change. Kept across attachments, since only a deletion can make one wrong: every
    deletion (made holding both locks) bumps a counter in ``.nirsflow/rows-epoch``, read as
    either lock is taken (~20 us); a new count forgets them all. (Looking a pipeline up
    again cost ~1.4 ms of every turn of processes taking turns.)"""

    def __init__(self, epoch_path: Path) -> None:
        self.epoch_path = Path(epoch_path)
        self.known: dict = {}
        self._epoch = -1

    def sync(self) -> None:
        """A lock was just taken: forget everything if some process deleted rows since."""
        epoch = self._read_epoch()
        if epoch != self._epoch or epoch < 0:
            self.known.clear()
        self._epoch = epoch

    def forget_everywhere(self) -> None:
        """Rows were deleted (both locks held): this process and every other forget."""
        self.known.clear()
        self._epoch = max(self._read_epoch(), 0) + 1
        self.epoch_path.parent.mkdir(parents=True, exist_ok=True)
        self.epoch_path.write_text(str(self._epoch))

    def _read_epoch(self) -> int:
        try:
            return int(self.epoch_path.read_text())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError):
            return -1  # unreadable: remember nothing across attachments


@dataclass
class Holding:
    """What is true while this process holds the workspace lock (see the invariants)."""

    mode: Mode
    con: duckdb.DuckDBPyConnection | None = None  # the kept instance, the file attached in `mode`
    appenders: Appenders = field(default_factory=Appenders)
    directions: dict = field(default_factory=dict)  # which metric the filtered predictions hold


class Transaction:
    """One call's (or one batch's) transaction, handed to the parts of the store.

    Statements run through ``execute``/``sql``; new rows and completions are
    ``buffer``ed as operations. ``writable``: the exclusive lock is held (a read inside a
    burst of writes runs in a writable transaction too), or the write goes to the journal
    alone (``holding`` None: no database at all)."""

    def __init__(self, holding: Holding | None, rows: RememberedRows, journal_file: JournalFile,
                 workspace: Path) -> None:
        self.holding = holding
        self.rows = rows
        self.journal = journal_file
        self.workspace = workspace  # for messages
        self.writable = holding is None or holding.mode == "exclusive"
        self.ops: list[Op] = []
        self.direct = False  # a statement of its own ran: the operations are applied, not journaled
        self.settled = False  # the journal was applied in this transaction (reset it once committed)
        self.begun = False  # BEGIN was sent (so a failure must roll back)
        self.after: list[Callable[[], None]] = []

    def _database(self) -> duckdb.DuckDBPyConnection:
        if self.holding is None:
            raise NeedsDatabase("this write needs the database")
        return self.holding.con

    # -- statements --------------------------------------------------------------------
    def execute(self, sql: str, params: Any = None) -> duckdb.DuckDBPyConnection:
        return self._database().execute(sql, params)

    def sql(self, sql: str, params: Any = None) -> duckdb.DuckDBPyRelation:
        return self._database().sql(sql, params=params or None)

    # -- buffered writes ---------------------------------------------------------------
    def buffer(self, *ops: Op) -> None:
        assert self.writable, "operations are buffered only in a write transaction"
        self.ops.extend(ops)

    def catch_up(self) -> None:
        """Bring the tables up to date for a statement of this transaction: the journal's
        records (if any, once per transaction), then the operations buffered so far."""
        assert self.writable, "only a write transaction applies operations"
        con = self._database()
        ops, self.ops = self.ops, []
        if not self.settled and self.journal.has_records():
            ops = journal.take(con, self.journal) + ops
            self.settled = True
        self.direct = True
        if ops:
            apply(con, ops, self.holding.appenders)
            self.holding.directions.clear()

    def may_lag(self) -> bool:
        """Whether rows may still wait in the journal or in this transaction's buffer."""
        return bool(self.ops) or (not self.settled and self.journal.has_records())

    # -- lookups -------------------------------------------------------------------------
    def first(self, sql: str, params: list) -> tuple | None:
        """The first row of a lookup, looked for again after catching up when the first
        look missed and the row may still wait in the journal or the buffer."""
        row = first(self.execute(sql, params))
        if row is None and self.writable and self.may_lag():
            self.catch_up()
            row = first(self.execute(sql, params))
        return row

    def require(self, table: str, key: str, value: str) -> tuple:
        """The row with this id, or NotFoundError. Runs and pipelines are remembered (their
        ids: statuses change); see ``RememberedRows``."""
        row = self.rows.known.get((table, value))
        if row is None:
            row = self.first(f"SELECT * FROM {table} WHERE {key} = ?", [value])
            if row is None:
                raise NotFoundError(table.rstrip("s"), value, self.workspace)
            if table in ("runs", "pipelines"):
                self.rows.known[(table, value)] = row[:2]
        return row

    def column_of(self, table: str, key: str, value: str, column: str) -> Any:
        """One never-changing column of the row with this id (NotFoundError if none),
        remembered like ``require``'s rows."""
        known = self.rows.known
        if (table, value, column) not in known:
            row = self.first(f"SELECT {column} FROM {table} WHERE {key} = ?", [value])
            if row is None:
                raise NotFoundError(table.rstrip("s"), value, self.workspace)
            known[(table, value, column)] = row[0]
        return known[(table, value, column)]

    def remember_row(self, table: str, value: str, row: tuple) -> None:
        """Seed ``require``'s memory with a run or pipeline this transaction has just written."""
        self.rows.known[(table, value)] = row

    def remember(self, table: str, value: str, column: str, found: Any) -> None:
        """Seed ``column_of``'s memory with a row this transaction has just written."""
        self.rows.known[(table, value, column)] = found

    def is_remembered(self, table: str, value: str, column: str) -> bool:
        return (table, value, column) in self.rows.known

    def forget_rows(self) -> None:
        """Rows were deleted: every process forgets the rows it remembers."""
        assert self.writable and self.holding is not None, "rows are deleted holding both locks"
        self.rows.forget_everywhere()
        self.holding.directions.clear()

    @property
    def directions(self) -> dict:
        """Facts about which metric filtered predictions hold, valid while the lock is held
        and forgotten when predictions change (top_predictions); a write to the journal
        alone has none."""
        return self.holding.directions if self.holding is not None else {}

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run `action` once this transaction commits, still under the lock (database
        first, files after: gc's deletions use it)."""
        self.after.append(action)
