"""The train flow on real Tablet spectra: what lands in the store, through which hooks, and
what the Prefect UI gets."""

from __future__ import annotations

import json
from uuid import UUID

import numpy as np
import pytest

from flows.train import train
from storage import PipelineLibrary, WorkspaceStore
from tests.flows.conftest import GRID_2, GRID_WITH_FAILURE, SPLIT
from tests.waiting import wait_for


def _flow_run_id(state) -> str:
    return str(state.state_details.flow_run_id)


def _recorded_task_run(client, task_run_id: str):
    """The task run once the server has recorded its final state. nirsflow's server
    records task runs in batches, flushed at least every second (flows/server.py), so
    the last ones may land a moment after the flow returns."""
    from prefect.exceptions import ObjectNotFound

    def final():
        try:
            task_run = client.read_task_run(UUID(task_run_id))
        except ObjectNotFound:
            return None
        return task_run if task_run.state is not None and task_run.state.is_final() else None

    return wait_for(final, timeout=15, what=f"task run {task_run_id} recorded in a final state")


def test_train_writes_run_pipelines_chains_predictions_artifacts_with_prefect_ids(prefect_server, prefect_client,
                                                                                  workspace):
    state = train(workspace=str(workspace), datasets=["tablet1"], config=GRID_2, return_state=True)
    assert state.is_completed(), state.message
    flow_run_id = _flow_run_id(state)
    flow_run = prefect_client.read_flow_run(UUID(flow_run_id))
    assert flow_run.name == "train · config · tablet1"
    assert {"nirsflow", "train", "dataset:tablet1"} <= set(flow_run.tags)

    with WorkspaceStore(workspace) as store:
        runs = store.list_runs()
        assert runs.height == 1
        run = store.get_run(runs["run_id"][0])
        assert run["status"] == "completed" and run["flow_run_id"] == flow_run_id
        assert run["summary"]["counts"] == {"planned": 2, "completed": 2, "failed": 0, "landed": 2, "store_errors": 0}
        assert "dataset:tablet1" in run["tags"]

        pipes = store.list_pipelines(run_id=run["run_id"])
        assert pipes.height == 2 and set(pipes["status"]) == {"completed"}
        assert set(pipes["flow_run_id"]) == {flow_run_id}
        # every pipeline row names its own Prefect task run, and that task run is the pipeline's
        spans = []
        for task_run_id, name in zip(pipes["task_run_id"], pipes["name"]):
            task_run = _recorded_task_run(prefect_client, task_run_id)
            assert str(task_run.flow_run_id) == flow_run_id
            assert task_run.name == f"tablet1 · {name}" and task_run.state.is_completed()
            spans.append((task_run.start_time, task_run.end_time))
        # max_concurrency=2 (the default): the two pipelines ran at the same time
        assert max(start for start, _ in spans) < min(end for _, end in spans), spans

        chains = store.sql("SELECT c.chain_id, c.task_run_id, c.metadata, p.task_run_id AS p_task "
                           "FROM chains c JOIN pipelines p USING (pipeline_id)")
        assert chains.height == 2
        assert (chains["task_run_id"] == chains["p_task"]).all()
        import json
        for meta in chains["metadata"]:
            # the folds are fitted inside the pipeline task: its result (kept in the chain)
            # and its log lines show each, with its score and time; no task run per fold
            folds = json.loads(meta)["folds"]
            assert [f["fold_id"] for f in folds] == ["fold_0", "fold_1", "fold_2"]
            assert all(f["metric"] == "rmse" and f["val"] > 0 and f["ms"] >= 0 for f in folds)
        task_runs = prefect_client.read_task_runs()
        assert not [t for t in task_runs if str(t.flow_run_id) == flow_run_id and "fold_" in t.name]

        preds = store.query_predictions()
        assert preds.height > 0 and preds["task_run_id"].null_count() == 0
        assert set(preds["task_run_id"]) == set(pipes["task_run_id"])
        assert store.list_artifacts().height > 0

        # the best chain replays to its recorded test predictions
        best = store.top_predictions(1, partition="test", run_id=run["run_id"])
        arrays = store.get_prediction_arrays(best["prediction_id"][0])
        from nirs.datasets import load_tablet
        _, test = load_tablet(1)
        if best["fold_id"][0] == "avg":
            replayed = store.replay_chain(best["chain_id"][0], test.X, test.wavelengths)
            np.testing.assert_allclose(replayed, arrays["y_pred"], atol=1e-9)

        logs = store.get_logs(run_id=run["run_id"])
        events = set(logs["event"])
        assert {"process", "planned", "log"} <= events
        messages = " ".join(m for m in logs["message"] if m)
        assert "rmse" in messages  # the pipeline tasks' get_run_logger lines are kept in the store
        for name in pipes["name"]:  # one line per fold, in the log of its pipeline's task run
            assert f"tablet1 · {name} · fold_2: rmse train " in messages

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    # this run's artifacts, asked of the server: the session server holds every flow test's
    # artifacts, more than one page of read_artifacts() once scoring runs publish drift too
    mine = prefect_client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])))
    assert all(str(a.flow_run_id) == flow_run_id for a in mine)
    kinds = {a.type for a in mine}
    assert {"table", "markdown", "progress"} <= kinds
    table = next(a for a in mine if a.type == "table")
    assert table.key == "leaderboard-config"
    board = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert list(board[0])[:4] == ["#", "RMSECV", "RMSEP", "chain"] and len(board[0]["chain"]) == 8
    flow_run = prefect_client.read_flow_run(UUID(flow_run_id))  # the runs list reads at a glance
    assert flow_run.state.message.startswith("2 pipelines completed; best RMSECV ")
    assert "RMSEP" in flow_run.state.message and "dataset:tablet1" in flow_run.tags
    progress = next(a for a in mine if a.type == "progress")
    assert float(progress.data) == pytest.approx(100.0)


def test_a_failing_pipeline_is_recorded_failed_and_the_run_completes(prefect_server, workspace):
    state = train(workspace=str(workspace), datasets=["tablet1"], config=GRID_WITH_FAILURE, return_state=True)
    assert state.is_completed(), state.message
    with WorkspaceStore(workspace) as store:
        run = store.get_run(store.list_runs()["run_id"][0])
        assert run["status"] == "completed"
        assert run["summary"]["counts"]["failed"] == 1 and run["summary"]["counts"]["completed"] == 1
        pipes = store.list_pipelines(run_id=run["run_id"])
        failed = pipes.filter(pipes["status"] == "failed")
        assert failed.height == 1
        error = failed["error"][0]
        assert "n_components" in error and "PLSRegression" in error  # sklearn's message + nirs's note
        assert failed["task_run_id"][0] is not None
        # its failure is in the logs table, and no chain keeps artifacts alive for it
        errors = store.get_logs(pipeline_id=failed["pipeline_id"][0], level="error")
        assert errors.height >= 1
        assert store.get_chains_for_pipeline(failed["pipeline_id"][0]).height == 0
        ok = pipes.filter(pipes["status"] == "completed")
        assert store.get_chains_for_pipeline(ok["pipeline_id"][0]).height == 1


def test_a_flow_that_raises_ends_failed_in_the_store_with_its_reason(prefect_server, workspace):
    missing = workspace.parent / "nowhere.csv"
    state = train(workspace=str(workspace), config=GRID_2, return_state=True,
                  datasets=[{"name": "wheat", "train": str(missing), "target_column": "protein"}])
    assert state.is_failed()
    with WorkspaceStore(workspace) as store:
        run = store.get_run(store.list_runs()["run_id"][0])
        assert run["status"] == "failed"
        assert run["flow_run_id"] == _flow_run_id(state)
        assert "nowhere.csv" in run["error"] and "does not exist" in run["error"]


def test_a_bad_template_name_fails_the_run_with_a_clear_error(prefect_server, workspace):
    PipelineLibrary(workspace).save_template(GRID_2, "snv-pls")
    state = train(workspace=str(workspace), template="snv-pls-typo", return_state=True)
    assert state.is_failed()
    with WorkspaceStore(workspace) as store:
        run = store.get_run(store.list_runs()["run_id"][0])
        assert run["status"] == "failed" and "snv-pls-typo" in run["error"]


def test_train_from_a_library_template_with_refit(prefect_server, workspace):
    PipelineLibrary(workspace).save_template([SPLIT, "SNV", {"model": {"class": "PLSRegression",
                                                                       "params": {"n_components": 6}}}], "snv-pls")
    state = train(workspace=str(workspace), template="snv-pls", refit=True, return_state=True)
    assert state.is_completed(), state.message
    with WorkspaceStore(workspace) as store:
        run = store.get_run(store.list_runs()["run_id"][0])
        assert run["status"] == "completed" and "template:snv-pls" in run["tags"]
        chain = store.get_chain(run["summary"]["best"]["chain_id"])
        assert chain["fold_strategy"] == "refit" and "refit" in chain["fold_artifacts"]


def test_the_train_flow_runs_its_folds_on_a_process_pool_too(prefect_server, workspace):
    """The flow object (hooks included) must pickle for process-pool task runners."""
    from prefect.task_runners import ProcessPoolTaskRunner

    state = train.with_options(task_runner=ProcessPoolTaskRunner(max_workers=2))(
        workspace=str(workspace), config=GRID_2, export=False, return_state=True)
    assert state.is_completed(), state.message
    with WorkspaceStore(workspace) as store:
        run = store.get_run(store.list_runs()["run_id"][0])
        assert run["status"] == "completed" and run["summary"]["counts"]["completed"] == 2


def test_fits_in_worker_processes_store_the_same_chains_as_fits_in_the_flow(prefect_server, tmp_path):
    """``processes=2``: the pipeline tasks stay in the flow process, their fold fits move to
    loky workers; what lands in the store is the same, number for number."""
    test_X = np.random.default_rng(0).normal(3.0, 0.3, (5, 597))
    replayed = {}
    for processes in (0, 2):
        ws = tmp_path / f"ws{processes}"
        state = train(workspace=str(ws), config=GRID_2, export=False, processes=processes, return_state=True)
        assert state.is_completed(), state.message
        with WorkspaceStore(ws) as store:
            pipes = store.list_pipelines().sort("name")
            assert set(pipes["status"]) == {"completed"}
            chains = [store.get_chains_for_pipeline(p)["chain_id"][0] for p in pipes["pipeline_id"]]
            replayed[processes] = ([store.replay_chain(c, test_X) for c in chains], pipes["best_val"].to_list())
    for a, b in zip(replayed[0][0], replayed[2][0]):
        np.testing.assert_array_equal(a, b)
    assert replayed[0][1] == replayed[2][1]


def test_a_workspace_that_cannot_be_opened_fails_the_flow_with_the_store_error(prefect_server, tmp_path):
    not_a_folder = tmp_path / "ws"
    not_a_folder.write_text("oops")
    state = train(workspace=str(not_a_folder), config=GRID_2, return_state=True)
    assert state.is_failed()
    assert "is a file, expected a folder" in state.message and str(not_a_folder) in state.message


def test_fits_on_a_dask_cluster_land_the_same_and_a_fit_that_raises_fails_its_pipeline(prefect_server, tmp_path,
                                                                                       monkeypatch):
    """``executor="dask://local"``: the fits go to a LocalCluster through distributed.Client,
    the dataset is scattered once for all the run's folds, the store is written by the
    hooks as on threads, number for number; a fold that raises there fails its pipeline."""
    import distributed

    from nirs.executors import close_executors

    scattered = []
    real_scatter = distributed.Client.scatter
    monkeypatch.setattr(distributed.Client, "scatter",
                        lambda self, data, **kw: (scattered.append(len(data)), real_scatter(self, data, **kw))[1])
    test_X = np.random.default_rng(0).normal(3.0, 0.3, (5, 597))
    found = {}
    try:
        for executor in ("threads", "dask://local"):
            ws = tmp_path / executor.replace(":", "").replace("/", "")
            state = train(workspace=str(ws), config=GRID_WITH_FAILURE, export=False, executor=executor, processes=2,
                          return_state=True)
            assert state.is_completed(), state.message
            with WorkspaceStore(ws) as store:
                pipes = store.list_pipelines().sort("name")
                assert pipes["status"].to_list() == ["completed", "failed"]
                error = pipes["error"][1]
                assert "n_components" in error and "PLSRegression" in error and "fold_" in error
                chain = store.get_chains_for_pipeline(pipes["pipeline_id"][0])["chain_id"][0]
                found[executor] = (store.replay_chain(chain, test_X), pipes["best_val"][0])
                logs = " ".join(m for m in store.get_logs()["message"] if m)
                assert f"folds fitted on {'threads (2)' if executor == 'threads' else 'dask://local'}" in logs
    finally:
        close_executors()
    assert scattered == [1]  # one dataset: one scatter, for the 6 fits of the dask run
    np.testing.assert_array_equal(found["threads"][0], found["dask://local"][0])
    assert found["threads"][1] == found["dask://local"][1]
