"""What every part of the store shares: the workspace folder, the connector, the clock,
JSON and argument checks. The ``WorkspaceStore`` facade is assembled from the parts."""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from nirs.trace import PARTITIONS  # noqa: F401 - the trace contract's partitions are the store's

from .artifacts import ArtifactFiles
from .connection import Connector
from .errors import InvalidInputError, NotFoundError

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


class StoreBase:
    """State shared by the parts of the facade."""

    path: Path
    db_path: Path
    files: ArtifactFiles
    _db: Connector

    def _require(self, con, table: str, key: str, value: str) -> tuple:
        """The row with this id, or NotFoundError. Rows seen while this connection is
        open are remembered: the lock is held all that time, so no one else can delete
        them, and our own deletes forget them."""
        known = self._db.rows
        row = known.get((table, value))
        if row is None:
            row = self._first_settled(con, f"SELECT * FROM {table} WHERE {key} = ?", [value])
            if row is None:
                raise NotFoundError(table.rstrip("s"), value, self.path)
            if table in ("runs", "pipelines"):
                known[(table, value)] = row[:2]  # ids only: statuses change
        return row

    def _column_of(self, con, table: str, key: str, value: str, column: str):
        """One never-changing column of the row with this id (NotFoundError if none),
        remembered like ``_require``'s rows for as long as the connection is open."""
        known = self._db.rows
        if (table, value, column) not in known:
            row = self._first_settled(con, f"SELECT {column} FROM {table} WHERE {key} = ?", [value])
            if row is None:
                raise NotFoundError(table.rstrip("s"), value, self.path)
            known[(table, value, column)] = row[0]
        return known[(table, value, column)]

    def _first_settled(self, con, sql: str, params: list):
        """The first row of `sql`, looked for again after settling if the first look
        missed and rows may still wait in the buffer or the journal."""
        row = first(con.execute(sql, params))
        if row is None and self._settled_after_miss(con):
            row = first(con.execute(sql, params))
        return row

    def _salvage_journal(self) -> str | None:
        """Set a damaged journal aside, keeping its whole records (``storage/writes.py``)."""
        return None

    def _settled_after_miss(self, con) -> bool:
        """A lookup found nothing: apply what may still wait in the write buffer or the
        journal (see ``storage/writes.py``), and say whether to look again."""
        return False

    def _remember(self, table: str, value: str, column: str, found) -> None:
        """Seed ``_column_of``'s memory with a row this connection has just written."""
        self._db.rows[(table, value, column)] = found

    def _one_dict(self, con, sql: str, params: list, kind: str, key: str) -> dict:
        cur = con.execute(sql, params)
        row = first(cur)
        if row is None:
            raise NotFoundError(kind, key, self.path)
        return dict(zip([d[0] for d in cur.description], row))

    def _frame(self, sql: str, params: list | None = None) -> pl.DataFrame:
        # Columns come from the query's schema, so an empty result has the same columns.
        with self._db.reading() as con:
            return con.sql(sql, params=params or None).pl()
