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
