"""Portable ``.n4a`` bundles (issue 6): a real Tablet chain round-trips outside its
workspace and into another one with exactly replay's numbers; a tampered, unsafe,
unsigned or foreign-signed bundle is refused before anything in it is unpickled."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import re
import secrets
import shutil
import stat
import warnings
import zipfile
from importlib import metadata
from types import SimpleNamespace

import joblib
import numpy as np
import pytest

from nirs.config import expand
from nirs.datasets import load_coffee, load_tablet
from nirs.training import fit_pipeline
from storage import (BundleError, BundleIntegrityError, BundleTrustError, BundleVersionError,
                     BundleVersionWarning, ChainVersionWarning, ReplayError, WorkspaceStore, load_bundle)
from storage import bundles
from storage.chain_builder import ChainBuilder, record_trace

KEY_ENV = "NIRSFLOW_BUNDLE_KEY"
SNV_PLS8 = ["SNV", "StandardScaler",
            {"split": {"class": "KFold", "params": {"n_splits": 5, "shuffle": True, "random_state": 0}}},
            {"model": {"class": "PLSRegression", "params": {"n_components": 8}}}]


class TouchOnLoad:
    """A pickle that creates a file when it is loaded: what a hostile artifact looks like."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture(autouse=True)
def no_key_in_environment(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)


@pytest.fixture(scope="module")
def tablet(tmp_path_factory):
    """A workspace holding a real Tablet chain (SNV + StandardScaler + PLS(8), 5 folds),
    its bundle exported with no key in the environment, and replay's predictions."""
    train, test = load_tablet(instrument=1)
    root = tmp_path_factory.mktemp("tablet")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(KEY_ENV, raising=False)
        store = WorkspaceStore(root / "ws", lock_timeout=30)
        trace = fit_pipeline(train, expand(SNV_PLS8)[0], test=test)
        chain_id = record_trace(store, store.begin_run("tablet"), trace)["chain_id"]
        path = store.export_chain(chain_id)
    key_file = root / "ws" / ".nirsflow" / "bundle.key"
    yield SimpleNamespace(store=store, chain_id=chain_id, path=path, key_file=key_file,
                          key_hex=key_file.read_text(), key=bytes.fromhex(key_file.read_text()),
                          train=train, test=test, expected=store.replay_chain(chain_id, test.X))
    store.close()


@pytest.fixture
def elsewhere(tmp_path, tablet):
    """A copy of the bundle in a folder of its own, outside any workspace."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return shutil.copy(tablet.path, folder / "model.n4a")


# -- helpers: read a bundle's members, write ZIPs by hand ---------------------------------
def members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def write_zip(path, entries) -> pathlib.Path:
    """entries: (name or ZipInfo, bytes) in order; duplicates allowed (zipfile only warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in entries:
                zf.writestr(name, data)
    return pathlib.Path(path)


def rebuild(path, target, *, manifest=None, key=None, sig=True, replace=None, extra=()):
    """Copy a bundle with a new manifest (re-signed with `key`, or keeping the old
    signature), replaced members and extra entries."""
    old = members(path)
    manifest_bytes = old["manifest.json"] if manifest is None else bundles.canonical_json(manifest)
    entries = [("manifest.json", manifest_bytes)]
    if sig:
        entries.append(("manifest.sig", bundles.signature_member(manifest_bytes, key) if key else old["manifest.sig"]))
    for name, data in old.items():
        if name.startswith("artifacts/"):
            entries.append((name, (replace or {}).get(name, data)))
    return write_zip(target, entries + list(extra))


def manifest_of(path) -> dict:
    return json.loads(members(path)["manifest.json"])


def an_artifact_member(path) -> str:
    return sorted(n for n in members(path) if n.startswith("artifacts/"))[0]


def listing(folder: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- round trips -------------------------------------------------------------------------
def test_bundle_manifest_says_what_was_fitted_and_is_signed(tablet):
    assert tablet.path == tablet.store.path / "exports" / f"{tablet.chain_id}.n4a"
    found = members(tablet.path)
    manifest = json.loads(found["manifest.json"])
    assert found["manifest.json"] == bundles.canonical_json(manifest)  # canonical bytes are what is signed
    assert manifest["format"] == "nirsflow-bundle" and manifest["format_version"] == 1
    assert set(manifest["versions"]) == {"python", "numpy", "scikit-learn", "joblib", "nirsflow"}
    assert manifest["versions"]["scikit-learn"] == metadata.version("scikit-learn")
    assert manifest["versions"] == manifest["chain"]["metadata"]["fitted_versions"] == manifest["exported_with"]
    chain = manifest["chain"]
    assert chain["chain_id"] == tablet.chain_id and chain["fold_strategy"] == "per_fold"
    assert chain["task_type"] == "regression" and chain["n_features"] == 597 == len(chain["wavelengths"])
    assert chain["wavelengths"] == tablet.train.wavelengths.tolist()
    assert [s["kind"] for s in chain["steps"]] == ["transformer", "transformer", "model"]
    assert chain["model_step_idx"] == 2 and "fold_weights" in chain and len(chain["fold_artifacts"]) == 5
    assert manifest["source"]["pipeline"]["dataset_name"] and manifest["source"]["run"]["name"] == "tablet"
    # exactly the manifest, its signature and one member per artifact, each hashing to its id
    assert set(found) == {"manifest.json", "manifest.sig"} | {e["member"] for e in manifest["artifacts"].values()}
    for artifact_id, entry in manifest["artifacts"].items():
        assert entry["member"] == f"artifacts/{artifact_id}.joblib" and entry["sha256"] == artifact_id
        assert hashlib.sha256(found[entry["member"]]).hexdigest() == artifact_id
    sig = json.loads(found["manifest.sig"])
    assert sig["algorithm"] == "HMAC-SHA-256" and sig["key_id"] == bundles.key_id(tablet.key)
    # the workspace key: 32 random bytes, hex, readable by its owner only, reused
    assert stat.S_IMODE(tablet.key_file.stat().st_mode) == 0o600 and len(tablet.key) == 32
    again = tablet.store.export_chain(tablet.chain_id, tablet.store.path / "exports" / "again.n4a")
    assert json.loads(members(again)["manifest.sig"])["key_id"] == sig["key_id"]


def test_round_trip_outside_the_workspace_equals_replay(tablet, elsewhere, monkeypatch):
    folder = elsewhere.parent
    before = listing(folder)
    monkeypatch.setenv(KEY_ENV, tablet.key_hex)
    bundle = load_bundle(elsewhere)
    assert bundle.signature == f"verified with the {KEY_ENV} environment variable"
    np.testing.assert_allclose(bundle.predict(tablet.test.X), tablet.expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(bundle.predict(tablet.test.X, wavelengths=tablet.train.wavelengths),
                               tablet.expected, rtol=0, atol=1e-12)
    with pytest.raises(ReplayError, match="X has 596 features but chain .* was trained on 597"):
        bundle.predict(tablet.test.X[:, :-1])
    with pytest.raises(ReplayError, match="regression chain"):
        bundle.predict_proba(tablet.test.X)
    # the key given directly (bytes, or the key file), or no key and trusted=True
    monkeypatch.delenv(KEY_ENV)
    for loaded in (load_bundle(elsewhere, key=tablet.key), load_bundle(elsewhere, key=tablet.key_file),
                   load_bundle(elsewhere, trusted=True)):
        np.testing.assert_allclose(loaded.predict(tablet.test.X), tablet.expected, rtol=0, atol=1e-12)
    assert "trusted=True" in load_bundle(elsewhere, trusted=True).signature
    assert listing(folder) == before  # loading writes nothing


def test_a_key_in_the_environment_signs_exports(tablet, tmp_path, monkeypatch):
    other = secrets.token_bytes(32)
    monkeypatch.setenv(KEY_ENV, other.hex())
    path = tablet.store.export_chain(tablet.chain_id, tmp_path / "env-signed.n4a")
    assert json.loads(members(path)["manifest.sig"])["key_id"] == bundles.key_id(other)
    np.testing.assert_allclose(load_bundle(path).predict(tablet.test.X), tablet.expected, rtol=0, atol=1e-12)
    monkeypatch.setenv(KEY_ENV, "too short")
    with pytest.raises(BundleTrustError, match=f"{KEY_ENV} environment variable is 9 bytes long"):
        tablet.store.export_chain(tablet.chain_id, tmp_path / "never.n4a")
    assert not (tmp_path / "never.n4a").exists()


def test_import_into_another_workspace_replays_equal_and_deduplicates(tablet, tmp_path, monkeypatch):
    with WorkspaceStore(tmp_path / "ws2", lock_timeout=30) as other:
        with pytest.raises(BundleTrustError, match="no bundle key is at hand.*trusted=True"):
            other.import_bundle(tablet.path)
        assert other.list_runs().height == 0 and other.list_artifacts().height == 0
        monkeypatch.setenv(KEY_ENV, tablet.key_hex)
        chain_id = other.import_bundle(tablet.path)
        np.testing.assert_allclose(other.replay_chain(chain_id, tablet.test.X), tablet.expected, rtol=0, atol=1e-12)
        chain = other.get_chain(chain_id)
        pipeline = other.get_pipeline(chain["pipeline_id"])
        run = other.get_run(pipeline["run_id"])
        origin = run["config"]["imported_bundle"]
        assert run["status"] == pipeline["status"] == "completed" and run["tags"] == ["imported"]
        assert origin["source_chain_id"] == tablet.chain_id and origin["signature"].startswith("verified")
        assert origin["bundle_sha256"] == hashlib.sha256(tablet.path.read_bytes()).hexdigest()
        assert chain["metadata"]["imported_from"]["source_chain_id"] == tablet.chain_id
        source = tablet.store.get_pipeline(tablet.store.get_chain(tablet.chain_id)["pipeline_id"])
        assert pipeline["best_test"] == source["best_test"] and pipeline["dataset_name"] == source["dataset_name"]
        artifacts = other.list_artifacts()
        files = listing(other.path / "artifacts")
        assert artifacts.height == len(manifest_of(tablet.path)["artifacts"])
        # a second import of the same bundle adds nothing: the chain it brought, no new run or file
        monkeypatch.delenv(KEY_ENV)
        second = other.import_bundle(tablet.path, trusted=True)
        assert second == chain_id and other.list_artifacts().height == artifacts.height
        assert listing(other.path / "artifacts") == files and set(other.list_artifacts()["ref_count"]) == {1}
        assert other.list_runs().height == 1
    # back into the workspace it came from: its own key verifies it, its artifacts are reused
    before = tablet.store.list_artifacts().height
    home = tablet.store.import_bundle(tablet.path)
    assert tablet.store.list_artifacts().height == before
    np.testing.assert_allclose(tablet.store.replay_chain(home, tablet.test.X), tablet.expected, rtol=0, atol=1e-12)


def test_an_imported_chain_keeps_its_combined_scores_and_ranks_as_it_did_at_home(tablet, tmp_path, monkeypatch):
    """The bundle carries the chain's combined scores (not its folds', not the reference
    values), so `top` ranks the imported chain and `show` states its RMSECV and RMSEP."""
    home = tablet.store.query_predictions(chain_id=tablet.chain_id, fold_id="avg").sort("partition")
    carried = manifest_of(tablet.path)["source"]["scores"]
    assert sorted((r["fold_id"], r["partition"]) for r in carried) == [("avg", "test"), ("avg", "val")]
    assert all("y_true" not in r and "y_pred" not in r for r in carried)
    monkeypatch.setenv(KEY_ENV, tablet.key_hex)
    with WorkspaceStore(tmp_path / "ws2", lock_timeout=30) as other:
        chain_id = other.import_bundle(tablet.path)
        other.import_bundle(tablet.path)  # twice is once: no second set of scores
        best = other.top_predictions(5, fold_id="avg")
        assert best["chain_id"].to_list() == [chain_id]
        here = other.query_predictions(chain_id=chain_id).sort("partition")
        assert here["fold_id"].to_list() == ["avg", "avg"] and here["partition"].to_list() == ["test", "val"]
        for column in ("val_score", "test_score", "metric", "n_samples", "dataset_name"):
            assert here[column].to_list() == home[column].to_list(), column
        assert [json.loads(s) for s in here["scores"]] == [json.loads(s) for s in home["scores"]]


# -- refusals ----------------------------------------------------------------------------
@pytest.mark.parametrize("trusted", [False, True])
def test_a_flipped_byte_in_an_artifact_is_refused_naming_the_member(tablet, tmp_path, monkeypatch, trusted):
    monkeypatch.setenv(KEY_ENV, tablet.key_hex)
    member = an_artifact_member(tablet.path)
    data = bytearray(members(tablet.path)[member])
    data[len(data) // 2] ^= 0x01
    bad = rebuild(tablet.path, tmp_path / "flipped.n4a", replace={member: bytes(data)})
    with pytest.raises(BundleIntegrityError, match=f"member {member} of bundle .* hash"):
        load_bundle(bad, trusted=trusted)
    runs = tablet.store.list_runs().height
    with pytest.raises(BundleIntegrityError, match=member):
        tablet.store.import_bundle(bad, trusted=trusted)
    assert tablet.store.list_runs().height == runs
    # a byte flipped in the file itself, inside the member's compressed data
    raw = bytearray(tablet.path.read_bytes())
    with zipfile.ZipFile(tablet.path) as zf:
        info = zf.getinfo(member)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + info.compress_size // 2] ^= 0x01
    (tmp_path / "raw.n4a").write_bytes(bytes(raw))
    with pytest.raises(BundleIntegrityError, match=f"member {member} of bundle .* damaged"):
        load_bundle(tmp_path / "raw.n4a", trusted=trusted)


@pytest.mark.parametrize("trusted", [False, True])
def test_a_changed_manifest_is_refused(tablet, tmp_path, monkeypatch, trusted):
    monkeypatch.setenv(KEY_ENV, tablet.key_hex)
    manifest = manifest_of(tablet.path)
    manifest["chain"]["fold_weights"] = {"fold_0": 100.0}  # a quiet change of what is predicted
    bad = rebuild(tablet.path, tmp_path / "changed.n4a", manifest=manifest)  # keeps the old signature
    with pytest.raises(BundleIntegrityError, match="manifest.json of bundle .* was changed after it was signed"):
        load_bundle(bad, trusted=trusted)


@pytest.mark.parametrize("trusted", [False, True])
@pytest.mark.parametrize("name, problem", [
    ("../evil.joblib", "zip-slip"), ("artifacts/../../evil", "zip-slip"), ("/tmp/evil.joblib", "absolute path"),
    ("C:/evil.joblib", "absolute path"), ("artifacts\\evil.joblib", "backslash"), ("./manifest.json", "plain relative"),
])
def test_unsafe_member_names_are_refused(tablet, elsewhere, name, problem, trusted, monkeypatch):
    monkeypatch.setenv(KEY_ENV, tablet.key_hex)
    bad = rebuild(tablet.path, elsewhere.parent / "slip.n4a", extra=[(name, b"x")])
    before = listing(elsewhere.parent.parent)
    with pytest.raises(BundleError, match=f"member {re.escape(repr(name))} .*{problem}"):
        load_bundle(bad, trusted=trusted)
    assert listing(elsewhere.parent.parent) == before and not pathlib.Path("/tmp/evil.joblib").exists()


@pytest.mark.parametrize("trusted", [False, True])
def test_symlink_duplicate_and_unlisted_members_are_refused(tablet, tmp_path, monkeypatch, trusted):
    monkeypatch.setenv(KEY_ENV, tablet.key_hex)
    member = an_artifact_member(tablet.path)
    link = zipfile.ZipInfo(member)
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    old = members(tablet.path)
    as_link = write_zip(tmp_path / "link.n4a", [(n, d) if n != member else (link, b"/etc/passwd") for n, d in old.items()])
    with pytest.raises(BundleError, match=f"member '{member}' is a symbolic link entry"):
        load_bundle(as_link, trusted=trusted)
    twice = rebuild(tablet.path, tmp_path / "twice.n4a", extra=[(member, old[member])])
    with pytest.raises(BundleError, match=f"holds member '{member}' twice"):
        load_bundle(twice, trusted=trusted)
    manifest_twice = rebuild(tablet.path, tmp_path / "twice2.n4a", extra=[("manifest.json", b"{}")])
    with pytest.raises(BundleError, match="holds member 'manifest.json' twice"):
        load_bundle(manifest_twice, trusted=trusted)
    unlisted = rebuild(tablet.path, tmp_path / "unlisted.n4a", extra=[("artifacts/notes.txt", b"hi")])
    with pytest.raises(BundleError, match=r"members its manifest does not list: \['artifacts/notes.txt'\]"):
        load_bundle(unlisted, trusted=trusted)


def test_unsigned_foreign_signed_or_keyless_bundles_need_trusted(tablet, tmp_path, monkeypatch):
    unsigned = rebuild(tablet.path, tmp_path / "unsigned.n4a", sig=False)
    foreign = rebuild(tablet.path, tmp_path / "foreign.n4a", manifest=manifest_of(tablet.path),
                      key=secrets.token_bytes(32))
    # no key at hand at all
    with pytest.raises(BundleTrustError, match=f"no bundle key is at hand to check it: set {KEY_ENV}.*trusted=True"):
        load_bundle(tablet.path)
    monkeypatch.setenv(KEY_ENV, tablet.key_hex)
    with pytest.raises(BundleTrustError, match="is not signed.*pass trusted=True if you trust where"):
        load_bundle(unsigned)
    with pytest.raises(BundleTrustError, match="signed with another key .*trusted=True"):
        load_bundle(foreign)
    with pytest.raises(BundleTrustError, match="signed with another key"):
        tablet.store.import_bundle(foreign)
    with pytest.raises(BundleTrustError, match="signed with another key"):
        load_bundle(tablet.path, key=secrets.token_bytes(32))  # an explicit key replaces the environment's
    for bundle in (unsigned, foreign):
        loaded = load_bundle(bundle, trusted=True)
        assert "trusted=True" in loaded.signature
        np.testing.assert_allclose(loaded.predict(tablet.test.X), tablet.expected, rtol=0, atol=1e-12)


def test_a_pickle_that_runs_code_is_never_loaded(tablet, tmp_path, monkeypatch):
    marker, control = tmp_path / "pwned", tmp_path / "control"
    payload = io.BytesIO()
    joblib.dump(TouchOnLoad(marker), payload)
    payload = payload.getvalue()
    armed = io.BytesIO()
    joblib.dump(TouchOnLoad(control), armed)
    joblib.load(io.BytesIO(armed.getvalue()))
    assert control.exists()  # the payload is live: loading it would create the marker

    # A hand-built bundle whose chain points at the payload, hashes consistent.
    manifest = manifest_of(tablet.path)
    victim = sorted(manifest["artifacts"])[0]
    evil_id = hashlib.sha256(payload).hexdigest()
    entry = dict(manifest["artifacts"].pop(victim), sha256=evil_id, member=f"artifacts/{evil_id}.joblib")
    manifest["artifacts"][evil_id] = entry
    chain_text = json.dumps(manifest["chain"]).replace(victim, evil_id)
    manifest["chain"] = json.loads(chain_text)
    old = members(tablet.path)
    artifacts = [(n, d) for n, d in old.items() if n.startswith("artifacts/") and victim not in n]
    artifacts.append((entry["member"], payload))
    manifest_bytes = bundles.canonical_json(manifest)
    unsigned = write_zip(tmp_path / "evil-unsigned.n4a", [("manifest.json", manifest_bytes)] + artifacts)
    foreign = write_zip(tmp_path / "evil-foreign.n4a", [
        ("manifest.json", manifest_bytes),
        ("manifest.sig", bundles.signature_member(manifest_bytes, secrets.token_bytes(32)))] + artifacts)
    # the original, signed manifest with the payload swapped in under a genuine member name
    swapped = rebuild(tablet.path, tmp_path / "evil-swapped.n4a", replace={f"artifacts/{victim}.joblib": payload})
    # the rewritten manifest under the original signature
    resigned_old = write_zip(tmp_path / "evil-oldsig.n4a", [
        ("manifest.json", manifest_bytes), ("manifest.sig", old["manifest.sig"])] + artifacts)

    monkeypatch.setenv(KEY_ENV, tablet.key_hex)
    runs = tablet.store.list_runs().height
    for bundle, error, trusted in ((unsigned, BundleTrustError, False), (foreign, BundleTrustError, False),
                                   (swapped, BundleIntegrityError, True),
                                   (resigned_old, BundleIntegrityError, True)):
        with pytest.raises(error):
            load_bundle(bundle, trusted=trusted)
        with pytest.raises(error):
            tablet.store.import_bundle(bundle, trusted=trusted)
        assert not marker.exists(), bundle
    assert tablet.store.list_runs().height == runs


def test_another_scikit_learn_minor_version_warns_or_is_refused_in_strict_mode(tablet, tmp_path, monkeypatch):
    here = metadata.version("scikit-learn")
    monkeypatch.setenv(KEY_ENV, tablet.key_hex)
    manifest = manifest_of(tablet.path)
    manifest["versions"]["scikit-learn"] = "0.24.2"
    older = rebuild(tablet.path, tmp_path / "older.n4a", manifest=manifest, key=tablet.key)
    with pytest.warns(BundleVersionWarning, match=rf"fitted with scikit-learn 0\.24\.2, this environment has "
                                                  rf"scikit-learn {here.replace('.', '[.]')}"):
        bundle = load_bundle(older)
    np.testing.assert_allclose(bundle.predict(tablet.test.X), tablet.expected, rtol=0, atol=1e-12)
    with pytest.raises(BundleVersionError, match="0.24.2.*refused in strict mode"):
        load_bundle(older, strict=True)
    with pytest.raises(BundleVersionError):
        tablet.store.import_bundle(older, strict=True)
    # another patch release of the same major.minor is fine, even in strict mode
    major, minor = here.split(".")[:2]
    manifest["versions"]["scikit-learn"] = f"{major}.{minor}.99"
    patch = rebuild(tablet.path, tmp_path / "patch.n4a", manifest=manifest, key=tablet.key)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_bundle(patch, strict=True)


def test_a_bundle_carries_the_versions_that_fitted_its_chain_not_those_that_exported_it(tablet, tmp_path,
                                                                                         monkeypatch):
    """A chain fitted years ago under another scikit-learn and exported today: the bundle
    says which one fitted it, so whoever loads or imports it is told."""
    monkeypatch.setenv(KEY_ENV, tablet.key_hex)
    here = metadata.version("scikit-learn")
    store = tablet.store
    trace = fit_pipeline(tablet.train, expand(SNV_PLS8)[0], test=tablet.test)
    chain = ChainBuilder(trace, store).build()
    old_versions = {**store.get_chain(tablet.chain_id)["metadata"]["fitted_versions"], "scikit-learn": "0.24.2"}
    chain["metadata"] = {**chain["metadata"], "fitted_versions": old_versions}
    run_id = store.begin_run("fitted long ago")
    old_chain = store.save_chain(store.begin_pipeline(run_id, "old", dataset_name="tablet"), **chain)
    path = store.export_chain(old_chain, tmp_path / "old.n4a")
    manifest = manifest_of(path)
    assert manifest["versions"] == old_versions and manifest["exported_with"]["scikit-learn"] == here
    with pytest.warns(BundleVersionWarning, match="fitted with scikit-learn 0.24.2"):
        load_bundle(path)
    with pytest.raises(BundleVersionError, match="refused in strict mode"):
        load_bundle(path, strict=True)
    with WorkspaceStore(tmp_path / "ws3", lock_timeout=30) as other:
        with pytest.warns(BundleVersionWarning):
            imported = other.import_bundle(path)
        # the import keeps what fitted it, so its replays here warn too
        assert other.get_chain(imported)["metadata"]["fitted_versions"] == old_versions
        with pytest.warns(ChainVersionWarning, match=f"chain {imported} was fitted with scikit-learn 0.24.2"):
            other.replay_chain(imported, tablet.test.X)


def test_a_chain_saved_before_versions_were_recorded_exports_this_environments(tablet, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, tablet.key_hex)
    store = tablet.store
    chain = ChainBuilder(fit_pipeline(tablet.train, expand(SNV_PLS8)[0], test=tablet.test), store).build()
    chain["metadata"] = {**chain["metadata"], "fitted_versions": None}  # unknown, as in chains of older stores
    run_id = store.begin_run("unknown versions")
    unknown = store.save_chain(store.begin_pipeline(run_id, "unknown", dataset_name="tablet"), **chain)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to compare: no warning
        store.replay_chain(unknown, tablet.test.X)
    manifest = manifest_of(store.export_chain(unknown, tmp_path / "unknown.n4a"))
    assert manifest["chain"]["metadata"]["fitted_versions"] is None
    assert manifest["versions"] == manifest["exported_with"]  # the best guess left
    with WorkspaceStore(tmp_path / "ws4", lock_timeout=30) as other:
        imported = other.import_bundle(tmp_path / "unknown.n4a")
        assert other.get_chain(imported)["metadata"]["fitted_versions"] == manifest["versions"]


def test_what_is_not_a_bundle_is_refused_by_name(tablet, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, tablet.key_hex)
    with pytest.raises(BundleError, match="not a readable ZIP"):
        load_bundle(write_bytes_file(tmp_path / "text.n4a", b"hello"))
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "missing.n4a")
    with pytest.raises(BundleError, match="has no manifest.json"):
        load_bundle(write_zip(tmp_path / "empty.n4a", [("manifest.sig", b"{}")]))
    manifest = manifest_of(tablet.path)
    manifest["format_version"] = 2
    newer = rebuild(tablet.path, tmp_path / "newer.n4a", manifest=manifest, key=tablet.key)
    with pytest.raises(BundleError, match="format version 2, written by a newer nirsflow"):
        load_bundle(newer)


def write_bytes_file(path, data) -> pathlib.Path:
    path.write_bytes(data)
    return path


def test_coffee_classifier_bundle_predicts_labels_and_probabilities_as_replay(tmp_path, monkeypatch):
    train = load_coffee()
    config = ["SNV", {"split": {"class": "StratifiedKFold", "params": {"n_splits": 3, "shuffle": True, "random_state": 0}}},
              {"model": {"class": "LogisticRegression", "params": {"max_iter": 2000}}}]
    with WorkspaceStore(tmp_path / "coffee", lock_timeout=30) as store:
        chain_id = record_trace(store, store.begin_run("coffee"), fit_pipeline(train, expand(config)[0]))["chain_id"]
        labels, proba = store.replay_chain(chain_id, train.X, return_proba=True)
        path = shutil.copy(store.export_chain(chain_id), tmp_path / "coffee.n4a")
        key_hex = (store.path / ".nirsflow" / "bundle.key").read_text()
        classes = store.get_chain(chain_id)["classes"]
    monkeypatch.setenv(KEY_ENV, key_hex)
    bundle = load_bundle(path)
    assert bundle.task_type == "classification" and bundle.classes == classes
    got = bundle.predict(train.X)
    assert all(isinstance(v, str) for v in got)
    np.testing.assert_array_equal(got, labels)
    np.testing.assert_allclose(bundle.predict_proba(train.X), proba, rtol=0, atol=1e-12)
    assert os.path.getsize(path) > 0
