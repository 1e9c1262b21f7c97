"""The outlier checks of scored spectra through the score_inbox flow (issue 20): the
outbox columns equal ``replay_chain(..., diagnostics=True)`` whatever the chunk size;
coffee dropped in the Tablet inbox and tablets of another instrument are flagged; a
file over its dataset's threshold raises a Prefect event and says so in the run's state;
drift per day is a table artifact and ``nirsflow drift``."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from tests.flows.scoring_fixtures import Inbox, inbox, scoring_chains  # noqa: F401 - fixtures
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(300)
CHECKS = ["t2", "q", "t2_ratio", "q_ratio", "flag"]


def test_outbox_checks_equal_replay_chain_in_any_chunking_and_coffee_is_flagged_entirely(inbox: Inbox):
    from nirs.datasets import load_tablet

    t = inbox.chains.tablet_test
    _, other = load_tablet(instrument=2)
    inbox.drop_csv("tablet/in-chunks.csv")
    inbox.drop_parquet("tablet/whole.parquet")
    inbox.drop_csv("tablet/instrument-2.csv", other.X, other.sample_ids, other.wavelengths)
    coffee = inbox.chains.coffee  # 1841 numbered columns: read as a grid 1-1841 nm, which covers the Tablet's
    inbox.drop_csv("tablet/coffee.csv", coffee.X, coffee.sample_ids)
    summary = inbox.run(chunk_rows=7, alert_thresholds={"tablet": 0.5})
    assert summary["counts"]["scored"] == 4, summary

    with inbox.store() as store:
        _, expected = store.replay_chain(inbox.chains.tablet_chain, t.X, diagnostics=True)
    frames = {p.name.split(".")[0]: pl.read_parquet(p) for p in inbox.results("tablet")}
    for name in ("in-chunks", "whole"):
        for column in CHECKS:
            assert frames[name][column].to_list() == np.asarray(expected[column]).tolist(), (name, column)
    share = {row["file"]: row["share"] for row in summary["flagged"]}
    assert share["tablet/in-chunks.csv"] < 0.25 and share["tablet/instrument-2.csv"] == 1.0
    # coffee is not refused for its grid (it covers 600-1792 nm), it is resampled, then flagged entirely
    coffee_scored = next(s for s in summary["scored"] if s["file"] == "tablet/coffee.csv")
    assert coffee_scored["resampled_from"].startswith("1841 wavelengths") and share["tablet/coffee.csv"] == 1.0
    assert set(frames["coffee"]["flag"]) == {"both"}
    # over the 50 % threshold: instrument 2 and coffee, not the instrument-1 tablets
    assert sorted(a["file"] for a in summary["alerts"]) == ["tablet/coffee.csv", "tablet/instrument-2.csv"]


def test_a_file_over_its_threshold_raises_an_event_and_says_so_in_the_state(inbox: Inbox, prefect_client):
    from prefect.events.filters import EventFilter, EventNameFilter

    from flows.score_inbox import score_inbox
    from tasks.outliers import ALERT_EVENT

    inbox.drop_csv("tablet/good.csv")
    wl = inbox.chains.tablet_test.wavelengths
    X = inbox.chains.tablet_test.X
    band = np.exp(-0.5 * ((wl - 1200.0) / 15.0) ** 2)  # a foreign absorption band SNV cannot remove
    inbox.drop_csv("tablet/dirty.csv", X + 0.05 * X.mean(axis=1, keepdims=True) * band,
                   inbox.chains.tablet_test.sample_ids, wl)
    state = score_inbox(workspace=str(inbox.workspace), inbox=str(inbox.inbox), settle_seconds=0.05,
                        return_state=True)
    assert state.is_completed() and "1 over the flagged-share threshold: tablet/dirty.csv: 212 of 212" in state.message
    summary = state.result()
    assert [a["file"] for a in summary["alerts"]] == ["tablet/dirty.csv"] and summary["alerts"][0]["threshold"] == 0.3

    def events():
        page = prefect_client.read_events(EventFilter(event=EventNameFilter(name=[ALERT_EVENT])), limit=50)
        return [e for e in page.events if e.payload.get("file") == "tablet/dirty.csv"
                and any(r.id == f"prefect.flow-run.{summary['flow_run_id']}" for r in e.related)]

    (event,) = wait_for(events, 30, "the alert event")
    assert event.resource.id == "nirsflow.dataset.tablet" and event.payload["flagged"] == 212
    flow_run = prefect_client.read_flow_run(summary["flow_run_id"])
    assert "flagged" in flow_run.tags


def test_drift_per_day_is_a_query_and_a_table_and_unchecked_rows_do_not_count(inbox: Inbox):
    from flows.cli import app
    from nirs.config import expand
    from nirs.datasets import load_tablet
    from nirs.training import fit_pipeline
    from storage.chain_builder import record_trace
    from tests.flows.scoring_fixtures import SNV_PLS_5FOLD

    inbox.drop_csv("tablet/day-1.csv")
    inbox.run(chunk_rows=100)
    # a chain trained before the checks were recorded: its results have null checks
    trace = fit_pipeline(load_tablet(instrument=1)[0], expand(SNV_PLS_5FOLD)[0])
    trace.diagnostics, trace.dataset_name = None, "tablet"
    with inbox.store() as store:
        bare = record_trace(store, store.begin_run("before the checks"), trace)["chain_id"]
        store.set_alias("tablet", "production", bare, changed_by="tests", reason="an old chain")
    inbox.drop_csv("tablet/day-1-old-chain.csv")
    summary = inbox.run(chunk_rows=100)
    assert summary["counts"]["scored"] == 1 and summary["flagged"] == [] and summary["alerts"] == []
    (old,) = [p for p in inbox.results("tablet") if p.name.startswith("day-1-old-chain")]
    df = pl.read_parquet(old)
    assert all(df[c].null_count() == len(df) for c in CHECKS)
    result = CliRunner().invoke(app, ["drift", "tablet", "--workspace", str(inbox.workspace), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == 1 and rows[0]["chain_id"] == inbox.chains.tablet_chain and rows[0]["spectra"] == 212
    assert rows[0]["flagged"] == rows[0]["t2"] + rows[0]["q"] + rows[0]["both"] + rows[0]["y_range"]
    assert 0 < rows[0]["share"] < 0.25
    assert (inbox.workspace / "exports" / "plots" / "drift" / "tablet.png").stat().st_size > 1000
