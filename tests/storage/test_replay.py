"""Training traces stored as chains, and replayed exactly (issue 3's acceptance)."""

from __future__ import annotations

import warnings
from importlib import metadata

import numpy as np
import pytest

from nirs.config import count_pipelines, expand
from nirs.datasets import load_coffee, load_tablet
from nirs.training import fit_pipeline
from storage import ChainVersionWarning, ReplayError, WorkspaceStore
from storage.chain_builder import ChainBuilder, record_trace

SNV_PLS8 = ["SNV", "StandardScaler",
            {"split": {"class": "KFold", "params": {"n_splits": 5, "shuffle": True, "random_state": 0}}},
            {"model": {"class": "PLSRegression", "params": {"n_components": 8}}}]


@pytest.fixture(scope="module")
def tablet_sets():
    return load_tablet(instrument=1)


@pytest.fixture(scope="module")
def snv_pls_trace(tablet_sets):
    train, test = tablet_sets
    return fit_pipeline(train, expand(SNV_PLS8)[0], test=test)


def _avg(trace, partition):
    return next(p for p in trace.predictions if p.fold_id == "avg" and p.partition == partition)


def test_tablet_chain_replays_the_training_time_test_predictions(store, tablet_sets, snv_pls_trace):
    train, test = tablet_sets
    run_id = store.begin_run("tablet")
    ids = record_trace(store, run_id, snv_pls_trace)
    replayed = store.replay_chain(ids["chain_id"], test.X)
    expected = _avg(snv_pls_trace, "test")
    np.testing.assert_allclose(replayed, expected.y_pred, rtol=0, atol=1e-9)
    rmse = float(np.sqrt(np.mean((replayed - test.y) ** 2)))
    assert abs(rmse - 2.22) / 2.22 < 0.02, rmse
    # what landed: one pipeline, its chain, 5 folds x (train, val, test) + avg val/test
    pipeline = store.get_pipeline(ids["pipeline_id"])
    assert pipeline["status"] == "completed" and pipeline["best_test"] == pytest.approx(rmse, abs=1e-9)
    preds = store.query_predictions(pipeline_id=ids["pipeline_id"])
    assert set(preds["fold_id"]) == {f"fold_{k}" for k in range(5)} | {"avg"}
    assert preds.filter(preds["fold_id"] == "avg")["partition"].sort().to_list() == ["test", "val"]
    chain = store.get_chain(ids["chain_id"])
    assert chain["n_features"] == 597 and len(chain["fold_artifacts"]) == 5
    np.testing.assert_array_equal(chain["wavelengths"], train.wavelengths)


def test_a_chain_records_what_fitted_it_and_replay_warns_under_another_scikit_learn(store, tablet_sets,
                                                                                     snv_pls_trace):
    _, test = tablet_sets
    run_id = store.begin_run("tablet")
    ids = record_trace(store, run_id, snv_pls_trace)
    fitted = store.get_chain(ids["chain_id"])["metadata"]["fitted_versions"]
    assert fitted["scikit-learn"] == metadata.version("scikit-learn")
    assert fitted["numpy"] == metadata.version("numpy") and fitted["joblib"] == metadata.version("joblib")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same versions: not a word
        expected = store.replay_chain(ids["chain_id"], test.X)
    # The same fitted objects, recorded as fitted by an older scikit-learn (installing
    # one here is not possible: the caller states the versions, as a bundle import does)
    chain = ChainBuilder(snv_pls_trace, store).build()
    chain["metadata"] = {**chain["metadata"], "fitted_versions": {**fitted, "scikit-learn": "0.24.2"}}
    old_chain = store.save_chain(store.begin_pipeline(run_id, "older"), **chain)
    assert store.get_chain(old_chain)["metadata"]["fitted_versions"]["scikit-learn"] == "0.24.2"
    here = metadata.version("scikit-learn").replace(".", "[.]")
    with pytest.warns(ChainVersionWarning, match=rf"chain {old_chain} was fitted with scikit-learn 0[.]24[.]2, "
                                                 rf"this environment has scikit-learn {here}"):
        replayed = store.replay_chain(old_chain, test.X)
    np.testing.assert_array_equal(replayed, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per chain and store: its later replays are quiet
        store.replay_chain(old_chain, test.X)
    with WorkspaceStore(store.path) as another, pytest.warns(ChainVersionWarning):
        another.replay_chain(old_chain, test.X)  # another store (a scoring flow) is told too
    # after an upgrade, check(load=True) lists the chains fitted under another version
    report = store.check_workspace(load=True)
    assert report.other_versions == [{"chain_id": old_chain, "fitted": "0.24.2",
                                      "here": metadata.version("scikit-learn")}]
    assert report.ok and report.unloadable == []  # a warning, not a fault: the models still load


def test_an_artifact_whose_class_is_gone_is_one_clear_error_naming_chain_artifact_and_versions(
        store, tablet_sets, vanishing_step):
    """Years later the code a pickle names may be gone (a module removed, a class moved by
    an upgrade): the bytes are sound, so it is not an integrity error, and it is not a bare
    ModuleNotFoundError either."""
    from storage import ArtifactLoadError

    train, test = tablet_sets
    saved = vanishing_step.save_chain(store, train)
    chain_id, centre_id, model_id = saved.chain_id, saved.centre_id, saved.model_id
    expected = store.replay_chain(chain_id, test.X)
    assert store.check_workspace(load=True).unloadable == []
    vanishing_step.remove()
    here = metadata.version("scikit-learn").replace(".", "[.]")
    with WorkspaceStore(store.path) as later:
        with pytest.raises(ArtifactLoadError, match=rf"chain {chain_id} cannot be replayed: artifact {centre_id} "
                                                   rf"\(.*{centre_id}\.joblib\) is intact but cannot be loaded here: "
                                                   rf"ModuleNotFoundError: No module named 'nf_vanishing_step'; the "
                                                   rf"chain was fitted with scikit-learn {here}, this environment"):
            later.replay_chain(chain_id, test.X)
        with pytest.raises(ArtifactLoadError, match=rf"artifact {centre_id} .* is intact"):
            later.load_artifact(centre_id)
        assert later.check_workspace().ok  # the files are sound: the quick check has nothing to say
        report = later.check_workspace(load=True)  # loading them finds it, and names the chain
        assert not report.ok and report.artifacts_loaded == 2
        (entry,) = report.unloadable
        assert entry["artifact_id"] == centre_id and entry["chains"] == [chain_id]
        assert entry["error"] == "ModuleNotFoundError: No module named 'nf_vanishing_step'"
        np.testing.assert_array_equal(later.load_artifact(model_id).predict(saved.centre.transform(test.X)).ravel(),
                                      np.ravel(expected))


def test_replay_checks_its_input_before_computing(store, tablet_sets, snv_pls_trace):
    train, test = tablet_sets
    chain_id = record_trace(store, store.begin_run("r"), snv_pls_trace)["chain_id"]
    with pytest.raises(ReplayError, match="X has 596 features but chain .* was trained on 597"):
        store.replay_chain(chain_id, test.X[:, :-1])
    # a finer grid that covers the trained range is resampled onto it
    fine = np.linspace(590.0, 1800.0, 1211)
    X_fine = np.vstack([np.interp(fine, train.wavelengths, row) for row in test.X])
    on_fine = store.replay_chain(chain_id, X_fine, wavelengths=fine)
    np.testing.assert_allclose(on_fine, _avg(snv_pls_trace, "test").y_pred, atol=0.05)
    # a grid that stops short of the trained range is refused, naming both ranges
    short = np.linspace(700.0, 1700.0, 597)
    with pytest.raises(ReplayError, match=r"new wavelength grid \(700-1700\) does not cover the trained range \(600-1792\)"):
        store.replay_chain(chain_id, test.X, wavelengths=short)
    bad = test.X.copy()
    bad[3, 7] = np.nan
    with pytest.raises(ReplayError, match="first at row 3, column 7"):
        store.replay_chain(chain_id, bad)


def test_second_replay_reuses_loaded_artifacts(store, tablet_sets, snv_pls_trace):
    _, test = tablet_sets
    chain_id = record_trace(store, store.begin_run("r"), snv_pls_trace)["chain_id"]
    loads = []
    original = store.files.load
    store.files.load = lambda *a: loads.append(a) or original(*a)
    store.replay_chain(chain_id, test.X)
    first = len(loads)
    store.replay_chain(chain_id, test.X)
    assert first > 0 and len(loads) == first


def test_coffee_classification_replays_string_labels_and_mean_probabilities(store):
    train = load_coffee()
    config = ["SNV", {"split": {"class": "StratifiedKFold", "params": {"n_splits": 3, "shuffle": True, "random_state": 0}}},
              {"model": {"class": "LogisticRegression", "params": {"max_iter": 2000}}}]
    trace = fit_pipeline(train, expand(config)[0], test=train)
    chain_id = record_trace(store, store.begin_run("coffee"), trace)["chain_id"]
    labels, proba = store.replay_chain(chain_id, train.X, return_proba=True)
    expected = _avg(trace, "test")
    assert set(labels) == set(np.unique(train.y)) and all(isinstance(v, str) for v in labels)
    np.testing.assert_array_equal(labels.astype(str), np.asarray(expected.y_pred).astype(str))
    np.testing.assert_allclose(proba, expected.y_proba, atol=1e-9)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert store.get_chain(chain_id)["classes"] == sorted(set(train.y.tolist()))
    stored = store.query_predictions(fold_id="avg", partition="test")
    got = store.get_prediction(stored["prediction_id"][0], load_arrays=True)
    assert got["y_proba"].shape == (len(train.y), 3)


def test_a_generator_grid_lands_whole(store, tablet_sets):
    train, test = tablet_sets
    small = type(train)(X=train.X[:120], wavelengths=train.wavelengths, sample_ids=train.sample_ids[:120],
                        y=train.y[:120], name="tablet")
    config = [{"_or_": ["SNV", "MSC"]},
              {"split": {"class": "KFold", "params": {"n_splits": 3, "shuffle": True, "random_state": 0}}},
              {"model": {"class": "PLSRegression", "params": {"n_components": {"_range_": [2, 4]}}}}]
    assert count_pipelines(config) == 6
    run_id = store.begin_run("grid")
    for pipeline in expand(config):
        record_trace(store, run_id, fit_pipeline(small, pipeline))
    pipelines = store.list_pipelines(run_id=run_id)
    assert pipelines.height == 6 and set(pipelines["status"]) == {"completed"}
    assert pipelines["best_val"].null_count() == 0
    for pipeline_id in pipelines["pipeline_id"]:
        assert store.get_chains_for_pipeline(pipeline_id).height == 1
        folds = store.query_predictions(pipeline_id=pipeline_id, partition="val")["fold_id"].to_list()
        assert sorted(folds) == ["avg", "fold_0", "fold_1", "fold_2"]


# -- one rule, one ReplayableChain -------------------------------------------------------------
def test_the_store_a_loaded_chain_and_a_bundle_replay_to_the_same_numbers(store, tablet_sets, snv_pls_trace,
                                                                          tmp_path, monkeypatch):
    """replay_chain, load_chain (what the inbox scores with, pickled into its tasks) and a
    bundle's predict are one ReplayableChain by one rule: the same numbers, to the bit."""
    import pickle

    from storage import load_bundle

    monkeypatch.setenv("NIRSFLOW_BUNDLE_KEY", "k" * 32)
    _, test = tablet_sets
    chain_id = record_trace(store, store.begin_run("r"), snv_pls_trace)["chain_id"]
    replayed = store.replay_chain(chain_id, test.X)
    loaded = pickle.loads(pickle.dumps(store.load_chain(chain_id)))
    np.testing.assert_array_equal(loaded.replay(test.X)[0], replayed)
    np.testing.assert_array_equal(load_bundle(store.export_chain(chain_id, tmp_path / "c.n4a")).predict(test.X),
                                  replayed)
    np.testing.assert_array_equal(replayed, _avg(snv_pls_trace, "test").y_pred)  # training's own "avg"


def test_a_multi_output_chain_replays_each_output_as_a_column(store, tablet_sets):
    """One output comes back as (n,); several stay (n, k), each column the folds' mean of
    that output (never flattened into one long vector)."""
    from sklearn.cross_decomposition import PLSRegression
    from sklearn.preprocessing import StandardScaler

    train, test = tablet_sets
    Y = np.column_stack([train.y, 2.0 * train.y + 1.0])
    run_id = store.begin_run("two outputs")
    pipeline_id = store.begin_pipeline(run_id, "p", None, [], "tablet")
    folds, expected = {}, []
    for k in range(3):
        part = np.arange(len(train.y)) % 3 != k
        scaler = StandardScaler().fit(train.X[part])
        model = PLSRegression(6).fit(scaler.transform(train.X[part]), Y[part])
        folds[f"fold_{k}"] = {"0": store.save_artifact(scaler, "sklearn.preprocessing.StandardScaler", "transformer"),
                              "1": store.save_artifact(model, "sklearn.cross_decomposition.PLSRegression")}
        expected.append(model.predict(scaler.transform(test.X)))
    steps = [{"step_idx": 0, "kind": "transformer"}, {"step_idx": 1, "kind": "model"}]
    chain_id = store.save_chain(pipeline_id, steps, 1, "PLSRegression", "", "per_fold", folds, {},
                                task_type="regression", n_features=train.X.shape[1])
    replayed = store.replay_chain(chain_id, test.X)
    assert replayed.shape == (len(test.y), 2)
    np.testing.assert_allclose(replayed, np.mean(expected, axis=0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(replayed[:, 1], 2.0 * replayed[:, 0] + 1.0, atol=1e-6)


def test_a_grid_within_the_tolerance_is_the_trained_grid_and_another_is_resampled_or_refused(store, tablet_sets,
                                                                                           snv_pls_trace):
    """Grids agree when every wavelength is within 1e-6 of the largest (nirs.replay.GRID_RTOL):
    wavelengths read back from headers carry their printing's rounding, and are not resampled
    for it. Beyond it a covering grid is resampled, a narrower one refused."""
    from nirs.replay import GRID_RTOL

    train, test = tablet_sets
    chain_id = record_trace(store, store.begin_run("r"), snv_pls_trace)["chain_id"]
    exact = store.replay_chain(chain_id, test.X, wavelengths=train.wavelengths)
    tolerance = GRID_RTOL * train.wavelengths.max()
    within = train.wavelengths + 0.5 * tolerance
    np.testing.assert_array_equal(store.replay_chain(chain_id, test.X, wavelengths=within), exact)  # not resampled
    wl = train.wavelengths  # a grid a little wider: it covers the trained range, so it is resampled
    beyond = np.linspace(wl.min() - 5 * tolerance, wl.max() + 5 * tolerance, wl.size)
    resampled = store.replay_chain(chain_id, test.X, wavelengths=beyond)
    assert not np.array_equal(resampled, exact)
    np.testing.assert_allclose(resampled, exact, atol=0.05)
    with pytest.raises(ReplayError, match="does not cover the trained range"):
        store.replay_chain(chain_id, test.X, wavelengths=train.wavelengths + 5 * tolerance)
