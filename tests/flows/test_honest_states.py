"""Honest states and exit codes of training runs, through ``nirsflow train`` on the test
server: no pipeline completed is a Failed run and exit 1; some failed is a Completed run
whose message (printed by the command) says how many and the first error."""

from __future__ import annotations

from storage import WorkspaceStore
from tests.conftest import run_cli


def test_a_run_where_every_pipeline_failed_exits_1_and_a_partial_one_says_how_many(prefect_server, prefect_client,
                                                                                  tmp_path):
    # 900 components on 597 wavelengths: refused by PLS at fit time, not before
    (tmp_path / "all.yaml").write_text("pipeline:\n  - split: {class: KFold, params: {n_splits: 3}}\n"
                                       "  - model: {class: PLSRegression, params: {n_components: 900}}\n")
    (tmp_path / "some.yaml").write_text("pipeline:\n  - split: {class: KFold, params: {n_splits: 3}}\n"
                                        "  - model: {class: PLSRegression, params: {n_components: {_or_: [4, 900]}}}\n")
    workspace = tmp_path / "ws"
    failed = run_cli("train", str(tmp_path / "all.yaml"), "tablet1", "-w", str(workspace))
    lines = failed.stderr.strip().splitlines()
    assert failed.returncode == 1 and lines[-1].startswith("error: the training run ended Failed: no pipeline "
                                                           "completed: 1 of 1 failed; first error"), failed.stderr
    with WorkspaceStore(workspace) as store:
        assert store.list_runs()["status"].to_list() == ["failed"]
    partial = run_cli("train", str(tmp_path / "some.yaml"), "tablet1", "-w", str(workspace))
    assert partial.returncode == 0, partial.stderr
    assert "1 of 2 pipelines failed; first error (tablet1 · 0002_PLSRegression(n_components=900))" in partial.stdout
    with WorkspaceStore(workspace) as store:
        flow_runs = store.list_runs()["flow_run_id"].to_list()  # newest first
    states = [prefect_client.read_flow_run(flow_run_id).state for flow_run_id in flow_runs]
    assert [s.type.value for s in states] == ["COMPLETED", "FAILED"]
    assert states[0].message.startswith("1 of 2 pipelines failed; first error")
    assert states[1].message.startswith("no pipeline completed: 1 of 1 failed")
