"""Stopping cleanly on SIGTERM or Ctrl-C: the run recorded ``crashed`` with Prefect's
message, the process gone within seconds, nothing left behind.

How a stop goes. Outside a flow, the ``nirsflow`` command's own SIGTERM handler
(``install``) raises ``SystemExit(143)``, so the command unwinds and its exit handlers
stop the temporary Prefect server. Inside a flow, Prefect's handler raises
``TerminationSignal`` in the main thread (Ctrl-C raises ``KeyboardInterrupt``); Prefect
marks the run Crashed ("Execution was aborted by a termination signal."), its hook
records that in the store, and Prefect then hands the signal to the handler it
replaced: ours again, so the command still exits 143.

Two things went wrong on that path, measured with ``kill -TERM`` at random moments
(bench/sigterm_trials.py):

* The signal can land in the main thread just after it took a lock of the logging module
  and before the ``try`` that releases it (Python 3.11's ``Handler.handle`` is
  ``acquire(); try: emit() finally: release()``): the lock stays held. The main thread
  can still log (the lock is reentrant), but every fold thread that logs waits for it
  forever, and Prefect's shutdown of the thread pool waits for them: the command hung.
  ``stops_cleanly`` (around each flow's body) releases the logging locks the main thread
  holds when the stop reaches the flow body (it holds none legitimately there), before
  Prefect shuts the pool down.
* The signal can land inside Prefect's task engine, which then raises
  ``ValueError: Task run is not set`` with the ``TerminationSignal`` as its context:
  the run ended Failed with that error. ``stops_cleanly`` raises the termination again.

And a guard for whatever else a signal may interrupt: once a stop has begun, a daemon
thread (``arm_watchdog``) ends the process ``GRACE`` seconds later, after the cleanups
registered with ``on_forced_exit`` (the temporary server), whether or not the
interpreter's own shutdown (which joins every pool thread) finishes.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
import time
from typing import Callable

#: Seconds between the stop and a forced exit: the crash hook, Prefect's last state
#: update and log flush take well under that; a store write waiting for another
#: process's lock may not (reconcile settles such a run later: its process is gone).
GRACE = 10.0

_cleanups: list[Callable[[], None]] = []
_armed = threading.Event()
_requested: list[int] = []  # the signal of a stop asked for, if any


def on_forced_exit(cleanup: Callable[[], None]) -> None:
    """Run ``cleanup`` before the watchdog ends the process (it must be quick)."""
    _cleanups.append(cleanup)


def arm_watchdog(code: int = 143, grace: float = GRACE) -> None:
    """End the process with ``code`` in ``grace`` seconds unless it has exited by then."""
    if _armed.is_set():
        return
    _armed.set()

    def watch() -> None:
        time.sleep(grace)
        sys.stderr.write(f"nirsflow: not stopped {grace:g} s after the signal; exiting now\n")
        for cleanup in reversed(_cleanups):
            try:
                cleanup()
            except Exception:  # noqa: BLE001 - the exit must happen whatever a cleanup does
                pass
        os._exit(code)

    threading.Thread(target=watch, name="nirsflow-stop-watchdog", daemon=True).start()


def _on_sigterm(signum, frame) -> None:
    _requested.append(signum)
    arm_watchdog(128 + signum)
    raise SystemExit(128 + signum)


def raise_if_stopped() -> None:
    """Raise the stop again if one was asked for and swallowed. The handler's SystemExit
    lands wherever the main thread is, and some library code it can land in catches
    everything (seen while importing: the command went on and trained to the end)."""
    if _requested:
        raise SystemExit(128 + _requested[0])


def install() -> None:
    """The ``nirsflow`` command's SIGTERM handler (the main thread's): stop by unwinding,
    so exit handlers run; Prefect's own handler takes over while a flow runs and hands
    the signal back here when it is done with it."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def release_leaked_logging_locks() -> list[str]:
    """Release the logging module's locks that this thread holds although it is not
    inside a logging call (a signal interrupted it between acquire and try); return
    what was released."""
    released = []
    locks = [("logging._lock", getattr(logging, "_lock", None))]
    for ref in list(getattr(logging, "_handlerList", [])):
        handler = ref()
        if handler is not None:
            locks.append((f"handler {type(handler).__name__}", getattr(handler, "lock", None)))
    for name, lock in locks:
        is_owned = getattr(lock, "_is_owned", None)
        while is_owned is not None and is_owned():
            lock.release()
            released.append(name)
    return released


def stopping_signal(exc: BaseException | None) -> BaseException | None:
    """The ``TerminationSignal`` or ``KeyboardInterrupt`` behind ``exc`` (itself, or what
    it was raised during), or None when ``exc`` is not a stop."""
    from prefect.exceptions import TerminationSignal

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (TerminationSignal, KeyboardInterrupt)):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def stops_cleanly(fn: Callable) -> Callable:
    """Wrap a flow's function (under ``@flow``): on a stop, free the leaked logging
    locks, arm the watchdog, and let the stop (not an error it caused) reach Prefect."""

    @functools.wraps(fn)
    def body(*args, **kwargs):
        try:
            if _requested:  # asked to stop before the flow began: stop now, as a crash
                from prefect.exceptions import TerminationSignal

                raise TerminationSignal(signal=_requested[0])
            return fn(*args, **kwargs)
        except BaseException as exc:
            stop = stopping_signal(exc)
            if stop is None or threading.current_thread() is not threading.main_thread():
                raise
            released = release_leaked_logging_locks()
            arm_watchdog(128 + int(getattr(stop, "signal", signal.SIGINT)))
            if released:
                logging.getLogger("nirsflow.stopping").warning(
                    "released %s, held by the interrupted main thread", ", ".join(released))
            if stop is exc:
                raise
            if isinstance(stop, KeyboardInterrupt):
                raise KeyboardInterrupt() from exc
            raise type(stop)(signal=stop.signal) from exc

    return body
