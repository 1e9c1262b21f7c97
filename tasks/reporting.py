"""What the Prefect UI shows of a run: a progress artifact while the grid trains, a
leaderboard table and a markdown report at the end. Called from a flow body (artifacts
attach to the current flow run); every call is best-effort: a UI artifact that cannot be
written is logged, never a reason to fail a training run."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

from tasks.chain_plots import plot_chain  # noqa: F401 - re-exported for the train flow
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
    """Completed pipelines ranked by their cross-validated score, then the failed ones
    (the run summary's form; ``board`` turns them into what tables show)."""
    done = sorted((e for e in entries if e.status == "completed"),
                  key=lambda e: (rank_value(e.metric, e.best_val), rank_value(e.metric, e.best_test), e.key))
    failed = [e for e in entries if e.status != "completed"]
    rows = []
    for rank, e in enumerate(done, start=1):
        rows.append({"rank": rank, "pipeline": e.name, "dataset": e.dataset_name, "status": e.status,
                     "metric": e.metric, "cv_score": _round(e.best_val), "test_score": _round(e.best_test),
                     "fit_ms": e.duration_ms, "chain_id": e.chain_id, "error": "", "config": e.expanded_config})
    for e in failed:
        rows.append({"rank": None, "pipeline": e.name, "dataset": e.dataset_name, "status": e.status,
                     "metric": e.metric, "cv_score": None, "test_score": None, "fit_ms": e.duration_ms,
                     "chain_id": None, "error": (e.error or e.store_error or "")[:300], "config": e.expanded_config})
    return rows


def best_scores(best: dict | None) -> str:
    """``; best RMSECV 2.459, RMSEP 2.304 (chain f7953b69)``, for a run's state message (the
    runs list shows it); empty without a best pipeline."""
    from nirs.metrics import score_name

    if not best or best.get("cv_score") is None:
        return ""
    test = "" if best.get("test_score") is None else f", {score_name(best['metric'], 'test')} {best['test_score']:.4g}"
    return f"; best {score_name(best['metric'], 'val')} {best['cv_score']:.4g}{test} (chain {best['chain_id'][:8]})"


def board(rows: list[dict]) -> list[dict]:
    """``leaderboard_rows`` as ``tasks.leaderboard`` rows (rank, RMSECV, RMSEP, chain first)."""
    from tasks.leaderboard import board_row

    return [board_row(rank=r["rank"], metric=r["metric"], cv=r["cv_score"], test=r["test_score"],
                      chain_id=r["chain_id"], expanded_config=r.get("config"), dataset=r["dataset"],
                      status=r["status"], error=(r["error"] or "")[:120]) for r in rows]


def _round(value):
    return None if value is None else round(float(value), 5)


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.4g}"


def publish_leaderboard(rows: list[dict], key: str, description: str):
    from tasks.leaderboard import records

    try:
        from prefect.artifacts import create_table_artifact

        return create_table_artifact(records(board(rows)) or [{"#": None, "pipeline": "(none)"}], key=key,
                                     description=description)
    except Exception as exc:  # noqa: BLE001
        log.warning("no leaderboard artifact: %s", exc)
        return None


def markdown_report(*, title: str, run_id: str | None, flow_run_name: str, workspace: Path, rows: list[dict],
                    counts: dict, wall_s: float, exports: dict, top: int = 5) -> str:
    from nirs.metrics import score_name
    from tasks.leaderboard import markdown

    done = [r for r in rows if r["status"] == "completed"]
    failed = [r for r in rows if r["status"] != "completed"]
    fit_s = sum((r["fit_ms"] or 0) for r in rows) / 1000
    lines = [f"# {title}", ""]
    if done:
        best = done[0]
        named = ", ".join(f"**{score_name(best['metric'], part)} {_fmt(value)}**" for part, value in
                          (("val", best["cv_score"]), ("test", best["test_score"])) if value is not None)
        lines += [f"Best chain `{best['chain_id'][:8]}`: {named} "
                  f"(`nirsflow show {best['chain_id'][:8]} -w {workspace}`)", ""]
    lines += [f"- pipelines: **{counts.get('completed', 0)} completed**, **{counts.get('failed', 0)} failed**, "
              f"{counts.get('planned', 0)} planned; {counts.get('store_errors', 0)} store write errors",
              f"- wall time {wall_s:.1f} s; fitting time {fit_s:.1f} s (summed over folds, in parallel)",
              f"- run `{(run_id or '')[:8]}` in workspace `{workspace}`, flow run `{flow_run_name}`", ""]
    if done:
        lines += [f"## Best chains (top {min(top, len(done))} by cross-validated score)", ""]
        lines += markdown(board(done[:top]))
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
        lines += ["## Exports", "", "Paths relative to the workspace; the command that opens or writes each "
                  "again:", ""]
        plots = {label: path for label, path in exports.items() if str(path).endswith(".png")}
        for label, path in exports.items():
            if label not in plots:
                lines.append(f"- {_short_ids(label)}: `{_relative(path, workspace)}` — "
                             f"`{_command_for(path, workspace)}`")
        if plots:  # one line for a chain's figures: they share a folder and a command
            first = Path(next(iter(plots.values())))
            names = ", ".join(Path(p).name for p in plots.values())
            lines.append(f"- plots of the best chain ({names}): `{_relative(first.parent, workspace)}/` — "
                         f"`{_command_for(first, workspace)}`")
        lines.append("")
    return "\n".join(lines)


def _short_ids(text: str) -> str:
    """Whole ids (uuid4) in a label cut to the 8 digits every command accepts."""
    return re.sub(r"\b([0-9a-f]{8})-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", r"\1", text)


def _relative(path, workspace: Path) -> str:
    try:
        return str(Path(path).relative_to(workspace))
    except ValueError:
        return str(path)


def _command_for(path, workspace: Path) -> str:
    """The command that writes (or shows) an export again: a browser cannot open file://
    links from the UI, a terminal can run this."""
    path = Path(path)
    w = f" -w {workspace}"
    if path.suffix == ".n4a":
        return f"nirsflow export chain {path.stem[:8]}{w}"
    if path.suffix in (".yaml", ".yml"):
        return f"nirsflow export run {path.stem[:8]}{w}"
    if path.suffix == ".png":
        return f"nirsflow plot {path.parent.name[:8]}{w}"
    return f"ls {path}"


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
        ctx.flow_run.tags = merged  # a later call merges with these, not with the tags at the start
    except Exception as exc:  # noqa: BLE001 - tags are for the UI only
        log.warning("could not tag the flow run: %s", exc)
