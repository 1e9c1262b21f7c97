"""The Prefect task that loads a run's datasets; the specs themselves (built-in names,
or files with a target column) are described in ``nirs.specs``."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from nirs.specs import BUILTIN, DatasetSpecError, describe_spec, load_spec, normalize_spec, spec_name

__all__ = ["BUILTIN", "DatasetSpecError", "describe_spec", "load_dataset", "load_spec", "normalize_spec", "spec_name"]


# Spectra matrices are task outputs here: never hashed for a cache key, never written to
# result storage (the reference files are the record).
@task(name="load-dataset", task_run_name="load {spec_label}", cache_policy=NO_CACHE, persist_result=False)
def load_dataset(spec: Any, spec_label: str, task: str | None = None):
    return load_spec(spec, task)
