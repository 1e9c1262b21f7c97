"""A real local Prefect server for the flow tests, started once per session, and helpers to
run flows in other OS processes against it.

A real server rather than ``prefect_test_harness``: several tests run flows in
subprocesses (SIGTERM, SIGKILL, three processes on one workspace), and those need an API
URL they can reach. The server gets its own PREFECT_HOME and SQLite file in a temporary
folder, so nothing of the developer's own Prefect is touched, and nirsflow's server
settings (``flows.server``), as a lab's server would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Small, fast grids on the real Tablet spectra: 3-fold CV, few PLS components.
SPLIT = {"split": {"class": "KFold", "params": {"n_splits": 3, "shuffle": True, "random_state": 0}}}
GRID_2 = [{"_or_": ["SNV", None]}, SPLIT, {"model": {"class": "PLSRegression", "params": {"n_components": 6}}}]
OTHER_GRID = [SPLIT, "MSC", {"model": {"class": "PLSRegression", "params": {"n_components": 4}}}]
# The second alternative fails inside scikit-learn: 900 components > 597 wavelengths.
GRID_WITH_FAILURE = [SPLIT, {"model": {"class": "PLSRegression", "params": {"n_components": {"_or_": [6, 900]}}}}]


@dataclass
class Server:
    url: str
    env: dict  # environment for subprocesses that must use this server
    home: Path


def _drain_prefect_workers() -> None:
    """Ship queued logs and events while the server is still up (as prefect_test_harness
    does), so the session does not end retrying them against a stopped server."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain():
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:
            pass
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    run_coro_as_sync(drain())


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.server import server_environment, start_local_server

    home = tmp_path_factory.mktemp("prefect-home")
    server = start_local_server(home, timeout=120)
    url = server.url
    env = server_environment(home)
    client_env = {**env, "PREFECT_API_URL": url}
    client_env.pop("PREFECT_API_DATABASE_CONNECTION_URL")
    client_env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    old = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        import prefect.context

        with temporary_settings(updates={PREFECT_API_URL: url}), \
                prefect.context._temporary_global_settings_context(prefect.context.get_settings_context()):
            # the global context too, as prefect_test_harness does: threads started without a
            # copy of this context (Prefect's services) must not start a temporary server
            yield Server(url=url, env=client_env, home=home)
            _drain_prefect_workers()
    finally:
        if old is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = old
        server.stop()


@pytest.fixture
def workspace(tmp_path):
    return tmp_path / "ws"


@pytest.fixture
def prefect_client(prefect_server):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        yield client


def start_flow_process(server: Server, code: str, log_path: Path) -> subprocess.Popen:
    """Run ``code`` (Python, may use the flows) in a new process against the test server."""
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=server.env, cwd=str(REPO),
                            stdout=log, stderr=subprocess.STDOUT)


def stop_serve(serve: subprocess.Popen, log=None) -> None:
    """Stop a serve process as a user does (Ctrl-C), and never leave it running."""
    serve.send_signal(signal.SIGINT)
    try:
        serve.wait(timeout=60)
    except subprocess.TimeoutExpired:
        serve.kill()
    if log is not None:
        log.close()


def train_code(workspace: Path, config, **kwargs) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"""
        import json
        from flows.train import train
        train(workspace={str(workspace)!r}, config=json.loads({json.dumps(json.dumps(config))}){', ' + args if args else ''})
        """


def wait_for_api(url: str, process: subprocess.Popen, log_path: Path, timeout: float = 120) -> None:
    """Wait until a server started in ``process`` answers ``url/health``; fail with the
    end of its log if it exits or does not answer in ``timeout`` seconds."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"the server did not answer in {timeout:.0f} s: " \
                                                f"{log_path.read_text()[-3000:]}"
            time.sleep(0.5)
