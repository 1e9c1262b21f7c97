"""One DuckDB connection per process, holding the workspace only across a burst of calls.

Every store call runs inside ``reading()`` or ``writing()``: take the workspace lock
(shared or exclusive), attach the database file if it is not attached yet, run one
transaction. The file then stays attached for ``idle`` seconds in case another call
follows, and is detached and the lock released when the window passes, or at once when
another process is waiting. ``batch()`` holds one write transaction for many calls.

Why ATTACH/DETACH on a kept in-memory DuckDB rather than connect/close: creating a DuckDB
instance costs 17-25 ms here (building its catalog of built-in functions), and every
hand-over between processes paid it twice. Attaching the file to an instance that stays
alive costs ~2.5 ms and detaching ~1 ms; DETACH closes the file and frees DuckDB's own
file lock, so the next process can open it.

Work may be left for later: ``pending`` rows buffered in memory for the current
transaction (flushed before any other statement and before commit), and committed rows
waiting in a journal table (``settle``d into their final tables before any call that is
not itself a journal write, and before the file is handed over).

Threads of one process are serialised by a re-entrant mutex, because DuckDB 2 refuses
concurrent calls on one connection; a ``batch()`` holds that mutex for its whole body.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import duckdb

from .errors import WorkspaceCorruptError
from .locking import Mode, WorkspaceLock

_LEAKED_CONNECTIONS: list = []  # inherited across fork: never closed by the child
_OPEN: "weakref.WeakSet[Connector]" = weakref.WeakSet()
# A writer that finds the journal this long settles it before it hands the workspace over;
# a shorter one is left for the next writer. The length is the journal's, not what this
# process wrote: counted per process, the writers taking turns all reached the limit
# within a few turns of each other and settled one after another, each a few rows, each
# paying a settle's fixed cost (~8 ms) and a checkpoint (~10-20 ms): the four-process
# interleave's longest waits (80-120 ms) were such runs of settles.
HAND_OVER_JOURNAL_ROWS = 64
# The most journaled operations kept in memory for the next settle (a grid of 50
# pipelines journals ~5 MB); beyond it they are read back from the journal.
JOURNAL_OPS_KEPT_BYTES = 64 * 1024 * 1024
# DETACH checkpoints by default, and a checkpoint rewrites the last row group of every
# table written: ~2-3 ms of a ~6 ms turn when processes take turns call by call. Whoever
# attaches next replays the WAL instead, which costs ~0.7 ms per single call written to
# the 29-column tables but ~0.05 ms per journal row. So the store checkpoints before it
# detaches after anything but journal rows, and otherwise once the WAL passes this size.
JOURNAL_WAL_BYTES = 64 * 1024
_ALIAS = "workspace"  # the attached database's name; every statement runs with USE on it


@atexit.register
def _close_all() -> None:
    # Close (and so checkpoint) what is still open when the interpreter exits, rather
    # than leave the next opener a WAL to replay.
    for connector in list(_OPEN):
        if connector._pid == os.getpid():
            try:
                connector.close()
            except Exception as exc:  # noqa: BLE001 - report, never hide, at exit
                print(f"nirsflow: could not close {connector.db_path} at exit: {exc}")


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass  # the failed statement already aborted the transaction


class Connector:
    def __init__(self, db_path: Path, lock: WorkspaceLock, *, idle: float) -> None:
        self.db_path = Path(db_path)
        self.lock = lock
        self.idle = idle
        self._mutex = threading.RLock()
        self._wake = threading.Condition(self._mutex)
        self._instance: duckdb.DuckDBPyConnection | None = None  # in-memory, kept
        self._con: duckdb.DuckDBPyConnection | None = None  # the instance, file attached
        self._mode: Mode | None = None
        self._in_transaction = False
        self._active = 0  # calls under way (nested calls of a batch count too)
        self._owner: int | None = None  # the thread whose call or batch is under way
        self._last_used = 0.0
        self._reaper: threading.Thread | None = None
        _OPEN.add(self)
        self._pid = os.getpid()
        self._closed = False
        # Writes that callers buffer (storage/writes.py): applied before any other
        # statement of the same transaction runs (`flush`; None discards them), or at
        # commit, when nothing else ran, journaled as one row (`to_journal`, False if
        # they are too many for it).
        self.flush: Callable[[duckdb.DuckDBPyConnection | None], None] | None = None
        self.to_journal: Callable[[duckdb.DuckDBPyConnection], bool] = lambda con: False
        self.pending = False
        self.txn_cache: dict = {}  # facts valid for the current transaction only
        # Facts valid while this connection stays open: the lock is held all that time,
        # so no other process can change the database under it.
        self.conn_cache: dict = {}
        # The remembered rows ("rows": existence and never-changing columns) outlive an
        # attachment unless some process deleted rows meanwhile: every deletion bumps a
        # counter in `.nirsflow/rows-epoch`, read at each attach (~20 us, under the lock).
        # Looking a pipeline up again cost ~1.4 ms of each turn of processes taking turns.
        self._epoch_path = self.db_path.parent / ".nirsflow" / "rows-epoch"
        self._kept_rows: dict | None = None
        self._rows_epoch = -1
        self._checkpoint_due = False  # committed something other than journal rows
        # Committed rows waiting in a journal: `unsettled(con)` says whether there are any
        # (readable on a read-only attachment), `settle(con)` moves them into place.
        # `journal` is what this process knows: False (settled), True, or None (unknown).
        self.unsettled: Callable[[duckdb.DuckDBPyConnection], bool] | None = None
        self.settle: Callable[[duckdb.DuckDBPyConnection], None] | None = None
        self.journal: bool | None = None
        # The operations of every journal row, in commit order, while this process knows
        # the journal holds nothing else: from a settle it committed until it detaches
        # (the lock is held all that time). A settle then needs no read-back: reading and
        # decoding a grid's journal was ~0.5 ms a pipeline. None: not known.
        self.journal_ops: list | None = None
        self._journal_ops_bytes = 0
        self.journal_length: Callable[[duckdb.DuckDBPyConnection], int] | None = None  # rows in the journal
        self._after_commit: list[Callable[[], None]] = []

    # -- public --------------------------------------------------------------
    @contextmanager
    def reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._call("shared") as con:
            yield con

    @contextmanager
    def writing(self, *, buffered: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A write; ``buffered`` calls may leave rows for ``flush`` instead of executing."""
        with self._call("exclusive", buffered=buffered) as con:
            yield con

    def batch_connection(self) -> duckdb.DuckDBPyConnection | None:
        """The open write transaction's connection if the calling thread is inside a
        ``batch()`` of this store, else None. A buffered write made there needs none of
        a call's machinery (lock, transaction, settling), and skipping it is a fifth of
        the cost of a prediction saved in a batch."""
        if self._active and self._owner == threading.get_ident() and self._mode == "exclusive":
            return self._con
        return None

    @contextmanager
    def batch(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write transaction for every call made inside the block (re-entrant)."""
        with self._call("exclusive", buffered=True) as con:
            yield con

    @property
    def is_open(self) -> bool:
        return self._con is not None

    @property
    def writable(self) -> bool:
        """Whether a write transaction is open (on the calling thread's call)."""
        return self._mode == "exclusive" and self._in_transaction

    def release(self) -> None:
        """Close the connection and free the lock now (no call may be under way)."""
        with self._mutex:
            if self._active:
                raise RuntimeError("cannot release the workspace inside a call or batch")
            self._disconnect()

    def close(self) -> None:
        with self._mutex:
            self._closed = True
            if not self._active:
                try:
                    self._disconnect()
                finally:
                    instance, self._instance = self._instance, None
                    if instance is not None and os.getpid() == self._pid:
                        instance.close()
            self._wake.notify_all()

    # -- the call --------------------------------------------------------------
    @contextmanager
    def _call(self, mode: Mode, buffered: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._mutex:
            self._check_fork()
            self._closed = False
            outermost = self._active == 0
            if outermost:
                self._connect(mode)
                self._owner = threading.get_ident()
            elif mode == "exclusive" and self._mode == "shared":
                raise RuntimeError("a write cannot start inside a read of the same workspace")
            con = self._con
            self._active += 1
            began = False
            try:
                if not self._in_transaction:
                    # marked before BEGIN runs: an exception that lands right after it
                    # (a signal handler's) must still roll the transaction back
                    self._in_transaction = began = True
                    con.execute("BEGIN TRANSACTION")
                    self.txn_cache = {}
                if not buffered:
                    # a statement of its own: the journal (once per transaction) and what
                    # this transaction buffered go to their tables first, in that order
                    self.txn_cache["direct"] = True
                    if (self.journal is not False and self._mode == "exclusive"
                            and self.settle is not None and not self.txn_cache.get("settled")):
                        self.settle_in_transaction(con)
                    elif self.pending:
                        self._flush(con)
                yield con
                if began:
                    if self.pending:
                        self.pending = False
                        if not self.txn_cache.get("direct") and self.to_journal(con):
                            self.txn_cache["journal_only"] = True
                            self.journal = True
                        else:
                            self.flush(con)
                    self._commit(con)
                    settled = self.txn_cache.get("settled", False)
                    if settled:
                        self.journal = self.journal or False  # unless a journal write followed
                        self._known_journal([])
                    elif "journal_ops" in self.txn_cache:
                        self._journaled(*self.txn_cache["journal_ops"])
                    if settled or (mode == "exclusive" and not self.txn_cache.get("journal_only")):
                        self._checkpoint_due = True
                    self._run_after_commit()
            except BaseException:
                if began:
                    self._drop_pending()
                    self.journal = None  # a settle or journal write may have been undone
                    self.journal_ops = None
                    self._after_commit = []
                    # what this transaction taught the cache may be rolled back with it
                    self.conn_cache = {k: v for k, v in self.conn_cache.items() if k == "appenders"}
                if began and self._in_transaction:
                    self._in_transaction = False
                    _rollback(con)
                raise
            finally:
                self._active -= 1
                if outermost:
                    self._owner = None
                    self._after_call()

    def settle_in_transaction(self, con: duckdb.DuckDBPyConnection) -> None:
        """Apply the journal, then what this transaction buffered, inside the open write
        transaction (before a statement of its own, or after a lookup missed)."""
        self.txn_cache["direct"] = self.txn_cache["settled"] = True
        self.journal = None  # until this transaction commits
        self.pending = False
        self.settle(con)

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run `action` once the current transaction commits, still under the lock
        (database first, files after: gc's deletions use it)."""
        self._after_commit.append(action)

    def _known_journal(self, ops: list | None) -> None:
        self.journal_ops, self._journal_ops_bytes = ops, 0

    def _journaled(self, ops: list, size: int) -> None:
        """A journal row of `ops` (`size` bytes encoded) committed."""
        if self.journal_ops is None:
            return
        self._journal_ops_bytes += size
        if self._journal_ops_bytes > JOURNAL_OPS_KEPT_BYTES:
            self._known_journal(None)  # read back at the settle instead of held here
        else:
            self.journal_ops.append(ops)

    def _run_after_commit(self) -> None:
        actions, self._after_commit = self._after_commit, []
        for action in actions:
            action()

    @contextmanager
    def exclusive_file(self) -> Iterator[None]:
        """The exclusive lock with no connection open, for work that replaces the
        database file itself (vacuum)."""
        with self._mutex:
            self._check_fork()
            if self._active:
                raise RuntimeError("cannot replace the database inside a call or batch")
            self._disconnect()
            self.lock.acquire("exclusive")
            try:
                yield
            finally:
                self.lock.release()

    def _flush(self, con: duckdb.DuckDBPyConnection) -> None:
        self.pending = False
        self.flush(con)

    def _drop_pending(self) -> None:
        self.pending = False
        if self.flush is not None:
            self.flush(None)  # None: discard what was buffered, the transaction is void

    def _commit(self, con: duckdb.DuckDBPyConnection) -> None:
        # Still in the transaction until COMMIT returns: a COMMIT interrupted by a signal
        # (SIGTERM: Prefect's handler raises while DuckDB runs) leaves it aborted, and
        # only the rollback of the failure path frees the connection for the crash hook's
        # own write. Marked done first, that rollback was skipped and the hook's BEGIN
        # failed ("Current transaction is aborted"): a run left `running`, not `crashed`.
        con.execute("COMMIT")
        self._in_transaction = False

    def _connect(self, mode: Mode) -> None:
        if self._con is None or (self._mode != mode and self._mode != "exclusive"):
            self._disconnect()  # a shared holder that now needs to write starts over
            self.lock.acquire(mode)
            # Until the attachment is recorded, any exception (a signal handler's included,
            # wherever it lands) detaches it and frees the lock, or the next call would
            # find the lock "already held" by nobody.
            try:
                con = self._attach(mode)
                try:
                    epoch = self._read_epoch()
                    kept = self._kept_rows if epoch == self._rows_epoch and epoch >= 0 else None
                    self.conn_cache = {"rows": kept} if kept else {}
                    self._rows_epoch, self._kept_rows = epoch, None
                    self._con, self._mode, self.journal = con, mode, None
                    self._known_journal(None)
                except BaseException:
                    self._con = self._mode = None
                    self._drop_attachment(con)
                    raise
            except BaseException:
                self.lock.release()
                raise
        if self._mode == "shared" and self.journal is None and self.unsettled is not None:
            try:
                leftovers = self.unsettled(self._con)
            except BaseException:
                self._disconnect()
                raise
            if leftovers:
                # rows a killed writer left in the journal: a read must see them, and a
                # read-only attachment cannot move them, so this burst writes
                self._disconnect()
                self._connect("exclusive")
            else:
                self.journal = False

    def _attach(self, mode: Mode) -> duckdb.DuckDBPyConnection:
        """Attach the file and make it the default database; on any failure, nothing
        stays attached."""
        con = self._attach_instance()
        options = " (READ_ONLY)" if mode == "shared" else ""
        path = str(self.db_path).replace("'", "''")
        try:
            try:
                con.execute(f"ATTACH '{path}' AS {_ALIAS}{options}")
            except duckdb.IOException:
                raise
            except duckdb.Error as exc:
                if "already attached" not in str(exc):
                    raise
                # An exception raised between two statements of an earlier attach or
                # detach of this process (a signal handler's, say) left the file
                # attached with nobody holding it: let it go, and attach again.
                con = self._drop_attachment(con)
                con.execute(f"ATTACH '{path}' AS {_ALIAS}{options}")
            con.execute(f"USE {_ALIAS}")
        except duckdb.IOException as exc:
            if "not a valid DuckDB database" in str(exc) or "Corrupt" in str(exc):
                raise WorkspaceCorruptError(f"{self.db_path} is not a readable DuckDB database: {exc}") from exc
            raise
        except BaseException:
            self._drop_attachment(con)
            raise
        return con

    def _attach_instance(self) -> duckdb.DuckDBPyConnection:
        if self._instance is None:
            self._instance = duckdb.connect(":memory:")
            # The store checkpoints itself before a detach (see JOURNAL_WAL_BYTES)
            self._instance.execute("PRAGMA disable_checkpoint_on_shutdown")
        return self._instance

    def _drop_attachment(self, con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
        """Detach the workspace if it is attached; an instance that cannot is replaced.
        Returns the instance to use."""
        try:
            con.execute("USE memory")
            con.execute(f"DETACH DATABASE IF EXISTS {_ALIAS}")
            return con
        except BaseException:
            self._instance = None
            con.close()
            return self._attach_instance()

    def _disconnect(self, handing_over: bool = False) -> None:
        """Detach and free the lock, the journal settled first: always when this process
        goes idle, and on a hand-over once the journal is long. A short journal is left
        to the next writer (a reader that finds one takes the write lock and settles it):
        a settle rewrites the 29-column tables' last row groups at the checkpoint, which
        would be most of a hand-over while processes take turns call by call."""
        con = self._con
        if con is None:
            return
        settle_error: Exception | None = None
        if self._mode == "exclusive" and not self._in_transaction:
            try:
                if self.journal and not (handing_over and self._journal_is_short(con)):
                    self._settle_now(con)
                if self._checkpoint_due or self._closed or self._wal_size() > JOURNAL_WAL_BYTES:
                    con.execute("CHECKPOINT")
                    self._checkpoint_due = False
            except Exception as exc:  # noqa: BLE001 - raised below, once the file is free
                settle_error = exc
        in_transaction = self._in_transaction
        self._con, self._mode, self._in_transaction = None, None, False
        try:
            self._detach(con, in_transaction)
        finally:
            self.lock.release()
        if settle_error is not None:
            # nothing is lost: the rows stay committed in the journal, and the next
            # write (of this process or another) settles them
            raise settle_error

    def _journal_is_short(self, con: duckdb.DuckDBPyConnection) -> bool:
        # the journal's length only (see HAND_OVER_JOURNAL_ROWS): a count of this
        # process's own rows since it last settled, kept as a shortcut, had brought the
        # runs of settles back
        return self.journal_length is None or self.journal_length(con) < HAND_OVER_JOURNAL_ROWS

    def _wal_size(self) -> int:
        try:
            return os.path.getsize(f"{self.db_path}.wal")
        except FileNotFoundError:
            return 0

    def _settle_now(self, con: duckdb.DuckDBPyConnection) -> None:
        self._in_transaction, self.txn_cache = True, {}
        try:
            con.execute("BEGIN TRANSACTION")
            self.settle(con)
            self._commit(con)
            self._checkpoint_due = True
            self._known_journal([])
        except BaseException:
            self._in_transaction = False
            self._drop_pending()
            _rollback(con)
            raise
        self.journal = False

    def _detach(self, con: duckdb.DuckDBPyConnection, in_transaction: bool) -> None:
        self._kept_rows = None if in_transaction else self.conn_cache.get("rows")
        self.conn_cache = {}  # appenders die with the attachment
        try:
            if in_transaction:
                con.execute("ROLLBACK")
            con.execute("USE memory")
            con.execute(f"DETACH {_ALIAS}")
        except BaseException:
            # An instance that cannot detach (a fatal error invalidated it) is dropped
            # whole: closing it is what frees the file for sure.
            self._instance = None
            con.close()
            raise

    def _after_call(self) -> None:
        self._last_used = time.monotonic()
        if self._closed or self.idle <= 0:
            self._disconnect()
            return
        if self.lock.others_waiting():
            self._disconnect(handing_over=True)
            return
        # The reaper clears `_reaper` itself, under the mutex, as it stops: `is_alive()`
        # alone stays True for a moment after a stopping reaper let go of the mutex, and
        # a call landing in that moment would keep its connection (and the lock) for
        # good, with nobody left to close it.
        if self._reaper is None or not self._reaper.is_alive():
            self._reaper = threading.Thread(target=self._reap, name="nirsflow-store-idle", daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        # Closes the connection once it has been idle for `idle` seconds, or as soon as
        # another process is seen waiting (checked a few times per window).
        with self._mutex:
            try:
                while self._con is not None and os.getpid() == self._pid:
                    quiet = time.monotonic() - self._last_used
                    if not self._active and quiet >= self.idle:
                        self._disconnect()
                        return
                    if not self._active and self.lock.others_waiting():
                        self._disconnect(handing_over=True)
                        return
                    self._wake.wait(timeout=max(min(self.idle - quiet, 0.005), 0.001))
            finally:
                if self._reaper is threading.current_thread():
                    self._reaper = None

    def forget_rows(self) -> None:
        """Rows were deleted in the current transaction: drop what this process remembers,
        and make every other process drop its remembered rows at its next attach. (A
        rollback after this only costs the others a few lookups.)"""
        self.conn_cache.pop("rows", None)
        self._rows_epoch = max(self._read_epoch(), 0) + 1
        self._epoch_path.parent.mkdir(parents=True, exist_ok=True)
        self._epoch_path.write_text(str(self._rows_epoch))

    def _read_epoch(self) -> int:
        try:
            return int(self._epoch_path.read_text())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError):
            return -1  # unreadable: remember nothing across attachments

    def _check_fork(self) -> None:
        # A forked child inherits the parent's connection and lock; using or closing them
        # would corrupt the parent's state, so the child forgets them and starts afresh.
        if os.getpid() == self._pid:
            return
        if self._instance is not None:
            _LEAKED_CONNECTIONS.append(self._instance)
        forget = getattr(self.lock, "forget_after_fork", None)
        if forget:
            forget()
        self._instance, self._con, self._mode, self._in_transaction, self._active = None, None, None, False, 0
        self._kept_rows, self._rows_epoch = None, -1
        self._mutex = threading.RLock()
        self._wake = threading.Condition(self._mutex)
        self._reaper, self._pid = None, os.getpid()
