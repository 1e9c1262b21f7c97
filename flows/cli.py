"""``nirsflow``: the command line (typer, which Prefect already installs)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

app = typer.Typer(help="NIRS model workspaces run by Prefect.", no_args_is_help=True,
                  pretty_exceptions_enable=False)


def _workspace(value: Path | None) -> Path:
    return value or Path(os.environ.get("NIRSFLOW_WORKSPACE", "workspace"))


WorkspaceOption = typer.Option(None, "--workspace", "-w",
                               help="Workspace folder [default: $NIRSFLOW_WORKSPACE, then ./workspace]")


@app.command()
def demo(workspace: Path = WorkspaceOption) -> None:
    """Train a small grid on the real Tablet NIR set, promote the best chain, print the leaderboard."""
    from flows.demo import run_demo

    run_demo(_workspace(workspace), echo=typer.echo)


@app.command()
def runs(workspace: Path = WorkspaceOption, status: str = typer.Option(None, help="running, completed, failed...")) -> None:
    """List the runs of a workspace."""
    from storage import WorkspaceStore

    with WorkspaceStore(_workspace(workspace)) as store:
        typer.echo(store.list_runs(status=status).select("run_id", "name", "status", "created_at"))


@app.command()
def top(n: int = 10, workspace: Path = WorkspaceOption, partition: str = "val") -> None:
    """The best predictions of a workspace."""
    from storage import WorkspaceStore

    with WorkspaceStore(_workspace(workspace)) as store:
        typer.echo(store.top_predictions(n, partition=partition)
                   .select("dataset_name", "model_name", "preprocessings", "fold_id", "val_score", "test_score"))


if __name__ == "__main__":
    app()
