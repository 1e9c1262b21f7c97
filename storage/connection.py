"""One DuckDB connection per process, holding the workspace only across a burst of calls.

Every store call runs inside ``reading()`` or ``writing()``: take the workspace lock
(shared or exclusive), attach the database file if it is not attached yet, run one
transaction. The lock (and the file) are then kept for ``idle`` seconds in case another
call follows, and released when the window passes, or at once when another process is
waiting. ``batch()`` holds one write transaction for many calls.

A write made only of buffered rows (``buffered()``: a single prediction, a pipeline's
start, a log line) takes neither: under the journal's own lock it appends one record to
the journal file (``storage/journal_file.py``) and returns, if everything it looks up is
remembered by this process; otherwise it looks it up in the tables under the shared
lock, or, not found there, holds the workspace like any write. So processes taking
turns call by call wait only for each other's appends (~0.3 ms), never for a settle,
a reader, or another process's idle window.

Two locks, always taken in this order: the workspace's, then the journal's. A write
holds both for its whole call (nobody appends while it settles the journal, appends
itself, or deletes rows that an append may have looked up); a settle holds the
workspace's, and the journal's only for the moment it replaces the file, if nobody is
appending then; an append holds the journal's alone and waits for nothing else.

Why ATTACH/DETACH on a kept in-memory DuckDB rather than connect/close: creating a DuckDB
instance costs 17-25 ms here (building its catalog of built-in functions), and every
hand-over between processes paid it twice. Attaching the file to an instance that stays
alive costs ~2.5 ms and detaching ~1 ms; DETACH closes the file and frees DuckDB's own
file lock, so the next process can open it.

Work may be left for later: ``pending`` rows buffered in memory for the current
transaction (flushed before any other statement and before commit), and committed
records waiting in the journal (``settle``d into their final tables before any call that
is not itself a journal write, before a reader reads, by a background thread once the
journal is long or the process has been quiet for its idle window (``storage/settler.py``),
and when the store is released or closed).

Threads of one process are serialised by a re-entrant mutex, because DuckDB 2 refuses
concurrent calls on one connection; a ``batch()`` holds that mutex for its whole body.
A journal-only write needs no DuckDB: it runs beside them, under the journal mutex.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator

import duckdb

from .appends import HAND_OVER_JOURNAL_BYTES, SETTLE_JOURNAL_BYTES, AppendsMixin, NeedsDatabase
from .errors import WorkspaceCorruptError
from .locking import Mode, WorkspaceLock
from .settler import Settler

__all__ = ["Connector", "NeedsDatabase", "HAND_OVER_JOURNAL_BYTES", "SETTLE_JOURNAL_BYTES"]

_LEAKED_CONNECTIONS: list = []  # inherited across fork: never closed by the child
_OPEN: "weakref.WeakSet[Connector]" = weakref.WeakSet()
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


class _CallState(threading.local):
    """What belongs to one thread's call: its transaction's buffered operations and
    caches. A journal-only write (under the journal's lock) and a call holding the
    database (under the connector's mutex) may run at once in two threads."""

    def __init__(self) -> None:
        self.pending = False  # operations are buffered in `ops`
        self.ops: list = []
        self.txn_cache: dict = {}  # facts valid for the current transaction only
        self.after_commit: list[Callable[[], None]] = []
        self.journal_only = False


def _per_thread(name: str) -> property:
    """An attribute of the calling thread's call (`Connector._tls`)."""
    return property(lambda self: getattr(self._tls, name), lambda self, value: setattr(self._tls, name, value))


class _Deferred:
    """The connection a buffered write is handed: the file is attached and the write
    transaction begun only when the write first uses it (a lookup the process has not
    remembered, a settle). Used only under the connector's mutex, inside the call."""

    __slots__ = ("_connector",)

    def __init__(self, connector: "Connector") -> None:
        self._connector = connector

    def __getattr__(self, name: str):
        return getattr(self._connector.transaction(), name)


class Connector(AppendsMixin):
    def __init__(self, db_path: Path, lock: WorkspaceLock, *, idle: float,
                 journal_lock: WorkspaceLock) -> None:
        self.db_path = Path(db_path)
        self.lock = lock  # the workspace: the database file and its attachment
        self.journal_lock = journal_lock  # appending to (and replacing) the journal file
        self.idle = idle
        # Lock order, always: the mutex before the journal mutex, the workspace lock
        # before the journal's. A journal-only write holds the journal's side alone and
        # waits for nothing else while it does.
        self._mutex = threading.RLock()
        self._jmutex = threading.RLock()
        self._journal_depth = 0  # calls of the thread holding `_jmutex` that hold the journal lock
        self._tls = _CallState()
        self._wake = threading.Condition(self._mutex)
        self._instance: duckdb.DuckDBPyConnection | None = None  # in-memory, kept
        self._con: duckdb.DuckDBPyConnection | None = None  # the instance, file attached
        self._mode: Mode | None = None  # the lock held; the file may not be attached yet
        # A call's transaction is open (the thread that owns the call holds the mutex) ...
        self._in_transaction = False
        self._db_transaction = False  # ... and began in DuckDB (it may still not have)
        self._deferred = _Deferred(self)
        self._active = 0  # calls under way (nested calls of a batch count too)
        self._owner: int | None = None  # the thread whose call or batch is under way
        self._last_used = 0.0
        self._reaper: threading.Thread | None = None
        _OPEN.add(self)
        self._pid = os.getpid()
        self._closed = False
        # Writes that callers buffer (storage/writes.py): applied before any other
        # statement of the same transaction runs (`flush`; None discards them), or at
        # commit, when nothing else ran, journaled as one record (`to_journal`, False if
        # they are too many for it).
        self.flush: Callable[[duckdb.DuckDBPyConnection | None], None] | None = None
        self.to_journal: Callable[[], bool] = lambda: False
        # Facts valid while the workspace lock is held (the attachment's appenders; the
        # direction of metrics): no other process can change the database meanwhile.
        self.conn_cache: dict = {}
        # The remembered rows (existence and never-changing columns), shared by both
        # kinds of call. Rows are only ever added, but for deletions: each bumps a
        # counter in `.nirsflow/rows-epoch` (holding both locks), read as either lock is
        # taken (~20 us); a new count forgets them all. Looking a pipeline up again cost
        # ~1.4 ms of each turn of processes taking turns.
        self.rows: dict = {}
        self._epoch_path = self.db_path.parent / ".nirsflow" / "rows-epoch"
        self._rows_epoch = -1
        self._appended = False  # this process made journal-only writes (settled at close)
        self._settler = Settler(self._settle_if_free, lambda: self.idle)
        # Committed records waiting in the journal: `unsettled()` says whether there are
        # any, `settle(con)` moves them into place, `journal_length()` is the bytes of
        # records not yet applied (past the noted applied offset). `journal` is what this
        # process knows, for one call: False (settled), True (it journaled under the
        # workspace lock: settled when it lets go), or None (unknown).
        self.unsettled: Callable[[], bool] | None = None
        self.settle: Callable[[duckdb.DuckDBPyConnection], None] | None = None
        self.journal_length: Callable[..., int] | None = None
        self.journal_size: Callable[[], int] | None = None  # the file's, applied records included
        self.journal: bool | None = None
        # The operations of the journal's records from some point on, in commit order,
        # while this process knows the journal holds nothing else after that point: it
        # wrote every record since (each appended where the last one ended). A settle
        # then needs no read-back: reading and decoding a grid's journal was ~0.5 ms a
        # pipeline. `journal_tail` is (generation, end) of the file after the last of
        # them. None: not known. Guarded by the journal mutex.
        self.journal_ops: list | None = None
        self.journal_tail: tuple[bytes, int] | None = None
        self._journal_ops_bytes = 0

    # The calling thread's call (see _CallState)
    pending = _per_thread("pending")
    ops = _per_thread("ops")
    txn_cache = _per_thread("txn_cache")
    _after_commit = _per_thread("after_commit")

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

    def batch_connection(self):
        """The open write transaction's connection (attached when first used) if the
        calling thread is inside a ``batch()`` of this store, else None. A buffered write
        made there needs none of a call's machinery (lock, transaction, settling), and
        skipping it is a fifth of the cost of a prediction saved in a batch."""
        if self._active and self._owner == threading.get_ident() and self._mode == "exclusive":
            return self._deferred
        return None

    def transaction(self) -> duckdb.DuckDBPyConnection:
        """The file attached and the call's transaction begun in DuckDB (inside a call)."""
        con = self._attached()
        if self._in_transaction and not self._db_transaction:
            # marked before BEGIN runs: an exception that lands right after it (a signal
            # handler's) must still roll the transaction back
            self._db_transaction = True
            con.execute("BEGIN TRANSACTION")
        return con

    def _attached(self) -> duckdb.DuckDBPyConnection:
        """The file attached, in the mode of the lock held."""
        if self._con is None:
            self._con = self._attach(self._mode)
        return self._con

    @contextmanager
    def batch(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write transaction for every call made inside the block (re-entrant)."""
        with self._call("exclusive", buffered=True) as con:
            yield con

    @property
    def is_open(self) -> bool:
        """Whether this process holds the workspace (its lock; the file may be attached)."""
        return self._mode is not None

    @property
    def writable(self) -> bool:
        """Whether a write transaction is open (on the calling thread's call)."""
        return (self._mode == "exclusive" and self._in_transaction and self._owner == threading.get_ident()
                and not self._tls.journal_only)

    def release(self) -> None:
        """Close the connection and free the lock now (no call may be under way)."""
        with self._mutex:
            if self._active:
                raise RuntimeError("cannot release the workspace inside a call or batch")
            self._settle_own_appends()
            self._disconnect()

    def close(self) -> None:
        self._settler.stop()
        with self._mutex:
            self._closed = True
            if not self._active:
                try:
                    self._settle_own_appends()
                    self._disconnect()
                finally:
                    instance, self._instance = self._instance, None
                    if instance is not None and os.getpid() == self._pid:
                        instance.close()
            self._wake.notify_all()

    # -- the call --------------------------------------------------------------
    @contextmanager
    def _call(self, mode: Mode, buffered: bool = False,
              settled: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """A call under the workspace lock (`settled` False: a read that may find the
        journal not yet applied, for lookups of rows that are never changed)."""
        with self._mutex:
            self._check_fork()
            self._closed = False
            outermost = self._active == 0
            if outermost:
                if self.journal is False:
                    # journal-only writes append without the workspace lock: "settled"
                    # holds for one call (that holds the journal's lock too), not a burst
                    self.journal = None
                # a buffered write attaches the file only if it uses the connection
                self._connect(mode, attach=not buffered, settled=settled)
                self._owner = threading.get_ident()
            elif mode == "exclusive" and self._mode == "shared":
                raise RuntimeError("a write cannot start inside a read of the same workspace")
            self._active += 1
            try:
                # A write holds the journal's lock as well, for the whole call: nobody
                # appends while it settles, appends itself, or deletes rows that an
                # append may have looked up.
                with self.journal_held() if outermost and self._mode == "exclusive" else nullcontext():
                    with self._transaction(buffered) as con:
                        yield con
            finally:
                self._active -= 1
                if outermost:
                    self._owner = None
                    self._after_call()

    @contextmanager
    def _transaction(self, buffered: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        """The call's transaction (the one already open, inside a batch)."""
        began = False
        try:
            if not self._in_transaction:
                self._in_transaction = began = True
                self._db_transaction = False
                self.txn_cache = {}
            if buffered:
                con = self._deferred
                if began and self._journal_is_long():
                    self.settle_in_transaction(self.transaction())
            else:
                # a statement of its own: the journal (once per transaction) and what
                # this transaction buffered go to their tables first, in that order
                con = self.transaction()
                self.txn_cache["direct"] = True
                if (self._mode == "exclusive" and self.settle is not None and not self.txn_cache.get("settled")
                        and self.journal_may_have_records()):
                    self.settle_in_transaction(con)
                elif self.pending:
                    self._flush(con)
            yield con
            if began:
                if self.pending:
                    self.pending = False
                    if not self.txn_cache.get("direct") and self.to_journal():
                        self.journal = True
                    else:
                        self.flush(self.transaction())
                if self._db_transaction:
                    self._commit(self._con)
                self._in_transaction = False
                if self.txn_cache.get("settled"):
                    self.journal = self.journal or False  # unless a journal write followed
                elif "journal_ops" in self.txn_cache:
                    self._journaled(*self.txn_cache["journal_ops"])
                self._run_after_commit()
        except BaseException:
            if began:
                self._drop_pending()
                self.journal = None  # a settle or journal write may have been undone
                self.known_journal(None)
                self._after_commit = []
                # what this transaction taught the caches may be rolled back with it
                self.conn_cache = {k: v for k, v in self.conn_cache.items() if k == "appenders"}
                self.rows.clear()
            if began and self._in_transaction:
                self._in_transaction = False
                if self._db_transaction:
                    self._db_transaction = False
                    _rollback(self._con)
            raise

    def journal_may_have_records(self) -> bool:
        """Whether the journal may hold records not yet in the tables (a stat)."""
        return self.journal is not False and self.unsettled is not None and self.unsettled()

    def settle_in_transaction(self, con: duckdb.DuckDBPyConnection) -> None:
        """Apply the journal, then what this transaction buffered, inside the open write
        transaction (before a statement of its own, or after a lookup missed)."""
        if self._tls.journal_only:
            raise NeedsDatabase("settle")
        self.txn_cache["direct"] = self.txn_cache["settled"] = True
        self.journal = None  # until this transaction commits
        self.pending = False
        self.settle(con)

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run `action` once the current transaction commits, still under the lock
        (database first, files after: gc's deletions use it)."""
        self._after_commit.append(action)

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
        self._in_transaction = self._db_transaction = False

    def _connect(self, mode: Mode, attach: bool = True, settled: bool = True) -> None:
        if self._mode is None or (self._mode != mode and self._mode != "exclusive"):
            self._disconnect()  # a shared holder that now needs to write starts over
            try:
                self.lock.acquire(mode)
            except BaseException:
                # an exception that lands once the flock is taken (a signal handler's)
                # must not leave it held by nobody
                self.lock.release()
                raise
            # From here until the call is under way, any exception (a signal handler's
            # included, wherever it lands) lets the file and the lock go again, or the
            # next call would find the lock "already held" by nobody.
            self._mode = mode
            try:
                self._sync_rows()
                self.conn_cache = {}
                self.journal = None
                # what it knows of the journal holds while it holds the workspace: only
                # a holder settles and replaces the file (appends are checked one by one)
                self.known_journal(None)
            except BaseException:
                self._let_go()
                raise
        try:
            if settled and self._mode == "shared" and self.journal is None and self.unsettled is not None:
                if self.unsettled():
                    # records a writer left in the journal (handed over short, or killed):
                    # a read must see them, and a read-only attachment cannot move them,
                    # so this burst writes
                    self._disconnect()
                    self._connect("exclusive", attach)
                    return
                self.journal = False
            if attach:
                self._attached()
        except BaseException:
            if self._mode is not None and not self._active:
                self._let_go()
            raise

    def _let_go(self) -> None:
        """Detach (rolling back) and free the lock at once, settling nothing."""
        con, self._con, self._mode = self._con, None, None
        self._in_transaction = self._db_transaction = False
        self.conn_cache = {}
        self.rows.clear()
        try:
            if con is not None:
                self._drop_attachment(con)
        finally:
            self.lock.release()

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
            # The store checkpoints itself before a detach, when the WAL holds anything
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
        """Free the lock, detaching the file if it is attached, the journal settled first:
        always when this process goes idle, and on a hand-over once the journal is long.
        A short journal is left to the next writer, who only appends to it (a reader
        that finds one takes the write lock and settles it): a settle attaches the file
        and checkpoints, most of a turn's cost when processes take turns call by call."""
        if self._mode is None:
            return
        settle_error: Exception | None = None
        if self._mode == "exclusive" and not self._in_transaction:
            try:
                # what this process journaled under the lock (what it appended alone is
                # the settler's)
                if self.journal and not (handing_over and self._journal_is_short()):
                    self._settle_now()
                # the next process to attach would replay what the WAL holds
                if self._con is not None and self._wal_size() > 0:
                    self._con.execute("CHECKPOINT")
            except Exception as exc:  # noqa: BLE001 - raised below, once the file is free
                settle_error = exc
        con, rollback = self._con, self._in_transaction and self._db_transaction
        if self._in_transaction:
            self.rows.clear()  # it may have taught them rows it rolls back
        self.conn_cache = {}  # appenders die with the attachment
        self._con, self._mode, self._in_transaction, self._db_transaction = None, None, False, False
        try:
            if con is not None:
                self._detach(con, rollback)
        finally:
            self.lock.release()
        if settle_error is not None:
            # nothing is lost: the records stay committed in the journal, and the next
            # write (of this process or another) settles them
            raise settle_error

    def _wal_size(self) -> int:
        try:
            return os.path.getsize(f"{self.db_path}.wal")
        except FileNotFoundError:
            return 0

    def _settle_now(self) -> None:
        con = self._attached()
        self._in_transaction = self._db_transaction = True
        self.txn_cache = {}
        try:
            con.execute("BEGIN TRANSACTION")
            self.settle(con)
            self._commit(con)
        except BaseException:
            self._in_transaction = self._db_transaction = False
            self._after_commit = []
            self.known_journal(None)
            self._drop_pending()
            _rollback(con)
            raise
        self.journal = False
        self._run_after_commit()

    def _detach(self, con: duckdb.DuckDBPyConnection, rollback: bool) -> None:
        try:
            if rollback:
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
                while self._mode is not None and os.getpid() == self._pid:
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
        """Rows were deleted in the current transaction (which holds both locks): drop
        what this process remembers, and make every other process drop its remembered
        rows as it next takes either lock. (A rollback after this only costs the others
        a few lookups.)"""
        self.rows.clear()
        self._rows_epoch = max(self._read_epoch(), 0) + 1
        self._epoch_path.parent.mkdir(parents=True, exist_ok=True)
        self._epoch_path.write_text(str(self._rows_epoch))

    def _sync_rows(self) -> None:
        """Forget the remembered rows if some process deleted rows since (a lock is held)."""
        epoch = self._read_epoch()
        if epoch != self._rows_epoch or epoch < 0:
            self.rows.clear()
        self._rows_epoch = epoch

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
        for lock in (self.lock, self.journal_lock):
            forget = getattr(lock, "forget_after_fork", None)
            if forget:
                forget()
        self._instance, self._con, self._mode, self._in_transaction, self._active = None, None, None, False, 0
        self._db_transaction = False
        self.rows, self._rows_epoch = {}, -1
        self._mutex = threading.RLock()
        self._jmutex = threading.RLock()
        self._journal_depth = 0
        self._tls = _CallState()
        self._wake = threading.Condition(self._mutex)
        self._settler.after_fork()
        self._appended = False
        self._reaper, self._pid = None, os.getpid()
