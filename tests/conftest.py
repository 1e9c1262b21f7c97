from flows.server import apply_offline_settings

# Offline Prefect for every test process, set before Prefect is imported.
apply_offline_settings()

import importlib
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`nirsflow ARGS` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The README's main job, run once: (workspace, completed process)."""
    workspace = tmp_path_factory.mktemp("demo") / "workspace"
    done = run_cli("demo", "--workspace", str(workspace))
    assert done.returncode == 0, done.stderr
    return workspace, done


def copy_fitted_by(store, chain_id: str, sklearn_version: str) -> str:
    """A copy of a stored chain (same pipeline, same artifacts) recorded as fitted by
    another scikit-learn: installing one in the test environment is not possible, so the
    version is stated through save_chain, as a bundle import states the original's."""
    chain = store.get_chain(chain_id)
    fields = {k: chain[k] for k in ("steps", "model_step_idx", "model_class", "preprocessings", "fold_strategy",
                                    "fold_artifacts", "shared_artifacts", "fold_weights", "task_type", "classes",
                                    "wavelengths", "n_features")}
    fitted = {**chain["metadata"]["fitted_versions"], "scikit-learn": sklearn_version}
    return store.save_chain(chain["pipeline_id"], **fields, metadata={**chain["metadata"], "fitted_versions": fitted})


@pytest.fixture
def vanishing_step(tmp_path, monkeypatch):
    """A transformer class from a real module of its own, and a way to remove that module,
    as an upgrade or a clean-up does years after a fit: pickles of it can no longer load."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "nf_vanishing_step.py").write_text(
        "import numpy as np\n"
        "from sklearn.base import BaseEstimator, TransformerMixin\n\n\n"
        "class Centre(BaseEstimator, TransformerMixin):\n"
        "    def fit(self, X, y=None):\n"
        "        self.mean_ = np.asarray(X).mean(axis=0)\n"
        "        return self\n\n"
        "    def transform(self, X):\n"
        "        return np.asarray(X) - self.mean_\n")
    monkeypatch.syspath_prepend(str(code))

    def remove():
        sys.path.remove(str(code))
        monkeypatch.delitem(sys.modules, "nf_vanishing_step")
        (code / "nf_vanishing_step.py").unlink()
        importlib.invalidate_caches()

    centre_class = importlib.import_module("nf_vanishing_step").Centre

    def save_chain(store, train) -> SimpleNamespace:
        """A refit chain of the step and a PLS(5), fitted on ``train``: its ids."""
        from sklearn.cross_decomposition import PLSRegression

        centre = centre_class().fit(train.X)
        model = PLSRegression(5).fit(centre.transform(train.X), train.y)
        centre_id = store.save_artifact(centre, "nf_vanishing_step.Centre", "transformer")
        model_id = store.save_artifact(model, "sklearn.cross_decomposition.PLSRegression", "model")
        chain_id = store.save_chain(
            store.begin_pipeline(store.begin_run("custom step"), "centre-pls"),
            [{"step_idx": 0, "kind": "transformer", "operator_class": "nf_vanishing_step.Centre"},
             {"step_idx": 1, "kind": "model", "operator_class": "sklearn.cross_decomposition.PLSRegression"}],
            1, "sklearn.cross_decomposition.PLSRegression", fold_strategy="refit",
            fold_artifacts={"refit": {"0": centre_id, "1": model_id}}, n_features=train.X.shape[1],
            wavelengths=train.wavelengths, task_type="regression")
        return SimpleNamespace(chain_id=chain_id, centre_id=centre_id, model_id=model_id, centre=centre)

    return SimpleNamespace(cls=centre_class, module="nf_vanishing_step", remove=remove, save_chain=save_chain)
