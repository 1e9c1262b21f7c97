"""`nirsflow import-workspace` on a copy of the nirs4all 0.7.1 fixture, as a user runs it,
then `top` and `replay` on what it brought; and a reader in another process meanwhile,
which sees the workspace before the import or after it, never half of it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import polars as pl

from storage import WorkspaceStore
from tests.conftest import ROOT, run_cli
from tests.storage.nirs4all_fixture import FACTS, copy_fixture, load


def test_import_workspace_then_top_and_replay(tmp_path):
    source = copy_fixture(tmp_path / "n4a")
    ws = str(tmp_path / "workspace")
    done = run_cli("import-workspace", str(source), "-w", ws, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["imported"]["chain"] == 3 and len(report["skipped"]) == 2
    assert {s["id"] for s in report["skipped"]} == {FACTS["chains"]["victim"], FACTS["chains"]["nirs4all_snv"]}

    again = run_cli("import-workspace", str(source), "-w", ws)
    assert again.returncode == 0 and "nothing new" in again.stdout and "skipped chain" in again.stdout

    top = json.loads(run_cli("top", "-w", ws, "--dataset", "tablet", "--fold", "all", "--json").stdout)
    chain = report["chains"][FACTS["chains"]["regression"]]
    assert {t["chain_id"] for t in top} == {chain}

    spectra = tmp_path / "new.csv"
    X = load("X_new")
    grid = load("wavelengths")
    pl.DataFrame({"sample_id": [f"s{i}" for i in range(len(X))],
                  **{f"{w:g}": X[:, j] for j, w in enumerate(grid)}}).write_csv(spectra)
    replayed = run_cli("replay", chain[:8], str(spectra), "-w", ws, "--json")
    assert replayed.returncode == 0, replayed.stderr
    got = np.array([r["prediction"] for r in json.loads(replayed.stdout)])
    np.testing.assert_allclose(got, load("original_regression"), rtol=0, atol=1e-9)

    refused = run_cli("import-workspace", str(tmp_path / "nowhere"), "-w", ws)
    assert refused.returncode == 1 and refused.stderr.startswith("error: ") and "not a folder" in refused.stderr


def test_replay_of_a_classifier_saved_without_its_task_gives_labels_and_probabilities(tmp_path):
    from tests.storage.test_spec_chains import _classifier_chain

    X, grid = load("X_new"), load("wavelengths")
    labels = np.array(["low", "high"] * (len(X) // 2))
    ws = tmp_path / "workspace"
    with WorkspaceStore(ws) as store:
        chain_id, scaler, models = _classifier_chain(store, X, labels)
        assert store.get_chain(chain_id)["task_type"] is None
    spectra = tmp_path / "same.csv"
    pl.DataFrame({"sample_id": [f"s{i}" for i in range(len(X))],
                  **{f"{w:g}": X[:, j] for j, w in enumerate(grid)}}).write_csv(spectra)
    done = run_cli("replay", chain_id[:8], str(spectra), "-w", str(ws), "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    proba = np.mean([m.predict_proba(scaler.transform(X)) for m in models], axis=0)
    np.testing.assert_allclose([[r["proba_high"], r["proba_low"]] for r in rows], proba, rtol=0, atol=1e-12)
    assert [r["prediction"] for r in rows] == models[0].classes_[proba.argmax(axis=1)].tolist()


def test_a_reader_in_another_process_sees_the_import_whole_or_not_at_all(tmp_path):
    source = copy_fixture(tmp_path / "n4a")
    ws = tmp_path / "workspace"
    WorkspaceStore(ws).close()
    importer = subprocess.Popen([sys.executable, "-m", "flows.cli", "import-workspace", str(source), "-w", str(ws),
                                 "--json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = set()
    with WorkspaceStore(ws, lock_timeout=60) as reader:
        while True:
            running = importer.poll() is None
            counts = reader.sql("SELECT (SELECT count(*) FROM runs) AS r, (SELECT count(*) FROM chains) AS c, "
                                "(SELECT count(*) FROM predictions) AS p, (SELECT count(*) FROM imported_ids) AS i")
            seen.add(tuple(counts.row(0)))
            if not running:
                break
    out, err = importer.communicate(timeout=60)
    assert importer.returncode == 0, err
    assert seen <= {(0, 0, 0, 0), (2, 3, 6, 19)}, seen
    assert (2, 3, 6, 19) in seen and json.loads(out)["imported"]["run"] == 2


def test_import_a_nirs4all_bundle_needs_trusted_and_an_old_one_is_refused_saying_why(tmp_path):
    bundles = ROOT / "tests" / "data" / "nirs4all_bundles"
    ws = str(tmp_path / "workspace")
    refused = run_cli("import", str(bundles / "nirs4all-1.4.10.n4a"), "-w", ws)
    assert refused.returncode == 1 and "does not sign its bundles" in refused.stderr
    first = json.loads(run_cli("import", str(bundles / "nirs4all-1.4.10.n4a"), "-w", ws, "--trusted", "--json").stdout)
    again = json.loads(run_cli("import", str(bundles / "nirs4all-1.4.10.n4a"), "-w", ws, "--trusted", "--json").stdout)
    assert first == again and len(first["chain_id"]) == 36
    old = run_cli("import", str(bundles / "nirs4all-0.7.1.n4a"), "-w", ws, "--trusted")
    assert old.returncode == 1 and old.stderr.startswith("error: ") and "nirs4all 0.7's export_chain" in old.stderr
