"""What the Prefect UI shows of a run: a progress artifact while the grid trains, a
leaderboard table and a markdown report at the end. Called from a flow body (artifacts
attach to the current flow run); every call is best-effort: a UI artifact that cannot be
written is logged, never a reason to fail a training run."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

from tasks.progress import Progress  # noqa: F401 - the flows' progress, re-exported

log = logging.getLogger("nirsflow.reporting")


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes only."""
    text = "-".join(p for p in parts if p)
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]+", "-", text.lower())).strip("-")[:100] or "nirsflow"


def rank_value(metric: str | None, value: float | None) -> float:
    """A sort key: smaller is better, missing scores last."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.inf
    # Imported here, not at the top: the score_inbox flow imports this module (Progress),
    # and nirs.metrics brings scikit-learn's metrics (~3 MB) that scoring never uses.
    from nirs.metrics import METRIC_DIRECTION

    direction = METRIC_DIRECTION.get(metric or "", "min")
    return {"min": value, "max": -value, "min_abs": abs(value)}[direction]


def leaderboard_rows(entries) -> list[dict]:
    """Completed pipelines ranked by their cross-validated score, then the failed ones."""
    done = sorted((e for e in entries if e.status == "completed"),
                  key=lambda e: (rank_value(e.metric, e.best_val), rank_value(e.metric, e.best_test), e.key))
    failed = [e for e in entries if e.status != "completed"]
    rows = []
    for rank, e in enumerate(done, start=1):
        rows.append({"rank": rank, "pipeline": e.name, "dataset": e.dataset_name, "status": e.status,
                     "metric": e.metric, "cv_score": _round(e.best_val), "test_score": _round(e.best_test),
                     "fit_ms": e.duration_ms, "chain_id": e.chain_id, "error": ""})
    for e in failed:
        rows.append({"rank": None, "pipeline": e.name, "dataset": e.dataset_name, "status": e.status,
                     "metric": e.metric, "cv_score": None, "test_score": None, "fit_ms": e.duration_ms,
                     "chain_id": None, "error": (e.error or e.store_error or "")[:300]})
    return rows


def _round(value):
    return None if value is None else round(float(value), 5)


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.4g}"


def publish_leaderboard(rows: list[dict], key: str, description: str):
    try:
        from prefect.artifacts import create_table_artifact

        return create_table_artifact(rows or [{"rank": None, "pipeline": "(none)"}], key=key,
                                     description=description)
    except Exception as exc:  # noqa: BLE001
        log.warning("no leaderboard artifact: %s", exc)
        return None


def markdown_report(*, title: str, run_id: str | None, flow_run_name: str, workspace: Path, rows: list[dict],
                    counts: dict, wall_s: float, exports: dict, top: int = 5) -> str:
    done = [r for r in rows if r["status"] == "completed"]
    failed = [r for r in rows if r["status"] != "completed"]
    fit_s = sum((r["fit_ms"] or 0) for r in rows) / 1000
    lines = [f"# {title}", "",
             f"- run `{run_id}` in workspace `{workspace}`, flow run `{flow_run_name}`",
             f"- pipelines: **{counts.get('completed', 0)} completed**, **{counts.get('failed', 0)} failed**, "
             f"{counts.get('planned', 0)} planned; {counts.get('store_errors', 0)} store write errors",
             f"- wall time {wall_s:.1f} s; fitting time {fit_s:.1f} s (summed over folds, in parallel)", ""]
    if done:
        lines += [f"## Best chains (top {min(top, len(done))} by cross-validated score)", "",
                  "| rank | pipeline | dataset | metric | CV | test | chain |",
                  "|---:|---|---|---|---:|---:|---|"]
        for r in done[:top]:
            lines.append(f"| {r['rank']} | {r['pipeline']} | {r['dataset']} | {r['metric']} | "
                         f"{_fmt(r['cv_score'])} | {_fmt(r['test_score'])} | `{r['chain_id']}` |")
        lines.append("")
    if failed:
        lines += ["## Failed pipelines", "", "| pipeline | dataset | error |", "|---|---|---|"]
        for r in failed[:50]:
            error = (r["error"] or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {r['pipeline']} | {r['dataset']} | {error} |")
        if len(failed) > 50:
            lines.append(f"| … | | {len(failed) - 50} more in the store's logs |")
        lines.append("")
    if exports:
        lines += ["## Exports", ""]
        for label, path in exports.items():
            lines.append(f"- {label}: [`{path}`](file://{path})")
        lines.append("")
    return "\n".join(lines)


def publish_markdown(markdown: str, key: str, description: str):
    try:
        from prefect.artifacts import create_markdown_artifact

        return create_markdown_artifact(markdown, key=key, description=description)
    except Exception as exc:  # noqa: BLE001
        log.warning("no markdown artifact: %s", exc)
        return None


def tag_flow_run(tags) -> None:
    """Add tags to the current flow run (the UI filters on them). Task runs are not tagged:
    a tagged task run asks the server for tag concurrency slots, measured at +9 ms per task
    idle and seconds under CPU load on this machine (bench/flow_bench.py)."""
    from prefect.context import FlowRunContext

    from tasks import engine_logs

    engine_logs.install()  # the score_inbox flow defines no run hooks: its chatter is demoted here
    ctx = FlowRunContext.get()
    try:
        merged = sorted(set(ctx.flow_run.tags or []) | set(tags))
        ctx.client.update_flow_run(ctx.flow_run.id, tags=merged)
    except Exception as exc:  # noqa: BLE001 - tags are for the UI only
        log.warning("could not tag the flow run: %s", exc)


def plot_chain(store, chain_id: str, folder: Path, data=None) -> list[Path]:
    """PNGs of a regression chain from its stored "avg" predictions: predicted vs observed
    (1:1 line, RMSE, R²) and residuals; with ``data`` (a SpectraDataset), its spectra
    before and after the chain's preprocessing. Classification chains get none."""
    from nirs import plots

    info = store.get_chain(chain_id)
    if info["task_type"] == "classification":
        return []
    sets = {}
    for partition, label in (("val", "cross-validation"), ("test", "test")):
        rows = store.query_predictions(chain_id=chain_id, fold_id="avg", partition=partition)
        if rows.height:
            arrays = store.get_prediction_arrays(rows["prediction_id"][0])
            sets[label] = (arrays["y_true"], arrays["y_pred"])
    if not sets:
        return []
    title = f"{info['preprocessings'] or '-'} > {info['model_class'].rsplit('.', 1)[-1]}"
    written = [plots.predicted_vs_observed(sets, Path(folder) / "predicted_vs_observed.png", title),
               plots.residuals(sets, Path(folder) / "residuals.png", title)]
    if data is not None:
        after, grid = store.preprocess_chain(chain_id, data.X, data.wavelengths)
        written.append(plots.spectra(data.wavelengths, data.X, after, grid, Path(folder) / "spectra.png", title))
    return written
