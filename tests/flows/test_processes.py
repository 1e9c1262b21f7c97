"""Runs that do not end cleanly, and several processes on one workspace: the store's
status must follow Prefect's, through the hooks or through reconciliation."""

from __future__ import annotations

import signal
import time
from uuid import UUID

import pytest

from flows.maintenance import reconcile
from flows.train import train
from storage import WorkspaceStore
from tests.flows.conftest import GRID_2, SPLIT, start_flow_process, train_code
from tests.waiting import wait_for

# Long enough to be interrupted half-way: 16 pipelines x 3 folds.
LONG_GRID = [SPLIT, {"_or_": ["SNV", None]},
             {"model": {"class": "PLSRegression", "params": {"n_components": {"_range_": [2, 17, 2]}}}}]


def _read(workspace, fn):
    if not (workspace / "store.duckdb").exists():
        return None
    with WorkspaceStore(workspace, lock_timeout=60) as store:
        return fn(store)


def _completed_pipelines(workspace) -> int:
    return _read(workspace, lambda s: s.list_pipelines(status="completed").height) or 0


def _the_run(workspace) -> dict:
    return _read(workspace, lambda s: s.get_run(s.list_runs()["run_id"][0]))


def _live_artifacts_load(workspace) -> int:
    """Load every artifact that a chain references (hash-checked); return how many."""
    def check(store):
        ids = store.sql("SELECT DISTINCT artifact_id FROM chain_artifacts")["artifact_id"].to_list()
        for artifact_id in ids:
            store.load_artifact(artifact_id)
        return len(ids)
    return _read(workspace, check)


def test_sigterm_of_the_flow_process_ends_the_run_crashed(prefect_server, prefect_client, workspace, tmp_path):
    proc = start_flow_process(prefect_server, train_code(workspace, LONG_GRID), tmp_path / "flow.log")
    try:
        wait_for(lambda: _completed_pipelines(workspace) >= 1, 120, "a first pipeline to land")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    run = _the_run(workspace)
    log = (tmp_path / "flow.log").read_text()
    assert run["status"] == "crashed", (run, log[-3000:])
    assert "termination" in run["error"].lower() or "signal" in run["error"].lower(), run["error"]
    flow_run = prefect_client.read_flow_run(UUID(run["flow_run_id"]))
    assert flow_run.state.is_crashed()
    # nothing of a completed pipeline was lost; none is left running
    pipes = _read(workspace, lambda s: s.list_pipelines(run_id=run["run_id"]))
    assert "running" not in set(pipes["status"])
    assert _live_artifacts_load(workspace) > 0


def test_sigkill_of_the_flow_process_is_swept_by_reconcile(prefect_server, prefect_client, workspace, tmp_path):
    proc = start_flow_process(prefect_server, train_code(workspace, LONG_GRID), tmp_path / "flow.log")
    try:
        wait_for(lambda: _completed_pipelines(workspace) >= 1, 120, "a first pipeline to land")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    run = _the_run(workspace)
    assert run["status"] == "running"  # no hook could run
    assert prefect_client.read_flow_run(UUID(run["flow_run_id"])).state.is_running()

    result = reconcile(workspace=str(workspace), prefect_retention_days=None)
    assert [a["action"] for a in result["actions"]] == ["crashed"]
    run = _the_run(workspace)
    assert run["status"] == "crashed" and "is gone" in run["error"]
    assert prefect_client.read_flow_run(UUID(run["flow_run_id"])).state.is_crashed()
    pipes = _read(workspace, lambda s: s.list_pipelines(run_id=run["run_id"]))
    assert "running" not in set(pipes["status"])
    assert _live_artifacts_load(workspace) > 0  # the store opens after kill -9, live chains intact


@pytest.mark.parametrize("hold_when", ["run begun", "pipelines landed"])
def test_a_hook_whose_store_write_fails_never_leaves_the_run_completed(prefect_server, prefect_client, workspace,
                                                                      tmp_path, hold_when):
    """Another process holds the workspace past the run's lock timeout: either from just
    after begin_run (every pipeline write fails) or from after the last pipeline landed
    (only complete_run fails). Neither leaves the run `completed` with writes missing."""
    WorkspaceStore(workspace).close()
    ready, held, release = tmp_path / "ready", tmp_path / "held", tmp_path / "release"
    condition = ("store.list_runs().height == 0" if hold_when == "run begun"
                 else "store.list_pipelines(status='completed').height < 2")
    holder = start_flow_process(prefect_server, f"""
        import pathlib, time
        from storage import WorkspaceStore
        store = WorkspaceStore({str(workspace)!r}, lock_timeout=60)
        pathlib.Path({str(ready)!r}).write_text("ready")
        while {condition}:
            time.sleep(0.05)
        with store.batch():                    # hold the workspace, exclusively
            pathlib.Path({str(held)!r}).write_text("held")
            while not pathlib.Path({str(release)!r}).exists():
                time.sleep(0.05)
        """, tmp_path / "holder.log")
    try:
        wait_for(ready.exists, 60, "the lock holder to start")
        state = train(workspace=str(workspace), config=GRID_2, lock_timeout=1.0, return_state=True)
        assert held.exists()
        if hold_when == "run begun":
            assert state.is_failed()  # Prefect does not call it Completed either
            assert "did not land" in state.message
        else:
            assert state.is_completed()  # every pipeline landed; only complete_run was lost
    finally:
        release.write_text("go")
        holder.wait(timeout=30)
    assert holder.returncode == 0, (tmp_path / "holder.log").read_text()
    run = _the_run(workspace)
    assert run["status"] == "running"  # the hooks' own fallbacks could not write either
    # reconcile settles it against Prefect's final state, and never calls missing writes completed
    reconcile(workspace=str(workspace), prefect_retention_days=None)
    run = _the_run(workspace)
    if hold_when == "run begun":
        assert run["status"] == "failed" and "did not land" in run["error"]
        pipes = _read(workspace, lambda s: s.list_pipelines(run_id=run["run_id"]))
        assert "completed" not in set(pipes["status"])
    else:
        assert run["status"] == "completed" and run["summary"]["reconciled"] is True


def test_reconcile_repairs_a_lost_complete_run_and_refuses_missing_pipelines(prefect_server, prefect_client,
                                                                            workspace):
    from prefect import flow

    @flow(name="finished-elsewhere")
    def finished():
        return 1

    state = finished(return_state=True)
    flow_run_id = str(state.state_details.flow_run_id)
    with WorkspaceStore(workspace) as store:
        whole = store.begin_run("whole", flow_run_id=flow_run_id)
        store.log_step(None, event="planned", run_id=whole, details={"pipelines": 1})
        p = store.begin_pipeline(whole, "p", [], [], "tablet1")
        store.complete_pipeline(p, best_val=1.0, metric="rmse")
        partial = store.begin_run("partial", flow_run_id=flow_run_id)
        store.log_step(None, event="planned", run_id=partial, details={"pipelines": 2})
        p = store.begin_pipeline(partial, "p", [], [], "tablet1")
        store.complete_pipeline(p, best_val=1.0, metric="rmse")
        outside = store.begin_run("notebook")  # not a Prefect run: left alone
    reconcile(workspace=str(workspace), prefect_retention_days=None)
    with WorkspaceStore(workspace) as store:
        assert store.get_run(whole)["status"] == "completed"
        assert store.get_run(whole)["summary"]["reconciled"] is True
        assert store.get_run(partial)["status"] == "failed"
        assert "1 finished of 2 planned" in store.get_run(partial)["error"]
        assert store.get_run(outside)["status"] == "running"


def test_two_trainings_and_a_gc_in_three_processes_on_one_workspace(prefect_server, workspace, tmp_path):
    WorkspaceStore(workspace).close()
    trainers = [start_flow_process(prefect_server, train_code(workspace, GRID_2, name=f"trainer {i}"),
                                   tmp_path / f"train{i}.log") for i in range(2)]
    gc = start_flow_process(prefect_server, f"""
        import time
        from flows.maintenance import gc
        for _ in range(3):     # grace 0: only the lock protects what a training is saving
            gc(workspace={str(workspace)!r}, grace=0)
            time.sleep(0.5)
        """, tmp_path / "gc.log")
    for name, proc in [("train0", trainers[0]), ("train1", trainers[1]), ("gc", gc)]:
        assert proc.wait(timeout=240) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    runs = _read(workspace, lambda s: s.list_runs())
    assert runs.height == 2 and set(runs["status"]) == {"completed"}
    assert _live_artifacts_load(workspace) > 0
    chains = _read(workspace, lambda s: s.sql("SELECT chain_id FROM chains")["chain_id"].to_list())
    assert len(chains) == 4
    from nirs.datasets import load_tablet
    _, test = load_tablet(1)
    with WorkspaceStore(workspace) as store:
        for chain_id in chains:
            assert store.replay_chain(chain_id, test.X, test.wavelengths).shape == (test.n_samples,)


SWALLOWING_FLOW = """
    import sys
    from prefect import flow
    from storage import WorkspaceStore
    from tasks.signals import raise_swallowed

    @flow(name="long-statement", persist_result=False)
    def long_statement(workspace: str):
        store = WorkspaceStore(workspace)
        print("statement", flush=True)
        try:  # a statement long enough for the signal to land inside DuckDB
            store.sql("SELECT count(*) FROM range(200000000000)")
        except Exception as exc:
            print(f"duckdb raised {{type(exc).__name__}}: {{exc}}", flush=True)
            raise_swallowed(exc)
            raise
        return "went on"

    state = long_statement({workspace!r}, return_state=True)
    print(f"state {{state.type.value}} {{state.message}}", flush=True)
"""


def test_a_sigterm_that_duckdb_swallowed_mid_statement_still_crashes_the_flow(prefect_server, prefect_client,
                                                                              tmp_path):
    """DuckDB runs Prefect's SIGTERM handler inside a statement and reports its exception
    as "Query interrupted"; tasks/signals.py raises the termination again."""
    log_path = tmp_path / "flow.log"
    proc = start_flow_process(prefect_server, SWALLOWING_FLOW.format(workspace=str(tmp_path / "ws")), log_path)
    try:
        wait_for(lambda: "statement" in log_path.read_text(), 120, "the long statement to start")
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    log = log_path.read_text()
    assert "duckdb raised RuntimeError: Query interrupted" in log, log[-3000:]
    assert "went on" not in log and "state COMPLETED" not in log and "state FAILED" not in log, log[-3000:]
    runs = prefect_client.read_flow_runs()
    crashed = [r for r in runs if r.name and r.state and r.state.type.value == "CRASHED"
               and r.flow_id and prefect_client.read_flow(r.flow_id).name == "long-statement"]
    assert crashed, [(r.name, r.state.type.value if r.state else None) for r in runs]
