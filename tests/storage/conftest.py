"""Fixtures on real parts: a DuckDB workspace in a temporary folder, real fitted
scikit-learn objects on the real Tablet NIR spectra."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cross_decomposition import PLSRegression
from sklearn.preprocessing import StandardScaler

from storage import WorkspaceStore
from tests.storage.worker_pool import Worker


@pytest.fixture
def store(tmp_path):
    with WorkspaceStore(tmp_path / "ws", lock_timeout=30) as s:
        yield s


@pytest.fixture(scope="session")
def tablet():
    """(Xcal, ycal, Xtest, ytest, wavelengths) of instrument 1 of the Tablet shoot-out."""
    from nirs.datasets import load_tablet

    train, test = load_tablet(instrument=1)
    return train.X, np.asarray(train.y, dtype=float), test.X, np.asarray(test.y, dtype=float), train.wavelengths


@pytest.fixture(scope="session")
def fitted_folds(tablet):
    """Three folds of StandardScaler + PLS(5), fitted on real spectra."""
    X, y, *_ = tablet
    folds = []
    for k in range(3):
        part = np.arange(len(X)) % 3 != k
        scaler = StandardScaler().fit(X[part])
        model = PLSRegression(5).fit(scaler.transform(X[part]), y[part])
        folds.append((scaler, model))
    return folds


def make_run(store, dataset="tablet"):
    run_id = store.begin_run("experiment", config={"cv": 3}, datasets=[{"name": dataset, "path": "x"}])
    pipeline_id = store.begin_pipeline(run_id, "0001_pls", [{"class": "PLSRegression"}], [], dataset, "hash")
    return run_id, pipeline_id


def save_scaler_pls_chain(store, pipeline_id, folds, n_features):
    fold_artifacts = {}
    for k, (scaler, model) in enumerate(folds):
        fold_artifacts[f"fold_{k}"] = {
            "0": store.save_artifact(scaler, "sklearn.preprocessing.StandardScaler", "transformer"),
            "1": store.save_artifact(model, "sklearn.cross_decomposition.PLSRegression", "model"),
        }
    steps = [{"step_idx": 0, "kind": "transformer", "operator_class": "sklearn.preprocessing.StandardScaler"},
             {"step_idx": 1, "kind": "model", "operator_class": "sklearn.cross_decomposition.PLSRegression"}]
    return store.save_chain(pipeline_id, steps, 1, "sklearn.cross_decomposition.PLSRegression",
                            "StandardScaler", "per_fold", fold_artifacts, {}, n_features=n_features,
                            task_type="regression")


@pytest.fixture
def workers(tmp_path):
    started: list[Worker] = []
    log_dir = tmp_path / "logs"
    log_dir.mkdir()

    def start(role: str, **args) -> Worker:
        worker = Worker(role, args, log_dir)
        started.append(worker)
        return worker

    yield start
    for worker in started:  # never leave a process behind, whatever happened
        worker.kill()


