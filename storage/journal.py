"""The write journal's operations and their payloads: how a small write transaction
commits without touching DuckDB's tables.

DuckDB's cost for committing rows grows with the number of tables and columns a
transaction touches (about 90 µs a column here, measured on DuckDB 2.0.1, whether
through an appender, a prepared INSERT or literal SQL), hardly with the number of rows.
A pipeline recorded whole (its row, artifacts, chain, ~17 predictions and their arrays,
its completion) touches six tables and ~80 columns: ~20 ms of DuckDB per pipeline; a
single prediction, 29 columns: ~4 ms. So a write transaction made only of buffered
writes commits them as one payload, ``encode``d here, appended to the journal file
(``storage/journal_file.py``). It is as durable when the call returns as rows in the
final tables would be.

The journal is settled, that is its operations applied to their tables in bulk (one
appender flush per table for many transactions, one UPDATE for every completion), in
one transaction, before any call that is not itself a buffered write, before a read,
and before the workspace is handed to another process once the journal is long (so
nobody ever reads the final tables without the journal's operations in them). A writer
killed in between leaves committed records; the next process to read or write settles
them first (a reader takes the write lock for it).

Schemas 3 and 4 journaled into a table (``journal``, where migration 0004 moved schema
3's ``prediction_journal``); ``take`` applies what an older nirsflow left there when the
workspace is opened.

An operation is a tuple:
    ("insert", table, columns, values)   a row; ``columns`` None means the table's order
    ("update", table, key_column, key, columns, values)
Values are None, bool, int, float, str, datetime, bytes, or lists of numbers/strings.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
from datetime import datetime
from typing import Sequence

import duckdb

TABLE = "journal"
# Starts every payload since migration 0004. Read as a legacy payload's header length it
# would be 4.8 MB: a single prediction's header never comes near.
_PICKLED = b"NFJ\x00"
_HEAD = struct.Struct("<I")  # legacy payloads: length of the JSON header that follows
# The predictions columns when single predictions had a journal of their own (migration
# 0003; 0004 moved its rows here): the order of those payloads' rows, frozen for good.
LEGACY_PREDICTION_COLUMNS = (
    "prediction_id", "pipeline_id", "chain_id", "dataset_name", "model_name", "model_class", "fold_id",
    "partition", "val_score", "test_score", "train_score", "metric", "task_type", "n_samples",
    "n_features", "scores", "best_params", "preprocessings", "branch_id", "branch_name",
    "refit_context", "created_at", "task_run_id",
)
LEGACY_ARRAY_COLUMNS = ("prediction_id", "y_true", "y_pred", "y_proba", "sample_indices", "weights")

Op = tuple


class _Unpickler(pickle.Unpickler):
    # Payloads hold plain values only; anything else in one is refused, never imported.
    def find_class(self, module: str, name: str):
        if (module, name) == ("datetime", "datetime"):
            return datetime
        raise pickle.UnpicklingError(f"journal payloads hold plain values, not {module}.{name}")


def encode(ops: Sequence[Op]) -> bytes:
    """One payload for a transaction's operations: a marker byte and the operations
    pickled (C-speed for plain values: a pipeline's ~700 values encode in ~0.2 ms, where
    JSON with markers for timestamps and bytes took ~2 ms)."""
    return _PICKLED + pickle.dumps([tuple(op) for op in ops], protocol=5)


def decode(payload: bytes) -> list[Op]:
    if payload[:len(_PICKLED)] == _PICKLED:
        return _Unpickler(io.BytesIO(payload[len(_PICKLED):])).load()
    # a single prediction, written before migration 0004: a JSON header and the blobs
    (size,) = _HEAD.unpack_from(payload)
    header = json.loads(payload[_HEAD.size:_HEAD.size + size])
    return _decode_legacy(header, payload, _HEAD.size + size)


def _decode_legacy(header: list, payload: bytes, at: int) -> list[Op]:
    # the first payloads (commits e5fc264-8872916) had no list of timestamp fields:
    # theirs was created_at, at index 21 of the predictions row
    fields, lengths, when = header if len(header) == 3 else (*header, [21])
    for i in when:
        fields[i] = datetime.fromisoformat(fields[i])
    blobs: list[bytes | None] = []
    for length in lengths:
        blobs.append(None if length is None else payload[at:at + length])
        at += length or 0
    return [("insert", "predictions", LEGACY_PREDICTION_COLUMNS, fields),
            ("insert", "prediction_arrays", LEGACY_ARRAY_COLUMNS, [fields[0], *blobs])]


def take(con: duckdb.DuckDBPyConnection) -> list[Op]:
    """Every operation journaled in the table, in the order the transactions committed,
    and the table emptied, in the caller's transaction: the caller applies them in that
    same transaction."""
    payloads = con.execute(f"SELECT payload FROM {TABLE} ORDER BY rowid").fetchall()
    if payloads:
        con.execute(f"DELETE FROM {TABLE}")
    return [op for (payload,) in payloads for op in decode(payload)]
