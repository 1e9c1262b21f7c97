"""Chains saved through the spec's ``save_chain`` exactly as its documentation shows (no
nirsflow-only keyword) replay: splitter steps, stateless steps saved without artifact,
classifiers saved without ``task_type``, and wrong inputs refused with the store's error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.cross_decomposition import PLSRegression
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import KFold
from sklearn.preprocessing import Normalizer, StandardScaler

from storage import ReplayError, WorkspaceStore

N = 120  # training spectra: enough for three folds, quick to fit


def kfold_step(idx):
    return {"step_idx": idx, "operator_class": "sklearn.model_selection.KFold",
            "params": {"n_splits": 3}, "artifact_ids": [], "stateless": True}


def spec_step(idx, cls, artifact_ids, params=None, stateless=False):
    return {"step_idx": idx, "operator_class": cls, "params": params or {}, "artifact_ids": artifact_ids,
            "stateless": stateless}


def folds(make, X, y):
    return [make().fit(X[tr], y[tr]) for tr, _ in KFold(3).split(X)]


@pytest.fixture
def data(tablet):
    X, y, X_new, _, _ = tablet
    return X[:N], y[:N], X_new[:30]


def test_the_spec_walkthrough_with_a_splitter_step_runs_on_nirsflow(tmp_path, monkeypatch, data):
    X, y, X_new = data
    monkeypatch.chdir(tmp_path)
    scaler = StandardScaler().fit(X)
    models = folds(lambda: PLSRegression(5), scaler.transform(X), y)

    store = WorkspaceStore(Path("./workspace"))
    run_id = store.begin_run("experiment_1", config={"cv": "KFold(3)"}, datasets=[{"name": "wheat", "path": "w.csv"}])
    pipeline_id = store.begin_pipeline(run_id, name="0001_pls", expanded_config=[], generator_choices=[],
                                       dataset_name="wheat", dataset_hash="abc")
    scaler_id = store.save_artifact(scaler, "sklearn.preprocessing.StandardScaler", "transformer", "joblib")
    model_ids = [store.save_artifact(m, "sklearn.cross_decomposition.PLSRegression", "model", "joblib")
                 for m in models]
    chain_id = store.save_chain(
        pipeline_id,
        steps=[spec_step(0, "sklearn.preprocessing.StandardScaler", [scaler_id]), kfold_step(1),
               spec_step(2, "sklearn.cross_decomposition.PLSRegression", model_ids, {"n_components": 5})],
        model_step_idx=2, model_class="sklearn.cross_decomposition.PLSRegression", preprocessings="StandardScaler",
        fold_strategy="per_fold", fold_artifacts={f"fold_{k}": m for k, m in enumerate(model_ids)},
        shared_artifacts={"0": [scaler_id]})
    pred_id = store.save_prediction(pipeline_id, chain_id, dataset_name="wheat", fold_id="fold_0", partition="val",
                                    val_score=0.95, metric="r2", y_true=y[:10], y_pred=y[:10] * 0.99)
    store.complete_pipeline(pipeline_id, best_val=0.95, best_test=0.93, metric="r2", duration_ms=120)
    store.complete_run(run_id, summary={"total_pipelines": 1})

    # Queries (return polars.DataFrame)
    top = store.top_predictions(n=5, metric="val_score")
    preds = store.query_predictions(dataset_name="wheat", partition="val")
    runs = store.list_runs(status="completed")
    assert top["prediction_id"].to_list() == [pred_id] and preds.height == 1 and runs.height == 1

    # Chain replay (in-workspace prediction): the splitter is not applied, the folds averaged
    y_pred = store.replay_chain(chain_id, X_new)
    expected = np.mean([m.predict(scaler.transform(X_new)).ravel() for m in models], axis=0)
    np.testing.assert_allclose(y_pred, expected, rtol=0, atol=1e-9)

    # Export (on demand): the bundle predicts as the store does
    from storage import load_bundle

    store.export_chain(chain_id, Path("exports/model.n4a"))  # signed with the workspace's key
    monkeypatch.setenv("NIRSFLOW_BUNDLE_KEY", (Path("workspace") / ".nirsflow" / "bundle.key").read_text())
    np.testing.assert_allclose(load_bundle(Path("exports/model.n4a")).predict(X_new), y_pred, rtol=0, atol=1e-12)
    store.export_pipeline_config(pipeline_id, Path("exports/config.json"))
    store.export_run(run_id, Path("exports/run.yaml"))
    store.export_predictions_parquet(Path("exports/results.parquet"), dataset_name="wheat", partition="val")
    assert all(Path("exports", f).is_file() for f in ("config.json", "run.yaml", "results.parquet"))

    # Cleanup
    assert store.delete_run(run_id) > 0
    store.gc_artifacts(grace=0)
    assert store.list_artifacts().height == 0
    store.close()


def _classifier_chain(store, X, labels):
    scaler = StandardScaler().fit(X)
    models = folds(lambda: LogisticRegression(max_iter=2000), scaler.transform(X), labels)
    run_id = store.begin_run("grades", config={}, datasets=[])
    pipeline_id = store.begin_pipeline(run_id, name="0001_logreg", expanded_config=[], generator_choices=[],
                                       dataset_name="grades", dataset_hash="h")
    sid = store.save_artifact(scaler, "sklearn.preprocessing.StandardScaler", "transformer", "joblib")
    mids = [store.save_artifact(m, "sklearn.linear_model.LogisticRegression", "model", "joblib") for m in models]
    chain_id = store.save_chain(
        pipeline_id, steps=[spec_step(0, "sklearn.preprocessing.StandardScaler", [sid]), kfold_step(1),
                            spec_step(2, "sklearn.linear_model.LogisticRegression", mids)],
        model_step_idx=2, model_class="sklearn.linear_model.LogisticRegression", preprocessings="StandardScaler",
        fold_strategy="per_fold", fold_artifacts={f"fold_{k}": m for k, m in enumerate(mids)},
        shared_artifacts={"0": [sid]})
    return chain_id, scaler, models


def test_a_classifier_on_string_labels_saved_without_task_type_replays_to_the_averaged_probabilities(store, data):
    X, y, X_new = data
    labels = np.where(y < np.quantile(y, 1 / 3), "low", np.where(y < np.quantile(y, 2 / 3), "mid", "high"))
    chain_id, scaler, models = _classifier_chain(store, X, labels)
    proba = np.mean([m.predict_proba(scaler.transform(X_new)) for m in models], axis=0)
    expected = models[0].classes_[proba.argmax(axis=1)]

    got, got_proba = store.replay_chain(chain_id, X_new, return_proba=True)
    assert got.tolist() == expected.tolist() and {type(v) for v in got} == {str}
    np.testing.assert_allclose(got_proba, proba, rtol=0, atol=1e-12)
    assert len(set(got)) > 1  # not one constant class: the test can tell labels apart
    assert store.load_chain(chain_id).classes == ["high", "low", "mid"]


def test_wrong_width_into_a_chain_without_n_features_is_the_stores_error_before_any_transform(store, data):
    X, y, X_new = data
    labels = np.where(y < np.median(y), "low", "high")
    chain_id, *_ = _classifier_chain(store, X, labels)
    with pytest.raises(ReplayError) as caught:
        store.replay_chain(chain_id, X_new[:, : X.shape[1] // 2])
    message = str(caught.value)
    assert chain_id in message and "298" in message and "597" in message
    assert "StandardScaler is expecting" not in message  # not scikit-learn's words: ours, before it ran
    assert caught.value.expected == "597 wavelength columns" and caught.value.found == "298 wavelength columns"
    # the scoring path's up-front check says the same
    with pytest.raises(ReplayError, match="was fitted on 597"):
        store.load_chain(chain_id).check(None, 298)


def _ridge_after(store, X, y, first_step, op):
    Xt = op.fit_transform(X) if op is not None else X
    models = folds(lambda: Ridge(alpha=1e-3), Xt, y)
    run_id = store.begin_run("r", config={}, datasets=[])
    pid = store.begin_pipeline(run_id, name="p", expanded_config=[], generator_choices=[], dataset_name="d",
                               dataset_hash="h")
    mids = [store.save_artifact(m, "sklearn.linear_model.Ridge", "model", "joblib") for m in models]
    chain_id = store.save_chain(pid, steps=[first_step, kfold_step(1), spec_step(2, "sklearn.linear_model.Ridge", mids)],
                                model_step_idx=2, model_class="sklearn.linear_model.Ridge", preprocessings="",
                                fold_strategy="per_fold", fold_artifacts={f"fold_{k}": m for k, m in enumerate(mids)},
                                shared_artifacts={})
    return chain_id, models


def test_a_stateless_sklearn_step_saved_without_artifact_is_rebuilt_not_skipped(store, data):
    X, y, X_new = data
    step = spec_step(0, "sklearn.preprocessing.Normalizer", [], {"norm": "l2"}, stateless=True)
    chain_id, models = _ridge_after(store, X, y, step, Normalizer())
    expected = np.mean([m.predict(Normalizer().transform(X_new)) for m in models], axis=0)
    np.testing.assert_allclose(store.replay_chain(chain_id, X_new), expected, rtol=0, atol=1e-9)
    skipped = np.mean([m.predict(X_new) for m in models], axis=0)  # what the original gave
    assert np.abs(skipped - expected).max() > 1.0


def test_a_transformer_with_neither_artifact_nor_stateless_is_an_error_naming_the_step(store, data):
    X, y, X_new = data
    step = spec_step(0, "sklearn.preprocessing.StandardScaler", [])
    chain_id, _ = _ridge_after(store, X, y, step, StandardScaler())
    with pytest.raises(ReplayError, match=r"step 0 \(sklearn.preprocessing.StandardScaler\) .* not marked stateless"):
        store.replay_chain(chain_id, X_new)


def test_a_stateless_step_of_an_untrusted_module_is_refused_until_the_module_is_trusted(store, data, monkeypatch):
    from tests.storage.lab_ops import Centre

    X, y, X_new = data
    step = spec_step(0, "tests.storage.lab_ops.Centre", [], stateless=True)
    chain_id, models = _ridge_after(store, X, y, step, Centre())
    with pytest.raises(ReplayError, match=r"step 0 \(tests.storage.lab_ops.Centre\) .* not trusted"):
        store.replay_chain(chain_id, X_new)
    monkeypatch.setenv("NIRSFLOW_TRUSTED_MODULES", "tests.storage.lab_ops")
    expected = np.mean([m.predict(Centre().transform(X_new)) for m in models], axis=0)
    np.testing.assert_allclose(store.replay_chain(chain_id, X_new), expected, rtol=0, atol=1e-9)


def test_several_shared_artifacts_of_one_step_are_applied_in_order(store, data):
    X, y, X_new = data
    first = StandardScaler().fit(X)
    second = Normalizer().fit(first.transform(X))
    Xt = second.transform(first.transform(X))
    models = folds(lambda: Ridge(alpha=1e-3), Xt, y)
    run_id = store.begin_run("r", config={}, datasets=[])
    pid = store.begin_pipeline(run_id, name="p", expanded_config=[], generator_choices=[], dataset_name="d",
                               dataset_hash="h")
    ids = [store.save_artifact(first, "sklearn.preprocessing.StandardScaler", "transformer", "joblib"),
           store.save_artifact(second, "sklearn.preprocessing.Normalizer", "transformer", "joblib")]
    mids = [store.save_artifact(m, "sklearn.linear_model.Ridge", "model", "joblib") for m in models]
    chain_id = store.save_chain(pid, steps=[spec_step(0, "sklearn.pipeline.Pipeline", ids),
                                            spec_step(1, "sklearn.linear_model.Ridge", mids)],
                                model_step_idx=1, model_class="sklearn.linear_model.Ridge", preprocessings="",
                                fold_strategy="per_fold", fold_artifacts={f"fold_{k}": m for k, m in enumerate(mids)},
                                shared_artifacts={"0": ids})
    expected = np.mean([m.predict(second.transform(first.transform(X_new))) for m in models], axis=0)
    np.testing.assert_allclose(store.replay_chain(chain_id, X_new), expected, rtol=0, atol=1e-9)
