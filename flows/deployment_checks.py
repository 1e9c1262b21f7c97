"""What the deployments of a config file need, checked before they are served: the
workspace, the paths, the parameters each flow accepts, the library templates, the
datasets and the aliases they name. ``deployments/serve.py check`` (and ``nirsflow
serve``) print one line for each thing that cannot run, and serve nothing while there
is one: a deployment that names a missing template fails every Monday at 03:00, long
after whoever edited the file has gone home.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from flows.schedules import FLOWS, DeploymentsConfig, DeploymentSpec


def problems(config: DeploymentsConfig) -> list[str]:
    """One line per thing that cannot run; empty when everything can."""
    found: list[str] = []
    workspace = config.workspace
    if not (workspace / "store.duckdb").is_file():
        found.append(f"workspace {workspace} (from {config.path.name}) has no store.duckdb: run "
                     f"`nirsflow demo -w {workspace}`, or point 'workspace' at an existing workspace")
        return found  # every other check reads the workspace
    aliases = _aliases(workspace)
    created = {spec.parameters.get("alias", "production") for spec in config.deployments
               if spec.flow == FLOWS["retrain"]}  # a retrain creates its alias on its first run
    for spec in config.deployments:
        found += [f"deployment {spec.name!r}: {p}" for p in _spec_problems(config, spec, aliases, created)]
    return found


def _aliases(workspace: Path) -> dict[str, set[str]]:
    from storage import WorkspaceStore

    with WorkspaceStore(workspace) as store:
        frame = store.list_aliases()
    names: dict[str, set[str]] = {}
    for dataset, alias in zip(frame["dataset_name"], frame["alias"]):
        names.setdefault(alias, set()).add(dataset)
    return names


def _spec_problems(config: DeploymentsConfig, spec: DeploymentSpec, aliases: dict, created: set) -> list[str]:
    try:
        flow = spec.load_flow()
    except (ImportError, AttributeError) as exc:
        return [f"flow {spec.flow} cannot be imported ({exc})"]
    accepted = inspect.signature(flow.fn).parameters
    unknown = sorted(set(spec.parameters) - set(accepted))
    if unknown:
        return [f"{spec.flow} has no parameter {', '.join(map(repr, unknown))}; its parameters are "
                f"{', '.join(accepted)}"]
    params = spec.parameters
    out = _path_problems(config, spec)
    if spec.flow in (FLOWS["train"], FLOWS["retrain"]):
        out += _training_problems(params, spec.flow == FLOWS["retrain"])
    if spec.flow == FLOWS["score_inbox"]:
        alias = params.get("alias", "production")
        if alias not in aliases and alias not in created:
            known = ", ".join(f"{a} ({', '.join(sorted(d))})" for a, d in sorted(aliases.items())) or "none"
            out.append(f"alias {alias!r} points at no chain in workspace {config.workspace} (aliases there: "
                       f"{known}), and no retrain deployment creates it; promote a chain with "
                       f"`nirsflow promote DATASET CHAIN --alias {alias}`")
    return out


def _path_problems(config: DeploymentsConfig, spec: DeploymentSpec) -> list[str]:
    out = []
    params = spec.parameters
    if spec.flow == FLOWS["score_inbox"]:
        inbox = Path(params["inbox"])
        if not inbox.is_dir() and not (config.inbox_is_default and inbox == config.inbox):
            out.append(f"inbox {inbox} does not exist; create it (one folder per dataset inside), or fix "
                       f"'inbox' in {config.path.name}")
        if params.get("outbox") and not Path(params["outbox"]).is_dir():
            out.append(f"outbox root {params['outbox']} does not exist; create it, or drop 'outbox' "
                       "(results then go to the workspace)")
    return out


def _training_problems(params: dict, retrain: bool) -> list[str]:
    from nirs.config import ConfigError
    from nirs.errors import SpectraFileError
    from nirs.specs import DatasetSpecError
    from flows.preflight import check_training
    from storage import StoreError

    datasets = [params["dataset"]] if retrain and "dataset" in params else list(params.get("datasets") or ["tablet1"])
    try:
        check_training(datasets, config=params.get("config"), template=params.get("template"),
                       workspace=params["workspace"], max_pipelines=params.get("max_pipelines", 1000))
    except (ConfigError, DatasetSpecError, SpectraFileError, StoreError) as exc:
        return [str(exc)]
    if retrain:
        from nirs.specs import normalize_spec

        spec = normalize_spec(params["dataset"])
        if spec.get("builtin") == "coffee" or ("builtin" not in spec and not spec.get("test")):
            return [f"retrain needs held-out spectra to compare chains: give dataset {spec['name']!r} a 'test' file"]
    return []
