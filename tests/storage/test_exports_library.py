"""Exports open in the tools people use; templates keep their names as given."""

from __future__ import annotations

import json
import zipfile

import duckdb
import numpy as np
import polars as pl
import pytest
import yaml

from storage import InvalidInputError, NotFoundError, PipelineLibrary
from tests.storage.conftest import make_run, save_scaler_pls_chain


@pytest.fixture
def populated(store, fitted_folds, tablet):
    run_id, pipeline_id = make_run(store, "tablet")
    chain_id = save_scaler_pls_chain(store, pipeline_id, fitted_folds, tablet[0].shape[1])
    y = tablet[1]
    store.save_prediction(pipeline_id, chain_id, fold_id="avg", partition="val", val_score=0.5,
                          y_true=y, y_pred=y + 0.1, sample_indices=np.arange(len(y)))
    store.save_prediction(pipeline_id, chain_id, fold_id="avg", partition="test", test_score=0.6)
    store.complete_pipeline(pipeline_id, best_val=0.5, best_test=0.6, metric="rmse")
    store.complete_run(run_id, summary={"pipelines": 1})
    return run_id, pipeline_id, chain_id


def test_exports_default_into_exports_and_open_everywhere(store, populated):
    run_id, pipeline_id, chain_id = populated
    parquet = store.export_predictions_parquet(include_arrays=True, dataset_name="tablet")
    assert parquet == store.path / "exports" / "predictions.parquet"
    frame = pl.read_parquet(parquet)
    assert frame.height == 2
    val = frame.filter(pl.col("partition") == "val")
    assert len(val["y_true"][0]) == 400 and val["sample_indices"][0][:3].to_list() == [0, 1, 2]
    pd = pytest.importorskip("pandas")
    assert len(pd.read_parquet(parquet)) == 2
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{parquet}')").fetchall()[0][0] == 2

    run = yaml.safe_load(store.export_run(run_id).read_text())
    assert run["run"]["status"] == "completed"
    assert run["pipelines"][0]["chains"][0]["chain_id"] == chain_id
    assert run["pipelines"][0]["best_val"] == 0.5

    config = json.loads(store.export_pipeline_config(pipeline_id).read_text())
    assert config["pipeline"] == [{"class": "PLSRegression"}]


def test_chain_bundle_holds_a_manifest_and_verified_artifacts(store, populated):
    *_, chain_id = populated
    path = store.export_chain(chain_id)
    with zipfile.ZipFile(path) as bundle:
        manifest = json.loads(bundle.read("manifest.json"))
        assert manifest["format_version"] == 1 and manifest["chain"]["chain_id"] == chain_id
        assert set(manifest["versions"]) >= {"python", "numpy", "scikit-learn", "joblib", "nirsflow"}
        assert len(manifest["artifacts"]) == 6
        for artifact_id, entry in manifest["artifacts"].items():
            import hashlib
            assert hashlib.sha256(bundle.read(entry["member"])).hexdigest() == artifact_id == entry["sha256"]


def test_export_is_atomic_when_an_artifact_is_corrupt(store, populated):
    *_, chain_id = populated
    victim = store.list_artifacts()["artifact_id"][0]
    store.get_artifact_path(victim).write_bytes(b"garbage")
    target = store.path / "exports" / "model.n4a"
    with pytest.raises(Exception, match="corrupt"):
        store.export_chain(chain_id, target)
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir()] == []  # no half-written file either


def test_templates_keep_names_as_given_and_refuse_silent_overwrites(tmp_path):
    library = PipelineLibrary(tmp_path)
    library.save_template([{"model": "PLSRegression"}], "Baseline", category="regression")
    library.save_template([{"model": "Ridge"}], "baseline", category="regression")
    assert library.load_template("Baseline") == [{"model": "PLSRegression"}]
    assert library.load_template("baseline") == [{"model": "Ridge"}]
    assert [t["name"] for t in library.list_templates()] == ["Baseline", "baseline"]
    with pytest.raises(InvalidInputError, match="already exists.*overwrite=True"):
        library.save_template([{"model": "SVR"}], "Baseline")
    library.save_template([{"model": "SVR"}], "Baseline", overwrite=True, tags=["v2"])
    assert library.load_template("Baseline") == [{"model": "SVR"}]
    assert library.list_templates(category="general")[0]["tags"] == ["v2"]
    assert all(p.parent == tmp_path / "library" / "templates" for p in map(lambda t: __import__("pathlib").Path(t["path"]), library.list_templates()))
    with pytest.raises(NotFoundError, match="unknown template id 'nope'"):
        library.load_template("nope")
    with pytest.raises(InvalidInputError, match="not JSON-serialisable"):
        library.save_template([object()], "python-objects")
    with pytest.raises(InvalidInputError, match="non-empty string"):
        library.save_template([], "  ")
