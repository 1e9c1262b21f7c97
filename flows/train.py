"""The ``train`` flow: one run over one or more datasets and one config (or library
template), expanded by its generators, every pipeline cross-validated.

Shape (numbers in tasks/training.py and bench/flow_bench.py): the run is a flow; each
pipeline a task whose hooks mirror it in the store, ``max_concurrency`` of them at once on
a thread pool of this process; each pipeline fits its folds (and refit) inside it on an
executor (``nirs.executors``: threads, loky processes or a Dask cluster), so the executor
stays busy while other pipelines are recorded.

The store is written only from this process, and only through the hooks of
``tasks.lifecycle`` (plus one ``planned`` log entry): ``begin_run`` when the flow run
enters Running, ``begin_pipeline``/chain/predictions/``complete_pipeline`` or
``fail_pipeline`` as each pipeline task changes state, and ``complete_run`` only if
every pipeline landed, else the run is failed with the reason (or, if even that write
fails, left ``running`` for ``reconcile``). A run in which no pipeline completed ends
Failed (``NoPipelineCompleted``, with the first error); one in which some failed ends
Completed with a message saying how many and why (``run_state``).

    from flows.train import train
    train(workspace="./workspace", datasets=["tablet1"], template="tablet-baseline")
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.task_runners import ThreadPoolTaskRunner

from flows.stopping import stops_cleanly
from flows.workers import DEFAULT_WORKERS
from nirs.config import ConfigError, load_config, task_of, validate
from nirs.executors import describe_executor, fold_executor, parse_spec
from storage import PipelineLibrary
from tasks.data import describe_spec, load_dataset, normalize_spec
from tasks.lifecycle import (PipelineEntry, RunDescription, StoreWriteError, current_book, pipeline_hooks,
                             run_hooks)
from tasks.reporting import (Progress, artifact_key, best_scores, leaderboard_rows, markdown_report, plot_chain,
                             publish_leaderboard, publish_markdown, tag_flow_run)
from tasks.training import train_pipeline

DEFAULT_DATASETS = ("tablet1",)


def resolve_config(config: Any, template: str | None, workspace) -> tuple[Any, str]:
    """(the pipeline config, a short label for names): exactly one of ``config`` (inline, or
    the path of a .json/.yaml file) and ``template`` (a name in the workspace library)."""
    if (config is None) == (template is None):
        raise ConfigError("train needs exactly one of `config` (inline or a .json/.yaml path) and `template` "
                          f"(a library template name); got config={config!r}, template={template!r}")
    if template is not None:
        return PipelineLibrary(Path(workspace)).load_template(template), template
    if isinstance(config, (str, Path)):
        return load_config(config), Path(config).stem
    return config, "config"


def _labels(params: dict) -> tuple[str, list[str]]:
    template, config = params.get("template"), params.get("config")
    what = template or (Path(config).stem if isinstance(config, str) else "config")
    names = []
    for spec in params.get("datasets") or DEFAULT_DATASETS:
        names.append(describe_spec(spec)["name"])
    return what, names


def describe_run(params: dict) -> RunDescription:
    """What ``begin_run`` records, from the flow run's parameters (called by the run hook)."""
    what, names = _labels(params)
    try:
        resolved, _ = resolve_config(params.get("config"), params.get("template"), params["workspace"])
    except Exception as exc:  # noqa: BLE001 - the flow body raises it; the record keeps the note
        resolved = {"unresolved": str(exc)}
    config = {"template": params.get("template"), "pipeline": resolved, "refit": bool(params.get("refit")),
              "max_pipelines": params.get("max_pipelines")}
    tags = ["nirsflow", "train", *(f"dataset:{n}" for n in names)]
    if params.get("template"):
        tags.append(f"template:{params['template']}")
    tags += list(params.get("tags") or [])
    name = params.get("name") or f"{what} on {', '.join(names)}"
    return RunDescription(name=name, config=config,
                          datasets=[describe_spec(s) for s in params.get("datasets") or DEFAULT_DATASETS],
                          tags=tags)


def flow_run_name() -> str:
    from prefect.runtime import flow_run

    try:
        what, names = _labels(dict(flow_run.parameters))
        return f"train · {what} · {', '.join(names)}"
    except Exception:  # noqa: BLE001 - a name must never stop a run
        return "train"


@flow(name="train", flow_run_name=flow_run_name, persist_result=False,
      task_runner=ThreadPoolTaskRunner(max_workers=DEFAULT_WORKERS), **run_hooks(describe_run))
@stops_cleanly
def train(workspace: str, datasets: list[Any] | None = None, config: Any = None, template: str | None = None,
          name: str | None = None, refit: bool = False, max_pipelines: int = 1000, max_concurrency: int = 2,
          lock_timeout: float = 60.0, tags: list[str] | None = None, export: bool = True,
          processes: int = 0, executor: str | None = None) -> dict:
    """Train every pipeline of ``config`` (or library ``template``) on every dataset.

    datasets: built-in names ("tablet1", "tablet2", "coffee") or file specs (see
    ``tasks.data``); the spec's name is the store's dataset name. refit: also fit each
    pipeline on all training data (replay then uses that model). max_concurrency: how
    many pipelines run at once (each fits its folds on the executor at once, so a
    cluster wants several). lock_timeout: seconds to wait for the workspace lock before
    a store write fails (and the run is failed, not completed). executor: where the
    fold fits run (``nirs.executors``): "threads" (the default), "loky", "dask://local" or
    "dask://HOST:PORT". processes: its workers (0: cores - 1, at least 2); with no
    executor, processes=N fits in N loky worker processes (worth it for slow fits).
    """
    started = time.perf_counter()
    book = current_book()
    if book.run_id is None:
        raise StoreWriteError(f"the run could not be recorded in workspace {workspace}: {book.begin_error}")
    logger = get_run_logger()
    description = describe_run(dict(FlowRunContext.get().flow_run.parameters or {}))
    tag_flow_run(description.tags)

    pipeline_config, what = resolve_config(config, template, workspace)
    pipelines = validate(pipeline_config, max_pipelines=max_pipelines)
    parse_spec(executor, processes)  # a misspelt executor fails the run before any data is read
    specs = [normalize_spec(s) for s in (datasets or DEFAULT_DATASETS)]
    if len({s["name"] for s in specs}) != len(specs):
        raise ConfigError(f"dataset names must be unique in a run, got {[s['name'] for s in specs]}")

    task = task_of(pipelines)  # a text target under a regression model: refused when read
    loaded = {spec["name"]: load_dataset(spec, spec_label=spec["name"], task=task) for spec in specs}
    fit_processes = max(0, int(processes))

    work = []
    for spec in specs:
        train_set, test_set = loaded[spec["name"]]
        dataset_hash = train_set.content_hash()
        for p in pipelines:
            entry = book.plan(PipelineEntry(key=f"{spec['name']}/{p.name}", name=p.name,
                                            dataset_name=spec["name"], dataset_hash=dataset_hash,
                                            expanded_config=p.config, generator_choices=p.choices))
            work.append((entry, p, train_set, test_set))
    logger.info("run %s: %d pipelines (%s) x %d datasets = %d pipeline fits; test sets: %s",
                book.run_id, len(pipelines), what, len(specs), len(work),
                ", ".join(f"{s['name']}={'yes' if loaded[s['name']][1] is not None else 'no'}" for s in specs))
    try:
        book.store.log_step(None, event="planned", run_id=book.run_id, level="info",
                            message=f"{len(work)} pipelines planned",
                            details={"pipelines": len(work), "keys": [e.key for e, *_ in work][:5000]})
    except Exception as exc:  # noqa: BLE001 - recorded; the run will not be called completed
        book.store_failed("log_step planned", exc)

    progress = Progress(len(work), key=artifact_key("train-progress", what),
                        description=f"Training {what} on {', '.join(loaded)}: share of the {len(work)} "
                                    "pipelines done")
    logger.info("folds fitted on %s; %d pipelines at a time", describe_executor(executor, fit_processes),
                max(1, int(max_concurrency)))
    fold_executor(executor, fit_processes)  # a bad spec or an unreachable cluster fails the run here, once

    # The pipelines' own thread pool, whatever task runner the flow was given: their hooks
    # write the store, which only this process may do, and their fits go to the executor.
    with ThreadPoolTaskRunner(max_workers=max(1, int(max_concurrency))) as runner:
        futures = []
        for entry, p, train_set, test_set in work:
            task = train_pipeline.with_options(**pipeline_hooks(entry.key))
            future = runner.submit(task, {"label": f"{entry.dataset_name} · {p.name}", "key": entry.key,
                                          "dataset": train_set, "pipeline": p, "test": test_set, "refit": refit,
                                          "executor": executor, "processes": fit_processes})
            book.note_task_run(future.task_run_id, entry.key)
            futures.append(future)
        for (entry, *_), future in zip(work, futures):  # a failed pipeline is recorded by its hooks; the run goes on
            future.wait()  # its hooks have run: the entry knows its scores
            progress.step(entry=entry)
    progress.step(0, force=True)

    # -- what the UI shows ---------------------------------------------------------------
    entries = list(book.entries.values())
    rows = leaderboard_rows(entries)
    counts = book.counts()
    wall_s = time.perf_counter() - started
    best = next((r for r in rows if r["status"] == "completed"), None)
    exports = {}
    if export and best is not None:
        try:
            exports["run (YAML)"] = str(book.store.export_run(book.run_id))
            exports[f"best chain {best['chain_id']} (.n4a bundle)"] = str(book.store.export_chain(best["chain_id"]))
            for png in plot_chain(book.store, best["chain_id"], book.store.path / "exports" / "plots" / best["chain_id"]):
                exports[f"best chain: {png.stem.replace('_', ' ')} (PNG)"] = str(png)
        except Exception as exc:  # noqa: BLE001 - exports are conveniences
            logger.warning("exports not written: %s", exc)
    title = f"Training run: {what} on {', '.join(s['name'] for s in specs)}"
    table_id = publish_leaderboard(rows, key=artifact_key("leaderboard", what),
                                   description=f"{title} — run {book.run_id}")
    publish_markdown(markdown_report(title=title, run_id=book.run_id, flow_run_name=book.flow_run_name,
                                     workspace=book.store.path, rows=rows, counts=counts, wall_s=wall_s,
                                     exports=exports),
                     key=artifact_key("report", what), description=title)
    book.summary = {"counts": counts, "best": best, "wall_s": round(wall_s, 3),
                    "flow_run_id": book.flow_run_id,
                    "leaderboard_artifact_id": None if table_id is None else str(table_id),
                    "exports": exports}
    if best is not None:
        logger.info("best: %s on %s, %s CV %.4g, test %s (chain %s); %d completed, %d failed, %.1f s",
                    best["pipeline"], best["dataset"], best["metric"], best["cv_score"],
                    best["test_score"], best["chain_id"], counts["completed"], counts["failed"], wall_s)
    else:
        logger.warning("no pipeline completed: %d failed", counts["failed"])

    problems = book.problems()
    if problems:
        # Prefect must not say Completed when the store is missing writes.
        raise StoreWriteError("; ".join(problems))
    return run_state({"run_id": book.run_id, **book.summary}, entries)


class NoPipelineCompleted(RuntimeError):
    """Every pipeline of a training run failed; the message gives the first error."""


def run_state(summary: dict, entries: list):
    """Honest, in the runs list: Failed when no pipeline completed; Completed with a
    message saying how many failed and the first error when some did; else Completed.
    The message is also ``summary["message"]``, which ``nirsflow train`` prints."""
    from prefect.states import Completed, Failed

    failed = [e for e in entries if e.status != "completed"]
    if not failed:
        return Completed(message=f"{len(entries)} pipelines completed{best_scores(summary.get('best'))}",
                         data=summary)
    first = failed[0]
    why = f"first error ({first.dataset_name} · {first.name}): {(first.error or first.store_error or '?')[:500]}"
    if len(failed) == len(entries):
        message = f"no pipeline completed: {len(failed)} of {len(entries)} failed; {why}"
        return Failed(message=message, data=NoPipelineCompleted(message))
    summary["message"] = f"{len(failed)} of {len(entries)} pipelines failed; {why}"
    return Completed(message=summary["message"], data=summary)
