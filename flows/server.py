"""A local Prefect server configured for nirsflow's load, and how to start one.

A training grid is a burst of short task runs (a fold fit of a PLS grid on Tablet takes
~20 ms). Prefect 3.9's server records each task run from its events; its task-run
recorder flushes after every single run by default (``batch_size=1``), which cost the
server ~40 ms of CPU per task run here: 120 task runs of a 20-pipeline grid kept one of
the machine's two cores busy for ~5 s, longer than the fits themselves. Recording them in
batches of up to 100, flushed at least every second, cut that to ~13-20 ms per task run
(bench/flow_bench.py), and the UI still shows a task run within about a second.

``SERVER_SETTINGS`` are those settings. ``nirsflow server`` starts a server with them, in
a Prefect home of its own (``default_server_home``); the temporary server a ``nirsflow``
command starts without ``PREFECT_API_URL`` (flows/temporary_server.py) gets them too, in
a throwaway home; the tests and benchmarks start their servers through
``start_local_server``. A server started some other way can be given them as
environment variables (README, *Prefect*).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SERVER_SETTINGS = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "1",
}
#: nirsflow runs offline: no analytics, no tracking.
OFFLINE_SETTINGS = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def apply_offline_settings(environ=os.environ) -> None:
    """Set OFFLINE_SETTINGS where the environment does not already say otherwise: before
    Prefect is imported (this module imports none of it), as the tests and benchmarks do."""
    for name, value in OFFLINE_SETTINGS.items():
        environ.setdefault(name, value)


def apply_server_settings(environ=os.environ) -> None:
    """Set SERVER_SETTINGS (and the offline ones) where the environment does not already
    say otherwise, so that a temporary server started from this process gets them."""
    apply_offline_settings(environ)
    for name, value in SERVER_SETTINGS.items():
        environ.setdefault(name, value)


class DatabaseURLError(ValueError):
    """A ``--database`` that is not a PostgreSQL URL."""


def database_url(database: str | None, home: Path) -> str:
    """Prefect's ``PREFECT_API_DATABASE_CONNECTION_URL`` for a server in ``home``: its own
    SQLite file when ``database`` is None; else ``database``, a PostgreSQL URL
    (``postgresql://user:password@host:5432/db``, or with ``?host=/socket/folder``) given
    the asyncpg driver Prefect's server talks through. Prefect's migrations need the
    ``pg_trgm`` extension in that database (create it, or let the user create it)."""
    if database is None:
        return f"sqlite+aiosqlite:///{Path(home)}/prefect.db"
    scheme, sep, rest = database.partition("://")
    if not sep or scheme not in ("postgresql", "postgres", "postgresql+asyncpg"):
        raise DatabaseURLError(f"--database {database.split('@')[-1]!r}: expected a PostgreSQL URL, "
                               "postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
    return f"postgresql+asyncpg://{rest}"


def server_environment(home: Path, *, ui: bool = False, base: dict | None = None,
                       database: str | None = None) -> dict:
    """The environment of a server with its own PREFECT_HOME and its database (an SQLite
    file in ``home``, or the PostgreSQL URL ``database``): nothing of the user's own
    Prefect profile is read or touched."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("PREFECT_")}
    env.update(OFFLINE_SETTINGS)
    env.update(SERVER_SETTINGS)
    env.update({"PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "true" if ui else "false",
                "PREFECT_API_DATABASE_CONNECTION_URL": database_url(database, home),
                "PREFECT_LOGGING_LEVEL": "WARNING"})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalServer:
    process: subprocess.Popen
    url: str  # the API URL, ending in /api
    home: Path
    startup_s: float

    def stop(self, timeout: float = 20.0) -> None:
        import signal

        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_local_server(home: Path, *, port: int | None = None, ui: bool = False,
                       timeout: float = 180.0, database: str | None = None) -> LocalServer:
    """Start ``prefect server start`` on 127.0.0.1 with SERVER_SETTINGS, in its own
    session (so ``stop`` ends it whole), on its SQLite file or on PostgreSQL ``database``,
    and wait until its health check answers. Its
    output goes to ``home/server.log``, quoted in the error if it does not come up."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    started = time.perf_counter()
    log_path = home / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start",
                                    "--host", "127.0.0.1", "--port", str(port)],
                                   env=server_environment(home, ui=ui, database=database), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = LocalServer(process, f"http://127.0.0.1:{port}/api", home, 0.0)
    while True:
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as response:
                if response.status == 200:
                    server.startup_s = time.perf_counter() - started
                    return server
        except OSError:
            pass
        if process.poll() is not None or time.perf_counter() - started > timeout:
            server.stop()
            raise RuntimeError(f"the Prefect server did not start within {timeout:.0f} s; "
                               f"{log_path} ends with:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.25)


# -- where a server keeps its database ------------------------------------------------------

def default_server_home() -> Path:
    """``nirsflow server``'s own Prefect home (its SQLite database, its profile):
    ``$NIRSFLOW_SERVER_HOME``, else ``~/.nirsflow/prefect-server``. Not Prefect's default
    profile, which other tools and every temporary server of Prefect's write too."""
    return Path(os.environ.get("NIRSFLOW_SERVER_HOME") or Path.home() / ".nirsflow" / "prefect-server").expanduser()


def configured_api_url() -> str | None:
    """The API a Prefect client of this process would talk to: ``PREFECT_API_URL`` from
    the environment or the active Prefect profile; None when there is none (Prefect
    would start a temporary server)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


def use_api(url: str) -> None:
    """Point this process's Prefect client (and child processes) at ``url``, also when
    Prefect has already read its settings."""
    os.environ["PREFECT_API_URL"] = url
    if "prefect.context" in sys.modules:
        sys.modules["prefect.context"].refresh_global_settings_context()


def run_link(flow_run_id) -> str | None:
    """The UI page of a flow run on the server this process talks to, or None when that
    is a temporary server (gone with the command) or there is none. ``PREFECT_UI_URL``
    when set, else the API's address without ``/api``."""
    if not flow_run_id or os.environ.get(TEMPORARY_API_MARK):
        return None
    ui = os.environ.get("PREFECT_UI_URL")
    if not ui:
        api = configured_api_url()
        if not api:
            return None
        api = api.rstrip("/")
        ui = api[:-len("/api")] if api.endswith("/api") else api
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}"


#: set in the environment of a command that started its own temporary server
TEMPORARY_API_MARK = "NIRSFLOW_TEMPORARY_API"
