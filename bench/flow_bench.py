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
   ``train`` flow with fold tasks on threads and on processes: medians of ``--repeats``
   runs, the ratio to the plain core, the orchestration cost per task run, and the CPU
   each used (with the server's). From those, the floor no task runner can beat on this
   machine: every CPU-second of fitting, storing and orchestrating shared by its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
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


def through_flow(config, workspace: Path, runner: str) -> tuple[float, float]:
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    from flows.train import train

    task_runner, processes = {
        "1 thread, fits in the flow process": (lambda: ThreadPoolTaskRunner(max_workers=1), 0),
        "2 threads, fits in the flow process (the default on 2 cores)": (lambda: ThreadPoolTaskRunner(max_workers=2), 0),
        "2 threads, fits in 2 worker processes (processes=2)": (lambda: ThreadPoolTaskRunner(max_workers=2), 2),
        "Prefect's ProcessPoolTaskRunner(2)": (lambda: ProcessPoolTaskRunner(max_workers=2), 0)}[runner]
    started = time.perf_counter()
    out = train.with_options(task_runner=task_runner())(workspace=str(workspace), config=config,
                                                        datasets=["tablet1"], export=False, processes=processes)
    return time.perf_counter() - started, out["wall_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pipelines", type=int, default=20)
    parser.add_argument("--skip-units", action="store_true")
    parser.add_argument("--processes", action="store_true",
                        help="also run the flow with fold tasks on a 2-process pool (slow: ~300 ms per task)")
    args = parser.parse_args()

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
        # imports, client, first-flow costs, the worker processes' start
        through_flow(grid(2), work / "warmup", "2 threads, fits in 2 worker processes (processes=2)")
        plain_core(grid(2), None)
        results: dict[str, list] = {}
        for r in range(args.repeats):
            results.setdefault("plain core", []).append(
                meter.measure(lambda: (plain_core(config, None), None)))
            results.setdefault("plain core + store", []).append(
                meter.measure(lambda: (plain_core(config, work / f"core{r}"), None)))
            for runner in ("1 thread, fits in the flow process", "2 threads, fits in the flow process (the default on 2 cores)",
                           "2 threads, fits in 2 worker processes (processes=2)") + (
                               ("Prefect's ProcessPoolTaskRunner(2)",) if args.processes else ()):
                results.setdefault(f"train flow, {runner}", []).append(
                    meter.measure(lambda: through_flow(config, work / f"{runner}{r}", runner)))
        cpu = {label: (statistics.median(c for _, c in values) if meter.server_pid else None)
               for label, values in results.items()}
        results = {label: [timed for timed, _ in values] for label, values in results.items()}
        core = statistics.median(w for w, _ in results["plain core"])
        stored = statistics.median(w for w, _ in results["plain core + store"])
        folds = 5
        task_runs = n * (folds + 1)
        print(f"\n{n} pipelines x {folds} folds on Tablet (400 x 597 train, 212 test), median of {args.repeats}; "
              f"{os.cpu_count()} cores")
        print(f"  {'':<66} {'wall s':>8} {'body s':>8} {'/core':>7} {'/core+store':>12} {'ms per task run':>16} "
              f"{'CPU s':>6}")
        for label, values in results.items():
            wall = statistics.median(w for w, _ in values)
            inner = [b for _, b in values if b is not None]
            body = f"{statistics.median(inner):8.2f}" if inner else f"{'':8}"
            per_task = (f"{(wall - stored) / task_runs * 1000:16.1f}" if label.startswith("train") else f"{'':16}")
            used = f"{cpu[label]:6.2f}" if cpu[label] is not None else f"{'n/a':>6}"
            print(f"  {label:<66} {wall:8.2f} {body} {wall / core:7.2f} {wall / stored:12.2f} {per_task} {used}")
        print(f"  ({task_runs} task runs per flow: {n} pipeline tasks + {n * folds} fold tasks; 'body' excludes the "
              "flow run's own start and end; CPU s counts this process, its fit workers and the server)")
        if per_task_cpu is not None:
            cores = os.cpu_count() or 1
            needed = cpu["plain core + store"] + flow_cpu + task_runs * per_task_cpu
            print(f"\nFloor on {cores} cores: the plain core and its store ({cpu['plain core + store']:.2f} s CPU) + a "
                  f"flow run ({flow_cpu:.2f} s) + {task_runs} task runs x {per_task_cpu * 1000:.0f} ms = "
                  f"{needed:.2f} CPU-seconds, at best {needed / cores:.2f} s of wall time: "
                  f"{needed / cores / core:.2f}x the plain core (target 1.15x)")
        shutil.rmtree(work, ignore_errors=True)
    finally:
        if server is not None:
            server.stop(timeout=30)
            shutil.rmtree(server.home, ignore_errors=True)


if __name__ == "__main__":
    main()
