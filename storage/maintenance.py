"""Deleting runs, collecting dead artifacts, and compacting the database file."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from .artifacts import ArtifactFiles
from .atomic import fsync_folder
from .base import check_id, check_score
from .chains import LoadedChains
from .connection import Connector
from .errors import InvalidInputError, NotFoundError, WorkspaceError


# -- gc: a short pure function over the live set --------------------------------
@dataclass(frozen=True)
class ArtifactState:
    artifact_id: str
    format: str
    last_saved: float      # epoch seconds
    referenced: bool       # some chain points at it


@dataclass(frozen=True)
class GcPlan:
    dead: list[ArtifactState]
    orphan_files: list[Path]


def plan_gc(artifacts: list[ArtifactState], files: list[tuple[Path, str | None, float]],
            *, now: float, grace: float) -> GcPlan:
    """Dead: no chain references it and its last save is older than the grace period.
    Orphan: a file under artifacts/ with no live row (a crash's leftover, or a
    temporary), older than the grace period."""
    dead = [a for a in artifacts if not a.referenced and now - a.last_saved > grace]
    dead_ids = {a.artifact_id for a in dead}
    live_ids = {a.artifact_id for a in artifacts} - dead_ids
    orphans = [path for path, artifact_id, mtime in files
               if artifact_id not in live_ids and artifact_id not in dead_ids and now - mtime > grace]
    return GcPlan(dead, orphans)


class GcResult(int):
    """How many artifacts and orphan files gc removed (an int, as in the spec), with
    the details: ``artifact_ids``, ``orphan_files``, ``bytes_freed``, ``dry_run``."""

    artifact_ids: list[str]
    orphan_files: list[Path]
    bytes_freed: int
    dry_run: bool

    def __new__(cls, artifact_ids, orphan_files, bytes_freed, dry_run):
        self = super().__new__(cls, len(artifact_ids) + len(orphan_files))
        self.artifact_ids, self.orphan_files = list(artifact_ids), list(orphan_files)
        self.bytes_freed, self.dry_run = bytes_freed, dry_run
        return self


@dataclass
class VacuumResult:
    bytes_before: int
    bytes_after: int
    removed_temporaries: list[Path] = field(default_factory=list)


class Maintenance:
    def __init__(self, db: Connector, files: ArtifactFiles, loaded: LoadedChains, path: Path) -> None:
        self._db, self.files, self._loaded, self.path = db, files, loaded, path
        self.db_path = db.db_path

    def delete_run(self, run_id: str) -> int:
        """Delete a run and everything under it in one transaction; return the rows deleted.
        Artifacts its chains used become dead (unless other chains use them) and go at
        the next gc. A run whose chain an alias points at is refused."""
        check_id("run", run_id)
        pipes = "(SELECT pipeline_id FROM pipelines WHERE run_id = $run)"
        chains = f"(SELECT chain_id FROM chains WHERE pipeline_id IN {pipes})"
        preds = f"(SELECT prediction_id FROM predictions WHERE pipeline_id IN {pipes})"
        with self._db.writing() as con:
            con.require("runs", "run_id", run_id)
            aliased = con.execute(f"SELECT dataset_name, alias, chain_id FROM aliases WHERE chain_id IN {chains}",
                                  {"run": run_id}).fetchall()
            if aliased:
                names = ", ".join(f"{d}/{a} -> {c}" for d, a, c in aliased)
                raise InvalidInputError(f"run {run_id} cannot be deleted: aliases point at its chains "
                                        f"({names}); move them first")
            chain_ids = [r[0] for r in con.execute(f"SELECT * FROM {chains}", {"run": run_id}).fetchall()]
            deleted = 0
            for table, where in (("prediction_arrays", f"prediction_id IN {preds}"),
                                 ("predictions", f"pipeline_id IN {pipes}"),
                                 ("chain_artifacts", f"chain_id IN {chains}"),
                                 ("chains", f"pipeline_id IN {pipes}"),
                                 ("logs", "run_id = $run"),
                                 ("pipelines", "run_id = $run"),
                                 ("runs", "run_id = $run")):
                deleted += con.execute(f"DELETE FROM {table} WHERE {where}", {"run": run_id}).fetchall()[0][0]
            con.forget_rows()
        self._loaded.forget_chains(chain_ids)
        return deleted

    def delete_prediction(self, prediction_id: str) -> None:
        check_id("prediction", prediction_id)
        with self._db.writing() as con:
            con.require("predictions", "prediction_id", prediction_id)
            con.execute("DELETE FROM prediction_arrays WHERE prediction_id = ?", [prediction_id])
            con.execute("DELETE FROM predictions WHERE prediction_id = ?", [prediction_id])
            con.forget_rows()

    def gc_artifacts(self, grace: float = 3600.0, dry_run: bool = False) -> GcResult:
        """Remove dead artifacts and orphan files older than `grace` seconds.

        Rows go first and commit; files go after, still under the exclusive lock, so a
        crash leaves at worst an orphan file (collected next time), never a row without
        its file, and no save can slip in between."""
        grace = check_score("grace", grace)
        if grace is None or grace < 0:
            raise InvalidInputError(f"grace must be a number of seconds >= 0, got {grace!r}")
        with self._db.writing() as con:
            rows = con.execute(
                "SELECT a.artifact_id, a.format, epoch(a.last_saved_at), "
                "EXISTS (SELECT 1 FROM chain_artifacts ca WHERE ca.artifact_id = a.artifact_id), a.size_bytes "
                "FROM artifacts a").fetchall()
            states = [ArtifactState(r[0], r[1], float(r[2]), bool(r[3])) for r in rows]
            sizes = {r[0]: int(r[4]) for r in rows}
            plan = plan_gc(states, list(self.files.scan()), now=time.time(), grace=grace)
            freed = sum(sizes[a.artifact_id] for a in plan.dead)
            freed += sum(_size(p) for p in plan.orphan_files)
            if not dry_run and (plan.dead or plan.orphan_files):
                ids = [a.artifact_id for a in plan.dead]
                if ids:
                    con.execute("DELETE FROM artifacts WHERE list_contains(?, artifact_id)", [ids])
                    con.forget_rows()

                def remove_files() -> None:
                    for a in plan.dead:
                        self.files.remove(a.artifact_id, a.format)
                    for path in plan.orphan_files:
                        path.unlink(missing_ok=True)
                    self._loaded.forget_artifacts(a.artifact_id for a in plan.dead)

                con.after_commit(remove_files)
        return GcResult([a.artifact_id for a in plan.dead], plan.orphan_files, freed, dry_run)

    def vacuum(self) -> VacuumResult:
        """Give disk space back: copy the live data into a new file and swap it in.

        DuckDB's own VACUUM returns nothing to the file system, so the database is
        copied (``COPY FROM DATABASE``, which keeps keys and indexes) into a temporary
        file beside it, fsynced, and renamed over ``store.duckdb`` under the exclusive
        lock. A crash before the rename leaves the old file whole; after it, the new one."""
        folder = self.db_path.parent
        temp = self.db_path.with_name(f"{self.db_path.name}.vacuum-{os.getpid()}")
        with self._db.exclusive_file():
            removed = self._remove_stale_vacuum_files()
            before = self._file_bytes()
            con = duckdb.connect(str(self.db_path))
            try:
                con.execute("FORCE CHECKPOINT")
                catalog = con.execute("SELECT current_database()").fetchall()[0][0]
                con.execute(f"ATTACH '{temp}' AS nirsflow_compact")
                con.execute(f'COPY FROM DATABASE "{catalog}" TO nirsflow_compact')
                con.execute("DETACH nirsflow_compact")
            except BaseException:
                con.close()
                temp.unlink(missing_ok=True)
                raise
            con.close()
            for leftover in (Path(f"{self.db_path}.wal"), Path(f"{temp}.wal")):
                if leftover.exists():
                    temp.unlink(missing_ok=True)
                    raise WorkspaceError(f"vacuum stopped: {leftover} exists after a checkpoint; "
                                         "the store was left as it was")
            with open(temp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(temp, self.db_path)
            fsync_folder(folder)
            return VacuumResult(before, self._file_bytes(), removed)

    def _remove_stale_vacuum_files(self) -> list[Path]:
        # Leftovers of a vacuum that was killed before its rename; safe to drop because
        # we hold the exclusive lock, so no vacuum is running now.
        stale = list(self.db_path.parent.glob(f"{self.db_path.name}.vacuum-*"))
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def _file_bytes(self) -> int:
        wal = Path(f"{self.db_path}.wal")
        return self.db_path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


__all__ = ["plan_gc", "GcPlan", "GcResult", "ArtifactState", "VacuumResult", "Maintenance", "NotFoundError"]
