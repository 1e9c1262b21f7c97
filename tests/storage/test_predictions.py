"""Predictions: arrays come back as they went in, missing stays missing, ranking knows
which way a metric points, and queries keep their columns when nothing matches."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from storage import InvalidInputError, NotFoundError
from tests.storage.conftest import make_run


def test_arrays_round_trip_with_shape_dtype_and_string_labels(store):
    _, pipeline_id = make_run(store)
    proba = np.random.default_rng(0).dirichlet(np.ones(3), size=9)
    labels = np.array(["arabica", "robusta", "liberica"] * 3, dtype=object)
    pid = store.save_prediction(pipeline_id, partition="val", fold_id="fold_0", metric="accuracy",
                                task_type="classification", val_score=0.8,
                                y_true=labels, y_pred=labels[::-1].copy(), y_proba=proba,
                                sample_indices=np.arange(9, dtype=np.int32),
                                weights=np.linspace(0, 1, 9).astype(np.float32))
    got = store.get_prediction(pid, load_arrays=True)
    assert got["y_proba"].shape == (9, 3)
    np.testing.assert_array_equal(got["y_proba"], proba)
    assert got["y_true"].dtype == object and list(got["y_true"]) == list(labels)
    assert got["sample_indices"].dtype == np.int32
    assert got["weights"].dtype == np.float32
    assert got["n_samples"] == 9
    arrays = store.get_prediction_arrays(pid)
    assert list(arrays["y_pred"]) == list(labels[::-1])


def test_unicode_labels_and_numeric_labels_keep_their_dtype(store):
    _, pipeline_id = make_run(store)
    for y in (np.array(["a", "b"]), np.array([3, 7], dtype=np.int64), np.array([True, False])):
        got = store.get_prediction(store.save_prediction(pipeline_id, y_true=y, y_pred=y), load_arrays=True)
        assert got["y_true"].dtype == y.dtype
        np.testing.assert_array_equal(got["y_true"], y)


def test_missing_score_stays_missing_and_ranks_last(store):
    _, pipeline_id = make_run(store)
    refit = store.save_prediction(pipeline_id, fold_id="refit", val_score=None, test_score=1.0)
    good = store.save_prediction(pipeline_id, fold_id="fold_0", val_score=0.5)
    bad = store.save_prediction(pipeline_id, fold_id="fold_1", val_score=2.5)
    assert store.get_prediction(refit)["val_score"] is None
    assert store.top_predictions(3)["prediction_id"].to_list() == [good, bad, refit]


@pytest.mark.parametrize("metric,scores,best", [
    ("rmse", [0.3, 0.1, 0.2], 0.1),
    ("mae", [0.3, 0.1, 0.2], 0.1),
    ("r2", [0.3, 0.9, 0.2], 0.9),
    ("accuracy", [0.7, 0.9, 0.8], 0.9),
    ("rpd", [1.5, 3.0, 2.0], 3.0),
    ("bias", [-0.05, 0.3, -0.2], -0.05),  # nearest to zero
])
def test_top_predictions_knows_which_way_a_metric_points(store, metric, scores, best):
    _, pipeline_id = make_run(store)
    for k, s in enumerate(scores):
        store.save_prediction(pipeline_id, fold_id=f"fold_{k}", metric=metric, val_score=s)
    assert store.top_predictions(1)["val_score"].to_list() == [best]


def test_top_predictions_explicit_direction_and_mixed_metrics(store):
    _, pipeline_id = make_run(store)
    store.save_prediction(pipeline_id, metric="rmse", val_score=1.0)
    store.save_prediction(pipeline_id, metric="r2", val_score=0.9)
    with pytest.raises(InvalidInputError, match="different metrics.*r2.*rmse"):
        store.top_predictions(5)
    assert store.top_predictions(1, ascending=True)["val_score"].to_list() == [0.9]
    assert store.top_predictions(1, ascending=False)["val_score"].to_list() == [1.0]


def test_top_predictions_by_a_named_metric_in_scores_and_grouped(store):
    _, pipeline_id = make_run(store)
    for k, (rmse, r2, model) in enumerate([(0.3, 0.8, "PLS"), (0.2, 0.9, "PLS"), (0.4, 0.7, "Ridge")]):
        store.save_prediction(pipeline_id, fold_id=f"f{k}", model_class=model, val_score=rmse,
                              scores={"rmse": rmse, "r2": r2})
    assert store.top_predictions(1, metric="r2")["val_score"].to_list() == [0.2]
    grouped = store.top_predictions(1, group_by="model_class")
    assert dict(zip(grouped["model_class"], grouped["val_score"])) == {"PLS": 0.2, "Ridge": 0.4}


def test_queries_keep_their_columns_when_nothing_matches(store):
    _, pipeline_id = make_run(store)
    store.save_prediction(pipeline_id, partition="val", val_score=1.0)
    full = store.query_predictions()
    empty = store.query_predictions(dataset_name="no-such-dataset")
    assert empty.height == 0 and empty.schema == full.schema
    assert store.top_predictions(5, dataset_name="none").columns == full.columns
    assert store.list_runs(status="failed").columns == store.list_runs().columns
    assert store.list_pipelines(run_id="nope").columns == store.list_pipelines().columns


def test_query_filters(store):
    run_a, pipe_a = make_run(store, "wheat")
    run_b, pipe_b = make_run(store, "corn")
    store.save_prediction(pipe_a, partition="val", fold_id="fold_0", model_class="sklearn.PLSRegression")
    store.save_prediction(pipe_a, partition="test", fold_id="avg", model_class="sklearn.PLSRegression")
    store.save_prediction(pipe_b, partition="val", fold_id="fold_0", model_class="sklearn.Ridge")
    assert store.query_predictions(dataset_name="wheat").height == 2
    assert store.query_predictions(run_id=run_b)["dataset_name"].to_list() == ["corn"]
    assert store.query_predictions(model_class="%PLS%", partition="test").height == 1
    assert store.query_predictions(limit=1, offset=2).height == 1


def test_batch_lands_whole_or_not_at_all(store):
    run_id, pipeline_id = make_run(store)
    with store.batch():
        ids = [store.save_prediction(pipeline_id, val_score=float(i), y_true=np.arange(3.0), y_pred=np.arange(3.0))
               for i in range(500)]
        # Reads inside the batch see the batch's own buffered rows.
        assert store.query_predictions(pipeline_id=pipeline_id).height == 500
    assert store.query_predictions(pipeline_id=pipeline_id).height == 500
    np.testing.assert_array_equal(store.get_prediction(ids[-1], load_arrays=True)["y_pred"], np.arange(3.0))

    with pytest.raises(RuntimeError, match="boom"):
        with store.batch():
            store.save_prediction(pipeline_id, val_score=1.0)
            store.begin_pipeline(run_id, "another", dataset_name="tablet")
            raise RuntimeError("boom")
    assert store.query_predictions(pipeline_id=pipeline_id).height == 500
    assert store.list_pipelines(run_id=run_id).height == 1


def test_prediction_defaults_come_from_pipeline_and_chain(store, fitted_folds, tablet):
    from tests.storage.conftest import save_scaler_pls_chain

    _, pipeline_id = make_run(store, "wheat")
    chain_id = save_scaler_pls_chain(store, pipeline_id, fitted_folds, tablet[0].shape[1])
    row = store.get_prediction(store.save_prediction(pipeline_id, chain_id))
    assert row["dataset_name"] == "wheat"
    assert row["model_class"] == "sklearn.cross_decomposition.PLSRegression"
    assert row["model_name"] == "PLSRegression"


@pytest.mark.parametrize("kwargs,message", [
    (dict(val_score=float("nan")), "val_score must be finite"),
    (dict(test_score=float("inf")), "test_score must be finite"),
    (dict(val_score="0.5"), "val_score must be a number"),
    (dict(scores={"r2": float("nan")}), r"scores\['r2'\] must be finite"),
    (dict(y_true=np.arange(5), y_pred=np.arange(4)), "different lengths: y_true=5, y_pred=4"),
    (dict(y_true=np.arange(3), y_proba=np.ones((4, 2))), "different lengths"),
    (dict(sample_indices=np.array([0.5, 1.5])), "sample_indices must be integers"),
    (dict(y_true=np.ones((3, 2))), "y_true must be 1-D"),
    (dict(partition="validation"), "partition must be one of"),
    (dict(task_type="ranking"), "task_type must be one of"),
    (dict(y_true=np.array([{"a": 1}], dtype=object)), "Python objects"),
])
def test_bad_predictions_are_refused_and_nothing_is_written(store, kwargs, message):
    _, pipeline_id = make_run(store)
    with pytest.raises(InvalidInputError, match=message):
        store.save_prediction(pipeline_id, **kwargs)
    assert store.query_predictions().height == 0


def test_unknown_ids_are_named(store):
    with pytest.raises(NotFoundError, match="unknown pipeline id 'nope'"):
        store.save_prediction("nope")
    _, pipeline_id = make_run(store)
    with pytest.raises(NotFoundError, match="unknown chain id 'ghost'"):
        store.save_prediction(pipeline_id, "ghost")
    with pytest.raises(NotFoundError, match="unknown prediction id"):
        store.get_prediction("missing")
    with pytest.raises(InvalidInputError, match="must be a non-empty string"):
        store.save_prediction(42)
    assert store.query_predictions().height == 0


def test_caller_given_prediction_id_must_be_new(store):
    _, pipeline_id = make_run(store)
    store.save_prediction(pipeline_id, prediction_id="p-1")
    with pytest.raises(InvalidInputError, match="already used"):
        store.save_prediction(pipeline_id, prediction_id="p-1")
    assert store.query_predictions()["prediction_id"].to_list() == ["p-1"]
    assert isinstance(store.query_predictions(), pl.DataFrame)


def test_ranking_direction_follows_writes_and_deletes_on_one_connection(store):
    _, pipeline_id = make_run(store)
    store.save_prediction(pipeline_id, metric="rmse", val_score=1.0)
    assert store.top_predictions(1)["val_score"].to_list() == [1.0]
    other = store.save_prediction(pipeline_id, metric="r2", val_score=0.9)
    with pytest.raises(InvalidInputError, match="different metrics"):
        store.top_predictions(1)
    store.delete_prediction(other)
    assert store.top_predictions(1)["val_score"].to_list() == [1.0]
