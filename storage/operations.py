"""The writes a transaction buffers, as typed operations, and how they land in bulk.

New rows and completions are not executed statement by statement: the parts of the store
buffer them (``Transaction.buffer``) and the connector applies a whole transaction's (or
a whole journal's) at once, here: one appender flush per table and column set, one
``UPDATE ... FROM (VALUES ...)`` per table and column set, so tens of thousands of
predictions a second land in a batch. An INSERT costs about a millisecond of parsing
and planning per statement here, an appended row a few microseconds.

Three operations, each a plain tuple underneath (NamedTuple), so the journal can store
them as plain values (storage/journal.py):

* ``Insert(table, columns, values)``: a new row; ``columns`` None means the table's order;
* ``Update(table, key_column, key, columns, values)``: set columns of the row with that key
  (a pipeline's completion);
* ``SaveArtifact(values)``: an ``artifacts`` row, in the table's order: added if its id is
  new, otherwise the stored row's grace period is renewed (its last save), unless a chain
  of the same operations references it (the chain keeps it alive).

A row is always inserted before it is updated, and operations are applied in the order
they were buffered (a journal's in the order its records committed), so folding an update
into the insert of the same operations keeps their meaning.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import duckdb


class Insert(NamedTuple):
    table: str
    columns: tuple[str, ...] | None
    values: list


class Update(NamedTuple):
    table: str
    key_column: str
    key: str
    columns: tuple[str, ...]
    values: list


class SaveArtifact(NamedTuple):
    values: list  # artifact_id, artifact_path, content_hash, operator_class, artifact_type, format,
    #               size_bytes, created_at, last_saved_at


Op = Insert | Update | SaveArtifact


class Appenders:
    """DuckDB appenders of one attachment, one per (table, columns): no SQL per row. They
    live as long as the file stays attached (the connector drops them with it)."""

    def __init__(self) -> None:
        self._by_target: dict[tuple[str, tuple | None], duckdb.DuckDBPyAppender] = {}

    def append(self, con: duckdb.DuckDBPyConnection, table: str, columns: tuple | None, rows: list) -> None:
        if not rows:
            return  # an empty flush still costs DuckDB ~0.5 ms
        appender = self._by_target.get((table, columns))
        if appender is None:
            appender = self._by_target[(table, columns)] = con.appender(
                table, columns=list(columns) if columns else None)
        for row in rows:
            appender.append_row(*row)
        appender.flush()

    def clear(self) -> None:
        """Drop rows an append cut short left behind (the transaction is being rolled back)."""
        for appender in self._by_target.values():
            appender.clear()


def apply(con: duckdb.DuckDBPyConnection, ops: Sequence[Op], appenders: Appenders) -> None:
    """Apply `ops`, in the caller's transaction."""
    if not ops:
        return
    inserts: dict[tuple, list] = {}  # (table, columns): rows, in first-seen order
    updates: list[Update] = []
    artifacts: dict[str, list] = {}  # artifact_id: its row, last save kept
    chained: set[str] = set()  # artifacts a chain references after their last save
    for op in ops:  # one tight pass: a large batch has tens of thousands of operations
        kind = type(op)
        if kind is Insert:
            group = inserts.get((op.table, op.columns))
            if group is None:
                group = inserts[(op.table, op.columns)] = []
            group.append(op.values)
            if op.table == "chain_artifacts":
                chained.add(op.values[1])
        elif kind is SaveArtifact:
            artifact_id = op.values[0]
            known = artifacts.get(artifact_id)
            if known is None:
                artifacts[artifact_id] = list(op.values)
            else:
                known[-1] = max(known[-1], op.values[-1])  # saved again: the last save counts
            chained.discard(artifact_id)
        else:
            updates.append(op)
    folded = _fold_updates(inserts, updates) if updates else {}
    if artifacts:
        _save_artifacts(con, artifacts, chained, appenders)
    for (table, columns), rows in inserts.items():
        appenders.append(con, table, columns, rows)
    for (table, key_column, columns), rows in folded.items():
        width = len(columns) + 1
        values = ", ".join(["(" + ", ".join("?" * width) + ")"] * len(rows))
        sets = ", ".join(f"{c} = v.{c}" for c in columns)
        con.execute(f"UPDATE {table} SET {sets} FROM (VALUES {values}) AS v(_key, {', '.join(columns)}) "
                    f"WHERE {table}.{key_column} = v._key",
                    [value for key, row in rows.items() for value in (key, *row)])


def stored_artifacts(con: duckdb.DuckDBPyConnection, ids: list[str]) -> set[str]:
    """Which of `ids` have a row in ``artifacts``."""
    return {r[0] for r in con.execute("SELECT artifact_id FROM artifacts WHERE list_contains(?, artifact_id)",
                                      [ids]).fetchall()}


def _save_artifacts(con, by_id: dict[str, list], chained: set[str], appenders: Appenders) -> None:
    # An appender (no SQL per row, and no pyarrow, which imports pandas (0.5-1 s) the first
    # time it converts Python objects, here under the exclusive lock) and two cheap
    # statements: an upsert through a staging table cost 5-6 ms a flush.
    existing = stored_artifacts(con, list(by_id))
    appenders.append(con, "artifacts", None, [row for artifact_id, row in by_id.items() if artifact_id not in existing])
    renew = sorted(existing - chained)
    if renew:
        # A save that found its artifact already stored renews its grace period, unless a
        # chain of the same writes references it: the chain keeps it alive (the usual case:
        # a pipeline re-saves stateless steps earlier ones saved).
        con.execute("UPDATE artifacts SET last_saved_at = ? WHERE list_contains(?, artifact_id)",
                    [max(by_id[i][-1] for i in renew), renew])


def _fold_updates(inserts: dict[tuple, list], updates: list[Update]) -> dict[tuple, dict]:
    """Fold each update of a row these same operations insert (a pipeline begun and
    completed between two settles) into the insert, so it costs no UPDATE statement;
    return the others as {(table, key column, columns): {key: values}}, a later update of
    a row replacing an earlier one (completions set every column they name)."""
    patches: dict[tuple, dict] = {}
    for op in updates:
        patches.setdefault((op.table, op.key_column, op.key), {}).update(zip(op.columns, op.values))
    for (table, columns), rows in list(inserts.items()):
        if not columns or not any(p[0] == table and p[1] == columns[0] for p in patches):
            continue
        kept = []
        for values in rows:
            patch = patches.pop((table, columns[0], values[0]), None)
            if patch is None:
                kept.append(values)
                continue
            row = {**dict(zip(columns, values)), **patch}
            inserts.setdefault((table, tuple(row)), []).append(list(row.values()))
        inserts[(table, columns)] = kept
    rest: dict[tuple, dict] = {}
    for (table, key_column, key), patch in patches.items():  # the rows not inserted here
        rest.setdefault((table, key_column, tuple(patch)), {})[key] = list(patch.values())
    return rest
