"""``nirsflow``: the command line (typer and rich, which Prefect already installs).

Every command takes ``--workspace`` (default: ``$NIRSFLOW_WORKSPACE``, then ``./workspace``)
and prints a readable table, or JSON with ``--json``. Errors are one line on stderr that
says what to do, with exit code 1.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import typer

from flows.server import apply_server_settings

# Offline by default (a Prefect client or server would otherwise try to send telemetry and
# log an error for every run on a machine without internet), and a server started from
# here records task runs in batches (flows/server.py). Set any of them to override.
apply_server_settings()

app = typer.Typer(help="NIRS model workspaces run by Prefect.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
export_app = typer.Typer(help="Export a chain bundle, a run report or predictions.", no_args_is_help=True)
app.add_typer(export_app, name="export")

WorkspaceOption = typer.Option(None, "--workspace", "-w", envvar="NIRSFLOW_WORKSPACE",
                               help="Workspace folder [default: ./workspace]")
JsonOption = typer.Option(False, "--json", help="Print JSON instead of a table.")
VerboseOption = typer.Option(False, "--verbose", "-v", help="Show Prefect's log lines on the terminal (they always "
                                                          "go to the UI and to <workspace>/logs/nirsflow.log).")


def _workspace(value: Path | None) -> Path:
    return value or Path("workspace")


def _open(workspace: Path | None, *, must_exist: bool = True):
    from storage import WorkspaceStore

    path = _workspace(workspace)
    if must_exist and not (path / "store.duckdb").exists():
        raise UserError(f"no workspace at {path.resolve()} (no store.duckdb); run `nirsflow demo` or pass --workspace")
    return WorkspaceStore(path)


class UserError(Exception):
    """An error whose message already says what to do."""


def temporary_api() -> None:
    """Without a Prefect API to talk to, start nirsflow's own temporary server (a private,
    throwaway database; see flows/temporary_server.py) and point this process at it."""
    from flows import stopping
    from flows.server import configured_api_url, use_api

    stopping.raise_if_stopped()
    if configured_api_url():
        stopping.raise_if_stopped()
        return
    from flows.temporary_server import TemporaryServer

    typer.echo("No PREFECT_API_URL: starting a temporary Prefect server for this command (nothing is kept; "
               "`nirsflow server` runs one with the UI).", err=True)
    server = TemporaryServer.start()
    stopping.on_forced_exit(server.stop)
    use_api(server.url)
    from flows.server import TEMPORARY_API_MARK

    os.environ[TEMPORARY_API_MARK] = "1"  # no UI link to print: the server goes with the command
    stopping.raise_if_stopped()


def friendly(fn: Callable) -> Callable:
    """One line on stderr and exit code 1 for the errors a user can meet; tracebacks
    only for bugs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        python_says = warnings.showwarning

        def say(message, category, filename, lineno, file=None, line=None):
            # nirsflow's own warnings (a chain or bundle fitted under another scikit-learn)
            # are for the user: one line, like the errors, not Python's file:line form
            if issubclass(category, _loaded("storage.errors", "ChainVersionWarning", "BundleVersionWarning")):
                typer.echo(f"warning: {message}", err=True)
            else:
                python_says(message, category, filename, lineno, file, line)

        try:
            with warnings.catch_warnings():
                warnings.showwarning = say
                return fn(*args, **kwargs)
        except Exception as exc:
            if not isinstance(exc, (UserError, FileNotFoundError) + _loaded(*_USER_ERRORS)):
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper


#: Errors whose message is for the user (module, class names). Looked up only in modules
#: already imported: an error of a module never imported cannot have been raised, and
#: importing storage only to name its errors would cost `nirsflow train`'s checks 0.4 s.
_USER_ERRORS = ("nirs.errors", "ConfigError", "SpectraFileError", "nirs.specs", "DatasetSpecError",
                "storage.errors", "StoreError", "flows.schedules", "DeploymentConfigError")


def _loaded(*spec: str) -> tuple:
    found, module = [], None
    for name in spec:
        if "." in name or name in ("storage", "nirs", "flows"):
            module = sys.modules.get(name)
        elif module is not None:
            found.append(getattr(module, name))
    return tuple(found)


def _emit(rows: Any, as_json: bool, *, title: str = "") -> None:
    """A polars DataFrame or a list of dicts, as a table or as JSON."""
    import polars as pl

    frame = rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(rows)
    if as_json:
        typer.echo(json.dumps(frame.to_dicts(), default=str, indent=2))
        return
    if frame.is_empty():
        typer.echo(f"{title}: nothing to show" if title else "nothing to show")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or None, show_lines=False)
    for column in frame.columns:
        table.add_column(column, overflow="fold")
    for row in frame.iter_rows():
        table.add_row(*("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    Console(width=max(120, Console().width)).print(table)


# -- commands -------------------------------------------------------------------------
@app.command()
@friendly
def demo(workspace: Path = WorkspaceOption, verbose: bool = VerboseOption) -> None:
    """Train a small grid on the real Tablet NIR set, promote the best chain, print the leaderboard."""
    _quiet(_workspace(workspace), verbose)
    temporary_api()
    from flows import stopping
    from flows.demo import run_demo

    run_demo(_workspace(workspace), echo=typer.echo)
    stopping.raise_if_stopped()  # a stop that landed after the last flow: still a stop


@app.command()
@friendly
def train(config: str = typer.Argument(..., help="A config file (.json/.yaml), or a library template name."),
          data: list[str] = typer.Argument(..., help="Datasets: built-in names (tablet1, tablet2, coffee) or "
                                                     "spectra files (CSV/TSV, Parquet, JCAMP-DX)."),
          workspace: Path = WorkspaceOption,
          target: str = typer.Option(None, help="Target column of the data files."),
          test: Path = typer.Option(None, help="A held-out test file (with one data file)."),
          id_column: str = typer.Option("sample_id", help="Sample id column of the data files."),
          refit: bool = typer.Option(False, help="Also fit each pipeline on all training data."),
          max_pipelines: int = typer.Option(1000, help="Refuse configs that expand to more."),
          processes: int = typer.Option(0, help="Fit folds in this many worker processes (worth it for slow "
                                                "models; 0: in this process); with --executor, its workers."),
          executor: str = typer.Option(None, help="Where fold fits run: threads (default), loky, dask://local, "
                                                  "or dask://HOST:PORT (a Dask scheduler; needs nirsflow[dask])."),
          max_concurrency: int = typer.Option(2, help="Pipelines trained at once (more for a cluster)."),
          as_json: bool = JsonOption, verbose: bool = VerboseOption) -> None:
    """Train a config on datasets through the Prefect train flow."""
    from flows.preflight import check_training

    specs = [_dataset_spec(item, target, id_column, test if len(data) == 1 else None) for item in data]
    if test is not None and len(data) != 1:
        raise UserError("--test goes with exactly one data file")
    is_file = Path(config).suffix.lower() in (".json", ".yaml", ".yml")
    if is_file and not Path(config).exists():
        raise UserError(f"config file {config} does not exist")
    workspace = _workspace(workspace).absolute()
    config_arg = str(Path(config).absolute()) if is_file else None
    template = None if is_file else config
    # everything the run would refuse, refused now: no server, no run recorded
    check_training(specs, config=config_arg, template=template, workspace=workspace, max_pipelines=max_pipelines)
    from nirs.executors import parse_spec

    parse_spec(executor, processes)  # a misspelt executor: one line, before any server
    _quiet(workspace, verbose)
    temporary_api()
    from flows.train import train as train_flow

    state = train_flow(workspace=str(workspace), datasets=specs, config=config_arg, template=template,
                       refit=refit, max_pipelines=max_pipelines, processes=processes, executor=executor,
                       max_concurrency=max_concurrency, return_state=True)
    if not state.is_completed():
        raise UserError(f"the training run ended {state.name}: {state.message}")
    summary = state.result()
    if as_json:
        typer.echo(json.dumps(summary, default=str, indent=2))
        return
    best = summary.get("best") or {}
    counts = summary["counts"]
    typer.echo(f"run {summary['run_id'][:8]}: {counts.get('completed', 0)} pipelines completed, "
               f"{counts.get('failed', 0)} failed ({summary.get('wall_s', 0):.0f} s)")
    if summary.get("message"):
        typer.echo(summary["message"])
    if best:
        from nirs.metrics import score_name

        scores = ", ".join(f"{score_name(best.get('metric'), part)} {value:.4g}" for part, value in
                           (("val", best.get("cv_score")), ("test", best.get("test_score"))) if value is not None)
        typer.echo(f"best: {best.get('pipeline')} on {best.get('dataset')}: {scores} "
                   f"(chain {str(best.get('chain_id'))[:8]})")
    from flows.server import run_link

    link = run_link(summary.get("flow_run_id"))
    if link:
        typer.echo(f"in the Prefect UI: {link}")
    _stopped_after_the_run()


def _stopped_after_the_run() -> None:
    """Exit as stopped when a stop landed while Prefect was finishing the run (it ignores
    one once the run is final): the run is complete, the exit code says it was stopped."""
    from flows import stopping

    stopping.raise_if_stopped()


def _quiet(workspace: Path, verbose: bool) -> None:
    """Prefect's log lines to the workspace's log file, a progress bar on the terminal."""
    from flows.terminal import route_prefect_logs

    route_prefect_logs(workspace, verbose)


def _dataset_spec(item: str, target: str | None, id_column: str, test: Path | None):
    from nirs.specs import BUILTIN

    if item.lower() in BUILTIN:
        return item
    path = Path(item)
    if not path.exists():
        raise UserError(f"{item} is neither a built-in dataset ({', '.join(BUILTIN)}) nor an existing file")
    if target is None:
        raise UserError(f"give --target, the column of {path.name} that holds the reference values")
    spec = {"name": path.stem, "train": str(path.absolute()), "target_column": target, "id_column": id_column}
    if test is not None:
        spec["test"] = str(test.absolute())
    return spec


@app.command()
@friendly
def score(inbox: Path = typer.Argument(None, help="The inbox folder: one sub-folder per dataset "
                                                  "[default: <workspace>/inbox]"),
          workspace: Path = WorkspaceOption,
          alias: str = typer.Option("production", help="The alias that names each dataset's chain."),
          outbox: Path = typer.Option(None, help="Root of outbox/, processed/, rejected/ [default: the workspace]"),
          csv: bool = typer.Option(False, "--csv", help="Also write each result as CSV."),
          as_json: bool = JsonOption, verbose: bool = VerboseOption) -> None:
    """Score the spectra files waiting in an inbox (the score_inbox flow, once)."""
    workspace = _workspace(workspace).absolute()
    inbox = (inbox or workspace / "inbox").absolute()
    if not inbox.is_dir():
        raise UserError(f"inbox {inbox} is not a folder; files go in {inbox}/<dataset>/")
    if not (workspace / "store.duckdb").exists():
        raise UserError(f"no workspace at {workspace} (no store.duckdb); run `nirsflow demo` or pass --workspace")
    _quiet(workspace, verbose)
    temporary_api()
    from flows.score_inbox import score_inbox

    state = score_inbox(workspace=str(workspace), inbox=str(inbox), outbox=None if outbox is None else str(outbox),
                        alias=alias, csv=csv, return_state=True)
    outcome = state.result(raise_on_failure=False)
    summary = outcome if isinstance(outcome, dict) else getattr(outcome, "summary", None)
    if summary is None:  # the run failed before it could say what it did
        raise UserError(f"scoring {inbox} failed: {state.message}")
    if as_json:
        typer.echo(json.dumps(summary, default=str, indent=2))
    else:
        _say_scored(summary, state)
    _stopped_after_the_run()
    if not state.is_completed():
        raise typer.Exit(1)


def _say_scored(summary: dict, state) -> None:
    root = Path(summary["root"])
    if "skipped" in summary:
        typer.echo(f"nothing done: {summary['skipped']}")
        return
    counts = summary["counts"]
    typer.echo(f"{state.name}: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v or k == "scored"))
    for row in summary.get("scored", []):
        typer.echo(f"  scored {row['file']}: {row['n_spectra']} spectra -> {row['result']}")
    for row in summary.get("duplicates", []):
        typer.echo(f"  duplicate {row['file']}: already scored as {row['duplicate_of']} -> {row['result']}")
    for row in summary.get("rejected", []):
        typer.echo(f"  rejected {row.get('file')}: {row.get('problem') or row.get('message')} "
                   f"(note: {row.get('moved_to')}.error.json)")
    for row in summary.get("waiting", []):
        typer.echo(f"  waiting {row['file']}: {row['reason']}")
    for row in summary.get("failed", []):
        typer.echo(f"  not finished {row['file']}: {row['reason']}")
    if counts["scored"] or counts["duplicates"] or counts["rejected"]:
        typer.echo(f"results in {root / 'outbox'}, inputs moved to {root / 'processed'}"
                   + (f", rejected files in {root / 'rejected'}" if counts["rejected"] else ""))


@app.command()
@friendly
def serve(config: Path = typer.Option(None, help="Deployments config [default: deployments/nirsflow.yaml]"),
          workspace: Path = typer.Option(None, "--workspace", "-w",
                                         help="Serve on this workspace instead of the config's."),
          check: bool = typer.Option(False, "--check", help="Only print what would be served, and what cannot "
                                                            "run.")) -> None:
    """Serve every deployment of the config file, with its schedule (needs PREFECT_API_URL)."""
    import runpy

    script = Path(__file__).resolve().parents[1] / "deployments" / "serve.py"
    if not script.exists():
        raise UserError(f"{script} is missing; serve runs from a clone of the repository")
    module = runpy.run_path(str(script))
    args = (["check"] if check else []) + ([str(config)] if config else []) + \
        (["--workspace", str(workspace)] if workspace else [])
    raise typer.Exit(module["main"](args))


@app.command()
def server(port: int = typer.Option(4200, help="Port on 127.0.0.1."),
           home: Path = typer.Option(None, help="PREFECT_HOME of the server: its database and profile "
                                                "[default: $NIRSFLOW_SERVER_HOME, else ~/.nirsflow/prefect-server]"),
           database: str = typer.Option(None, help="Run Prefect on this PostgreSQL database instead of SQLite: "
                                                   "postgresql://USER:PASSWORD@HOST:PORT/DATABASE (for grids of "
                                                   "hundreds of pipelines, or several workers)."),
           ) -> None:
    """Start a Prefect server with its UI on 127.0.0.1, set up for training grids (task runs
    recorded in batches, offline), with a database of its own: `prefect server start` with
    nirsflow's settings."""
    from flows.server import DatabaseURLError, database_url, default_server_home

    home = (home or default_server_home()).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_PROFILE", "PREFECT_API_URL")}
    env["PREFECT_HOME"] = str(home)
    try:
        if database is not None:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url(database, home)
        elif "PREFECT_API_DATABASE_CONNECTION_URL" not in env:  # one the user exported stays
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url(None, home)
    except DatabaseURLError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    apply_server_settings(env)
    env.setdefault("PREFECT_UI_API_URL", f"http://127.0.0.1:{port}/api")  # the UI finds its API on any port
    _port_is_free(port)
    where = "on PostgreSQL" if database is not None else f"its database in {home}"
    typer.echo(f"Prefect server with its UI on http://127.0.0.1:{port}, {where}; clients need "
               f"PREFECT_API_URL=http://127.0.0.1:{port}/api")
    prefect = Path(sys.executable).parent / "prefect"
    os.execve(str(prefect), [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env)


def _port_is_free(port: int) -> None:
    """Say so before announcing an address another program answers on."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            typer.echo(f"error: port {port} on 127.0.0.1 is in use (another server?); pass --port with a free one",
                       err=True)
            raise typer.Exit(1) from None


@app.command(name="import")
@friendly
def import_bundle(bundle: Path = typer.Argument(..., help="The .n4a bundle (from `nirsflow export chain`)."),
                  workspace: Path = WorkspaceOption,
                  trusted: bool = typer.Option(False, "--trusted", help="Accept a bundle whose signature cannot be "
                                                                         "checked (hashes and names are still checked)."),
                  strict: bool = typer.Option(False, "--strict", help="Refuse another scikit-learn minor version."),
                  as_json: bool = JsonOption) -> None:
    """Bring a .n4a bundle (nirsflow's, or nirs4all 1.4's with --trusted) into the workspace; prints its chain
    id here (the same bundle again: the same id, nothing added)."""
    from storage import BundleTrustError

    with _open(workspace, must_exist=False) as store:
        try:
            chain_id = store.import_bundle(bundle, trusted=trusted, strict=strict)
        except BundleTrustError as exc:  # the library's words (trusted=True, key=) as options of this command
            raise UserError(str(exc).replace(" or pass key=", "").replace("pass trusted=True", "pass --trusted")
                            .replace("trusted=True", "--trusted")) from None
    typer.echo(json.dumps({"chain_id": chain_id}) if as_json else chain_id)


@app.command(name="import-workspace")
@friendly
def import_workspace(path: Path = typer.Argument(..., help="A nirs4all 0.7 workspace folder (store.duckdb, artifacts/)."),
                     workspace: Path = WorkspaceOption, as_json: bool = JsonOption) -> None:
    """Bring a nirs4all workspace's runs, pipelines, chains, predictions and logs into this
    workspace (run again: nothing changes); prints what was imported, and what was skipped and why."""
    with _open(workspace, must_exist=False) as store:
        report = store.import_workspace(path)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        typer.echo("\n".join(report.lines()))


RUN_STATUSES = ("running", "completed", "failed", "crashed", "cancelled")


@app.command()
@friendly
def runs(workspace: Path = WorkspaceOption,
         status: str = typer.Option(None, help="Only runs in this state: " + ", ".join(RUN_STATUSES) + "."),
         as_json: bool = JsonOption) -> None:
    """List the runs of a workspace, newest first."""
    if status is not None and status not in RUN_STATUSES:
        raise UserError(f"--status {status!r} is not a run status; use one of {', '.join(RUN_STATUSES)}")
    with _open(workspace) as store:
        frame = store.list_runs(status=status).select("run_id", "created_at", "name", "status", "completed_at",
                                                      "error", "flow_run_id")
    if not as_json:  # 8 digits, which every command accepts; JSON keeps the whole ids
        import polars as pl

        frame = frame.select(pl.col("run_id").str.slice(0, 8).alias("run"),
                             pl.col("created_at").dt.strftime("%Y-%m-%d %H:%M").alias("started (UTC)"),
                             "name", "status", pl.col("error").str.slice(0, 40))
    _emit(frame, as_json, title="runs")


@app.command()
@friendly
def top(n: int = typer.Option(10, "-n", help="How many."), workspace: Path = WorkspaceOption,
        partition: str = typer.Option("val", help="Rank by the scores of this partition: val (cross-validation) "
                                                  "or test."),
        dataset: str = typer.Option(None, help="Only this dataset."),
        fold: str = typer.Option("avg", help="'avg' ranks the folds combined; 'all' ranks every fold."),
        as_json: bool = JsonOption) -> None:
    """The best chains (ranked in the direction of their metric), with what tells them apart."""
    from tasks.leaderboard import all_params, render, rows_from_store

    with _open(workspace) as store:
        frame = store.top_predictions(n, partition=partition, dataset_name=dataset,
                                      fold_id=None if fold == "all" else fold)
        rows = rows_from_store(store, frame)
    if as_json:
        extra = [{"rank": r["rank"], "short_id": (r["chain_id"] or "")[:8], "pipeline": r["pipeline"],
                  "params": all_params(r["config"]), "run": r["run"], "aliases": r["aliases"]} for r in rows]
        payload = [{**e, **f} for e, f in zip(extra, frame.select(
            "dataset_name", "model_name", "preprocessings", "fold_id", "metric", "val_score", "test_score",
            "chain_id", "pipeline_id").to_dicts())]
        typer.echo(json.dumps(payload, default=str, indent=2))
        return
    typer.echo(render(rows, title=f"top {n} ({'cross-validation' if partition == 'val' else partition})"))


@app.command()
@friendly
def show(item: str = typer.Argument(..., help="A run, pipeline or chain: its id, the first 8 digits of it, or "
                                             "DATASET:ALIAS for a chain."), workspace: Path = WorkspaceOption,
         as_json: bool = JsonOption) -> None:
    """Show a run (with its pipelines), a pipeline (with its chains) or a chain."""
    from storage import NotFoundError
    from storage import resolve_id

    with _open(workspace) as store:
        try:
            if ":" in item:
                kind, item = "chain", store.resolve_chain(item)
            else:
                kind, item = resolve_id(store, item, ("run", "pipeline", "chain"))
        except NotFoundError:
            raise UserError(f"{item} is not a run, pipeline or chain id (nor 8 digits of one, nor DATASET:ALIAS) "
                            f"in {store.path}; list them with `nirsflow runs` or `nirsflow top`") from None
        if kind == "chain":
            from tasks.chain_report import chain_lines, chain_report

            report = chain_report(store, item)
            if not as_json:
                typer.echo("\n".join(chain_lines(report)))
                return
        record = {"run": store.get_run, "pipeline": store.get_pipeline, "chain": store.get_chain}[kind](item)
        record = {k: v for k, v in record.items() if not k.startswith("_")}
        if kind == "chain":  # the stored record, and what show prints of it
            record.update({k: report[k] for k in ("scores", "aliases", "dataset", "wavelength_range", "run")})
        if as_json:
            typer.echo(json.dumps({"kind": kind, **record}, default=_jsonable, indent=2))
            return
        typer.echo(f"{kind} {item}")
        for key, value in record.items():
            if key in ("steps", "fold_artifacts", "expanded_config", "wavelengths"):
                value = _summary(key, value)
            typer.echo(f"  {key:18s} {value}")
        if kind == "run":
            _emit(store.list_pipelines(run_id=item).select("pipeline_id", "name", "status", "best_val", "best_test"),
                  False, title="pipelines")
        elif kind == "pipeline":
            _emit(store.get_chains_for_pipeline(item).select("chain_id", "model_class", "preprocessings",
                                                             "fold_strategy"), False, title="chains")


def _jsonable(value):
    return value.tolist() if hasattr(value, "tolist") else str(value)


def _summary(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "wavelengths":
        return f"{len(value)} points, {value[0]:g}-{value[-1]:g}"
    if key == "steps":
        return " > ".join(s.get("operator_class", "?").rsplit(".", 1)[-1] for s in value)
    if key == "fold_artifacts":
        return f"{len(value)} folds: {', '.join(value)}"
    return json.dumps(value)[:200]


@app.command()
@friendly
def replay(chain: str = typer.Argument(..., help="Chain id (8 digits are enough), or DATASET:ALIAS such as "
                                                "tablet1:production."),
           file: Path = typer.Argument(..., help="Spectra file (CSV/TSV, Parquet, JCAMP-DX)."),
           workspace: Path = WorkspaceOption,
           id_column: str = typer.Option("sample_id", help="Sample id column of the file."),
           out: Path = typer.Option(None, help="Write the predictions here (.csv or .parquet)."),
           as_json: bool = JsonOption) -> None:
    """Predict the spectra of a file with a stored chain."""
    import polars as pl

    from nirs.readers import read_spectra

    data = read_spectra(file, id_column=id_column)
    with _open(workspace) as store:
        chain_id = store.resolve_chain(chain)
        info = store.get_chain(chain_id)
        task, classes = info["task_type"], info["classes"]
        if task is None:  # saved as the spec's API saves it, without its task: what its model is
            loaded = store.load_chain(chain_id)
            task, classes = loaded.task_type, loaded.classes
        columns = {"sample_id": data.sample_ids}
        checked = bool((info.get("metadata") or {}).get("diagnostics"))  # a chain trained with the outlier checks
        classify = task == "classification"
        out_ = store.replay_chain(chain_id, data.X, wavelengths=data.wavelengths, return_proba=classify,
                                  diagnostics=checked)
        out_ = out_ if isinstance(out_, tuple) else (out_,)
        columns["prediction"] = out_[0]
        if classify:
            columns.update({f"proba_{c}": out_[1][:, j] for j, c in enumerate(classes)})
        if checked:
            columns.update({k: out_[-1][k] for k in ("t2", "q", "t2_ratio", "q_ratio")}, flag=out_[-1]["flag"].tolist())
    frame = pl.DataFrame(columns)
    if out is not None:
        from storage import atomic_path

        with atomic_path(out) as temp:
            frame.write_parquet(temp) if out.suffix == ".parquet" else frame.write_csv(temp)
        typer.echo(f"{frame.height} predictions written to {out}")
        return
    _emit(frame, as_json, title=f"{file.name} with chain {chain_id}")


@app.command()
@friendly
def promote(dataset: str = typer.Argument(..., help="The dataset whose alias moves (its inbox folder's name)."),
            chain: str = typer.Argument(..., help="Chain id (8 digits are enough), or DATASET:ALIAS."),
            workspace: Path = WorkspaceOption,
            alias: str = typer.Option("production", help="The alias to move (production, staging, ...)."),
            reason: str = typer.Option(None, help="Why, for the alias history."),
            force: bool = typer.Option(False, "--force", help="Accept a chain trained on another dataset."),
            as_json: bool = JsonOption) -> None:
    """Point a dataset's alias (production by default) at a chain trained on that dataset."""
    from storage import NotFoundError

    with _open(workspace) as store:
        chain_id = store.resolve_chain(chain)
        try:
            previous = store.get_alias(dataset, alias)
        except NotFoundError:  # the first promotion: nothing pointed there yet
            previous = None
        store.set_alias(dataset, alias, chain_id, changed_by=f"cli:{os.environ.get('USER', '?')}", reason=reason,
                        force=force)
    if as_json:
        typer.echo(json.dumps({"dataset": dataset, "alias": alias, "chain_id": chain_id, "previous": previous}))
        return
    typer.echo(f"{dataset}/{alias} -> {chain_id}" + (f" (was {previous})" if previous else ""))


@app.command()
@friendly
def drift(dataset: str = typer.Argument(..., help="The dataset (its inbox and outbox folder's name)."),
          workspace: Path = WorkspaceOption,
          outbox: Path = typer.Option(None, help="Root of outbox/ [default: the workspace]"),
          days: int = typer.Option(28, help="How many days back."),
          png: Path = typer.Option(None, help="Also draw the share flagged per day into this PNG."),
          as_json: bool = JsonOption) -> None:
    """Share of scored spectra flagged by the outlier checks, per chain and day (UTC), read
    from the dataset's results in outbox/."""
    from tasks.outliers import drift as drift_table, drift_picture

    table = drift_table(Path(outbox or _workspace(workspace)), dataset, days=days)
    if png is not None:
        typer.echo(f"picture: {drift_picture(table, png, dataset)}", err=True)
    if not as_json and not table.is_empty():  # as the other tables: the short chain id, the share in %
        import polars as pl

        table = table.with_columns(pl.col("chain_id").str.slice(0, 8), (pl.col("share") * 100).round(1)) \
                     .rename({"chain_id": "chain", "share": "flagged %"})
    _emit(table, as_json, title=f"{dataset}: spectra flagged per day (last {days} days)")


@app.command()
@friendly
def gc(workspace: Path = WorkspaceOption, grace: float = typer.Option(3600.0, help="Seconds an unreferenced artifact is kept."),
       dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would go."),
       as_json: bool = JsonOption) -> None:
    """Remove dead artifacts and orphan files older than the grace period."""
    with _open(workspace) as store:
        result = store.gc_artifacts(grace=grace, dry_run=dry_run)
    payload = {"dry_run": dry_run, "artifacts": result.artifact_ids, "orphan_files": [str(p) for p in result.orphan_files],
               "bytes_freed": result.bytes_freed}
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
    else:
        verb = "would remove" if dry_run else "removed"
        typer.echo(f"{verb} {len(result.artifact_ids)} artifacts and {len(result.orphan_files)} orphan files "
                   f"({result.bytes_freed / 1e6:.2f} MB)")


@app.command()
@friendly
def vacuum(workspace: Path = WorkspaceOption, as_json: bool = JsonOption) -> None:
    """Compact store.duckdb and give the space back to the disk."""
    with _open(workspace) as store:
        result = store.vacuum()
    if as_json:
        typer.echo(json.dumps({"bytes_before": result.bytes_before, "bytes_after": result.bytes_after}))
    else:
        typer.echo(f"store.duckdb: {result.bytes_before / 1e6:.2f} MB -> {result.bytes_after / 1e6:.2f} MB")


@app.command()
@friendly
def check(workspace: Path = WorkspaceOption, repair: bool = typer.Option(False, "--repair", help="Fix what is safe."),
          stale_hours: float = typer.Option(24.0, help="A run still 'running' after this long is stale."),
          load: bool = typer.Option(False, "--load", help="Also load every chain's artifacts (after an upgrade)."),
          as_json: bool = JsonOption) -> None:
    """Verify the workspace: artifacts present and sound, orphans and stale runs listed."""
    with _open(workspace) as store:
        report = store.check_workspace(repair=repair, stale_after=stale_hours * 3600, load=load)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        typer.echo(f"{report.artifacts_checked} artifacts checked: {len(report.missing)} missing, "
                   f"{len(report.corrupt)} corrupt; {len(report.orphan_files)} orphan files; "
                   f"{len(report.stale_runs)} stale runs")
        for entry in report.missing + report.corrupt:
            typer.echo(f"  {entry['path']}: needed by chains {', '.join(entry['chains']) or '(none)'}")
        for path in report.orphan_files:
            typer.echo(f"  orphan {path}: no row names it; `nirsflow gc` (or check --repair) removes it")
        if report.young_orphans:
            typer.echo(f"{len(report.young_orphans)} young orphan files, as expected after an interrupted save "
                       f"(a stopped run, a failed pipeline): `nirsflow gc` removes them once they are older than "
                       f"{report.grace / 3600:g} h, the gc deployment once they are older than its grace:")
            for entry in report.young_orphans:
                typer.echo(f"  {entry['path']} ({entry['age_s']:.0f} s old)")
        if load:
            typer.echo(f"{report.artifacts_loaded} artifacts loaded: {len(report.unloadable)} cannot be loaded here; "
                       f"{len(report.other_versions)} chains fitted with another scikit-learn")
            for entry in report.unloadable:
                typer.echo(f"  {entry['path']}: {entry['error']}; needed by chains {', '.join(entry['chains'])}")
            for entry in report.other_versions:
                typer.echo(f"  chain {entry['chain_id']}: fitted with scikit-learn {entry['fitted']}, "
                           f"here {entry['here']}")
        for line in report.repaired:
            typer.echo(f"  repaired: {line}")
    if not report.ok and not repair:
        raise typer.Exit(1)


@app.command()
@friendly
def plot(chain: str = typer.Argument(..., help="Chain id (8 digits are enough), or DATASET:ALIAS."),
         workspace: Path = WorkspaceOption,
         out: Path = typer.Option(None, help="Folder for the PNGs [default: <workspace>/exports/plots/<chain>]"),
         data: Path = typer.Option(None, help="A spectra file to draw before/after the spectral preprocessing "
                                              "[default: the chain's training spectra, when they can still be read]."),
         target: str = typer.Option(None, help="The analyte's name for the axes [default: the training data's "
                                               "target column]."),
         unit: str = typer.Option(None, help="The analyte's unit for the axes, e.g. '%' or 'mg' [default: none, or "
                                             "the built-in set's]."),
         as_json: bool = JsonOption) -> None:
    """Predicted vs observed and residuals of a chain (RMSECV, RMSEP, bias, slope, R², n), and its
    spectra before/after its spectral preprocessing."""
    from tasks.reporting import plot_chain

    with _open(workspace) as store:
        chain_id = store.resolve_chain(chain)
        if store.get_chain(chain_id)["task_type"] == "classification":
            raise UserError("predicted-vs-observed plots are for regression chains")
        spectra = None
        if data is not None:
            from nirs.readers import read_spectra

            spectra = read_spectra(data)
        written = plot_chain(store, chain_id, out or store.path / "exports" / "plots" / chain_id, spectra,
                             analyte=target, unit=unit)
        if not written:
            raise UserError(f"chain {chain_id} has no stored 'avg' predictions to plot")
    if as_json:
        typer.echo(json.dumps({"chain_id": chain_id, "files": [str(p) for p in written]}, indent=2))
        return
    for path in written:
        typer.echo(str(path))


@export_app.command("chain")
@friendly
def export_chain(chain: str = typer.Argument(..., help="Chain id (8 digits are enough), or DATASET:ALIAS."),
                 workspace: Path = WorkspaceOption, out: Path = typer.Option(None, help="Bundle path (.n4a)"),
                 as_json: bool = JsonOption) -> None:
    """A portable, signed .n4a bundle of a chain."""
    with _open(workspace) as store:
        _print_path(store.export_chain(store.resolve_chain(chain), out), as_json)


@export_app.command("run")
@friendly
def export_run(run: str = typer.Argument(..., help="Run id (8 digits are enough)."),
               workspace: Path = WorkspaceOption, out: Path = typer.Option(None, help="YAML path"),
               as_json: bool = JsonOption) -> None:
    """A YAML report of a run: its pipelines, chains and scores."""
    from storage import resolve_id

    with _open(workspace) as store:
        _print_path(store.export_run(resolve_id(store, run, ("run",))[1], out), as_json)


@export_app.command("predictions")
@friendly
def export_predictions(workspace: Path = WorkspaceOption, out: Path = typer.Option(None, help="Parquet path"),
                       dataset: str = typer.Option(None, help="Only this dataset."),
                       partition: str = typer.Option(None, help="Only this partition: train, val or test."),
                       run: str = typer.Option(None, help="Only this run (its id)."),
                       arrays: bool = typer.Option(False, "--arrays", help="Include y_true, y_pred, ... as lists."),
                       as_json: bool = JsonOption) -> None:
    """Predictions as Parquet (filtered by dataset, partition, run)."""
    with _open(workspace) as store:
        _print_path(store.export_predictions_parquet(out, include_arrays=arrays, dataset_name=dataset,
                                                     partition=partition, run_id=run), as_json)


def _print_path(path: Path, as_json: bool) -> None:
    typer.echo(json.dumps({"path": str(path)}) if as_json else str(path))


def main() -> None:  # pragma: no cover - the console script
    from flows import stopping

    stopping.install()
    app()


if __name__ == "__main__":
    main()
