"""The ``score_inbox`` flow: score every new spectra file of an inbox with the chain its
dataset's alias points to; every file is scored once, or set aside with its reason.

Layout (the dataset is named by the folder a file is dropped in)::

    <inbox>/                         what instruments write into
        tablet/batch-0007.csv        one folder per dataset, named as in the store
        tablet/run-12.parquet        (CSV/TSV/TXT, Parquet, JCAMP-DX; see nirs.readers)
        wheat/sample-3.jdx
        .score_inbox/                held while a run works on this inbox (a lock, its holder)
    <root>/                          the ``outbox`` parameter, or the workspace
        outbox/tablet/batch-0007.<sha256[:12]>.<chain[:8]>.parquet   the result (and .csv)
        processed/tablet/batch-0007.csv                  inputs, once scored and recorded
        processed/tablet/batch-0007.1.csv                (+ .duplicate.json) same bytes again
        rejected/tablet/bad.csv                          a file that cannot be scored ...
        rejected/tablet/bad.csv.error.json               ... and what is wrong with it

Files must sit in a dataset folder; a file at the inbox's top level is rejected (its
dataset is unknown). Folders below a dataset folder are not looked into. Hidden files
and temporary names (``.x.csv``, ``x.csv.part``, ``.tmp``, ``.partial``, ``~``...) are
never touched. A result has the columns ``sample_id``, ``prediction`` (the class label
for classifiers, ``prediction_1..k`` for multi-target regression), ``proba_<class>`` for
classifiers, the outlier checks ``t2``, ``q``, ``t2_ratio``, ``q_ratio`` (to the 95 %
limits) and ``flag`` (``ok``, ``t2``, ``q``, ``both``, ``y_range``; null for a chain
trained before the checks were recorded; ``nirs.diagnostics``), ``dataset``, ``alias``,
``chain_id``, ``model_class``, ``input_file``, ``input_sha256``, ``scored_at`` (UTC).

When is a file ready? Only when its size, mtime and inode are the same at two looks
``settle_seconds`` apart (2 s by default), and still the same once it has been scored (a
file that changed meanwhile is left for the next run, its result discarded). A writer
that may pause for longer than ``settle_seconds`` should write under a temporary name
(``.x.csv`` or ``x.csv.part``) and rename it into place: a file that arrives by atomic
rename is whole the moment it has its name.

Each file, in order (oldest first): hash its bytes (SHA-256) → resolve the dataset's
alias (``production`` by default) *now*, so a promotion never splits a file between two
chains; a dataset with no chain leaves the file waiting (below) → if the store already
holds these bytes *for this dataset, scored by this chain*, it is a duplicate: the input
moves to ``processed/`` with a ``.duplicate.json`` note naming the earlier file and where
its result is → else a Prefect task reads it in chunks (bounded memory), checks it
against the chain (feature count; a different grid is resampled when it covers the
trained range, refused otherwise), replays every chunk and writes the result to a
temporary file renamed into ``outbox/`` when whole → the flow records the file in the
store (content hash, dataset, chain, result path) → only then moves the input to
``processed/``. A bad file goes to ``rejected/`` with ``<name>.error.json`` (stage, row,
column, expected, found, message) while the others are scored. Nothing is ever deleted,
and no file is overwritten (a name already taken gets ``.1``, ``.2``...).

Why the duplicate rule is (bytes, dataset, chain): a lab scores one spectrum file for
several properties, one dataset folder each (``protein/``, ``moisture/``), so the same
bytes in another folder are another request and get that dataset's prediction. And a
file dropped again after a new chain was promoted is a request for the new chain's
prediction (a re-check after a retraining), so it is scored again; the earlier result
stays beside it (result names carry the chain's id). The same bytes for the same
dataset and chain are not scored twice.

A dataset whose alias points nowhere (no alias, or a deleted chain) is not the files'
fault: they stay in the inbox, reported as waiting, and are scored by the first run after
a chain is promoted.

Crashes: a kill at any point leaves each file either unscored in the inbox (a result
written but not yet recorded is rewritten under the same, content-derived name by the
next run), or recorded with its result in place (if the move to ``processed/`` had not
happened, the next run finishes it). Temporary ``.part`` files of a killed run are
swept. So rerunning finishes the job, and no (bytes, dataset, chain) is recorded twice.

Parallelism: files are scored by ``score-file`` tasks on the flow's thread pool (at most
``window`` in flight); tasks get the chain already loaded and never open the store:
only this flow-run process reads and writes it. The Prefect UI gets a markdown artifact
with the counts (scored, rejected with reasons, duplicates, waiting, spectra per second)
and a table artifact of the rejected files; the flow returns the same summary.

States, as the runs list shows them: Completed when every file was scored or was a
duplicate (its message says how many); ``Completed with rejections`` and the tag
``rejected`` when some files were set aside (the message names the first ones and why);
Failed (``nothing scored: ...``, a ``NothingScored`` error carrying the summary) when
files were there and none could be scored: all rejected, or waiting for a chain (tag
``waiting``); Failed (``ScoringIncomplete``) when a file could neither be scored nor set
aside. An empty inbox, or files still being written, is a Completed run.

    from flows.score_inbox import score_inbox
    score_inbox(workspace="./workspace", inbox="/data/inbox")
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from flows.stopping import stops_cleanly
from flows.workers import DEFAULT_WORKERS
from storage import InvalidInputError, NotFoundError, ReplayableChain, WorkspaceStore
from tasks.outliers import (drift, drift_picture, emit_alert, flagged_rows, outlier_picture, over_threshold,
                            png_markdown, threshold_for)
from tasks.reporting import Progress, artifact_key, tag_flow_run
from tasks.scoring import (FileChanged, InboxFile, ScoreJob, ScoringLock,
                           discover, move_file, plan_destination, result_paths, same_bytes_exists,
                           scan_inbox, score_file_task, sha256_of, sweep_partials, write_note)

class ScoringIncomplete(RuntimeError):
    """Some files could neither be scored nor set aside (a store write, the outbox...);
    they are still in the inbox, and the next run tries them again."""


class NothingScored(RuntimeError):
    """Files were waiting and none could be scored: every one was rejected, or its
    dataset has no chain to score with. ``summary`` is what the run did."""

    def __init__(self, message: str, summary: dict) -> None:
        super().__init__(message)
        self.summary = summary


def _flow_run_name() -> str:
    """``score · tablet1 (2 files)``: the datasets whose files wait in the inbox as the run
    is created (``score · nothing waiting`` for an empty inbox), as train runs are named."""
    from prefect.runtime import flow_run

    try:
        files, _ = scan_inbox(Path(flow_run.parameters["inbox"]).expanduser())
        datasets = sorted({f.dataset or "(top level)" for f in files.values()})
        if not datasets:
            return "score · nothing waiting"
        shown = ", ".join(datasets[:3]) + (f" +{len(datasets) - 3}" if len(datasets) > 3 else "")
        return f"score · {shown} ({len(files)} file{'s' if len(files) != 1 else ''})"
    except Exception:  # noqa: BLE001 - a name must never stop a run
        return "score"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass
class Tally:
    scored: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    recovered: list[dict] = field(default_factory=list)
    waiting: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)

    def counts(self) -> dict:
        return {k: len(getattr(self, k)) for k in
                ("scored", "rejected", "duplicates", "recovered", "waiting", "failed", "gone")}


class InboxRun:
    """One pass over the inbox, in the flow-run process (the only one that opens the store)."""

    def __init__(self, store: WorkspaceStore, root: Path, *, alias: str, csv: bool, chunk_rows: int,
                 chunk_bytes: int | None, id_column: str | None, window: int, flow_run_id: str | None,
                 logger) -> None:
        self.store, self.root, self.alias, self.csv = store, root, alias, csv
        self.chunk_rows, self.chunk_bytes = chunk_rows, chunk_bytes
        self.id_column, self.window = id_column, max(1, window)
        self.flow_run_id, self.log = flow_run_id, logger
        self.tally = Tally()
        self.chains: dict[tuple[str, str], ReplayableChain | None] = {}
        self.unloadable: dict[tuple[str, str], str] = {}  # why a chain above is None
        self.pending: deque = deque()
        # same bytes, dataset and chain as a file being scored: {(sha256, dataset, chain): files}
        self.followers: dict[tuple[str, str, str], list[InboxFile]] = {}
        self.n_spectra = 0
        self.store_errors = 0
        self.progress = None  # a tasks.reporting.Progress over the files of this pass
        self.points: dict[str, dict] = {}  # file -> its thinned (T², Q) ratios, for the run's picture

    def tick(self) -> None:
        """Move the progress (artifact, and bar on a terminal) to the files handled so far."""
        if self.progress is not None:
            handled = sum(self.tally.counts().values())
            if handled > self.progress.done:
                self.progress.step(handled - self.progress.done)

    # -- admitting a file ------------------------------------------------------------
    def admit(self, f: InboxFile) -> None:
        if f.dataset is None:
            self.reject(f, None, {"file": f.rel, "dataset": None, "stage": "inbox", "error": "NoDatasetFolder",
                                  "problem": "the file is not in a dataset folder, so no chain can be chosen",
                                  "row": None, "column": None, "expected": "<inbox>/<dataset>/<file>",
                                  "found": f"<inbox>/{f.rel}",
                                  "message": f"{f.rel}: put files in <inbox>/<dataset>/, the dataset's folder"})
            return
        try:
            sha = sha256_of(f.path, f.stat)
        except FileChanged as exc:
            self.wait(f, str(exc))
            return
        except FileNotFoundError:
            self.tally.gone.append(f.rel)
            return
        except OSError as exc:
            self.reject(f, None, {"file": f.rel, "dataset": f.dataset, "stage": "read", "error": type(exc).__name__,
                                  "problem": f"cannot be read: {exc.strerror or exc}", "row": None, "column": None,
                                  "expected": "a file this process may read", "found": exc.strerror or str(exc),
                                  "message": f"{f.rel}: cannot be read: {exc.strerror or exc}"})
            return
        try:
            chain_id = self.store.get_alias(f.dataset, self.alias)  # at the start of each file
        except NotFoundError as exc:
            self.wait(f, f"no chain to score with: {exc}; promote one with `nirsflow promote {f.dataset} CHAIN` "
                         f"(set_alias({f.dataset!r}, {self.alias!r}, chain_id))", no_chain=True)
            return
        key = (sha, f.dataset, chain_id)  # a file is scored once per dataset and chain
        record = self.store.find_scored_file(*key)
        if record is not None:
            self.known(f, sha, record)
            return
        if key in self.followers:
            self.followers[key].append(f)
            return
        chain = self.loaded(chain_id, f.dataset)
        if chain is None:
            self.fail(f, f"chain {chain_id} of {f.dataset}/{self.alias} cannot be loaded: "
                         f"{self.unloadable[(chain_id, f.dataset)]}")
            return
        result, csv_path = result_paths(self.root, f, sha, chain_id, self.csv)
        job = ScoreJob(f, sha, result, csv_path, chunk_rows=self.chunk_rows, chunk_bytes=self.chunk_bytes,
                       id_column=self.id_column, alias=self.alias)
        future = score_file_task.submit(f.rel, quote(job), quote(chain))
        self.followers[key] = []
        self.pending.append((job, future, key))
        if len(self.pending) >= self.window:
            self.finish_ready()

    def loaded(self, chain_id: str, dataset: str) -> ReplayableChain | None:
        key = (chain_id, dataset)
        if key not in self.chains:
            try:
                self.chains[key] = self.store.load_chain(chain_id)
            except Exception as exc:  # noqa: BLE001 - e.g. a corrupt artifact: reported, not loaded
                self.unloadable[key] = f"{type(exc).__name__}: {exc}"
                self.log.error("chain %s (%s/%s) cannot be loaded: %s", chain_id, dataset, self.alias,
                               self.unloadable[key])
                self.chains[key] = None  # said once per run, not once per file
                return None
            self.log.info("%s/%s -> chain %s (%s)", dataset, self.alias, chain_id, self.chains[key].model_class)
            if self.chains[key].version_mismatch:
                self.log.warning("%s", self.chains[key].version_mismatch)
        return self.chains[key]

    # -- finishing a file -------------------------------------------------------------
    def drain(self) -> None:
        while self.pending:
            self.finish_ready()

    def finish_ready(self) -> None:
        """Finish the oldest file in flight (waiting for it) and every other one already
        done: their records go into the store in one transaction, and only once it has
        committed are their inputs moved out of the inbox."""
        ready = [self.pending.popleft()]
        for item in list(self.pending):
            if _done(item[1]):
                self.pending.remove(item)
                ready.append(item)
        finished = [(job, self.outcome(future), key) for job, future, key in ready]
        errors = self.record([item for item in finished if item[1]["status"] == "scored"])
        for job, outcome, key in finished:
            f, status = job.file, outcome["status"]
            if status == "scored":
                self.scored(f, job, outcome, errors.get(key))
            elif status == "rejected":
                self.reject(f, job.sha256, outcome["problem"])
            elif status == "changed":
                self.wait(f, outcome["reason"])
            elif status == "gone":
                self.tally.gone.append(f.rel)
            else:
                self.fail(f, outcome.get("reason", status))
            self.settle_followers(key, outcome)
        self.tick()

    @staticmethod
    def outcome(future) -> dict:
        try:
            return future.result()
        except Exception as exc:  # noqa: BLE001 - the task itself failed: not the file's fault
            return {"status": "failed", "reason": f"the scoring task failed: {type(exc).__name__}: {exc}"}

    def record(self, scored: list[tuple[ScoreJob, dict, tuple]]) -> dict[tuple, Exception]:
        """Record scored files, in one transaction when they all go in; {(sha256,
        dataset, chain): error} for those that did not."""
        def one(job: ScoreJob, o: dict) -> None:
            self.store.record_scored_file(job.sha256, job.file.rel, o["chain_id"], o["result_path"],
                                          n_spectra=o["n_spectra"], dataset_name=job.file.dataset,
                                          alias=self.alias, flow_run_id=self.flow_run_id)
        if not scored:
            return {}
        if len(scored) > 1:
            try:
                with self.store.batch():
                    for job, o, _ in scored:
                        one(job, o)
                return {}
            except Exception:  # noqa: BLE001 - one of them is refused: record them one by one
                pass
        errors = {}
        for job, o, key in scored:
            try:
                one(job, o)
            except Exception as exc:  # noqa: BLE001 - sorted out in scored()
                errors[key] = exc
        return errors

    def scored(self, f: InboxFile, job: ScoreJob, outcome: dict, error: Exception | None) -> None:
        if error is not None:
            record = (self.store.find_scored_file(job.sha256, f.dataset, outcome["chain_id"])
                      if isinstance(error, InvalidInputError) else None)
            if record is not None:  # another run recorded the same bytes meanwhile
                self.known(f, job.sha256, record)
                return
            self.store_errors += 1
            self.fail(f, f"scored into {outcome['result_path']} but not recorded in the store "
                         f"({type(error).__name__}: {error}); left in the inbox for the next run")
            return
        dest = self.move(f, self.root / "processed" / f.dataset)
        if dest is None:
            return
        self.n_spectra += outcome["n_spectra"]
        self.tally.scored.append({"file": f.rel, "n_spectra": outcome["n_spectra"],
                                  "seconds": round(outcome["seconds"], 3), "result": outcome["result_path"],
                                  "chain_id": outcome["chain_id"], "moved_to": str(dest),
                                  **({"resampled_from": outcome["resampled_from"]}
                                     if "resampled_from" in outcome else {}),
                                  **({"flags": outcome["flags"], "n_flagged": outcome["n_flagged"]}
                                     if "flags" in outcome else {})})
        if "points" in outcome:
            self.points[f.rel] = outcome["points"]

    def known(self, f: InboxFile, sha: str, record: dict) -> None:
        """Bytes the store has already scored: either this very file, scored and recorded
        by a run that died before moving it, or a duplicate."""
        processed = self.root / "processed" / (f.dataset or "")
        result_present = Path(record["result_path"]).exists()
        if record["file_name"] == f.rel and same_bytes_exists(processed, f.name, sha, f.stat.size) is None:
            dest = self.move(f, processed)
            if dest is None:
                return
            self.tally.recovered.append({"file": f.rel, "result": record["result_path"],
                                         "result_present": result_present, "moved_to": str(dest) if dest else None})
            self.log.info("%s was scored and recorded by flow run %s, which stopped before moving it; moved now",
                          f.rel, record.get("flow_run_id"))
            return
        dest = plan_destination(processed, f.name)
        note = {"file": f.rel, "content_sha256": sha,
                "skipped": f"duplicate: these bytes were already scored for dataset {record['dataset_name']!r} "
                           f"by chain {record['chain_id']}",
                "duplicate_of": record["file_name"], "result_path": record["result_path"],
                "result_present": result_present, "chain_id": record["chain_id"], "alias": record.get("alias"),
                "scored_at": record.get("scored_at"), "scored_by_flow_run": record.get("flow_run_id"),
                "seen_again_at": _now(), "seen_again_by_flow_run": self.flow_run_id, "moved_to": str(dest)}
        if not self.set_aside(f, dest, ".duplicate.json", note, f"duplicate of {record['file_name']}"):
            return
        self.tally.duplicates.append({"file": f.rel, "duplicate_of": record["file_name"],
                                      "result": record["result_path"], "moved_to": str(dest)})
        self.log.info("%s: duplicate of %s (scored %s); result %s", f.rel, record["file_name"],
                      record.get("scored_at"), record["result_path"])

    def set_aside(self, f: InboxFile, dest: Path, note_suffix: str, note: dict, why: str) -> bool:
        """Write the note beside `dest`, then move the input there. False (and the file
        counted as gone, or failed and left in the inbox) when that did not happen."""
        try:
            write_note(dest.with_name(dest.name + note_suffix), note)
            move_file(f.path, dest)
        except FileNotFoundError:
            self.tally.gone.append(f.rel)
            return False
        except OSError as exc:
            self.fail(f, f"{why}, but not moved out of the inbox: {exc}")
            return False
        return True

    def reject(self, f: InboxFile, sha: str | None, problem: dict) -> None:
        dest = plan_destination(self.root / "rejected" / (f.dataset or ""), f.name)
        note = {**problem, "content_sha256": sha, "size_bytes": f.stat.size, "rejected_at": _now(),
                "flow_run_id": self.flow_run_id, "moved_to": str(dest)}
        if not self.set_aside(f, dest, ".error.json", note, f"rejected ({problem.get('message')})"):
            return
        self.tally.rejected.append(note)
        self.log.warning("rejected %s -> %s: %s", f.rel, dest, problem.get("message"))

    def move(self, f: InboxFile, dest_dir: Path) -> Path | None:
        """Move a scored and recorded input to processed/; if that fails, the next run sees
        its hash recorded under its own name and finishes the move."""
        try:
            return move_file(f.path, plan_destination(dest_dir, f.name))
        except OSError as exc:
            self.fail(f, f"scored and recorded, but not moved out of the inbox ({exc}); the next run moves it")
            return None

    def wait(self, f: InboxFile, reason: str, *, no_chain: bool = False) -> None:
        """Leave a file in the inbox for a later run: still being written (expected), or
        its dataset has no chain to score with (``no_chain``: the lab must act)."""
        self.tally.waiting.append({"file": f.rel, "reason": reason, "no_chain": no_chain})
        self.log.warning("left in the inbox: %s: %s", f.rel, reason)

    def fail(self, f: InboxFile, reason: str) -> None:
        self.tally.failed.append({"file": f.rel, "reason": reason})
        self.log.error("not finished, left in the inbox: %s: %s", f.rel, reason)

    def settle_followers(self, key: tuple[str, str, str], outcome: dict) -> None:
        sha = key[0]
        for f in self.followers.pop(key, []):
            record = self.store.find_scored_file(*key)
            if record is not None:
                self.known(f, sha, record)
            elif outcome["status"] == "rejected":
                first = outcome["problem"]
                self.reject(f, sha, {**first, "file": f.rel, "dataset": f.dataset,
                                     "message": f"same bytes as {first['file']}, rejected: {first['message']}"})
            else:
                self.wait(f, f"same bytes as {outcome.get('rel')}, which was not scored ({outcome['status']}); "
                             "tried again next run")


def _done(future) -> bool:
    wrapped = getattr(future, "wrapped_future", None)
    return wrapped is not None and wrapped.done()


def _summary_markdown(summary: dict, tally: Tally) -> str:
    c = summary["counts"]
    lines = [f"# Inbox scoring: {summary['inbox']}", "",
             "| scored | rejected | duplicates | recovered | waiting | failed | spectra | spectra/s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| {c['scored']} | {c['rejected']} | {c['duplicates']} | {c['recovered']} | {c['waiting']} | "
             f"{c['failed']} | {summary['n_spectra']} | {summary['spectra_per_s']} |", "",
             f"Results in `{summary['root']}/outbox`; wall time {summary['seconds']} s "
             f"(of which {summary['settle_seconds']} s waiting for files to settle).", ""]

    def table(title: str, rows: list[dict], columns: list[str]) -> None:
        if not rows:
            return
        lines.extend([f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)])
        for row in rows[:100]:
            cells = [str(row.get(col) if row.get(col) is not None else "").replace("|", "\\|").replace("\n", " ")[:300]
                     for col in columns]
            lines.append("| " + " | ".join(cells) + " |")
        if len(rows) > 100:
            lines.append(f"| … {len(rows) - 100} more |" + " |" * (len(columns) - 1))
        lines.append("")

    table("Outlier checks per file (flagged: over a 95 % limit of T² or Q, or outside the calibration range)",
          flagged_rows(tally.scored), ["file", "spectra", "flagged", "share", "t2", "q", "both", "y_range"])
    table("Alerts (flagged share over the dataset's threshold)", summary.get("alerts", []),
          ["file", "flagged", "spectra", "share", "threshold"])
    if summary.get("outlier_png"):
        lines.extend(["## T² vs Q of the scored spectra", "", png_markdown(summary["outlier_png"], "T² vs Q"),
                      "", f"`{summary['outlier_png']}`", ""])
    table("Rejected", tally.rejected, ["file", "stage", "row", "column", "expected", "found", "problem"])
    table("Waiting (left in the inbox)", tally.waiting, ["file", "reason"])
    table("Failed (left in the inbox)", tally.failed, ["file", "reason"])
    table("Duplicates (not scored again)", tally.duplicates, ["file", "duplicate_of", "result"])
    return "\n".join(lines)


def _pictures(summary: dict, run: "InboxRun", workspace: Path, thresholds: dict | None, logger) -> None:
    """The run's T² vs Q picture, and each scored dataset's drift (share flagged per day
    over four weeks, from its outbox) as a table and a picture, for the UI."""
    plots = workspace / "exports" / "plots"
    name = summary.get("flow_run_id") or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    try:
        if run.points:
            summary["outlier_png"] = str(outlier_picture(run.points, plots / "scoring" / f"{name}-outliers.png",
                                                         f"Outlier checks: {Path(summary['inbox']).name}"))
        summary["drift"] = {}
        for dataset in sorted({item["file"].split("/", 1)[0] for item in run.tally.scored if "flags" in item}):
            table = drift(Path(summary["root"]), dataset)
            png = drift_picture(table, plots / "drift" / f"{dataset}.png", dataset, threshold_for(dataset, thresholds))
            summary["drift"][dataset] = {"rows": table.with_columns(table["day"].cast(str)).to_dicts(), "png": str(png)}
    except Exception as exc:  # noqa: BLE001 - pictures are a convenience; the outbox holds the numbers
        logger.warning("no outlier pictures: %s: %s", type(exc).__name__, exc)


def _publish_drift(summary: dict) -> None:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    for dataset, found in (summary.get("drift") or {}).items():
        key = artifact_key("drift", dataset)
        create_table_artifact(found["rows"], key=key,
                              description=f"{dataset}: spectra flagged by the outlier checks per day and chain "
                                          "(last 4 weeks; `nirsflow drift` gives the same)")
        create_markdown_artifact(f"# Drift of {dataset}\n\n{png_markdown(found['png'], 'share flagged per day')}\n\n"
                                 f"`{found['png']}`\n", key=artifact_key(key, "picture"),
                                 description=f"{dataset}: share of spectra flagged per day")


def _publish(summary: dict, tally: Tally, logger) -> None:
    try:
        from prefect.artifacts import create_markdown_artifact, create_table_artifact

        _publish_drift(summary)

        key = artifact_key("score-inbox", Path(summary["inbox"]).name)
        create_markdown_artifact(_summary_markdown(summary, tally), key=key,
                                 description=f"Inbox scoring of {summary['inbox']}: counts")
        if tally.rejected:
            rows = [{k: r.get(k) for k in ("file", "dataset", "stage", "row", "column", "expected", "found",
                                           "problem", "moved_to")} for r in tally.rejected]
            summary["rejected_artifact_id"] = str(create_table_artifact(
                rows, key=artifact_key(key, "rejected"),
                description=f"Files of {summary['inbox']} set aside in rejected/, with what is wrong"))
    except Exception as exc:  # noqa: BLE001 - the UI is a convenience, the files and the store are the truth
        logger.warning("no UI artifact: %s", exc)


@flow(name="score_inbox", flow_run_name=_flow_run_name, persist_result=False,
      task_runner=ThreadPoolTaskRunner(max_workers=DEFAULT_WORKERS))
@stops_cleanly
def score_inbox(workspace: str, inbox: str, outbox: str | None = None, alias: str = "production",
                settle_seconds: float = 2.0, csv: bool = False, chunk_rows: int = 500,
                chunk_mb: float | None = 4.0, id_column: str | None = "sample_id", max_files: int | None = None,
                window: int | None = None, lock_timeout: float = 60.0,
                alert_thresholds: dict[str, float] | None = None) -> dict[str, Any]:
    """Score the stable files of ``inbox`` (see the module docstring for the layout).

    outbox: the folder that gets ``outbox/``, ``processed/``, ``rejected/`` (default: the
    workspace). alias: the alias every dataset's chain is looked up by. settle_seconds:
    the gap between the two looks. csv: also write each result as CSV. chunk_rows: spectra
    read and replayed at a time, at most (memory). chunk_mb: and at most as many as fit
    this many MB as float64 (8 bytes a wavelength), so a file of wide spectra gets fewer
    rows a chunk; scoring a chunk takes about ten times this; None: rows alone decide.
    id_column: the sample-id column (None numbers the rows). max_files: at most this many
    files per run (the rest wait for the next).
    window: files in flight at once (default 2 x the task runner's threads).
    alert_thresholds: {dataset: share}: a file whose share of spectra flagged by the outlier
    checks passes its dataset's share (default 0.3) raises the ``nirsflow.scoring.flagged``
    Prefect event and is named in the run's state message.
    """
    started = time.perf_counter()
    logger = get_run_logger()
    from prefect.runtime import flow_run

    flow_run_id = str(flow_run.id) if flow_run.id else None
    inbox_path = Path(inbox).expanduser().absolute()
    root = Path(outbox or workspace).expanduser().absolute()
    if not inbox_path.is_dir():
        raise FileNotFoundError(f"inbox {inbox_path} is not a folder; create it, with one sub-folder per dataset")
    for folder in ("outbox", "processed", "rejected"):
        out = root / folder
        if inbox_path == out or inbox_path.is_relative_to(out) or out.is_relative_to(inbox_path):
            raise ValueError(f"the inbox {inbox_path} and the output folder {out} must not contain each other; "
                             "give score_inbox another inbox or another outbox root")
    if int(chunk_rows) < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows!r}")
    if chunk_mb is not None and not chunk_mb > 0:
        raise ValueError(f"chunk_mb must be more than 0 (or None), got {chunk_mb!r}")
    for dataset in alert_thresholds or {}:
        threshold_for(dataset, alert_thresholds)  # a bad threshold stops the run before any file moves
    summary: dict[str, Any] = {"inbox": str(inbox_path), "root": str(root), "alias": alias,
                               "flow_run_id": flow_run_id}

    with ScoringLock([inbox_path, root / "outbox"]) as lock:
        if not lock.acquired:
            logger.warning("another score_inbox run is working here (%s); nothing done", lock.held_by)
            return {**summary, "skipped": f"locked by {lock.held_by}"}
        swept = sweep_partials(root)
        if swept:
            logger.info("swept %d temporary files left by an interrupted run: %s", len(swept),
                        ", ".join(str(p) for p in swept[:10]))
        look = time.perf_counter()
        stable, changing, skipped = discover(inbox_path, settle_seconds)
        settle = time.perf_counter() - look
        if skipped:
            logger.info("sub-folders are not looked into: %s", ", ".join(skipped[:20]))
        later = stable[max_files:] if max_files is not None else []
        stable = stable[:max_files] if max_files is not None else stable
        logger.info("%d files ready in %s, %d still changing, %d left for the next run", len(stable), inbox_path,
                    len(changing), len(later))
        # the UI filters runs by dataset: tagged as train runs are
        tag_flow_run(["nirsflow", "score", *sorted({f"dataset:{f.dataset}" for f in stable + changing if f.dataset})])
        scoring_started = time.perf_counter()
        with WorkspaceStore(workspace, lock_timeout=lock_timeout, idle=1.0) as store:
            run = InboxRun(store, root, alias=alias, csv=csv, chunk_rows=int(chunk_rows),
                           chunk_bytes=None if chunk_mb is None else max(1, int(chunk_mb * 1e6)),
                           id_column=id_column, window=window or 2 * DEFAULT_WORKERS, flow_run_id=flow_run_id,
                           logger=logger)
            for f in changing:
                run.wait(f, f"still being written: size or mtime changed between two looks {settle_seconds:g} s apart")
            if stable:
                run.progress = Progress(len(stable), key=artifact_key("progress", Path(inbox).name),
                                        description=f"Scoring {len(stable)} files of {inbox}: share handled",
                                        label="scoring", unit="files")
            try:
                for f in stable:
                    run.admit(f)
                    run.tick()
            finally:
                run.drain()
        scoring_s = time.perf_counter() - scoring_started

    tally = run.tally
    summary.update(counts=tally.counts(), n_spectra=run.n_spectra,
                   spectra_per_s=round(run.n_spectra / scoring_s, 1) if scoring_s > 0 else None,
                   seconds=round(time.perf_counter() - started, 3), settle_seconds=round(settle, 3),
                   scoring_seconds=round(scoring_s, 3), left_for_next_run=[f.rel for f in later],
                   swept=[str(p) for p in swept], scored=tally.scored, rejected=tally.rejected,
                   duplicates=tally.duplicates, recovered=tally.recovered, waiting=tally.waiting,
                   failed=tally.failed, gone=tally.gone, store_errors=run.store_errors,
                   flagged=flagged_rows(tally.scored), alerts=over_threshold(tally.scored, alert_thresholds))
    for alert in summary["alerts"]:
        logger.warning("%s: %d of %d spectra (%.0f %%) flagged by the outlier checks, over the %s threshold of "
                       "%.0f %%", alert["file"], alert["flagged"], alert["spectra"], 100 * alert["share"],
                       alert["dataset"], 100 * alert["threshold"])
        try:
            emit_alert(alert, flow_run_id)
        except Exception as exc:  # noqa: BLE001 - said in the log; the state message still says it
            logger.error("the alert event for %s was not sent: %s", alert["file"], exc)
    _pictures(summary, run, Path(workspace).expanduser().absolute(), alert_thresholds, logger)
    _publish(summary, tally, logger)
    c = summary["counts"]
    logger.info("scored %d files (%d spectra, %s spectra/s), rejected %d, duplicates %d, recovered %d, "
                "waiting %d, failed %d", c["scored"], run.n_spectra, summary["spectra_per_s"], c["rejected"],
                c["duplicates"], c["recovered"], c["waiting"], c["failed"])
    if tally.failed:
        raise ScoringIncomplete(f"{len(tally.failed)} files could not be finished and stay in the inbox: " +
                                "; ".join(f"{x['file']}: {x['reason']}" for x in tally.failed[:5]))
    return final_state(summary, tally)


def final_state(summary: dict, tally: Tally):
    """The run's state, readable in the runs list: Completed when every file that could
    be looked at was scored (or was a duplicate); ``Completed with rejections`` (and the
    tag ``rejected``) when some were set aside; Failed when files were there and none
    could be scored (all rejected, or their dataset has no chain: tag ``waiting``). The
    message says what the run did, naming the first files set aside and why."""
    from prefect.states import Completed, Failed

    c = summary["counts"]
    no_chain = [w for w in tally.waiting if w.get("no_chain")]
    parts = [f"scored {c['scored']} files ({summary['n_spectra']} spectra)"]
    if c["duplicates"]:
        parts.append(f"{c['duplicates']} already scored (duplicates)")
    if c["recovered"]:
        parts.append(f"{c['recovered']} finished from an interrupted run")
    if tally.rejected:
        parts.append(f"rejected {len(tally.rejected)}: " + "; ".join(
            f"{r['file']}: {r.get('problem') or r.get('message')}" for r in tally.rejected[:3])
            + ("; ..." if len(tally.rejected) > 3 else ""))
    alerts = summary.get("alerts") or []
    if alerts:
        parts.append(f"{len(alerts)} over the flagged-share threshold: " + "; ".join(
            f"{a['file']}: {a['flagged']} of {a['spectra']} spectra flagged ({100 * a['share']:.0f} % > "
            f"{100 * a['threshold']:g} %)" for a in alerts[:3]) + ("; ..." if len(alerts) > 3 else ""))
    if no_chain:
        datasets = sorted({w["file"].split("/", 1)[0] for w in no_chain})
        parts.append(f"{len(no_chain)} waiting for a chain (no {summary['alias']!r} alias for "
                     f"{', '.join(datasets)})")
    message = "; ".join(parts)[:1000]
    summary["outcome"] = message
    tags = (["rejected"] if tally.rejected else []) + (["waiting"] if no_chain else []) + (["flagged"] if alerts else [])
    if tags:
        tag_flow_run(tags)
    if (tally.rejected or no_chain) and not (c["scored"] or c["recovered"] or c["duplicates"]):
        return Failed(message=f"nothing scored: {message}", data=NothingScored(f"nothing scored: {message}", summary))
    if tally.rejected:
        return Completed(name="Completed with rejections", message=message, data=summary)
    return Completed(message=message, data=summary)
