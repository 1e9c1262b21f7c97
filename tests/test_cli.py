"""Each CLI command, run as a subprocess the way a user runs it, on the demo's workspace."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
import yaml

from tests.conftest import copy_fitted_by, run_cli


@pytest.fixture(scope="module")
def ws(demo_run, tmp_path_factory):
    """A private copy of the demo workspace (some commands change it)."""
    workspace = tmp_path_factory.mktemp("cli") / "workspace"
    shutil.copytree(demo_run[0], workspace, ignore=shutil.ignore_patterns(".nirsflow"))
    return str(workspace)


def _json(*args):
    done = run_cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_runs_and_top(ws):
    runs = _json("runs", "-w", ws)
    assert [r["status"] for r in runs] == ["completed"] and runs[0]["name"].startswith("demo")
    top = _json("top", "-n", "3", "-w", ws)
    assert len(top) == 3 and {t["fold_id"] for t in top} == {"avg"}
    assert top[0]["val_score"] <= top[1]["val_score"] <= top[2]["val_score"]   # rmse: lower first
    table = run_cli("top", "-n", "2", "-w", ws)
    assert "PLS" in table.stdout and "RMSECV" in table.stdout and table.returncode == 0


def test_show_run_pipeline_and_chain(ws):
    run_id = _json("runs", "-w", ws)[0]["run_id"]
    shown = run_cli("show", run_id, "-w", ws)
    assert shown.returncode == 0 and "pipelines" in shown.stdout and "completed" in shown.stdout
    chain_id = _json("top", "-n", "1", "-w", ws)[0]["chain_id"]
    chain = _json("show", chain_id, "-w", ws)
    assert chain["kind"] == "chain" and chain["n_features"] == 597


def test_replay_a_file_with_the_production_alias(ws, tmp_path):
    from nirs.datasets import load_tablet

    _, test = load_tablet(instrument=1)
    frame = pl.DataFrame({"sample_id": [f"t{i}" for i in range(5)]}).with_columns(
        [pl.Series(f"{w:g}", test.X[:5, j]) for j, w in enumerate(test.wavelengths)])
    source = tmp_path / "five.csv"
    frame.write_csv(source)
    out = tmp_path / "pred.parquet"
    done = run_cli("replay", "tablet1:production", str(source), "-w", ws, "--out", str(out))
    assert done.returncode == 0, done.stderr
    predictions = pl.read_parquet(out)
    assert predictions["sample_id"].to_list() == [f"t{i}" for i in range(5)]
    assert np.all(np.abs(predictions["prediction"].to_numpy() - test.y[:5]) < 10)
    # the outlier checks, as replay_chain(..., diagnostics=True) gives them
    assert predictions.columns[-5:] == ["t2", "q", "t2_ratio", "q_ratio", "flag"]
    assert set(predictions["flag"]) <= {"ok", "t2", "q", "both", "y_range"} and predictions["t2"].min() > 0


def test_replaying_a_chain_fitted_under_another_scikit_learn_warns_in_one_line(ws, tmp_path):
    from nirs.datasets import load_tablet
    from storage import WorkspaceStore

    with WorkspaceStore(ws) as store:  # the production chain, as if fitted by an older scikit-learn
        old = copy_fitted_by(store, store.get_alias("tablet1", "production"), "0.24.2")
    _, test = load_tablet(instrument=1)
    frame = pl.DataFrame({"sample_id": ["a", "b"]}).with_columns(
        [pl.Series(f"{w:g}", test.X[:2, j]) for j, w in enumerate(test.wavelengths)])
    frame.write_csv(tmp_path / "two.csv")
    done = run_cli("replay", old, str(tmp_path / "two.csv"), "-w", ws, "--out", str(tmp_path / "p.parquet"))
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "0.24.2" in line]
    assert len(warned) == 1 and warned[0].startswith(f"warning: chain {old} was fitted with scikit-learn 0.24.2")
    assert "ChainVersionWarning" not in done.stderr and pl.read_parquet(tmp_path / "p.parquet").height == 2


def test_promote_moves_the_alias_and_gc_vacuum_check(ws):
    chains = [t["chain_id"] for t in _json("top", "-n", "2", "-w", ws)]
    done = run_cli("promote", "tablet1", chains[1], "-w", ws, "--reason", "cli test")
    assert done.returncode == 0 and f"-> {chains[1]}" in done.stdout and "(was" in done.stdout
    back = _json("promote", "tablet1", chains[0], "-w", ws)
    assert back == {"dataset": "tablet1", "alias": "production", "chain_id": chains[0], "previous": chains[1]}
    gc = _json("gc", "-w", ws, "--dry-run")
    assert gc["dry_run"] is True and gc["artifacts"] == []
    vac = _json("vacuum", "-w", ws)
    assert vac["bytes_after"] > 0
    check = _json("check", "-w", ws)
    assert check["ok"] is True and check["artifacts_checked"] > 0 and check["artifacts_loaded"] is None
    loaded = _json("check", "-w", ws, "--load")  # every chain's artifacts unpickled: all load here
    assert loaded["ok"] is True and loaded["unloadable"] == [] and 0 < loaded["artifacts_loaded"] <= check["artifacts_checked"]
    assert all(entry["fitted"] == "0.24.2" for entry in loaded["other_versions"])  # only what another test staged
    text = run_cli("check", "-w", ws, "--load")
    assert text.returncode == 0 and f"{loaded['artifacts_loaded']} artifacts loaded: 0 cannot be loaded here" in text.stdout


def test_check_fails_on_a_damaged_workspace(ws, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(ws, broken)
    victim = next((broken / "artifacts").rglob("*.joblib"))
    victim.write_bytes(b"rot")
    done = run_cli("check", "-w", str(broken))
    assert done.returncode == 1 and "1 corrupt" in done.stdout and str(victim.name) in done.stdout


def test_exports(ws, tmp_path):
    run_id = _json("runs", "-w", ws)[0]["run_id"]
    chain_id = _json("top", "-n", "1", "-w", ws)[0]["chain_id"]
    bundle = _json("export", "chain", chain_id, "-w", ws, "--out", str(tmp_path / "m.n4a"))
    assert bundle == {"path": str(tmp_path / "m.n4a")} and (tmp_path / "m.n4a").stat().st_size > 0
    report = run_cli("export", "run", run_id, "-w", ws, "--out", str(tmp_path / "run.yaml"))
    assert report.returncode == 0 and yaml.safe_load((tmp_path / "run.yaml").read_text())["run"]["run_id"] == run_id
    preds = run_cli("export", "predictions", "-w", ws, "--out", str(tmp_path / "p.parquet"), "--partition", "test", "--arrays")
    assert preds.returncode == 0
    frame = pl.read_parquet(tmp_path / "p.parquet")
    assert set(frame["partition"]) == {"test"} and len(frame["y_pred"][0]) == 212


def test_plot_writes_pngs_that_show_something(ws, tmp_path):
    from PIL import Image

    done = run_cli("plot", "tablet1:production", "-w", ws, "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    for name in ("predicted_vs_observed.png", "residuals.png"):
        image = Image.open(tmp_path / name).convert("L")
        assert image.size[0] >= 500 and image.size[1] >= 300
        pixels = np.asarray(image)
        assert pixels.std() > 10 and (pixels < 128).mean() > 0.01   # not blank: marks and text


@pytest.mark.parametrize("args,message", [
    (["runs", "-w", "/nonexistent/ws"], "no workspace at"),
    (["show", "nope"], "is not a run, pipeline or chain id"),
    (["replay", "ghost-chain", "missing.csv"], "missing.csv"),
    (["promote", "tablet1", "ghost-chain"], "unknown chain id 'ghost-chain'"),
    (["replay", "tablet1:staging", "README.md"], None),
])
def test_errors_are_one_line_with_a_nonzero_exit(ws, args, message):
    if "-w" not in args:
        args = args + ["-w", ws]
    done = run_cli(*args)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr
    if message:
        assert message in lines[0]


def test_train_a_config_file_on_a_data_file_through_the_flow(tmp_path):
    from nirs.datasets import load_tablet

    train_set, _ = load_tablet(instrument=1)
    frame = pl.DataFrame({"sample_id": train_set.sample_ids[:150], "content": train_set.y[:150]}).with_columns(
        [pl.Series(f"{w:g}", train_set.X[:150, j]) for j, w in enumerate(train_set.wavelengths)])
    data = tmp_path / "wheat.csv"
    frame.write_csv(data)
    config = tmp_path / "grid.yaml"
    config.write_text("pipeline:\n  - SNV\n  - split: {class: KFold, params: {n_splits: 3}}\n"
                      "  - model: {class: PLSRegression, params: {n_components: {_range_: [2, 4, 2]}}}\n")
    ws = tmp_path / "ws"
    # --processes: the fits in two loky worker processes
    done = run_cli("train", str(config), str(data), "--target", "content", "-w", str(ws), "--json",
                   "--processes", "2")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["counts"]["completed"] == 2 and summary["best"]["dataset"] == "wheat"
    runs = _json("runs", "-w", str(ws))
    assert runs[0]["status"] == "completed"
    missing = run_cli("train", str(config), str(data), "-w", str(ws))
    assert missing.returncode == 1 and "give --target" in missing.stderr
    unknown = run_cli("train", str(config), str(data), "--target", "content", "-w", str(ws), "--executor", "spark://x")
    assert unknown.returncode == 1 and "executor 'spark://x': expected 'threads', 'loky'" in unknown.stderr


def test_score_an_inbox_and_import_a_bundle(ws, tmp_path):
    from nirs.datasets import load_tablet

    _, test = load_tablet(instrument=1)
    inbox = tmp_path / "inbox"
    (inbox / "tablet1").mkdir(parents=True)
    pl.DataFrame({"sample_id": [f"s{i}" for i in range(4)]}).with_columns(
        [pl.Series(f"{w:g}", test.X[:4, j]) for j, w in enumerate(test.wavelengths)]
    ).write_csv(inbox / "tablet1" / "good.csv")
    (inbox / "tablet1" / "bad.csv").write_text("sample_id,600,602\na,1.0,oops\n")
    done = run_cli("score", str(inbox), "-w", ws, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["counts"]["scored"] == 1 and summary["counts"]["rejected"] == 1
    assert (tmp_path / "inbox" / "tablet1").exists() and not list((inbox / "tablet1").glob("*.csv"))

    chain_id = _json("top", "-n", "1", "-w", ws)[0]["chain_id"]
    bundle = tmp_path / "best.n4a"
    assert run_cli("export", "chain", chain_id, "-w", ws, "--out", str(bundle)).returncode == 0
    other = tmp_path / "other-ws"
    refused = run_cli("import", str(bundle), "-w", str(other))
    assert refused.returncode == 1 and "pass --trusted" in refused.stderr
    assert "trusted=True" not in refused.stderr and "key=" not in refused.stderr  # options, not Python words
    imported = run_cli("import", str(bundle), "-w", str(other), "--trusted", "--json")
    assert imported.returncode == 0, imported.stderr
    new_chain = json.loads(imported.stdout)["chain_id"]
    assert _json("show", new_chain, "-w", str(other))["kind"] == "chain"
    # imported once, whatever the number of imports, and ranked with the scores it had at home
    again = run_cli("import", str(bundle), "-w", str(other), "--trusted", "--json")
    assert json.loads(again.stdout)["chain_id"] == new_chain
    home, there = _json("top", "-n", "1", "-w", ws)[0], _json("top", "-w", str(other))
    assert [row["chain_id"] for row in there] == [new_chain]
    assert there[0]["val_score"] == home["val_score"] and there[0]["test_score"] == home["test_score"]


def test_serve_check_lists_the_deployments_of_the_config(ws):
    done = run_cli("serve", "--check", "-w", ws)
    assert done.returncode == 0, done.stderr
    for name in ("score-inbox", "gc", "vacuum", "reconcile"):
        assert name in done.stdout


def test_top_tells_rows_apart_in_100_columns(ws):
    table = run_cli("top", "-n", "9", "-w", ws)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100
    header = next(line for line in lines if "RMSECV" in line)
    assert header.split()[:4] == ["#", "RMSECV", "RMSEP", "chain"]  # rank, scores and id first
    rows = [line for line in lines if line.strip()[:1].isdigit()]
    assert len(rows) == 9 and len({line.split()[3] for line in rows}) == 9
    assert all(len(line.split()[3]) == 8 for line in rows)  # short ids, whole on one line
    # what the rows differ by: the preprocessing and the number of components
    assert {r.split("n_components=")[1].split()[0] for r in rows} == {"6", "8", "10"}
    assert sum("tablet1:production" in line for line in rows) == 1  # the production marker
    top = _json("top", "-n", "2", "-w", ws)
    assert top[0]["rank"] == 1 and top[0]["short_id"] == top[0]["chain_id"][:8]
    assert top[0]["params"]["n_components"] in (6, 8, 10) and top[0]["run"].startswith("demo")


def test_runs_names_the_valid_statuses_and_json_has_the_flow_run(ws):
    bogus = run_cli("runs", "--status", "bogus", "-w", ws)
    assert bogus.returncode == 1 and "completed, failed" in bogus.stderr
    runs = _json("runs", "-w", ws)
    assert runs[0]["flow_run_id"]


def test_show_chain_reads_as_a_calibration_report(ws):
    shown = run_cli("show", "tablet1:production", "-w", ws)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "model PLSRegression(n_components=" in text and "KFold(n_splits=5" in text
    assert "600–1792 nm" in text and "scikit-learn" in text and "aliases      tablet1:production" in text
    header = next(line for line in text.splitlines() if "RPD" in line).split()
    assert header == ["n", "RMSE", "R²", "bias", "SEP", "RPD", "slope"]
    cv = next(line for line in text.splitlines() if line.strip().startswith("RMSECV")).split()
    test = next(line for line in text.splitlines() if line.strip().startswith("RMSEP")).split()
    assert cv[1] == "400" and test[1] == "212" and 1.5 < float(cv[2]) < 3.5 and 0.9 < float(test[3]) <= 1
    chain = _json("show", "tablet1:production", "-w", ws)
    assert chain["aliases"] == ["tablet1:production"] and chain["scores"]["test"]["n"] == 212


def test_plots_name_the_analyte_its_unit_and_the_chain(ws):
    """Read back from the figures before they are saved: what a chemometrician looks for."""
    from storage import WorkspaceStore
    from tasks.chain_plots import chain_figures

    with WorkspaceStore(ws) as store:
        chain_id = store.resolve_chain("tablet1:production")
        figures = chain_figures(store, chain_id, unit="mg/tablet")
        steps = store.spectral_steps_of_chain(chain_id)
    ax = figures["predicted_vs_observed"].axes[0]
    assert ax.get_xlabel() == "Observed active ingredient (mg/tablet)"
    assert ax.get_ylabel() == "Predicted active ingredient (mg/tablet)"
    title = ax.get_title()
    assert chain_id[:8] in title and "tablet1" in title and "n_components=" in title and "PLS" in title
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("cross-validation: RMSECV ") and "n 400" in legend[0]
    assert legend[1].startswith("test: RMSEP ") and "n 212" in legend[1]
    assert all(word in legend[1] for word in ("bias", "slope", "R²"))
    top, bottom = figures["spectra"].axes  # no --data: the training spectra of the built-in set
    assert top.get_xlabel() == bottom.get_xlabel() == "Wavelength (nm)"
    assert top.get_ylabel() == "Raw absorbance (AU)" and steps and "StandardScaler" not in steps
    assert bottom.get_title().startswith(f"After {' + '.join(steps)}")
    # the spectral preprocessing only: SNV-corrected spectra have mean 0 and sd 1 each,
    # which autoscaling per wavelength would have destroyed
    lines = np.array([line.get_ydata() for line in bottom.get_lines()])
    if steps == ["SNV"]:
        assert np.allclose(lines.mean(axis=1), 0, atol=1e-9) and np.allclose(lines.std(axis=1), 1, atol=1e-6)
    for figure in figures.values():
        import matplotlib.pyplot as plt

        plt.close(figure)


def test_every_json_output_parses(ws, tmp_path):
    """Each command that takes --json prints one JSON document on stdout, nothing else."""
    from nirs.datasets import load_tablet

    _, test = load_tablet(instrument=1)
    spectra = tmp_path / "three.csv"
    pl.DataFrame({"sample_id": ["a", "b", "c"]}).with_columns(
        [pl.Series(f"{w:g}", test.X[:3, j]) for j, w in enumerate(test.wavelengths)]).write_csv(spectra)
    run_id = _json("runs", "-w", ws)[0]["run_id"]
    commands = [["runs"], ["top", "-n", "2"], ["show", "tablet1:production"], ["show", run_id[:8]],
                ["replay", "tablet1:production", str(spectra)], ["plot", "tablet1:production", "--out", str(tmp_path)],
                ["export", "run", run_id[:8], "--out", str(tmp_path / "run.yaml")],
                ["export", "chain", "tablet1:production", "--out", str(tmp_path / "c.n4a")],
                ["export", "predictions", "--out", str(tmp_path / "p.parquet")],
                ["gc", "--dry-run"], ["check"], ["promote", "tablet1", "tablet1:production"]]
    for command in commands:
        payload = _json(*command, "-w", ws)
        assert payload, command
    plotted = _json("plot", "tablet1:production", "--out", str(tmp_path), "-w", ws)
    assert {p.rsplit("/", 1)[-1] for p in plotted["files"]} == {"predicted_vs_observed.png", "residuals.png",
                                                                 "spectra.png"}
