"""Serve every nirsflow deployment, with its schedule, from one process.

    PREFECT_API_URL=http://127.0.0.1:4200/api python deployments/serve.py [config.yaml] [--workspace PATH]
    python deployments/serve.py check [config.yaml] [--workspace PATH]  # what would be served, and what cannot run
    python deployments/serve.py prefect-yaml [config.yaml]              # the equivalent prefect.yaml

The config (default: deployments/nirsflow.yaml beside this script) holds the workspace
path, the inbox and every schedule and parameter; see flows/schedules.py. ``--workspace``
serves the same deployments on another workspace. Before anything is served, every
deployment is checked against the workspace (flows/deployment_checks.py: the workspace,
the paths, the parameters, templates, datasets and aliases it names); each problem is
one line, and nothing is served while there is one.

Serving needs a Prefect server that outlives this process: without ``PREFECT_API_URL``
this script refuses to start (a temporary server would keep the schedules, and stop
them, with itself). Stopping this process pauses the deployments' schedules (Prefect's
serve does that on shutdown); start it again to resume them. Each scheduled run
executes in its own subprocess, so a crash of one run never takes the server process
down, and the run's hooks (or the runner's cancellation hooks) still write the store.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # runnable from a clone, installed or not

from flows.schedules import DeploymentConfigError, load_deployments_config, prefect_yaml  # noqa: E402

DEFAULT_CONFIG = HERE / "nirsflow.yaml"
NO_SERVER = ("PREFECT_API_URL is not set: start a Prefect server first (`nirsflow server`), then "
             "`export PREFECT_API_URL=http://127.0.0.1:4200/api` and serve again")


def _describe(config) -> str:
    lines = [f"workspace {config.workspace}, inbox {config.inbox}"]
    for spec in config.deployments:
        when = f"cron {spec.cron!r} {spec.timezone}" if spec.cron else (
            f"every {spec.interval:g} s" if spec.interval else "no schedule")
        params = {k: v for k, v in spec.parameters.items() if k not in ("workspace", "inbox")}
        lines.append(f"  {spec.name:<18} {spec.flow:<32} {when:<28} {params}")
    return "\n".join(lines)


def _parse(argv: list[str]) -> tuple[str, Path, str | None]:
    command, workspace, rest = "serve", None, []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("--workspace", "-w"):
            if not args:
                raise DeploymentConfigError(f"{arg} needs a path")
            workspace = args.pop(0)
        elif arg.startswith("--workspace="):
            workspace = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if rest and rest[0] in ("serve", "check", "prefect-yaml"):
        command = rest.pop(0)
    if len(rest) > 1:
        raise DeploymentConfigError(f"unexpected arguments {rest[1:]}; usage: serve.py [check|prefect-yaml] "
                                    "[config.yaml] [--workspace PATH]")
    return command, Path(rest[0]) if rest else DEFAULT_CONFIG, workspace


def main(argv: list[str]) -> int:
    try:
        command, path, workspace = _parse(argv)
        config = load_deployments_config(path)
    except DeploymentConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if workspace is not None:
        config = config.with_workspace(workspace)
    if command == "prefect-yaml":
        sys.stdout.write(prefect_yaml(config, REPO))
        return 0
    if command == "serve":
        from flows.server import configured_api_url

        if not configured_api_url():
            print(f"error: {NO_SERVER}", file=sys.stderr)
            return 1
    from flows.deployment_checks import problems

    print(_describe(config))
    found = problems(config)
    for problem in found:
        print(f"error: {problem}", file=sys.stderr)
    if found or command == "check":
        return 1 if found else 0
    from flows.schedules import runner_deployments

    deployments, skipped = runner_deployments(config, skip_missing=False)
    if config.inbox_is_default:
        config.inbox.mkdir(exist_ok=True)
    from prefect import serve

    serve(*deployments)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
