"""Prefect's engine chatter at DEBUG: a pipeline task otherwise writes three INFO lines of
bookkeeping (each state hook's "Running hook ..." and "Hook ... finished running
successfully", then "Finished in state Completed()") around the one line that matters,
its scores. Those lines are demoted to DEBUG, in the terminal, the log file and the UI
alike, so they show only when Prefect logs at DEBUG (``PREFECT_LOGGING_LEVEL=DEBUG``).
Failures, and a flow run's own "Finished in state", stay as Prefect logs them."""

from __future__ import annotations

import logging

# prefect.engine: a flow's on_running hook logs before the flow run's logger exists
_ENGINE_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "prefect.engine")
_installed = False


def is_chatter(record: logging.LogRecord) -> bool:
    message = record.msg if isinstance(record.msg, str) else ""
    if message.startswith("Running hook ") or (message.startswith("Hook ")
                                               and message.endswith("finished running successfully")):
        return True
    # a task run that completed says so in its state; a failed one keeps its ERROR line
    return record.name == "prefect.task_runs" and message.startswith("Finished in state Completed")


class EngineChatterToDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not is_chatter(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def install() -> None:
    """Idempotent; called when a flow of nirsflow is defined and when one starts."""
    global _installed
    if _installed:
        return
    for name in _ENGINE_LOGGERS:
        logging.getLogger(name).addFilter(EngineChatterToDebug())
    _installed = True
