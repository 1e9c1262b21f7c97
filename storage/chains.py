"""Artifacts (content-addressed fitted objects) and the chains that reference them.

Liveness is derived, never counted by hand: an artifact is alive while a row of
``chain_artifacts`` points at it, or while its last save is younger than the gc grace
period (so a save that a chain is about to reference is never collected). ``ref_count``
is reported as the number of referencing chains.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl

from . import artifacts as art
from .base import first, check_id, check_int, check_text, from_json, new_id, now, to_json
from .errors import InvalidInputError, NotFoundError
from .versions import FITTED_VERSIONS, library_versions, warn_on_version_mismatch
from .writes import WritesMixin

_CHAIN_JSON = ("steps", "fold_artifacts", "shared_artifacts", "fold_weights", "classes",
               "branch_path", "metadata")
FOLD_STRATEGIES = ("per_fold", "refit")
def referenced_artifacts(steps: list, fold_artifacts: dict, shared_artifacts: dict) -> set[str]:
    """Every artifact id a chain points at, whatever the nesting the caller used."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str):
            found.add(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif value is not None:
            raise InvalidInputError(f"artifact references must be ids (strings), got {value!r}")

    walk(fold_artifacts)
    walk(shared_artifacts)
    for step in steps:
        walk(step.get("artifact_id"))
    return found


class ChainsMixin(WritesMixin):
    _artifact_cache: OrderedDict
    _chain_cache: OrderedDict
    artifact_cache_size: int = 256

    # -- artifacts ---------------------------------------------------------------
    def save_artifact(self, obj: Any, operator_class: str | None = None,
                      artifact_type: str = "model", format: str = "joblib") -> str:
        """Persist a fitted object; identical bytes give the same id and no new file."""
        return self.save_artifact_bytes(art.serialize(obj, format), format, operator_class, artifact_type)

    def save_artifact_bytes(self, data: bytes, format: str = "joblib", operator_class: str | None = None,
                            artifact_type: str = "model") -> str:
        """Persist already serialized bytes under their SHA-256 (bundle imports use this)."""
        return self._save_artifact_blobs([(data, operator_class, artifact_type)], format)[0]

    def save_artifacts(self, items: Sequence[tuple[Any, str | None, str]], format: str = "joblib") -> list[str]:
        """Persist several fitted objects, ``(obj, operator_class, artifact_type)`` each,
        and return their ids in order: what a chain needs, saved at once. Identical
        objects share one file, and the new files are written and fsynced side by side."""
        return self._save_artifact_blobs([(art.serialize(obj, format), operator_class, artifact_type)
                                          for obj, operator_class, artifact_type in items], format)

    def _save_artifact_blobs(self, items: list[tuple[bytes, str | None, str]], format: str) -> list[str]:
        if format not in art.FORMATS:
            raise InvalidInputError(f"unknown artifact format {format!r}; expected one of {art.FORMATS}")
        ids, distinct = [], {}
        for data, operator_class, artifact_type in items:
            check_text("operator_class", operator_class, optional=True)
            check_text("artifact_type", artifact_type)
            artifact_id = art.sha256(data)
            ids.append(artifact_id)
            distinct.setdefault(artifact_id, (data, operator_class, artifact_type))
        # buffered: the rows join the transaction's other buffered writes, after their
        # files are in place. Inside this thread's batch the lock is already held.
        if self._db.batch_connection() is not None:
            self._place_artifacts(distinct, {}, format)
            return ids
        # Otherwise the slow part (writing and fsyncing the bytes) happens before the lock;
        # under it only the check, the rename and the row, so gc sees both file and row or
        # neither.
        staged = self.files.stage_many({a: v[0] for a, v in distinct.items()
                                        if not self.files.path(a, format).exists()}, format)
        try:
            self._db.buffered(lambda con: self._place_artifacts(distinct, staged, format))
        finally:
            for one in staged.values():
                one.temp.unlink(missing_ok=True)  # published ones are gone already
        return ids

    def _place_artifacts(self, distinct: dict[str, tuple[bytes, str | None, str]],
                         staged: dict[str, art.StagedFile], format: str) -> None:
        """Under the lock: the files in place (but for sound copies already there), and
        their rows buffered."""
        missing = [a for a in distinct if not self.files.is_in_place(self.files.path(a, format), a)]
        # written here if not staged (a batch; or the file was there before the lock), or
        # if we waited for the lock longer than a gc's grace and it swept our temporary
        ready = [a for a in missing if a in staged and staged[a].temp.exists()]
        self.files.place_many([staged[a] for a in ready],
                              {a: distinct[a][0] for a in missing if a not in ready}, format)
        stamp = now()
        for artifact_id, (data, operator_class, artifact_type) in distinct.items():
            self._buffer(("insert", "artifacts", None, [
                artifact_id, art.relative_path(artifact_id, format), artifact_id, operator_class,
                artifact_type, format, len(data), stamp, stamp]))
            # a chain of this transaction may reference it without looking it up
            self._remember("artifacts", artifact_id, "artifact_id", artifact_id)

    def _apply_artifacts(self, con, rows: list, chained: set) -> None:
        """Artifact rows of buffered or journaled saves: new ids are appended, ids already
        in the table only have their grace period renewed (see below)."""
        by_id: dict[str, list] = {}
        for row in rows:
            if row[0] in by_id:
                by_id[row[0]][-1] = max(by_id[row[0]][-1], row[-1])  # saved again: last save
            else:
                by_id[row[0]] = list(row)
        # An appender (no SQL per row, and no pyarrow, which imports pandas (0.5-1 s) the
        # first time it converts Python objects, here under the exclusive lock) and two
        # cheap statements: an upsert through a staging table cost 5-6 ms a flush.
        ids = list(by_id)
        existing = self._stored_artifacts(con, ids)
        self._append_rows(con, "artifacts", None,
                          [row for artifact_id, row in by_id.items() if artifact_id not in existing])
        renew = sorted(existing - chained)
        if renew:
            # A save that found its artifact already stored renews its grace period,
            # unless a chain of the same writes references it: the chain keeps it alive
            # (the usual case: a pipeline re-saves stateless steps earlier ones saved).
            con.execute("UPDATE artifacts SET last_saved_at = ? WHERE list_contains(?, artifact_id)",
                        [max(by_id[i][-1] for i in renew), renew])
        for artifact_id in ids:
            self._remember("artifacts", artifact_id, "artifact_id", artifact_id)

    def _artifact_format(self, artifact_id: str) -> str:
        check_id("artifact", artifact_id)
        with self._db.reading() as con:
            row = first(con.execute("SELECT format FROM artifacts WHERE artifact_id = ?", [artifact_id]))
        if row is None:
            raise NotFoundError("artifact", artifact_id, self.path)
        return row[0]

    def load_artifact(self, artifact_id: str) -> Any:
        """A fresh copy of the object, loaded only after its bytes re-hash to its id."""
        return self.files.load(artifact_id, self._artifact_format(artifact_id))

    def _cached_artifact(self, artifact_id: str, format: str | None = None) -> Any:
        # Replay's cache, keyed by hash: the content of an id can never change.
        if artifact_id in self._artifact_cache:
            self._artifact_cache.move_to_end(artifact_id)
            return self._artifact_cache[artifact_id]
        obj = self.files.load(artifact_id, format or self._artifact_format(artifact_id))
        self._artifact_cache[artifact_id] = obj
        while len(self._artifact_cache) > self.artifact_cache_size:
            self._artifact_cache.popitem(last=False)
        return obj

    def get_artifact_path(self, artifact_id: str) -> Path:
        return self.files.path(artifact_id, self._artifact_format(artifact_id))

    def list_artifacts(self) -> pl.DataFrame:
        """Every artifact with ``ref_count`` = the number of chains that reference it."""
        return self._frame(
            "SELECT a.*, count(ca.chain_id)::INTEGER AS ref_count FROM artifacts a "
            "LEFT JOIN chain_artifacts ca USING (artifact_id) GROUP BY ALL ORDER BY a.created_at, a.artifact_id")

    # -- chains ------------------------------------------------------------------
    def save_chain(self, pipeline_id: str, steps: list[dict], model_step_idx: int,
                   model_class: str, preprocessings: str = "", fold_strategy: str = "per_fold",
                   fold_artifacts: dict | None = None, shared_artifacts: dict | None = None,
                   branch_path: list[int] | None = None, source_index: int | None = None, *,
                   fold_weights: dict | None = None, task_type: str | None = None,
                   classes: list | None = None, wavelengths=None, n_features: int | None = None,
                   metadata: dict | None = None, task_run_id: str | None = None) -> str:
        """Store a chain: its steps and the fitted artifacts of every fold.

        ``fold_artifacts`` maps fold ids to ``{step_idx: artifact_id}`` (or, as in the
        spec's original, to the fold's model artifact id); ``shared_artifacts`` maps a
        step index to the artifact (or list of artifacts) fitted once for all folds.
        Every referenced artifact must already be saved."""
        check_id("pipeline", pipeline_id)
        if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
            raise InvalidInputError("steps must be a list of dicts")
        model_step_idx = check_int("model_step_idx", model_step_idx, optional=False)
        check_text("model_class", model_class)
        if fold_strategy not in FOLD_STRATEGIES:
            raise InvalidInputError(f"fold_strategy must be one of {FOLD_STRATEGIES}, got {fold_strategy!r}")
        fold_artifacts, shared_artifacts = fold_artifacts or {}, shared_artifacts or {}
        for name, value in (("fold_artifacts", fold_artifacts), ("shared_artifacts", shared_artifacts)):
            if not isinstance(value, dict):
                raise InvalidInputError(f"{name} must be a dict, got {type(value).__name__}")
        if fold_weights is not None:
            unknown = set(fold_weights) - set(fold_artifacts)
            if unknown:
                raise InvalidInputError(f"fold_weights name folds the chain does not have: {sorted(unknown)}")
        grid = None
        if wavelengths is not None:
            grid = np.asarray(wavelengths, dtype=float)
            if grid.ndim != 1 or not np.all(np.isfinite(grid)):
                raise InvalidInputError("wavelengths must be a 1-D array of finite numbers")
            grid = grid.tolist()
        if metadata is None or isinstance(metadata, dict) and FITTED_VERSIONS not in metadata:
            # what fitted it (see storage/versions.py); a chain imported from a bundle keeps the original's
            metadata = {**(metadata or {}), FITTED_VERSIONS: library_versions()}
        referenced = referenced_artifacts(steps, fold_artifacts, shared_artifacts)
        chain_id = new_id()
        row = [chain_id, pipeline_id, to_json("steps", steps), model_step_idx, model_class,
               check_text("preprocessings", preprocessings), fold_strategy,
               to_json("fold_artifacts", fold_artifacts), to_json("shared_artifacts", shared_artifacts),
               to_json("fold_weights", fold_weights), check_text("task_type", task_type, optional=True),
               to_json("classes", classes), grid, check_int("n_features", n_features),
               to_json("branch_path", branch_path), check_int("source_index", source_index),
               to_json("metadata", metadata), now(), check_text("task_run_id", task_run_id, optional=True)]
        def write(con) -> None:
            self._require(con, "pipelines", "pipeline_id", pipeline_id)
            missing = self._unknown_artifacts(con, referenced)
            if missing and self._settled_after_miss(con):
                missing = self._unknown_artifacts(con, missing)
            if missing:
                raise NotFoundError("artifact", ", ".join(missing), self.path)
            self._buffer(("insert", "chains", None, row),
                         *(("insert", "chain_artifacts", None, [chain_id, a]) for a in sorted(referenced)))
            self._remember("chains", chain_id, "model_class", model_class)

        self._db.buffered(write)
        return chain_id

    def _unknown_artifacts(self, con, ids) -> list[str]:
        remembered = self._db.rows
        unchecked = sorted(a for a in ids if ("artifacts", a, "artifact_id") not in remembered)
        if not unchecked:
            return []
        known = self._stored_artifacts(con, unchecked)
        for artifact_id in known:
            self._remember("artifacts", artifact_id, "artifact_id", artifact_id)
        return sorted(set(unchecked) - known)

    @staticmethod
    def _stored_artifacts(con, ids: list[str]) -> set[str]:
        """Which of `ids` have a row in ``artifacts``."""
        return {r[0] for r in con.execute("SELECT artifact_id FROM artifacts WHERE list_contains(?, artifact_id)",
                                          [ids]).fetchall()}

    def get_chain(self, chain_id: str) -> dict:
        check_id("chain", chain_id)
        with self._db.reading() as con:
            row = self._one_dict(con, "SELECT * FROM chains WHERE chain_id = ?", [chain_id], "chain", chain_id)
        for field in _CHAIN_JSON:
            row[field] = from_json(row[field])
        if row["wavelengths"] is not None:
            row["wavelengths"] = np.asarray(row["wavelengths"], dtype=float)
        return row

    def get_chains_for_pipeline(self, pipeline_id: str) -> pl.DataFrame:
        return self._frame("SELECT * FROM chains WHERE pipeline_id = ? ORDER BY created_at, chain_id",
                           [check_id("pipeline", pipeline_id)])

    def _cached_chain(self, chain_id: str) -> dict:
        # Chains never change once saved; a chain deleted here is dropped from the cache.
        if chain_id not in self._chain_cache:
            chain = self._chain_cache[chain_id] = self.get_chain(chain_id)
            warn_on_version_mismatch(chain)  # once per chain and store, as it is first replayed
            while len(self._chain_cache) > 64:
                self._chain_cache.popitem(last=False)
        return self._chain_cache[chain_id]

    def _forget_chains(self, chain_ids) -> None:
        for chain_id in chain_ids:
            self._chain_cache.pop(chain_id, None)
