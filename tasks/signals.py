"""A termination signal that a DuckDB statement swallowed, raised again.

Prefect turns SIGTERM into a ``TerminationSignal`` raised in the flow's main thread (the
runner's cancellation, a worker stopping, ``kill``). When the signal lands while DuckDB
executes a statement in that thread, DuckDB runs the handler itself and reports the
exception the handler raised as its own ``RuntimeError("Query interrupted")``. The flow
would carry on as if a store write had failed, and the run end ``failed`` rather than
``crashed`` (seen in tests/flows/test_processes.py, about one run in ten).

Nothing in nirsflow interrupts DuckDB on purpose, so in the main thread, with Prefect's
SIGTERM bridge installed, "Query interrupted" means that signal: ``raise_swallowed``
raises the ``TerminationSignal`` the handler raised in the first place, and the
termination goes on as Prefect meant it (crashed, or cancelled when the runner asked).
"""

from __future__ import annotations

import signal
import threading

_DUCKDB_INTERRUPT = "Query interrupted"


def swallowed_interrupt(exc: BaseException | None) -> bool:
    """Whether `exc` (or what it was raised from) is DuckDB's report of an interruption."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, RuntimeError) and str(exc).strip() == _DUCKDB_INTERRUPT:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def raise_swallowed(exc: BaseException) -> None:
    """Raise ``TerminationSignal(SIGTERM)`` in place of `exc` if `exc` is a SIGTERM that
    DuckDB swallowed; otherwise return and let the caller handle `exc` as it would."""
    if threading.current_thread() is not threading.main_thread() or not swallowed_interrupt(exc):
        return
    from prefect.exceptions import TerminationSignal
    from prefect.utilities.engine import is_prefect_sigterm_handler_installed

    if is_prefect_sigterm_handler_installed():
        raise TerminationSignal(signal=signal.SIGTERM) from exc
