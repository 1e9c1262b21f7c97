"""Fixtures for the inbox-scoring tests: a workspace holding real chains (SNV + PLS,
5-fold, on the Tablet spectra, aliased ``tablet/production``; logistic regression on the
coffee spectra, aliased ``coffee/production``), trained once per session and copied into
each test's folder, and an ``Inbox`` helper that drops files and runs the flow.

The Prefect server is the flows suite's session server (``prefect_server`` in
conftest.py): one server for every flow test, reachable from subprocesses too.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest

SNV_PLS_5FOLD = ["SNV", "StandardScaler",
                 {"split": {"class": "KFold", "params": {"n_splits": 5, "shuffle": True, "random_state": 0}}},
                 {"model": {"class": "PLSRegression", "params": {"n_components": 8}}}]
COFFEE_LR = ["SNV", {"split": {"class": "StratifiedKFold", "params": {"n_splits": 3, "shuffle": True,
                                                                        "random_state": 0}}},
             {"model": {"class": "LogisticRegression", "params": {"max_iter": 2000}}}]


@dataclass
class Chains:
    template: Path           # a closed workspace to copy
    tablet_chain: str
    coffee_chain: str
    tablet_test: object      # SpectraDataset, 212 x 597
    coffee: object           # SpectraDataset, 60 x 1841, no grid


@pytest.fixture(scope="session")
def scoring_chains(tmp_path_factory) -> Chains:
    from nirs.config import expand
    from nirs.datasets import load_coffee, load_tablet
    from nirs.training import fit_pipeline
    from storage import WorkspaceStore
    from storage.chain_builder import record_trace

    template = tmp_path_factory.mktemp("scoring-template") / "ws"
    train, test = load_tablet(instrument=1)
    coffee = load_coffee()
    with WorkspaceStore(template) as store:
        run_id = store.begin_run("scoring fixtures")
        trace = fit_pipeline(train, expand(SNV_PLS_5FOLD)[0], test=test)
        trace.dataset_name = "tablet"
        tablet_chain = record_trace(store, run_id, trace)["chain_id"]
        trace = fit_pipeline(coffee, expand(COFFEE_LR)[0])
        trace.dataset_name = "coffee"
        coffee_chain = record_trace(store, run_id, trace)["chain_id"]
        store.set_alias("tablet", "production", tablet_chain, changed_by="tests", reason="fixture")
        store.set_alias("coffee", "production", coffee_chain, changed_by="tests", reason="fixture")
    return Chains(template, tablet_chain, coffee_chain, test, coffee)


def spectra_frame(X, ids, wavelengths=None, id_column="sample_id") -> pl.DataFrame:
    X = np.asarray(X, dtype=float)
    grid = np.arange(1, X.shape[1] + 1) if wavelengths is None else np.asarray(wavelengths)
    data = {id_column: [str(i) for i in ids]}
    data.update({f"{w:g}": X[:, j] for j, w in enumerate(grid)})
    return pl.DataFrame(data)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Inbox:
    """A fresh workspace (a copy of the template) and an inbox beside it."""

    def __init__(self, base: Path, chains: Chains):
        self.chains = chains
        self.workspace = base / "ws"
        shutil.copytree(chains.template, self.workspace)
        self.inbox = base / "inbox"
        self.inbox.mkdir()
        self.root = self.workspace

    # -- dropping files --------------------------------------------------------------
    def path(self, rel: str) -> Path:
        p = self.inbox / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def tablet(self, rows=slice(None)):
        t = self.chains.tablet_test
        return t.X[rows], t.sample_ids[rows], t.wavelengths

    def drop_csv(self, rel: str, X=None, ids=None, wavelengths=None, *, rows=slice(None)) -> Path:
        if X is None:
            X, ids, wavelengths = self.tablet(rows)
        p = self.path(rel)
        spectra_frame(X, ids, wavelengths).write_csv(p)
        return p

    def drop_parquet(self, rel: str, rows=slice(None)) -> Path:
        X, ids, wl = self.tablet(rows)
        p = self.path(rel)
        spectra_frame(X, ids, wl).write_parquet(p)
        return p

    def drop_bytes(self, rel: str, data: bytes) -> Path:
        p = self.path(rel)
        p.write_bytes(data)
        return p

    def drop_text(self, rel: str, text: str) -> Path:
        return self.drop_bytes(rel, text.encode())

    def csv_text(self, rows=slice(0, 5)) -> str:
        X, ids, wl = self.tablet(rows)
        return spectra_frame(X, ids, wl).write_csv()

    # -- running and looking ---------------------------------------------------------
    def run(self, **options):
        from flows.score_inbox import score_inbox

        options.setdefault("settle_seconds", 0.05)
        return score_inbox(workspace=str(self.workspace), inbox=str(self.inbox), **options)

    def store(self):
        from storage import WorkspaceStore

        return WorkspaceStore(self.workspace, lock_timeout=30)

    def error_note(self, rel: str) -> dict:
        return json.loads((self.root / "rejected" / f"{rel}.error.json").read_text())

    def results(self, dataset: str = "tablet") -> list[Path]:
        folder = self.root / "outbox" / dataset
        return sorted(folder.glob("*.parquet")) if folder.is_dir() else []

    def inbox_files(self) -> list[str]:
        return sorted(p.relative_to(self.inbox).as_posix() for p in self.inbox.rglob("*")
                      if p.is_file() and not any(part.startswith(".") for part in p.relative_to(self.inbox).parts))

    def scored_records(self) -> pl.DataFrame:
        with self.store() as store:
            return store.list_scored_files()


@pytest.fixture
def inbox(tmp_path, scoring_chains, prefect_server) -> Inbox:
    yield Inbox(tmp_path, scoring_chains)
    # Send the flow's logs while the session's server is up: logs still queued when it
    # stops are retried at interpreter exit for more than a minute.
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
