"""Bringing a nirs4all 0.7.x workspace into this one: ``WorkspaceStore.import_workspace``.

The source is the original's folder: ``store.duckdb`` (written by DuckDB 1.x, which
DuckDB 2 reads; opened read-only, never changed) and its ``artifacts/``. What is taken:

* runs, pipelines (failed ones too, with their error), chains, predictions with their
  arrays, logs; each gets an id here, and ``imported_ids`` keeps its id there, so running
  the import again adds nothing (and imports a chain skipped before once it can be);
* artifacts, re-hashed: the original's ids are uuids and its file names hashes it never
  checked, so each file's bytes are hashed again and must match the recorded
  ``content_hash``, then stored under their SHA-256 as every artifact here is. Each is
  loaded once, as replay will load it (the import trusts the source as the lab's own:
  loading a pickle runs the code it names);
* a chain is imported only when it can be replayed here: every artifact it references
  has its row, its file, its recorded hash and loads; its steps follow the replay rule
  (``nirs.replay``: splitters skipped, stateless steps rebuilt from trusted modules,
  ``NIRSFLOW_TRUSTED_MODULES``). Its task, classes and width are recorded from its fitted
  objects (the original saved none). Otherwise it is skipped, with the reason, in the
  report; its pipeline and predictions are still imported (the predictions without a chain).

The original's defects are not carried over: ``ref_count`` is not read (liveness is
``chain_artifacts`` here), so a chain whose artifact the original's gc deleted after a
double decrement is reported, never imported pointing at a missing file; a refit
prediction's 0.0 validation score (the original's way of writing "none") is stored as
missing; ``y_proba``, stored flattened, gets back its (samples x classes) shape; a run
still ``running`` in the source is imported ``crashed``, since nothing will finish it.

Everything lands in one transaction (all of it, or nothing); artifact files placed for a
transaction that failed are orphans, collected by gc after its grace.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import duckdb
import joblib
import numpy as np

from . import arrays
from .artifacts import FORMATS
from .base import new_id, now, to_json
from .chains import Chains, referenced_artifacts
from .connection import Connector
from .errors import ReplayError, WorkspaceError
from .operations import Insert, Update
from .replay import ReplayableChain
from .versions import FITTED_VERSIONS

SOURCE_TABLES = {
    "runs": ("run_id", "name", "config", "datasets", "status", "created_at", "completed_at", "summary", "error"),
    "pipelines": ("pipeline_id", "run_id", "name", "expanded_config", "generator_choices", "dataset_name",
                  "dataset_hash", "status", "created_at", "completed_at", "best_val", "best_test", "metric",
                  "duration_ms", "error"),
    "chains": ("chain_id", "pipeline_id", "steps", "model_step_idx", "model_class", "preprocessings",
               "fold_strategy", "fold_artifacts", "shared_artifacts", "branch_path", "source_index", "created_at"),
    "predictions": ("prediction_id", "pipeline_id", "chain_id", "dataset_name", "model_name", "model_class",
                    "fold_id", "partition", "val_score", "test_score", "train_score", "metric", "task_type",
                    "n_samples", "n_features", "scores", "best_params", "preprocessings", "branch_id",
                    "branch_name", "refit_context", "created_at"),
    "prediction_arrays": ("prediction_id", "y_true", "y_pred", "y_proba", "sample_indices", "weights"),
    "artifacts": ("artifact_id", "artifact_path", "content_hash", "operator_class", "artifact_type", "format"),
    "logs": ("log_id", "pipeline_id", "step_idx", "operator_class", "event", "duration_ms", "message",
             "details", "level", "created_at"),
}
KINDS = ("run", "pipeline", "chain", "prediction", "log")
REFIT_FOLDS = ("final", "fold_final")  # the original's names of a refit model's fold


@dataclass
class ImportReport:
    """What an import did: counts of what was imported and what was already here, by kind;
    every chain (or other row) skipped, and why; the chains' ids there and here."""

    source: str
    imported: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS + ("artifact",), 0))
    already_imported: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    skipped: list[dict] = field(default_factory=list)
    chains: dict[str, str] = field(default_factory=dict)  # source chain id -> chain id here

    def to_dict(self) -> dict:
        return {"source": self.source, "imported": dict(self.imported),
                "already_imported": dict(self.already_imported), "skipped": list(self.skipped),
                "chains": dict(self.chains)}

    def lines(self) -> list[str]:
        said = ", ".join(f"{n} {k}s" for k, n in self.imported.items() if n) or "nothing new"
        out = [f"imported from {self.source}: {said}"]
        already = ", ".join(f"{n} {k}s" for k, n in self.already_imported.items() if n)
        if already:
            out.append(f"already imported before (unchanged): {already}")
        for skip in self.skipped:
            out.append(f"skipped {skip['kind']} {skip['id']} ({skip.get('name') or '-'}): {skip['reason']}")
        return out


class Imports:
    """Built with the connector and the chains part (artifacts are saved and chains
    checked through it, so an imported chain is saved exactly as any other)."""

    def __init__(self, db: Connector, chains: Chains, path: Path) -> None:
        self._db, self._chains, self.path = db, chains, path

    def import_workspace(self, path: str | Path) -> ImportReport:
        """Import a nirs4all 0.7.x workspace folder (see ``storage.imports``); returns the
        report of what was imported, skipped (and why) or already here."""
        source = Path(path).expanduser().absolute()
        if source.resolve() == self.path.resolve():
            raise WorkspaceError(f"{source} is this workspace; import another one into it")
        tables = _read_source(source)
        report = ImportReport(str(source))
        by_artifact = {row["artifact_id"]: row for row in tables["artifacts"]}
        pipelines = {row["pipeline_id"]: row for row in tables["pipelines"]}
        runs = {row["run_id"] for row in tables["runs"]}
        with self._db.reading() as con:
            done = {r[0] for r in con.execute("SELECT source_id FROM imported_ids WHERE source_kind = 'chain'")
                    .fetchall()}
        checked = _ArtifactCheck(source)
        plans: list[tuple[dict, dict]] = []  # (source chain, chain as it will be saved here)
        for row in tables["chains"]:
            if row["chain_id"] in done:  # (looked at again in the transaction below)
                plans.append((row, {}))
                continue
            try:
                if row["pipeline_id"] not in pipelines or pipelines[row["pipeline_id"]]["run_id"] not in runs:
                    raise _Skip(f"its pipeline {row['pipeline_id']} (or that pipeline's run) is not in the source")
                plans.append((row, _plan_chain(row, by_artifact, checked)))
            except _Skip as skip:
                report.skipped.append({"kind": "chain", "id": row["chain_id"],
                                       "name": pipelines.get(row["pipeline_id"], {}).get("name"),
                                       "reason": str(skip)})
        with self._db.batch() as con:
            con.catch_up()
            known = dict(((kind, sid), lid) for kind, sid, lid in con.execute(
                "SELECT source_kind, source_id, local_id FROM imported_ids "
                "WHERE source_kind IN ('run', 'pipeline', 'chain', 'prediction', 'log')").fetchall())
            writer = _Writer(con, known, report, str(source))
            new_artifacts: set[str] = set()
            for row in tables["runs"]:
                writer.run(row)
            for row in tables["pipelines"]:
                if row["run_id"] not in runs:
                    report.skipped.append({"kind": "pipeline", "id": row["pipeline_id"], "name": row["name"],
                                           "reason": f"its run {row['run_id']} is not in the source"})
                    continue
                writer.pipeline(row)
            for row, plan in plans:
                if ("chain", row["chain_id"]) in known:
                    report.already_imported["chain"] += 1
                    report.chains[row["chain_id"]] = known[("chain", row["chain_id"])]
                    continue
                if not plan:  # seen imported before the transaction, no longer: the next import brings it
                    report.skipped.append({"kind": "chain", "id": row["chain_id"], "name": None,
                                           "reason": "its record of an earlier import changed meanwhile; "
                                                     "import again"})
                    continue
                ids = {a: self._chains.save_artifact_bytes(checked.data[a], "joblib", by_artifact[a]["operator_class"],
                                                           by_artifact[a]["artifact_type"] or "model")
                       for a in sorted(plan["source_artifacts"])}
                new_artifacts.update(ids.values())
                chain_id = self._save_chain(known[("pipeline", row["pipeline_id"])], row, plan, ids, str(source))
                writer.record("chain", row["chain_id"], chain_id)
                report.chains[row["chain_id"]] = chain_id
                writer.relink(chain_id, [p["prediction_id"] for p in tables["predictions"]
                                         if p["chain_id"] == row["chain_id"]])
            arrays_of = {row["prediction_id"]: row for row in tables["prediction_arrays"]}
            for row in tables["predictions"]:
                writer.prediction(row, arrays_of.get(row["prediction_id"]))
            for row in tables["logs"]:
                writer.log(row, pipelines)
            report.imported["artifact"] = len(new_artifacts)
        return report

    def _save_chain(self, pipeline_id: str, row: dict, plan: dict, ids: dict[str, str], source: str) -> str:
        steps = _mapped(plan["steps"], ids)
        metadata = {"imported_from": {"workspace": source, "source_chain_id": row["chain_id"],
                                      "source_artifacts": {ids[a]: a for a in sorted(plan["source_artifacts"])},
                                      "created_at": _iso(row["created_at"])},
                    FITTED_VERSIONS: plan["versions"]}
        return self._chains.save_chain(
            pipeline_id, steps, row["model_step_idx"], row["model_class"], row["preprocessings"] or "",
            plan["fold_strategy"], _mapped(plan["fold_artifacts"], ids), _mapped(plan["shared_artifacts"], ids),
            _json(row["branch_path"]), row["source_index"], task_type=plan["task_type"], classes=plan["classes"],
            n_features=plan["n_features"], metadata=metadata)


class _Skip(Exception):
    """Why a chain cannot be imported."""


def _read_source(source: Path) -> dict[str, list[dict]]:
    db = source / "store.duckdb"
    if not source.is_dir():
        raise WorkspaceError(f"{source} is not a folder: expected a nirs4all workspace (store.duckdb, artifacts/)")
    if not db.is_file():
        raise WorkspaceError(f"{source} has no store.duckdb: it is not a nirs4all workspace")
    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.Error as exc:
        raise WorkspaceError(f"{db} cannot be opened read-only ({exc}); if nirs4all has it open, close it (or "
                             f"copy the workspace folder) and import again. Nothing was imported.") from None
    try:
        if con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta'").fetchone()[0]:
            raise WorkspaceError(f"{source} is a nirsflow workspace, not a nirs4all one: move its chains with "
                                 "`nirsflow export chain` and `nirsflow import`. Nothing was imported.")
        tables = {}
        for table, columns in SOURCE_TABLES.items():
            found = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                               "WHERE table_name = ?", [table]).fetchall()}
            missing = [c for c in columns if c not in found]
            if missing:
                raise WorkspaceError(f"{db} is not a nirs4all 0.7 workspace: table {table} "
                                     f"{'is missing' if not found else 'lacks columns ' + ', '.join(missing)}. "
                                     "Nothing was imported.")
            order = f"created_at, {columns[0]}" if "created_at" in columns else columns[0]
            cursor = con.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}")
            tables[table] = [dict(zip(columns, r)) for r in cursor.fetchall()]
        return tables
    finally:
        con.close()


class _ArtifactCheck:
    """Each source artifact read, hashed against its record and loaded, once."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.data: dict[str, bytes] = {}
        self.objects: dict[str, Any] = {}
        self.problems: dict[str, str] = {}

    def check(self, artifact_id: str, row: dict | None) -> str | None:
        """None when the artifact is sound, otherwise what is wrong with it."""
        if artifact_id not in self.data and artifact_id not in self.problems:
            problem = self._check(artifact_id, row)
            if problem:
                self.problems[artifact_id] = problem
        return self.problems.get(artifact_id)

    def _check(self, artifact_id: str, row: dict | None) -> str | None:
        if row is None:
            return (f"artifact {artifact_id} has no row in the source (the original's gc deleted it while this "
                    "chain still used it: its ref_count was decremented twice)")
        relative = PurePosixPath(str(row["artifact_path"]))
        if relative.is_absolute() or ".." in relative.parts:
            return f"artifact {artifact_id} has an unsafe path {row['artifact_path']!r}"
        file = self.source / "artifacts" / relative
        if (row["format"] or "joblib") not in FORMATS:
            return f"artifact {artifact_id} has format {row['format']!r}; this nirsflow reads {', '.join(FORMATS)}"
        if not file.is_file():
            return f"artifact {artifact_id}: its file artifacts/{relative} is missing"
        data = file.read_bytes()
        found = hashlib.sha256(data).hexdigest()
        if found != str(row["content_hash"]).removeprefix("sha256:"):  # the runner's rows say "sha256:<hex>"
            return (f"artifact {artifact_id}: its file artifacts/{relative} is truncated or altered "
                    f"({len(data)} bytes hashing to {found[:12]}…, recorded {str(row['content_hash'])[:12]}…)")
        try:
            obj = joblib.load(io.BytesIO(data))
        except ModuleNotFoundError as exc:
            return (f"artifact {artifact_id} ({row['operator_class']}) cannot be loaded here: its pickle needs "
                    f"module {exc.name!r}, which is not installed (a nirs4all class: re-fit the chain with nirs "
                    f"or scikit-learn operators)")
        except Exception as exc:
            return f"artifact {artifact_id} ({row['operator_class']}) cannot be loaded: {type(exc).__name__}: {exc}"
        self.data[artifact_id], self.objects[artifact_id] = data, obj
        return None


def _plan_chain(row: dict, by_artifact: dict[str, dict], checked: _ArtifactCheck) -> dict:
    """The chain as it will be saved here (still with the source's artifact ids), or _Skip."""
    steps, folds, shared = _json(row["steps"]) or [], _json(row["fold_artifacts"]) or {}, \
        _json(row["shared_artifacts"]) or {}
    if not isinstance(steps, list) or not isinstance(folds, dict) or not isinstance(shared, dict):
        raise _Skip("its steps, fold_artifacts or shared_artifacts are malformed")
    steps = [_runner_step(s) if isinstance(s, dict) else s for s in steps]
    if "_source_map" in shared:
        raise _Skip("it is a multi-source chain (shared_artifacts has a _source_map), which nirsflow cannot replay")
    if not folds:
        raise _Skip("it has no fitted model (fold_artifacts is empty)")
    refit = [f for f in REFIT_FOLDS if f in folds]
    if refit:  # the original replays its refit model alone
        folds, strategy = {"refit": folds[refit[0]]}, "refit"
    else:
        strategy = "per_fold"
    try:
        referenced = referenced_artifacts([{"artifact_ids": s.get("artifact_ids")} for s in steps], folds, shared)
    except Exception as exc:
        raise _Skip(f"its artifact references are malformed: {exc}") from None
    problems = [p for a in sorted(referenced) if (p := checked.check(a, by_artifact.get(a)))]
    if problems:
        raise _Skip("; ".join(problems))
    chain = {"chain_id": row["chain_id"], "steps": steps, "model_step_idx": row["model_step_idx"],
             "fold_strategy": strategy, "fold_artifacts": folds, "shared_artifacts": shared}
    try:
        described = ReplayableChain(chain, checked.objects.__getitem__).describe()
    except ReplayError as exc:
        raise _Skip(f"it cannot be replayed: {exc}") from None
    model = checked.objects[folds[next(iter(folds))]]
    versions = {"scikit-learn": getattr(model, "_sklearn_version", None), "nirs4all": "0.7"}
    return {"steps": steps, "fold_strategy": strategy, "fold_artifacts": folds, "shared_artifacts": shared,
            "source_artifacts": referenced, "versions": versions, **described}


def _runner_step(step: dict) -> dict:
    """A step as nirs4all's runner wrote it (its second writer format, beside the store
    API's): a short ``operator_class`` with the class path in ``params["class"]``, and
    ``_FullTrainFoldSplitter``, its marker of a refit's one fold over all the data, which
    is a splitter (never applied at prediction time) of a nirs4all module."""
    params = step.get("params")
    if "." not in str(step.get("operator_class")) and isinstance(params, dict) and isinstance(params.get("class"), str):
        step = {**step, "operator_class": params["class"], "params": params.get("params") or {},
                "recorded_as": {"operator_class": step.get("operator_class"), "params": params}}
    if step.get("operator_class") == "_FullTrainFoldSplitter" and not step.get("artifact_ids"):
        step = {**step, "kind": "splitter"}
    return step


def _mapped(value: Any, ids: dict[str, str]) -> Any:
    """`value` with every source artifact id replaced by its id here (a step's params are
    the operator's, left as they are)."""
    if isinstance(value, str):
        return ids.get(value, value)
    if isinstance(value, dict):
        return {k: (v if k == "params" else _mapped(v, ids)) for k, v in value.items()}
    if isinstance(value, list):
        return [_mapped(v, ids) for v in value]
    return value


class _Writer:
    """The rows of one import, buffered in its transaction, each recorded in imported_ids."""

    def __init__(self, con, known: dict, report: ImportReport, source: str) -> None:
        self.con, self.known, self.report, self.source = con, known, report, source
        self.stamp = now()

    def record(self, kind: str, source_id: str, local_id: str) -> None:
        self.known[(kind, source_id)] = local_id
        self.report.imported[kind] += 1
        self.con.buffer(Insert("imported_ids", None, [kind, source_id, local_id, self.source, self.stamp]))

    def _new(self, kind: str, source_id: str) -> str | None:
        if (kind, source_id) in self.known:
            self.report.already_imported[kind] += 1
            return None
        return new_id()

    def run(self, row: dict) -> None:
        run_id = self._new("run", row["run_id"])
        if run_id is None:
            return
        status, error = row["status"] or "completed", row["error"]
        if status == "running":  # nothing will finish it now
            status, error = "crashed", "was still running in the nirs4all workspace when it was imported"
        self.con.buffer(Insert("runs", ("run_id", "name", "status", "config", "datasets", "summary", "error",
                                        "created_at", "completed_at", "tags"),
                               [run_id, row["name"], status, _text(row["config"]), _text(row["datasets"]) or "[]",
                                _text(row["summary"]), error, row["created_at"] or self.stamp, row["completed_at"],
                                to_json("tags", ["imported", "nirs4all"])]))
        self.con.remember_row("runs", run_id, (run_id, row["name"]))
        self.record("run", row["run_id"], run_id)

    def pipeline(self, row: dict) -> None:
        pipeline_id = self._new("pipeline", row["pipeline_id"])
        if pipeline_id is None:
            return
        run_id = self.known[("run", row["run_id"])]
        status = "failed" if row["status"] == "running" else (row["status"] or "completed")
        error = row["error"] if row["status"] != "running" else "was still running when its workspace was imported"
        self.con.buffer(Insert("pipelines", ("pipeline_id", "run_id", "name", "status", "expanded_config",
                                             "generator_choices", "dataset_name", "dataset_hash", "best_val",
                                             "best_test", "metric", "duration_ms", "error", "created_at",
                                             "completed_at"),
                               [pipeline_id, run_id, row["name"], status, _text(row["expanded_config"]),
                                _text(row["generator_choices"]), row["dataset_name"], row["dataset_hash"],
                                row["best_val"], row["best_test"], row["metric"], row["duration_ms"], error,
                                row["created_at"] or self.stamp, row["completed_at"]]))
        self.con.remember_row("pipelines", pipeline_id, (pipeline_id, run_id))
        self.con.remember("pipelines", pipeline_id, "dataset_name", row["dataset_name"])
        self.record("pipeline", row["pipeline_id"], pipeline_id)

    def relink(self, chain_id: str, source_predictions: list[str]) -> None:
        """Predictions an earlier import brought without their chain (it was damaged then)
        point at it now that it is here."""
        for source_id in source_predictions:
            local = self.known.get(("prediction", source_id))
            if local is not None:
                self.con.buffer(Update("predictions", "prediction_id", local, ("chain_id",), [chain_id]))

    def prediction(self, row: dict, stored: dict | None) -> None:
        if ("pipeline", row["pipeline_id"]) not in self.known:
            self.report.skipped.append({"kind": "prediction", "id": row["prediction_id"], "name": row["model_name"],
                                        "reason": f"its pipeline {row['pipeline_id']} was not imported"})
            return
        prediction_id = self._new("prediction", row["prediction_id"])
        if prediction_id is None:
            return
        val_score = row["val_score"]
        if row["refit_context"] is not None and val_score == 0.0:
            val_score = None  # the original wrote "no validation score" as 0.0
        chain_id = self.known.get(("chain", row["chain_id"])) if row["chain_id"] else None
        self.con.buffer(Insert("predictions", SOURCE_TABLES["predictions"],
                               [prediction_id, self.known[("pipeline", row["pipeline_id"])], chain_id,
                                row["dataset_name"], row["model_name"], row["model_class"], row["fold_id"],
                                row["partition"], val_score, row["test_score"], row["train_score"], row["metric"],
                                row["task_type"], row["n_samples"], row["n_features"], _text(row["scores"]),
                                _text(row["best_params"]), row["preprocessings"] or "", row["branch_id"],
                                row["branch_name"], row["refit_context"], row["created_at"] or self.stamp]))
        if stored is not None:
            self.con.buffer(Insert("prediction_arrays", None, [prediction_id, *_arrays(stored)]))
        self.record("prediction", row["prediction_id"], prediction_id)

    def log(self, row: dict, pipelines: dict[str, dict]) -> None:
        if ("pipeline", row["pipeline_id"]) not in self.known:
            return  # a log of a pipeline that is not in the source: nothing to attach it to
        log_id = self._new("log", row["log_id"])
        if log_id is None:
            return
        run_id = self.known.get(("run", pipelines[row["pipeline_id"]]["run_id"]))
        self.con.buffer(Insert("logs", None, [log_id, run_id, self.known[("pipeline", row["pipeline_id"])],
                                              row["step_idx"], row["operator_class"], row["event"],
                                              row["duration_ms"], row["message"], _text(row["details"]),
                                              row["level"] or "info", row["created_at"] or self.stamp]))
        self.record("log", row["log_id"], log_id)


def _arrays(stored: dict) -> list[bytes | None]:
    """The original's DOUBLE[] lists as arrays here; y_proba back to (samples x classes)."""
    out = {}
    for name in arrays.ARRAY_FIELDS:
        value = stored.get(name)
        out[name] = None if value is None else np.asarray(value, dtype=np.int64 if name == "sample_indices"
                                                          else np.float64)
    proba, n = out["y_proba"], len(out["y_pred"]) if out["y_pred"] is not None else 0
    if proba is not None and n and proba.ndim == 1 and proba.size % n == 0 and proba.size > n:
        out["y_proba"] = proba.reshape(n, proba.size // n)
    return [arrays.encode(name, out[name]) for name in arrays.ARRAY_FIELDS]


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _text(value: Any) -> str | None:
    """A JSON column as text (DuckDB hands the source's JSON columns out as text)."""
    return value if value is None or isinstance(value, str) else json.dumps(value, default=str)


def _iso(value: Any) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else value
