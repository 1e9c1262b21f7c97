"""On-demand exports: chain bundles, pipeline configs, run reports, prediction tables.

Every export is written atomically (a temporary file beside it, fsynced, renamed), and
into ``exports/`` when no path is given.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import yaml

from . import arrays
from . import artifacts as art
from . import bundles
from .atomic import atomic_path, write_bytes
from .base import check_id, frame, now
from .bundles import BUNDLE_FORMAT, BUNDLE_VERSION  # noqa: F401 (public names)
from .chains import Chains
from .operations import Insert
from .connection import Connector
from .predictions import Predictions
from .records import Records
from .versions import FITTED_VERSIONS, library_versions, recorded_versions


def _plain(value):
    """JSON/YAML-safe copy of a row (timestamps as ISO strings, arrays as lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


#: the prediction fields a bundle carries for each of its chain's combined scores
_SCORE_FIELDS = ("dataset_name", "model_name", "model_class", "fold_id", "partition", "val_score", "test_score",
                 "train_score", "metric", "task_type", "n_samples", "n_features", "scores", "preprocessings")


def _score(value):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


class Exports:
    """Built with the parts it reads and writes through: records, predictions, chains."""

    def __init__(self, db: Connector, files: art.ArtifactFiles, records: Records, predictions: Predictions,
                 chains: Chains, path: Path) -> None:
        self._db, self.files, self.path = db, files, path
        self._records, self._predictions, self._chains = records, predictions, chains

    def _export_path(self, path, default_name: str) -> Path:
        return Path(path) if path is not None else self.path / "exports" / default_name

    def export_chain(self, chain_id: str, path: str | Path | None = None) -> Path:
        """A signed, self-contained ``.n4a`` ZIP (see ``storage.bundles`` for the format):
        a manifest (format version, library versions, the chain, where it came from, every
        artifact's member name and SHA-256), its HMAC-SHA-256 signature, and the artifacts,
        each verified against its hash as it is copied in. Signed with
        ``NIRSFLOW_BUNDLE_KEY`` when set, else with this workspace's
        ``.nirsflow/bundle.key`` (created on the first export)."""
        chain = self._chains.get_chain(check_id("chain", chain_id))
        path = self._export_path(path, f"{chain_id}.n4a")
        with self._db.reading() as con:
            rows = con.execute("SELECT a.artifact_id, a.format, a.operator_class, a.artifact_type, a.size_bytes "
                               "FROM artifacts a JOIN chain_artifacts ca USING (artifact_id) "
                               "WHERE ca.chain_id = ? ORDER BY a.artifact_id", [chain_id]).fetchall()
        members = {a: {"member": bundles.member_name(a, fmt), "sha256": a, "format": fmt, "size_bytes": size,
                       "operator_class": op, "artifact_type": kind} for a, fmt, op, kind, size in rows}
        formats = {a: entry["format"] for a, entry in members.items()}
        manifest = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION,
                    "created_at": now().isoformat() + "Z", "versions": _fitted_versions(chain),
                    "exported_with": library_versions(),
                    "chain": _plain(chain), "source": self._bundle_source(chain), "artifacts": members}
        key = bundles.signing_key(self.path)  # before anything is written: a bad key leaves no file
        return bundles.write_bundle(path, manifest, lambda a: self.files.read_verified(a, formats[a]), key)

    def _bundle_source(self, chain: dict) -> dict:
        pipeline = self._records.get_pipeline(chain["pipeline_id"])
        run = self._records.get_run(pipeline["run_id"])
        # The chain's combined scores (fold "avg", a refit's), without their arrays: what
        # `top` and `show` rank and print, so an imported chain is ranked as it was here.
        # Per-fold rows and the reference values stay home.
        with self._db.reading() as con:
            scores = con.execute(
                f"SELECT {', '.join(_SCORE_FIELDS)} FROM predictions WHERE chain_id = ? AND fold_id NOT LIKE 'fold%' "
                "ORDER BY fold_id, partition", [chain["chain_id"]]).fetchall()
        return _plain({
            "chain_id": chain["chain_id"],
            "run": {"run_id": run["run_id"], "name": run["name"]},
            "pipeline": {field: pipeline.get(field) for field in (
                "pipeline_id", "name", "dataset_name", "dataset_hash", "expanded_config",
                "generator_choices", "best_val", "best_test", "metric")},
            "scores": [dict(zip(_SCORE_FIELDS, row)) for row in scores],
        })

    def _import_scores(self, source: dict, pipeline_id: str, chain_id: str) -> None:
        """The bundle's combined scores (see ``_bundle_source``) as this chain's predictions,
        without arrays; a bundle written before they were carried has none."""
        for row in source.get("scores") or []:
            if not isinstance(row, dict) or not isinstance(row.get("fold_id"), str):
                continue
            scores = row.get("scores")
            self._predictions.save_prediction(
                pipeline_id, chain_id, dataset_name=row.get("dataset_name"), model_name=row.get("model_name"),
                model_class=row.get("model_class"), fold_id=row["fold_id"], partition=row.get("partition") or "val",
                val_score=_score(row.get("val_score")), test_score=_score(row.get("test_score")),
                train_score=_score(row.get("train_score")), metric=row.get("metric") or "rmse",
                task_type=row.get("task_type") or "regression", n_samples=row.get("n_samples"),
                n_features=row.get("n_features"), scores=json.loads(scores) if isinstance(scores, str) else scores,
                preprocessings=row.get("preprocessings") or "")

    def import_bundle(self, path: str | Path, *, trusted: bool = False, strict: bool = False) -> str:
        """Bring a bundle's chain into this workspace and return its new chain id.

        The bundle is checked whole first (``storage.bundles.read_bundle``: member names,
        signature against ``NIRSFLOW_BUNDLE_KEY`` or this workspace's key, hashes,
        scikit-learn version); nothing is unpickled. Its artifacts are saved under their
        own hashes (deduplicated against what is here), and the chain lands in a new
        completed run and pipeline whose config and metadata record where it came from
        (with the scores its pipeline had), all in one transaction. The same bundle
        imported again adds nothing and returns the chain it brought the first time.
        Bundles written by nirs4all 1.4 are read too (``storage.nirs4all_bundles``;
        unsigned, so only with ``trusted=True``)."""
        path = Path(path)
        verified = bundles.read_bundle(path, keys=bundles.keys_at_hand(self.path), trusted=trusted, strict=strict)
        manifest, chain = verified.manifest, verified.manifest["chain"]
        source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
        pipeline = source.get("pipeline") if isinstance(source.get("pipeline"), dict) else {}
        origin = {"bundle": str(path.absolute()), "bundle_sha256": art.file_sha256(path),
                  "manifest_sha256": verified.manifest_sha256, "signature": verified.signature,
                  "format_version": manifest["format_version"], "created_at": manifest.get("created_at"),
                  "versions": manifest.get("versions"), "source_chain_id": chain.get("chain_id"),
                  "source": source}
        dataset = pipeline.get("dataset_name") if isinstance(pipeline.get("dataset_name"), str) else ""
        name = pipeline.get("name") if isinstance(pipeline.get("name"), str) else "imported"
        records, chains = self._records, self._chains
        with self._db.batch() as con:
            con.catch_up()
            known = con.execute("SELECT local_id, local_id IN (SELECT chain_id FROM chains) FROM imported_ids "
                                "WHERE source_kind = 'bundle' AND source_id = ?", [verified.manifest_sha256]).fetchone()
            if known is not None and known[1]:
                return known[0]  # the same bundle again: its chain is here already
            if known is not None:  # imported once, since deleted: imported anew
                con.execute("DELETE FROM imported_ids WHERE source_kind = 'bundle' AND source_id = ?",
                            [verified.manifest_sha256])
            run_id = records.begin_run(f"import {path.name}", config={"imported_bundle": origin},
                                    datasets=[{"name": dataset}] if dataset else [], tags=["imported"])
            pipeline_id = records.begin_pipeline(
                run_id, name, pipeline.get("expanded_config"),
                pipeline.get("generator_choices") if isinstance(pipeline.get("generator_choices"), list) else None,
                dataset, pipeline.get("dataset_hash") if isinstance(pipeline.get("dataset_hash"), str) else None)
            for artifact_id, entry in sorted(manifest["artifacts"].items()):
                self._import_artifact(artifact_id, entry, verified.data[artifact_id])
            metadata = dict(chain.get("metadata") or {}) if isinstance(chain.get("metadata"), dict) else {}
            if recorded_versions(chain) is None and isinstance(manifest.get("versions"), dict):
                metadata[FITTED_VERSIONS] = manifest["versions"]  # a bundle of a chain saved before they were recorded
            metadata["imported_from"] = {"bundle": path.name, "manifest_sha256": verified.manifest_sha256,
                                         "source_chain_id": chain.get("chain_id")}
            chain_id = chains.save_chain(
                pipeline_id, chain["steps"], chain["model_step_idx"], chain.get("model_class") or "unknown",
                chain.get("preprocessings") or "", chain["fold_strategy"], chain.get("fold_artifacts") or {},
                chain.get("shared_artifacts") or {}, chain.get("branch_path"), chain.get("source_index"),
                fold_weights=chain.get("fold_weights"), task_type=chain.get("task_type"),
                classes=chain.get("classes"), wavelengths=chain.get("wavelengths"),
                n_features=chain.get("n_features"), metadata=metadata)
            self._import_scores(source, pipeline_id, chain_id)
            records.complete_pipeline(pipeline_id, best_val=_score(pipeline.get("best_val")),
                                   best_test=_score(pipeline.get("best_test")),
                                   metric=pipeline.get("metric") if isinstance(pipeline.get("metric"), str) else None)
            records.complete_run(run_id, summary={"imported_chain_id": chain_id,
                                               "source_chain_id": chain.get("chain_id")})
            con.buffer(Insert("imported_ids", None, ["bundle", verified.manifest_sha256, chain_id,
                                                     str(path.absolute()), now()]))
        return chain_id

    def _import_artifact(self, artifact_id: str, entry: dict, data: bytes) -> None:
        operator = entry.get("operator_class") if isinstance(entry.get("operator_class"), str) else None
        kind = entry.get("artifact_type") if isinstance(entry.get("artifact_type"), str) else "model"
        saved = self._chains.save_artifact_bytes(data, entry["format"], operator, kind)
        if saved != artifact_id:  # verified before; a mismatch here is a bug, not bad input
            raise AssertionError(f"imported bytes hash to {saved}, expected {artifact_id}")

    def export_pipeline_config(self, pipeline_id: str, path: str | Path | None = None) -> Path:
        pipeline = self._records.get_pipeline(check_id("pipeline", pipeline_id))
        path = self._export_path(path, f"{pipeline_id}.json")
        document = {"name": pipeline["name"], "dataset_name": pipeline["dataset_name"],
                    "pipeline": pipeline["expanded_config"],
                    "generator_choices": pipeline["generator_choices"]}
        return write_bytes(path, json.dumps(_plain(document), indent=2).encode())

    def export_run(self, run_id: str, path: str | Path | None = None) -> Path:
        """YAML: the run, its pipelines with their chains and scores."""
        run = self._records.get_run(check_id("run", run_id))
        path = self._export_path(path, f"{run_id}.yaml")
        pipelines = self._records.list_pipelines(run_id=run_id).sort("created_at").to_dicts()
        chains = frame(self._db, "SELECT c.chain_id, c.pipeline_id, c.model_class, c.preprocessings, "
                             "c.fold_strategy FROM chains c JOIN pipelines p USING (pipeline_id) "
                             "WHERE p.run_id = ? ORDER BY c.created_at", [run_id]).to_dicts()
        for pipeline in pipelines:
            for field in ("expanded_config", "generator_choices"):
                pipeline[field] = json.loads(pipeline[field]) if pipeline[field] else None
            pipeline["chains"] = [c for c in chains if c["pipeline_id"] == pipeline["pipeline_id"]]
        document = {"run": _plain(run), "pipelines": _plain(pipelines)}
        return write_bytes(path, yaml.safe_dump(document, sort_keys=False, allow_unicode=True).encode())

    def export_predictions_parquet(self, path: str | Path | None = None, *, include_arrays: bool = False,
                                   **filters) -> Path:
        """The predictions matching ``filters`` (as ``query_predictions``) as Parquet;
        ``include_arrays`` adds y_true, y_pred, y_proba, sample_indices, weights as lists."""
        found = self._predictions.query_predictions(**filters)
        path = self._export_path(path, "predictions.parquet")
        if include_arrays:
            found = found.with_columns(self._array_columns(found["prediction_id"].to_list()))
        with atomic_path(path) as temp:
            found.write_parquet(temp)
        return path

    def _array_columns(self, ids: list[str]) -> list[pl.Series]:
        with self._db.reading() as con:
            rows = dict((r[0], r[1:]) for r in con.execute(
                f"SELECT prediction_id, {', '.join(arrays.ARRAY_FIELDS)} FROM prediction_arrays "
                "WHERE list_contains(?, prediction_id)", [ids]).fetchall())
        columns = []
        for j, name in enumerate(arrays.ARRAY_FIELDS):
            values = [None if rows.get(i, (None,) * 5)[j] is None else arrays.decode(rows[i][j]).tolist()
                      for i in ids]
            try:
                columns.append(pl.Series(name, values, strict=True))
            except (TypeError, pl.exceptions.PolarsError):
                # Mixed label types across rows: keep every value, as JSON text.
                columns.append(pl.Series(name, [None if v is None else json.dumps(v) for v in values]))
        return columns


def _fitted_versions(chain: dict) -> dict:
    """The versions that fitted the chain, as recorded when it was saved; for a chain
    saved before nirsflow recorded them, this environment's (the best guess left)."""
    recorded = recorded_versions(chain)
    return recorded if recorded is not None else library_versions()
