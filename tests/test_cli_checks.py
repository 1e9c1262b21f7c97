"""The command line as a lab meets it on day one: mistakes refused in one line before
Prefect starts, ids by their first 8 digits or DATASET:ALIAS in every
command, promotion to the right dataset only, one inbox default, results readable by
other accounts, and check's view of what an interrupted save leaves."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time

import polars as pl
import pytest

from storage import WorkspaceStore
from tests.conftest import ROOT, run_cli

NO_PREFECT = "temporary Prefect server"  # what a command prints when it starts one


@pytest.fixture(scope="module")
def ws(demo_run, tmp_path_factory):
    workspace = tmp_path_factory.mktemp("cli-checks") / "workspace"
    shutil.copytree(demo_run[0], workspace, ignore=shutil.ignore_patterns(".nirsflow"))
    return workspace


@pytest.fixture(scope="module")
def wheat(tmp_path_factory):
    """Reference files as a lab has them: a target column, one with a text cell in it."""
    from nirs.datasets import load_tablet

    folder = tmp_path_factory.mktemp("wheat")
    train, _ = load_tablet(instrument=1)
    frame = pl.DataFrame({"sample_id": train.sample_ids[:120], "protein": train.y[:120]}).with_columns(
        [pl.Series(f"{w:g}", train.X[:120, j]) for j, w in enumerate(train.wavelengths)])
    frame.write_csv(folder / "wheat.csv")
    text = frame.with_columns(pl.col("protein").cast(pl.String))
    text = text.with_columns(pl.when(pl.int_range(pl.len()) == 2).then(pl.lit("n/a"))
                             .otherwise(pl.col("protein")).alias("protein"))
    text.write_csv(folder / "wheat-text.csv")
    (folder / "grid.yaml").write_text("pipeline:\n  - SNV\n  - split: {class: KFold, params: {n_splits: 3}}\n"
                                      "  - model: {class: PLSRegression, params: {n_components: 4}}\n")
    (folder / "even.yaml").write_text("pipeline:\n  - {class: SavitzkyGolay, params: {window_length: 4}}\n"
                                      "  - model: PLSRegression\n")
    (folder / "typo.yaml").write_text("pipeline:\n  - SNVV\n  - model: PLSRegression\n")
    (folder / "param.yaml").write_text("pipeline:\n  - SNV\n  - model: {class: PLSRegression, params: "
                                       "{n_component: 4}}\n")
    return folder


def _runs(workspace) -> int:
    if not (workspace / "store.duckdb").exists():
        return 0
    with WorkspaceStore(workspace) as store:
        return store.list_runs().height


@pytest.mark.parametrize("config,data,extra,message", [
    ("even.yaml", "wheat.csv", ["--target", "protein"], "step 1: SavitzkyGolay: window_length must be odd, got 4"),
    ("typo.yaml", "wheat.csv", ["--target", "protein"], "unknown class 'SNVV' (did you mean 'SNV'?)"),
    ("param.yaml", "wheat.csv", ["--target", "protein"], "has no parameter 'n_component' (did you mean "
                                                         "'n_components'?)"),
    ("grid.yaml", "wheat.csv", ["--target", "protien"], "no target column 'protien' (did you mean 'protein'?"),
    ("grid.yaml", "wheat-text.csv", ["--target", "protein"], "row 3, column 'protein': regression target is not a "
                                                             "number: 'n/a'"),
    ("snv-pls", "tablet1", [], "no template 'snv-pls' in the library of workspace"),
])
def test_mistakes_are_refused_in_one_line_before_prefect_starts(ws, wheat, tmp_path, config, data, extra, message):
    target = ws if config == "snv-pls" else tmp_path / "ws"
    before = _runs(target)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # Prefect would start a server
    config_arg = config if config == "snv-pls" else str(wheat / config)
    data_arg = data if data == "tablet1" else str(wheat / data)
    done = subprocess.run([sys.executable, "-m", "flows.cli", "train", config_arg, data_arg, *extra, "-w", str(target)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert message in lines[0], lines[0]
    assert NO_PREFECT not in done.stderr and "Traceback" not in done.stderr
    assert _runs(target) == before  # no run recorded


def test_chains_are_named_by_8_digits_or_dataset_alias_everywhere(ws, tmp_path):
    with WorkspaceStore(ws) as store:
        production = store.get_alias("tablet1")
        run_id = store.list_runs()["run_id"][0]
    short = production[:8]
    for args in (["show", short], ["show", "tablet1:production"], ["export", "chain", short, "--out",
                 str(tmp_path / "m.n4a")], ["plot", short, "--out", str(tmp_path / "plots")],
                 ["export", "run", run_id[:8], "--out", str(tmp_path / "run.yaml")]):
        done = run_cli(*args, "-w", str(ws))
        assert done.returncode == 0, (args, done.stderr)
    assert json.loads(run_cli("show", short, "-w", str(ws), "--json").stdout)["chain_id"] == production
    assert (tmp_path / "m.n4a").is_file() and (tmp_path / "plots" / "residuals.png").is_file()
    top = run_cli("top", "-n", "1", "-w", str(ws))
    assert short in top.stdout  # what tables show is what commands accept


def test_a_prefix_of_two_chains_says_so_and_lists_them(ws, tmp_path):
    workspace = tmp_path / "ws"
    shutil.copytree(ws, workspace)
    with WorkspaceStore(workspace) as store:
        chain = store.get_chain(store.get_alias("tablet1"))
        fields = {k: chain[k] for k in ("steps", "model_step_idx", "model_class", "preprocessings", "fold_strategy",
                                        "fold_artifacts", "shared_artifacts")}
        seen = {c[:4]: c for c in store.sql("SELECT chain_id FROM chains")["chain_id"]}
        with store.batch():  # copies of a chain until two share their first 4 digits
            while (new := store.save_chain(chain["pipeline_id"], **fields))[:4] not in seen:
                seen[new[:4]] = new
    done = run_cli("export", "chain", new[:4], "-w", str(workspace))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "is the start of more than one chain id" in lines[0] and new in lines[0] and seen[new[:4]] in lines[0]


def test_promote_refuses_a_dataset_the_chain_was_not_trained_on_unless_forced(ws, tmp_path):
    workspace = tmp_path / "ws"
    shutil.copytree(ws, workspace)
    with WorkspaceStore(workspace) as store:
        chain = store.get_alias("tablet1")
    typo = run_cli("promote", "wheet", chain[:8], "-w", str(workspace))
    assert typo.returncode == 1 and "was trained on dataset 'tablet1', not 'wheet'" in typo.stderr
    assert "no dataset 'wheet' in this workspace" in typo.stderr and "--force" in typo.stderr
    with WorkspaceStore(workspace) as store:
        assert store.list_aliases()["dataset_name"].to_list() == ["tablet1"]
    forced = run_cli("promote", "moisture", chain[:8], "--force", "-w", str(workspace))
    assert forced.returncode == 0 and f"moisture/production -> {chain}" in forced.stdout


def test_score_uses_the_workspace_inbox_says_where_results_went_and_follows_the_umask(ws, tmp_path):
    from nirs.datasets import load_tablet

    workspace = tmp_path / "ws"
    shutil.copytree(ws, workspace)
    _, test = load_tablet(instrument=1)
    folder = workspace / "inbox" / "tablet1"
    frame = pl.DataFrame({"sample_id": [f"s{i}" for i in range(4)]}).with_columns(
        [pl.Series(f"{w:g}", test.X[:4, j]) for j, w in enumerate(test.wavelengths)])
    frame.write_csv(folder / "good.csv")
    shutil.copy(folder / "good.csv", folder / "again.csv")
    done = subprocess.run([sys.executable, "-m", "flows.cli", "score", "-w", str(workspace)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, umask=0o027)
    assert done.returncode == 0, done.stderr
    assert f"results in {workspace / 'outbox'}, inputs moved to {workspace / 'processed'}" in done.stdout
    (scored,) = [line for line in done.stdout.splitlines() if "scored tablet1/" in line]
    result = scored.rsplit("-> ", 1)[1]
    duplicate_note = next((workspace / "processed" / "tablet1").glob("*.duplicate.json"))
    for written in (result, duplicate_note):  # what other accounts (a LIMS) read: 0666 less the umask
        assert stat.S_IMODE(os.stat(written).st_mode) == 0o640, written

    (folder / "bad.csv").write_text("sample_id,600\na,oops\n")
    nothing = run_cli("score", "-w", str(workspace))
    assert nothing.returncode == 1 and "rejected tablet1/bad.csv" in nothing.stdout


def test_check_names_young_orphans_as_expected_and_what_removes_them(ws, tmp_path):
    workspace = tmp_path / "ws"
    shutil.copytree(ws, workspace)
    orphan = workspace / "artifacts" / "ee" / ("ee" * 32 + ".joblib")
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"written by a save that never committed")
    young = run_cli("check", "-w", str(workspace))
    assert young.returncode == 0, young.stdout
    assert "1 young orphan files" in young.stdout and str(orphan) in young.stdout and "nirsflow gc" in young.stdout
    old = time.time() - 2 * 3600
    os.utime(orphan, (old, old))
    aged = run_cli("check", "-w", str(workspace))
    assert aged.returncode == 1 and f"orphan {orphan}" in aged.stdout


def test_every_option_and_argument_of_every_command_says_what_it_is():
    import typer.main

    from flows.cli import app

    missing = []

    def walk(command, prefix=""):
        for name, sub in getattr(command, "commands", {}).items():
            if hasattr(sub, "commands"):
                walk(sub, f"{prefix}{name} ")
            else:
                missing.extend(f"{prefix}{name} {p.name}" for p in sub.params if not getattr(p, "help", None))

    walk(typer.main.get_command(app))
    assert not missing


def test_server_on_a_busy_port_says_so_before_announcing_an_address(tmp_path):
    import socket

    from tests.conftest import run_cli

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cli("server", "--port", str(port), "--home", str(tmp_path / "home"), timeout=60)
    assert done.returncode == 1 and f"port {port}" in done.stderr and "in use" in done.stderr
    assert "Prefect server with its UI" not in done.stdout
