"""Inter-process workspace locks: shared for reads, exclusive for writes.

DuckDB lets one process write a file and refuses even read-only opens while it does, so
every process that touches a workspace first takes this lock. The primitive is
portalocker's flock/LockFileEx; on top of it sit the three things a plain flock lacks:

* a bounded wait that ends in an error naming the workspace and who holds it
  (each holder leaves a small JSON note in ``holders/``);
* a way for a holder to see that someone is waiting (each waiter leaves a note in
  ``waiters/``), so a busy process hands the workspace over instead of starving others;
* order: a note carries the time its waiter started waiting, and nobody tries the lock
  while an older waiter it would conflict with is still waiting. Waiters are served
  first come, first served (readers together), so a process that just handed over
  queues behind the ones it handed to, and no call waits behind more than one turn of
  each process ahead of it. A plain flock is a race that the fastest poller wins.

A ``MemoryLock`` with the same protocol serves single-process use and tests, after
Prefect's own ``locking/`` (a Protocol with memory and file implementations; one test
class runs against both, tests/storage/test_locking.py).

A note is trusted while its process lives: a process killed while it held or waited
leaves its note behind, so a note names its process (host, pid, start time:
storage/processes.py) and one whose process is gone, or whose pid now belongs to another
process, is left out (and removed, if it was written on this host).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Literal, Protocol

import portalocker

from .errors import LockTimeoutError
from .processes import process_is_gone, process_start_ticks

Mode = Literal["shared", "exclusive"]
_FLAGS = {"shared": portalocker.LockFlags.SHARED, "exclusive": portalocker.LockFlags.EXCLUSIVE}
_NOTE_TTL = 5.0  # seconds: a waiter refreshes its note well within this while it waits


class WorkspaceLock(Protocol):
    """What the store needs of an inter-process readers-writer lock."""

    def acquire(self, mode: Mode) -> None:
        """Wait for the lock (first come, first served), or raise LockTimeoutError naming
        the holder."""

    def try_acquire(self, mode: Mode) -> bool:
        """Take the lock if it is free and nobody waits for it; never wait."""

    def release(self) -> None:
        """Free what the calling thread holds (nothing after an acquire that failed)."""

    def others_waiting(self) -> bool:
        """Whether another holder-to-be waits: the holder should hand over soon."""

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's hold without freeing it."""


class MemoryLock:
    """The protocol for one process: a readers-writer lock that nobody else can see.
    As ``FileLock``, ``release`` frees only what the calling thread holds (nothing after
    an acquire that failed)."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._held: dict[int, Mode] = {}

    def acquire(self, mode: Mode) -> None:
        if not self._acquire(mode, self.timeout):
            raise LockTimeoutError(f"in-memory workspace lock not free after {self.timeout:.1f} s")

    def try_acquire(self, mode: Mode) -> bool:
        return self._acquire(mode, 0)

    def _acquire(self, mode: Mode, timeout: float) -> bool:
        def free() -> bool:
            return not self._writer and (mode == "shared" or self._readers == 0)

        with self._cond:
            if not self._cond.wait_for(free, timeout=timeout):
                return False
            if mode == "shared":
                self._readers += 1
            else:
                self._writer = True
            self._held[threading.get_ident()] = mode
            return True

    def release(self) -> None:
        with self._cond:
            mode = self._held.pop(threading.get_ident(), None)
            if mode == "exclusive":
                self._writer = False
            elif mode == "shared":
                self._readers -= 1
            self._cond.notify_all()

    def others_waiting(self) -> bool:
        return False

    def forget_after_fork(self) -> None:
        self._cond = threading.Condition()
        self._readers, self._writer, self._held = 0, False, {}


_NOTE_FIELDS: dict[int, str] = {}  # pid: the JSON of a note's fixed fields


def _note_fields() -> str:
    pid = os.getpid()
    fields = (f'"pid": {pid}, "host": {json.dumps(socket.gethostname())}, '
              f'"start_ticks": {json.dumps(process_start_ticks(pid))}, '
              f'"command": {json.dumps(" ".join(sys.argv[:3])[:200])}')
    _NOTE_FIELDS[pid] = fields
    return fields


class FileLock:
    """Shared/exclusive lock on ``<folder>/lock`` with holder and waiter notes beside it.

    Not re-entrant and not thread-safe on its own: the connection layer serialises the
    threads of one process in front of it.
    """

    def __init__(self, folder: Path, *, timeout: float = 30.0, workspace: object = None,
                 what: str = "") -> None:
        self.folder = Path(folder)
        self.timeout = timeout
        self.workspace = workspace if workspace is not None else self.folder.parent
        self.what = what  # which of the workspace's locks, for messages ("" for the workspace's own)
        self._genuine: set[str] = set()  # waiter notes whose process was checked against pid reuse
        self._holders = self.folder / "holders"
        self._waiters = self.folder / "waiters"
        self._file = None
        self._mode: Mode | None = None
        # This object's waiter note, named before it is written and forgotten only once
        # removed: a note an interrupted acquire left behind is removed at the next
        # release or acquire, rather than keep everyone queued behind nobody.
        self._waiting: Path | None = None
        self._pid = os.getpid()

    # -- notes ---------------------------------------------------------------
    def _ensure_folders(self) -> None:
        if not self._waiters.is_dir():
            self._holders.mkdir(parents=True, exist_ok=True)
            self._waiters.mkdir(parents=True, exist_ok=True)

    def _note_name(self) -> str:
        # One name per lock object: two stores on one workspace in one process (or a
        # store and a notebook's) are as much "others" to each other as two processes.
        return f"{os.getpid()}-{id(self)}"

    def _write_note(self, folder: Path, mode: Mode) -> Path:
        # os-level and mostly precomputed: a note is written at every acquire (~0.1 ms
        # with pathlib and json)
        note = folder / self._note_name()
        fields = _NOTE_FIELDS.get(os.getpid()) or _note_fields()
        fd = os.open(note, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, f'{{{fields}, "mode": "{mode}", "since": {time.time()!r}}}'.encode())
        finally:
            os.close(fd)
        return note

    def _other_notes(self, folder: Path) -> set[str]:
        mine = self._note_name()
        try:
            return {n for n in os.listdir(folder) if n != mine}
        except FileNotFoundError:
            return set()

    def holders(self) -> list[dict]:
        """Who holds the lock now, as far as their notes say (dead processes left out)."""
        found = []
        for name in self._other_notes(self._holders):
            try:
                note = json.loads((self._holders / name).read_text())
            except (OSError, ValueError):
                continue  # a note being written or removed right now
            if not process_is_gone(note):
                found.append(note)
        return found

    def describe_holders(self) -> str:
        """Who holds the lock, for a message: pid, host, mode, for how long, command."""
        holders = self.holders()
        if not holders:
            return "an unknown process (no holder note)"
        return "; ".join(
            f"pid {h.get('pid')} on {h.get('host')} ({h.get('mode')}, "
            f"for {time.time() - float(h.get('since', time.time())):.1f} s: {h.get('command')})"
            for h in holders)

    def _live_waiters(self, mine: str = "") -> dict[str, tuple[int, str]]:
        """Other waiters' notes, as name -> (ticket, mode), without those of processes
        that died waiting.

        A waiter killed (SIGKILL, OOM) while it waits leaves its note behind; trusting
        it would make every holder hand over after every call to nobody, and everyone
        queue behind it, for good. A note whose process is gone on this host (or whose
        pid now belongs to another process) is removed; a note nobody refreshed for
        ``_NOTE_TTL`` seconds (its waiter is frozen, or on another host and gone) is
        ignored."""
        names = {n for n in self._other_notes(self._waiters) if n != mine}
        self._genuine &= names
        live: dict[str, tuple[int, str]] = {}
        for name in names:
            try:
                pid, _, ticket, mode = name.split("-")
                int(pid)
                ticket_number = int(ticket)
            except ValueError:
                continue  # not a waiter note of this version
            note = self._waiters / name
            if name not in self._genuine:
                if self._stale_note(note):
                    continue
                self._genuine.add(name)  # checked once: a live waiter stays itself while it waits
            try:
                fresh = time.time() - note.stat().st_mtime < _NOTE_TTL
            except FileNotFoundError:
                continue  # its waiter just got the lock
            if fresh:
                live[name] = (ticket_number, mode)
        return live

    @staticmethod
    def _stale_note(note: Path) -> bool:
        """Whether a waiter note is a dead process's (then it is removed, when it was
        written on this host), or an unreadable leftover of a writer killed mid-write."""
        try:
            identity = json.loads(note.read_text())
        except FileNotFoundError:
            return True  # its waiter just got the lock
        except (OSError, ValueError):
            # being written right now, or the leftover of a waiter killed as it wrote it
            try:
                leftover = time.time() - note.stat().st_mtime > 1.0
            except OSError:
                return True
            if leftover:
                note.unlink(missing_ok=True)
            return leftover
        if process_is_gone(identity):
            note.unlink(missing_ok=True)
            return True
        return False

    def others_waiting(self) -> bool:
        return bool(self._live_waiters())

    def waiters(self) -> list[dict]:
        """Who waits for the lock, first come first: ``{"pid", "mode"}`` of each waiter
        whose process lives (this lock object's own wait left out)."""
        live = sorted(self._live_waiters().items(), key=lambda item: (item[1][0], item[0]))
        return [{"pid": int(name.split("-")[0]), "mode": mode} for name, (_, mode) in live]

    def _ahead_of_me(self, mode: Mode, ticket: int | None, mine: str) -> bool:
        """Whether a waiter that came before us (any waiter, while we have no ticket
        yet) wants the lock in a way that conflicts with ours."""
        for name, (other_ticket, other_mode) in self._live_waiters(mine).items():
            came_first = ticket is None or (other_ticket, name) < (ticket, mine)
            if came_first and (mode == "exclusive" or other_mode == "exclusive"):
                return True
        return False

    # -- acquire / release ---------------------------------------------------
    def acquire(self, mode: Mode) -> None:
        if self._file is not None or self._waiting is not None:
            # Only a release (or acquire) cut short can leave it held here (an exception,
            # a signal handler's, landing as it ran): its owner (one store's connector)
            # has let the lock go, so finish that release.
            self.release()
        self._ensure_folders()
        deadline = time.monotonic() + self.timeout
        fh = open(self.folder / "lock", "a+b")
        note: Path | None = None
        ticket: int | None = None
        refreshed = time.monotonic()
        pause = 0.0005
        my_turn = first_in_line = False
        try:
            while True:
                mine = note.name if note is not None else ""
                # Once first in line by our ticket, always first: whoever comes later is
                # behind us. So the next in line only tries the lock as it polls, and
                # leaves the CPU to the holder (2 cores, 4 processes taking turns).
                if not first_in_line:
                    my_turn = not self._ahead_of_me(mode, ticket, mine)
                    first_in_line = my_turn and ticket is not None
                if my_turn:
                    try:
                        portalocker.lock(fh, _FLAGS[mode] | portalocker.LockFlags.NON_BLOCKING)
                    except portalocker.AlreadyLocked:
                        pass
                    else:
                        # Ours from here: whatever lands before `acquire` returns (a
                        # signal handler's exception, in the waiter note's removal
                        # below say) frees it through `release`. Recorded only after
                        # the finally, such an exception left the flock held by a file
                        # object that its traceback kept open: nobody's lock, and every
                        # later acquire of the workspace waited for it (a crashed flow's
                        # hook among them).
                        self._file, self._mode = fh, mode
                        break
                if note is None:
                    ticket = time.time_ns()
                    note = self._waiting = self._waiters / f"{self._note_name()}-{ticket}-{mode}"
                    self._write_waiter_note(note, mode)
                elif time.monotonic() - refreshed > _NOTE_TTL / 4:
                    os.utime(note)  # still waiting: keep the note fresh
                    refreshed = time.monotonic()
                if time.monotonic() >= deadline:
                    raise LockTimeoutError(self._timeout_message(mode))
                # The next in line polls briskly (a hand-over should not wait on it); those
                # behind it have a turn or more to wait, and their polling would only take
                # CPU from the holder.
                time.sleep(pause if my_turn else 0.004)
                pause = min(pause * 1.5, 0.001)
        except BaseException:
            if self._file is fh:
                self.release()
            else:
                fh.close()
            raise
        finally:
            try:
                self._remove_waiter_note()
            except BaseException:
                if self._file is fh:
                    self.release()
                raise
        self._note_holder(mode)

    def try_acquire(self, mode: Mode) -> bool:
        """Take the lock if it is free and nobody is waiting for it; never wait (a second
        run over an inbox that one is scoring does nothing: tasks/scoring.py)."""
        if self._file is not None:
            self.release()  # as in `acquire`: a release cut short
        self._ensure_folders()
        if self._ahead_of_me(mode, None, ""):
            return False  # waiters come first
        fh = open(self.folder / "lock", "a+b")
        try:
            portalocker.lock(fh, _FLAGS[mode] | portalocker.LockFlags.NON_BLOCKING)
        except portalocker.AlreadyLocked:
            fh.close()
            return False
        except BaseException:
            fh.close()
            raise
        self._file, self._mode = fh, mode
        self._note_holder(mode)
        return True

    def _note_holder(self, mode: Mode) -> None:
        try:
            self._write_note(self._holders, mode)
        except BaseException:  # held with no note is held by nobody: free it, then raise
            self.release()
            raise

    def _write_waiter_note(self, named: Path, mode: Mode) -> None:
        note = self._write_note(self._waiters, mode)
        os.replace(note, named)  # the name is what others read: it appears whole

    def _remove_waiter_note(self) -> None:
        if self._waiting is not None:
            self._waiting.unlink(missing_ok=True)
            self._waiting = None

    def release(self) -> None:
        self._remove_waiter_note()
        fh = self._file
        if fh is None:
            return
        try:
            (self._holders / self._note_name()).unlink(missing_ok=True)
        finally:  # whatever interrupts the note's removal, the lock is freed
            self._file, self._mode = None, None
            try:
                portalocker.unlock(fh)
            finally:
                fh.close()

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's lock without unlocking it (flock locks are
        shared with the parent's open file description; unlocking would free *its* lock)."""
        if self._file is not None:
            _leaked_after_fork.append(self._file)
        self._file, self._mode = None, None

    def _timeout_message(self, mode: Mode) -> str:
        whose = f"the {self.what} of workspace" if self.what else "workspace"
        return (f"{whose} {self.workspace} is locked: waited {self.timeout:.1f} s for a {mode} lock; "
                f"held by {self.describe_holders()}")


# File objects inherited from a parent process: kept referenced so that garbage
# collection never closes (and so unlocks) the parent's lock from the child.
_leaked_after_fork: list = []
