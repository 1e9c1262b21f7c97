"""``retrain``: train a library template on a dataset's current reference files, compare the
best new chain with the one the dataset's ``production`` alias points to on the same
held-out spectra, and move the alias only if the new chain is strictly better.

The training is the ``train`` flow, run as a subflow (one subflow per retrain costs ~1.4 s,
nothing next to a training), so the new run is mirrored in the store exactly like any
other. Both chains are replayed on the dataset's held-out file (its spec's ``test``); the
decision, both scores and the reason go to a markdown artifact, the Prefect logs, the
store's logs (under the new run) and the alias history.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext

from nirs.config import ConfigError
from storage import NotFoundError, WorkspaceStore
from tasks.data import load_dataset, normalize_spec
from tasks.promotion import is_better, score_chain
from tasks.reporting import artifact_key, publish_markdown, tag_flow_run
from flows.stopping import stops_cleanly
from flows.train import train


def _name() -> str:
    from prefect.runtime import flow_run

    try:
        p = dict(flow_run.parameters)
        return f"retrain · {p.get('template')} · {normalize_spec(p.get('dataset'))['name']}/{p.get('alias', 'production')}"
    except Exception:  # noqa: BLE001
        return "retrain"


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.4g}"


@flow(name="retrain", flow_run_name=_name, persist_result=False)
@stops_cleanly
def retrain(workspace: str, dataset: dict | str, template: str, alias: str = "production", refit: bool = False,
            max_pipelines: int = 1000, promote_if_current_unusable: bool = True, lock_timeout: float = 60.0) -> dict:
    logger = get_run_logger()
    spec = normalize_spec(dataset)
    name = spec["name"]
    tag_flow_run(["nirsflow", "retrain", f"dataset:{name}", f"template:{template}", f"alias:{alias}"])
    summary = train(workspace=workspace, datasets=[dataset], template=template, refit=refit,
                    max_pipelines=max_pipelines, lock_timeout=lock_timeout, name=f"retrain {template} on {name}",
                    tags=["retrain", f"alias:{alias}"])
    run_id, best = summary["run_id"], summary["best"]
    if best is None:
        raise RuntimeError(f"retrain {template} on {name}: no pipeline completed (run {run_id}); nothing to compare")
    _, held_out = load_dataset(spec, spec_label=name)
    if held_out is None:
        raise ConfigError(f"retrain needs held-out spectra to compare chains fairly: give dataset {name!r} a "
                          "'test' file (built-in: tablet1/tablet2)")
    metric = best["metric"]
    new = score_chain(workspace, best["chain_id"], held_out, role="new", dataset_label=f"{name} held-out",
                      lock_timeout=lock_timeout)
    new_score = new["scores"].get(metric)

    with WorkspaceStore(workspace, lock_timeout=lock_timeout) as store:
        try:
            current_id = store.get_alias(name, alias)
        except NotFoundError:
            current_id = None
    current, current_score, current_error = None, None, None
    if current_id is not None:
        try:
            current = score_chain(workspace, current_id, held_out, role=alias, dataset_label=f"{name} held-out",
                                  lock_timeout=lock_timeout)
            current_score = current["scores"].get(metric)
        except Exception as exc:  # noqa: BLE001 - reported; the decision below says what it means
            current_error = f"{type(exc).__name__}: {exc}"
            logger.warning("the %s chain %s could not be scored on %s: %s", alias, current_id, name, current_error)

    if current_id is None:
        promote, reason = True, f"no {alias} chain yet for {name}"
    elif current_error is not None:
        promote = promote_if_current_unusable
        reason = f"the {alias} chain could not be scored ({current_error})"
    elif current_id == best["chain_id"]:
        promote, reason = False, "the best new chain is already the current one"
    else:
        promote = is_better(metric, new_score, current_score)
        reason = (f"new {metric} {_fmt(new_score)} {'beats' if promote else 'does not beat'} "
                  f"{alias} {_fmt(current_score)} on {held_out.n_samples} held-out samples")
    decision = "promoted" if promote else "kept"
    ctx = FlowRunContext.get()
    flow_run = f"retrain flow run {ctx.flow_run.name} ({ctx.flow_run.id})" if ctx and ctx.flow_run else "retrain"
    details = {"decision": decision, "reason": reason, "metric": metric, "alias": alias, "dataset": name,
               "new_chain_id": best["chain_id"], "new_score": new_score, "current_chain_id": current_id,
               "current_score": current_score, "held_out_samples": int(held_out.n_samples),
               "new_scores": new["scores"], "current_scores": current["scores"] if current else None}
    with WorkspaceStore(workspace, lock_timeout=lock_timeout) as store:
        with store.batch():
            if promote:
                store.set_alias(name, alias, best["chain_id"], changed_by=flow_run, reason=reason)
            store.log_step(None, event="promotion", run_id=run_id, level="info",
                           message=f"{decision}: {reason}", details=details)
    logger.info("%s %s/%s: %s (new chain %s, %s chain %s)", decision.upper(), name, alias, reason,
                best["chain_id"], alias, current_id)
    publish_markdown("\n".join([
        f"# Retrain {template} on {name}: **{decision}**", "",
        f"{reason}.", "",
        f"| chain | role | {metric} on held-out ({held_out.n_samples}) | CV {metric} |",
        "|---|---|---:|---:|",
        f"| `{best['chain_id']}` | new best ({best['pipeline']}) | {_fmt(new_score)} | {_fmt(best['cv_score'])} |",
        f"| `{current_id}` | {alias} before | {_fmt(current_score)} | |" if current_id else f"| — | no {alias} | | |",
        "", f"- training run `{run_id}`; {alias} now points to `{best['chain_id'] if promote else current_id}`"]),
        key=artifact_key("retrain", name, alias), description=f"retrain decision for {name}/{alias}")
    return details | {"run_id": run_id}
