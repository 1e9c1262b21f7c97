"""The workspace lock (storage/locking.py): one protocol, two implementations.

``TestLockProtocol`` runs against both: ``FileLock`` (two lock objects on one folder are
as separate as two processes) and ``MemoryLock`` (one object, its holders are threads).
Then what only the file lock promises: waiters served in the order they came, a holder
named in a timeout, notes of dead processes ignored, a signal landing as the lock is
taken never leaving it held by nobody."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from storage import FileLock, LockTimeoutError, MemoryLock, WorkspaceStore, process_identity, process_is_gone
from tests.storage.worker_pool import start_together
from tests.waiting import wait_for


class _Holder:
    """A thread that takes a lock, says so, and keeps it until told to let go."""

    def __init__(self, lock, mode: str) -> None:
        self.lock, self.mode = lock, mode
        self.held, self.done, self.let_go = threading.Event(), threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.lock.acquire(self.mode)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            self.error = exc
            self.done.set()
            return
        self.held.set()
        self.let_go.wait(30)
        self.lock.release()
        self.done.set()

    def release(self) -> None:
        self.let_go.set()
        assert self.done.wait(30)


def _try_in_a_thread(lock, mode: str) -> bool:
    """``try_acquire`` from another thread (a holder of its own), letting go if it got it."""
    outcome: list = []

    def attempt() -> None:
        outcome.append(lock.try_acquire(mode))
        if outcome[0]:
            lock.release()

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join(10)
    return outcome[0]


@pytest.fixture(params=["file", "memory"])
def contenders(request, tmp_path):
    """Two handles on one lock: two FileLock objects, or one MemoryLock twice."""
    if request.param == "file":
        return lambda timeout: (FileLock(tmp_path / ".nirsflow", timeout=timeout),
                                FileLock(tmp_path / ".nirsflow", timeout=timeout))
    shared = {}

    def memory(timeout: float):
        shared.setdefault("lock", MemoryLock(timeout=timeout))
        return shared["lock"], shared["lock"]
    return memory


class TestLockProtocol:
    def test_an_exclusive_holder_keeps_everyone_else_out_until_it_lets_go(self, contenders):
        first, second = contenders(5)
        holder = _Holder(first, "exclusive")
        assert holder.held.wait(10)
        for mode in ("shared", "exclusive"):
            assert _try_in_a_thread(second, mode) is False
        waiter = _Holder(second, "exclusive")
        assert not waiter.held.wait(0.2)  # waits
        holder.release()
        assert waiter.held.wait(10)  # and gets it once the holder lets go
        waiter.release()

    def test_readers_share_and_a_writer_waits_for_them(self, contenders):
        first, second = contenders(5)
        readers = [_Holder(first, "shared"), _Holder(second, "shared")]
        assert all(r.held.wait(10) for r in readers)  # both at once
        writer = _Holder(first if isinstance(first, MemoryLock) else FileLock(first.folder, timeout=5), "exclusive")
        assert not writer.held.wait(0.2)
        readers[0].release()
        assert not writer.held.wait(0.2)  # one reader is still in
        readers[1].release()
        assert writer.held.wait(10)
        writer.release()

    def test_try_acquire_takes_a_free_lock_and_never_waits_for_a_held_one(self, contenders):
        first, second = contenders(5)
        holder = _Holder(first, "exclusive")
        assert holder.held.wait(10)
        assert _try_in_a_thread(second, "exclusive") is False
        holder.release()
        assert _try_in_a_thread(second, "exclusive") is True

    def test_a_wait_past_the_timeout_is_a_clear_error_and_frees_nothing(self, contenders):
        first, second = contenders(0.3)
        holder = _Holder(first, "exclusive")
        assert holder.held.wait(10)
        waiter = _Holder(second, "exclusive")
        assert waiter.done.wait(10) and isinstance(waiter.error, LockTimeoutError)
        assert "locked" in str(waiter.error) or "not free" in str(waiter.error)
        # the failed waiter's release frees nothing of the holder's
        thread = threading.Thread(target=second.release)
        thread.start()
        thread.join(10)
        assert _try_in_a_thread(second, "shared") is False
        holder.release()


# -- the file lock alone -------------------------------------------------------------------
def test_waiters_are_served_in_the_order_they_came_and_a_newcomer_queues_behind(tmp_path):
    folder = tmp_path / ".nirsflow"
    holder = _Holder(FileLock(folder, timeout=20), "exclusive")
    assert holder.held.wait(10)
    observer = FileLock(folder)
    order: list[int] = []
    waiters = []
    for k in range(4):  # each starts waiting only once the one before it waits
        lock = FileLock(folder, timeout=20)
        waiter = _Holder(lock, "exclusive")
        waiter.held_by = k
        waiters.append(waiter)
        wait_for(lambda: len(observer.waiters()) == k + 1, 10, f"waiter {k} to queue", interval=0.01)
    watchers = [threading.Thread(target=lambda w=w: (w.held.wait(30), order.append(w.held_by), w.release()))
                for w in waiters]
    for watcher in watchers:
        watcher.start()
    holder.release()
    for watcher in watchers:
        watcher.join(60)
    assert order == [0, 1, 2, 3]


def test_readers_waiting_together_are_not_ordered_among_themselves(tmp_path):
    folder = tmp_path / ".nirsflow"
    writer = _Holder(FileLock(folder, timeout=10), "exclusive")
    assert writer.held.wait(10)
    observer = FileLock(folder)
    first_reader = _Holder(FileLock(folder, timeout=10), "shared")
    wait_for(lambda: len(observer.waiters()) == 1, 10, "the first reader to queue", interval=0.01)
    second_reader = _Holder(FileLock(folder, timeout=10), "shared")
    wait_for(lambda: len(observer.waiters()) == 2, 10, "the second reader to queue", interval=0.01)
    late_writer = _Holder(FileLock(folder, timeout=10), "exclusive")
    wait_for(lambda: len(observer.waiters()) == 3, 10, "the late writer to queue", interval=0.01)
    writer.release()
    assert first_reader.held.wait(10) and second_reader.held.wait(10)  # together
    assert not late_writer.held.is_set()  # the writer that came later waits for both
    first_reader.release(), second_reader.release()
    assert late_writer.held.wait(10)
    late_writer.release()


def test_a_timeout_names_the_workspace_and_the_holder(tmp_path):
    holder = WorkspaceStore(tmp_path / "ws", idle=5)
    waiter = WorkspaceStore(tmp_path / "ws", lock_timeout=0.3)
    with holder.batch():
        holder.begin_run("holding")
        with pytest.raises(LockTimeoutError, match=rf"workspace {tmp_path / 'ws'} is locked.*pid {os.getpid()}"):
            waiter.list_runs()
    assert waiter.list_runs().height == 1
    holder.close(), waiter.close()


def test_a_process_whose_pid_was_reused_is_gone():
    me = process_identity()
    assert process_is_gone(me) is False
    if me["start_ticks"] is not None:  # Linux: the start time tells a reused pid from its first owner
        assert process_is_gone({**me, "start_ticks": me["start_ticks"] - 1}) is True
    assert process_is_gone({**me, "host": "another-machine"}) is None  # this machine cannot tell


class _Interrupted(BaseException):
    """What a signal handler raises (Prefect's TerminationSignal is a BaseException)."""


def test_a_signal_landing_while_the_lock_is_taken_never_leaves_it_held_by_nobody(tmp_path):
    """Prefect's SIGTERM handler raises wherever the main thread is: in the middle of an
    acquire (as the flock is taken, as the notes are written or removed). A lock left held
    by a file object nobody owns made every later acquire wait until its timeout (a crashed
    flow's hook among them). Here a timer signal lands at random moments of acquires that
    wait for a holder thread or find the lock free."""
    folder = tmp_path / ".nirsflow"
    lock, other = FileLock(folder, timeout=5), FileLock(folder, timeout=5)
    rng = random.Random(11)

    def interrupt(signum, frame):
        raise _Interrupted()

    previous = signal.signal(signal.SIGALRM, interrupt)
    interrupted = 0
    try:
        for k in range(300):
            holder = _Holder(FileLock(folder, timeout=5), "exclusive") if k % 2 else None
            if holder is not None:
                assert holder.held.wait(10)
                threading.Timer(rng.uniform(0, 0.003), holder.let_go.set).start()
            try:
                signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.00002, 0.002))
                lock.acquire("exclusive")
                signal.setitimer(signal.ITIMER_REAL, 0)
            except _Interrupted:
                signal.setitimer(signal.ITIMER_REAL, 0)
                interrupted += 1
            # its owner lets go (what the store does when an acquire raised; a lock taken
            # just before the signal landed is its owner's to free)
            lock.release()
            if holder is not None:
                assert holder.done.wait(10)
            # whatever the interruption left: nobody holds the lock now
            assert other.try_acquire("exclusive"), f"trial {k}: the lock is held by nobody"
            other.release()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert interrupted >= 30  # the fault really happened
    lock.acquire("exclusive")  # and the interrupted lock object works again
    lock.release()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_writers_in_other_processes_get_the_workspace_in_the_order_they_started_waiting(tmp_path, workers):
    ws = tmp_path / "ws"
    WorkspaceStore(ws).close()
    holder = workers("holder", workspace=str(ws), hold=6)
    queue = [workers("queuer", workspace=str(ws), name=f"q{k}") for k in range(5)]
    for worker in queue:  # each opened the store (and let it go) before the holder takes it
        worker.expect("ready", timeout=90)
    start_together([holder])
    holder.expect("held")
    observer = FileLock(ws / ".nirsflow")
    for worker in queue:
        worker.go()
        wait_for(lambda: worker.pid in [w["pid"] for w in observer.waiters()], 30, f"{worker.pid} to wait",
                 interval=0.01)  # it waits: the next one comes after it
    holder.result(timeout=60)
    done = [(worker.result(timeout=60)["at"], f"q{k}") for k, worker in enumerate(queue)]
    assert [name for _, name in sorted(done)] == [f"q{k}" for k in range(5)]
    with WorkspaceStore(ws) as store:
        runs = store.list_runs().sort("created_at")
    assert runs["name"].to_list() == [f"q{k}" for k in range(5)]
