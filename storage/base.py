"""What the parts of the store share: the clock, ids, JSON, argument checks, and the two
ways a part reads (one row as a dict, a query as a polars DataFrame)."""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from nirs.trace import PARTITIONS  # noqa: F401 - the trace contract's partitions are the store's

from .errors import InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from .connection import Connector

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def first(cursor) -> tuple | None:
    """The first row of a result, or None. Reads the result to its end: in DuckDB 2 an
    unfinished result blocks its connection for some later calls."""
    rows = cursor.fetchall()
    return rows[0] if rows else None


def now() -> datetime:
    """UTC, without tzinfo: every timestamp in the store is UTC."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_id() -> str:
    """A random (version 4) UUID as text, as ``str(uuid.uuid4())`` gives, formatted here
    in ~1.6 us rather than ~4-5 us: every prediction of a 20,000-row batch takes one."""
    b = bytearray(os.urandom(16))
    b[6] = b[6] & 0x0F | 0x40  # version 4
    b[8] = b[8] & 0x3F | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Path, datetime)):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_json(name: str, value: Any) -> str | None:
    if value is None:
        return None
    try:
        return json.dumps(value, default=_json_default, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} cannot be stored as JSON: {exc}") from exc


def from_json(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def check_id(kind: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{kind} id must be a non-empty string, got {value!r}")
    return value


def check_text(name: str, value: Any, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a string, got {type(value).__name__} {value!r}")
    return value


def check_score(name: str, value: Any) -> float | None:
    """A score is a finite number or None (missing); never NaN, never silently 0.0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidInputError(f"{name} must be a number or None, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidInputError(f"{name} must be finite, got {value}; pass None for a missing score")
    return value


def check_int(name: str, value: Any, *, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    return int(value)


def where_equal(**filters: Any) -> tuple[str, list]:
    """`` WHERE a = ? AND b = ?`` for the filters that are not None, and their values."""
    given = {column: check_text(column, value) for column, value in filters.items() if value is not None}
    sql = " WHERE " + " AND ".join(f"{column} = ?" for column in given) if given else ""
    return sql, list(given.values())


def one_dict(con, sql: str, params: list, kind: str, key: str, workspace: Path) -> dict:
    """The one row of `sql` as {column: value}, or NotFoundError naming the id."""
    cur = con.execute(sql, params)
    row = first(cur)
    if row is None:
        raise NotFoundError(kind, key, workspace)
    return dict(zip([d[0] for d in cur.description], row))


def frame(db: "Connector", sql: str, params: list | None = None) -> pl.DataFrame:
    # Columns come from the query's schema, so an empty result has the same columns.
    with db.reading() as con:
        return con.sql(sql, params).pl()
