"""The one way a store call reaches the database: lock, attach, one transaction, hand over.

How a write goes (the parts of the store, records.py, predictions.py, chains.py..., only
say what to write):

1. A single write made of lookups and new rows or completions (a prediction, a pipeline's
   start, a log line: ``Connector.buffered``) is tried first on the journal alone: under
   the journal's lock, with the lookups answered from what this process remembers, its
   operations (``storage/operations.py``) are appended to the journal file as one record
   (``storage/journal.py``, ~0.2 ms) without waiting for the workspace. If it needs the
   database (a lookup it does not remember), it is made again as a call that holds it.
2. Any other call (``reading``, ``writing``, ``batch``) takes the process's mutex (its
   threads take turns: DuckDB 2 refuses concurrent calls on one connection), then the
   workspace lock (``storage/locking.py``: shared to read, exclusive to write, first come
   first served; a write takes the journal's lock too), and attaches ``store.duckdb`` to
   an in-memory DuckDB this process keeps (~1.5 ms with its detach, where creating a
   DuckDB costs ~17 ms). It begins one ``Transaction`` (``storage/transaction.py``) and
   hands it to the part. At the end, operations that are all the transaction made, and not
   too many, are appended to the journal as one record; any others are applied to their
   tables in bulk. Then COMMIT.
3. The file stays attached for ``idle`` seconds, for the next call of a burst, and is
   handed over as soon as another process waits (a thread of this process looks every
   few milliseconds).

Invariants, enforced in this module:

* Lock order: the process mutex, the workspace lock, the journal mutex, the journal lock.
  A write to the journal alone takes the last two only, and waits for nothing else.
* The workspace lock guards the database file: the file is attached only while this
  process holds the lock, read-only under the shared lock, read-write under the exclusive.
  The journal lock guards the journal file: whoever appends, settles or resets it holds
  it; a call holding the workspace exclusively holds it for the whole call, so nobody
  appends while it settles, or deletes rows an append may have looked up.
* The journal's records are applied before anything reads the tables and before any other
  operation is applied: a write call settles the journal in its transaction before its
  first statement (``Transaction.catch_up``); a reader that finds records takes the
  exclusive lock to settle them. A settle applies the records and moves the settled marker
  in one transaction, and resets the file only once that committed: records are applied
  once, never twice, whatever is killed when.
* The journal is settled when a holder lets the workspace go for good (idle, release,
  close), when it hands it over with a long journal, and when a writer holding it has
  been quiet for a moment (a reader coming then finds nothing to settle); a process that
  appended alone settles what is left when it is released or closed. A short journal
  handed over is left to the next writer, who appends to it.
* What may run twice: the body of a buffered write, when its try on the journal alone
  needed the database. Bodies only look rows up and buffer operations, so running one
  again is harmless; the first try's operations are dropped. Nothing else runs twice, and
  a failed transaction is rolled back whole.
* What a process remembers: looked-up rows across attachments (``RememberedRows``, until
  any deletion); appenders and metric directions while it holds the lock (``Holding``).
  A rollback forgets what the transaction may have taught.
* An exception anywhere (a signal handler's included: Prefect raises on SIGTERM wherever
  the main thread is, inside DuckDB too) leaves the connector usable: the transaction
  rolled back, and each lock either held (the file attached) or free.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import duckdb

from . import journal
from .errors import WorkspaceCorruptError
from .journal import JournalFile
from .locking import Mode, WorkspaceLock
from .transaction import Holding, NeedsDatabase, RememberedRows, Transaction

__all__ = ["Connector", "JOURNAL_MAX_OPS", "JOURNAL_MAX_BYTES", "SETTLE_BYTES", "HAND_OVER_BYTES"]

log = logging.getLogger("nirsflow.storage")
T = TypeVar("T")

# A transaction of more operations, or a larger payload, is applied to its tables
# directly: the journal would write it twice for little gain (the per-column cost is per
# transaction, and a transaction this large already amortizes it).
JOURNAL_MAX_OPS = 512
JOURNAL_MAX_BYTES = 8 * 1024 * 1024
# A journal this long is settled by the next writer instead of appending to it, so it,
# and what a settle holds in memory, stay bounded (~2,000 single predictions).
SETTLE_BYTES = 4 * 1024 * 1024
# A journal this long is settled before the workspace is handed over; a shorter one is
# left for the next writer (~60 single predictions of 100-float arrays).
HAND_OVER_BYTES = 128 * 1024
# How often a holder that is idle looks for processes waiting for the workspace.
_WAITER_POLL = 0.005
# A writer holding the workspace, quiet this long, settles the journal: a reader coming
# later then finds nothing to settle (it would queue again for the exclusive lock, and
# settle in its own turn, which every writer then waits for).
_SETTLE_QUIET = 0.02

_ALIAS = "workspace"  # the attached database's name; every statement runs with USE on it
_LEAKED_CONNECTIONS: list = []  # inherited across fork: never closed by the child
_OPEN: "weakref.WeakSet[Connector]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # Close (settle, checkpoint) what is still open when the interpreter exits, rather
    # than leave the next opener a journal to settle and a WAL to replay.
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
        pass  # the failed statement already aborted the transaction, or none began


class Connector:
    """One DuckDB connection per store object, holding the workspace only across a burst
    of calls. Threads of a process are served one at a time; a ``batch()`` holds the
    mutex for its whole block.

    Built with its collaborators: the workspace lock and the journal lock (two
    ``WorkspaceLock``s), the journal file, and the rows this process remembers."""

    def __init__(self, db_path: Path, lock: WorkspaceLock, journal_lock: WorkspaceLock, journal_file: JournalFile,
                 rows: RememberedRows, *, idle: float) -> None:
        self.db_path = Path(db_path)
        self.workspace = self.db_path.parent
        self.lock, self.journal_lock, self.journal, self.rows = lock, journal_lock, journal_file, rows
        self.idle = idle
        self._mutex = threading.RLock()
        self._jmutex = threading.RLock()
        self._journal_depth = 0  # how deep the thread holding the journal mutex holds the journal lock
        self._wake = threading.Condition(self._mutex)
        self._instance: duckdb.DuckDBPyConnection | None = None  # in-memory, kept across attachments
        self._holding: Holding | None = None
        self._txn: Transaction | None = None  # the open transaction; its thread holds the mutex
        self._owner: int | None = None  # that thread
        self._appended = False  # this process appended to the journal alone (settled at release, close)
        self._last_used = 0.0
        self._idler: threading.Thread | None = None
        self._closed = False
        self._pid = os.getpid()
        _OPEN.add(self)

    # -- the calls -----------------------------------------------------------------------
    @contextmanager
    def reading(self) -> Iterator[Transaction]:
        with self._call("shared") as txn:
            yield txn

    @contextmanager
    def writing(self) -> Iterator[Transaction]:
        """A write that runs statements of its own (the journal is settled first)."""
        with self._call("exclusive") as txn:
            yield txn

    def buffered(self, body: Callable[[Transaction], T]) -> T:
        """`body(txn)`, a write made of lookups and buffered operations: inside this
        thread's batch it joins the batch; otherwise it is tried on the journal alone,
        then (if it needs the database) made again as a call of its own."""
        if self.in_batch():
            return body(self._txn)  # the batch's transaction: none of a call's machinery (a fifth of a prediction's cost)
        if self._owner != threading.get_ident():  # (inside this thread's read: a call says why it cannot write)
            try:
                return self._append_alone(body)
            except NeedsDatabase:
                pass  # made again below, holding the workspace: bodies only look up and buffer
        with self._call("exclusive", buffered=True) as txn:
            return body(txn)

    def in_batch(self) -> bool:
        """Whether the calling thread is inside a write call or batch of this connector."""
        txn = self._txn
        return txn is not None and self._owner == threading.get_ident() and txn.writable

    @contextmanager
    def batch(self) -> Iterator[Transaction]:
        """One write transaction for every call made inside the block (re-entrant)."""
        with self._call("exclusive", buffered=True) as txn:
            yield txn

    @contextmanager
    def opening(self, mode: Mode) -> Iterator[Transaction]:
        """A call for the schema alone (storage/schema.py): the settled marker may not
        exist yet, so the journal is neither looked at nor settled."""
        with self._call(mode, buffered=True, journal_ready=False) as txn:
            yield txn

    def _append_alone(self, body: Callable[[Transaction], T]) -> T:
        """`body` on the journal alone: its operations appended as one record under the
        journal's lock, never waiting for the workspace (NeedsDatabase if it must)."""
        if os.getpid() != self._pid:
            with self._mutex:
                self._check_fork()
        if self.journal.size() > SETTLE_BYTES:
            raise NeedsDatabase("the journal is long: settle it first")
        with self._journal_held():
            txn = Transaction(None, self.rows, self.journal, self.workspace)
            try:
                result = body(txn)
                if txn.ops:
                    payload = journal.encode(txn.ops)
                    if len(txn.ops) > JOURNAL_MAX_OPS or len(payload) > JOURNAL_MAX_BYTES:
                        raise NeedsDatabase("too many operations for one journal record")
                    self.journal.append(payload)
            except NeedsDatabase:
                raise
            except BaseException:
                self.rows.known.clear()  # what the body remembered may not have landed
                raise
        self._appended = True
        self._last_used = time.monotonic()  # not quiet: no background settle while appends go on
        return result

    @contextmanager
    def _journal_held(self) -> Iterator[None]:
        """The journal's lock for this thread (re-entrant), the remembered rows synced."""
        with self._jmutex:
            if self._journal_depth == 0:
                try:
                    self.journal_lock.acquire("exclusive")
                    self.rows.sync()
                except BaseException:
                    self.journal_lock.release()  # taken, then interrupted: never held by nobody
                    raise
            self._journal_depth += 1
            try:
                yield
            finally:
                self._journal_depth -= 1
                if self._journal_depth == 0:
                    self.journal_lock.release()

    @contextmanager
    def _call(self, mode: Mode, buffered: bool = False, journal_ready: bool = True) -> Iterator[Transaction]:
        with self._mutex:
            self._check_fork()
            self._closed = False
            txn = self._txn
            if txn is not None:  # a call inside this thread's call or batch
                if mode == "exclusive" and not txn.writable:
                    raise RuntimeError("a write cannot start inside a read of the same workspace")
                if not buffered and txn.writable and txn.may_lag():
                    txn.catch_up()
                yield txn
                return
            try:
                holding = self._hold(mode, journal_ready)
                writes = holding.mode == "exclusive" and journal_ready
                with self._journal_held() if writes else nullcontext():
                    txn = self._txn = Transaction(holding, self.rows, self.journal, self.workspace)
                    self._owner = threading.get_ident()
                    txn.begun = True  # marked first: an exception right after BEGIN must still roll it back
                    holding.con.execute("BEGIN TRANSACTION")
                    if not buffered and writes:
                        txn.catch_up()
                    yield txn
                    self._commit(txn, journal_ready)
            except BaseException:
                if txn is not None:
                    self._abort(txn)
                raise
            finally:
                self._txn = self._owner = None
                self._after_call()

    def _commit(self, txn: Transaction, journal_ready: bool) -> None:
        holding, payload = txn.holding, None
        if txn.ops:
            if (journal_ready and not txn.direct and len(txn.ops) <= JOURNAL_MAX_OPS
                    and self.journal.size() < SETTLE_BYTES):
                payload = journal.encode(txn.ops)
            if payload is None or len(payload) > JOURNAL_MAX_BYTES:
                payload = None
                txn.catch_up()
        # Still in the transaction until COMMIT returns: a COMMIT interrupted by a signal
        # leaves it aborted, and only the failure path's rollback frees the connection for
        # the next call (a crashed flow's hook among them).
        holding.con.execute("COMMIT")
        txn.begun = False
        if payload is not None:
            # the transaction wrote nothing of its own: its operations are its commit
            self.journal.append(payload)
        if txn.settled:
            self.journal.reset()  # applied, and the marker says so: a new, empty generation
        actions, txn.after = txn.after, []
        for action in actions:
            action()

    def _abort(self, txn: Transaction, *, taught: bool = True) -> None:
        if taught:
            self.rows.known.clear()  # what the transaction taught may be rolled back with it
        txn.holding.directions.clear()
        txn.after = []
        try:
            txn.holding.appenders.clear()
        finally:
            if txn.begun:
                txn.begun = False
                _rollback(txn.holding.con)

    # -- holding the workspace -------------------------------------------------------------
    def _hold(self, mode: Mode, journal_ready: bool) -> Holding:
        """The workspace held in `mode` (or exclusively) with the file attached; a reader
        that finds records in the journal holds it exclusively, to settle them."""
        holding = self._holding
        if holding is None or (holding.mode == "shared" and mode == "exclusive"):
            if holding is not None:
                self._let_go()  # a reader that now writes starts over, in the queue for the exclusive lock
            holding = self._take(mode)
        if journal_ready and holding.mode == "shared" and self.journal.has_records():
            self._let_go()
            holding = self._take("exclusive")
        return holding

    def _take(self, mode: Mode) -> Holding:
        try:
            self.lock.acquire(mode)
            holding = self._holding = Holding(mode)
            self.rows.sync()
            holding.con = self._attach(mode)
        except BaseException:
            # taken, then interrupted (a signal handler's exception, an attach that
            # failed): never left held by nobody
            self._let_go()
            raise
        return holding

    def _attach(self, mode: Mode) -> duckdb.DuckDBPyConnection:
        """Attach the file and make it the default database; on any failure, nothing
        stays attached."""
        con = self._kept_instance()
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
                # An exception between two statements of an earlier attach or detach (a
                # signal handler's) left the file attached with nobody holding it: let it
                # go, and attach again.
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

    def _kept_instance(self) -> duckdb.DuckDBPyConnection:
        if self._instance is None:
            self._instance = duckdb.connect(":memory:")
            # the store checkpoints before it detaches, when the WAL holds anything
            self._instance.execute("PRAGMA disable_checkpoint_on_shutdown")
        return self._instance

    def _drop_attachment(self, con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
        """Detach the workspace if it is attached; an instance that cannot is replaced
        (closing it is what frees the file for sure). Returns the instance to use."""
        try:
            con.execute("USE memory")
            con.execute(f"DETACH DATABASE IF EXISTS {_ALIAS}")
            return con
        except BaseException:
            self._instance = None
            con.close()
            return self._kept_instance()

    def _let_go(self) -> None:
        """Detach (no transaction is open) and free the lock, settling nothing."""
        holding, self._holding = self._holding, None
        try:
            if holding is not None and holding.con is not None:
                self._drop_attachment(holding.con)
        finally:
            self.lock.release()

    def _let_go_settled(self, *, handing_over: bool = False) -> None:
        """Let the workspace go: a writer settles the journal first (on a hand-over only
        when it is long) and checkpoints, so the next process has no WAL to replay. A
        settle that fails is raised once the file is free: its records stay journaled,
        and the next writer or reader settles them (or says why it cannot)."""
        assert self._txn is None, "the workspace is let go between calls, never inside one"
        holding = self._holding
        if holding is None:
            return
        error: Exception | None = None
        if holding.mode == "exclusive" and holding.con is not None:
            try:
                size = self.journal.size()
                if self.journal.has_records() and not (handing_over and size < HAND_OVER_BYTES):
                    self._settle(holding)
                if self._wal_bytes() > 0:
                    holding.con.execute("CHECKPOINT")
            except Exception as exc:  # noqa: BLE001 - raised below, once the file is free
                error = exc
        self._let_go()
        if error is not None:
            raise error

    def _let_go_quietly(self, *, handing_over: bool) -> None:
        """``_let_go_settled`` between calls (an idle window passed, a waiter came): the
        calls themselves are done, so a failed settle is logged, not raised into one."""
        try:
            self._let_go_settled(handing_over=handing_over)
        except Exception as exc:  # noqa: BLE001 - the records stay journaled; the next settle reports it
            log.warning("nirsflow: settling the journal of %s before letting it go failed (its records stay in "
                        "the journal; the next call settles them, or says why it cannot): %s", self.workspace, exc)

    def _settle(self, holding: Holding) -> None:
        """The journal applied, in a transaction of its own (between calls)."""
        assert holding.mode == "exclusive", "only the exclusive holder settles"
        with self._journal_held():
            txn = Transaction(holding, self.rows, self.journal, self.workspace)
            try:
                txn.begun = True
                holding.con.execute("BEGIN TRANSACTION")
                txn.catch_up()
                self._commit(txn, journal_ready=True)
            except BaseException:
                self._abort(txn, taught=False)  # a settle only applies what is journaled: the rows stay
                raise

    def _settle_own_appends(self) -> None:
        """Before this process lets the workspace go for good (release, close): what it
        appended alone, if still in the journal, lands in the tables."""
        if self._appended and self.journal.has_records() and os.getpid() == self._pid:
            self._hold("exclusive", journal_ready=True)
        self._appended = False

    def _wal_bytes(self) -> int:
        try:
            return os.path.getsize(f"{self.db_path}.wal")
        except FileNotFoundError:
            return 0

    # -- between calls ------------------------------------------------------------------
    def _after_call(self) -> None:
        self._last_used = time.monotonic()
        if self._holding is None:
            return
        if self._closed or self.idle <= 0:
            self._let_go_quietly(handing_over=False)
        elif self.lock.others_waiting():
            self._let_go_quietly(handing_over=True)
        elif self._idler is None:
            self._idler = threading.Thread(target=self._watch_idle, name="nirsflow-store-idle", daemon=True)
            self._idler.start()
        else:
            self._wake.notify()

    def _watch_idle(self) -> None:
        """The idle window: let the workspace go once this process has not used it for
        `idle` seconds, or as soon as another process waits for it; settle the journal
        once quiet for a moment. One thread per connector, for as long as it is open (so
        no call can land while it stops)."""
        with self._mutex:
            try:
                while not self._closed and os.getpid() == self._pid:
                    holding = self._holding
                    if holding is None:
                        self._wake.wait()
                        continue
                    quiet = time.monotonic() - self._last_used
                    if quiet >= self.idle:
                        self._let_go_quietly(handing_over=False)
                    elif self.lock.others_waiting():
                        self._let_go_quietly(handing_over=True)
                    elif quiet >= _SETTLE_QUIET and holding.mode == "exclusive" and self.journal.has_records():
                        try:
                            self._settle(holding)
                        except Exception as exc:  # noqa: BLE001 - the records stay; the next settle reports it
                            log.warning("nirsflow: settling the journal of %s failed (its records stay; the next "
                                        "call settles them, or says why it cannot): %s", self.workspace, exc)
                            self._let_go_quietly(handing_over=False)
                    else:
                        self._wake.wait(timeout=min(self.idle - quiet, _WAITER_POLL))
            finally:
                if self._idler is threading.current_thread():
                    self._idler = None

    # -- the life of the connector ----------------------------------------------------------
    @property
    def is_open(self) -> bool:
        """Whether this process holds the workspace now."""
        return self._holding is not None

    def release(self) -> None:
        """Settle, checkpoint, detach and free the workspace now."""
        with self._mutex:
            self._check_fork()
            if self._txn is not None:
                raise RuntimeError("cannot release the workspace inside a call or batch")
            self._settle_own_appends()
            self._let_go_settled()

    def close(self) -> None:
        with self._mutex:
            self._closed = True
            self._wake.notify_all()
            idler = self._idler
            if self._txn is not None or os.getpid() != self._pid:
                return  # the call under way lets go as it ends; a forked child has nothing of its own
            try:
                self._settle_own_appends()
                self._let_go_settled()
            finally:
                instance, self._instance = self._instance, None
                if instance is not None:
                    instance.close()
        # The idle thread ends now that the connector is closed: wait for it, so that no
        # thread of the store is left for the interpreter's exit to stop (a daemon thread
        # stopped at exit inside native code can abort the process: seen once in CI).
        if idler is not None and idler is not threading.current_thread():
            idler.join(timeout=5)

    @contextmanager
    def exclusive_file(self, *, journal: bool = False) -> Iterator[None]:
        """The exclusive lock with nothing attached, for work on the files themselves:
        vacuum replaces the database file; with `journal`, the journal's lock too (a
        repair of the journal file)."""
        with self._mutex:
            self._check_fork()
            if self._txn is not None:
                raise RuntimeError("cannot replace the database inside a call or batch")
            self._let_go_quietly(handing_over=False)  # (a journal that cannot be settled may be what is repaired)
            self.lock.acquire("exclusive")
            try:
                with self._journal_held() if journal else nullcontext():
                    yield
            finally:
                self.lock.release()

    def _check_fork(self) -> None:
        # A forked child inherits the parent's connection and locks; using or closing them
        # would corrupt the parent's state, so the child forgets them and starts afresh.
        if os.getpid() == self._pid:
            return
        if self._instance is not None:
            _LEAKED_CONNECTIONS.append(self._instance)
        self.lock.forget_after_fork()
        self.journal_lock.forget_after_fork()
        self._instance, self._holding, self._txn, self._owner = None, None, None, None
        self._mutex, self._jmutex = threading.RLock(), threading.RLock()
        self._journal_depth = 0
        self._wake = threading.Condition(self._mutex)
        self.rows.known.clear()
        self._appended = False
        self._idler, self._pid = None, os.getpid()
