import os

# Offline, quiet Prefect for every test process (set before Prefect is imported).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

import subprocess
import sys
from pathlib import Path

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

