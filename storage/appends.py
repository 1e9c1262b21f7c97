"""Journal-only writes: a small write appended to the journal under the journal's lock
alone, and what the process knows of the journal (``storage/connection.py``'s Connector
is made of this and the calls that hold the workspace).

A write made only of buffered operations (``Connector.buffered``) whose lookups this
process remembers needs nothing of the database: its operations go to the journal file
as one record, under the journal's own lock. Processes taking turns call by call then
wait for each other's appends (~0.3 ms), never for a settle (~20-60 ms), a reader, or
another process's idle window. A lookup it cannot answer from memory is made in the
tables under the shared workspace lock (which processes starting at once share), and
only if the row is not there either (it may be in the journal) does the write hold the
workspace like any other, settling first.

Settling is left to a background thread (``storage/settler.py``), to readers, and to
``release``/``close``.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

T = TypeVar("T")

# A journal this long (of records not yet applied) is settled: by the background settler
# as soon as an append finds it so, and by a writer before it hands the workspace over.
# A shorter one is left for later. The length is the journal's, not what this process
# wrote: counted per process, the writers taking turns all reached the limit within a
# few turns of each other and settled one after another, each paying a settle's fixed
# cost (attach, a checkpoint: ~15-20 ms). 128 KB is ~60 single predictions of 100-float
# arrays, or a pipeline or two of a grid.
HAND_OVER_JOURNAL_BYTES = 128 * 1024
# Past this, an append waits for a settle instead (the write holds the workspace and
# settles first): when nobody could settle for a while (the workspace held for a long
# read), the journal, and the memory and time a settle of it takes (~50 us a single
# prediction: ~0.4 s here), stay bounded.
SETTLE_JOURNAL_BYTES = 8 * 1024 * 1024
# The most journaled operations kept in memory for the next settle (a grid of 50
# pipelines journals ~5 MB); beyond it they are read back from the journal.
JOURNAL_OPS_KEPT_BYTES = 64 * 1024 * 1024


class NeedsDatabase(Exception):
    """A journal-only write needed the database (a lookup this process does not remember,
    a settle, or more rows than one record takes): it runs again as a call that holds it."""


class _NoDatabase:
    """The connection a journal-only write is handed: any use of it means the write
    needs the database."""

    __slots__ = ()

    def __getattr__(self, name: str):
        raise NeedsDatabase(name)


_NO_DATABASE = _NoDatabase()


class AppendsMixin:
    """Connector's journal-only writes (its state is set up in ``Connector.__init__``)."""

    def buffered(self, body: Callable[[Any], T]) -> T:
        """Run `body(con)`, a write made of buffered operations only.

        Inside this thread's ``batch()`` it joins the batch. Otherwise it is tried as a
        journal-only write: under the journal's lock alone, `body` is handed a
        connection that must not be used; if everything it looks up is remembered, its
        operations are appended to the journal as one record, and the call never waits
        for the workspace (another process's reads, settles, or idle window). If it
        needs the database, it looks that up in the tables under the shared lock and
        appends the same way, or, not found there, runs again as a call that holds the
        workspace."""
        con = self.batch_connection()
        if con is not None:
            return body(con)
        if self._owner != threading.get_ident() and self.settle is not None:
            try:
                return self._journal_only(body, _NO_DATABASE)
            except NeedsDatabase:
                pass
            try:
                # what it looks up may well be in the tables: looked up there under the
                # shared lock, which processes starting at once share, and nothing settled
                with self._call("shared", buffered=True, settled=False) as con:
                    return self._journal_only(body, con)
            except NeedsDatabase:
                pass  # not found there: it may still be in the journal
            finally:
                self._let_go_if_idle()  # its next writes append alone: no burst to keep it for
        with self._call("exclusive", buffered=True) as con:
            return body(con)

    @property
    def journal_only(self) -> bool:
        """Whether the calling thread is inside a journal-only write."""
        return self._tls.journal_only

    def _let_go_if_idle(self) -> None:
        """After a lookup: the shared lock, kept for the idle window, would only keep a
        settle from starting (a settle does not wait: it tries)."""
        with self._mutex:
            if not self._active and self._mode == "shared" and os.getpid() == self._pid:
                self._disconnect()

    @contextmanager
    def journal_held(self, wait: bool = True) -> Iterator[bool]:
        """The journal's lock, for this thread (re-entrant). With `wait` False, only if
        nobody holds it or waits for it; yields whether it is held."""
        if wait or threading.current_thread() is threading.main_thread():
            # A signal handler's exception (the main thread's only) can land right after
            # an explicit acquire(), leaving the mutex held for good; `with` gives it no
            # such moment. Here the mutex is held only by a thread that has the journal
            # lock or is in the queue for it: a short wait.
            with self._jmutex:
                with self._journal_lock_held(wait) as held:
                    yield held
            return
        if not self._jmutex.acquire(blocking=False):
            yield False
            return
        try:
            with self._journal_lock_held(wait) as held:
                yield held
        finally:
            self._jmutex.release()

    @contextmanager
    def _journal_lock_held(self, wait: bool) -> Iterator[bool]:
        if self._journal_depth == 0:
            try:
                if wait:
                    self.journal_lock.acquire("exclusive")
                elif not self.journal_lock.try_acquire("exclusive"):
                    yield False
                    return
            except BaseException:
                self.journal_lock.release()  # taken, then interrupted: not held by nobody
                raise
        self._journal_depth += 1
        try:
            yield True
        finally:
            self._journal_depth -= 1
            if self._journal_depth == 0:
                self.journal_lock.release()

    def _journal_only(self, body: Callable[[Any], T], con: Any) -> T:
        """`body` under the journal's lock, its operations appended as one record; `con`
        is for lookups only (the read-only connection of a shared call, or none)."""
        if os.getpid() != self._pid:
            with self._mutex:
                self._check_fork()
        state = self._tls
        unsynced: list[int] = []  # the record's descriptor, fsynced once the lock is let go
        try:
            with self.journal_held():
                if self._journal_past(SETTLE_JOURNAL_BYTES):
                    raise NeedsDatabase("the journal is long: settle it first")  # nobody could settle it
                self._sync_rows()
                state.journal_only, state.pending, state.ops = True, False, []
                state.txn_cache = {"unsynced": unsynced}
                unapplied = 0
                try:
                    result = body(con)
                    if state.pending:
                        state.pending = False
                        if not self.to_journal():
                            raise NeedsDatabase("too many rows for one journal record")
                        self._journaled(*state.txn_cache["journal_ops"])
                        *_, generation, _, end = state.txn_cache["journal_ops"]
                        unapplied = self.journal_length(end=(generation, end))
                except BaseException:
                    state.ops, state.pending = [], False
                    self.rows.clear()  # what the write taught may not have landed
                    raise
                finally:
                    state.journal_only, state.txn_cache = False, {}
            for fd in unsynced:
                os.fsync(fd)  # durable before the call returns
        finally:
            for fd in unsynced:
                os.close(fd)
        self._appended = True
        self._settler.poke(urgent=unapplied > HAND_OVER_JOURNAL_BYTES)
        return result

    def _settle_own_appends(self) -> None:
        """Before this process lets the workspace go for good (release, close): what it
        appended alone, if still in the journal, lands in the tables (its lock taken for
        it). Called under the mutex, no call under way."""
        if (self._appended and os.getpid() == self._pid and self.unsettled is not None
                and self.unsettled()):
            if self._mode != "exclusive":
                self._connect("exclusive", attach=False)
            self.journal = True  # the disconnect that follows settles it
        self._appended = False

    def known_journal(self, ops: list | None, tail: tuple[bytes, int] | None = None) -> None:
        """What the journal holds past some point, as far as this process knows: exactly
        `ops` (the operations of its records), the file ending at `tail` (generation,
        offset); or None, not known."""
        with self._jmutex:
            self.journal_ops, self.journal_tail = ops, tail if ops is not None else None
            self._journal_ops_bytes = 0

    def known_journal_now(self) -> tuple[list | None, tuple[bytes, int] | None]:
        """A copy of (`journal_ops`, `journal_tail`), taken at one moment."""
        with self._jmutex:
            ops = list(self.journal_ops) if self.journal_ops is not None else None
            return ops, self.journal_tail

    def _journaled(self, ops: list, size: int, generation: bytes, start: int, end: int) -> None:
        """A journal record of `ops` (`size` bytes encoded) committed from `start` to
        `end` of the file (under the journal's lock)."""
        with self._jmutex:
            if self.journal_ops is None or self.journal_tail != (generation, start):
                self.known_journal(None)  # someone else's records came in between
                return
            self._journal_ops_bytes += size
            if self._journal_ops_bytes > JOURNAL_OPS_KEPT_BYTES:
                self.known_journal(None)  # read back at the settle instead of held here
            else:
                self.journal_ops.append(ops)
                self.journal_tail = (generation, end)

    def _journal_is_short(self) -> bool:
        # the journal's length only (see HAND_OVER_JOURNAL_BYTES): a count of this
        # process's own writes since it last settled, kept as a shortcut, had brought
        # the runs of settles back
        return self.journal_length is None or self.journal_length() < HAND_OVER_JOURNAL_BYTES

    def _journal_is_long(self) -> bool:
        return (self.journal is not False and self._mode == "exclusive" and self.settle is not None
                and self._journal_past(SETTLE_JOURNAL_BYTES))

    def _journal_past(self, bound: int) -> bool:
        """Whether more than `bound` bytes of the journal are not yet applied: a stat of
        the file first, which bounds them, and only past it the applied note."""
        return self.journal_size() > bound and self.journal_length() > bound

    def _settle_if_free(self) -> bool:
        """The settler's turn (storage/settler.py): settle the journal if the workspace
        is free. False: it is busy, try later."""
        with self._mutex:
            if os.getpid() != self._pid or self.settle is None or self._closed:
                return True
            if self._active:
                return False  # a call of this process is under way
            if not self.unsettled():
                return True  # someone settled it already
            if self._mode == "exclusive":
                self._settle_now()  # within this process's burst, which keeps the lock
                return True
            if self._mode is not None or not self.lock.try_acquire("exclusive"):
                return False  # held: a writer settles as it lets go, a reader before it reads
            self._mode = "exclusive"
            try:
                self._sync_rows()
                self.conn_cache = {}
                self.known_journal(None)
            except BaseException:
                self._let_go()
                raise
            self.journal = True
            self._disconnect()  # settles, checkpoints, detaches, lets go
            return True
