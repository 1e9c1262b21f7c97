"""A nirs4all 0.7.1 workspace, written by the original (tests/data/nirs4all_fixture),
imported: everything it holds lands, every chain replays to what the original's
replay_chain gave (or to the right answer where the original could not), twice is once,
and a damaged source is reported chain by chain while the rest is imported."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from storage import ReplayError, WorkspaceError, WorkspaceStore
from tests.storage.nirs4all_fixture import FACTS, artifact_file, copy_fixture, load

CHAINS = FACTS["chains"]
TABLES = ("runs", "pipelines", "chains", "chain_artifacts", "artifacts", "predictions", "prediction_arrays",
          "logs", "imported_ids")


@pytest.fixture
def source(tmp_path):
    return copy_fixture(tmp_path / "nirs4all-workspace")


def _counts(store):
    return {t: store.sql(f"SELECT count(*) AS n FROM {t}")["n"][0] for t in TABLES}


def _skipped(report):
    return {s["id"]: s["reason"] for s in report.skipped}


def test_the_071_workspace_imports_and_replays_as_the_original_or_right_where_it_could_not(store, source):
    report = store.import_workspace(source)
    assert report.imported == {"run": 2, "pipeline": 6, "chain": 3, "prediction": 6, "log": 2, "artifact": 10}
    X_new = load("X_new")

    # the original's own replay, to 1e-9
    regression = report.chains[CHAINS["regression"]]
    np.testing.assert_allclose(store.replay_chain(regression, X_new), load("original_regression"), rtol=0, atol=1e-9)
    # where the original was wrong (it skipped a stateless Normalizer saved without artifact): the right answer
    normalizer = store.replay_chain(report.chains[CHAINS["stateless_normalizer"]], X_new)
    np.testing.assert_allclose(normalizer, load("expected_stateless_normalizer"), rtol=0, atol=1e-9)
    assert np.abs(normalizer - load("original_stateless_normalizer")).max() > 1.0
    # where it could not (string labels: a TypeError there): the folds' averaged probabilities, as labels
    assert FACTS["original_replay"]["classification"].startswith("TypeError")
    classifier = report.chains[CHAINS["classification"]]
    labels, proba = store.replay_chain(classifier, X_new, return_proba=True)
    assert labels.tolist() == load("expected_classification_labels").tolist() and len(set(labels)) == 3
    np.testing.assert_allclose(proba, load("expected_classification_proba"), rtol=0, atol=1e-12)
    chain = store.get_chain(classifier)
    assert (chain["task_type"], chain["classes"], chain["n_features"]) == ("classification", FACTS["classes"], 597)
    assert chain["metadata"]["imported_from"]["source_chain_id"] == CHAINS["classification"]

    # skipped, each with its reason; nothing imported pointing at a missing file
    skipped = _skipped(report)
    assert set(skipped) == {CHAINS["victim"], CHAINS["nirs4all_snv"]}
    assert "no row in the source" in skipped[CHAINS["victim"]] and "ref_count" in skipped[CHAINS["victim"]]
    assert "needs module 'nirs4all'" in skipped[CHAINS["nirs4all_snv"]]
    health = store.check_workspace(load=True)
    assert health.ok and health.artifacts_loaded == 10, health.as_dict()

    # runs, pipelines (a failed one with its error), predictions with arrays, logs
    runs = store.list_runs()
    assert sorted(runs["name"]) == ["calibration", "victim"] and set(runs["status"]) == {"completed"}
    failed = store.list_pipelines(status="failed")
    assert failed["name"].to_list() == ["0005_broken"] and "n_components=500" in failed["error"][0]
    preds = store.query_predictions(dataset_name="tablet_grade")
    assert preds.height == 3 and set(preds["chain_id"]) == {classifier}
    arrays = store.get_prediction_arrays(preds["prediction_id"][0])
    assert arrays["y_proba"].shape == (30, 3)  # stored flattened there, a matrix again here
    top = store.top_predictions(3, dataset_name="tablet", fold_id=None)
    assert top.height == 3 and set(top["chain_id"]) == {regression}
    assert store.get_logs(pipeline_id=failed["pipeline_id"][0])["level"].to_list() == ["error"]


def test_importing_twice_changes_nothing(store, source):
    first = store.import_workspace(source)
    before = _counts(store)
    store.vacuum()  # the record of what was imported survives a compaction
    second = store.import_workspace(source)
    assert _counts(store) == before
    assert second.imported == dict.fromkeys(second.imported, 0)
    assert second.already_imported == {"run": 2, "pipeline": 6, "chain": 3, "prediction": 6, "log": 2}
    assert second.chains == first.chains


def test_a_damaged_copy_reports_the_damaged_chains_and_imports_the_rest(store, source):
    truncated = artifact_file(source, "regression", "fold_1")
    truncated.write_bytes(truncated.read_bytes()[:200])
    artifact_file(source, "stateless_normalizer", "fold_0").unlink()
    report = store.import_workspace(source)
    skipped = _skipped(report)
    assert "truncated or altered" in skipped[CHAINS["regression"]]
    assert "is missing" in skipped[CHAINS["stateless_normalizer"]]
    assert list(report.chains) == [CHAINS["classification"]]
    labels = store.replay_chain(report.chains[CHAINS["classification"]], load("X_new"))
    assert labels.tolist() == load("expected_classification_labels").tolist()
    # the damaged chains' pipelines and predictions are kept, with no chain to point at
    preds = store.query_predictions(dataset_name="tablet")
    assert preds.height == 3 and preds["chain_id"].is_null().all()
    for chain_id in store.sql("SELECT chain_id FROM chains")["chain_id"]:
        store.load_chain(chain_id)  # every imported chain's artifacts are here and hash to their ids
    # repaired, the import brings the chain it skipped, and nothing twice
    shutil.copy(artifact_file(copy_fixture(source.parent / "pristine"), "regression", "fold_1"), truncated)
    again = store.import_workspace(source)
    assert CHAINS["regression"] in again.chains and again.imported["run"] == 0
    relinked = store.query_predictions(dataset_name="tablet")
    assert relinked.height == 3 and set(relinked["chain_id"]) == {again.chains[CHAINS["regression"]]}


def test_an_imported_chain_refuses_the_wrong_width_with_the_stores_error(store, source):
    report = store.import_workspace(source)
    with pytest.raises(ReplayError, match=r"X has 350 features but chain .* was trained on 597"):
        store.replay_chain(report.chains[CHAINS["regression"]], load("X_new")[:, :350])


def test_an_import_that_fails_midway_leaves_nothing(store, source, monkeypatch):
    from storage.imports import Imports

    real, calls = Imports._save_chain, []

    def fail_on_the_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Imports, "_save_chain", fail_on_the_second)
    with pytest.raises(RuntimeError, match="disk full"):
        store.import_workspace(source)
    counts = _counts(store)
    assert all(counts[t] == 0 for t in TABLES if t != "artifacts"), counts
    monkeypatch.setattr(Imports, "_save_chain", real)
    assert store.import_workspace(source).imported["chain"] == 3


def test_what_is_not_a_nirs4all_workspace_is_refused_and_nothing_lands(store, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkspaceError, match="has no store.duckdb"):
        store.import_workspace(tmp_path / "empty")
    with pytest.raises(WorkspaceError, match="is this workspace"):
        store.import_workspace(store.path)
    other = tmp_path / "nirsflow-ws"
    WorkspaceStore(other).close()
    with pytest.raises(WorkspaceError, match="is a nirsflow workspace, not a nirs4all one"):
        store.import_workspace(other)
    import duckdb

    (tmp_path / "older").mkdir()
    con = duckdb.connect(str(tmp_path / "older" / "store.duckdb"))
    con.execute("CREATE TABLE runs (run_id VARCHAR, name VARCHAR)")
    con.close()
    with pytest.raises(WorkspaceError, match="not a nirs4all 0.7 workspace: table runs lacks columns config"):
        store.import_workspace(tmp_path / "older")
    assert store.list_runs().height == 0


def test_a_workspace_written_by_the_runner_imports_and_replays_as_the_original(store, tmp_path):
    # nirs4all's runner writes chains its own way: short class names with the path in params,
    # "sha256:" hashes, its refit marker splitter, a refit model under fold_final
    report = store.import_workspace(copy_fixture(tmp_path / "runner", "runner"))
    assert report.skipped == [] and report.imported["chain"] == 2
    X_new = load("X_new")[:, ::3]
    for name, source_chain in FACTS["runner_chains"].items():
        chain_id = report.chains[source_chain]
        np.testing.assert_allclose(store.replay_chain(chain_id, X_new), load(f"original_runner_{name}"),
                                   rtol=0, atol=1e-9)
        assert store.get_chain(chain_id)["fold_strategy"] == ("refit" if name == "pipeline_refit" else "per_fold")
