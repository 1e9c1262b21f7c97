"""The code blocks of spec/artifacts-and-storage.txt, run as written.

Only the import lines are adapted, and the spec's `...` placeholders are filled with
real values (real Tablet spectra, real fitted scikit-learn objects)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from sklearn.cross_decomposition import PLSRegression
from sklearn.preprocessing import StandardScaler

from storage import PipelineLibrary, WorkspaceStore


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_using_the_workspace_store(in_tmp, tablet):
    X, y, X_new, _, wavelengths = tablet
    scaler = StandardScaler().fit(X)
    trained_model = PLSRegression(8).fit(scaler.transform(X), y)

    # Initialize (creates store.duckdb and artifacts/ if they don't exist)
    store = WorkspaceStore(Path("./workspace"))
    assert (in_tmp / "workspace" / "store.duckdb").is_file()
    assert (in_tmp / "workspace" / "artifacts").is_dir()

    # Run lifecycle
    run_id = store.begin_run("experiment_1", config={"cv": "KFold(5)"}, datasets=[{"name": "wheat", "path": "wheat.csv"}])
    pipeline_id = store.begin_pipeline(run_id, name="0001_pls", expanded_config=[{"class": "PLSRegression"}],
                                       generator_choices=[], dataset_name="wheat", dataset_hash="abc")
    scaler_id = store.save_artifact(scaler, "sklearn.preprocessing.StandardScaler", "transformer", "joblib")
    model_id = store.save_artifact(trained_model, "sklearn.cross_decomposition.PLSRegression", "model", "joblib")
    chain_id = store.save_chain(pipeline_id, steps=[
        {"step_idx": 0, "kind": "transformer", "operator_class": "sklearn.preprocessing.StandardScaler"},
        {"step_idx": 1, "kind": "model", "operator_class": "sklearn.cross_decomposition.PLSRegression"},
    ], model_step_idx=1, model_class="sklearn.cross_decomposition.PLSRegression",
        fold_artifacts={"fold_0": {"0": scaler_id, "1": model_id}}, wavelengths=wavelengths, n_features=X.shape[1])
    pred_id = store.save_prediction(pipeline_id, chain_id, dataset_name="wheat", fold_id="fold_0", partition="val",
                                    val_score=0.95, metric="r2", y_true=y, y_pred=y * 0.99)
    store.complete_pipeline(pipeline_id, best_val=0.95, best_test=0.93, metric="r2", duration_ms=120)
    store.complete_run(run_id, summary={"total_pipelines": 5})

    # Queries (return polars.DataFrame)
    top = store.top_predictions(n=5, metric="val_score")
    preds = store.query_predictions(dataset_name="wheat", partition="val")
    runs = store.list_runs(status="completed")
    assert all(isinstance(f, pl.DataFrame) for f in (top, preds, runs))
    assert top["prediction_id"].to_list() == [pred_id]
    assert preds.height == 1 and runs["run_id"].to_list() == [run_id]

    # Chain replay (in-workspace prediction)
    y_pred = store.replay_chain(chain_id, X_new)
    expected = trained_model.predict(scaler.transform(X_new)).ravel()
    np.testing.assert_allclose(y_pred, expected, rtol=0, atol=1e-12)
    # With wavelength-aware operators
    y_pred = store.replay_chain(chain_id, X_new, wavelengths=wavelengths)
    np.testing.assert_allclose(y_pred, expected, rtol=0, atol=1e-12)

    # Export (on demand)
    store.export_chain(chain_id, Path("model.n4a"))
    assert (in_tmp / "model.n4a").stat().st_size > 0

    # Cleanup
    store.delete_run(run_id)
    store.gc_artifacts()
    store.close()


def test_saving_loading_and_deduplicating_artifacts(in_tmp, tablet):
    X, y, *_ = tablet
    store = WorkspaceStore(Path("./workspace"))
    trained_model = PLSRegression(3).fit(X, y)
    fitted_scaler = StandardScaler().fit(X)
    scaler = fitted_scaler

    # Save a fitted model
    artifact_id = store.save_artifact(
        obj=trained_model,
        operator_class="sklearn.cross_decomposition.PLSRegression",
        artifact_type="model",
        format="joblib"
    )
    # Save a fitted transformer
    artifact_id_2 = store.save_artifact(
        obj=fitted_scaler,
        operator_class="sklearn.preprocessing.StandardScaler",
        artifact_type="transformer",
        format="joblib"
    )
    # Same fitted scaler saved twice -> same artifact_id returned
    id1 = store.save_artifact(scaler, "StandardScaler", "transformer", "joblib")
    id2 = store.save_artifact(scaler, "StandardScaler", "transformer", "joblib")
    assert id1 == id2  # Content-addressed deduplication
    assert id1 == artifact_id_2

    # Load by artifact ID
    model = store.load_artifact(artifact_id)
    np.testing.assert_array_equal(model.predict(X), trained_model.predict(X))
    # Get filesystem path (for external tools or bundle building)
    path = store.get_artifact_path(artifact_id)
    assert path == in_tmp / "workspace" / "artifacts" / artifact_id[:2] / f"{artifact_id}.joblib"
    assert len(list((in_tmp / "workspace" / "artifacts").rglob("*.joblib"))) == 2
    store.close()


def test_library_management(in_tmp):
    workspace_path = in_tmp / "workspace"
    pipeline_dict = [{"class": "nirs.operators.SNV"}, {"model": {"class": "PLSRegression", "params": {"n_components": 8}}}]

    library = PipelineLibrary(workspace_path)
    # Save config-only template with category and tags
    library.save_template(
        pipeline_config=pipeline_dict,
        name="baseline_pls",
        category="regression",
        description="PLS baseline with SNV preprocessing",
        tags=["nirs", "pls"],
    )
    # List templates
    templates = library.list_templates(category="regression")
    lines = [f"{t['name']}: {t['description']}" for t in templates]
    assert lines == ["baseline_pls: PLS baseline with SNV preprocessing"]
    # Load template
    config = library.load_template("baseline_pls")
    assert config == pipeline_dict
    assert list((workspace_path / "library" / "templates").glob("*.json"))


def test_cleanup_and_export_operations(in_tmp, tablet, fitted_folds):
    from tests.storage.conftest import make_run, save_scaler_pls_chain

    X, y, *_ = tablet
    store = WorkspaceStore(Path("./workspace"))
    run_id, pipeline_id = make_run(store, dataset="wheat")
    chain_id = save_scaler_pls_chain(store, pipeline_id, fitted_folds, X.shape[1])
    store.save_prediction(pipeline_id, chain_id, partition="val", fold_id="avg", val_score=0.4, y_true=y, y_pred=y)
    store.complete_pipeline(pipeline_id, best_val=0.4)
    store.complete_run(run_id)

    # Export pipeline configuration as JSON
    store.export_pipeline_config(pipeline_id, Path("exports/config.json"))
    # Export run metadata as YAML
    store.export_run(run_id, Path("exports/run.yaml"))
    # Export predictions as Parquet
    store.export_predictions_parquet(
        Path("exports/results.parquet"),
        dataset_name="wheat",
        partition="val"
    )
    assert json.loads(Path("exports/config.json").read_text())["pipeline"] == [{"class": "PLSRegression"}]
    assert yaml.safe_load(Path("exports/run.yaml").read_text())["run"]["run_id"] == run_id
    assert pl.read_parquet("exports/results.parquet").height == 1

    # Garbage-collect unreferenced artifacts (ref_count = 0)
    removed = store.gc_artifacts()
    print(f"Removed {removed} orphaned artifact files")
    assert removed == 0  # every artifact is referenced by the chain
    # Delete a run and all descendant data
    rows_deleted = store.delete_run(run_id)
    print(f"Deleted {rows_deleted} rows")
    # run + pipeline + chain + 6 chain links + prediction + its arrays
    assert rows_deleted == 1 + 1 + 1 + 6 + 1 + 1
    # Reclaim disk space after large deletions
    store.vacuum()
    assert store.gc_artifacts(grace=0) == 6
    store.close()
