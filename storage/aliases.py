"""Named pointers from a dataset to a chain (``production``, ``staging``...), with history.

A retraining flow promotes a chain by moving the alias; scoring resolves the alias once
per file, so a promotion never splits one file between two chains."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from .base import first, check_id, check_text, frame, now
from .connection import Connector
from .errors import NotFoundError
from .references import check_promotion


class Aliases:
    def __init__(self, db: Connector, path: Path) -> None:
        self._db, self.path = db, path

    def sql(self, query: str, params: list | None = None) -> pl.DataFrame:
        """A read-only query (what ``storage.references`` asks of a store)."""
        return frame(self._db, query, params)

    def set_alias(self, dataset_name: str, alias: str, chain_id: str, *,
                  changed_by: str | None = None, reason: str | None = None, force: bool = False) -> None:
        """Point the alias at a chain trained on ``dataset_name`` (``force`` accepts a
        chain of another dataset: see ``storage.references.check_promotion``)."""
        check_text("dataset_name", dataset_name), check_text("alias", alias), check_id("chain", chain_id)
        if not force:  # a chain's dataset never changes: checked before the write begins
            check_promotion(self, dataset_name, chain_id)
        with self._db.writing() as con:
            con.require("chains", "chain_id", chain_id)
            old = first(con.execute("SELECT chain_id FROM aliases WHERE dataset_name = ? AND alias = ?",
                              [dataset_name, alias]))
            stamp = now()
            con.execute("INSERT OR REPLACE INTO aliases VALUES (?, ?, ?, ?)", [dataset_name, alias, chain_id, stamp])
            con.execute("INSERT INTO alias_history VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [dataset_name, alias, chain_id, old[0] if old else None, stamp,
                         check_text("changed_by", changed_by, optional=True),
                         check_text("reason", reason, optional=True)])

    def get_alias(self, dataset_name: str, alias: str = "production") -> str:
        """The chain id the alias points at; ``NotFoundError`` when it points nowhere."""
        check_text("dataset_name", dataset_name), check_text("alias", alias)
        with self._db.reading() as con:
            row = first(con.execute("SELECT a.chain_id, c.chain_id FROM aliases a LEFT JOIN chains c USING (chain_id) "
                              "WHERE a.dataset_name = ? AND a.alias = ?", [dataset_name, alias]))
        if row is None:
            raise NotFoundError("alias", f"{dataset_name}/{alias}", self.path)
        if row[1] is None:
            raise NotFoundError("chain (of alias " f"{dataset_name}/{alias})", row[0], self.path)
        return row[0]

    def remove_alias(self, dataset_name: str, alias: str, *, changed_by: str | None = None,
                     reason: str | None = None) -> None:
        with self._db.writing() as con:
            old = first(con.execute("SELECT chain_id FROM aliases WHERE dataset_name = ? AND alias = ?",
                              [dataset_name, alias]))
            if old is None:
                raise NotFoundError("alias", f"{dataset_name}/{alias}", self.path)
            con.execute("DELETE FROM aliases WHERE dataset_name = ? AND alias = ?", [dataset_name, alias])
            con.execute("INSERT INTO alias_history VALUES (?, ?, NULL, ?, ?, ?, ?)",
                        [dataset_name, alias, old[0], now(), changed_by, reason])

    def list_aliases(self) -> pl.DataFrame:
        return frame(self._db, "SELECT * FROM aliases ORDER BY dataset_name, alias")

    def alias_history(self, dataset_name: str | None = None) -> pl.DataFrame:
        if dataset_name is None:
            return frame(self._db, "SELECT * FROM alias_history ORDER BY changed_at")
        return frame(self._db, "SELECT * FROM alias_history WHERE dataset_name = ? ORDER BY changed_at",
                           [check_text("dataset_name", dataset_name)])
