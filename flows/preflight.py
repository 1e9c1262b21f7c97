"""What a training run is given, checked before Prefect starts: the config (class names,
parameter names and values, the shape of each pipeline), the library template it names,
and the data files (headers, the target column, every cell). ``nirsflow train`` runs it
first, so a typo costs one line and a second, not a temporary server, a failed run in
the store and in Prefect, and two tracebacks; ``deployments/serve.py check`` runs the
same checks on the deployments' parameters.

Nothing here imports Prefect (importing it takes about a second). The train flow checks
the same things again when it runs (a served deployment has no command line before it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nirs.config import ConfigError, load_config, task_of, validate
from nirs.specs import DatasetSpecError, normalize_spec


def template_config(workspace: str | Path, name: str) -> Any:
    """The pipeline config of library template ``name``; a ConfigError that lists the
    templates there when there is none."""
    from storage import NotFoundError, PipelineLibrary

    library = PipelineLibrary(Path(workspace))
    try:
        return library.load_template(name)
    except NotFoundError:
        names = sorted(t["name"] for t in library.list_templates()) if library.folder.is_dir() else []
        raise ConfigError(f"no template {name!r} in the library of workspace {Path(workspace).absolute()} "
                          f"(templates there: {', '.join(names) or 'none'}); save one with "
                          "PipelineLibrary.save_template, or run `nirsflow demo` for 'tablet-baseline'") from None


def check_config(config: Any = None, template: str | None = None, workspace: str | Path = "workspace",
                 max_pipelines: int = 1000) -> list:
    """The expanded pipelines of ``config`` (inline or a .json/.yaml path) or of library
    ``template``; ConfigError naming the step and the parameter otherwise."""
    if (config is None) == (template is None):
        raise ConfigError("give a config (inline or a .json/.yaml file) or a library template name, not both")
    if template is not None:
        config = template_config(workspace, template)
    elif isinstance(config, (str, Path)):
        if not Path(config).is_file():
            raise ConfigError(f"config file {config} does not exist")
        config = load_config(config)
    return validate(config, max_pipelines=max_pipelines)


def check_dataset(spec: Any, task: str | None = None) -> None:
    """Read a dataset spec's files as the run will (headers, target column, every cell):
    one error naming the file, row and column, or nothing."""
    s = normalize_spec(spec)
    if "builtin" in s:
        return
    from nirs.readers import read_spectra

    for role in ("train", "test"):
        if not s.get(role):
            continue
        path = Path(s[role]).expanduser()
        if not path.exists():
            raise DatasetSpecError(f"dataset {s['name']!r}: {role} file {path} does not exist")
        read_spectra(path, id_column=s.get("id_column", "sample_id"), target_column=s["target_column"],
                     separator=s.get("separator"), task=s.get("task") or task, name=s["name"])


def check_training(datasets: list, config: Any = None, template: str | None = None,
                   workspace: str | Path = "workspace", max_pipelines: int = 1000) -> list:
    """Everything ``train`` would refuse, before it runs; returns the expanded pipelines."""
    pipelines = check_config(config, template, workspace, max_pipelines)
    names = [normalize_spec(spec)["name"] for spec in datasets]
    if len(set(names)) != len(names):
        raise ConfigError(f"dataset names must be unique in a run, got {names}")
    task = task_of(pipelines)
    for spec in datasets:
        check_dataset(spec, task)
    return pipelines
