"""The realistic mix on one workspace (issue 18), never part of the test run:

    python bench/mix_bench.py [--repeats 3] [--pipelines 40] [--files 80] [--spectra 200] [--pause 0.5]

Three OS processes start together on one workspace, against one Prefect server:

* training: the ``train`` flow over a grid on Tablet (``--pipelines`` x 5 folds), its
  hooks writing the store as it goes;
* scoring: the ``score_inbox`` flow over ``--files`` spectra files of ``--spectra``
  Tablet spectra each, recording each scored file in the store;
* a notebook: reads in a loop until both flows are done (the leaderboard, the runs, a
  page of predictions, a replay of the production chain on 20 spectra), ``--pause``
  seconds between reads (0.5: a person refreshing; 0.02: a dashboard hammering the
  store, the worst case for writers), each read timed.

Prints the wall time of each flow, the part of it spent inside store calls (waits for
the locks included), the reader's reads and latencies, medians of ``--repeats`` runs on
fresh workspaces, and the machine's load; each run's figures, store time by call
included, on a line of their own. It uses the public API only, so any tree runs it: to
compare two, run a copy of this file from each tree's bench/ (it imports the tree it sits
in), alternating. Without ``PREFECT_API_URL`` a server is started (not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from flow_bench import grid  # noqa: E402 - after the path
from flows.server import apply_offline_settings, start_local_server  # noqa: E402
from score_bench import build_workspace, write_files  # noqa: E402
apply_offline_settings()

# Time spent inside the store's public calls (the outermost ones: a batch counts once,
# its inner calls not again), by the flow processes: what the store's write path costs
# them, waits for the lock included, apart from the flows' own work.
STORE_TIME = """
import contextlib, functools, inspect, threading, time
import storage
STORE = {"seconds": 0.0, "calls": 0, "by_call": {}}
_depth = threading.local()
def _timed(fn, context=False):
    def enter():
        depth = getattr(_depth, "n", 0)
        _depth.n = depth + 1
        return depth, time.perf_counter()
    def leave(depth, started):
        _depth.n = depth
        if depth == 0:
            took = time.perf_counter() - started
            STORE["seconds"] += took
            STORE["calls"] += 1
            mine = STORE["by_call"].setdefault(fn.__name__, [0, 0.0])
            mine[0] += 1
            mine[1] = round(mine[1] + took, 4)
    if context:
        @contextlib.contextmanager
        def managed(*a, **k):
            depth, started = enter()
            try:
                with fn(*a, **k) as value:
                    yield value
            finally:
                leave(depth, started)
        return functools.wraps(fn)(managed)
    @functools.wraps(fn)
    def call(*a, **k):
        depth, started = enter()
        try:
            return fn(*a, **k)
        finally:
            leave(depth, started)
    return call
for _name in dir(storage.WorkspaceStore):  # the public methods, wherever the class has them from
    _fn = getattr(storage.WorkspaceStore, _name)
    if not _name.startswith("_") and inspect.isfunction(_fn) and _name not in ("close", "release"):
        setattr(storage.WorkspaceStore, _name, _timed(_fn, context=_name == "batch"))
"""

TRAINER = STORE_TIME + """
import json, sys, time
from flows.train import train
config, workspace, start = json.loads(sys.argv[1]), sys.argv[2], float(sys.argv[3])
while time.time() < start:
    time.sleep(0.002)
t = time.perf_counter()
out = train(workspace=workspace, config=config, datasets=["tablet1"], export=False)
print(json.dumps({"seconds": time.perf_counter() - t, "store_s": STORE["seconds"], "store_calls": STORE["calls"],
                  "by_call": STORE["by_call"]}))
"""

SCORER = STORE_TIME + """
import json, sys, time
from flows.score_inbox import score_inbox
workspace, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:
    time.sleep(0.002)
t = time.perf_counter()
out = score_inbox(workspace=workspace, inbox=workspace + "/inbox", settle_seconds=0.05)
print(json.dumps({"seconds": time.perf_counter() - t, "store_s": STORE["seconds"], "store_calls": STORE["calls"],
                  "by_call": STORE["by_call"]}))
"""

READER = """
import json, os, sys, time
import numpy as np
from nirs.datasets import load_tablet
from storage import WorkspaceStore
workspace, start, stop, pause = sys.argv[1], float(sys.argv[2]), sys.argv[3], float(sys.argv[4])
X = load_tablet(1)[1].X[:20]
store = WorkspaceStore(workspace)
chain_id = store.get_alias("tablet", "production")
store.release()
while time.time() < start:
    time.sleep(0.002)
reads = []
while not os.path.exists(stop):
    for read in (lambda: store.top_predictions(5, dataset_name="tablet1"), lambda: store.list_runs(limit=20),
                 lambda: store.query_predictions(partition="test", limit=50),
                 lambda: store.replay_chain(chain_id, X)):
        t = time.perf_counter()
        read()
        reads.append(time.perf_counter() - t)
        time.sleep(pause)
store.close()
print(json.dumps({"reads": len(reads), "p50": float(np.percentile(reads, 50)), "p99": float(np.percentile(reads, 99)),
                  "max": max(reads)}))
"""


def prepare(workspace: Path, files: int, spectra: int) -> None:
    """A workspace with a production chain for 'tablet' (score_bench's), and an inbox of
    spectra files."""
    build_workspace(workspace)
    write_files(workspace / "inbox" / "tablet", files, spectra)


def one_mix(work: Path, args) -> dict:
    workspace = work / "ws"
    prepare(workspace, args.files, args.spectra)
    stop = work / "stop"
    start = time.time() + 8.0  # after the three interpreters have imported Prefect and friends
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    def launch(code: str, *argv: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)

    trainer = launch(TRAINER, json.dumps(grid(args.pipelines)), str(workspace), str(start))
    scorer = launch(SCORER, str(workspace), str(start))
    reader = launch(READER, str(workspace), str(start), str(stop), str(args.pause))
    results = {}
    for name, proc in (("train", trainer), ("score", scorer)):
        out, err = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{err[-3000:]}")
        results[name] = json.loads(out.strip().splitlines()[-1])
    stop.touch()
    out, err = reader.communicate(timeout=300)
    if reader.returncode != 0:
        raise RuntimeError(f"reader failed:\n{err[-3000:]}")
    results["read"] = json.loads(out.strip().splitlines()[-1])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pipelines", type=int, default=40)
    parser.add_argument("--files", type=int, default=80)
    parser.add_argument("--spectra", type=int, default=200)
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between the notebook's reads")
    args = parser.parse_args()
    import storage

    server = None
    if not os.environ.get("PREFECT_API_URL"):
        server = start_local_server(Path(tempfile.mkdtemp(prefix="nirsflow-mix-prefect-")))
        os.environ["PREFECT_API_URL"] = server.url
    load = os.getloadavg()
    runs = []
    try:
        for _ in range(args.repeats):
            work = Path(tempfile.mkdtemp(prefix="nirsflow-mix-"))
            try:
                runs.append(one_mix(work, args))
            finally:
                shutil.rmtree(work, ignore_errors=True)
            print(f"  {runs[-1]}", flush=True)
    finally:
        if server is not None:
            server.stop(timeout=30)
            shutil.rmtree(server.home, ignore_errors=True)

    def med(key: str, field: str) -> float:
        return statistics.median(r[key][field] for r in runs)

    print(f"\n## Realistic mix ({Path(storage.__file__).parent.parent.name}; {os.cpu_count()} cores, load average "
          f"{load[0]:.2f} before / {os.getloadavg()[0]:.2f} after; median of {args.repeats})\n")
    print("| measure | value |\n|---|---|")
    print(f"| train flow, {args.pipelines} pipelines x 5 folds (wall) | {med('train', 'seconds'):.2f} s |")
    print(f"| ... of which in store calls (waits included) | {med('train', 'store_s'):.2f} s in "
          f"{med('train', 'store_calls'):.0f} calls |")
    print(f"| score_inbox flow, {args.files} files x {args.spectra} spectra (wall) | {med('score', 'seconds'):.2f} s |")
    print(f"| ... of which in store calls (waits included) | {med('score', 'store_s'):.2f} s in "
          f"{med('score', 'store_calls'):.0f} calls |")
    print(f"| notebook reads while both ran ({args.pause:g} s apart) | {med('read', 'reads'):.0f} |")
    print(f"| ... latency p50 / p99 / max | {med('read', 'p50') * 1000:.1f} / {med('read', 'p99') * 1000:.1f} / "
          f"{med('read', 'max') * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
