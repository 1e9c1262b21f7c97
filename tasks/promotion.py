"""Comparing two stored chains on the same held-out spectra, and moving an alias."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from nirs.metrics import METRIC_DIRECTION, score_all
from storage import ChainVersionWarning, WorkspaceStore, version_mismatch


@task(name="score-chain", task_run_name="score {role} chain on {dataset_label}", cache_policy=NO_CACHE,
      persist_result=False)
def score_chain(workspace: str, chain_id: str, held_out, role: str, dataset_label: str,
                lock_timeout: float = 60.0) -> dict:
    """Replay ``chain_id`` on the held-out set and score it (every metric of its task)."""
    with WorkspaceStore(Path(workspace), lock_timeout=lock_timeout) as store, warnings.catch_warnings():
        warnings.simplefilter("ignore", ChainVersionWarning)  # said in the task's log instead, below
        chain = store.get_chain(chain_id)
        if chain.get("task_type") == "classification":
            y_pred, y_proba = store.replay_chain(chain_id, held_out.X, held_out.wavelengths, return_proba=True)
        else:
            y_pred, y_proba = store.replay_chain(chain_id, held_out.X, held_out.wavelengths), None
    mismatch = version_mismatch(chain)  # a production chain fitted under another scikit-learn: in the UI
    if mismatch is not None:
        get_run_logger().warning("%s", mismatch)
    task_type = chain.get("task_type") or "regression"
    scores = score_all(task_type, np.asarray(held_out.y), y_pred, y_proba, chain.get("classes"))
    return {"chain_id": chain_id, "task_type": task_type, "scores": scores, "n_samples": int(held_out.n_samples)}


def is_better(metric: str, new: float | None, old: float | None) -> bool:
    """Strictly better in the metric's direction; a missing new score never wins, a
    missing old score always loses."""
    if new is None:
        return False
    if old is None:
        return True
    direction = METRIC_DIRECTION.get(metric, "min")
    if direction == "max":
        return new > old
    if direction == "min_abs":
        return abs(new) < abs(old)
    return new < old
