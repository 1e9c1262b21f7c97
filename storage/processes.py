"""Which process is which, and whether it is still alive, across pid reuse.

A pid alone names a process only while it lives: once it exits, the operating system may
give the number to another process, and ``os.kill(pid, 0)`` then says "alive" for a
process that is long gone. So an identity records the host, the pid and the process's
start time (Linux ``/proc``); a live pid with another start time is a reused one.

Used by the lock's holder and waiter notes (storage/locking.py) and by reconciliation of
runs whose process died (tasks/lifecycle.py).
"""

from __future__ import annotations

import os
import socket


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a live pid from
    a reused one; None where /proc is not available."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def process_identity() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start_ticks": process_start_ticks(os.getpid())}


def process_is_gone(identity: dict) -> bool | None:
    """True when the recorded process is certainly dead, False when it is alive, None when
    this machine cannot tell (another host)."""
    if not identity or identity.get("host") != socket.gethostname():
        return None
    pid = identity.get("pid")
    if not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    recorded, current = identity.get("start_ticks"), process_start_ticks(pid)
    if recorded is not None and current is not None and recorded != current:
        return True  # the pid was reused by another process
    return False
