"""The deployments of a lab, from one config file (``deployments/nirsflow.yaml``):

    workspace: ./workspace          # relative paths are relative to this file's folder
    inbox: ./workspace/inbox        # optional; the default is <workspace>/inbox
    timezone: UTC
    tags: [lab-a]
    deployments:
      gc:        {flow: gc, cron: "30 2 * * *", parameters: {grace: 86400}}
      reconcile: {flow: reconcile, interval: 3600}
      retrain-tablet1:
        flow: retrain
        cron: "0 3 * * 1"
        parameters: {dataset: tablet1, template: tablet-baseline}
      score-inbox: {flow: score_inbox, interval: 300}

Every deployment gets ``workspace`` as a parameter; ``score_inbox`` also gets ``inbox``
(``<workspace>/inbox`` unless the file says otherwise: the demo's inbox, and
``nirsflow score``'s default).
A flow is named by its key in ``FLOWS`` or by ``module:function``. Changing a schedule or a
parameter is an edit of the config file, never of code; ``deployments/serve.py`` serves
them all from one process, ``deployments/serve.py prefect-yaml`` writes the equivalent
``prefect.yaml`` for a process work pool.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: Known flows, by the names the config file uses.
FLOWS = {
    "train": "flows.train:train",
    "retrain": "flows.retrain:retrain",
    "gc": "flows.maintenance:gc",
    "vacuum": "flows.maintenance:vacuum",
    "reconcile": "flows.maintenance:reconcile",
    "score_inbox": "flows.score_inbox:score_inbox",
}
_DEPLOYMENT_KEYS = {"flow", "cron", "interval", "parameters", "tags", "description", "paused"}
_TOP_KEYS = {"workspace", "inbox", "timezone", "tags", "deployments"}


class DeploymentConfigError(ValueError):
    """The deployments config is wrong; the message names the file, the deployment and the key."""


@dataclass
class DeploymentSpec:
    name: str
    flow: str  # module:function
    cron: str | None = None
    interval: float | None = None
    timezone: str = "UTC"
    parameters: dict = field(default_factory=dict)
    tags: list = field(default_factory=list)
    description: str | None = None
    paused: bool = False

    @property
    def entrypoint(self) -> str:
        module, function = self.flow.split(":")
        return f"{module.replace('.', '/')}.py:{function}"

    def load_flow(self):
        module, function = self.flow.split(":")
        return getattr(importlib.import_module(module), function)


@dataclass
class DeploymentsConfig:
    path: Path
    workspace: Path
    inbox: Path
    deployments: list
    inbox_is_default: bool = True  # <workspace>/inbox, created when served; a given inbox must exist

    def with_workspace(self, workspace: str | Path) -> "DeploymentsConfig":
        """The same deployments on another workspace (``serve.py --workspace``): every
        parameter that named the file's workspace (and its default inbox) names this one."""
        new = Path(workspace).expanduser().resolve()
        inbox = new / "inbox" if self.inbox_is_default else self.inbox
        swapped = {str(self.workspace): str(new), str(self.inbox): str(inbox)}
        specs = [DeploymentSpec(**{**spec.__dict__, "parameters": {
            k: swapped.get(v, v) if isinstance(v, str) and k in ("workspace", "inbox") else v
            for k, v in spec.parameters.items()}}) for spec in self.deployments]
        return DeploymentsConfig(self.path, new, inbox, specs, self.inbox_is_default)


def _resolve(base: Path, value) -> Path:
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def load_deployments_config(path) -> DeploymentsConfig:
    path = Path(path).expanduser().resolve()
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DeploymentConfigError(f"{path}: cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        raise DeploymentConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise DeploymentConfigError(f"{path}: expected a mapping with 'workspace' and 'deployments'")
    unknown = set(document) - _TOP_KEYS
    if unknown:
        raise DeploymentConfigError(f"{path}: unknown keys {sorted(unknown)}; expected some of {sorted(_TOP_KEYS)}")
    if not document.get("workspace"):
        raise DeploymentConfigError(f"{path}: 'workspace' is required (the folder of the workspace store)")
    base = path.parent
    workspace = _resolve(base, document["workspace"])
    inbox = _resolve(base, document["inbox"]) if document.get("inbox") else workspace / "inbox"
    timezone = str(document.get("timezone") or "UTC")
    common_tags = list(document.get("tags") or [])
    entries = document.get("deployments") or {}
    if not isinstance(entries, dict) or not entries:
        raise DeploymentConfigError(f"{path}: 'deployments' must map deployment names to their settings")
    specs = []
    for name, entry in entries.items():
        where = f"{path}: deployment {name!r}"
        if not isinstance(entry, dict):
            raise DeploymentConfigError(f"{where}: expected a mapping, got {entry!r}")
        unknown = set(entry) - _DEPLOYMENT_KEYS
        if unknown:
            raise DeploymentConfigError(f"{where}: unknown keys {sorted(unknown)}; expected some of "
                                        f"{sorted(_DEPLOYMENT_KEYS)}")
        flow = entry.get("flow")
        flow = FLOWS.get(flow, flow)
        if not isinstance(flow, str) or ":" not in flow:
            raise DeploymentConfigError(f"{where}: 'flow' must be one of {sorted(FLOWS)} or 'module:function', "
                                        f"got {entry.get('flow')!r}")
        if entry.get("cron") and entry.get("interval"):
            raise DeploymentConfigError(f"{where}: give 'cron' or 'interval' (seconds), not both")
        interval = entry.get("interval")
        if interval is not None and (isinstance(interval, bool) or not isinstance(interval, (int, float))
                                     or interval <= 0):
            raise DeploymentConfigError(f"{where}: 'interval' must be a positive number of seconds, got {interval!r}")
        cron = entry.get("cron")
        if cron is not None:
            from prefect.client.schemas.schedules import CronSchedule

            try:
                CronSchedule(cron=str(cron), timezone=timezone)
            except ValueError as exc:
                raise DeploymentConfigError(f"{where}: 'cron' {cron!r} with timezone {timezone!r} is not valid: "
                                            f"{str(exc).splitlines()[-1] if str(exc) else exc}") from None
        parameters = {"workspace": str(workspace), **(entry.get("parameters") or {})}
        if flow == FLOWS["score_inbox"]:
            parameters.setdefault("inbox", str(inbox))
        specs.append(DeploymentSpec(name=str(name), flow=flow, cron=None if cron is None else str(cron),
                                    interval=None if interval is None else float(interval), timezone=timezone,
                                    parameters=parameters, tags=common_tags + list(entry.get("tags") or []),
                                    description=entry.get("description"), paused=bool(entry.get("paused", False))))
    return DeploymentsConfig(path=path, workspace=workspace, inbox=inbox, deployments=specs,
                             inbox_is_default=not document.get("inbox"))


def runner_deployments(config: DeploymentsConfig, *, skip_missing: bool = True) -> tuple[list, list[str]]:
    """``flow.to_deployment(...)`` for every spec; returns (deployments, skipped reasons).
    A flow whose module cannot be imported is skipped with its reason when
    ``skip_missing``."""
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
    from datetime import timedelta

    built, skipped = [], []
    for spec in config.deployments:
        try:
            flow = spec.load_flow()
        except (ImportError, AttributeError) as exc:
            if not skip_missing:
                raise
            skipped.append(f"{spec.name}: flow {spec.flow} cannot be imported ({exc})")
            continue
        schedules = []
        if spec.cron:
            schedules.append(CronSchedule(cron=spec.cron, timezone=spec.timezone))
        if spec.interval:
            schedules.append(IntervalSchedule(interval=timedelta(seconds=spec.interval), timezone=spec.timezone))
        built.append(flow.to_deployment(name=spec.name, schedules=schedules or None, parameters=spec.parameters,
                                        tags=["nirsflow", *spec.tags], description=spec.description,
                                        paused=spec.paused))
    return built, skipped


def prefect_yaml(config: DeploymentsConfig, repo: Path, work_pool: str = "nirsflow") -> str:
    """The ``prefect.yaml`` equivalent of the config, for ``prefect deploy --all`` and a
    process work pool (``prefect worker start --pool nirsflow``)."""
    document: dict[str, Any] = {
        "name": "nirsflow",
        "prefect-version": _prefect_version(),
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": str(repo)}}],
        "deployments": [],
    }
    for spec in config.deployments:
        entry: dict[str, Any] = {"name": spec.name, "entrypoint": spec.entrypoint, "parameters": spec.parameters,
                                 "tags": ["nirsflow", *spec.tags], "work_pool": {"name": work_pool}}
        if spec.description:
            entry["description"] = spec.description
        schedules = []
        if spec.cron:
            schedules.append({"cron": spec.cron, "timezone": spec.timezone, "active": not spec.paused})
        if spec.interval:
            schedules.append({"interval": spec.interval, "timezone": spec.timezone, "active": not spec.paused})
        entry["schedules"] = schedules
        document["deployments"].append(entry)
    header = (f"# Generated from {config.path.name} by `python deployments/serve.py prefect-yaml`: edit that file,\n"
              "# not this one (paths are this machine's: regenerate after moving the clone). For a\n"
              "# process work pool:\n"
              f"#   prefect work-pool create {work_pool} --type process\n"
              "#   prefect deploy --all --prefect-file deployments/prefect.yaml   # from the repository root\n"
              f"#   prefect worker start --pool {work_pool}\n")
    return header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


def _prefect_version() -> str:
    import prefect

    return prefect.__version__
