"""``nirsflow`` stopped with SIGTERM (and Ctrl-C, and kill -9) at distinct moments, with
and without a Prefect server, as a lab's supervisor or a user stops it: the command exits
within seconds, leaves no process behind (its temporary Prefect server included), the
run is recorded ``crashed`` with Prefect's message, and ``nirsflow check`` passes after.
The 20-trial version, at random moments, is bench/sigterm_trials.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from storage import WorkspaceStore
from tests.conftest import ROOT, run_cli
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(300)
LONG_GRID = ("pipeline:\n  - _or_: [SNV, null]\n  - split: {class: KFold, params: {n_splits: 3}}\n"
             "  - model: {class: PLSRegression, params: {n_components: {_range_: [2, 17, 2]}}}\n")


def _env(tmp_path: Path, server=None) -> dict:
    """A user's environment: no PREFECT_* but a private PREFECT_HOME (never written, if all
    goes well), a private TMPDIR (where temporary servers keep their homes), and the
    test server's URL when given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), TMPDIR=str(tmp_path / "tmp"), PYTHONPATH=str(ROOT))
    if server is not None:
        env.update({k: v for k, v in server.env.items() if k.startswith("PREFECT_") and k != "PREFECT_HOME"})
    return env


def _start(tmp_path: Path, env: dict, *args: str) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / "command.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def _left_behind(proc: subprocess.Popen, tmp: Path) -> list[str]:
    """Live processes of the command's session, and Prefect servers whose home is in `tmp`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == proc.pid:
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields[0] == "Z":
            continue
        if int(fields[3]) == proc.pid or f"PREFECT_HOME={tmp}".encode() in environ:
            found.append(f"{entry}: {cmdline[:120]}")
    return found


def _completed_pipelines(workspace: Path) -> int:
    if not (workspace / "store.duckdb").exists():
        return 0
    with WorkspaceStore(workspace) as store:
        return store.list_pipelines(status="completed").height


def _stop(proc: subprocess.Popen, sig: int, log: Path) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=30)  # "within a few seconds": 30 s is a hang, not slowness
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"the command hung after the signal:\n{log.read_text()[-3000:]}")


def _assert_stopped_cleanly(proc, tmp_path: Path, workspace: Path, log: Path, message: str) -> None:
    wait_for(lambda: not _left_behind(proc, tmp_path / "tmp"), 10, "no process left", interval=0.5)
    assert not list((tmp_path / "tmp").glob("nirsflow-prefect-*")), "the temporary server's home is removed"
    with WorkspaceStore(workspace) as store:
        run = store.list_runs().row(0, named=True)
        assert "running" not in set(store.list_pipelines(run_id=run["run_id"])["status"])
    assert run["status"] == "crashed" and run["error"] == message, (run, log.read_text()[-3000:])
    check = run_cli("check", "-w", str(workspace))
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.fixture
def grid(tmp_path) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(LONG_GRID)
    return path


def test_sigterm_mid_training_without_a_server(tmp_path, grid):
    workspace = tmp_path / "ws"
    proc, log = _start(tmp_path, _env(tmp_path), "train", str(grid), "tablet1", "-w", str(workspace))
    try:
        wait_for(lambda: _completed_pipelines(workspace) >= 2 or proc.poll() is not None, 180, "two pipelines")
        assert proc.poll() is None, log.read_text()[-3000:]
        assert _stop(proc, signal.SIGTERM, log) == 143
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _assert_stopped_cleanly(proc, tmp_path, workspace, log, "Execution was aborted by a termination signal.")
    assert not (tmp_path / "prefect-home" / "prefect.db").exists(), "the user's Prefect database is not touched"


def test_sigterm_while_the_temporary_server_starts_leaves_nothing(tmp_path, grid):
    workspace = tmp_path / "ws"
    proc, log = _start(tmp_path, _env(tmp_path), "train", str(grid), "tablet1", "-w", str(workspace))
    try:
        wait_for(lambda: "starting a temporary Prefect server" in log.read_text() or proc.poll() is not None, 60,
                 "the server to start")
        assert _stop(proc, signal.SIGTERM, log) == 143
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    wait_for(lambda: not _left_behind(proc, tmp_path / "tmp"), 10, "the temporary server to be gone")
    assert not list((tmp_path / "tmp").glob("nirsflow-prefect-*"))
    with WorkspaceStore(workspace) as store:  # stopped before the flow: no run recorded
        assert store.list_runs().height == 0


@pytest.mark.parametrize("sig,message", [
    (signal.SIGTERM, "Execution was aborted by a termination signal."),
    (signal.SIGINT, "Execution was aborted by an interrupt signal."),  # Ctrl-C
])
def test_a_stop_mid_training_with_a_server(prefect_server, tmp_path, grid, sig, message):
    workspace = tmp_path / "ws"
    proc, log = _start(tmp_path, _env(tmp_path, prefect_server), "train", str(grid), "tablet1", "-w", str(workspace))
    try:
        wait_for(lambda: _completed_pipelines(workspace) >= 1 or proc.poll() is not None, 180, "a pipeline")
        assert proc.poll() is None, log.read_text()[-3000:]
        assert _stop(proc, sig, log) in (128 + sig, 1)  # Ctrl-C: click's Abort says 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _assert_stopped_cleanly(proc, tmp_path, workspace, log, message)


def test_kill_9_of_a_command_takes_its_temporary_server_along(demo_run, tmp_path):
    import shutil

    workspace = tmp_path / "ws"
    shutil.copytree(demo_run[0], workspace, ignore=shutil.ignore_patterns(".nirsflow"))
    env = _env(tmp_path)
    proc, log = _start(tmp_path, env, "score", "-w", str(workspace))
    try:
        wait_for(lambda: any("create_app" in p for p in _left_behind(proc, tmp_path / "tmp")), 120,
                 "its temporary server to run")
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    wait_for(lambda: not _left_behind(proc, tmp_path / "tmp"), 10, "the orphaned server to die with its command")
    assert list((tmp_path / "tmp").glob("nirsflow-prefect-*")), "kill -9 leaves the home; the next command sweeps it"
    again = subprocess.run([sys.executable, "-m", "flows.cli", "score", "-w", str(workspace)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert not list((tmp_path / "tmp").glob("nirsflow-prefect-*"))
