"""What a command prints while it runs: its progress and its result, not Prefect's logs.

Prefect logs every run to its API (the UI shows them) and, by default, to the terminal.
A ``nirsflow`` command sends the terminal's copy to ``<workspace>/logs/nirsflow.log``
instead (warnings and errors still reach the terminal), and shows a progress bar
(``tasks.progress``); ``-v`` keeps Prefect's logs on the terminal, without the bar."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

LOG_FILE = Path("logs") / "nirsflow.log"


def log_file(workspace: Path) -> Path:
    return Path(workspace) / LOG_FILE


def route_prefect_logs(workspace: Path, verbose: bool) -> Path:
    """Prefect's log lines to the workspace's log file (appended; several commands may
    share it), and to the terminal only with ``verbose`` (else warnings and worse)."""
    # Prefect configures its logging when prefect.main is first imported; first, then, or
    # it would find this file handler on the root logger and leave out its console handler
    import prefect.main  # noqa: F401
    from prefect.logging.formatters import PrefectFormatter
    from prefect.logging.handlers import PrefectConsoleHandler

    from tasks import engine_logs, progress

    engine_logs.install()
    path = log_file(workspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.set_name("nirsflow-log-file")
    # Prefect's own line format, with the date: the file spans days
    handler.setFormatter(PrefectFormatter(
        format="%(asctime)s | %(levelname)-7s | %(name)s - %(message)s",
        flow_run_fmt="%(asctime)s | %(levelname)-7s | Flow run %(flow_run_name)r - %(message)s",
        task_run_fmt="%(asctime)s | %(levelname)-7s | Task run %(task_run_name)r - %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    if not any(h.get_name() == "nirsflow-log-file" for h in root.handlers):
        root.addHandler(handler)
    for console in (h for h in root.handlers if isinstance(h, PrefectConsoleHandler)):
        console.setLevel(logging.NOTSET if verbose else logging.WARNING)
    progress.show_on_terminal("off" if verbose else "bar" if sys.stderr.isatty() else "lines")
    return path
