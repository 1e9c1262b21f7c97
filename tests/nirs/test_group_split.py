"""Group-aware cross-validation: ``{"split": ..., "group": "<metadata column>"}`` keeps the
samples of one group (replicate scans of one tablet, one batch) in one fold.

The data: the 400 calibration tablets of the Tablet set measured on both of its
instruments, 800 real spectra, grouped by tablet. Without groups, a tablet's scan from
one instrument trains the model that is validated on its scan from the other."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from nirs.config import ConfigError, expand, load_config
from nirs.dataset import SpectraDataset
from nirs.datasets import load_tablet
from nirs.training import fit_pipeline, plan_folds

GROUPED_SPLIT = {"split": {"class": "GroupKFold", "params": {"n_splits": 5}}, "group": "tablet"}


@pytest.fixture(scope="module")
def both_instruments() -> SpectraDataset:
    one, _ = load_tablet(1)
    two, _ = load_tablet(2)
    n = one.n_samples
    return SpectraDataset(
        X=np.vstack([one.X, two.X]), wavelengths=one.wavelengths,
        sample_ids=np.array([f"{i}/instrument-1" for i in one.sample_ids] + [f"{i}/instrument-2" for i in two.sample_ids]),
        y=np.concatenate([one.y, two.y]),
        metadata=pl.DataFrame({"tablet": [str(i) for i in one.sample_ids] * 2, "instrument": [1] * n + [2] * n}),
        name="tablet-both")


def _pipeline(split):
    return expand(["SNV", split, {"model": {"class": "PLSRegression", "params": {"n_components": 8}}}])[0]


def test_no_tablet_has_scans_on_both_sides_of_a_fold(both_instruments):
    groups = both_instruments.metadata["tablet"].to_numpy()
    plans = plan_folds(both_instruments, _pipeline(GROUPED_SPLIT))
    assert len(plans) == 5
    assert sorted(np.concatenate([p.val_idx for p in plans]).tolist()) == list(range(both_instruments.n_samples))
    for plan in plans:
        assert not set(groups[plan.train_idx]) & set(groups[plan.val_idx]), plan.fold_id
    # the same splitter without groups mixes them: what the group column is there to prevent
    plain = plan_folds(both_instruments, _pipeline({"split": {"class": "KFold", "params": {"n_splits": 5,
                                                                                            "shuffle": True,
                                                                                            "random_state": 0}}}))
    assert any(set(groups[p.train_idx]) & set(groups[p.val_idx]) for p in plain)


def test_the_group_is_kept_in_the_config_the_trace_and_a_json_round_trip(both_instruments, tmp_path):
    pipeline = _pipeline(GROUPED_SPLIT)
    split_step = next(step for step in pipeline.config if isinstance(step, dict) and "split" in step)
    assert split_step["group"] == "tablet"
    path = tmp_path / "grouped.json"
    path.write_text(json.dumps({"pipeline": pipeline.config}))
    again = expand(load_config(path))[0]
    assert again.config == pipeline.config
    trace = fit_pipeline(both_instruments, again)
    assert trace.splitter["group"] == "tablet"
    assert trace.splitter["class"].endswith("GroupKFold")
    assert np.isfinite([r.scores["rmse"] for r in trace.predictions if r.partition == "val"]).all()


def test_a_group_splitter_without_a_group_says_how_to_give_one(both_instruments):
    with pytest.raises(ConfigError, match=r'GroupKFold cannot split .*"group": "<column>"'):
        plan_folds(both_instruments, _pipeline({"split": {"class": "GroupKFold", "params": {"n_splits": 5}}}))


def test_an_unknown_group_column_names_the_columns_there_are(both_instruments):
    split = {**GROUPED_SPLIT, "group": "batch"}
    with pytest.raises(ConfigError, match=r"'batch'.*'tablet-both'.*\['tablet', 'instrument'\]"):
        plan_folds(both_instruments, _pipeline(split))
    no_metadata, _ = load_tablet(1)
    with pytest.raises(ConfigError, match="has no metadata columns"):
        plan_folds(no_metadata, _pipeline(GROUPED_SPLIT))


def test_samples_without_a_group_are_named(both_instruments):
    tablets = both_instruments.metadata["tablet"].to_list()
    tablets[3] = None
    holed = SpectraDataset(X=both_instruments.X, wavelengths=both_instruments.wavelengths,
                           sample_ids=both_instruments.sample_ids, y=both_instruments.y,
                           metadata=both_instruments.metadata.with_columns(pl.Series("tablet", tablets)),
                           name="holed")
    with pytest.raises(ConfigError, match=r"empty for 1 samples \(first: .*0004/instrument-1\)"):
        plan_folds(holed, _pipeline(GROUPED_SPLIT))


@pytest.mark.parametrize("bad, message", [
    ({"split": "GroupKFold", "group": ""}, "names a metadata column"),
    ({"split": "GroupKFold", "group": 3}, "names a metadata column"),
    ({"model": "PLSRegression", "group": "tablet"}, "a split may have a 'group' beside it"),
])
def test_bad_group_configs_are_refused_before_fitting(bad, message):
    with pytest.raises(ConfigError, match=message):
        expand(["SNV", bad] + ([] if "model" in bad else [{"model": "PLSRegression"}]))
