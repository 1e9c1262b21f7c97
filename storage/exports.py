"""On-demand exports: chain bundles, pipeline configs, run reports, prediction tables.

Every export is written atomically (a temporary file beside it, fsynced, renamed), and
into ``exports/`` when no path is given.
"""

from __future__ import annotations

import json
import platform
import zipfile
from importlib import metadata
from pathlib import Path

import polars as pl
import yaml

from . import arrays
from .atomic import atomic_path, write_bytes
from .base import StoreBase, check_id, now

BUNDLE_FORMAT = "nirsflow-bundle"
BUNDLE_VERSION = 1


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    return {"python": platform.python_version(), "numpy": _version("numpy"),
            "scikit-learn": _version("scikit-learn"), "joblib": _version("joblib"),
            "nirsflow": _version("nirsflow")}


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


class ExportsMixin(StoreBase):
    def _export_path(self, path, default_name: str) -> Path:
        return Path(path) if path is not None else self.path / "exports" / default_name

    def export_chain(self, chain_id: str, path: str | Path | None = None) -> Path:
        """A self-contained ``.n4a`` ZIP: a manifest (format version, library versions,
        the chain, a map of every artifact to its member name and SHA-256) and the
        artifacts, each verified against its hash as it is copied in."""
        chain = self.get_chain(check_id("chain", chain_id))
        path = self._export_path(path, f"{chain_id}.n4a")
        with self._db.reading() as con:
            rows = con.execute("SELECT a.artifact_id, a.format, a.operator_class, a.artifact_type "
                               "FROM artifacts a JOIN chain_artifacts ca USING (artifact_id) "
                               "WHERE ca.chain_id = ? ORDER BY a.artifact_id", [chain_id]).fetchall()
        members = {a: {"member": f"artifacts/{a}.{fmt}", "sha256": a, "format": fmt,
                       "operator_class": op, "artifact_type": kind} for a, fmt, op, kind in rows}
        manifest = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION,
                    "created_at": now().isoformat() + "Z", "versions": library_versions(),
                    "chain": _plain(chain), "artifacts": members}
        with atomic_path(path) as temp:
            with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
                bundle.writestr("manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
                for artifact_id, entry in members.items():
                    bundle.writestr(entry["member"], self.files.read_verified(artifact_id, entry["format"]))
        return path

    def export_pipeline_config(self, pipeline_id: str, path: str | Path | None = None) -> Path:
        pipeline = self.get_pipeline(check_id("pipeline", pipeline_id))
        path = self._export_path(path, f"{pipeline_id}.json")
        document = {"name": pipeline["name"], "dataset_name": pipeline["dataset_name"],
                    "pipeline": pipeline["expanded_config"],
                    "generator_choices": pipeline["generator_choices"]}
        return write_bytes(path, json.dumps(_plain(document), indent=2).encode())

    def export_run(self, run_id: str, path: str | Path | None = None) -> Path:
        """YAML: the run, its pipelines with their chains and scores."""
        run = self.get_run(check_id("run", run_id))
        path = self._export_path(path, f"{run_id}.yaml")
        pipelines = self.list_pipelines(run_id=run_id).sort("created_at").to_dicts()
        chains = self._frame("SELECT c.chain_id, c.pipeline_id, c.model_class, c.preprocessings, "
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
        frame = self.query_predictions(**filters)
        path = self._export_path(path, "predictions.parquet")
        if include_arrays:
            frame = frame.with_columns(self._array_columns(frame["prediction_id"].to_list()))
        with atomic_path(path) as temp:
            frame.write_parquet(temp)
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
