"""The README's main job: the whole product, end to end, on the real Tablet NIR set.

1. saves a small grid as a library template (SNV | MSC | SG1, scaler, PLS 6..10);
2. trains it through the Prefect ``train`` flow (a run, a task per pipeline, fold fits
   on a thread pool, the store written by the state hooks);
3. promotes the best chain (by cross-validated RMSE) to the dataset's ``production`` alias;
4. drops the held-out test tablets into a sample inbox as two files, and scores them
   with the ``score_inbox`` flow;
5. prints the leaderboard and where everything is.

Without ``PREFECT_API_URL`` Prefect runs on its ephemeral API (a temporary local server).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import polars as pl

from nirs.datasets import load_tablet
from storage import PipelineLibrary, WorkspaceStore

DATASET = "tablet1"
DEMO_TEMPLATE = "tablet-baseline"
DEMO_CONFIG = [
    {"_or_": ["SNV", "MSC", {"class": "SavitzkyGolay", "params": {"window_length": 11, "polyorder": 2, "deriv": 1}}]},
    "StandardScaler",
    {"split": {"class": "KFold", "params": {"n_splits": 5, "shuffle": True, "random_state": 0}}},
    {"model": {"class": "PLSRegression", "params": {"n_components": {"_range_": [6, 10, 2]}}}},
]


def write_sample_inbox(inbox: Path) -> list[Path]:
    """The 212 held-out tablets of instrument 1, as two CSV files of the dataset's folder
    (written under a temporary name and renamed, as an instrument should)."""
    _, test = load_tablet(instrument=1)
    folder = inbox / DATASET
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for k, rows in enumerate((slice(0, 106), slice(106, None)), start=1):
        frame = pl.DataFrame({"sample_id": test.sample_ids[rows]}).with_columns(
            [pl.Series(f"{w:g}", test.X[rows, j]) for j, w in enumerate(test.wavelengths)])
        final = folder / f"tablets-{k:03d}.csv"
        temp = folder / f".{final.name}.part"
        frame.write_csv(temp)
        temp.rename(final)
        written.append(final)
    return written


def next_commands(workspace: Path, chain_id: str, flow_run_id=None) -> list[str]:
    """What to type next, each line pasteable as it is (the UI link when a server that
    outlives the command ran the flows)."""
    import shlex

    from flows.server import run_link

    w = "" if workspace == Path("workspace").absolute() else f" -w {shlex.quote(str(workspace))}"
    lines = ["", "Next (paste any line):",
             f"  nirsflow top{w}",
             f"  nirsflow show {chain_id[:8]}{w}",
             f"  nirsflow plot {DATASET}:production{w}",
             f"  nirsflow score{w}    # scores the files you drop into {shlex.quote(str(workspace / 'inbox'))}/<dataset>/"]
    link = run_link(flow_run_id)
    lines.append(f"The training run in the Prefect UI: {link}" if link else
                 "To watch runs in the Prefect UI, start `nirsflow server` and export PREFECT_API_URL (README: Prefect).")
    return lines


def run_demo(workspace: Path, echo=print) -> dict:
    from flows.score_inbox import score_inbox
    from flows.train import train

    started = time.perf_counter()
    workspace = Path(workspace).absolute()
    inbox = workspace / "inbox"
    PipelineLibrary(workspace).save_template(DEMO_CONFIG, DEMO_TEMPLATE, category="regression",
                                             description="SNV | MSC | SG1 + scaler + PLS(6..10), 5-fold CV",
                                             tags=["demo", "tablet"], overwrite=True)
    echo(f"Training template '{DEMO_TEMPLATE}' (9 pipelines, 5-fold CV) on Tablet instrument 1 "
         "through the Prefect train flow ...")
    summary = train(workspace=str(workspace), datasets=[DATASET], template=DEMO_TEMPLATE, name="demo")
    run_id = summary["run_id"]

    with WorkspaceStore(workspace) as store:
        board = store.top_predictions(20, fold_id="avg", dataset_name=DATASET, run_id=run_id)
        best_chain = board["chain_id"][0]
        previous = store.list_aliases().filter((pl.col("dataset_name") == DATASET) & (pl.col("alias") == "production"))
        previous = previous["chain_id"][0] if previous.height else None
        store.set_alias(DATASET, "production", best_chain, changed_by="nirsflow demo",
                        reason=f"best CV RMSE {board['val_score'][0]:.3f} in run {run_id}")
        from tasks.leaderboard import render, rows_from_store

        leaderboard = render(rows_from_store(store, board),
                             title="Leaderboard: RMSECV (5-fold cross-validation), RMSEP (the 212 held-out "
                                   "tablets), mg")

    files = write_sample_inbox(inbox)
    echo(f"Scoring {len(files)} files dropped into {inbox / DATASET} with the production chain ...")
    scored = score_inbox(workspace=str(workspace), inbox=str(inbox), settle_seconds=0.2)

    # What this run scored, not what the workspace holds: a second demo trains and
    # promotes a new chain, so it scores the same files again, by that chain.
    results = [pl.read_parquet(s["result"]) for s in scored["scored"]]
    n_tablets = sum(r.height for r in results)
    rmse = None
    if results:
        _, test = load_tablet(instrument=1)
        truth = dict(zip(test.sample_ids.tolist(), np.asarray(test.y, dtype=float)))
        frame = pl.concat(results)
        errors = frame["prediction"].to_numpy() - np.array([truth[s] for s in frame["sample_id"]])
        rmse = float(np.sqrt(np.mean(errors ** 2)))

    echo("")
    echo(leaderboard)
    echo(f"\nProduction chain for '{DATASET}': {best_chain}" + (f" (was {previous[:8]}, from an earlier run)"
                                                               if previous and previous != best_chain else ""))
    if results:
        echo(f"Inbox: {len(results)} files scored, {n_tablets} tablets, RMSE {rmse:.3f} against their "
             f"reference values; results in {workspace / 'outbox' / DATASET}")
        if "flag" in frame.columns:  # the production chain carries outlier checks (README: outlier checks)
            flagged = int((frame["flag"] != "ok").sum())
            echo(f"Outlier checks: {flagged} of {n_tablets} tablets flagged ({100 * flagged / n_tablets:.0f} %, "
                 f"T² or Q past their 95 % limits); `nirsflow drift {DATASET}` shows the share per day")
    c = scored["counts"]
    if c["duplicates"] or c["rejected"] or c["waiting"]:
        echo(f"Inbox: {c['duplicates']} files already scored by this chain (duplicates), {c['rejected']} "
             f"rejected, {c['waiting']} waiting")
    echo(f"\nWorkspace {workspace}  (trained and scored in {time.perf_counter() - started:.0f} s)")
    echo("  store.duckdb            runs, pipelines, chains, predictions, logs")
    echo("  artifacts/              fitted objects, content-addressed")
    echo("  library/templates/      the demo's template")
    echo("  exports/                the run report (YAML) and the best chain's .n4a bundle")
    echo("  outbox/ processed/      the scored files and their inputs")
    echo("  logs/nirsflow.log       Prefect's log lines (also in the UI; `nirsflow demo -v` prints them)")
    for line in next_commands(workspace, best_chain, summary.get("flow_run_id")):
        echo(line)
    return {"run_id": run_id, "chain_id": best_chain, "inbox_rmse": rmse, "scored": scored}
