"""retrain: promote only a chain that is better on the same held-out spectra."""

from __future__ import annotations

from flows.retrain import retrain
from storage import PipelineLibrary, WorkspaceStore
from tests.flows.conftest import SPLIT

GOOD = [SPLIT, "SNV", {"model": {"class": "PLSRegression", "params": {"n_components": 8}}}]
POOR = [SPLIT, {"model": {"class": "PLSRegression", "params": {"n_components": 1}}}]


def test_retrain_promotes_a_better_chain_and_keeps_production_against_a_worse_one(prefect_server, workspace):
    library = PipelineLibrary(workspace)
    library.save_template(GOOD, "snv-pls8")
    library.save_template(POOR, "pls1")

    first = retrain(workspace=str(workspace), dataset="tablet1", template="snv-pls8")
    assert first["decision"] == "promoted" and first["current_chain_id"] is None
    with WorkspaceStore(workspace) as store:
        assert store.get_alias("tablet1", "production") == first["new_chain_id"]

    second = retrain(workspace=str(workspace), dataset="tablet1", template="pls1")
    assert second["decision"] == "kept"
    assert second["current_chain_id"] == first["new_chain_id"]
    assert second["new_score"] > second["current_score"]  # rmse: the 1-component PLS is worse
    with WorkspaceStore(workspace) as store:
        assert store.get_alias("tablet1", "production") == first["new_chain_id"]
        # the decision and both scores are in the store's logs, under the new training run
        logs = store.get_logs(run_id=second["run_id"])
        promotion = logs.filter(logs["event"] == "promotion")
        assert promotion.height == 1 and promotion["message"][0].startswith("kept")
        history = store.alias_history("tablet1")
        assert history.height == 1  # only the first retrain moved the alias
        runs = store.list_runs()
        assert runs.height == 2 and set(runs["status"]) == {"completed"}


def test_scoring_a_chain_fitted_under_another_scikit_learn_says_so_in_the_task_log(prefect_server, prefect_client,
                                                                                 tmp_path):
    from prefect import flow
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId
    from prefect.logging.handlers import APILogWorker

    from nirs.config import expand
    from nirs.datasets import load_tablet
    from nirs.training import fit_pipeline
    from storage.chain_builder import ChainBuilder
    from tasks.promotion import score_chain

    train, test = load_tablet(instrument=1)
    with WorkspaceStore(tmp_path / "ws") as store:
        chain = ChainBuilder(fit_pipeline(train, expand(GOOD)[0]), store).build()
        chain["metadata"]["fitted_versions"] = {"scikit-learn": "0.24.2"}
        run_id = store.begin_run("old")
        old = store.save_chain(store.begin_pipeline(run_id, "old"), **chain)

    @flow
    def compare():  # as retrain runs it: inside a flow run
        return score_chain(str(tmp_path / "ws"), old, test, "production", "tablet", return_state=True)

    state = compare()
    assert state.is_completed() and state.result()["scores"]["rmse"] < 3.5  # it still scores
    APILogWorker.drain_all(timeout=10)
    logs = prefect_client.read_logs(log_filter=LogFilter(
        task_run_id=LogFilterTaskRunId(any_=[state.state_details.task_run_id])))
    warned = [log for log in logs if "fitted with scikit-learn 0.24.2" in log.message]
    assert len(warned) == 1 and warned[0].level == 30 and f"chain {old}" in warned[0].message

