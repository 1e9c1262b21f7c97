"""Waiters for the workspace are served in the order they came (storage/locking.py).

A plain flock is a race that the fastest poller wins; with the waiters' tickets, the
process that waited longest goes next, and one that just handed over queues behind."""

from __future__ import annotations

import os
import time

import pytest

from storage import LockTimeoutError, WorkspaceStore
from storage.locking import FileLock
from tests.storage.worker_pool import start_together

pytestmark = pytest.mark.slow


def _wait_for_note(notes, pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not any(n.startswith(f"{pid}-") for n in os.listdir(notes)):
        assert time.monotonic() < deadline, f"worker {pid} never started waiting"
        time.sleep(0.01)


@pytest.mark.timeout(120)
def test_writers_get_the_workspace_in_the_order_they_started_waiting(tmp_path, workers):
    ws = tmp_path / "ws"
    WorkspaceStore(ws).close()
    holder = workers("holder", workspace=str(ws), hold=6)
    queue = [workers("queuer", workspace=str(ws), name=f"q{k}") for k in range(5)]
    for worker in queue:  # each opened the store (and let it go) before the holder takes it
        worker.expect("ready", timeout=90)
    start_together([holder])
    holder.expect("held")
    notes = ws / ".nirsflow" / "waiters"
    for worker in queue:
        worker.go()
        _wait_for_note(notes, worker.pid)  # it waits: the next one comes after it
    holder.result(timeout=60)
    done = [(worker.result(timeout=60)["at"], f"q{k}") for k, worker in enumerate(queue)]
    assert [name for _, name in sorted(done)] == [f"q{k}" for k in range(5)]
    with WorkspaceStore(ws) as store:
        runs = store.list_runs().sort("created_at")
    assert runs["name"].to_list() == [f"q{k}" for k in range(5)]


def test_a_newcomer_does_not_jump_the_queue(tmp_path):
    """A process arriving while others wait takes a ticket instead of trying the lock:
    shown in one process with two lock objects, which are as separate as two processes."""
    folder = tmp_path / ".nirsflow"
    holder, newcomer = FileLock(folder, timeout=5), FileLock(folder, timeout=0.3)
    holder.acquire("exclusive")
    holder.release()
    # a waiter that came first, as another process would leave it (its pid is alive: ours)
    waiting = folder / "waiters" / f"{os.getpid()}-1-{time.time_ns()}-exclusive"
    waiting.write_text("{}")
    try:
        with pytest.raises(LockTimeoutError, match="locked"):
            newcomer.acquire("exclusive")  # the lock is free, but it is not its turn
        waiting.unlink()
        newcomer.acquire("exclusive")  # the waiter before it is gone: its turn
        newcomer.release()
    finally:
        waiting.unlink(missing_ok=True)


def test_readers_waiting_together_are_not_ordered_among_themselves(tmp_path):
    folder = tmp_path / ".nirsflow"
    reader = FileLock(folder, timeout=0.3)
    reader.acquire("shared")  # create the folders
    reader.release()
    waiting = folder / "waiters" / f"{os.getpid()}-1-{time.time_ns()}-shared"
    waiting.write_text("{}")
    try:
        reader.acquire("shared")  # a reader ahead does not conflict with a reader
        reader.release()
        with pytest.raises(LockTimeoutError, match="locked"):
            FileLock(folder, timeout=0.3).acquire("exclusive")  # but a writer queues behind it
    finally:
        waiting.unlink(missing_ok=True)


class _Interrupted(BaseException):
    """What a signal handler raises (Prefect's TerminationSignal is a BaseException)."""


def test_an_exception_that_lands_as_the_lock_is_taken_leaves_it_free(tmp_path, monkeypatch):
    """A waiter removes its note once it holds the flock. A signal landing there (a
    flow's SIGTERM, just as the lock came free) left the flock held by a file object
    that the exception's traceback kept open: nobody's lock, and a crashed flow's hook
    then waited for it until its lock timeout. The moment cannot be hit on demand, so the
    note's removal raises as the signal would."""
    import threading
    from pathlib import Path

    folder = tmp_path / "ws" / ".nirsflow"
    holder, waiter = FileLock(folder, timeout=10), FileLock(folder, timeout=10)
    holder.acquire("exclusive")
    real = FileLock._write_waiter_note

    def interrupting_note(self, ticket, mode) -> Path:
        class Note(type(real(self, ticket, mode))):
            def unlink(self, missing_ok=False):
                super().unlink(missing_ok=missing_ok)
                raise _Interrupted("SIGTERM, as the waiter note was removed")
        return Note(folder / "waiters" / f"{self._note_name()}-{ticket}-{mode}")

    monkeypatch.setattr(FileLock, "_write_waiter_note", interrupting_note)
    threading.Timer(0.1, holder.release).start()
    with pytest.raises(_Interrupted) as raised:
        waiter.acquire("exclusive")
    monkeypatch.undo()
    assert raised.value.__traceback__ is not None  # kept, as a crashed flow's state keeps it
    other = FileLock(folder, timeout=1)
    other.acquire("exclusive")  # free at once (it timed out before)
    other.release()
    waiter.acquire("exclusive")  # and the interrupted lock object works again
    waiter.release()
