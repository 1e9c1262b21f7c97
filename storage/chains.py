"""Artifacts (content-addressed fitted objects), the chains that reference them, and their
replay.

Liveness is derived, never counted by hand: an artifact is alive while a row of
``chain_artifacts`` points at it, or while its last save is younger than the gc grace
period (so a save that a chain is about to reference is never collected). ``ref_count``
is reported as the number of referencing chains.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import polars as pl

from . import artifacts as art
from .base import first, check_id, check_int, check_text, frame, from_json, new_id, now, one_dict, to_json
from .connection import Connector
from .errors import ArtifactLoadError, InvalidInputError, NotFoundError, ReplayError
from .operations import Insert, SaveArtifact, stored_artifacts
from .replay import DIAGNOSTICS, ReplayableChain
from .versions import FITTED_VERSIONS, library_versions, unloadable_in_chain, warn_on_version_mismatch

_CHAIN_JSON = ("steps", "fold_artifacts", "shared_artifacts", "fold_weights", "classes",
               "branch_path", "metadata")
FOLD_STRATEGIES = ("per_fold", "refit")


def referenced_artifacts(steps: list, fold_artifacts: dict, shared_artifacts: dict,
                         metadata: dict | None = None) -> set[str]:
    """Every artifact id a chain points at, whatever the nesting the caller used (and the
    outlier checks' artifacts its metadata names)."""
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
    if isinstance(metadata, dict):
        walk(metadata.get(DIAGNOSTICS))
    for step in steps:
        walk(step.get("artifact_id"))
        walk(step.get("artifact_ids"))  # the spec's original lists each step's artifacts
    return found


class LoadedChains:
    """What replay keeps loaded: chains (they never change once saved) and fitted objects
    (keyed by hash: an id's content never changes). Shared by the parts that drop chains
    or artifacts (a failed pipeline, delete_run, gc), which forget them here."""

    def __init__(self, artifacts: int = 256, chains: int = 64) -> None:
        self.artifacts: OrderedDict[str, Any] = OrderedDict()
        self.chains: OrderedDict[str, dict] = OrderedDict()
        self.max_artifacts, self.max_chains = artifacts, chains

    def forget_chains(self, chain_ids) -> None:
        for chain_id in chain_ids:
            self.chains.pop(chain_id, None)

    def forget_artifacts(self, artifact_ids) -> None:
        for artifact_id in artifact_ids:
            self.artifacts.pop(artifact_id, None)


class Chains:
    def __init__(self, db: Connector, files: art.ArtifactFiles, loaded: LoadedChains, path: Path) -> None:
        self._db, self.files, self._loaded, self.path = db, files, loaded, path

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
        if self._db.in_batch():
            self._db.buffered(lambda con: self._place_artifacts(con, distinct, {}, format))
            return ids
        # Otherwise the slow part (writing and fsyncing the bytes) happens before the lock;
        # under it only the check, the rename and the row, so gc sees both file and row or
        # neither.
        staged = self.files.stage_many({a: v[0] for a, v in distinct.items()
                                        if not self.files.path(a, format).exists()}, format)
        try:
            self._db.buffered(lambda con: self._place_artifacts(con, distinct, staged, format))
        finally:
            for one in staged.values():
                one.temp.unlink(missing_ok=True)  # published ones are gone already
        return ids

    def _place_artifacts(self, con, distinct: dict[str, tuple[bytes, str | None, str]],
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
            con.buffer(SaveArtifact([artifact_id, art.relative_path(artifact_id, format), artifact_id, operator_class,
                                     artifact_type, format, len(data), stamp, stamp]))
            # a chain of this transaction may reference it without looking it up
            con.remember("artifacts", artifact_id, "artifact_id", artifact_id)

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
        cache = self._loaded.artifacts
        if artifact_id in cache:
            cache.move_to_end(artifact_id)
            return cache[artifact_id]
        obj = self.files.load(artifact_id, format or self._artifact_format(artifact_id))
        cache[artifact_id] = obj
        while len(cache) > self._loaded.max_artifacts:
            cache.popitem(last=False)
        return obj

    def get_artifact_path(self, artifact_id: str) -> Path:
        return self.files.path(artifact_id, self._artifact_format(artifact_id))

    def list_artifacts(self) -> pl.DataFrame:
        """Every artifact with ``ref_count`` = the number of chains that reference it."""
        return frame(
            self._db, "SELECT a.*, count(ca.chain_id)::INTEGER AS ref_count FROM artifacts a "
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
        referenced = referenced_artifacts(steps, fold_artifacts, shared_artifacts, metadata)
        chain_id = new_id()
        row = [chain_id, pipeline_id, to_json("steps", steps), model_step_idx, model_class,
               check_text("preprocessings", preprocessings), fold_strategy,
               to_json("fold_artifacts", fold_artifacts), to_json("shared_artifacts", shared_artifacts),
               to_json("fold_weights", fold_weights), check_text("task_type", task_type, optional=True),
               to_json("classes", classes), grid, check_int("n_features", n_features),
               to_json("branch_path", branch_path), check_int("source_index", source_index),
               to_json("metadata", metadata), now(), check_text("task_run_id", task_run_id, optional=True)]
        def write(con) -> None:
            con.require("pipelines", "pipeline_id", pipeline_id)
            missing = self._unknown_artifacts(con, referenced)
            if missing and con.may_lag():
                con.catch_up()
                missing = self._unknown_artifacts(con, missing)
            if missing:
                raise NotFoundError("artifact", ", ".join(missing), self.path)
            con.buffer(Insert("chains", None, row),
                       *(Insert("chain_artifacts", None, [chain_id, a]) for a in sorted(referenced)))
            con.remember("chains", chain_id, "model_class", model_class)

        self._db.buffered(write)
        return chain_id

    @staticmethod
    def _unknown_artifacts(con, ids) -> list[str]:
        unchecked = sorted(a for a in ids if not con.is_remembered("artifacts", a, "artifact_id"))
        if not unchecked:
            return []
        known = stored_artifacts(con, unchecked)
        for artifact_id in known:
            con.remember("artifacts", artifact_id, "artifact_id", artifact_id)
        return sorted(set(unchecked) - known)

    def get_chain(self, chain_id: str) -> dict:
        check_id("chain", chain_id)
        with self._db.reading() as con:
            row = one_dict(con, "SELECT * FROM chains WHERE chain_id = ?", [chain_id], "chain", chain_id, self.path)
        for field in _CHAIN_JSON:
            row[field] = from_json(row[field])
        if row["wavelengths"] is not None:
            row["wavelengths"] = np.asarray(row["wavelengths"], dtype=float)
        return row

    def get_chains_for_pipeline(self, pipeline_id: str) -> pl.DataFrame:
        return frame(self._db, "SELECT * FROM chains WHERE pipeline_id = ? ORDER BY created_at, chain_id",
                     [check_id("pipeline", pipeline_id)])

    # -- replay --------------------------------------------------------------------
    def replay_chain(self, chain_id: str, X, wavelengths=None, *, return_proba: bool = False,
                     diagnostics: bool = False):
        """Predict new spectra with a stored chain (the rule: ``nirs.replay``).

        Returns predictions; for a classifier with ``return_proba=True``, a
        ``(labels, probabilities)`` pair whose columns follow the chain's classes (for a
        chain saved without them, its models' ``classes_``). Spectra given with their grid
        are resampled onto a chain's training grid when they cover it, refused otherwise; a
        chain saved without a grid takes spectra as they are, of its width (``ReplayError``
        before any transform runs). With ``diagnostics=True``, the outlier checks of every
        spectrum come last: ``(predictions, [probabilities,] checks)``, checks a dict of
        arrays ``t2``, ``q``, ``t2_ratio``, ``q_ratio`` (to the 95 % limits), ``y_out`` and
        ``flag`` (``ok``, ``t2``, ``q``, ``both``, ``y_range``): the columns of a scored
        inbox file."""
        out = self._replayable(chain_id).replay(X, wavelengths, diagnostics=diagnostics)
        if return_proba and out[1] is None:
            raise ReplayError(f"chain {chain_id} is a regression chain: it has no probabilities")
        picked = (out[0], *((out[1],) if return_proba else ()), *out[2:])
        return picked[0] if len(picked) == 1 else picked

    def preprocess_chain(self, chain_id: str, X, wavelengths=None, *, fold: str | None = None,
                         spectral_only: bool = False):
        """``(X, grid)`` after the chain's preprocessing (one fold's), e.g. to plot it;
        ``spectral_only``: after its leading spectral steps only (SNV, SG, ..., not the
        scaler after them; ``spectral_steps_of_chain`` names them)."""
        return self._replayable(chain_id).preprocess(X, wavelengths, fold, spectral_only=spectral_only)

    def spectral_steps_of_chain(self, chain_id: str) -> list[str]:
        return self._replayable(chain_id).spectral_steps()

    def load_chain(self, chain_id: str) -> ReplayableChain:
        """A stored chain with every fitted artifact it references loaded (and hash-checked)
        now: it replays without the store, and pickles, so a Prefect task (in this process
        or another) can score with it while only the flow-run process opens the store."""
        chain = self.get_chain(check_id("chain", chain_id))
        load = self._loader(chain, cached=False, context="")
        objects = {a: load(a) for a in sorted(referenced_artifacts(chain["steps"], chain["fold_artifacts"],
                                                                   chain["shared_artifacts"], chain["metadata"]))}
        return ReplayableChain(chain, objects.__getitem__)

    def _replayable(self, chain_id: str) -> ReplayableChain:
        # Chains never change once saved; a chain deleted here is forgotten by LoadedChains.
        cache = self._loaded.chains
        if chain_id not in cache:
            chain = cache[chain_id] = self.get_chain(chain_id)
            warn_on_version_mismatch(chain)  # once per chain and store, as it is first replayed
            while len(cache) > self._loaded.max_chains:
                cache.popitem(last=False)
        chain = cache[chain_id]
        return ReplayableChain(chain, self._loader(chain, cached=True,
                                                   context=f"chain {chain_id} cannot be replayed: "))

    def _loader(self, chain: dict, *, cached: bool, context: str) -> Callable[[str], Any]:
        """artifact id -> the loaded object; an artifact that cannot be loaded here is
        reported (after `context`) with what fitted the chain."""
        formats = self._chain_formats(chain)

        def load(artifact_id: str):
            try:
                if cached:
                    return self._cached_artifact(artifact_id, formats.get(artifact_id))
                return self.files.load(artifact_id, formats.get(artifact_id) or self._artifact_format(artifact_id))
            except ArtifactLoadError as exc:
                said = unloadable_in_chain(exc, chain, context)
                raise said from exc.__cause__

        return load

    def _chain_formats(self, chain: dict) -> dict[str, str]:
        if "_formats" not in chain:
            with self._db.reading() as con:
                rows = con.execute("SELECT artifact_id, format FROM artifacts WHERE artifact_id IN "
                                   "(SELECT artifact_id FROM chain_artifacts WHERE chain_id = ?)",
                                   [chain["chain_id"]]).fetchall()
            chain["_formats"] = dict(rows)
        return chain["_formats"]
