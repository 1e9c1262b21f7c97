"""The prediction journal: how a single ``save_prediction`` commits in ~2 ms.

DuckDB's cost for one committed row grows with its number of columns (about 90 µs a
column here, measured on DuckDB 2.0.1, whether through an appender, a prepared INSERT or
literal SQL). A prediction is 23 columns plus 6 in ``prediction_arrays``: ~4 ms a call,
under 250 calls/s. So a call made on its own commits one two-column row into
``prediction_journal`` instead (the prediction's fields and arrays in one payload), in
its own transaction: it is as durable when the call returns as a row in the final
tables would be. The journal is settled, that is moved into ``predictions`` and
``prediction_arrays`` through the fast appender path, in one transaction, before any
other call runs on the connection and before the workspace is handed to another process
(so nobody ever reads the final tables without the journal's rows in them). A writer
killed in between leaves committed journal rows; the next process to open the workspace
settles them first (a reader takes the write lock for it).

Calls inside ``store.batch()`` skip the journal: their rows go straight to the appenders.
"""

from __future__ import annotations

import json
import struct
from datetime import datetime
from typing import Sequence

import duckdb

TABLE = "prediction_journal"
_HEAD = struct.Struct("<I")  # length of the JSON header that follows


def encode(row: Sequence, blobs: Sequence[bytes | None]) -> bytes:
    # JSON carries timestamps as text; the header says which fields to turn back
    when = [i for i, value in enumerate(row) if isinstance(value, datetime)]
    fields = [value.isoformat() if i in when else value for i, value in enumerate(row)]
    header = json.dumps([fields, [None if b is None else len(b) for b in blobs], when]).encode()
    return b"".join([_HEAD.pack(len(header)), header, *(b for b in blobs if b is not None)])


def decode(payload: bytes) -> tuple[list, list[bytes | None]]:
    (size,) = _HEAD.unpack_from(payload)
    header = json.loads(payload[_HEAD.size:_HEAD.size + size])
    # the first payloads (commits e5fc264-8872916) had no list of timestamp fields:
    # theirs was created_at, at index 21 of the predictions row
    fields, lengths, when = header if len(header) == 3 else (*header, [21])
    for i in when:
        fields[i] = datetime.fromisoformat(fields[i])
    blobs: list[bytes | None] = []
    at = _HEAD.size + size
    for length in lengths:
        blobs.append(None if length is None else payload[at:at + length])
        at += length or 0
    return fields, blobs


def write(con: duckdb.DuckDBPyConnection, prediction_id: str, row: Sequence, blobs: Sequence) -> None:
    con.execute(f"INSERT INTO {TABLE} VALUES (?, ?)", [prediction_id, encode(row, blobs)])


def has_rows(con: duckdb.DuckDBPyConnection) -> bool:
    return con.execute(f"SELECT count(*) FROM (SELECT 1 FROM {TABLE} LIMIT 1)").fetchall()[0][0] > 0


def contains(con: duckdb.DuckDBPyConnection, prediction_id: str) -> bool:
    return con.execute(f"SELECT count(*) FROM {TABLE} WHERE prediction_id = ?",
                       [prediction_id]).fetchall()[0][0] > 0


def take(con: duckdb.DuckDBPyConnection) -> list[tuple[list, list[bytes | None]]]:
    """Every journal row as (predictions row, array blobs), in the order they were
    written, and the journal emptied, in the caller's transaction: the caller writes
    them to the final tables in that same transaction."""
    payloads = con.execute(f"SELECT payload FROM {TABLE} ORDER BY rowid").fetchall()
    if payloads:
        con.execute(f"DELETE FROM {TABLE}")
    return [decode(payload) for (payload,) in payloads]
