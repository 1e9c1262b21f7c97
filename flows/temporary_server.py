"""The Prefect server a ``nirsflow`` command starts for itself when no ``PREFECT_API_URL``
is set, in place of Prefect's own temporary server.

Prefect's temporary server writes the default profile's database (``~/.prefect``), the
same one a ``prefect server`` of the lab may serve, and every command's temporary server
wrote it too: the UI showed other workspaces' runs, and a stopped temporary server once
paused the schedules a real server was serving. It is also a plain child process:
``kill -TERM`` of the command (Prefect re-raises the signal with the default action once
the run is marked crashed, so no exit handler runs) and ``kill -9`` left it running.

This one:

* has a private Prefect home in a fresh temporary folder, removed when it stops: nothing
  is shared, nothing is kept (runs are in the workspace; for the UI, start
  ``nirsflow server``);
* starts from a copy of an empty, migrated database made once per Prefect version and
  kept in ``~/.cache/nirsflow`` (``$XDG_CACHE_HOME``): migrating a new SQLite database
  takes ~6 s, starting on a migrated one ~3 s;
* runs in its own session (a Ctrl-C in the terminal reaches the command, which records
  the crash through the server, then stops it) and dies with the command on Linux even
  after a ``kill -9`` (``PR_SET_PDEATHSIG``); a home left by a command killed that way
  is removed by the next one;
* is Prefect's temporary server otherwise: ``uvicorn prefect.server.api.server:create_app``
  in ephemeral mode, without the UI, with nirsflow's server settings (``flows.server``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from flows.server import free_port, server_environment

HOME_PREFIX = "nirsflow-prefect-"
OWNER = "owner.pid"
_BOOT = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the command\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(0)  # the command died before the line above took effect\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'uvicorn', *sys.argv[2:]])\n")


def _prefect_version() -> str:
    from prefect import __version__

    return __version__


def _cache_folder() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nirsflow"


def _migrate(home: Path) -> Path:
    """An empty Prefect database in ``home``, migrated to this Prefect's schema."""
    home.mkdir(parents=True, exist_ok=True)
    log = home / "migrate.log"
    with open(log, "w") as out:
        done = subprocess.run([str(Path(sys.executable).parent / "prefect"), "server", "database", "upgrade", "-y"],
                              env=server_environment(home), stdout=out, stderr=subprocess.STDOUT, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"could not create a Prefect database in {home}: {log.read_text()[-2000:]}")
    return home / "prefect.db"


def template_database() -> Path | None:
    """The cached empty database for this Prefect version, made on first use; None when
    the cache folder cannot be written (each server then migrates its own)."""
    cache = _cache_folder()
    template = cache / f"prefect-{_prefect_version()}.db"
    if template.is_file():
        return template
    try:
        cache.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(prefix=".template-", dir=cache))
    except OSError:
        return None
    try:
        os.replace(_migrate(build), template)  # whole or not at all, whoever builds it too
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return template


def sweep_abandoned_homes() -> list[Path]:
    """Remove the homes of temporary servers whose command is gone (killed with -9)."""
    import socket

    from storage import process_is_gone

    removed = []
    for home in Path(tempfile.gettempdir()).glob(HOME_PREFIX + "*"):
        try:
            owner = int((home / OWNER).read_text())
        except (OSError, ValueError):
            continue
        if process_is_gone({"host": socket.gethostname(), "pid": owner}):
            shutil.rmtree(home, ignore_errors=True)
            removed.append(home)
    return removed


class TemporaryServer:
    def __init__(self, home: Path, process: subprocess.Popen, url: str) -> None:
        self.home, self.process, self.url = home, process, url

    @classmethod
    def start(cls, timeout: float = 120.0) -> "TemporaryServer":
        """Start a server and wait until it answers; ``stop`` is registered to run at exit."""
        sweep_abandoned_homes()
        home = Path(tempfile.mkdtemp(prefix=HOME_PREFIX))
        (home / OWNER).write_text(str(os.getpid()))
        template = template_database()
        if template is not None:
            shutil.copyfile(template, home / "prefect.db")
        env = {**server_environment(home), "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        started = time.monotonic()
        for _attempt in range(3):  # a port taken between choosing it and binding it: another port
            port = free_port()
            log = open(home / "server.log", "ab")
            process = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(os.getpid()), "--factory", "prefect.server.api.server:create_app",
                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            log.close()
            server = cls(home, process, f"http://127.0.0.1:{port}/api")
            atexit.register(server.stop)
            if server._wait(started + timeout):
                return server
            server.stop(keep_home=True)
        log_text = (home / "server.log").read_text(errors="replace")[-3000:]
        shutil.rmtree(home, ignore_errors=True)
        raise RuntimeError(f"the temporary Prefect server did not start; its log ends with:\n{log_text}")

    def _wait(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def stop(self, keep_home: bool = False) -> None:
        """Stop the server (its whole session) and remove its home. Quick: it is run by
        exit handlers and by the stop watchdog."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
            except ProcessLookupError:
                pass
        if not keep_home:
            shutil.rmtree(self.home, ignore_errors=True)
