"""Workspace health: every referenced artifact present and sound, orphans and stale runs listed.

``check_workspace(load=True)`` also unpickles every artifact a chain references, one at a
time, and lists those that no longer load here (their code is gone or changed) and the
chains fitted under another scikit-learn major.minor: what to look at after an upgrade.

Files no row names (orphans) younger than ``grace`` are listed apart, as expected:
an interrupted save leaves them, and gc removes them once they are older than its grace
period (never sooner, so that a save about to name one keeps it).

``check_workspace(repair=True)`` fixes what it safely can: it sets a damaged journal
aside and keeps its whole records, marks runs that have been ``running`` longer than
``stale_after`` as crashed, and collects orphan files and temporaries (through gc, with
its grace period). It never deletes a row that a chain
needs: a missing or corrupt artifact is reported, with the chains it breaks, for a
person to restore.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from pathlib import Path

from .artifacts import ArtifactFiles
from .base import now
from .connection import Connector
from .errors import ArtifactLoadError
from .journal import salvage_message
from .maintenance import Maintenance
from .records import Records
from .versions import sklearn_mismatch


@dataclass
class CheckReport:
    artifacts_checked: int = 0
    missing: list[dict] = field(default_factory=list)      # {artifact_id, path, chains}
    corrupt: list[dict] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)    # older than the gc grace period: a fault
    young_orphans: list[dict] = field(default_factory=list)  # {path, age_s}: expected, gc removes them
    grace: float = 3600.0
    stale_runs: list[dict] = field(default_factory=list)   # {run_id, name, created_at}
    repaired: list[str] = field(default_factory=list)
    artifacts_loaded: int | None = None                     # None: not asked (load=False)
    unloadable: list[dict] = field(default_factory=list)   # {artifact_id, path, chains, error}
    other_versions: list[dict] = field(default_factory=list)  # {chain_id, fitted, here}: a warning

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.orphan_files or self.stale_runs or self.unloadable)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "artifacts_checked": self.artifacts_checked, "missing": self.missing,
                "corrupt": self.corrupt, "orphan_files": self.orphan_files, "young_orphans": self.young_orphans,
                "grace": self.grace, "stale_runs": self.stale_runs,
                "repaired": self.repaired, "artifacts_loaded": self.artifacts_loaded,
                "unloadable": self.unloadable, "other_versions": self.other_versions}


class Check:
    """Built with what it repairs through: records (a stale run marked crashed) and
    maintenance (gc of orphans)."""

    def __init__(self, db: Connector, files: ArtifactFiles, records: Records, maintenance: Maintenance,
                 path: Path) -> None:
        self._db, self.files, self.path = db, files, path
        self._records, self._maintenance = records, maintenance

    def check_workspace(self, *, repair: bool = False, stale_after: float = 24 * 3600,
                        grace: float = 3600.0, load: bool = False) -> CheckReport:
        report = CheckReport(grace=grace)
        if repair:
            salvaged = self._salvage_journal()  # first: with a damaged journal nothing reads
            if salvaged:
                report.repaired.append(salvaged)
        with self._db.reading() as con:
            rows = con.execute(
                "SELECT a.artifact_id, a.format, list(ca.chain_id) FILTER (WHERE ca.chain_id IS NOT NULL) "
                "FROM artifacts a LEFT JOIN chain_artifacts ca USING (artifact_id) GROUP BY ALL").fetchall()
            runs = con.execute("SELECT run_id, name, created_at, epoch(created_at) FROM runs "
                               "WHERE status = 'running' ORDER BY created_at").fetchall()
        known, loaded = set(), 0
        for artifact_id, fmt, chains in rows:
            known.add(artifact_id)
            path = self.files.path(artifact_id, fmt)
            entry = {"artifact_id": artifact_id, "path": str(path), "chains": sorted(chains or [])}
            if not path.exists():
                report.missing.append(entry)
            elif not self.files.is_sound(path, artifact_id):
                report.corrupt.append(entry)
            elif load and chains:
                loaded += 1
                try:
                    self.files.load(artifact_id, fmt)  # and let it go: one object in memory at a time
                except ArtifactLoadError as exc:
                    report.unloadable.append({**entry, "error": f"{type(exc.__cause__).__name__}: {exc.__cause__}"})
        report.artifacts_checked = len(rows)
        if load:
            report.artifacts_loaded, report.other_versions = loaded, self._chains_fitted_elsewhere()
        # A file without a row is what an interrupted save leaves (written, then its
        # transaction never committed: a stopped run, a failed pipeline). gc removes it
        # once it is older than the grace period, which keeps it safe from a save that
        # is about to reference it; until then it is expected, not a fault.
        young_after = time.time() - grace
        for path, artifact_id, mtime in sorted(self.files.scan()):
            if artifact_id in known:
                continue
            if mtime > young_after:
                report.young_orphans.append({"path": str(path), "age_s": round(time.time() - mtime, 1)})
            else:
                report.orphan_files.append(str(path))
        cutoff = time.time() - stale_after
        report.stale_runs = [{"run_id": r[0], "name": r[1], "created_at": str(r[2])} for r in runs if r[3] < cutoff]
        if repair:
            for run in report.stale_runs:
                self._records.fail_run(run["run_id"], f"marked crashed by check at {now().isoformat()}Z: still "
                                             f"'running' after {stale_after / 3600:.0f} h", status="crashed")
                report.repaired.append(f"run {run['run_id']} marked crashed")
            removed = self._maintenance.gc_artifacts(grace=grace)
            report.repaired += [f"removed orphan {p}" for p in removed.orphan_files]
            report.repaired += [f"removed dead artifact {a}" for a in removed.artifact_ids]
        return report

    def _salvage_journal(self) -> str | None:
        """A journal with a damaged record among whole ones (which every settle refuses):
        keep the file aside, and go on with its whole records not yet applied."""
        path = self._db.journal.path
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        with self._db.exclusive_file(journal=True):  # both locks, nothing attached: nothing settles or appends
            return salvage_message(self._db.journal, self._db.db_path, aside)

    def _chains_fitted_elsewhere(self) -> list[dict]:
        with self._db.reading() as con:
            rows = con.execute("SELECT chain_id, json_extract_string(metadata, '$.fitted_versions.\"scikit-learn\"') "
                               "FROM chains ORDER BY created_at").fetchall()
        found = []
        for chain_id, fitted in rows:
            mismatch = sklearn_mismatch({"scikit-learn": fitted} if fitted else None)
            if mismatch is not None:
                found.append({"chain_id": chain_id, "fitted": mismatch[0], "here": mismatch[1]})
        return found
