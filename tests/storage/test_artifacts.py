"""Artifacts: content addressing, integrity on load, liveness derived from chains, gc."""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from storage import ArtifactIntegrityError, InvalidInputError, NotFoundError, plan_gc
from storage.maintenance import ArtifactState
from tests.storage.conftest import make_run, save_scaler_pls_chain


def _files(store):
    return sorted(p for p in (store.path / "artifacts").rglob("*") if p.is_file())


def test_id_is_the_sha256_of_the_bytes_and_dedup_writes_nothing(store, tablet):
    scaler = StandardScaler().fit(tablet[0])
    artifact_id = store.save_artifact(scaler, "sklearn.preprocessing.StandardScaler", "transformer")
    path = store.get_artifact_path(artifact_id)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == artifact_id
    assert path.parent.name == artifact_id[:2]
    before = path.stat().st_mtime_ns
    time.sleep(0.01)
    assert store.save_artifact(scaler, "sklearn.preprocessing.StandardScaler", "transformer") == artifact_id
    assert path.stat().st_mtime_ns == before
    assert _files(store) == [path]  # no temporaries left behind


def test_a_corrupt_file_is_refused_on_load_and_repaired_by_the_next_save(store, tablet):
    scaler = StandardScaler().fit(tablet[0])
    artifact_id = store.save_artifact(scaler, "StandardScaler", "transformer")
    path = store.get_artifact_path(artifact_id)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match=rf"{path}.*corrupt.*expected {artifact_id}"):
        store.load_artifact(artifact_id)
    # A save of the same object finds the damaged copy and replaces it.
    store.save_artifact(scaler, "StandardScaler", "transformer")
    np.testing.assert_array_equal(store.load_artifact(artifact_id).mean_, scaler.mean_)


def test_a_missing_file_is_an_integrity_error_naming_it(store, tablet):
    artifact_id = store.save_artifact(StandardScaler().fit(tablet[0]), "StandardScaler", "transformer")
    path = store.get_artifact_path(artifact_id)
    path.unlink()
    with pytest.raises(ArtifactIntegrityError, match=f"{path} is missing"):
        store.load_artifact(artifact_id)


def test_ref_count_is_the_number_of_referencing_chains(store, fitted_folds, tablet):
    _, pipeline_id = make_run(store)
    save_scaler_pls_chain(store, pipeline_id, fitted_folds, tablet[0].shape[1])
    save_scaler_pls_chain(store, pipeline_id, fitted_folds[:1], tablet[0].shape[1])
    counts = store.list_artifacts()["ref_count"].to_list()
    assert sorted(counts) == [1, 1, 1, 1, 2, 2]
    # saving again (dedup) does not inflate the count, unlike a hand-kept counter
    store.save_artifact(fitted_folds[0][0], "StandardScaler", "transformer")
    assert sorted(store.list_artifacts()["ref_count"].to_list()) == [1, 1, 1, 1, 2, 2]


def test_chains_refuse_unknown_artifacts(store):
    _, pipeline_id = make_run(store)
    with pytest.raises(NotFoundError, match="unknown artifact id 'deadbeef'"):
        store.save_chain(pipeline_id, [{"step_idx": 0}], 0, "M", fold_artifacts={"fold_0": {"0": "deadbeef"}})
    assert store.get_chains_for_pipeline(pipeline_id).height == 0


def test_gc_keeps_young_and_referenced_artifacts_and_removes_dead_ones(store, fitted_folds, tablet):
    run_id, pipeline_id = make_run(store)
    save_scaler_pls_chain(store, pipeline_id, fitted_folds, tablet[0].shape[1])
    loose = store.save_artifact(StandardScaler().fit(tablet[0][:50]), "StandardScaler", "transformer")
    assert store.gc_artifacts(grace=3600) == 0          # young: kept
    assert store.gc_artifacts(grace=0, dry_run=True).artifact_ids == [loose]
    assert store.get_artifact_path(loose).exists()      # dry run removed nothing
    result = store.gc_artifacts(grace=0)
    assert result.artifact_ids == [loose] and result.bytes_freed > 0
    assert not any(loose in p.name for p in _files(store))
    assert len(_files(store)) == 6                       # the chain's artifacts live on
    store.delete_run(run_id)
    assert store.gc_artifacts(grace=0) == 6
    assert _files(store) == [] and store.list_artifacts().height == 0


def test_saving_the_same_content_again_renews_its_grace_period(store, tablet):
    scaler = StandardScaler().fit(tablet[0][:50])
    first = store.save_artifact(scaler, "StandardScaler", "transformer")
    time.sleep(1.2)
    with store.batch():  # re-saved, and no chain of this batch refers to it
        assert store.save_artifact(scaler, "StandardScaler", "transformer") == first
    assert store.gc_artifacts(grace=1.0) == 0  # renewed: younger than the grace period
    time.sleep(1.2)
    assert store.gc_artifacts(grace=1.0).artifact_ids == [first]


def test_a_chain_saved_with_a_re_saved_artifact_keeps_it_past_the_grace_period(store, fitted_folds, tablet):
    run_id, pipeline_id = make_run(store)
    save_scaler_pls_chain(store, pipeline_id, fitted_folds, tablet[0].shape[1])
    time.sleep(1.2)
    with store.batch():  # the same fitted objects again, in a second chain
        save_scaler_pls_chain(store, store.begin_pipeline(run_id, "again", [], [], "tablet"),
                              fitted_folds, tablet[0].shape[1])
    time.sleep(1.2)
    assert store.gc_artifacts(grace=1.0) == 0  # referenced: not collected, however old
    store.delete_run(run_id)
    assert store.gc_artifacts(grace=1.0) == 6


def test_gc_sweeps_orphan_files_and_temporaries_older_than_grace(store, tablet):
    artifact_id = store.save_artifact(StandardScaler().fit(tablet[0]), "StandardScaler", "transformer")
    shard = store.path / "artifacts" / "ab"
    shard.mkdir()
    orphan = shard / ("ab" + "0" * 62 + ".joblib")          # a crash's file with no row
    temp = shard / ".tmp-abandoned"                          # a killed save's temporary
    orphan.write_bytes(b"x"), temp.write_bytes(b"y")
    assert store.gc_artifacts(grace=3600) == 0
    old = time.time() - 7200
    for p in (orphan, temp):
        os.utime(p, (old, old))
    result = store.gc_artifacts(grace=3600)
    assert sorted(result.orphan_files) == sorted([orphan, temp])
    assert not orphan.exists() and not temp.exists()
    assert store.get_artifact_path(artifact_id).exists()    # young and rowed: kept


def test_failed_pipeline_releases_its_artifacts(store, fitted_folds, tablet):
    run_id, pipeline_id = make_run(store)
    chain_id = save_scaler_pls_chain(store, pipeline_id, fitted_folds, tablet[0].shape[1])
    pred = store.save_prediction(pipeline_id, chain_id, val_score=1.0)
    # another run's chain shares fold 0's artifacts
    _, other = make_run(store)
    keep = save_scaler_pls_chain(store, other, fitted_folds[:1], tablet[0].shape[1])
    store.fail_pipeline(pipeline_id, "ValueError: fold 2 diverged")
    row = store.get_pipeline(pipeline_id)
    assert row["status"] == "failed" and "diverged" in row["error"]
    logs = store.get_logs(pipeline_id=pipeline_id)
    assert logs["level"].to_list() == ["error"] and "diverged" in logs["message"][0]
    assert store.get_prediction(pred)["chain_id"] is None
    # deleting the failed run afterwards must not decrement anything twice
    store.delete_run(run_id)
    assert store.gc_artifacts(grace=0) == 4
    assert store.replay_chain(keep, tablet[2]).shape == (212,)


def test_plan_gc_is_a_pure_function_over_the_live_set():
    now = 10_000.0
    states = [ArtifactState("a" * 64, "joblib", now - 10, False),     # young
              ArtifactState("b" * 64, "joblib", now - 5000, False),   # dead
              ArtifactState("c" * 64, "joblib", now - 5000, True)]    # referenced
    files = [("pa", "a" * 64, now - 10), ("pb", "b" * 64, now - 5000), ("pc", "c" * 64, now - 5000),
             ("pd", "d" * 64, now - 5000), ("pe", "e" * 64, now - 1), ("tmp", None, now - 5000)]
    plan = plan_gc(states, files, now=now, grace=3600)
    assert [a.artifact_id for a in plan.dead] == ["b" * 64]
    assert plan.orphan_files == ["pd", "tmp"]


def test_bad_artifact_arguments(store):
    with pytest.raises(InvalidInputError, match="unknown artifact format 'pickle'"):
        store.save_artifact(object(), "x", "model", "pickle")
    with pytest.raises(InvalidInputError, match="grace must be"):
        store.gc_artifacts(grace=-1)
    with pytest.raises(NotFoundError, match="unknown artifact id"):
        store.load_artifact("0" * 64)
    assert store.list_artifacts().height == 0 and _files(store) == []


def test_check_reports_missing_corrupt_orphans_and_stale_runs_and_repairs_what_is_safe(store, fitted_folds, tablet):
    run_id, pipeline_id = make_run(store)
    chain_id = save_scaler_pls_chain(store, pipeline_id, fitted_folds, tablet[0].shape[1])
    assert store.check_workspace().ok
    ids = store.list_artifacts()["artifact_id"].to_list()
    store.get_artifact_path(ids[0]).unlink()
    store.get_artifact_path(ids[1]).write_bytes(b"rot")
    orphan = store.path / "artifacts" / "ff" / ("ff" * 32 + ".joblib")
    orphan.parent.mkdir()
    orphan.write_bytes(b"left by a crash")
    old = time.time() - 7200
    os.utime(orphan, (old, old))
    report = store.check_workspace(stale_after=0)
    assert [m["artifact_id"] for m in report.missing] == [ids[0]] and report.missing[0]["chains"] == [chain_id]
    assert [c["artifact_id"] for c in report.corrupt] == [ids[1]]
    assert report.orphan_files == [str(orphan)]
    assert [r["run_id"] for r in report.stale_runs] == [run_id] and not report.ok
    repaired = store.check_workspace(repair=True, stale_after=0)
    assert any("marked crashed" in line for line in repaired.repaired)
    assert store.get_run(run_id)["status"] == "crashed"
    assert not orphan.exists()
    # what a chain needs is never deleted by a repair: still reported, for a person to restore
    assert [m["artifact_id"] for m in store.check_workspace().missing] == [ids[0]]


def test_a_failed_artifact_write_rolls_its_whole_batch_back(store, fitted_folds, tablet, monkeypatch):
    """A file write that fails inside a batch (a full disk: a fault we cannot cause here,
    so the write is made to fail) rolls the whole batch back, with the write's error: no
    row without its file, no pipeline or prediction half-recorded."""
    import errno

    from storage.artifacts import ArtifactFiles, serialize, sha256

    run_id, _ = make_run(store)
    written = store.save_artifacts([(fitted_folds[0][0], None, "transformer")])  # a file before the batch
    real_stage = ArtifactFiles.stage

    def full_disk(self, artifact_id, format, data):
        if artifact_id not in written:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_stage(self, artifact_id, format, data)

    monkeypatch.setattr(ArtifactFiles, "stage", full_disk)
    with pytest.raises(OSError, match="No space left"):
        with store.batch():
            pipeline_id = store.begin_pipeline(run_id, "p", {}, [], "tablet", None)
            store.save_prediction(pipeline_id, dataset_name="tablet", model_name="pls", fold_id="0",
                                  partition="val", val_score=0.5, y_true=np.zeros(3), y_pred=np.zeros(3))
            store.save_artifacts([(fitted_folds[1][0], None, "transformer"), (fitted_folds[1][1], None, "model")])
    ids = [sha256(serialize(obj, "joblib")) for obj in fitted_folds[1]]
    assert store.list_pipelines(run_id)["name"].to_list() == ["0001_pls"]  # only the one made before
    assert store.query_predictions().height == 0
    assert set(store.list_artifacts()["artifact_id"]) == set(written)
    assert not any(store.files.path(a, "joblib").exists() for a in ids)

    monkeypatch.setattr(ArtifactFiles, "stage", real_stage)
    with store.batch():
        ids = store.save_artifacts([(fitted_folds[1][0], None, "transformer"), (fitted_folds[1][1], None, "model")])
    for artifact_id in ids:  # committed: each row's file is there, whole
        assert hashlib.sha256(store.get_artifact_path(artifact_id).read_bytes()).hexdigest() == artifact_id
    assert [p for p in _files(store) if p.name.startswith(".")] == []  # no temporaries


def test_an_error_in_a_batch_leaves_its_files_whole_orphans_and_no_rows(store, fitted_folds):
    with pytest.raises(RuntimeError, match="stop"):
        with store.batch():
            ids = store.save_artifacts([(fitted_folds[2][0], None, "transformer"), (fitted_folds[2][1], None, "model")])
            raise RuntimeError("stop")
    assert store.list_artifacts().height == 0
    # the files are whole, and orphans that gc collects
    for artifact_id in ids:
        path = store.files.path(artifact_id, "joblib")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == artifact_id
    assert sorted(store.gc_artifacts(grace=0, dry_run=True).orphan_files) == sorted(
        store.files.path(a, "joblib") for a in ids)
