"""The deployments, served from one process by deployments/serve.py against the test's real
Prefect server: their schedules are the config file's, run_deployment of gc, vacuum and
score_inbox completes and has its effect, a run cancelled from the API ends `cancelled`
in the store, and stopping serve pauses the deployments."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import yaml

from flows.schedules import DeploymentConfigError, load_deployments_config
from flows.train import train
from storage import WorkspaceStore
from tests.flows.conftest import GRID_2, OTHER_GRID, REPO, SPLIT, stop_serve
from tests.waiting import wait_for

HAS_SCORE_INBOX = importlib.util.find_spec("flows.score_inbox") is not None
SLOW_GRID = [SPLIT, {"_or_": ["SNV", "MSC", None]},
             {"model": {"class": "PLSRegression", "params": {"n_components": {"_range_": [2, 25, 2]}}}}]


def _config(tmp_path, workspace) -> dict:
    deployments = {
        "gc": {"flow": "gc", "cron": "30 2 * * *", "parameters": {"grace": 0}},
        "vacuum": {"flow": "vacuum", "cron": "0 4 * * 0"},
        "reconcile": {"flow": "reconcile", "interval": 3600, "parameters": {"prefect_retention_days": None}},
        "train-slow": {"flow": "train", "cron": "0 5 1 1 *",
                       "parameters": {"config": SLOW_GRID, "datasets": ["tablet1"]}},
    }
    if HAS_SCORE_INBOX:
        deployments["score-inbox"] = {"flow": "score_inbox", "interval": 300}
    return {"workspace": str(workspace), "inbox": str(tmp_path / "inbox"), "timezone": "UTC",
            "tags": ["test-lab"], "deployments": deployments}


def test_the_config_file_is_checked_with_errors_that_name_the_deployment(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"workspace": "ws", "deployments": {"gc": {"flow": "gc", "cron": "61 * * * *"}}}))
    with pytest.raises(DeploymentConfigError, match="deployment 'gc'.*cron"):
        load_deployments_config(path)
    path.write_text(yaml.safe_dump({"workspace": "ws", "deployments": {"x": {"flow": "nope"}}}))
    with pytest.raises(DeploymentConfigError, match="deployment 'x'.*'flow'"):
        load_deployments_config(path)
    shipped = load_deployments_config(REPO / "deployments" / "nirsflow.yaml")
    assert {d.name for d in shipped.deployments} >= {"gc", "vacuum", "reconcile", "retrain-tablet1", "score-inbox"}


def test_serve_runs_the_deployments_of_the_config_file(prefect_server, prefect_client, workspace, tmp_path):
    from prefect.deployments import run_deployment
    from prefect.states import Cancelling

    # a workspace with one deleted run: gc has dead artifacts to remove, vacuum space to give back
    for config in (OTHER_GRID, GRID_2):  # different models: the first run's artifacts die with it
        assert train(workspace=str(workspace), config=config, return_state=True).is_completed()
    with WorkspaceStore(workspace) as store:
        store.delete_run(store.list_runs().sort("created_at")["run_id"][0])
        artifacts_before = store.list_artifacts().height
        # serve refuses a score-inbox deployment whose alias points nowhere: promote one
        store.set_alias("tablet1", "production", store.sql("SELECT chain_id FROM chains LIMIT 1")["chain_id"][0])
    (tmp_path / "inbox").mkdir()
    config = _config(tmp_path, workspace)
    config_path = tmp_path / "nirsflow.yaml"
    config_path.write_text(yaml.safe_dump(config))

    env = {**prefect_server.env, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen([sys.executable, str(REPO / "deployments" / "serve.py"), str(config_path)], env=env,
                             cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT)
    try:
        def served():
            try:
                return prefect_client.read_deployment_by_name("vacuum/vacuum" if not HAS_SCORE_INBOX
                                                              else "score_inbox/score-inbox")
            except Exception:  # noqa: BLE001 - not registered yet
                assert serve.poll() is None, (tmp_path / "serve.log").read_text()
                return None
        wait_for(served, 90, "serve to register the deployments", interval=0.5)

        # the schedules and parameters are the config file's
        gc_deployment = prefect_client.read_deployment_by_name("gc/gc")
        assert [s.schedule.cron for s in gc_deployment.schedules] == ["30 2 * * *"]
        assert gc_deployment.parameters["workspace"] == str(workspace) and gc_deployment.parameters["grace"] == 0
        assert "test-lab" in gc_deployment.tags
        reconcile_deployment = prefect_client.read_deployment_by_name("reconcile/reconcile")
        assert [s.schedule.interval.total_seconds() for s in reconcile_deployment.schedules] == [3600]

        def finished(name, **kwargs):
            flow_run = run_deployment(name, timeout=180, **kwargs)
            assert flow_run.state.is_final(), f"{name}: still {flow_run.state.name} (is serve picking up runs?)"
            return flow_run

        run = finished("gc/gc")
        assert run.state.is_completed(), run.state.message
        with WorkspaceStore(workspace) as store:
            assert store.list_artifacts().height < artifacts_before
        run = finished("vacuum/vacuum")
        assert run.state.is_completed(), run.state.message
        if HAS_SCORE_INBOX:
            run = finished("score_inbox/score-inbox")
            assert run.state.is_completed(), run.state.message

        # a training run cancelled from the API: the runner stops it, the hooks say so in the store
        flow_run = run_deployment("train/train-slow", timeout=0)
        def running_run():
            if not (workspace / "store.duckdb").exists():
                return None
            with WorkspaceStore(workspace) as store:
                runs = store.list_runs()
                mine = runs.filter(runs["flow_run_id"] == str(flow_run.id))
                return mine.height and store.list_pipelines(run_id=mine["run_id"][0], status="completed").height
        wait_for(running_run, 120, "the served training run to land a pipeline", interval=0.5)
        prefect_client.set_flow_run_state(flow_run.id, Cancelling(message="cancelled by the test"), force=True)
        def cancelled():
            with WorkspaceStore(workspace) as store:
                runs = store.list_runs()
                row = runs.filter(runs["flow_run_id"] == str(flow_run.id))
                return row["status"][0] if row["status"][0] != "running" else None
        assert wait_for(cancelled, 90, "the store run to leave `running`", interval=0.5) == "cancelled"
        final = wait_for(lambda: (lambda s: s if s.is_final() else None)(
            prefect_client.read_flow_run(flow_run.id).state), 60, "Prefect's final state")
        assert final.is_cancelled()
    finally:
        stop_serve(serve, log)
    # stopping serve pauses its deployments' schedules
    assert prefect_client.read_deployment_by_name("gc/gc").paused
