"""A background thread that settles the journal, so that no writer's call waits for it.

Writes made only of buffered rows are appended to the journal under the journal's lock
alone (``storage/connection.py``). Someone must still move the records into their tables:
before reads, and before the journal grows long. Done by whichever writer happened to
find the journal long, that settle (attach, apply, commit, checkpoint: ~20 ms, 30-60 ms
on a busy disk) was paid inside one call, and everyone queued behind it.

Here a writer only says so: ``poke(urgent=True)`` when its append left the journal long,
``poke()`` after any append (settle once this process has been quiet for a while). The
thread does the settle through ``settle()``, which takes the workspace lock only if it is
free (another holder settles when it lets go, a reader before it reads) and never the
journal's lock but for the moment the emptied file is put in place.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

log = logging.getLogger("nirsflow.storage")


class Settler:
    def __init__(self, settle: Callable[[], bool], quiet: Callable[[], float]) -> None:
        """`settle()` settles if it can (False: the workspace was busy, try later);
        `quiet()` is the seconds to wait after an append before settling what is left
        (the connection's idle window)."""
        self._settle = settle
        self._quiet = quiet
        self._lock = threading.Lock()  # guards the fields below; never held while settling
        self._event = threading.Event()
        self._thread: threading.Thread | None = None
        self._due = False  # records appended since the last settle began
        self._busy = False  # a settle is under way
        self._last_append = 0.0
        self._stopped = False
        self._pid = os.getpid()

    def poke(self, urgent: bool = False) -> None:
        """An append just committed (`urgent`: the journal is long, settle now)."""
        with self._lock:
            self._due, self._last_append, self._stopped = True, time.monotonic(), False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="nirsflow-journal-settler", daemon=True)
                self._thread.start()
        if urgent:
            self._event.set()

    def quiescent(self) -> bool:
        """No settle under way or asked for now (one may still come after a quiet spell)."""
        with self._lock:
            return not self._busy and not self._event.is_set()

    def stop(self) -> None:
        """No more settles from this thread (the store is closing; it settles itself)."""
        with self._lock:
            self._stopped, self._due = True, False
        self._event.set()

    def after_fork(self) -> None:
        """In a forked child: the parent's thread does not exist here."""
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._thread, self._due, self._pid = None, False, os.getpid()

    def _run(self) -> None:
        urgent = False
        while True:
            with self._lock:
                if self._stopped or not self._due or os.getpid() != self._pid:
                    self._thread = None
                    return
                wait = self._quiet() - (time.monotonic() - self._last_append)
            if not urgent and wait > 0:
                urgent = self._event.wait(timeout=wait)
                if not urgent:
                    continue  # quiet for long enough, or appended again: look again
            with self._lock:
                self._due, self._busy = False, True
            self._event.clear()
            urgent = False
            try:
                done = self._settle()
            except Exception as exc:  # noqa: BLE001 - the records stay; a caller's settle raises it
                log.warning("nirsflow: settling the journal in the background failed (the records stay "
                            "in the journal; the next read or write settles them, or reports why): %s", exc)
                continue
            finally:
                with self._lock:
                    self._busy = False
            if not done:  # the workspace was busy: try again once this process is quiet
                with self._lock:
                    self._due = True
                    # so that the next try comes after `retry` seconds, unless appends push it back
                    retry = max(self._quiet() / 2, 0.01)
                    self._last_append = max(self._last_append, time.monotonic() - self._quiet() + retry)
