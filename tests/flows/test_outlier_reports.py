"""The plain parts of the outlier reports (tasks/outliers.py, tasks/scoring.Thinned): drift
per day from result files, thresholds, and the picture's sample, without Prefect."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from tasks.outliers import drift, over_threshold, threshold_for
from tasks.scoring import Thinned


def _result(path, chain, when, flags):
    frame = pl.DataFrame({"sample_id": [str(i) for i in range(len(flags))], "prediction": [1.0] * len(flags),
                          "chain_id": [chain] * len(flags), "scored_at": [when] * len(flags)})
    if flags is not None and any(f is not None for f in flags):
        frame = frame.with_columns(flag=pl.Series(flags, dtype=pl.String))
    frame.write_parquet(path)


def test_drift_counts_per_chain_and_day_and_leaves_out_unchecked_and_old_rows(tmp_path):
    folder = tmp_path / "outbox" / "tablet"
    folder.mkdir(parents=True)
    now = datetime(2026, 12, 7, 12, tzinfo=timezone.utc)
    _result(folder / "a.parquet", "c1", now - timedelta(days=1), ["ok", "t2", "q", "ok"])
    _result(folder / "b.parquet", "c1", now, ["both", "ok"])
    _result(folder / "c.parquet", "c2", now, ["y_range", "ok", "ok", "ok"])
    _result(folder / "d.parquet", "c2", now, [None, None])             # a chain without checks: null flags
    _result(folder / "e.parquet", "c3", now, [None])                   # a result written before the checks
    _result(folder / "f.parquet", "c1", now - timedelta(days=40), ["t2"])  # older than the window
    rows = drift(tmp_path, "tablet", days=28, now=now).to_dicts()
    got = {(r["chain_id"], str(r["day"])): (r["spectra"], r["flagged"], r["share"], r["t2"], r["q"], r["both"],
                                            r["y_range"]) for r in rows}
    assert got == {("c1", "2026-12-06"): (4, 2, 0.5, 1, 1, 0, 0), ("c1", "2026-12-07"): (2, 1, 0.5, 0, 0, 1, 0),
                   ("c2", "2026-12-07"): (4, 1, 0.25, 0, 0, 0, 1)}
    assert drift(tmp_path, "wheat").is_empty()


def test_thresholds_per_dataset_and_refused_when_not_a_share():
    scored = [{"file": "tablet/a.csv", "chain_id": "c", "n_spectra": 10, "n_flagged": 4, "flags": {}},
              {"file": "wheat/b.csv", "chain_id": "c", "n_spectra": 10, "n_flagged": 4, "flags": {}},
              {"file": "wheat/c.csv", "chain_id": "c", "n_spectra": 10, "n_flagged": 9}]  # no checks: no alert
    assert [a["file"] for a in over_threshold(scored, {"wheat": 0.5})] == ["tablet/a.csv"]
    assert [a["file"] for a in over_threshold(scored, {"tablet": 0.4})] == ["wheat/b.csv"]
    for bad in (1.5, -0.1, "30%", True):
        with pytest.raises(ValueError, match="tablet.*share between 0 and 1"):
            threshold_for("tablet", {"tablet": bad})


def test_the_pictures_sample_is_bounded_and_the_same_in_any_chunking():
    rng = np.random.default_rng(0)
    t2, q = rng.random(10_000), rng.random(10_000)
    flags = np.array(["ok"] * 10_000, dtype=object)
    samples = []
    for size in (10_000, 500, 7):
        thin = Thinned(limit=1000)
        for i in range(0, 10_000, size):
            thin.add(t2[i:i + size], q[i:i + size], flags[i:i + size])
        samples.append(thin.as_dict())
    assert samples[0] == samples[1] == samples[2]
    assert 500 <= len(samples[0]["t2_ratio"]) <= 1000 and samples[0]["t2_ratio"][1] == t2[16]
