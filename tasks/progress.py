"""How far a run is: a Prefect progress artifact (the UI), and on the terminal a progress
bar (done/total, elapsed, ETA, best score so far; within 80 columns), or, when stderr is
not a terminal and the command asked for it, a plain line now and then.

What the terminal shows is the command's choice (``show_on_terminal``): ``nirsflow``
commands ask for the bar (or plain lines off a terminal), ``-v`` for nothing (Prefect's
logs are the progress then); a flow run anywhere else draws a bar only on a terminal.
Every call is best-effort: progress that cannot be shown is logged, never a failure."""

from __future__ import annotations

import logging
import math
import sys
import time

log = logging.getLogger("nirsflow.progress")

_MODES = ("auto", "bar", "lines", "off")
_mode = "auto"
#: seconds between two plain lines off a terminal: a log keeps a few lines per minute
LINE_EVERY = 30.0


def show_on_terminal(mode: str) -> None:
    """"bar", "lines" (plain lines off a terminal), "off", or "auto" (a bar on a terminal)."""
    global _mode
    if mode not in _MODES:
        raise ValueError(f"progress mode must be one of {_MODES}, got {mode!r}")
    _mode = mode


def _terminal_mode() -> str:
    if _mode == "auto":
        return "bar" if sys.stderr.isatty() else "off"
    if _mode == "bar" and not sys.stderr.isatty():
        return "lines"
    return _mode


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}"


class Progress:
    """``step()`` after each item; ``entry=`` (a pipeline with ``metric`` and ``best_val``)
    keeps the best cross-validated score so far for the bar."""

    def __init__(self, total: int, key: str, description: str, every: float = 1.0, label: str = "training",
                 unit: str = "pipelines") -> None:
        self.total, self.done, self.every = max(total, 1), 0, every
        self.label, self.unit = label, unit
        self.best_text = ""
        self._best_key = math.inf
        self._started = time.monotonic()
        self._last = self._last_line = 0.0
        self.artifact_id = None
        self._bar = None
        self._mode = _terminal_mode()
        if self._mode == "bar":
            self._start_bar()
        try:
            from prefect.artifacts import create_progress_artifact

            self.artifact_id = create_progress_artifact(0.0, key=key, description=description)
        except Exception as exc:  # noqa: BLE001
            log.warning("no progress artifact: %s", exc)

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        console = Console(file=sys.stderr, width=min(80, Console(file=sys.stderr).width))
        self._bar = Bar(TextColumn("{task.description}"), BarColumn(bar_width=16), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                        TextColumn("{task.fields[best]}"), console=console, transient=False)
        self._bar_task = self._bar.add_task(self.label[:12], total=self.total, best="")
        self._bar.start()

    def _note_best(self, entry) -> None:
        value = getattr(entry, "best_val", None)
        if value is None or getattr(entry, "status", "completed") != "completed":
            return
        from nirs.metrics import score_name
        from tasks.reporting import rank_value

        key = rank_value(entry.metric, value)
        if key < self._best_key:
            self._best_key = key
            self.best_text = f"best {score_name(entry.metric, 'val')} {value:.4g}"

    def step(self, n: int = 1, *, force: bool = False, entry=None) -> None:
        self.done += n
        if entry is not None:
            self._note_best(entry)
        self._show()
        now = time.monotonic()
        if self.artifact_id is None or (not force and now - self._last < self.every and self.done < self.total):
            return
        self._last = now
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self.artifact_id, 100.0 * min(self.done, self.total) / self.total)
        except Exception as exc:  # noqa: BLE001
            log.warning("progress not updated: %s", exc)

    def line(self) -> str:
        """What a plain line says: ``training 5/9 pipelines, 0:12 elapsed, ETA 0:09, best RMSECV 2.31``."""
        elapsed = time.monotonic() - self._started
        done = min(self.done, self.total)
        eta = f", ETA {_clock(elapsed / done * (self.total - done))}" if 0 < done < self.total else ""
        best = f", {self.best_text}" if self.best_text else ""
        return f"{self.label} {done}/{self.total} {self.unit}, {_clock(elapsed)} elapsed{eta}{best}"

    def _show(self) -> None:
        if self._bar is not None:
            self._bar.update(self._bar_task, completed=min(self.done, self.total), best=self.best_text)
            if self.done >= self.total:
                self._bar.stop()
                self._bar = None
        elif self._mode == "lines":
            now = time.monotonic()
            if now - self._last_line >= LINE_EVERY and self.done < self.total:
                self._last_line = now
                print(self.line(), file=sys.stderr, flush=True)
