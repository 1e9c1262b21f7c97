"""Which spectra a run trains on: dataset specs, JSON-safe so they can be flow parameters
and deployment parameters, and how they are read (``tasks.data`` wraps the reading in a
Prefect task). Nothing here imports Prefect: ``nirsflow train`` checks its arguments
with it before Prefect starts.

A spec is one of

* a built-in name: ``"tablet1"`` / ``"tablet2"`` (the IDRC 2002 Tablet set, instrument 1
  or 2, with its 212 held-out test tablets), ``"tablet"`` (= ``"tablet1"``), ``"coffee"``;
* a dict ``{"name": "wheat", "train": "ref/wheat.csv", "test": "ref/wheat-test.csv",
  "target_column": "protein", "id_column": "sample_id", "task": None}``: reference files
  read by ``nirs.readers.read_spectra`` (CSV/TSV, Parquet, JCAMP-DX); ``test`` is optional.

The spec's name is the dataset name in the store (and the key of its aliases).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

BUILTIN = ("tablet", "tablet1", "tablet2", "coffee")
#: what the built-in sets' targets are, for axis labels: (analyte, unit)
BUILTIN_ANALYTES = {"tablet": ("active ingredient", "mg"), "tablet1": ("active ingredient", "mg"),
                    "tablet2": ("active ingredient", "mg"), "coffee": ("origin", None)}
_KEYS = {"name", "train", "test", "target_column", "id_column", "task", "separator"}


class DatasetSpecError(ValueError):
    """A dataset spec that cannot be read; the message names the spec and what is wrong."""


def normalize_spec(spec: Any) -> dict:
    """A checked dict form of a spec (no file is read)."""
    if isinstance(spec, str):
        if spec.lower() in BUILTIN:
            name = "tablet1" if spec.lower() == "tablet" else spec.lower()
            return {"name": name, "builtin": name}
        raise DatasetSpecError(
            f"dataset {spec!r} is not a built-in set ({', '.join(BUILTIN)}); give files as "
            "{'name': ..., 'train': <path>, 'target_column': ..., 'test': <path, optional>}")
    if not isinstance(spec, dict):
        raise DatasetSpecError(f"a dataset spec is a name or a dict, got {type(spec).__name__} {spec!r}")
    unknown = set(spec) - _KEYS - {"builtin"}
    if unknown:
        raise DatasetSpecError(f"dataset spec {spec!r}: unknown keys {sorted(unknown)}; expected some of {sorted(_KEYS)}")
    if "builtin" in spec:
        return dict(spec)
    for required in ("name", "train", "target_column"):
        if not spec.get(required):
            raise DatasetSpecError(f"dataset spec {spec!r} needs {required!r}")
    return dict(spec)


def spec_name(spec: Any) -> str:
    return normalize_spec(spec)["name"]


def describe_spec(spec: Any) -> dict:
    """What the store's ``runs.datasets`` keeps about a spec (JSON-safe, never raises)."""
    try:
        s = normalize_spec(spec)
    except DatasetSpecError as exc:
        return {"name": str(spec)[:80], "error": str(exc)}
    if "builtin" in s:
        return {"name": s["name"], "path": f"builtin:{s['builtin']}"}
    return {"name": s["name"], "path": str(s["train"]), "test": s.get("test"), "target_column": s["target_column"]}


def load_spec(spec: Any, task: str | None = None):
    """(train, test or None) as ``nirs`` SpectraDatasets, both named after the spec.
    ``task`` ("regression"/"classification", e.g. ``nirs.config.task_of`` of the run's
    pipelines) says how a file's targets are read, unless the spec says it itself."""
    s = normalize_spec(spec)
    if "builtin" in s:
        if s["builtin"] == "coffee":
            from nirs.datasets import load_coffee

            train, test = load_coffee(), None
        else:
            from nirs.datasets import load_tablet

            train, test = load_tablet(instrument=int(s["builtin"][-1]))
    else:
        from nirs.readers import read_spectra

        def read(path):
            p = Path(path).expanduser()
            if not p.exists():
                raise DatasetSpecError(f"dataset {s['name']!r}: file {p} does not exist")
            return read_spectra(p, id_column=s.get("id_column", "sample_id"), target_column=s["target_column"],
                                separator=s.get("separator"), task=s.get("task") or task, name=s["name"])

        train = read(s["train"])
        test = read(s["test"]) if s.get("test") else None
    train = dataclasses.replace(train, name=s["name"])
    if test is not None:
        test = dataclasses.replace(test, name=f"{s['name']}-test")
    return train, test
