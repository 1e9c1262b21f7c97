"""The nirs4all 0.7.1 workspace of tests/data/nirs4all_fixture (written by the original;
see its FACTS.md), copied where a test may change it."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "nirs4all_fixture"
FACTS = json.loads((FIXTURE / "facts.json").read_text())


def copy_fixture(dest: Path, which: str = "") -> Path:
    """A copy of the original's workspace folder at `dest` (store.duckdb unzipped): the one
    written through the store's API, or with ``which="runner"`` the one its runner wrote."""
    origin = FIXTURE / which
    dest.mkdir(parents=True)
    shutil.copytree(origin / "artifacts", dest / "artifacts")
    with gzip.open(origin / "store.duckdb.gz") as src, open(dest / "store.duckdb", "wb") as out:
        shutil.copyfileobj(src, out)
    return dest


def load(name: str) -> np.ndarray:
    return np.load(FIXTURE / f"{name}.npy")


def artifact_file(source: Path, chain: str, fold: str) -> Path:
    """The file of one fold model of one of the fixture's chains, in a copy."""
    import duckdb

    con = duckdb.connect(str(source / "store.duckdb"), read_only=True)
    try:
        folds = json.loads(con.execute("SELECT fold_artifacts FROM chains WHERE chain_id = ?",
                                       [FACTS["chains"][chain]]).fetchone()[0])
        path = con.execute("SELECT artifact_path FROM artifacts WHERE artifact_id = ?", [folds[fold]]).fetchone()[0]
    finally:
        con.close()
    return source / "artifacts" / path
