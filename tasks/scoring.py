"""Scoring inbox files with a dataset's aliased chain: the Prefect task and the plain,
filesystem-only functions the ``score_inbox`` flow (flows/score_inbox.py, where the
inbox layout and the order of steps are written down) is made of.

Who does what:

* ``discover`` takes two looks at the inbox, ``settle_seconds`` apart, and keeps the
  files whose size, mtime and inode did not change between them.
* ``sha256_of`` hashes a file and checks it did not change while being hashed.
* ``storage.ReplayableChain`` (``WorkspaceStore.load_chain``) is a stored chain with its
  fitted artifacts already loaded (by the flow, from the store, hash-checked). It is what
  a task gets: tasks never open the store, so they could run in another process; only the
  flow-run process reads and writes it.
* ``score_file`` (wrapped by the ``score_file_task`` Prefect task) reads a file in
  chunks, checks its grid against the chain, replays every chunk through it (the class
  ``WorkspaceStore.replay_chain`` uses, by the one replay rule of ``nirs.replay``) and
  writes the result to a temporary file beside its final name; only a whole, scored file
  whose input did not change meanwhile is renamed into place. It returns an outcome dict:
  ``scored``, ``rejected`` (with a problem that names stage, row, column, expected and
  found), ``changed`` (the input moved under us: try again later), ``gone`` or
  ``failed`` (the output could not be written: not the file's fault).
* ``plan_destination`` / ``move_file`` / ``write_note`` move inputs out of the inbox
  without overwriting anything, and write the ``.error.json`` / ``.duplicate.json``
  notes atomically.

Caching and results, on purpose: ``cache_policy=NO_CACHE`` (the inputs are a loaded
chain with fitted models and a job; hashing them would cost time and log tracebacks, and
a cached score would skip a file), ``persist_result=False`` (the outcome is a small dict
the flow reads from memory; the durable result is the file in ``outbox/`` and the
store's record of it).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from nirs.errors import SpectraFileError, unreadable
from nirs.readers import JCAMP_SUFFIXES, PARQUET_SUFFIXES, TEXT_SUFFIXES, iter_spectra_chunks
from storage import FileLock, ReplayableChain, ReplayError, atomic_path, fsync_folder, short_id, write_bytes

__all__ = [
    "InboxFile", "FileStat", "ScoreJob", "FileChanged", "ScoringLock",
    "scan_inbox", "discover", "sha256_of", "score_file", "score_file_task", "plan_destination",
    "move_file", "write_note", "sweep_partials", "describe_problem", "result_paths", "SUPPORTED_SUFFIXES",
]

SUPPORTED_SUFFIXES = frozenset(TEXT_SUFFIXES) | PARQUET_SUFFIXES | JCAMP_SUFFIXES
#: Names that say "still being written, will be renamed": never touched.
IN_PROGRESS_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".filepart", ".crdownload", ".download", "~")
LOCK_NAME = ".score_inbox"  # a folder: the lock and its holder note (storage.FileLock)
_HASH_BLOCK = 1 << 20


# -- what is in the inbox -----------------------------------------------------------------


@dataclass(frozen=True)
class FileStat:
    size: int
    mtime_ns: int
    ino: int

    @classmethod
    def of(cls, path: Path) -> "FileStat":
        st = os.stat(path)
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass(frozen=True)
class InboxFile:
    path: Path          # absolute
    rel: str            # "tablet/batch-7.csv": how the file is named in records, notes and the UI
    dataset: str | None  # the dataset folder it sits in; None for a file at the inbox's top level
    stat: FileStat

    @property
    def name(self) -> str:
        return self.path.name


def in_progress(name: str) -> bool:
    """Hidden files and temporary names are files a writer will still rename."""
    lower = name.lower()
    return name.startswith(".") or lower.endswith(IN_PROGRESS_SUFFIXES)


def scan_inbox(inbox: Path) -> tuple[dict[str, InboxFile], list[str]]:
    """One look: {rel: InboxFile} of the files to consider, and the sub-folders skipped.

    ``inbox/<dataset>/<file>`` files are candidates; files at the top level are returned
    with ``dataset=None`` (the flow sets them aside: the dataset is unknown); folders
    below a dataset folder are not looked into."""
    found: dict[str, InboxFile] = {}
    skipped: list[str] = []

    def add(path: Path, dataset: str | None) -> None:
        try:
            stat = FileStat.of(path)
        except FileNotFoundError:
            return  # moved away between listing and stat
        found[path.relative_to(inbox).as_posix()] = InboxFile(path, path.relative_to(inbox).as_posix(), dataset, stat)

    for entry in sorted(inbox.iterdir()):
        if in_progress(entry.name):
            continue
        if entry.is_dir():
            for inner in sorted(entry.iterdir()):
                if in_progress(inner.name):
                    continue
                if inner.is_dir():
                    skipped.append(inner.relative_to(inbox).as_posix())
                elif inner.is_file():
                    add(inner, entry.name)
        elif entry.is_file():
            add(entry, None)
    return found, skipped


def discover(inbox: Path, settle_seconds: float, sleep: Callable[[float], None] = time.sleep
             ) -> tuple[list[InboxFile], list[InboxFile], list[str]]:
    """(stable files oldest first, files still changing, sub-folders skipped).

    A file is stable when its size, mtime and inode are the same at two looks
    ``settle_seconds`` apart. A file that arrives by atomic rename from a hidden or
    temporary name (``.x.csv``, ``x.csv.part``) is whole the moment it has its name."""
    first, _ = scan_inbox(inbox)
    if not first:
        return [], [], []
    sleep(max(0.0, float(settle_seconds)))
    second, skipped = scan_inbox(inbox)
    stable = [f for rel, f in second.items() if rel in first and first[rel].stat == f.stat]
    changing = [f for rel, f in second.items() if rel not in first or first[rel].stat != f.stat]
    stable.sort(key=lambda f: (f.stat.mtime_ns, f.rel))
    return stable, changing, skipped


class FileChanged(Exception):
    """The input's size, mtime or inode changed after the stable look: it is still being
    written (or was replaced); it stays in the inbox for a later run."""


def sha256_of(path: Path, expected: FileStat | None = None) -> str:
    """SHA-256 of the file's bytes; FileChanged when it changed while being read."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    if expected is not None and FileStat.of(path) != expected:
        raise FileChanged(f"{path} changed while it was being hashed")
    return digest.hexdigest()


# -- one file ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreJob:
    file: InboxFile
    sha256: str
    result_path: Path
    csv_path: Path | None
    chunk_rows: int = 500
    chunk_bytes: int | None = None  # see nirs.readers.iter_spectra_chunks
    id_column: str | None = "sample_id"
    alias: str = "production"  # the dataset's alias the chain was found by


def result_paths(root: Path, file: InboxFile, sha256: str, chain_id: str, csv: bool) -> tuple[Path, Path | None]:
    """``<root>/outbox/<dataset>/<stem>.<sha256[:12]>.<chain[:8]>.parquet`` (and
    ``.csv``): named by content and chain, so a rerun after a crash writes the same name
    instead of a second result, and the same bytes scored by another chain (a promotion
    since, or the same chain aliased for two datasets) never take each other's name."""
    base = root / "outbox" / (file.dataset or "_") / f"{Path(file.name).stem}.{sha256[:12]}.{short_id(chain_id)}"
    return base.with_name(base.name + ".parquet"), (base.with_name(base.name + ".csv") if csv else None)


class OutputError(Exception):
    """The result could not be written (disk full, permissions on the outbox...)."""


class _ResultWriter:
    """Parquet (one row group per chunk) and optional CSV, into temporary files that
    ``atomic_path`` renames into place only when the whole file was scored."""

    def __init__(self, stack: ExitStack, parquet_path: Path, csv_path: Path | None):
        self.temps = [stack.enter_context(atomic_path(parquet_path))]
        if csv_path is not None:
            self.temps.append(stack.enter_context(atomic_path(csv_path)))
        self.parquet = self.csv = None
        self.schema: pa.Schema | None = None
        stack.callback(self.close)  # runs before the renames (LIFO)

    def write(self, table: pa.Table) -> None:
        if self.schema is None:
            self.schema = table.schema
            self.parquet = pq.ParquetWriter(self.temps[0], self.schema, compression="zstd")
            if len(self.temps) > 1:
                self.csv = pa_csv.CSVWriter(str(self.temps[1]), self.schema)
        else:
            table = table.cast(self.schema)
        self.parquet.write_table(table)
        if self.csv is not None:
            self.csv.write_table(table)

    def close(self) -> None:
        for name in ("parquet", "csv"):
            writer = getattr(self, name)
            if writer is not None:
                setattr(self, name, None)
                writer.close()


#: The outlier-check columns of every result row (``nirs.diagnostics``): null for a chain
#: trained before its checks were recorded.
CHECK_COLUMNS = ("t2", "q", "t2_ratio", "q_ratio")
#: At most this many (T², Q) points of a file are kept for the run's picture.
MAX_POINTS = 4000


class Thinned:
    """Every ``stride``-th row of a file, the stride doubling whenever more than
    ``limit`` rows are kept: a bounded, evenly spread sample whatever the file's size,
    the same whether it is read in one chunk or many."""

    def __init__(self, limit: int = MAX_POINTS) -> None:
        self.limit, self.stride, self.seen = limit, 1, 0
        self.rows: list[tuple[int, float, float, str]] = []

    def add(self, t2_ratio, q_ratio, flags) -> None:
        for k, (t, q, f) in enumerate(zip(t2_ratio.tolist(), q_ratio.tolist(), flags.tolist())):
            if (self.seen + k) % self.stride == 0:
                self.rows.append((self.seen + k, t, q, f))
        self.seen += len(flags)
        while len(self.rows) > self.limit:
            self.stride *= 2
            self.rows = [r for r in self.rows if r[0] % self.stride == 0]

    def as_dict(self) -> dict:
        return {"t2_ratio": [r[1] for r in self.rows], "q_ratio": [r[2] for r in self.rows],
                "flag": [r[3] for r in self.rows]}


def _result_table(chain: ReplayableChain, ids, pred, proba, checks: dict | None, constants: dict) -> pa.Table:
    n = len(ids)
    columns: dict[str, pa.Array] = {"sample_id": pa.array(np.asarray(ids).astype(str).tolist(), pa.string())}
    pred = np.asarray(pred)
    if pred.ndim == 2:
        for k in range(pred.shape[1]):
            columns[f"prediction_{k + 1}"] = pa.array(pred[:, k].astype(float), pa.float64())
    elif chain.task_type == "classification":
        columns["prediction"] = pa.array(pred.tolist())
    else:
        columns["prediction"] = pa.array(pred.astype(float), pa.float64())
    if proba is not None:
        for k, label in enumerate(chain.classes or []):
            columns[f"proba_{label}"] = pa.array(np.asarray(proba)[:, k].astype(float), pa.float64())
    for name in CHECK_COLUMNS:
        columns[name] = (pa.nulls(n, pa.float64()) if checks is None
                         else pa.array(np.asarray(checks[name], dtype=float), pa.float64()))
    columns["flag"] = pa.nulls(n, pa.string()) if checks is None else pa.array(checks["flag"].tolist(), pa.string())
    for name, (value, kind) in constants.items():
        columns[name] = pa.array([value] * n, kind)
    return pa.table(columns)


def score_file(job: ScoreJob, chain: ReplayableChain) -> dict:
    """Score one inbox file (see the module docstring for the outcomes)."""
    f = job.file
    started = time.perf_counter()
    scored_at = datetime.now(timezone.utc)
    constants = {"dataset": (f.dataset, pa.string()), "alias": (job.alias, pa.string()),
                 "chain_id": (chain.chain_id, pa.string()), "model_class": (chain.model_class, pa.string()),
                 "input_file": (f.rel, pa.string()), "input_sha256": (job.sha256, pa.string()),
                 "scored_at": (scored_at, pa.timestamp("us", tz="UTC"))}
    base = {"rel": f.rel, "sha256": job.sha256, "chain_id": chain.chain_id, "alias": job.alias}
    stage, n, notes = "read", 0, {}
    diagnose = chain.has_diagnostics
    flags: dict[str, int] = {}
    points = Thinned()
    try:
        with ExitStack() as stack:
            writer = _ResultWriter(stack, job.result_path, job.csv_path)
            chunks = iter_spectra_chunks(f.path, chunk_rows=job.chunk_rows, chunk_bytes=job.chunk_bytes,
                                         id_column=job.id_column)
            for ds in chunks:
                if n == 0:
                    stage = "check"
                    notes = chain.check(ds.wavelengths, ds.X.shape[1])
                stage = "replay"
                pred, proba, *checks = chain.replay(ds.X, ds.wavelengths, diagnostics=diagnose)
                checks = checks[0] if checks else None
                if checks is not None:
                    for flag, count in zip(*np.unique(checks["flag"].astype(str), return_counts=True)):
                        flags[flag] = flags.get(flag, 0) + int(count)
                    points.add(checks["t2_ratio"], checks["q_ratio"], checks["flag"])
                stage = "write"
                try:
                    writer.write(_result_table(chain, ds.sample_ids, pred, proba, checks, constants))
                except (OSError, pa.ArrowException) as exc:
                    raise OutputError(f"result {job.result_path} not written: {exc}") from exc
                n += ds.X.shape[0]
                # Let this chunk go before the next is read, or two would be held at once
                # (hence no enumerate() either: its reused tuple holds the last chunk).
                del ds, pred, proba, checks
                stage = "read"
            stage = "write"
            try:
                writer.close()
            except (OSError, pa.ArrowException) as exc:
                raise OutputError(f"result {job.result_path} not written: {exc}") from exc
            if FileStat.of(f.path) != f.stat:
                raise FileChanged(f"{f.rel} changed while it was being scored")
        # leaving the ExitStack fsynced and renamed the result(s) into place
    except FileChanged as exc:
        return {**base, "status": "changed", "reason": str(exc)}
    except OutputError as exc:
        return {**base, "status": "failed", "reason": str(exc)}
    except MemoryError as exc:
        return {**base, "status": "failed", "reason": f"out of memory while scoring (stage {stage}): {exc}"}
    except FileNotFoundError as exc:
        return {**base, "status": "gone", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a bad file, set aside with its reason
        if stage == "write" and isinstance(exc, (OSError, pa.ArrowException)):  # the final rename
            return {**base, "status": "failed", "reason": f"result {job.result_path} not written: {exc}"}
        try:
            if FileStat.of(f.path) != f.stat:  # a half-written file is not a bad file
                return {**base, "status": "changed", "reason": f"{f.rel} changed while it was being scored"}
        except FileNotFoundError:
            return {**base, "status": "gone", "reason": f"{f.rel} disappeared while it was being scored"}
        return {**base, "status": "rejected", "problem": describe_problem(exc, stage, f, chain, job.alias)}
    seconds = time.perf_counter() - started
    return {**base, "status": "scored", "n_spectra": n, "seconds": seconds,
            "result_path": str(job.result_path), "csv_path": None if job.csv_path is None else str(job.csv_path),
            "model_class": chain.model_class, "scored_at": scored_at.isoformat(), **notes,
            **({"flags": flags, "n_flagged": n - flags.get("ok", 0), "points": points.as_dict()} if diagnose else {})}


@task(name="score-file", task_run_name="score · {rel}", cache_policy=NO_CACHE, persist_result=False)
def score_file_task(rel: str, job: ScoreJob, chain: ReplayableChain) -> dict:
    outcome = score_file(job, chain)
    logger = get_run_logger()
    if outcome["status"] == "scored":
        logger.info("scored %s: %d spectra in %.2f s with chain %s (%s)%s", rel, outcome["n_spectra"],
                    outcome["seconds"], chain.chain_id, job.alias,
                    f"; {outcome['n_flagged']} flagged by the outlier checks" if "flags" in outcome else "")
    elif outcome["status"] == "rejected":
        logger.warning("rejected %s: %s", rel, outcome["problem"]["message"])
    else:
        logger.warning("%s %s: %s", outcome["status"], rel, outcome.get("reason"))
    return outcome


# -- what is wrong with a file ------------------------------------------------------------

def describe_problem(exc: BaseException, stage: str, file: InboxFile, chain: ReplayableChain | None = None,
                     alias: str | None = None) -> dict:
    """The ``.error.json`` body: file, stage, row, column, expected vs found, message."""
    problem = getattr(exc, "problem", None) or str(exc)
    # SpectraFileError and ReplayError say expected/found where they are raised. A bare
    # PermissionError can still get here: the readers open the file again after their first
    # check (chunked reads), and the file's mode may change in between.
    expected, found = getattr(exc, "expected", None), getattr(exc, "found", None)
    if isinstance(exc, PermissionError):  # what the reader says of a file it may not read
        denied = unreadable(file.path, exc)
        expected, found = denied.expected, denied.found
    if isinstance(exc, SpectraFileError):
        stage = "read"
    elif isinstance(exc, ReplayError) and stage == "replay":
        stage = "check"  # storage's own input checks (feature count, grid) are checks too
    out = {"file": file.rel, "dataset": file.dataset, "stage": stage, "error": type(exc).__name__,
           "problem": problem, "row": getattr(exc, "row", None), "column": getattr(exc, "column", None),
           "expected": expected, "found": found, "message": str(exc)}
    if chain is not None:
        out.update(chain_id=chain.chain_id, alias=alias)
    return out


# -- moving files out of the inbox, and notes -----------------------------------------------


def _candidates(dest_dir: Path, name: str):
    yield dest_dir / name
    stem, suffix = Path(name).stem, Path(name).suffix
    k = 1
    while True:
        yield dest_dir / f"{stem}.{k}{suffix}"
        k += 1


def plan_destination(dest_dir: Path, name: str, note_suffixes: tuple[str, ...] = ()) -> Path:
    """The first free name for ``name`` in ``dest_dir`` (``x.csv``, ``x.1.csv``, ...):
    nothing already there is ever overwritten. A note left beside a free name (by a run
    that crashed between writing the note and moving its file) does not make it taken."""
    for candidate in _candidates(dest_dir, name):
        if not os.path.lexists(candidate):
            return candidate
    raise AssertionError("unreachable")


def same_bytes_exists(dest_dir: Path, name: str, sha256: str, size: int) -> Path | None:
    """A file under ``name`` (or ``x.1.csv``...) in ``dest_dir`` with these very bytes."""
    for candidate in _candidates(dest_dir, name):
        if not os.path.lexists(candidate):
            return None
        try:
            if candidate.stat().st_size == size and sha256_of(candidate) == sha256:
                return candidate
        except OSError:
            continue


def move_file(src: Path, dest: Path) -> Path:
    """Move ``src`` to ``dest`` (a name from ``plan_destination``): one rename on the same
    file system; across file systems a copy renamed into place, then the source unlinked
    (its bytes are at ``dest`` by then). Folders are fsynced so the move survives a crash."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        with atomic_path(dest) as temp:
            shutil.copy2(src, temp)
        os.unlink(src)
    fsync_folder(dest.parent)
    fsync_folder(src.parent)
    return dest


def write_note(path: Path, body: dict) -> Path:
    return write_bytes(path, (json.dumps(body, indent=2, default=str, ensure_ascii=False) + "\n").encode())


def sweep_partials(root: Path) -> list[Path]:
    """Temporary files a killed run left in ``outbox/``, ``processed/``, ``rejected/``
    (``.<name>.<random>.part``, never a result). Called under the root's lock, so no
    live writer owns them."""
    swept = []
    for folder in ("outbox", "processed", "rejected"):
        base = root / folder
        if base.is_dir():
            for temp in base.rglob(".*.part"):
                temp.unlink(missing_ok=True)
                swept.append(temp)
    return swept


# -- one scoring run at a time per inbox and per outbox root -------------------------------


@dataclass
class ScoringLock:
    """Non-blocking exclusive locks on the inbox and the output root: a second
    ``score_inbox`` run over either finds them held and does nothing (an interval
    schedule may fire while a long run is still scoring)."""

    folders: list[Path]
    held_by: str | None = None
    _locks: list = field(default_factory=list)

    def __enter__(self) -> "ScoringLock":
        for folder in self.folders:
            lock = FileLock(folder / LOCK_NAME, timeout=0, workspace=folder)
            if not lock.try_acquire("exclusive"):
                self.held_by = f"{lock.folder} (held by {lock.describe_holders()})"
                self.__exit__()
                return self
            self._locks.append(lock)
        return self

    @property
    def acquired(self) -> bool:
        return self.held_by is None

    def __exit__(self, *exc: Any) -> None:
        while self._locks:
            self._locks.pop().release()
