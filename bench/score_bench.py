"""Benchmark of the ``score_inbox`` flow (issue 5). Not part of the test run.

1. 200 files x 500 spectra x 597 wavelengths (Tablet spectra with noise, so every file
   has its own bytes), scored with a 5-fold SNV + PLS chain through the flow against a
   Prefect server that is already running, end to end (flow start to return: hashing,
   store lookups and records, tasks, moves), against a plain loop that reads, replays and
   writes the same files without Prefect or the store. Target: flow >= 0.5x the plain
   loop's spectra per second; the per-file overhead in ms.
2. One ~1 GB CSV input scored by the flow in a fresh process: its peak RSS (target
   <= 500 MB), next to the same process's RSS before the run (imports alone).
3. The outlier checks (issue 20): the plain loop (read, replay, write) with the checks
   (T², Q, ratios, flag: evaluated inside the fold loop on each fold's preprocessed
   spectra) against the same loop without them, and replay alone with and without.
   Target: with / without <= 1.3x. ``--diagnostics-only`` runs this part alone (no
   Prefect server).

    python bench/score_bench.py                         # the issue's sizes
    python bench/score_bench.py --files 20 --big-gb 0.1 # smaller
    python bench/score_bench.py --api-url http://127.0.0.1:4200/api   # an existing server

Without ``--api-url`` (or ``PREFECT_API_URL``) a server is started on a free port with a
temporary PREFECT_HOME; its start-up is reported on its own line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from flows.server import apply_offline_settings, start_local_server  # noqa: E402 - after the path
apply_offline_settings()

CONFIG = ["SNV", "StandardScaler",
          {"split": {"class": "KFold", "params": {"n_splits": 5, "shuffle": True, "random_state": 0}}},
          {"model": {"class": "PLSRegression", "params": {"n_components": 8}}}]


def build_workspace(workspace: Path) -> str:
    from nirs.config import expand
    from nirs.datasets import load_tablet
    from nirs.training import fit_pipeline
    from storage import WorkspaceStore
    from storage.chain_builder import record_trace

    train, test = load_tablet(instrument=1)
    with WorkspaceStore(workspace) as store:
        trace = fit_pipeline(train, expand(CONFIG)[0], test=test)
        trace.dataset_name = "tablet"
        chain_id = record_trace(store, store.begin_run("score bench"), trace)["chain_id"]
        store.set_alias("tablet", "production", chain_id, changed_by="bench")
    return chain_id


def spectra_pool():
    import numpy as np
    from nirs.datasets import load_tablet

    train, test = load_tablet(instrument=1)
    return np.vstack([train.X, test.X]), train.wavelengths


def make_frame(rng, pool, wl, n: int, start: int):
    import polars as pl

    rows = pool[rng.integers(0, len(pool), n)] * (1 + rng.normal(0, 1e-3, (n, 1))) + rng.normal(0, 1e-4, (n, pool.shape[1]))
    data = {"sample_id": [f"s{start + i:08d}" for i in range(n)]}
    data.update({f"{w:g}": rows[:, j] for j, w in enumerate(wl)})
    return pl.DataFrame(data).with_columns(pl.selectors.float().round(6))


def write_files(folder: Path, files: int, spectra: int, seed: int = 0) -> list[Path]:
    import numpy as np

    rng = np.random.default_rng(seed)
    pool, wl = spectra_pool()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(files):
        p = folder / f"batch-{k:04d}.csv"
        make_frame(rng, pool, wl, spectra, k * spectra).write_csv(p)
        paths.append(p)
    return paths


def write_big(path: Path, gigabytes: float, seed: int = 1) -> int:
    import numpy as np

    rng = np.random.default_rng(seed)
    pool, wl = spectra_pool()
    path.parent.mkdir(parents=True, exist_ok=True)
    target, n, block = gigabytes * 1e9, 0, 5000
    with open(path, "wb") as fh:
        while fh.tell() < target:
            frame = make_frame(rng, pool, wl, block, n)
            frame.write_csv(fh, include_header=(n == 0))
            n += block
    return n


def plain_loop(workspace: Path, chain_id: str, files: list[Path], out: Path) -> tuple[float, int]:
    """Read, replay, write: no Prefect, no records (the chain and its artifacts are loaded
    beforehand, by a first replay)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nirs.readers import read_spectra
    from storage import WorkspaceStore

    out.mkdir(parents=True, exist_ok=True)
    with WorkspaceStore(workspace, idle=600) as store:
        store.replay_chain(chain_id, read_spectra(files[0]).X[:1])
        started, n = time.perf_counter(), 0
        for p in files:
            ds = read_spectra(p)
            pred = store.replay_chain(chain_id, ds.X, ds.wavelengths)
            pq.write_table(pa.table({"sample_id": ds.sample_ids.astype(str).tolist(), "prediction": pred,
                                     "chain_id": [chain_id] * len(pred)}), out / f"{p.stem}.parquet")
            n += len(pred)
        return time.perf_counter() - started, n


def diagnostics_cost(workspace: Path, chain_id: str, files: list[Path], out: Path, repeats: int = 3) -> list:
    """Rows of the table: the plain loop and replay alone, without and with the checks
    (best of `repeats`, alternating, so both see the same machine)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nirs.readers import read_spectra
    from storage import WorkspaceStore

    out.mkdir(parents=True, exist_ok=True)
    data = [read_spectra(p) for p in files]
    n = sum(len(ds.X) for ds in data)
    best = {}
    with WorkspaceStore(workspace, idle=600) as store:
        chain = store.load_chain(chain_id)
        chain.replay(data[0].X[:1], data[0].wavelengths, diagnostics=True)  # warm-up: artifacts, imports

        def loop(checks: bool, write: bool) -> float:
            """write: the whole loop (read each file, replay, write); else replay alone."""
            started = time.perf_counter()
            for p, ds in zip(files, data):
                if write:
                    ds = read_spectra(p)
                for i in range(0, len(ds.X), 500):  # the flow's chunk_rows
                    pred, _, *diag = chain.replay(ds.X[i:i + 500], ds.wavelengths, diagnostics=checks)
                    if write:
                        cols = {"sample_id": ds.sample_ids[i:i + 500].astype(str).tolist(), "prediction": pred}
                        if checks:
                            cols.update({k: np.asarray(diag[0][k]) for k in ("t2", "q", "t2_ratio", "q_ratio")},
                                        flag=diag[0]["flag"].tolist())
                        pq.write_table(pa.table(cols), out / f"{p.stem}.{i}.parquet")
            return time.perf_counter() - started

        for _ in range(repeats):
            for key in [(False, True), (True, True), (False, False), (True, False)]:
                best[key] = min(best.get(key, float("inf")), loop(*key))
    return [
        ("outlier checks: workload", f"{len(files)} files, {n} spectra, chunks of 500, 5-fold SNV + scaler + PLS(8); "
                                     f"best of {repeats}"),
        ("  read-replay-write loop (as part 1's plain loop) without / with checks",
         f"{best[(False, True)]:.3f} s / {best[(True, True)]:.3f} s"),
        ("  with / without, loop (target <= 1.3)", f"{best[(True, True)] / best[(False, True)]:.2f}x"),
        ("  replay alone without / with checks", f"{best[(False, False)]:.3f} s / {best[(True, False)]:.3f} s "
                                                f"({best[(True, False)] / best[(False, False)]:.2f}x)"),
    ]


BIG_CODE = """
import json, sys, time
from flows.score_inbox import score_inbox

def status_mb(key):  # VmHWM: this process's peak RSS (afresh at exec, unlike ru_maxrss)
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith(key)) / 1024

anon = [0.0]
def sample():  # the anonymous part of RSS (RSS less the pages of shared libraries), sampled
    while True:
        anon[0] = max(anon[0], status_mb("RssAnon"))
        time.sleep(0.1)

import threading
threading.Thread(target=sample, daemon=True).start()
before = status_mb("VmHWM")
t = time.perf_counter()
summary = score_inbox(workspace={workspace!r}, inbox={inbox!r}, settle_seconds=0.5, chunk_rows={chunk_rows})
wall = time.perf_counter() - t
print("RESULT " + json.dumps({{"before_mb": before, "peak_mb": status_mb("VmHWM"), "anon_mb": anon[0],
                              "wall_s": wall, "counts": summary["counts"], "n_spectra": summary["n_spectra"]}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--spectra", type=int, default=500)
    ap.add_argument("--big-gb", type=float, default=1.0, help="size of the single big input (0 skips it)")
    ap.add_argument("--chunk-rows", type=int, default=500)
    ap.add_argument("--settle", type=float, default=0.0, help="settle_seconds of the 200-file run")
    ap.add_argument("--api-url", default=os.environ.get("PREFECT_API_URL"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--diagnostics-only", action="store_true", help="only part 3: the outlier checks' cost")
    args = ap.parse_args()
    if args.diagnostics_only:
        scratch = Path(tempfile.mkdtemp(prefix="score-bench-"))
        try:
            chain_id = build_workspace(scratch / "ws")
            files = write_files(scratch / "inbox" / "tablet", args.files, args.spectra)
            rows = diagnostics_cost(scratch / "ws", chain_id, files, scratch / "out")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"{k:<{width}}  {v}")
        return

    scratch = Path(tempfile.mkdtemp(prefix="score-bench-"))
    server = None
    rows: list[tuple[str, str]] = []
    try:
        if args.api_url:
            url = args.api_url
            rows.append(("Prefect server", f"already running at {url}"))
        else:
            (scratch / "prefect").mkdir()
            server = start_local_server(scratch / "prefect")
            url = server.url
            rows.append(("Prefect server start-up (one time, not in the figures below)", f"{server.startup_s:.1f} s"))
        os.environ["PREFECT_API_URL"] = url

        workspace = scratch / "ws"
        t = time.perf_counter()
        chain_id = build_workspace(workspace)
        print(f"chain trained and stored in {time.perf_counter() - t:.1f} s", flush=True)
        t = time.perf_counter()
        inbox = scratch / "inbox"
        files = write_files(inbox / "tablet", args.files, args.spectra)
        size_mb = sum(p.stat().st_size for p in files) / 1e6
        print(f"{args.files} files written ({size_mb:.0f} MB) in {time.perf_counter() - t:.1f} s", flush=True)

        plain_s, n_plain = plain_loop(workspace, chain_id, files, scratch / "plain-out")
        print(f"plain loop: {plain_s:.2f} s", flush=True)

        from flows.score_inbox import DEFAULT_WORKERS, score_inbox

        empty = scratch / "empty-inbox"
        empty.mkdir()
        score_inbox(workspace=str(workspace), inbox=str(empty), settle_seconds=0)  # warm-up: client, imports
        t = time.perf_counter()
        score_inbox(workspace=str(workspace), inbox=str(empty), settle_seconds=0)
        fixed_s = time.perf_counter() - t
        t = time.perf_counter()
        summary = score_inbox(workspace=str(workspace), inbox=str(inbox), settle_seconds=args.settle)
        flow_s = time.perf_counter() - t
        assert summary["counts"]["scored"] == args.files, summary["counts"]
        n = summary["n_spectra"]
        rows += [
            ("workload", f"{args.files} files x {args.spectra} spectra x 597 wavelengths ({size_mb:.0f} MB CSV), "
                         "SNV + scaler + PLS(8), 5 folds"),
            ("plain loop (read, replay, write; 1 thread)", f"{plain_s:.2f} s, {n_plain / plain_s:,.0f} spectra/s, "
                                                          f"{1000 * plain_s / args.files:.1f} ms/file"),
            (f"score_inbox flow end to end ({DEFAULT_WORKERS} task threads, settle {args.settle:g} s)",
             f"{flow_s:.2f} s, {n / flow_s:,.0f} spectra/s, {1000 * flow_s / args.files:.1f} ms/file"),
            ("flow / plain throughput (target >= 0.5)", f"{(n / flow_s) / (n_plain / plain_s):.2f}x"),
            ("per-file overhead of the flow (wall, vs the plain loop)",
             f"{1000 * (flow_s - plain_s) / args.files:+.1f} ms"),
            ("fixed cost of one flow run (an empty inbox)", f"{fixed_s:.2f} s"),
        ]
        moved = [workspace / "processed" / "tablet" / p.name for p in files[:20]]  # where the flow put them
        rows += diagnostics_cost(workspace, chain_id, moved, scratch / "diag-out")

        if args.big_gb > 0:
            big_inbox = scratch / "big-inbox"
            t = time.perf_counter()
            n_big = write_big(big_inbox / "tablet" / "big.csv", args.big_gb)
            big_size = (big_inbox / "tablet" / "big.csv").stat().st_size
            print(f"big file written: {big_size / 1e9:.2f} GB, {n_big} spectra, {time.perf_counter() - t:.0f} s",
                  flush=True)
            env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": url}
            code = textwrap.dedent(BIG_CODE.format(workspace=str(workspace), inbox=str(big_inbox),
                                                   chunk_rows=args.chunk_rows))
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise RuntimeError(f"big-file run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            big = json.loads(line[len("RESULT "):])
            assert big["counts"]["scored"] == 1, big
            rows += [
                (f"one {big_size / 1e9:.2f} GB CSV ({big['n_spectra']:,} spectra), chunk_rows {args.chunk_rows}",
                 f"{big['wall_s']:.1f} s, {big['n_spectra'] / big['wall_s']:,.0f} spectra/s"),
                ("  peak RSS of the flow process (target <= 500 MB)", f"{big['peak_mb']:.0f} MB"),
                ("  of which anonymous memory (peak RssAnon; the rest is shared-library pages)",
                 f"{big['anon_mb']:.0f} MB"),
                ("  RSS of that process before the run (imports)", f"{big['before_mb']:.0f} MB"),
            ]
    finally:
        try:
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)  # while the server is still up
        except Exception:  # noqa: BLE001
            pass
        if server is not None:
            server.stop(timeout=30)
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
