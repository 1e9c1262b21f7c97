"""The maintenance flows have their effect on a real workspace (and on Prefect's database)."""

from __future__ import annotations

from uuid import UUID

import pytest

from flows.maintenance import gc, reconcile, vacuum
from flows.train import train
from storage import WorkspaceStore
from tests.flows.conftest import GRID_2, OTHER_GRID


def test_gc_removes_only_what_no_chain_references_and_vacuum_gives_space_back(prefect_server, workspace):
    for config in (OTHER_GRID, GRID_2):  # different models: the first run's artifacts die with it
        assert train(workspace=str(workspace), config=config, return_state=True).is_completed()
    with WorkspaceStore(workspace) as store:
        first, second = store.list_runs().sort("created_at")["run_id"].to_list()
        kept_chains = store.sql("SELECT c.chain_id FROM chains c JOIN pipelines p USING (pipeline_id) "
                                "WHERE p.run_id = ?", [second])["chain_id"].to_list()
        store.delete_run(first)
        before = store.list_artifacts().height
        live = set(store.sql("SELECT DISTINCT artifact_id FROM chain_artifacts")["artifact_id"])

    dry = gc(workspace=str(workspace), grace=0, dry_run=True)
    assert dry["dry_run"] and dry["removed"] >= 0
    with WorkspaceStore(workspace) as store:
        assert store.list_artifacts().height == before  # a dry run removes nothing

    result = gc(workspace=str(workspace), grace=0)
    with WorkspaceStore(workspace) as store:
        left = set(store.list_artifacts()["artifact_id"])
        assert left == live and result["artifacts"] == before - len(live) > 0
        for artifact_id in live:
            store.load_artifact(artifact_id)  # hash-checked
        files = {p.name.split(".")[0] for p in (workspace / "artifacts").rglob("*") if p.is_file()}
        assert files == live
        assert all(store.get_chain(c) for c in kept_chains)

    # a long grace keeps even dead artifacts
    with WorkspaceStore(workspace) as store:
        store.delete_run(second)
    assert gc(workspace=str(workspace), grace=86_400)["removed"] == 0

    vac = vacuum(workspace=str(workspace))
    assert vac["bytes_after"] < vac["bytes_before"]
    with WorkspaceStore(workspace) as store:
        assert store.list_runs().height == 0


def test_maintenance_on_a_missing_workspace_fails_with_a_clear_error(prefect_server, tmp_path):
    state = gc(workspace=str(tmp_path / "typo"), return_state=True)
    assert state.is_failed() and "no workspace at" in state.message + str(state.result(raise_on_failure=False))


def test_reconcile_prunes_prefect_flow_runs_beyond_the_retention(prefect_server, prefect_client, workspace):
    from prefect import flow

    @flow(name="short-lived")
    def short_lived():
        return 1

    old = short_lived(return_state=True)
    old_id = old.state_details.flow_run_id
    WorkspaceStore(workspace).close()
    # retention 0 days: every finished flow run is old enough (the reconcile run itself is kept)
    result = reconcile(workspace=str(workspace), prefect_retention_days=0.0, prune_limit=2)
    assert result["pruned"] == 2  # bounded per call; the most recently ended go first
    from prefect.exceptions import ObjectNotFound
    with pytest.raises(ObjectNotFound):
        prefect_client.read_flow_run(UUID(str(old_id)))
