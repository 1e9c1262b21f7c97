"""The record of batch scoring: which input files (by content hash) were scored, for which
dataset, by which chain, and where their result lies."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from .base import check_id, check_int, check_text, first, frame, now, where_equal
from .connection import Connector
from .errors import InvalidInputError

_COLUMNS = ("content_hash", "file_name", "dataset_name", "alias", "chain_id", "result_path",
            "n_spectra", "scored_at", "flow_run_id")


class ScoredFiles:
    def __init__(self, db: Connector, path: Path) -> None:
        self._db, self.path = db, path

    def record_scored_file(self, content_hash: str, file_name: str, chain_id: str, result_path: str, *,
                           n_spectra: int, dataset_name: str | None = None, alias: str | None = None,
                           flow_run_id: str | None = None) -> None:
        """Record that a file was scored for a dataset by a chain. Recording the same
        bytes for the same dataset and chain twice is an error naming the earlier record:
        scoring is once per content, dataset and chain."""
        check_text("content_hash", content_hash), check_text("file_name", file_name)
        check_text("result_path", result_path), check_id("chain", chain_id)
        dataset = check_text("dataset_name", dataset_name, optional=True) or ""
        row = [content_hash, file_name, dataset, check_text("alias", alias, optional=True), chain_id, result_path,
               check_int("n_spectra", n_spectra, optional=False), now(),
               check_text("flow_run_id", flow_run_id, optional=True)]
        with self._db.writing() as con:
            con.require("chains", "chain_id", chain_id)
            earlier = first(con.execute("SELECT file_name, result_path FROM scored_files WHERE content_hash = ? "
                                        "AND dataset_name = ? AND chain_id = ?", [content_hash, dataset, chain_id]))
            if earlier is not None:
                raise InvalidInputError(f"file {file_name} (sha256 {content_hash[:12]}…) was already scored for "
                                        f"dataset {dataset!r} by chain {chain_id} as {earlier[0]}; "
                                        f"its result is {earlier[1]}")
            con.execute(f"INSERT INTO scored_files ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", row)

    def find_scored_file(self, content_hash: str, dataset_name: str | None = None,
                         chain_id: str | None = None) -> dict | None:
        """The record of these bytes scored (for this dataset, by this chain, when given),
        the earliest if several; None if there is none."""
        where, params = where_equal(content_hash=content_hash, dataset_name=dataset_name, chain_id=chain_id)
        with self._db.reading() as con:
            cur = con.execute(f"SELECT * FROM scored_files{where} ORDER BY scored_at LIMIT 1", params)
            row = first(cur)
            return None if row is None else dict(zip([d[0] for d in cur.description], row))

    def list_scored_files(self, dataset_name: str | None = None) -> pl.DataFrame:
        if dataset_name is None:
            return frame(self._db, "SELECT * FROM scored_files ORDER BY scored_at")
        return frame(self._db, "SELECT * FROM scored_files WHERE dataset_name = ? ORDER BY scored_at", [dataset_name])
