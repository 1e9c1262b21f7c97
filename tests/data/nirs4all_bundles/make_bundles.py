"""Write ``.n4a`` bundles with nirs4all itself: one by its current release (1.4.10, whose
bundle format its own loader reads) and one by 0.7.1 (whose exporter wrote bundles no
nirs4all loader reads). Run each with a venv holding that release::

    /work/venv-n4a-latest/bin/python tests/data/nirs4all_bundles/make_bundles.py PATH/TO/Data_Tablet.mat
    /work/venv-n4a/bin/python tests/data/nirs4all_bundles/make_bundles.py PATH/TO/Data_Tablet.mat

Each writes ``nirs4all-<version>.n4a`` beside this script (a StandardScaler fitted once, a
KFold splitter step, three PLS(5) fold models, saved through the spec's API) and
``nirs4all-<version>.expected.npy``: the folds' average on ``Xtest1[:24]``, computed in
memory, with the store's own ``replay_chain`` checked against it (kept for 1.4.10 only:
0.7.1's bundle is only ever refused).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy.io import loadmat
from sklearn.cross_decomposition import PLSRegression
from sklearn.model_selection import KFold
from sklearn.preprocessing import StandardScaler

import nirs4all
from nirs4all.pipeline.storage import WorkspaceStore

HERE = Path(__file__).resolve().parent


def main(mat_path: str) -> None:
    mat = loadmat(mat_path)
    X, y = mat["Xcal1"].astype(np.float64)[:90], mat["ycal"].ravel().astype(np.float64)[:90]
    X_new = mat["Xtest1"].astype(np.float64)[:24]
    scaler = StandardScaler().fit(X)
    models = [PLSRegression(5).fit(scaler.transform(X)[tr], y[tr]) for tr, _ in KFold(3).split(X)]
    expected = np.mean([m.predict(scaler.transform(X_new)).ravel() for m in models], axis=0)

    store = WorkspaceStore(Path(tempfile.mkdtemp()) / "workspace")
    run_id = store.begin_run("bundle", config={}, datasets=[{"name": "tablet", "path": "Data_Tablet.mat"}])
    pid = store.begin_pipeline(run_id, name="0001_scaler_pls", expanded_config=[], generator_choices=[],
                               dataset_name="tablet", dataset_hash="tablet-cal-90")
    sid = store.save_artifact(scaler, "sklearn.preprocessing.StandardScaler", "transformer", "joblib")
    mids = [store.save_artifact(m, "sklearn.cross_decomposition.PLSRegression", "model", "joblib") for m in models]
    steps = [{"step_idx": 0, "operator_class": "sklearn.preprocessing.StandardScaler", "params": {},
              "artifact_ids": [sid], "stateless": False},
             {"step_idx": 1, "operator_class": "sklearn.model_selection.KFold", "params": {"n_splits": 3},
              "artifact_ids": [], "stateless": True},
             {"step_idx": 2, "operator_class": "sklearn.cross_decomposition.PLSRegression",
              "params": {"n_components": 5}, "artifact_ids": mids, "stateless": False}]
    chain_id = store.save_chain(pid, steps, 2, "sklearn.cross_decomposition.PLSRegression", "StandardScaler",
                                "per_fold", {f"fold_{k}": m for k, m in enumerate(mids)}, {"0": [sid]})
    replayed = np.asarray(store.replay_chain(chain_id, X_new)).ravel()
    assert np.abs(replayed - expected).max() < 1e-9, "the store's own replay disagrees with the folds' average"
    name = f"nirs4all-{nirs4all.__version__}"
    store.export_chain(chain_id, HERE / f"{name}.n4a")
    store.close()
    np.save(HERE / f"{name}.expected.npy", expected)
    print(f"wrote {name}.n4a")


if __name__ == "__main__":
    main(sys.argv[1])
