"""SIGTERM waits for the store call under way, then is delivered.

DuckDB's Python binding runs Python signal handlers while a statement executes, and
when a handler raises (Prefect turns SIGTERM into ``TerminationSignal`` in a flow-run
process), DuckDB replaces that exception with its own "Query interrupted": the
termination is lost, the write fails, and the process carries on as if nothing had
asked it to stop. So, on the main thread (the only one that runs Python signal
handlers), a store call holds SIGTERM back and raises it again as soon as the call has
ended, committed or rolled back. With no Python handler installed, SIGTERM keeps its
default action: the process ends at once and the open transaction is simply lost.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def sigterm_deferred() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):  # SIG_DFL, SIG_IGN, or set outside Python
        yield
        return
    caught: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if caught:
            signal.raise_signal(signal.SIGTERM)
