"""The run report and the leaderboard rows, as the UI shows them (pure functions; the
flows' tests read the same artifacts back from a real server)."""

from __future__ import annotations

from pathlib import Path

from tasks.leaderboard import pipeline_label, varying_params
from tasks.reporting import markdown_report

SG = {"class": "nirs.operators.SavitzkyGolay", "params": {"window_length": 11, "polyorder": 2, "deriv": 1}}
PLS = {"model": {"class": "sklearn.cross_decomposition.PLSRegression", "params": {"n_components": 8}}}
SPLIT = {"split": {"class": "sklearn.model_selection.KFold", "params": {"n_splits": 5}}}


def test_rows_are_told_apart_by_the_params_that_differ():
    configs = [[SG, SPLIT, PLS], [{**SG, "params": {**SG["params"], "window_length": 15}}, SPLIT, PLS],
               [{"class": "nirs.operators.SNV", "params": {}}, SPLIT,
                {"model": {**PLS["model"], "params": {"n_components": 10}}}]]
    assert varying_params(configs) == ["window_length=11 n_components=8", "window_length=15 n_components=8",
                                       "n_components=10"]
    assert pipeline_label(configs[0]) == "SG > PLS"


def test_the_report_puts_the_best_scores_first_and_exports_as_workspace_paths_with_commands(tmp_path):
    ws = tmp_path / "workspace"
    chain = "f7953b69-5e2b-4194-a81b-8694fc168f2b"
    rows = [{"rank": 1, "pipeline": "0001_SG-PLS", "dataset": "tablet1", "status": "completed", "metric": "rmse",
             "cv_score": 2.459, "test_score": 2.304, "fit_ms": 10, "chain_id": chain, "error": "",
             "config": [SG, SPLIT, PLS]}]
    plots = ws / "exports" / "plots" / chain
    text = markdown_report(title="Training run", run_id="8342630e-8c09-4d74-b4e3-7f433af4e799", flow_run_name="f",
                           workspace=ws, rows=rows, counts={"completed": 1}, wall_s=1.0,
                           exports={f"best chain {chain} (.n4a bundle)": str(ws / "exports" / f"{chain}.n4a"),
                                    "a (PNG)": str(plots / "predicted_vs_observed.png"),
                                    "b (PNG)": str(plots / "residuals.png")})
    lines = text.splitlines()
    assert lines[2].startswith("Best chain `f7953b69`: **RMSECV 2.459**, **RMSEP 2.304**")
    assert "file://" not in text and "](" not in text  # no links a browser will not open from the UI
    assert f"- best chain f7953b69 (.n4a bundle): `exports/{chain}.n4a` — `nirsflow export chain f7953b69 -w {ws}`" \
        in lines
    plot_lines = [line for line in lines if "plots of the best chain" in line]
    assert len(plot_lines) == 1 and f"`exports/plots/{chain}/`" in plot_lines[0]
    assert f"`nirsflow plot f7953b69 -w {ws}`" in plot_lines[0]
    table = lines[lines.index("## Best chains (top 1 by cross-validated score)") + 2]
    assert table.startswith("| # | RMSECV | RMSEP | chain |")
    assert not Path(str(ws)).exists()  # a report writes nothing
