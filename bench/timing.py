"""Timing helper shared by the benchmarks (bench/ is on sys.path when one runs)."""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    """The median wall time of `repeat` calls of `fn`, in seconds."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` and every living descendant (Linux
    /proc), e.g. a Prefect server and its workers, or this process and its fit workers.
    A descendant that exited since the last look takes its seconds with it: measure
    around work whose processes outlive it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = _stat_fields(int(entry))
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    ticks, total, todo = os.sysconf("SC_CLK_TCK"), 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = _stat_fields(current)
        except OSError:
            continue  # exited meanwhile
        total += (int(fields[11]) + int(fields[12])) / ticks
        todo.extend(children.get(current, []))
    return total


def _stat_fields(pid: int) -> list[str]:
    # the fields after "(command)", which may itself hold spaces and parentheses
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()
