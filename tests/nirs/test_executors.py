"""Executor specs (nirs/executors.py): what ``--executor`` and ``processes`` ask for, and
one clear error for what nirsflow cannot run."""

from __future__ import annotations

import pytest

from nirs.executors import DEFAULT_EXECUTOR, ExecutorError, parse_spec
from nirs.errors import ConfigError


def test_specs_name_an_executor_and_its_workers():
    assert parse_spec(None) == (DEFAULT_EXECUTOR, max(2, __import__("os").cpu_count() - 1))
    assert parse_spec(None, processes=3) == ("loky", 3)  # processes=N alone: N worker processes, as before
    assert parse_spec("threads", processes=4) == ("threads", 4)
    assert parse_spec("dask://local", 2) == ("dask://local", 2)
    assert parse_spec("dask://10.0.0.5:8786/")[0] == "dask://10.0.0.5:8786"


@pytest.mark.parametrize("spec", ["spark://x", "dask://", "dask://host", "dask://host:port", "process"])
def test_an_unknown_executor_is_a_config_error_naming_what_is_expected(spec):
    with pytest.raises(ExecutorError) as raised:
        parse_spec(spec)
    assert isinstance(raised.value, ConfigError)
    assert repr(spec) in str(raised.value) and "dask://HOST:PORT" in str(raised.value)
