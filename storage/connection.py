"""One DuckDB connection per process, held only across a burst of calls.

Every store call runs inside ``reading()`` or ``writing()``: take the workspace lock
(shared or exclusive), open DuckDB if it is not open yet, run one transaction. The
connection then stays open for ``idle`` seconds in case another call follows (opening
costs ~15-20 ms, a committed call ~2 ms), and is closed and the lock released when the
window passes, or at once when another process is waiting. ``batch()`` holds one write
transaction for many calls.

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


class Connector:
    def __init__(self, db_path: Path, lock: WorkspaceLock, *, idle: float = 0.05) -> None:
        self.db_path = Path(db_path)
        self.lock = lock
        self.idle = idle
        self._mutex = threading.RLock()
        self._wake = threading.Condition(self._mutex)
        self._con: duckdb.DuckDBPyConnection | None = None
        self._mode: Mode | None = None
        self._in_transaction = False
        self._active = 0  # calls under way (nested calls of a batch count too)
        self._last_used = 0.0
        self._reaper: threading.Thread | None = None
        _OPEN.add(self)
        self._pid = os.getpid()
        self._closed = False
        # Writes that callers buffer for speed (predictions): flushed before any other
        # statement of the same transaction runs, and before it commits.
        self.flush: Callable[[duckdb.DuckDBPyConnection], None] | None = None
        self.pending = False
        self.txn_cache: dict = {}  # facts valid for the current transaction only
        # Facts valid while this connection stays open: the lock is held all that time,
        # so no other process can change the database under it.
        self.conn_cache: dict = {}
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

    @property
    def in_batch(self) -> bool:
        """True inside a call that runs within an enclosing batch."""
        return self._active > 1

    @contextmanager
    def batch(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write transaction for every call made inside the block (re-entrant)."""
        with self._call("exclusive") as con:
            yield con

    @property
    def is_open(self) -> bool:
        return self._con is not None

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
                self._disconnect()
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
            elif mode == "exclusive" and self._mode == "shared":
                raise RuntimeError("a write cannot start inside a read of the same workspace")
            con = self._con
            self._active += 1
            began = False
            try:
                if not self._in_transaction:
                    con.execute("BEGIN TRANSACTION")
                    self._in_transaction = began = True
                    self.txn_cache = {}
                elif self.pending and not buffered:
                    self._flush(con)
                yield con
                if began:
                    if self.pending:
                        self._flush(con)
                    self._in_transaction = False
                    con.execute("COMMIT")
                    self._run_after_commit()
            except BaseException:
                if began:
                    self._drop_pending()
                    self._after_commit = []
                    # what this transaction taught the cache may be rolled back with it
                    self.conn_cache = {k: v for k, v in self.conn_cache.items() if k == "appenders"}
                if began and self._in_transaction:
                    self._in_transaction = False
                    try:
                        con.execute("ROLLBACK")
                    except duckdb.Error:
                        pass  # the failed statement already aborted the transaction
                raise
            finally:
                self._active -= 1
                if outermost:
                    self._after_call()

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
        if self.pending:
            self.pending = False
            self.flush(None)  # None: discard what was buffered, the transaction is void

    def _connect(self, mode: Mode) -> None:
        if self._con is not None and (self._mode == mode or self._mode == "exclusive"):
            return
        self._disconnect()  # a shared holder that now needs to write starts over
        self.lock.acquire(mode)
        try:
            self._con = duckdb.connect(str(self.db_path), read_only=(mode == "shared"))
        except duckdb.IOException as exc:
            self.lock.release()
            if "not a valid DuckDB database" in str(exc) or "Corrupt" in str(exc):
                raise WorkspaceCorruptError(f"{self.db_path} is not a readable DuckDB database: {exc}") from exc
            raise
        except BaseException:
            self.lock.release()
            raise
        self._mode = mode
        self.conn_cache = {}

    def _after_call(self) -> None:
        self._last_used = time.monotonic()
        if self._closed or self.idle <= 0 or self.lock.others_waiting():
            self._disconnect(handing_over=not self._closed)
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
                    if not self._active and (quiet >= self.idle or self.lock.others_waiting()):
                        self._disconnect(handing_over=quiet < self.idle)
                        return
                    self._wake.wait(timeout=max(min(self.idle - quiet, 0.02), 0.002))
            finally:
                if self._reaper is threading.current_thread():
                    self._reaper = None

    def _disconnect(self, handing_over: bool = False) -> None:
        con, self._con, self._mode, self._in_transaction = self._con, None, None, False
        if con is None:
            return
        try:
            con.close()
        finally:
            self.lock.release(handing_over=handing_over)

    def _check_fork(self) -> None:
        # A forked child inherits the parent's connection and lock; using or closing them
        # would corrupt the parent's state, so the child forgets them and starts afresh.
        if os.getpid() == self._pid:
            return
        if self._con is not None:
            _LEAKED_CONNECTIONS.append(self._con)
        forget = getattr(self.lock, "forget_after_fork", None)
        if forget:
            forget()
        self._con, self._mode, self._in_transaction, self._active = None, None, False, 0
        self._mutex = threading.RLock()
        self._wake = threading.Condition(self._mutex)
        self._reaper, self._pid = None, os.getpid()
