"""SIGTERM at random moments to a running ``nirsflow train``: does it stop cleanly?

    python bench/sigterm_trials.py [--trials 20] [--seed 1] [--pipelines 16]

Half the trials run with a Prefect server of their own (``PREFECT_API_URL`` set), half
without (the command starts its temporary server). Each trial starts ``nirsflow train``
in its own session on a grid of ``--pipelines`` PLS pipelines (3-fold CV, Tablet),
sends SIGTERM after a random delay (anywhere from the preflight checks and the server's
start-up to the last store writes and the exports), and prints one row:

    trial | server | moment (s) | exit (s) | code | left | run | check | error

``exit``: seconds from the signal to the command's exit (``HANG`` after 60 s, when it is
killed); ``left``: processes of the command still alive 2 s after it exited (its session,
and any temporary Prefect server it started); ``run``: the store's status of the run
(``-`` when the signal landed before the run began); ``check``: the exit code of
``nirsflow check`` on the workspace afterwards; ``error``: the run's recorded error.
Acceptance: 0 hangs, 0 processes left, every run ``crashed`` (or ``completed`` when it
finished first), every check 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from flows.server import server_environment, start_local_server  # noqa: E402


def grid(n: int) -> str:
    return ("pipeline:\n  - _or_: [SNV, null]\n  - split: {class: KFold, params: {n_splits: 3, shuffle: true, "
            "random_state: 0}}\n"
            f"  - model: {{class: PLSRegression, params: {{n_components: {{_range_: [2, {1 + n}, 2]}}}}}}\n")


def server_pids() -> set[int]:
    """Processes running a Prefect API app (temporary servers are uvicorn create_app)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"prefect.server.api.server:create_app" in cmd:
                found.add(int(entry))
    return found


def session_pids(sid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":  # the session id, and not a zombie
                found.add(int(entry))
    return found


def last_run(workspace: Path) -> tuple[str, str]:
    if not (workspace / "store.duckdb").exists():
        return "-", ""
    done = subprocess.run([sys.executable, "-m", "flows.cli", "runs", "-w", str(workspace), "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    runs = json.loads(done.stdout) if done.returncode == 0 else []
    return (runs[0]["status"], (runs[0]["error"] or "")[:60]) if runs else ("-", "")


def trial(k: int, workspace: Path, config: Path, env: dict, delay: float) -> dict:
    before = server_pids()
    started = time.monotonic()
    log = open(workspace.parent / f"trial-{k}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "train", str(config), "tablet1",
                             "-w", str(workspace)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    time.sleep(delay)
    finished_first = proc.poll() is not None
    signalled = time.monotonic()
    if not finished_first:
        proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=60)
        exit_s = f"{time.monotonic() - signalled:.1f}" if not finished_first else "done"
    except subprocess.TimeoutExpired:
        exit_s, code = "HANG", None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(2)
    left = (session_pids(proc.pid) | (server_pids() - before)) - {proc.pid}
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    status, error = last_run(workspace)
    check = subprocess.run([sys.executable, "-m", "flows.cli", "check", "-w", str(workspace)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120) if (workspace / "store.duckdb").exists() else None
    return {"trial": k, "moment": round(signalled - started, 1), "exit": exit_s, "code": code, "left": len(left),
            "run": status, "check": "-" if check is None else check.returncode, "error": error,
            "check_out": "" if check is None else check.stdout.strip().splitlines()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pipelines", type=int, default=16)
    parser.add_argument("--from", dest="start", type=float, default=0.0,
                        help="Signal no earlier than this fraction of a whole run (0.5: the second half only).")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="sigterm-trials-"))
    config = base / "grid.yaml"
    config.write_text(grid(args.pipelines))
    plain = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    plain.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(base / "client-home"))
    server = start_local_server(base / "server")
    with_server = {**server_environment(base / "server"), "PYTHONPATH": str(REPO), "PREFECT_API_URL": server.url}
    with_server.pop("PREFECT_API_DATABASE_CONNECTION_URL")
    rows = []
    try:
        # how long a whole run takes, each way: the signal lands anywhere in it
        spans = {}
        for label, env in (("yes", with_server), ("no", plain)):
            t = time.monotonic()
            subprocess.run([sys.executable, "-m", "flows.cli", "train", str(config), "tablet1", "-w",
                            str(base / f"calibrate-{label}")], cwd=REPO, env=env, capture_output=True, check=True)
            spans[label] = time.monotonic() - t
        print(f"a whole run: {spans['yes']:.1f} s with a server, {spans['no']:.1f} s with a temporary one")
        header = f"{'trial':>5} | {'server':6} | {'moment':>6} | {'exit':>5} | {'code':>4} | {'left':>4} | " \
                 f"{'run':9} | {'check':>5} | error"
        print(header)
        print("-" * len(header))
        for k in range(1, args.trials + 1):
            label = "yes" if k % 2 else "no"
            delay = rng.uniform(max(0.3, spans[label] * args.start), spans[label] * 0.95)
            row = trial(k, base / f"ws-{k}", config, with_server if label == "yes" else plain, delay)
            row["server"] = label
            rows.append(row)
            print(f"{row['trial']:>5} | {label:6} | {row['moment']:>6} | {row['exit']:>5} | {str(row['code']):>4} | "
                  f"{row['left']:>4} | {row['run']:9} | {row['check']:>5} | {row['error']}", flush=True)
            if row["check"] not in (0, "-"):
                print(f"      check said: {row['check_out']}")
    finally:
        server.stop()
    hangs = sum(r["exit"] == "HANG" for r in rows)
    left = sum(r["left"] for r in rows)
    bad_runs = [r["trial"] for r in rows if r["run"] not in ("crashed", "completed", "-")]
    bad_checks = [r["trial"] for r in rows if r["check"] not in (0, "-")]
    exits = [float(r["exit"]) for r in rows if r["exit"] not in ("HANG", "done")]
    print(f"\n{len(rows)} trials: {hangs} hangs, {left} processes left, runs neither crashed nor completed: "
          f"{bad_runs or 'none'}, check failed: {bad_checks or 'none'}; exit after the signal: "
          f"max {max(exits, default=0):.1f} s, median {sorted(exits)[len(exits) // 2] if exits else 0:.1f} s")
    print(f"(workspaces and each trial's output kept in {base})")


if __name__ == "__main__":
    main()
