"""Leaderboards a chemist reads at a glance, in the terminal (``demo``, ``top``), in the UI's
table artifact and in the markdown report: rank, the scores under their chemometric names
(RMSECV, RMSEP), the chain's short id (8 hex digits, accepted by every command), then what
tells the rows apart: the pipeline (short names) and the parameters that differ between
rows (n_components, window_length, ...), the run when rows come from several runs, and the
aliases (production) that point at a chain. The terminal table fits in 100 columns.

Rows are plain dicts (``board_row``), built from a run's pipeline entries or from the
store's predictions, so one formatting serves all five places."""

from __future__ import annotations

import json
from typing import Any, Iterable

from nirs.metrics import score_name

WIDTH = 100
#: how a chemist writes the usual steps; any other class keeps its own short name
_SHORT = {"SavitzkyGolay": "SG", "StandardScaler": "autoscale", "PLSRegression": "PLS", "MinMaxScaler": "minmax",
          "RandomForestRegressor": "RF", "RandomForestClassifier": "RF", "KFold": "KFold"}
_SKIPPED = ("split",)  # the cross-validation scheme is the same for every row worth ranking


def config_steps(expanded_config: Any) -> list[tuple[str, str, dict]]:
    """(role, short class name, params) of each step of an expanded pipeline config."""
    if isinstance(expanded_config, str):
        expanded_config = json.loads(expanded_config)
    steps = []
    for step in expanded_config or []:
        if isinstance(step, str):
            steps.append(("step", step.rsplit(".", 1)[-1], {}))
        elif isinstance(step, dict) and "class" in step:
            steps.append(("step", str(step["class"]).rsplit(".", 1)[-1], dict(step.get("params") or {})))
        elif isinstance(step, dict):
            for role, inner in step.items():
                if isinstance(inner, dict) and "class" in inner:
                    steps.append((role, str(inner["class"]).rsplit(".", 1)[-1], dict(inner.get("params") or {})))
                elif isinstance(inner, str):
                    steps.append((role, inner.rsplit(".", 1)[-1], {}))
    return steps


def pipeline_label(expanded_config: Any) -> str:
    """``SNV > autoscale > PLS``: the steps in order, without the cross-validation."""
    return " > ".join(_SHORT.get(name, name) for role, name, _ in config_steps(expanded_config) if role not in _SKIPPED)


def _flat_params(expanded_config: Any) -> dict[str, Any]:
    return {f"{name}.{key}": value for role, name, params in config_steps(expanded_config) if role not in _SKIPPED
            for key, value in params.items()}


def varying_params(configs: list[Any]) -> list[str]:
    """For each config, ``n_components=8 window_length=11``: the parameters whose value
    differs between the configs that have them (a parameter of a step only some rows have
    is told apart by the pipeline label already). A parameter name shared by two steps
    keeps its step's name (``SG.deriv=1``)."""
    flats = [_flat_params(c) for c in configs]
    values: dict[str, set] = {}
    for flat in flats:
        for key, value in flat.items():
            values.setdefault(key, set()).add(json.dumps(value, sort_keys=True, default=str))
    varying = [key for key, seen in values.items() if len(seen) > 1]
    names = [key.split(".", 1)[1] for key in varying]
    shown = {key: (key.split(".", 1)[1] if names.count(key.split(".", 1)[1]) == 1
                   else f"{_SHORT.get(key.split('.')[0], key.split('.')[0])}.{key.split('.', 1)[1]}")
             for key in varying}
    return [" ".join(f"{shown[k]}={_value(flat[k])}" for k in varying if k in flat) for flat in flats]


def all_params(expanded_config: Any) -> dict[str, Any]:
    """Every parameter of the steps (JSON output): ``{"n_components": 10, "SG.deriv": 1}``,
    a name qualified by its step only where two steps share it."""
    flat = _flat_params(expanded_config)
    names = [key.split(".", 1)[1] for key in flat]
    return {(key.split(".", 1)[1] if names.count(key.split(".", 1)[1]) == 1 else key): value
            for key, value in flat.items()}


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def board_row(*, rank, metric, cv, test, chain_id, expanded_config, dataset="", run="", aliases=(),
              status="completed", error="") -> dict:
    return {"rank": rank, "metric": metric, "cv": cv, "test": test, "chain_id": chain_id or "",
            "pipeline": pipeline_label(expanded_config), "config": expanded_config, "dataset": dataset,
            "run": run, "aliases": ", ".join(aliases), "status": status, "error": error}


def columns(rows: list[dict]) -> list[tuple[str, str]]:
    """(key, header) of the columns worth showing, scores named after the rows' metric;
    dataset and run only when they differ between rows, aliases only when there are some."""
    metric = next((r["metric"] for r in rows if r["metric"]), "rmse")
    cols = [("rank", "#"), ("cv", score_name(metric, "val")), ("test", score_name(metric, "test")),
            ("short_id", "chain"), ("pipeline", "pipeline"), ("params", "params")]
    if len({r["dataset"] for r in rows}) > 1:
        cols.append(("dataset", "dataset"))
    if len({r["run"] for r in rows}) > 1:
        cols.append(("run", "run"))
    if any(r["aliases"] for r in rows):
        cols.append(("aliases", "alias"))
    if any(r["status"] != "completed" for r in rows):
        cols += [("status", "status"), ("error", "error")]
    return cols


def records(rows: list[dict]) -> list[dict]:
    """The rows as the table shows them: ordered {header: text} dicts (the UI's table artifact)."""
    params = varying_params([r["config"] for r in rows])
    cols = columns(rows)
    out = []
    for row, shown in zip(rows, params):
        full = {**row, "params": shown, "short_id": (row["chain_id"] or "")[:8]}
        out.append({header: _cell(full[key]) for key, header in cols})
    return out


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):  # scores to 3 decimals, so a column lines up
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.4g}"
    return str(value)


def render(rows: list[dict], title: str = "", width: int = WIDTH) -> str:
    """The terminal table, at most ``width`` columns: the pipeline and run columns give way
    (ending in …) before the scores and the chain id do."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    shown = records(rows)
    if not shown:
        return f"{title}: nothing to show" if title else "nothing to show"
    table = Table(title=title or None, box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    for header in shown[0]:
        fixed = header in ("#", "chain") or header == list(shown[0])[1] or header == list(shown[0])[2]
        table.add_column(header, no_wrap=True, overflow="ellipsis", justify="right" if fixed and header != "chain"
                         else "left", min_width=8 if header == "chain" else None)
    for row in shown:
        table.add_row(*row.values())
    console = Console(width=width, record=True, file=_Discard(), color_system=None)
    console.print(table)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


class _Discard:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def markdown(rows: list[dict]) -> list[str]:
    """The same table in markdown, chain ids as code (copyable)."""
    shown = records(rows)
    if not shown:
        return []
    headers = list(shown[0])
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if h in ("#",) or i in (1, 2) else "---" for i, h in enumerate(headers)) + "|"]
    for row in shown:
        cells = [f"`{v}`" if h == "chain" and v else v.replace("|", "\\|").replace("\n", " ")
                 for h, v in row.items()]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def rows_from_entries(entries: Iterable) -> list[dict]:
    """A training run's pipelines (``tasks.lifecycle.PipelineEntry``), ranked by their
    cross-validated score, then the failed ones."""
    from tasks.reporting import rank_value

    entries = list(entries)
    done = sorted((e for e in entries if e.status == "completed"),
                  key=lambda e: (rank_value(e.metric, e.best_val), rank_value(e.metric, e.best_test), e.key))
    rows = [board_row(rank=k, metric=e.metric, cv=e.best_val, test=e.best_test, chain_id=e.chain_id,
                      expanded_config=e.expanded_config, dataset=e.dataset_name) for k, e in enumerate(done, 1)]
    rows += [board_row(rank=None, metric=e.metric, cv=None, test=None, chain_id=None,
                       expanded_config=e.expanded_config, dataset=e.dataset_name, status=e.status,
                       error=(e.error or e.store_error or "")[:120]) for e in entries if e.status != "completed"]
    return rows


def rows_from_store(store, predictions) -> list[dict]:
    """Ranked "avg" predictions (``store.top_predictions``) with their pipeline's config, their
    run (name and date) and the aliases pointing at their chain."""
    aliases: dict[str, list[str]] = {}
    for a in store.list_aliases().iter_rows(named=True):
        aliases.setdefault(a["chain_id"], []).append(f"{a['dataset_name']}:{a['alias']}")
    pipelines, runs, rows = {}, {}, []
    for rank, p in enumerate(predictions.iter_rows(named=True), start=1):
        pipeline = pipelines.get(p["pipeline_id"]) or pipelines.setdefault(p["pipeline_id"],
                                                                           store.get_pipeline(p["pipeline_id"]))
        run = runs.get(pipeline["run_id"]) or runs.setdefault(pipeline["run_id"], store.get_run(pipeline["run_id"]))
        rows.append(board_row(rank=rank, metric=p["metric"], cv=p["val_score"], test=p["test_score"],
                              chain_id=p["chain_id"], expanded_config=pipeline["expanded_config"],
                              dataset=p["dataset_name"], run=run_label(run),
                              aliases=aliases.get(p["chain_id"], ())))
    return rows


def run_label(run: dict) -> str:
    created = run.get("created_at")
    when = created.strftime("%m-%d %H:%M") if hasattr(created, "strftime") else str(created or "")[5:16]
    return f"{run['name']} · {when}"
