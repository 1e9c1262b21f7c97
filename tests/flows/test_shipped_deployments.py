"""The shipped deployments/nirsflow.yaml, as a lab uses it after ``nirsflow demo``: served
on a real Prefect server against the demo's workspace, every deployment triggered by hand
ends Completed; ``serve.py check`` and ``nirsflow serve`` refuse, one line each, what
cannot run; and nothing is served without a Prefect server to serve on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import polars as pl
import pytest
import yaml

from flows.schedules import load_deployments_config
from storage import WorkspaceStore
from tests.flows.conftest import REPO, stop_serve
from tests.waiting import wait_for

SHIPPED = REPO / "deployments" / "nirsflow.yaml"
pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def demo_workspace(demo_run, tmp_path):
    """A copy of the demo's workspace (the deployments change it), with a file waiting in
    its inbox, as an instrument leaves one."""
    from nirs.datasets import load_tablet

    workspace = tmp_path / "workspace"
    shutil.copytree(demo_run[0], workspace, ignore=shutil.ignore_patterns(".nirsflow"))
    _, test = load_tablet(instrument=1)
    pl.DataFrame({"sample_id": test.sample_ids[:20]}).with_columns(
        [pl.Series(f"{w:g}", test.X[:20, j]) for j, w in enumerate(test.wavelengths)]
    ).write_csv(workspace / "inbox" / "tablet1" / "batch-0001.csv")
    return workspace


def _serve(args: list[str], env: dict, log_path) -> subprocess.Popen:
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, str(REPO / "deployments" / "serve.py"), *args], env=env, cwd=str(REPO),
                            stdout=log, stderr=subprocess.STDOUT)


def test_every_shipped_deployment_runs_on_the_demo_workspace(prefect_server, prefect_client, demo_workspace,
                                                           tmp_path):
    from prefect.deployments import run_deployment

    config = load_deployments_config(SHIPPED)
    names = {spec.name: spec.load_flow().name for spec in config.deployments}
    assert set(names) == {"retrain-tablet1", "score-inbox", "gc", "vacuum", "reconcile"}
    env = {**prefect_server.env, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    serve = _serve(["--workspace", str(demo_workspace)], env, tmp_path / "serve.log")
    try:
        def registered():
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()
            for name, flow_name in names.items():
                try:  # registered by this serve (another test may have served one of that name)
                    deployment = prefect_client.read_deployment_by_name(f"{flow_name}/{name}")
                except Exception:  # noqa: BLE001 - not registered yet
                    return None
                if deployment.parameters.get("workspace") != str(demo_workspace):
                    return None
            return True
        wait_for(registered, 120, "serve to register every deployment on the demo's workspace", interval=0.5)

        for name, flow_name in names.items():
            flow_run = run_deployment(f"{flow_name}/{name}", timeout=300)
            assert flow_run.state.is_completed(), (name, flow_run.state.name, flow_run.state.message)
    finally:
        stop_serve(serve)
    # and each did its job on the demo's workspace
    with WorkspaceStore(demo_workspace) as store:
        runs = store.list_runs()
        assert runs.height == 2 and set(runs["status"]) == {"completed"}  # the demo's, and the retrain's
        decision = store.get_logs(run_id=runs["run_id"][0]).filter(pl.col("event") == "promotion")
        assert decision.height == 1
        assert "tablet1/batch-0001.csv" in store.list_scored_files()["file_name"].to_list()
    assert not (demo_workspace / "inbox" / "tablet1" / "batch-0001.csv").exists()


def test_check_refuses_what_cannot_run_in_one_line_each(demo_workspace, tmp_path):
    document = yaml.safe_load(SHIPPED.read_text())
    document["workspace"] = str(demo_workspace)
    document["inbox"] = str(tmp_path / "no-such-inbox")
    deployments = document["deployments"]
    deployments["retrain-tablet1"]["parameters"]["template"] = "snv-pls"
    deployments["retrain-wheat"] = {"flow": "retrain", "cron": "0 4 * * 1", "parameters": {
        "dataset": {"name": "wheat", "train": str(tmp_path / "wheat.csv"), "target_column": "protein"},
        "template": "tablet-baseline"}}
    deployments["score-inbox"]["parameters"] = {"alias": "stagng"}
    path = tmp_path / "nirsflow.yaml"
    path.write_text(yaml.safe_dump(document))

    done = subprocess.run([sys.executable, str(REPO / "deployments" / "serve.py"), "check", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    errors = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(errors) == 4 and all(e.startswith("error: deployment '") for e in errors), \
        done.stderr
    by_deployment = {e.split("'")[1]: e for e in errors}
    assert "no template 'snv-pls'" in by_deployment["retrain-tablet1"] and "tablet-baseline" in \
        by_deployment["retrain-tablet1"]
    assert f"train file {tmp_path / 'wheat.csv'} does not exist" in by_deployment["retrain-wheat"]
    score = [e for e in errors if e.startswith("error: deployment 'score-inbox'")]
    assert len(score) == 2 and any("alias 'stagng' points at no chain" in e for e in score)
    assert any(f"inbox {tmp_path / 'no-such-inbox'} does not exist" in e for e in score)

    document["workspace"] = str(tmp_path / "nowhere")  # the workspace itself, through nirsflow serve
    path.write_text(yaml.safe_dump(document))
    done = subprocess.run([sys.executable, "-m", "flows.cli", "serve", "--check", "--config", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    errors = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(errors) == 1 and "has no store.duckdb" in errors[0], done.stderr


@pytest.mark.parametrize("command", [["deployments/serve.py"], ["-m", "flows.cli", "serve"]])
def test_serve_refuses_to_start_without_a_prefect_server(demo_workspace, tmp_path, command):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # no profile naming a server either
    done = subprocess.run([sys.executable, *command, "--workspace", str(demo_workspace)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    errors = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(errors) == 1, done.stderr
    assert errors[0].startswith("error: PREFECT_API_URL is not set: start a Prefect server first (`nirsflow server`)")
    assert not (tmp_path / "prefect-home" / "prefect.db").exists()  # no temporary server was started
