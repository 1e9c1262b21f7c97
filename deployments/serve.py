"""Serve every nirsflow deployment, with its schedule, from one process.

    PREFECT_API_URL=http://127.0.0.1:4200/api python deployments/serve.py [config.yaml]
    python deployments/serve.py check [config.yaml]        # print what would be served
    python deployments/serve.py prefect-yaml [config.yaml] # the equivalent prefect.yaml

The config (default: deployments/nirsflow.yaml beside this script) holds the workspace
path, the inbox and every schedule and parameter; see flows/schedules.py. Stopping this
process pauses the deployments' schedules (Prefect's serve does that on shutdown); start
it again to resume them. Each scheduled run executes in its own subprocess, so a crash of
one run never takes the server process down, and the run's hooks (or the runner's
cancellation hooks) still write the store.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # runnable from a clone, installed or not

from flows.schedules import load_deployments_config, prefect_yaml, runner_deployments  # noqa: E402

DEFAULT_CONFIG = HERE / "nirsflow.yaml"


def _describe(config) -> str:
    lines = [f"workspace {config.workspace}" + (f", inbox {config.inbox}" if config.inbox else "")]
    for spec in config.deployments:
        when = f"cron {spec.cron!r} {spec.timezone}" if spec.cron else (
            f"every {spec.interval:g} s" if spec.interval else "no schedule")
        params = {k: v for k, v in spec.parameters.items() if k not in ("workspace", "inbox")}
        lines.append(f"  {spec.name:<18} {spec.flow:<32} {when:<28} {params}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    command = "serve"
    if argv and argv[0] in ("serve", "check", "prefect-yaml"):
        command, argv = argv[0], argv[1:]
    config = load_deployments_config(argv[0] if argv else DEFAULT_CONFIG)
    if command == "prefect-yaml":
        sys.stdout.write(prefect_yaml(config, REPO))
        return 0
    deployments, skipped = runner_deployments(config)
    print(_describe(config))
    for reason in skipped:
        print(f"  skipped: {reason}")
    if command == "check":
        return 0
    if not deployments:
        print("nothing to serve", file=sys.stderr)
        return 1
    config.workspace.mkdir(parents=True, exist_ok=True)
    if config.inbox is not None:
        config.inbox.mkdir(parents=True, exist_ok=True)
    from prefect import serve

    serve(*deployments)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
