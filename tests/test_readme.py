"""The README's promise: its test command is exactly what CI runs, and its main job runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands():
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    return blocks[0].strip(), blocks[1].strip()


def test_ci_runs_the_readme_test_command():
    _, test_command = _commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in [line.strip() for line in ci]


def test_readme_main_job_is_the_demo():
    main_job, _ = _commands()
    assert main_job == "pip install -e . && nirsflow demo"


def test_demo_runs_end_to_end_and_prints_the_leaderboard(demo_run):
    workspace, done = demo_run
    assert "Leaderboard" in done.stdout and "Production chain for 'tablet1'" in done.stdout
    rmse = float(re.search(r"Inbox: 2 files scored, 212 tablets, RMSE ([0-9.]+)", done.stdout).group(1))
    assert 1.5 < rmse < 3.0  # SNV/MSC/SG + PLS on Tablet: about 2.2-2.4
    assert (workspace / "store.duckdb").is_file()
    assert len(list((workspace / "outbox" / "tablet1").glob("*.parquet"))) == 2
    assert not list((workspace / "inbox" / "tablet1").iterdir())


def test_the_demo_and_drift_say_how_many_tablets_the_outlier_checks_flagged(demo_run):
    """The held-out tablets are of the calibration's kind: most pass, and the count the demo
    prints is the one the result files and `nirsflow drift` hold."""
    import polars as pl

    from tests.conftest import run_cli

    workspace, done = demo_run
    found = re.search(r"Outlier checks: (\d+) of 212 tablets flagged \((\d+) %", done.stdout)
    assert found, done.stdout
    results = pl.concat([pl.read_parquet(p) for p in (workspace / "outbox" / "tablet1").glob("*.parquet")])
    flagged = int((results["flag"] != "ok").sum())
    assert int(found.group(1)) == flagged and flagged < 0.3 * 212
    table = run_cli("drift", "tablet1", "--workspace", str(workspace))
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if results["chain_id"][0][:8] in line)
    assert f" {flagged} " in row and results["chain_id"][0] not in table.stdout  # the short id, as other tables


def test_the_demo_went_through_the_prefect_flows(demo_run):
    from storage import WorkspaceStore

    workspace, _ = demo_run
    with WorkspaceStore(workspace) as store:
        run = store.list_runs().row(0, named=True)
        assert run["status"] == "completed" and run["flow_run_id"]
        pipelines = store.list_pipelines(run_id=run["run_id"])
        assert pipelines.height == 9 and pipelines["task_run_id"].null_count() == 0
        assert store.list_scored_files()["flow_run_id"].null_count() == 0
        best = store.get_alias("tablet1")
    # the run report's exports: the YAML, the bundle and the best chain's plots
    plots = workspace / "exports" / "plots" / best
    assert (plots / "predicted_vs_observed.png").stat().st_size > 10_000
    assert (workspace / "exports" / f"{best}.n4a").is_file()


def test_readme_config_example_is_a_valid_config(tmp_path):
    from nirs.config import count_pipelines, load_config, validate

    text = re.search(r"```yaml\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S).group(1)
    (tmp_path / "grid.yaml").write_text(text)
    config = load_config(tmp_path / "grid.yaml")
    assert count_pipelines(config) == 9
    assert len(validate(config)) == 9


def test_a_second_demo_says_what_its_own_run_did(demo_run, tmp_path):
    """Run again, the demo trains and promotes a new chain, which scores the sample files
    anew; it prints that, not the workspace's earlier results."""
    import shutil

    from storage import WorkspaceStore
    from tests.conftest import run_cli

    workspace = tmp_path / "workspace"
    shutil.copytree(demo_run[0], workspace, ignore=shutil.ignore_patterns(".nirsflow"))
    with WorkspaceStore(workspace) as store:
        first = store.get_alias("tablet1")
    done = run_cli("demo", "--workspace", str(workspace))
    assert done.returncode == 0, done.stderr
    with WorkspaceStore(workspace) as store:
        second = store.get_alias("tablet1")
        by_chain = store.list_scored_files("tablet1").group_by("chain_id").len()
    assert second != first and f"Production chain for 'tablet1': {second} (was {first[:8]}" in done.stdout
    assert dict(zip(by_chain["chain_id"], by_chain["len"])) == {first: 2, second: 2}
    assert re.search(r"Inbox: 2 files scored, 212 tablets, RMSE [0-9.]+ against", done.stdout)
    assert len(list((workspace / "outbox" / "tablet1").glob(f"*.{second[:8]}.parquet"))) == 2


def test_the_demo_keeps_the_terminal_quiet_and_prefects_logs_in_a_file(demo_run):
    """Prefect's log lines go to the UI and to workspace/logs/nirsflow.log, not to the
    terminal; hooks and completed task runs log at DEBUG, so they are in neither."""
    workspace, done = demo_run
    assert len(done.stderr.splitlines()) < 15, done.stderr
    assert "Finished in state" not in done.stderr and "Running hook" not in done.stderr
    log = (workspace / "logs" / "nirsflow.log").read_text()
    assert "Flow run 'train" in log and "Finished in state Completed" in log
    assert "Running hook" not in log and "finished running successfully" not in log
    assert "logs/nirsflow.log" in done.stdout  # the demo says where they went


def test_verbose_brings_prefects_logs_back_to_the_terminal(tmp_path):
    from nirs.datasets import load_tablet
    from tests.conftest import run_cli

    train_set, _ = load_tablet(instrument=1)
    import polars as pl

    frame = pl.DataFrame({"sample_id": train_set.sample_ids[:90], "content": train_set.y[:90]}).with_columns(
        [pl.Series(f"{w:g}", train_set.X[:90, j]) for j, w in enumerate(train_set.wavelengths)])
    frame.write_csv(tmp_path / "wheat.csv")
    (tmp_path / "grid.yaml").write_text("pipeline:\n  - SNV\n  - split: {class: KFold, params: {n_splits: 3}}\n"
                                        "  - model: {class: PLSRegression, params: {n_components: 3}}\n")
    args = ["train", str(tmp_path / "grid.yaml"), str(tmp_path / "wheat.csv"), "--target", "content"]
    quiet = run_cli(*args, "-w", str(tmp_path / "quiet"))
    loud = run_cli(*args, "-w", str(tmp_path / "loud"), "-v")
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr + loud.stderr
    assert "Flow run 'train" not in quiet.stderr and "Flow run 'train" in loud.stderr
    assert "RMSECV" in quiet.stdout  # the result, named as a chemometrician names it


def test_the_demo_ends_with_commands_that_can_be_pasted(demo_run):
    import shlex

    from tests.conftest import run_cli

    workspace, done = demo_run
    tail = done.stdout[done.stdout.index("Next (paste any line):"):].splitlines()[1:]
    assert not [line for line in tail if "..." in line or "…" in line]
    commands = [shlex.split(line, comments=True) for line in tail if line.startswith("  nirsflow ")]
    assert [c[1] for c in commands] == ["top", "show", "plot", "score"]
    for command in commands[:3]:  # score would move the inbox; its line parses, which is the point
        ran = run_cli(*command[1:])
        assert ran.returncode == 0, (command, ran.stderr)
    # a lasting server (one a test session started, say): the run's page; a temporary one,
    # gone with the command: how to get a server with the UI
    assert re.fullmatch(r"The training run in the Prefect UI: http://\S+/runs/flow-run/[0-9a-f-]{36}", tail[-1]) \
        or "nirsflow server" in tail[-1], tail[-1]


def test_a_run_link_is_the_ui_address_of_the_flow_run(monkeypatch):
    from flows.server import TEMPORARY_API_MARK, run_link

    monkeypatch.delenv(TEMPORARY_API_MARK, raising=False)
    monkeypatch.delenv("PREFECT_UI_URL", raising=False)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api/")
    assert run_link("abc") == "http://127.0.0.1:4200/runs/flow-run/abc"
    monkeypatch.setenv("PREFECT_UI_URL", "https://prefect.lab.example/")
    assert run_link("abc") == "https://prefect.lab.example/runs/flow-run/abc"
    monkeypatch.setenv(TEMPORARY_API_MARK, "1")
    assert run_link("abc") is None


def test_readme_says_the_spectra_plot_needs_no_data_option():
    text = (ROOT / "README.md").read_text()
    assert "drawn from its training data without any option" in text
    assert "needs `--data`" not in text


def test_readme_shows_the_ui_screenshots_it_links():
    text = (ROOT / "README.md").read_text()
    shots = re.findall(r"\]\((docs/[^)]+\.png)\)", text)
    assert len(shots) >= 2
    for shot in shots:
        path = ROOT / shot
        assert path.is_file() and 10_000 < path.stat().st_size < 200_000, shot  # there, and small
