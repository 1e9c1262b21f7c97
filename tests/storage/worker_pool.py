"""Worker processes for the multi-process tests: each runs ``store_worker.py`` with a
role, says ``ready``, waits for ``go``, and ends with a ``RESULT`` line."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

WORKER = Path(__file__).with_name("store_worker.py")


class Worker:
    """One worker process; its stdout lines are pumped into a queue by a thread."""

    def __init__(self, role: str, args: dict, log_dir: Path) -> None:
        self.role = role
        self.stderr_path = log_dir / f"{role}-{time.monotonic_ns()}.stderr"
        self._stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen([sys.executable, str(WORKER), role, json.dumps(args)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True, bufsize=1)
        self.pid = self.proc.pid
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text()[-4000:]

    def expect(self, wanted: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"{self.role} did not say {wanted!r} within {timeout} s\n{self.stderr()}")
            if line is None:
                raise AssertionError(f"{self.role} ended before saying {wanted!r}\n{self.stderr()}")
            if line == wanted:
                return
            if line.startswith("RESULT "):
                raise AssertionError(f"{self.role} ended early: {line[:2000]}\n{self.stderr()}")

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                self.kill()
                raise AssertionError(f"{self.role} gave no result within {timeout} s\n{self.stderr()}")
            if line is None:
                raise AssertionError(f"{self.role} ended without a result (exit {self.proc.wait()})\n"
                                     f"{self.stderr()}")
            if line.startswith("RESULT "):
                payload = json.loads(line[len("RESULT "):])
                self.proc.wait(timeout=30)
                assert "error" not in payload, f"{self.role} failed: {payload.get('traceback')}"
                return payload

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def start_together(workers_: list[Worker]) -> None:
    for w in workers_:
        w.expect("ready", timeout=90)
    for w in workers_:
        w.go()
