"""What ``nirsflow show <chain>`` says about a chain: each step with the parameters its
config gave, the cross-validation, the scores as ``nirs.metrics`` defines them (RMSECV and
RMSEP with n, R², bias, SEP, RPD, slope), the dataset and wavelength range it was trained
on, the versions that fitted it, and the aliases that point at it."""

from __future__ import annotations

import json

from nirs.metrics import regression_summary, score_name
from tasks.leaderboard import config_steps, run_label

_SCORE_COLUMNS = ("n", "rmse", "r2", "bias", "sep", "rpd", "slope")
_HEADERS = {"n": "n", "rmse": "RMSE", "r2": "R²", "bias": "bias", "sep": "SEP", "rpd": "RPD", "slope": "slope"}


def chain_report(store, chain_id: str) -> dict:
    chain = store.get_chain(chain_id)
    pipeline = store.get_pipeline(chain["pipeline_id"])
    run = store.get_run(pipeline["run_id"])
    metadata = chain.get("metadata") or {}
    scores = {}
    for partition in ("val", "test"):
        rows = store.query_predictions(chain_id=chain_id, fold_id="avg", partition=partition)
        if not rows.height:
            continue
        arrays = store.get_prediction_arrays(rows["prediction_id"][0]) if chain["task_type"] == "regression" else {}
        if arrays.get("y_true") is not None and arrays.get("y_pred") is not None:
            scores[partition] = regression_summary(arrays["y_true"], arrays["y_pred"])
        else:  # a classifier's, or a chain imported from a bundle (its scores came without arrays)
            stored = rows["scores"][0]
            scores[partition] = {"n": rows["n_samples"][0], **(json.loads(stored) if isinstance(stored, str)
                                                                else stored or {})}
    wavelengths = chain.get("wavelengths")
    aliases = store.list_aliases()
    return {
        "chain_id": chain_id, "task_type": chain["task_type"], "metric": metadata.get("metric") or "rmse",
        "steps": [{"role": role, "class": name, "params": params}
                  for role, name, params in config_steps(pipeline["expanded_config"])],
        "cross_validation": metadata.get("splitter"), "fold_strategy": chain["fold_strategy"],
        "dataset": pipeline["dataset_name"], "n_features": chain.get("n_features"),
        "wavelength_range": None if wavelengths is None or not len(wavelengths) else
        [float(wavelengths[0]), float(wavelengths[-1])],
        "scores": scores, "fitted_versions": metadata.get("fitted_versions") or {},
        "aliases": [f"{a['dataset_name']}:{a['alias']}" for a in aliases.iter_rows(named=True)
                    if a["chain_id"] == chain_id],
        "pipeline_id": chain["pipeline_id"], "run_id": run["run_id"], "run": run_label(run),
        "flow_run_id": metadata.get("flow_run_id"), "created_at": str(chain["created_at"])[:19],
    }


_STRATEGIES = {"per_fold": "predicts with the fold models, averaged", "refit": "predicts with one model refitted "
                                                                                "on all training data"}


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def chain_lines(report: dict) -> list[str]:
    """The report as the terminal shows it."""
    lines = [f"chain {report['chain_id']}" + (f"  ({', '.join(report['aliases'])})" if report["aliases"] else ""),
             f"  dataset      {report['dataset']}, {report['n_features']} wavelengths"
             + ("" if report["wavelength_range"] is None else
                f", {report['wavelength_range'][0]:g}–{report['wavelength_range'][1]:g} nm"),
             f"  run          {report['run']} (run {report['run_id'][:8]}, pipeline {report['pipeline_id'][:8]}, "
             f"fitted {report['created_at']} UTC)", "  steps"]
    k = 0
    for step in report["steps"]:
        if step["role"] == "split":
            continue
        k += 1
        role = "model " if step["role"] == "model" else ""
        lines.append(f"    {k}. {role}{step['class']}" + (f"({_params(step['params'])})" if step["params"] else ""))
    cv = report["cross_validation"] or {}
    if cv:
        lines.append(f"  validation   {str(cv.get('class', '?')).rsplit('.', 1)[-1]}({_params(cv.get('params') or {})})"
                     f"; {_STRATEGIES.get(report['fold_strategy'], report['fold_strategy'])}")
    if report["scores"]:
        lines += ["  scores", *_score_table(report)]
    versions = report["fitted_versions"]
    if versions:
        lines.append("  fitted with  " + ", ".join(f"{name} {version}" for name, version in versions.items()))
    lines.append(f"  aliases      {', '.join(report['aliases']) or '(none points here)'}")
    return lines


def _score_table(report: dict) -> list[str]:
    metric = report["metric"]
    if report["task_type"] != "regression":
        return [f"    {score_name(metric, part):<14} " + ", ".join(f"{k} {_num(v)}" for k, v in s.items())
                for part, s in report["scores"].items()]
    out = ["    " + f"{'':<8}" + "".join(f"{_HEADERS[c]:>9}" for c in _SCORE_COLUMNS)]
    for part, s in report["scores"].items():
        out.append("    " + f"{score_name('rmse', part):<8}" + "".join(f"{_num(s.get(c)):>9}" for c in _SCORE_COLUMNS))
    return out


def _num(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return str(value)
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:.4g}"
