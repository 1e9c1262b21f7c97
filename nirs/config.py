"""Pipeline configs: write them, count them, expand them, check them before anything runs.

A pipeline is a list of steps. A step is

* a Python object (an estimator, transformer or splitter instance, or a class);
* a short name or dotted path: ``"SNV"``, ``"sklearn.preprocessing.StandardScaler"``;
* a dict ``{"class": <name>, "params": {...}}``;
* a keyword dict giving the role explicitly: ``{"model": <step>}``, ``{"split": <step>}``
  (the cross-validation splitter), ``{"y_processing": <step>}`` (a scaler for the target,
  regression only);
* ``None`` (no step: handy as an ``_or_`` alternative) or a nested list of steps (spliced in).

Without a keyword, a splitter is the split, a regressor or classifier is the model, anything
else is a preprocessing transformer. Exactly one model, as the last fitted step; without a
split step, ``KFold(n_splits=5, shuffle=True, random_state=0)`` is used. `_or_` and
`_range_` generators (`nirs.generators`) may stand for any step or parameter value. A config
file holds the list, or ``{"pipeline": [...]}``.

Errors are `ConfigError`s, raised before anything is fitted; steps are counted from 1, as
the user reads the list.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

from sklearn.base import clone, is_classifier, is_regressor

from nirs import generators
from nirs.errors import ConfigError
from nirs.registry import (
    class_path,
    explicit_params,
    init_param_names,
    resolve_class,
    short_name,
    to_json_safe,
)

__all__ = [
    "ConfigError",
    "ExpandedPipeline",
    "BuiltPipeline",
    "DEFAULT_SPLITTER",
    "load_config",
    "count_pipelines",
    "expand",
    "validate",
    "as_pipeline",
    "build",
    "task_of",
]

ROLE_KEYS = ("model", "split", "y_processing")
#: Beside "split": the metadata column whose values keep samples together in one fold
#: (replicate scans of one sample, one batch, one field): nirs4all's spelling.
GROUP_KEY = "group"
DEFAULT_SPLITTER = {
    "class": "sklearn.model_selection.KFold",
    "params": {"n_splits": 5, "shuffle": True, "random_state": 0},
}
_TOP_KEYS = {"pipeline", "name", "description"}


@dataclass(frozen=True)
class ExpandedPipeline:
    """One concrete pipeline out of a config.

    `config` is the JSON-safe pipeline as it will run (classes as dotted paths, the default
    splitter spelled out); expanding it again gives this same pipeline. `choices` records
    the generator choices that produced it. `steps` keeps the raw steps, Python objects
    included, from which `build` makes fresh estimators.
    """

    name: str
    config: list
    choices: list
    steps: list = field(repr=False)


@dataclass
class BuiltPipeline:
    """Fresh, unfitted objects for one pipeline, in pipeline order (split step aside)."""

    name: str
    steps: list  # [(kind, estimator)], kind: "transformer" | "y_transformer" | "model"
    splitter: object
    pipeline: ExpandedPipeline
    split_group: str | None = None  # the metadata column that keeps samples together in a fold


# -- reading ------------------------------------------------------------------------------


def load_config(path) -> object:
    """A config from a .json, .yaml or .yml file; syntax errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if not text.strip():
        raise ConfigError(f"{path}: the config file is empty")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}") from None
    if suffix in (".yaml", ".yml"):
        import yaml  # only needed for YAML configs

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            raise ConfigError(f"{path}: {where}invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    raise ConfigError(f"{path}: unsupported config file type {suffix!r}; expected .json, .yaml or .yml")


def _steps_node(config):
    if isinstance(config, dict) and not generators.is_generator(config):
        unknown = sorted(set(config) - _TOP_KEYS)
        if "pipeline" not in config or unknown:
            raise ConfigError(
                f"a config dict needs a 'pipeline' list (and optional name/description); found keys {sorted(config)}"
            )
        config = config["pipeline"]
    if not isinstance(config, (list, tuple)) and not generators.is_generator(config):
        raise ConfigError(f"a pipeline config is a list of steps, got {type(config).__name__}")
    return config


# -- checks on the raw tree (names and parameter names, with the user's positions) ---------


def _check_param_names(cls, params: dict, where: str) -> None:
    valid = init_param_names(cls)
    if valid is None:
        return
    for key in params:
        if key not in valid:
            close = difflib.get_close_matches(str(key), sorted(valid), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{where}: {cls.__name__} has no parameter {key!r}{hint}; "
                f"its parameters are: {', '.join(sorted(valid)) or '(none)'}"
            )


def _precheck_value(value, where: str) -> None:
    if isinstance(value, dict):
        if generators.OR in value and isinstance(value[generators.OR], list):
            for i, alt in enumerate(value[generators.OR]):
                _precheck_value(alt, f"{where}, _or_ alternative {i + 1}")
        elif "class" in value and set(value) <= {"class", "params"}:
            _precheck_component(value, where)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _precheck_value(v, where)


def _precheck_component(node, where: str) -> None:
    if generators.is_generator(node):
        if generators.RANGE in node:
            raise ConfigError(f"{where}: a _range_ gives numbers; it cannot stand for a step")
        alts = node[generators.OR]
        if isinstance(alts, list):
            for i, alt in enumerate(alts):
                _precheck_component(alt, f"{where}, _or_ alternative {i + 1}")
        return
    if isinstance(node, str):
        resolve_class(node, f"{where}: ")
    elif isinstance(node, dict):
        if "class" not in node:
            raise ConfigError(
                f"{where}: a step dict needs a 'class' (or one of the keys {', '.join(ROLE_KEYS)}); found keys {sorted(node)}"
            )
        extra = sorted(set(node) - {"class", "params"})
        if extra:
            raise ConfigError(f"{where}: unexpected keys {extra} beside 'class'; parameters go under 'params'")
        cls = resolve_class(node["class"], f"{where}: ")
        params = node.get("params") or {}
        alternatives = params[generators.OR] if generators.is_generator(params) and generators.OR in params else [params]
        for p in alternatives:
            if not isinstance(p, dict):
                raise ConfigError(f"{where}: 'params' of {cls.__name__} must be a dict, got {p!r}")
            _check_param_names(cls, p, where)
            for key, value in p.items():
                _precheck_value(value, f"{where}, parameter {key!r}")
    elif not (inspect.isclass(node) or hasattr(node, "fit") or hasattr(node, "split")):
        raise ConfigError(
            f"{where}: cannot use {node!r} as a step; expected a class name, a {{'class': ...}} dict or an estimator"
        )


def _precheck_step(node, where: str) -> None:
    if node is None:
        return
    if isinstance(node, (list, tuple)):
        for j, item in enumerate(node):
            _precheck_step(item, f"{where}, item {j + 1}")
    elif generators.is_generator(node) and generators.OR in node and isinstance(node[generators.OR], list):
        for i, alt in enumerate(node[generators.OR]):
            _precheck_step(alt, f"{where}, _or_ alternative {i + 1}")
    elif isinstance(node, dict) and any(k in node for k in ROLE_KEYS):
        role = _role_key(node)
        if role is None:
            raise ConfigError(f"{where}: a role dict has exactly one key ({', '.join(ROLE_KEYS)}), and a split may "
                              f"have a {GROUP_KEY!r} beside it; found {sorted(node)}")
        group = split_group(node)
        if role == "split" and GROUP_KEY in node and not (isinstance(group, str) and group.strip()):
            raise ConfigError(f"{where}: {GROUP_KEY!r} names a metadata column, got {group!r}")
        _precheck_component(node[role], f"{where} ({role})")
    else:
        _precheck_component(node, where)


def _precheck(steps) -> None:
    if isinstance(steps, (list, tuple)):
        for i, node in enumerate(steps):
            _precheck_step(node, f"step {i + 1}")
    else:
        _precheck_step(steps, "pipeline")


# -- one concrete pipeline ----------------------------------------------------------------


def _flatten(steps) -> list:
    out = []
    for node in steps:
        if node is None:
            continue
        if isinstance(node, (list, tuple)):
            out.extend(_flatten(node))
        else:
            out.append(node)
    return out


def _param_value(value, where: str):
    if isinstance(value, dict) and "class" in value and set(value) <= {"class", "params"}:
        return _instantiate(value, where)
    if isinstance(value, list):
        return [_param_value(v, where) for v in value]
    return value


def _instantiate(node, where: str):
    """A fresh object for a step node (name, class, dict or instance)."""
    if isinstance(node, str):
        node = {"class": node}
    if inspect.isclass(node):
        cls, params = node, {}
    elif isinstance(node, dict):
        cls = resolve_class(node["class"], f"{where}: ")
        params = dict(node.get("params") or {})
        _check_param_names(cls, params, where)
    else:
        obj = clone(node) if hasattr(node, "get_params") else copy.deepcopy(node)
        cls, params = type(obj), None
    if params is not None:
        kwargs = {k: _param_value(v, f"{where}, parameter {k!r}") for k, v in params.items()}
        try:
            obj = cls(**kwargs)
        except Exception as exc:
            raise ConfigError(f"{where}: {cls.__name__}({_fmt_params(params)}) failed: {exc}") from None
    check = getattr(obj, "_validate_params", None)  # scikit-learn's declared parameter constraints
    if callable(check):
        try:
            check()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return obj


def _role_key(node) -> str | None:
    """The role a keyword dict gives its step: ``{"model": ...}``, ``{"y_processing": ...}``,
    ``{"split": ...}`` or ``{"split": ..., "group": "<metadata column>"}``; else None."""
    if isinstance(node, dict) and (len(node) == 1 or set(node) == {"split", GROUP_KEY}):
        key = "split" if "split" in node else next(iter(node))
        return key if key in ROLE_KEYS else None
    return None


def split_group(node) -> str | None:
    """The metadata column a split step groups samples by (``"group"`` beside ``"split"``)."""
    return node.get(GROUP_KEY) if _role_key(node) == "split" else None


def _role(node, obj) -> str:
    role = _role_key(node)
    if role is not None:
        return role
    if hasattr(obj, "split") and hasattr(obj, "get_n_splits") and not hasattr(obj, "fit"):
        return "split"
    if is_regressor(obj) or is_classifier(obj) or (hasattr(obj, "predict") and not hasattr(obj, "transform")):
        return "model"
    return "transformer"


def _inner(node):
    role = _role_key(node)
    if role is not None:
        return node[role]
    return node


def _check_role(role: str, obj, where: str) -> None:
    name = type(obj).__name__
    needs = {
        "split": ("split", "get_n_splits"),
        "model": ("fit", "predict"),
        "y_processing": ("fit", "transform", "inverse_transform"),
        "transformer": ("fit", "transform"),
    }[role]
    missing = [m for m in needs if not hasattr(obj, m)]
    if missing:
        what = {"split": "a splitter", "model": "a model", "y_processing": "a target scaler", "transformer": "a transformer"}[role]
        raise ConfigError(f"{where}: {name} cannot be {what}: it has no {', '.join(missing)} method")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":
        items = list(value)
        if len(items) > 4:
            return f"[{_fmt(items[0])}..{_fmt(items[-1])}]({len(items)})"
        return "[" + ",".join(_fmt(v) for v in items) + "]"
    if isinstance(value, dict) and "class" in value:
        return short_name(resolve_class(value["class"]))
    if hasattr(value, "get_params") or hasattr(value, "split"):
        return short_name(value)
    return str(value)


def _fmt_params(params: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def _display(node, obj) -> str:
    inner = _inner(node)
    if isinstance(inner, dict):
        # Constructor order, so a name does not depend on how a file ordered its keys.
        given = dict(inner.get("params") or {})
        order = list(inspect.signature(type(obj).__init__).parameters)
        params = {k: given[k] for k in sorted(given, key=lambda k: (order.index(k) if k in order else len(order), k))}
    elif isinstance(inner, str) or inspect.isclass(inner):
        params = {}
    else:
        params = explicit_params(obj)
    return short_name(obj) + (f"({_fmt_params(params)})" if params else "")


def _json_step(role: str, node, obj) -> object:
    inner = _inner(node)
    if isinstance(inner, dict):
        comp = {"class": class_path(obj), "params": to_json_safe(dict(inner.get("params") or {}))}
    elif isinstance(inner, str) or inspect.isclass(inner):
        comp = {"class": class_path(obj), "params": {}}
    else:
        comp = to_json_safe(obj)
    if role == "transformer":
        return comp
    group = split_group(node)
    return {role: comp} if group is None else {role: comp, GROUP_KEY: group}


def _assemble(steps: list, where: str):
    """Instantiate and check one expanded pipeline: [(role, node, obj, step_label)]."""
    entries = []
    for i, node in enumerate(_flatten(steps), start=1):
        inner = _inner(node)
        label = f"{where}step {i}"
        obj = _instantiate(inner, label)
        role = _role(node, obj)
        _check_role(role, obj, f"{label} ({type(obj).__name__})")
        entries.append((role, node, obj, f"{label} ({type(obj).__name__})"))
    by_role = {r: [e for e in entries if e[0] == r] for r in (*ROLE_KEYS, "transformer")}
    models = by_role["model"]
    if not models:
        found = ", ".join(type(e[2]).__name__ for e in entries) or "none"
        raise ConfigError(
            f"{where}no model step (steps found: {found}); add one, e.g. {{\"model\": \"PLSRegression\"}}"
        )
    for role in ROLE_KEYS:
        if len(by_role[role]) > 1:
            listed = " and ".join(e[3] for e in by_role[role])
            raise ConfigError(f"{where}{len(by_role[role])} {role} steps ({listed}); a pipeline has at most one")
    model_pos = entries.index(models[0])
    for e in entries[model_pos + 1 :]:
        if e[0] == "transformer":
            raise ConfigError(f"{where}{e[3]} comes after the model ({models[0][3]}); preprocessing goes before it")
    if not by_role["split"]:
        node = {"split": DEFAULT_SPLITTER}
        entries.append(("split", node, _instantiate(DEFAULT_SPLITTER, f"{where}default split"), "default split"))
    return entries


def _name(index: int, width: int, entries) -> str:
    parts = []
    for role, node, obj, _ in entries:
        if role == "split":
            continue
        text = _display(node, obj)
        parts.append(f"Y({text})" if role == "y_processing" else text)
    return f"{index:0{width}d}_" + "-".join(parts)


# -- public API -----------------------------------------------------------------------------


def count_pipelines(config) -> int:
    """How many pipelines `config` generates, without expanding it."""
    return generators.count(_steps_node(config), "pipeline")


def expand(config, max_pipelines: int = 1000) -> list[ExpandedPipeline]:
    """Every pipeline of `config`, checked, named "0001_SNV-PLSRegression(n_components=8)".

    Raises ConfigError naming the count and the limit when there are more than
    `max_pipelines`, and for any unknown class, bad parameter or ill-formed pipeline.
    """
    steps = _steps_node(config)
    _precheck(steps)
    total = generators.count(steps, "pipeline")
    if total > max_pipelines:
        raise ConfigError(
            f"the config generates {total} pipelines, above the limit of {max_pipelines}; "
            "narrow its _or_/_range_ choices or raise max_pipelines"
        )
    width = max(4, len(str(total)))
    out = []
    for index, (variant, choices) in enumerate(generators.expand(steps, "pipeline"), start=1):
        if not isinstance(variant, list):
            raise ConfigError(f"pipeline {index}: a top-level _or_ alternative must be a list of steps, got {variant!r}")
        where = f"pipeline {index} of {total}: " if total > 1 else ""
        entries = _assemble(variant, where)
        out.append(
            ExpandedPipeline(
                name=_name(index, width, entries),
                config=[_json_step(role, node, obj) for role, node, obj, _ in entries],
                choices=to_json_safe(choices),
                steps=[node for _, node, _, _ in entries],
            )
        )
    return out


def validate(config, max_pipelines: int = 1000) -> list[ExpandedPipeline]:
    """Check a config before anything is fitted; returns its expanded pipelines."""
    return expand(config, max_pipelines=max_pipelines)


def as_pipeline(pipeline) -> ExpandedPipeline:
    """An ExpandedPipeline from one, or from a config that generates exactly one pipeline."""
    if isinstance(pipeline, ExpandedPipeline):
        return pipeline
    n = count_pipelines(pipeline)
    if n != 1:
        raise ConfigError(f"this config generates {n} pipelines; expand() it and fit them one by one")
    return expand(pipeline)[0]


def build(pipeline) -> BuiltPipeline:
    """Fresh, unfitted estimators for one pipeline (instances in the config are cloned)."""
    p = as_pipeline(pipeline)
    entries = _assemble(p.steps, f"{p.name}: ")
    kinds = {"transformer": "transformer", "y_processing": "y_transformer", "model": "model"}
    steps = [(kinds[role], obj) for role, _, obj, _ in entries if role != "split"]
    _, split_node, splitter, _ = next(e for e in entries if e[0] == "split")
    return BuiltPipeline(name=p.name, steps=steps, splitter=splitter, pipeline=p, split_group=split_group(split_node))


def task_of(pipelines) -> str | None:
    """``"regression"`` or ``"classification"`` when every pipeline's model is of that
    kind (scikit-learn's ``is_regressor`` / ``is_classifier``), else None (the targets
    decide). Read with it, a target column of text under a regression model is refused
    when it is read, naming the cell, rather than failing every pipeline at its fit; and
    class codes that look like numbers are read as classes under a classifier."""
    kinds = set()
    for p in pipelines:
        model = next(obj for kind, obj in build(p).steps if kind == "model")
        kinds.add("regression" if is_regressor(model) else "classification" if is_classifier(model) else None)
    return kinds.pop() if len(kinds) == 1 else None
