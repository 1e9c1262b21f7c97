"""Threads of one process (Prefect's thread pool) share a store safely: DuckDB 2 refuses
concurrent calls on one connection, so the store serialises them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from storage import WorkspaceStore


def test_threads_share_one_store_and_a_second_store_object(tmp_path):
    first = WorkspaceStore(tmp_path / "ws", lock_timeout=60)
    second = WorkspaceStore(tmp_path / "ws", lock_timeout=60)

    def work(k: int) -> list[str]:
        store = first if k % 2 else second
        run_id = store.begin_run(f"run-{k}")
        pipeline_id = store.begin_pipeline(run_id, f"p-{k}", dataset_name="tablet")
        ids = []
        for i in range(8):
            ids.append(store.save_prediction(pipeline_id, val_score=float(i), y_true=np.arange(5.0) + k,
                                             y_pred=np.arange(5.0)))
            store.top_predictions(3)
        with store.batch():
            ids += [store.save_prediction(pipeline_id, val_score=1.0) for _ in range(8)]
        store.complete_run(run_id)
        return ids

    with ThreadPoolExecutor(8) as pool:
        written = [i for ids in pool.map(work, range(8)) for i in ids]
    assert len(written) == 8 * 16
    stored = set(first.query_predictions()["prediction_id"])
    assert stored == set(written)
    assert set(second.list_runs()["status"]) == {"completed"}
    first.close(), second.close()
