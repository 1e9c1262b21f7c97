"""Bundles written by nirs4all itself: its current release's (1.4.10) load and import
with --trusted and replay to the folds' average; 0.7.1's are refused, saying why; and
any bundle imported twice is imported once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storage import BundleError, BundleTrustError, load_bundle
from tests.storage.nirs4all_fixture import load

HERE = Path(__file__).resolve().parents[1] / "data" / "nirs4all_bundles"
CURRENT, OLD = HERE / "nirs4all-1.4.10.n4a", HERE / "nirs4all-0.7.1.n4a"


def test_a_bundle_of_nirs4all_1_4_loads_with_trusted_and_replays_to_the_folds_average():
    with pytest.raises(BundleTrustError, match="written by nirs4all, which does not sign its bundles"):
        load_bundle(CURRENT)
    bundle = load_bundle(CURRENT, trusted=True)
    np.testing.assert_allclose(bundle.predict(load("X_new")), np.load(HERE / "nirs4all-1.4.10.expected.npy"),
                               rtol=0, atol=1e-9)
    assert bundle.task_type == "regression" and bundle.chain["fold_strategy"] == "per_fold"


def test_importing_a_nirs4all_bundle_twice_adds_nothing(store):
    with pytest.raises(BundleTrustError):
        store.import_bundle(CURRENT)
    assert store.list_runs().height == 0
    chain_id = store.import_bundle(CURRENT, trusted=True)
    np.testing.assert_allclose(store.replay_chain(chain_id, load("X_new")),
                               np.load(HERE / "nirs4all-1.4.10.expected.npy"), rtol=0, atol=1e-9)
    counts = store.sql("SELECT (SELECT count(*) FROM runs) r, (SELECT count(*) FROM chains) c, "
                       "(SELECT count(*) FROM artifacts) a").row(0)
    assert store.import_bundle(CURRENT, trusted=True) == chain_id
    assert store.sql("SELECT (SELECT count(*) FROM runs) r, (SELECT count(*) FROM chains) c, "
                     "(SELECT count(*) FROM artifacts) a").row(0) == counts == (1, 1, 4)


def test_a_nirsflow_bundle_imported_twice_is_imported_once_with_its_scores(store, tmp_path):
    from storage import WorkspaceStore

    chain_id = store.import_bundle(CURRENT, trusted=True)
    pipeline = store.get_chain(chain_id)["pipeline_id"]
    store.complete_pipeline(pipeline, best_val=1.5, best_test=1.7, metric="rmse")
    bundle = store.export_chain(chain_id, tmp_path / "ours.n4a")
    with WorkspaceStore(tmp_path / "other") as other:
        first = other.import_bundle(bundle, trusted=True)
        again = other.import_bundle(bundle, trusted=True)
        assert first == again and other.list_runs().height == 1
        imported = other.get_pipeline(other.get_chain(first)["pipeline_id"])
        assert (imported["best_val"], imported["best_test"], imported["metric"]) == (1.5, 1.7, "rmse")
        other.delete_run(other.list_runs()["run_id"][0])
        assert other.import_bundle(bundle, trusted=True) != first  # deleted, then brought again


def test_a_bundle_of_nirs4all_0_7_is_refused_saying_no_loader_can_read_it(store):
    for call in (lambda: load_bundle(OLD, trusted=True), lambda: store.import_bundle(OLD, trusted=True)):
        with pytest.raises(BundleError, match="nirs4all 0.7's export_chain.*nirs4all's own cannot read it"):
            call()
    assert store.list_runs().height == 0
