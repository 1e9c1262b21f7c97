"""Buffered writes: rows and completions held in memory for the current transaction.

Inserts of new rows and a pipeline's completion are buffered as journal operations
(``storage/journal.py``) rather than executed one statement at a time. When the
transaction ends having made nothing but buffered writes, and not too many, they commit
as one record of the journal file (``storage/journal_file.py``); otherwise (a large
batch, or any other statement ran in between) they are applied to their tables, one
appender flush per table, before that statement and before the commit. So a read
inside a batch still sees the batch's rows.

A lookup that misses (a pipeline a buffered or journaled write created, forgotten after
a rollback) applies the journal and the buffer first and looks again: nothing is ever
reported missing because it is still in the journal.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import duckdb

from .base import StoreBase
from . import journal
from .journal_file import HEADER_SIZE, RECORD_OVERHEAD, JournalFile

# Past these, a transaction's buffered writes go straight to their tables: the journal
# would write them twice for little gain (the per-column cost is per transaction, and
# a transaction this large already amortizes it).
JOURNAL_MAX_ROWS = 512
JOURNAL_MAX_BYTES = 8 * 1024 * 1024
# A settle replaces the journal file (two fsyncs and a rename, under the journal's lock)
# only if nothing was appended since it read it and nobody holds or waits for that lock,
# or once the file is this long. While processes append, replacing it would hold up
# their appends for those fsyncs (on a busy disk, 40-80 ms) and the settle would wait
# its turn for the lock, holding the workspace all that time (~13 ms with four
# processes appending); the file is read from the marker's offset, so its length
# costs nothing but disk space.
RESET_JOURNAL_BYTES = 16 * 1024 * 1024


# Where a settle records how far the journal file has been applied ("<generation hex>:<offset>").
SETTLED_KEY = "journal_settled"


class WritesMixin(StoreBase):
    _journal: JournalFile
    _apply_artifacts: "Callable"  # ChainsMixin's: artifacts deduplicate against the table

    # The calling thread's buffered operations (the connector keeps them per thread).
    _ops = property(lambda self: self._db.ops, lambda self, ops: setattr(self._db, "ops", ops))

    def _buffer(self, *ops) -> None:
        self._ops.extend(ops)
        self._db.pending = True

    def _may_be_unsettled(self) -> bool:
        """Whether rows may sit in the buffer or the journal rather than in the tables."""
        return bool(self._ops) or self._db.journal_may_have_records()

    def _settled_after_miss(self, con) -> bool:
        # (a journal-only write cannot settle: it is made again, holding the workspace)
        if (self._db.writable or self._db.journal_only) and self._may_be_unsettled():
            self._db.settle_in_transaction(con)
            return True
        return False

    # -- hooks of the connector ------------------------------------------------------
    def _settle(self, con) -> None:
        """Apply every journaled operation, then this transaction's buffered ones."""
        ops, self._ops = self._take_journal(con) + self._ops, []
        self._apply(con, ops)

    def _take_journal(self, con) -> list:
        """The journal's operations not yet applied, in the caller's transaction, which
        also records how far the file is now applied; the file is emptied once that
        commits. From memory when this process wrote every record of it (the file ends
        where its last record did)."""
        db = self._db
        kept, tail = db.known_journal_now()
        if kept is not None and tail is not None and self._journal.end() == tail:
            generation, end = tail
            ops = [op for ops in kept for op in ops]
        else:
            generation, payloads, end = self._journal.read(self._settled_marker(con))
            ops = [op for payload in payloads for op in journal.decode(payload)]
        # applied in this transaction: a second settle in it takes only what came after
        # (a rollback forgets this)
        db.known_journal([], (generation, end))
        marked = db.txn_cache.get("journal_marked")
        if end > HEADER_SIZE and marked != (generation, end):
            # records, applied now or by a settle that crashed before its reset
            # an UPDATE of the row migration 0005 made: ~0.9 ms, where an upsert was ~2.3
            mark = f"{generation.hex()}:{end}"
            if con.execute("UPDATE meta SET value = ? WHERE key = ?", [mark, SETTLED_KEY]).fetchall()[0][0] != 1:
                con.execute("INSERT INTO meta VALUES (?, ?)", [SETTLED_KEY, mark])
            txn_cache = db.txn_cache
            if marked is None:  # reset once, after the commit, up to the last mark
                db.after_commit(lambda: self._reset_journal(*txn_cache["journal_marked"]))
            txn_cache["journal_marked"] = (generation, end)
        return ops

    @staticmethod
    def _settled_marker(con) -> tuple[bytes, int] | None:
        row = con.execute("SELECT value FROM meta WHERE key = ?", [SETTLED_KEY]).fetchall()
        if not row or not row[0][0]:
            return None
        generation, offset = row[0][0].split(":")
        return bytes.fromhex(generation), int(offset)

    def _salvage_journal(self) -> str | None:
        """Repair a journal with a damaged record among whole ones (which every settle
        refuses): keep the file aside, and go on with the whole records not yet applied.
        Returns what was done, or None if the journal was not damaged."""
        path = self._journal.path
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        # both locks, no connection: nothing settles or appends meanwhile
        with self._db.exclusive_file(), self._db.journal_held():
            if not self._journal.has_records():
                return None
            with duckdb.connect(str(self.db_path), read_only=True) as con:
                settled = self._settled_marker(con)
            salvaged = self._journal.salvage(settled, aside)
        if salvaged is None:
            return None
        kept, damaged = salvaged
        return (f"journal {path}: left out the damaged {'; '.join(damaged)}; kept its {kept} whole record(s) "
                f"not yet applied; the damaged file is kept as {aside}")

    def _reset_journal(self, generation: bytes, end: int) -> None:
        """After the settle committed (its records up to `end` are applied, and the
        marker says so): a new journal with only the records appended since."""
        db = self._db
        size = self._journal.size()
        forced = size > RESET_JOURNAL_BYTES
        if not forced and size != end:  # others are appending: the marker says what is applied
            self._journal.note_applied(generation, end)
            return
        with db.journal_held(wait=forced) as held:
            if not held:
                self._journal.note_applied(generation, end)
                return
            ops, tail = db.known_journal_now()  # what this process knows came after `end`
            db.known_journal(None)
            new_generation, new_end = self._journal.reset_after(generation, end)
            if ops is not None and tail == (generation, end + new_end - HEADER_SIZE):
                db.known_journal(ops, (new_generation, new_end))

    def _flush_pending(self, con) -> None:
        """Apply the buffered operations (``con`` None: the transaction is void, drop them)."""
        ops, self._ops = self._ops, []
        if con is None:
            for appender in self._db.conn_cache.get("appenders", {}).values():
                appender.clear()
            return
        self._apply(con, ops)

    def _journal_pending(self) -> bool:
        """Commit the buffered operations as one journal record, if they are few enough."""
        if len(self._ops) > JOURNAL_MAX_ROWS:
            return False
        payload = journal.encode(self._ops)
        if len(payload) > JOURNAL_MAX_BYTES:
            return False
        # a journal-only write fsyncs after it lets the journal's lock go (storage/appends.py)
        generation, end = self._journal.append(payload, self._db.txn_cache.get("unsynced"))
        start = end - len(payload) - RECORD_OVERHEAD
        self._db.txn_cache["journal_ops"] = (self._ops, len(payload), generation, start, end)
        self._ops = []
        return True

    # -- applying ---------------------------------------------------------------------
    def _apply(self, con, ops: list) -> None:
        if not ops:
            return
        inserts: dict[tuple, list] = {}  # (table, columns): rows, in first-seen order
        updates: list = []
        chained: set[str] = set()  # artifacts a chain references after their last save
        for op in ops:  # one tight pass: a large batch has tens of thousands of operations
            if op[0] == "insert":
                key = (op[1], op[2])
                group = inserts.get(key)
                if group is None:
                    group = inserts[key] = []
                group.append(op[3])
                if op[1] == "artifacts":
                    chained.discard(op[3][0])
                elif op[1] == "chain_artifacts":
                    chained.add(op[3][1])
            else:
                updates.append(op)
        updates = self._fold_updates(inserts, updates) if updates else {}
        artifacts = inserts.pop(("artifacts", None), None)
        if artifacts:  # before the chains that reference them
            self._apply_artifacts(con, artifacts, chained)
        for (table, columns), rows in inserts.items():
            self._append_rows(con, table, columns, rows)
        for (table, key_column, columns), rows in updates.items():
            width = len(columns) + 1
            values = ", ".join(["(" + ", ".join("?" * width) + ")"] * len(rows))
            sets = ", ".join(f"{c} = v.{c}" for c in columns)
            con.execute(f"UPDATE {table} SET {sets} FROM (VALUES {values}) AS v(_key, {', '.join(columns)}) "
                        f"WHERE {table}.{key_column} = v._key",
                        [value for key, row in rows.items() for value in (key, *row)])
        self._db.conn_cache.pop("directions", None)

    def _append_rows(self, con, table: str, columns: tuple | None, rows: list) -> None:
        """Rows into `table` through this connection's appender for those columns (None:
        the table's order): no SQL per row."""
        if not rows:
            return  # an empty flush still costs DuckDB ~0.5 ms
        appenders = self._db.conn_cache.setdefault("appenders", {})
        if (table, columns) not in appenders:
            appenders[(table, columns)] = con.appender(table, columns=list(columns) if columns else None)
        appender = appenders[(table, columns)]
        for row in rows:
            appender.append_row(*row)
        appender.flush()

    @staticmethod
    def _fold_updates(inserts: dict[tuple, list], ops: list) -> dict[tuple, dict]:
        """Fold each update of a row these same operations insert (a pipeline begun and
        completed between two settles) into the insert, so it costs no UPDATE statement;
        return the others as {(table, key column, columns): {key: values}}, a later
        update of a row replacing an earlier one (completions set every column they
        name). A row is always inserted before it is updated, so folding keeps the
        operations' meaning."""
        patches: dict[tuple, dict] = {}
        for _, table, key_column, key, columns, values in ops:
            patches.setdefault((table, key_column, key), {}).update(zip(columns, values))
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
