"""Outlier checks stored with a chain (issue 20): saved at training as artifacts the chain
references, replayed by ``replay_chain(..., diagnostics=True)``, by a bundle, by a loaded
chain and after an import, all to the same numbers, whole or in chunks; kept by gc."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from nirs.config import expand
from nirs.datasets import load_tablet
from nirs.training import fit_pipeline
from storage import ReplayError, WorkspaceStore, load_bundle
from storage.chain_builder import record_trace

SNV_PLS8 = ["SNV", "StandardScaler",
            {"split": {"class": "KFold", "params": {"n_splits": 5, "shuffle": True, "random_state": 0}}},
            {"model": {"class": "PLSRegression", "params": {"n_components": 8}}}]
COLUMNS = ("t2", "q", "t2_ratio", "q_ratio", "flag")


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    train, test = load_tablet(instrument=1)
    _, other_instrument = load_tablet(instrument=2)
    root = tmp_path_factory.mktemp("diagnostics")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("NIRSFLOW_BUNDLE_KEY", raising=False)
        store = WorkspaceStore(root / "ws", lock_timeout=30)
        trace = fit_pipeline(train, expand(SNV_PLS8)[0])
        refit = fit_pipeline(train, expand(SNV_PLS8)[0], refit=True)
        run = store.begin_run("diagnostics")
        chain_id = record_trace(store, run, trace)["chain_id"]
        refit_id = record_trace(store, run, refit)["chain_id"]
        bundle = store.export_chain(chain_id)
    X = np.vstack([test.X, other_instrument.X[:40]])  # 212 instrument-1 tablets, 40 on instrument 2
    yield store, trace, chain_id, refit_id, bundle, X
    store.close()


def _same(a: dict, b: dict) -> None:
    for name in COLUMNS:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)


def test_checks_are_stored_per_fold_as_artifacts_the_chain_references(stored):
    store, trace, chain_id, refit_id, _, _ = stored
    meta = store.get_chain(chain_id)["metadata"]
    assert sorted(meta["diagnostics"]) == sorted(trace.fold_ids)
    summary = meta["diagnostics_summary"]["fold_0"]
    assert summary["method"] == "pls" and summary["q_limit_method"] == "box_chi2" and summary["n_components"] == 8
    artifacts = store.list_artifacts()
    ours = artifacts.filter(artifacts["artifact_id"].is_in(list(meta["diagnostics"].values())))
    # referenced by both chains: the refit chain's folds are the same fits, saved once by content
    assert ours.height == 5 and set(ours["artifact_type"]) == {"diagnostics"} and set(ours["ref_count"]) == {2}
    assert set(ours["operator_class"]) == {"nirs.diagnostics.CalibrationDiagnostics"}
    assert sorted(store.get_chain(refit_id)["metadata"]["diagnostics"]) == sorted([*trace.fold_ids, "refit"])
    # gc keeps them (the chain references them), and a check finds nothing amiss
    store.gc_artifacts(grace=0)
    assert set(meta["diagnostics"].values()) <= set(store.list_artifacts()["artifact_id"])
    report = store.check_workspace(load=True)
    assert not (report.missing or report.corrupt or report.unloadable)


def test_replay_chain_with_diagnostics_equals_the_training_objects_whole_and_in_chunks(stored):
    store, trace, chain_id, _, _, X = stored
    pred, checks = store.replay_chain(chain_id, X, diagnostics=True)
    np.testing.assert_array_equal(pred, store.replay_chain(chain_id, X))
    assert set(COLUMNS) <= set(checks)
    from nirs.diagnostics import combine

    # the same numbers straight from the trace's in-memory objects
    expected = []
    for fold in trace.fold_ids:
        Xf = X
        for step in trace.steps:
            if step.kind == "transformer":
                Xf = step.fitted[fold].transform(Xf)
        expected.append(trace.diagnostics[fold].evaluate(Xf))
    _same(checks, combine(expected, None, pred, [trace.diagnostics[f] for f in trace.fold_ids]))
    for size in (1, 13, 100):
        parts = [store.replay_chain(chain_id, X[i:i + size], diagnostics=True)[1] for i in range(0, len(X), size)]
        _same(checks, {name: np.concatenate([p[name] for p in parts]) for name in COLUMNS})
    flagged = checks["flag"] != "ok"
    assert flagged[212:].all() and flagged[:212].mean() < 0.25  # instrument 2 flagged, instrument 1 mostly passes


def test_a_bundle_a_loaded_chain_and_an_import_give_the_same_checks(stored, tmp_path, monkeypatch):
    store, _, chain_id, _, bundle_path, X = stored
    _, checks = store.replay_chain(chain_id, X, diagnostics=True)
    bundle = load_bundle(bundle_path, trusted=True)
    pred, from_bundle = bundle.predict(X, diagnostics=True)
    np.testing.assert_array_equal(pred, store.replay_chain(chain_id, X))
    _same(checks, from_bundle)
    loaded = pickle.loads(pickle.dumps(store.load_chain(chain_id)))  # what a Prefect task gets
    _same(checks, loaded.replay(X, diagnostics=True)[2])
    with WorkspaceStore(tmp_path / "other", lock_timeout=30) as other:
        imported = other.import_bundle(bundle_path, trusted=True)
        _same(checks, other.replay_chain(imported, X, diagnostics=True)[1])


def test_a_chain_without_checks_says_so(stored, tmp_path):
    store, trace, _, _, _, X = stored
    trace.diagnostics, kept = None, trace.diagnostics
    try:
        bare = record_trace(store, store.begin_run("without"), trace)["chain_id"]
    finally:
        trace.diagnostics = kept
    assert "diagnostics" not in store.get_chain(bare)["metadata"]
    with pytest.raises(ReplayError, match="no outlier checks.*train it again"):
        store.replay_chain(bare, X, diagnostics=True)
    assert store.replay_chain(bare, X).shape == (len(X),)
