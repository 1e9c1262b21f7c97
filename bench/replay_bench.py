"""Replay and training-store benchmarks (issue 3). Run by hand: python bench/replay_bench.py

1. Replay of a 5-fold SNV + StandardScaler + PLS(10) chain on 1,000 x 1,000 spectra, warm,
   against the same transforms and predicts run in memory (target: <= 1.2x).
2. A 50-pipeline generator grid on Tablet: the share of wall time spent in the store
   (artifact writes included) (target: <= 10 %).

The spectra are real: Tablet (instrument 1) interpolated onto a 1,000-point grid over its
own 600-1792 nm range, and the 212 test spectra tiled (with a little noise) to 1,000 rows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from nirs.config import expand
from nirs.dataset import SpectraDataset
from nirs.datasets import load_tablet
from nirs.training import fit_pipeline
from storage import WorkspaceStore
from storage.chain_builder import record_trace
from timing import median_seconds


def replay_case(workspace: Path, repeat: int) -> list[tuple[str, str, str]]:
    train, test = load_tablet(instrument=1)
    grid = np.linspace(train.wavelengths[0], train.wavelengths[-1], 1000)
    resample = lambda X: np.vstack([np.interp(grid, train.wavelengths, row) for row in X])  # noqa: E731
    train1k = SpectraDataset(X=resample(train.X), wavelengths=grid, sample_ids=train.sample_ids, y=train.y,
                             name="tablet1k")
    rng = np.random.default_rng(0)
    X_new = np.tile(resample(test.X), (5, 1))[:1000]
    X_new = X_new + rng.normal(0, 1e-4, X_new.shape)
    config = ["SNV", "StandardScaler",
              {"split": {"class": "KFold", "params": {"n_splits": 5, "shuffle": True, "random_state": 0}}},
              {"model": {"class": "PLSRegression", "params": {"n_components": 10}}}]
    trace = fit_pipeline(train1k, expand(config)[0])
    with WorkspaceStore(workspace) as store:
        chain_id = record_trace(store, store.begin_run("bench"), trace)["chain_id"]
        store.replay_chain(chain_id, X_new)  # warm the caches
        steps = {s.kind + str(s.step_idx): s for s in trace.steps}
        fitted = [(steps["transformer0"].fitted[f], steps["transformer1"].fitted[f], steps["model2"].fitted[f])
                  for f in trace.fold_ids]

        def in_memory():
            outs = [model.predict(scaler.transform(snv.transform(X_new))).ravel() for snv, scaler, model in fitted]
            return np.mean(outs, axis=0)

        def replay():
            return store.replay_chain(chain_id, X_new)

        np.testing.assert_allclose(replay(), in_memory(), atol=1e-9)
        base = median_seconds(in_memory, repeat)
        warm = median_seconds(replay, repeat)
        store.release()
        cold_store = WorkspaceStore(workspace)
        cold = median_seconds(lambda: cold_store.replay_chain(chain_id, X_new), 1)
        cold_store.close()
    return [
        ("replay 5-fold SNV+scaler+PLS(10), 1000x1000, in memory", f"{base * 1e3:.1f} ms", ""),
        ("  same through store.replay_chain, warm", f"{warm * 1e3:.1f} ms", f"{warm / base:.2f}x (target <= 1.2x)"),
        ("  cold (new store object: open, load, verify artifacts)", f"{cold * 1e3:.1f} ms", ""),
    ]


def grid_cases(workspace: Path, n_pipelines: int, repeat: int) -> list[tuple[str, str, str]]:
    """The grid ``repeat`` times (a run is ~7 s and the machine's noise moves the share by
    about a point): the run with the median share, and the range."""
    runs = sorted((grid_case(workspace / f"grid{k}", n_pipelines) for k in range(repeat)), key=lambda r: r[0])
    _, rows = runs[len(runs) // 2]
    label, value, note = rows[-1]
    note += f"; {repeat} runs: {runs[0][0]:.1%}-{runs[-1][0]:.1%}"
    return rows[:-1] + [(label, value, note)]


def grid_case(workspace: Path, n_pipelines: int) -> tuple[float, list[tuple[str, str, str]]]:
    """(the store's share of the grid's time, the table rows)"""
    train, test = load_tablet(instrument=1)
    config = [{"_or_": ["SNV", "MSC", "Detrend", {"class": "SavitzkyGolay", "params": {"deriv": 1}},
                        {"class": "SavitzkyGolay", "params": {"deriv": 2, "window_length": 15}}]},
              "StandardScaler",
              {"model": {"class": "PLSRegression", "params": {"n_components": {"_range_": [1, 10]}}}}]
    pipelines = expand(config)[:n_pipelines]
    fit_time = store_time = 0.0
    with WorkspaceStore(workspace) as store:
        # the workspace exists before the grid (its creation, ~40 ms, is not the grid's);
        # everything the grid asks of the store counts, from begin_run to the final settle
        store.release()
        started = time.perf_counter()
        run_id = store.begin_run("grid")
        store_time += time.perf_counter() - started
        for pipeline in pipelines:
            t = time.perf_counter()
            trace = fit_pipeline(train, pipeline, test=test)
            fit_time += time.perf_counter() - t
            t = time.perf_counter()
            record_trace(store, run_id, trace)
            store_time += time.perf_counter() - t
        # what the grid left in the journal is settled into the tables, and checkpointed:
        # store time too
        t = time.perf_counter()
        store.release()
        store_time += time.perf_counter() - t
        total = time.perf_counter() - started
        n_artifacts = store.list_artifacts().height
        n_predictions = store.query_predictions().height
    return store_time / total, [
        (f"{len(pipelines)}-pipeline grid on Tablet (5-fold, with test)", f"{total:.1f} s", ""),
        ("  fitting (training core)", f"{fit_time:.1f} s", ""),
        (f"  store ({n_artifacts} artifacts, {n_predictions} predictions)", f"{store_time:.2f} s",
         f"{store_time / total:.1%} of total (target <= 10 %)"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--pipelines", type=int, default=50)
    parser.add_argument("--grid-repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = replay_case(Path(tmp) / "replay", args.repeat) + grid_cases(Path(tmp), args.pipelines,
                                                                             args.grid_repeat)
    width = max(len(r[0]) for r in rows)
    print(f"| {'case':<{width}} | time | note |\n|{'-' * (width + 2)}|------|------|")
    for case, value, note in rows:
        print(f"| {case:<{width}} | {value} | {note} |")


if __name__ == "__main__":
    main()
