"""A worker process for tests/storage/test_processes.py: one real OS process using one
workspace, started with ``python store_worker.py ROLE '<json args>'``.

Protocol on stdin/stdout (text lines): the worker imports what it needs, opens the store
and prints ``ready``; it starts its work when it reads ``go`` on stdin (so that several
workers start together, after their slow imports); it ends with one line
``RESULT <json>``. Acknowledgements that must survive a ``kill -9`` go to a side file,
appended and fsynced *after* the store call returned.

The content of every write is derived from a seed, so the test can rebuild what it
expects (``expected_arrays``, ``fitted``) and compare it with what the store returns.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import traceback
import uuid

import numpy as np

N_FEATURES = 5


# -- content derived from seeds (imported by the tests too) -----------------------
def expected_arrays(seed: int, n: int = 100) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.normal(size=n)
    return {"y_true": y_true, "y_pred": y_true + rng.normal(scale=0.1, size=n),
            "sample_indices": np.arange(seed % 7, seed % 7 + n, dtype=np.int32)}


def score_of(seed: int) -> float:
    return round(0.5 + (seed % 997) / 1000.0, 6)


def training_data(seed: int, n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES))
    return X, X @ np.arange(1.0, N_FEATURES + 1) + rng.normal(scale=0.1, size=n)


def fitted(seed: int):
    """A small real fitted scikit-learn pair (scaler, ridge); same seed, same bytes."""
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    X, y = training_data(seed)
    scaler = StandardScaler().fit(X)
    model = Ridge(alpha=0.5 + seed % 5).fit(scaler.transform(X), y)
    return scaler, model


def fitted_params(seed: int) -> tuple[dict, dict]:
    """A scaler's and a linear model's fitted parameters, computed with numpy alone: the
    kill -9 worker saves these, so that it starts without importing scikit-learn (the
    store sees bytes either way) and a trial costs about a second."""
    X, y = training_data(seed)
    mean, scale = X.mean(axis=0), X.std(axis=0)
    Z = (X - mean) / scale
    coef, *_ = np.linalg.lstsq(np.c_[Z, np.ones(len(Z))], y, rcond=None)
    return {"mean_": mean, "scale_": scale}, {"coef_": coef[:-1], "intercept_": float(coef[-1])}


def same_params(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def probe_input() -> np.ndarray:
    return np.random.default_rng(12345).normal(size=(6, N_FEATURES))


SCALER = "sklearn.preprocessing.StandardScaler"
RIDGE = "sklearn.linear_model.Ridge"
STEPS = [{"step_idx": 0, "kind": "transformer", "operator_class": SCALER},
         {"step_idx": 1, "kind": "model", "operator_class": RIDGE}]


def save_fitted_chain(store, pipeline_id: str, seed: int, *, numpy_only: bool = False
                      ) -> tuple[str, list[str]]:
    scaler, model = fitted_params(seed) if numpy_only else fitted(seed)
    a_scaler = store.save_artifact(scaler, SCALER, "transformer")
    a_model = store.save_artifact(model, RIDGE, "model")
    chain_id = store.save_chain(pipeline_id, STEPS, 1, RIDGE, "StandardScaler", "per_fold",
                                {"fold_0": {"0": a_scaler, "1": a_model}}, {},
                                n_features=N_FEATURES, task_type="regression")
    return chain_id, [a_scaler, a_model]


def save_seeded_prediction(store, pipeline_id: str, seed: int, chain_id: str | None = None,
                           prediction_id: str | None = None, n: int = 100) -> str:
    return store.save_prediction(pipeline_id, chain_id, fold_id=f"fold_{seed % 3}", partition="val",
                                 val_score=score_of(seed), metric="rmse", prediction_id=prediction_id,
                                 **expected_arrays(seed, n))


class Acks:
    """Append-only, fsynced acknowledgement lines: what the store confirmed."""

    def __init__(self, path: str) -> None:
        self.fh = open(path, "a", buffering=1)

    def write(self, *fields, sync: bool = True) -> None:
        self.fh.write(" ".join(str(f) for f in fields) + "\n")
        self.fh.flush()
        if sync:
            os.fsync(self.fh.fileno())


# -- roles ------------------------------------------------------------------------
def _handshake() -> None:
    print("ready", flush=True)
    line = sys.stdin.readline().strip()
    if line != "go":
        raise SystemExit(f"expected 'go' on stdin, got {line!r}")


def _result(payload: dict) -> None:
    print("RESULT " + json.dumps(payload), flush=True)


def role_writer(store, args: dict) -> dict:
    """Runs, pipelines, fitted artifacts, a chain and predictions, one call at a time,
    with queries in between that must see this process's own writes."""
    wid, out = args["wid"], {"runs": [], "pipelines": [], "chains": [], "predictions": [], "checks": 0}
    dataset = f"ds{wid}"
    for i in range(args["iterations"]):
        seed = wid * 100_000 + i * 100
        run_id = store.begin_run(f"writer-{wid}-{i}", config={"i": i}, datasets=[{"name": dataset}])
        out["runs"].append(run_id)
        pipeline_id = store.begin_pipeline(run_id, f"p-{i}", [{"class": RIDGE}], [], dataset)
        out["pipelines"].append(pipeline_id)
        chain_id, artifact_ids = save_fitted_chain(store, pipeline_id, seed)
        out["chains"].append([chain_id, artifact_ids, seed])
        mine = []
        for j in range(args["predictions"]):
            pid = save_seeded_prediction(store, pipeline_id, seed + j + 1, chain_id)
            mine.append(pid)
            out["predictions"].append([pid, seed + j + 1])
        store.complete_pipeline(pipeline_id, best_val=score_of(seed + 1), metric="rmse")
        store.complete_run(run_id, summary={"n": len(mine)})
        # read-your-writes, across the idle window and other processes' turns
        got = set(store.query_predictions(run_id=run_id)["prediction_id"])
        assert got == set(mine), f"query_predictions(run_id) lost rows: {set(mine) - got}"
        top = store.top_predictions(3, dataset_name=dataset)
        assert top.height == 3 and top["val_score"].is_sorted(), top
        assert run_id in set(store.list_runs(limit=100_000)["run_id"])
        if i % 3 == 0:
            scaler, model = fitted(seed)
            X = probe_input()
            assert np.allclose(store.replay_chain(chain_id, X), model.predict(scaler.transform(X)))
        out["checks"] += 1
    return out


def role_batcher(store, args: dict) -> dict:
    """The same records, each pipeline whole inside one ``batch()``."""
    wid, out = args["wid"], {"runs": [], "pipelines": [], "chains": [], "predictions": [], "checks": 0}
    dataset = f"ds{wid}"
    for i in range(args["iterations"]):
        seed = wid * 100_000 + i * 100
        with store.batch():
            run_id = store.begin_run(f"batcher-{wid}-{i}", datasets=[{"name": dataset}])
            pipeline_id = store.begin_pipeline(run_id, f"p-{i}", None, [], dataset)
            chain_id, artifact_ids = save_fitted_chain(store, pipeline_id, seed)
            preds = [[save_seeded_prediction(store, pipeline_id, seed + j + 1, chain_id), seed + j + 1]
                     for j in range(args["predictions"])]
            # reads inside the batch see the batch's own rows
            assert store.query_predictions(run_id=run_id).height == len(preds)
            store.complete_pipeline(pipeline_id, best_val=score_of(seed + 1), metric="rmse")
            store.complete_run(run_id)
        # acknowledged only once the batch has committed
        out["runs"].append(run_id), out["pipelines"].append(pipeline_id)
        out["chains"].append([chain_id, artifact_ids, seed]), out["predictions"].extend(preds)
        assert store.top_predictions(1, dataset_name=dataset).height == 1
        out["checks"] += 1
    return out


def role_reader(store, args: dict) -> dict:
    """Queries only, until told the writers are done; counts never go backwards."""
    out, last, stop = {"queries": 0, "max_seen": 0}, 0, args["stop_file"]
    while not os.path.exists(stop):
        count = store.sql("SELECT count(*) AS n FROM predictions")["n"][0]
        assert count >= last, f"prediction count went back from {last} to {count}"
        last = count
        store.top_predictions(5)
        store.query_predictions(partition="val", limit=20)
        store.list_runs(status="completed")
        out["queries"] += 4
        time.sleep(random.uniform(0, 0.02))
    out["max_seen"] = int(last)
    return out


def role_crasher(store, args: dict) -> None:
    """Writes in a loop until killed, acknowledging each write after it returned."""
    acks, rng = Acks(args["acks"]), random.Random(args["seed"])
    seed = args["seed"] * 10_000
    run_id = store.begin_run(f"crash-trial-{args['seed']}")
    acks.write("run", run_id)
    pipeline_id = store.begin_pipeline(run_id, "p", None, [], "crash")
    acks.write("pipeline", pipeline_id)
    ops = ["pred"] * 5 + ["chain"] * 2 + ["dup", "batch"]
    ops += ["vacuum"] * 3 if args.get("vacuum") else []
    ops += ["gc"] if args.get("gc") else []
    print("writing", flush=True)
    while True:
        op = rng.choice(ops)
        seed += 1
        acks.write("op", op, sync=False)  # what was in flight when the kill came
        if op == "pred":
            acks.write("pred", save_seeded_prediction(store, pipeline_id, seed), seed)
        elif op in ("chain", "dup"):
            # "dup": content saved by earlier trials too (the deduplicated path)
            s = 7 if op == "dup" else seed
            chain_id, (a_scaler, a_model) = save_fitted_chain(store, pipeline_id, s, numpy_only=True)
            acks.write("chain", chain_id, a_scaler, a_model, s)
        elif op == "batch":
            ids = [str(uuid.uuid4()) for _ in range(rng.randint(5, 30))]
            acks.write("intent", seed, *ids)
            with store.batch():
                for k, pid in enumerate(ids):
                    save_seeded_prediction(store, pipeline_id, seed * 100 + k, prediction_id=pid)
            acks.write("batch", seed)
        elif op == "vacuum":
            store.vacuum()
            acks.write("vacuumed", seed)
        elif op == "gc":
            store.gc_artifacts(grace=0.5)
            acks.write("gced", seed)


def role_gc_saver(store, args: dict) -> dict:
    """Saves the same contents again and again and chains them, while a gc runs elsewhere.

    Every content was saved long ago by the parent and is unreferenced between uses
    (each chain's run is deleted again), so gc may collect it at any moment."""
    from storage import NotFoundError

    pool = args["pool"]  # [[seed, artifact_id], ...]
    out = {"saved": 0, "chained": 0, "recreated": 0, "refused": [], "kept": []}
    objects = {seed: fitted(seed)[1] for seed, _ in pool}
    X = probe_input()
    deadline = time.monotonic() + args["seconds"]
    i, last = 0, pool[0]
    while True:
        final = time.monotonic() >= deadline
        # half the time the content just used (young, its file there), else the next
        # one of the pool (older than the grace: gc may be collecting it right now)
        if not final and random.random() >= 0.5:
            last = pool[i % len(pool)]
        for seed, expected_id in (pool if final else [last]):
            i += 1
            run_id = store.begin_run(f"gc-race-{i}")
            pipeline_id = store.begin_pipeline(run_id, "p", None, [], "gc")
            existed = os.path.exists(store.files.path(expected_id, "joblib"))
            started = time.monotonic()
            artifact_id = store.save_artifact(objects[seed], RIDGE)
            assert artifact_id == expected_id, "the same object must serialise to the same bytes"
            out["saved"] += 1
            out["recreated"] += not existed
            try:
                chain_id = store.save_chain(pipeline_id, [{"step_idx": 0, "kind": "model",
                                                           "operator_class": RIDGE}], 0, RIDGE, "",
                                            "per_fold", {"fold_0": {"0": artifact_id}}, {},
                                            n_features=N_FEATURES)
            except NotFoundError:
                # allowed only when more than `grace` passed since the save began
                out["refused"].append(time.monotonic() - started)
                store.delete_run(run_id)
                continue
            out["chained"] += 1
            # referenced now: it must load, and replay as the object it was saved from
            assert np.allclose(store.replay_chain(chain_id, X), objects[seed].predict(X))
            if final:
                out["kept"].append([chain_id, artifact_id])
            else:
                store.delete_run(run_id)
                time.sleep(random.uniform(0, 0.04))
        if final:
            return out


def role_gc_collector(store, args: dict) -> dict:
    pool_ids = {aid for _, aid in args["pool"]}
    out = {"runs": 0, "collected_pool": 0, "collected": 0}
    while not os.path.exists(args["stop_file"]):
        result = store.gc_artifacts(grace=args["grace"])
        out["runs"] += 1
        out["collected"] += len(result.artifact_ids)
        out["collected_pool"] += len(pool_ids & set(result.artifact_ids))
        time.sleep(random.choice([0, 0.01, 0.05, 0.2]))
    return out


def role_holder(store, args: dict) -> dict:
    """Holds the workspace in a batch (writing given-id predictions in it), sleeps, then
    optionally keeps writing one call at a time for a while."""
    acks = Acks(args["acks"]) if args.get("acks") else None
    pipeline_id = args.get("pipeline_id")
    ids = [str(uuid.uuid4()) for _ in range(args.get("in_batch", 0))]
    if acks:
        acks.write("intent", 0, *ids)
    with store.batch():
        if args.get("begin_run"):
            store.begin_run("made-inside-the-held-batch")
        for k, pid in enumerate(ids):
            save_seeded_prediction(store, pipeline_id, 1_000_000 + k, prediction_id=pid,
                                   n=args.get("n", 100))
        print("held", flush=True)
        time.sleep(args["hold"])
        if "gc_after" in args:  # a gc at the end of the held batch (its files go at commit)
            store.gc_artifacts(grace=args["gc_after"])
    if acks:
        acks.write("batch", 0)
    end, seed = time.monotonic() + args.get("then_write", 0), 2_000_000
    while time.monotonic() < end:
        seed += 1
        acks.write("pred", save_seeded_prediction(store, pipeline_id, seed, n=args.get("n", 100)), seed)
    return {"pid": os.getpid()}


def role_lock_holder(store, args: dict) -> dict:
    """Holds the workspace lock alone (no transaction, nothing attached), as a vacuum or
    a settle does, for `hold` seconds."""
    store.lock.acquire("exclusive")
    print("held", flush=True)
    time.sleep(args["hold"])
    store.lock.release()
    return {"pid": os.getpid()}


def role_fair(store, args: dict) -> dict:
    """Single save_prediction calls in a tight loop; the latency of each call."""
    x = np.linspace(0.0, 1.0, 100)
    calls, ids = [], []  # (start, end) on CLOCK_MONOTONIC, which all processes share
    end = time.monotonic() + args["seconds"]
    while time.monotonic() < end:
        t = time.monotonic()
        ids.append(store.save_prediction(args["pipeline_id"], val_score=0.5, y_true=x, y_pred=x))
        calls.append((t, time.monotonic()))
    return {"ids": ids, "calls": calls}


def role_waiter(store, args: dict) -> dict:
    """One read; the test kills this process while it waits for the lock."""
    return {"runs": store.list_runs().height}


def role_journaler(store, args: dict) -> None:
    """Single save_prediction calls with a long idle window (their journal records stay
    unsettled), acknowledged one by one; then it holds on until the test kills it."""
    acks = Acks(args["acks"])
    for seed in range(args["first_seed"], args["first_seed"] + args["n"]):
        acks.write("pred", save_seeded_prediction(store, args["pipeline_id"], seed), seed)
    print("written", flush=True)
    time.sleep(600)


def role_pipeline_journaler(store, args: dict) -> None:
    """Pipelines recorded whole, each in one ``batch()`` (so each a journal record), with a
    long idle window (never settled), acknowledged one by one; then it holds on until
    the test kills it."""
    acks = Acks(args["acks"])
    run_id = store.begin_run("journaled pipelines")
    for seed in range(args["first_seed"], args["first_seed"] + args["n"]):
        with store.batch():
            pipeline_id = store.begin_pipeline(run_id, f"p{seed}", {"seed": seed}, [], "tablet")
            chain_id, artifact_ids = save_fitted_chain(store, pipeline_id, seed)
            prediction_id = save_seeded_prediction(store, pipeline_id, seed, chain_id)
            store.complete_pipeline(pipeline_id, best_val=score_of(seed), metric="rmse", duration_ms=seed)
        acks.write("pipeline", pipeline_id, chain_id, prediction_id, seed)
    print("written", flush=True)
    time.sleep(600)


def role_queuer(store, args: dict) -> dict:
    """One write, made as soon as the lock is ours: a run named after this worker."""
    store.begin_run(args["name"])
    return {"at": time.monotonic()}


ROLES = {"journaler": role_journaler, "pipeline_journaler": role_pipeline_journaler, "queuer": role_queuer,
         "waiter": role_waiter, "writer": role_writer, "batcher": role_batcher, "reader": role_reader,
         "crasher": role_crasher,
         "gc_saver": role_gc_saver, "gc_collector": role_gc_collector, "holder": role_holder, "lock_holder": role_lock_holder,
         "fair": role_fair}


def main() -> None:
    role, args = sys.argv[1], json.loads(sys.argv[2])
    fn = ROLES[role]
    if role in ("writer", "batcher", "gc_saver", "pipeline_journaler"):
        fitted(0)  # import scikit-learn before the start line, not inside the timed part
    from storage import WorkspaceStore

    store = WorkspaceStore(args["workspace"], lock_timeout=args.get("lock_timeout", 120),
                           idle=args.get("idle", 0.05))
    store.release()
    _handshake()
    try:
        result = fn(store, args)
    except BaseException as exc:  # noqa: BLE001 - reported to the test, which fails on it
        _result({"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
        raise SystemExit(1)
    store.close()
    _result(result)


if __name__ == "__main__":
    main()
