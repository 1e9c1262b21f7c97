"""The Prefect server settings nirsflow runs with (flows/server.py): batched task-run
recording, offline, on every server nirsflow starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest

from flows.server import SERVER_SETTINGS, apply_server_settings, free_port
from tests.flows.conftest import REPO, wait_for_api


def _server_settings(api_url: str) -> dict:
    with urllib.request.urlopen(f"{api_url}/admin/settings", timeout=10) as response:
        return json.load(response)["server"]["services"]


def _assert_batched(services: dict) -> None:
    recorder, persister = services["task_run_recorder"], services["event_persister"]
    assert recorder["batch_size"] == int(SERVER_SETTINGS["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"]) > 1
    assert recorder["flush_interval"] == float(SERVER_SETTINGS["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL"])
    assert persister["batch_size"] == int(SERVER_SETTINGS["PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE"])


def test_the_tests_server_runs_with_nirsflows_settings(prefect_server):
    _assert_batched(_server_settings(prefect_server.url))


def test_apply_server_settings_keeps_what_the_environment_already_says():
    environ = {"PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "7", "DO_NOT_TRACK": "0"}
    apply_server_settings(environ)
    assert environ["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"] == "7"
    assert environ["DO_NOT_TRACK"] == "0"
    assert environ["PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE"] == \
        SERVER_SETTINGS["PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE"]
    assert environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


@pytest.mark.parametrize("home_option", [False, True])
def test_nirsflow_server_starts_a_ui_server_with_the_settings_and_its_own_database(tmp_path, home_option):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DO_NOT_TRACK", "NIRSFLOW_"))}
    env.update(PYTHONPATH=str(REPO), HOME=str(tmp_path / "user"), PREFECT_HOME=str(tmp_path / "user-prefect"))
    home = tmp_path / "home" if home_option else tmp_path / "user" / ".nirsflow" / "prefect-server"
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "server", "--port", str(port)]
                            + (["--home", str(home)] if home_option else []), env=env, cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_for_api(url, proc, tmp_path / "server.log")
        _assert_batched(_server_settings(url))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            assert b"<html" in page.read(2000).lower()  # the UI is served
        # its own database: --home, else ~/.nirsflow/prefect-server, never the user's Prefect home
        assert (home / "prefect.db").exists(), list(tmp_path.rglob("prefect.db"))
        assert not (tmp_path / "user-prefect" / "prefect.db").exists()
        assert f"its database in {home}" in (tmp_path / "server.log").read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
