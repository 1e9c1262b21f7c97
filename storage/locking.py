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
Prefect's own ``locking/`` (a Protocol with memory and file implementations).
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

Mode = Literal["shared", "exclusive"]
_FLAGS = {"shared": portalocker.LockFlags.SHARED, "exclusive": portalocker.LockFlags.EXCLUSIVE}
_NOTE_TTL = 5.0  # seconds: a waiter refreshes its note well within this while it waits


class WorkspaceLock(Protocol):
    def acquire(self, mode: Mode) -> None: ...
    def try_acquire(self, mode: Mode) -> bool: ...
    def release(self) -> None: ...
    def others_waiting(self) -> bool: ...


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


_NOTE_FIELDS: dict[int, tuple[str, str]] = {}  # pid: the JSON of a note's fixed fields


def _note_fields() -> tuple[str, str]:
    fields = (json.dumps(socket.gethostname()), json.dumps(" ".join(sys.argv[:3])[:200]))
    _NOTE_FIELDS[os.getpid()] = fields
    return fields


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        self._holders = self.folder / "holders"
        self._waiters = self.folder / "waiters"
        self._file = None
        self._mode: Mode | None = None
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
        # os-level and mostly precomputed: a note is written at every acquire, and the
        # journal's lock is taken by every single append (~0.1 ms with pathlib and json)
        note = folder / self._note_name()
        host, command = _NOTE_FIELDS.get(os.getpid()) or _note_fields()
        fd = os.open(note, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, f'{{"pid": {os.getpid()}, "host": {host}, "mode": "{mode}", "since": {time.time()!r}, '
                         f'"command": {command}}}'.encode())
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
            if _pid_alive(int(note.get("pid", -1))) or note.get("host") != socket.gethostname():
                found.append(note)
        return found

    def _live_waiters(self, mine: str = "") -> dict[str, tuple[int, str]]:
        """Other waiters' notes, as name -> (ticket, mode), without those of processes
        that died waiting.

        A waiter killed (SIGKILL, OOM) while it waits leaves its note behind; trusting
        it would make every holder hand over after every call to nobody, and everyone
        queue behind it, for good. A note whose pid is gone on this host is removed;
        a note nobody refreshed for ``_NOTE_TTL`` seconds (its waiter is frozen, or
        on another host and gone) is ignored."""
        names = {n for n in self._other_notes(self._waiters) if n != mine}
        live: dict[str, tuple[int, str]] = {}
        for name in names:
            try:
                pid, _, ticket, mode = name.split("-")
                pid_number, ticket_number = int(pid), int(ticket)
            except ValueError:
                continue  # not a waiter note of this version
            note = self._waiters / name
            if not _pid_alive(pid_number) and self._stale_note(note):
                continue
            try:
                fresh = time.time() - note.stat().st_mtime < _NOTE_TTL
            except FileNotFoundError:
                continue  # its waiter just got the lock
            if fresh:
                live[name] = (ticket_number, mode)
        return live

    @staticmethod
    def _stale_note(note: Path) -> bool:
        """For a note whose pid is not alive here: drop it if it was written on this
        host (or is an unreadable leftover of a writer killed mid-write)."""
        try:
            host = json.loads(note.read_text()).get("host")
        except FileNotFoundError:
            return True
        except (OSError, ValueError):
            try:
                host = socket.gethostname() if time.time() - note.stat().st_mtime > 1.0 else None
            except OSError:
                return True
        if host != socket.gethostname():
            return False  # another machine's process: its pid means nothing here
        note.unlink(missing_ok=True)
        return True

    def others_waiting(self) -> bool:
        return bool(self._live_waiters())

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
        if self._file is not None:
            # Only a release cut short can leave it held here (an exception, a signal
            # handler's, landing as `release` began): its owner (one store's connector)
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
                    note = self._write_waiter_note(ticket, mode)
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
            if note is not None:
                try:
                    note.unlink(missing_ok=True)
                except BaseException:
                    if self._file is fh:
                        self.release()
                    raise
        self._note_holder(mode)

    def try_acquire(self, mode: Mode) -> bool:
        """Take the lock if it is free and nobody is waiting for it; never wait. For work
        that anyone may do and nobody must wait for (settling the journal)."""
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

    def _write_waiter_note(self, ticket: int, mode: Mode) -> Path:
        note = self._write_note(self._waiters, mode)
        named = note.with_name(f"{note.name}-{ticket}-{mode}")
        os.replace(note, named)  # the name is what others read: it appears whole
        return named

    def release(self) -> None:
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
        holders = self.holders()
        if holders:
            who = "; ".join(
                f"pid {h.get('pid')} on {h.get('host')} ({h.get('mode')}, "
                f"for {time.time() - float(h.get('since', time.time())):.1f} s: {h.get('command')})"
                for h in holders
            )
        else:
            who = "an unknown process (no holder note)"
        whose = f"the {self.what} of workspace" if self.what else "workspace"
        return (f"{whose} {self.workspace} is locked: waited {self.timeout:.1f} s for a "
                f"{mode} lock; held by {who}")


# File objects inherited from a parent process: kept referenced so that garbage
# collection never closes (and so unlocks) the parent's lock from the child.
_leaked_after_fork: list = []
