"""The inbox's duplicate rule as a lab meets it (one file scored for several properties,
one dataset folder each; a file dropped again after a promotion), and the states a
scoring run ends in, as the Prefect runs list shows them."""

from __future__ import annotations

from importlib import metadata
from uuid import UUID

import polars as pl
import pytest

from tests.conftest import copy_fitted_by
from tests.flows.scoring_fixtures import Inbox, inbox, scoring_chains  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(300)
SKLEARN = metadata.version("scikit-learn")


def _another_tablet_chain(inbox: Inbox) -> str:
    """A second chain of the same fitted steps (another id), as a retraining would give."""
    with inbox.store() as store:
        return copy_fitted_by(store, inbox.chains.tablet_chain, SKLEARN)


def test_the_same_file_is_scored_for_each_dataset_it_is_dropped_for(inbox):
    moisture_chain = _another_tablet_chain(inbox)
    with inbox.store() as store:  # a second property of the same spectra, its own chain
        store.set_alias("moisture", "production", moisture_chain, changed_by="tests", force=True)
    data = inbox.drop_csv("tablet/batch.csv", rows=slice(0, 10)).read_bytes()
    inbox.drop_bytes("moisture/batch.csv", data)
    summary = inbox.run()
    assert summary["counts"]["scored"] == 2 and summary["counts"]["duplicates"] == 0, summary
    by_file = {s["file"]: s for s in summary["scored"]}
    assert by_file["tablet/batch.csv"]["chain_id"] == inbox.chains.tablet_chain
    assert by_file["moisture/batch.csv"]["chain_id"] == moisture_chain
    for rel, chain in (("tablet/batch.csv", inbox.chains.tablet_chain), ("moisture/batch.csv", moisture_chain)):
        result = pl.read_parquet(by_file[rel]["result"])
        assert set(result["chain_id"]) == {chain} and result.height == 10
    records = inbox.scored_records()
    assert sorted(records["dataset_name"]) == ["moisture", "tablet"]

    inbox.drop_bytes("moisture/batch-again.csv", data)  # the same request again: a duplicate
    again = inbox.run()
    assert again["counts"]["duplicates"] == 1 and again["duplicates"][0]["duplicate_of"] == "moisture/batch.csv"


def test_a_file_dropped_again_after_a_promotion_is_scored_by_the_new_chain(inbox):
    data = inbox.drop_csv("tablet/batch.csv", rows=slice(0, 10)).read_bytes()
    first = inbox.run()
    new_chain = _another_tablet_chain(inbox)
    with inbox.store() as store:
        store.set_alias("tablet", "production", new_chain, changed_by="tests")
    inbox.drop_bytes("tablet/batch.csv", data)
    second = inbox.run()
    assert second["counts"]["scored"] == 1 and second["counts"]["duplicates"] == 0, second
    assert second["scored"][0]["chain_id"] == new_chain
    old_result, new_result = first["scored"][0]["result"], second["scored"][0]["result"]
    assert old_result != new_result and new_chain[:8] in new_result  # the first result is kept
    assert len(inbox.results()) == 2


def test_a_file_of_a_dataset_without_a_chain_waits_even_when_its_bytes_were_scored_elsewhere(inbox):
    data = inbox.drop_csv("tablet/batch.csv", rows=slice(0, 10)).read_bytes()
    inbox.run()
    waiting = inbox.drop_bytes("wheat/batch.csv", data)
    state = inbox.run(return_state=True)
    assert waiting.exists() and not (inbox.root / "processed" / "wheat").exists()
    assert state.is_failed() and "nothing scored" in state.message and "no 'production' alias for wheat" in state.message
    summary = state.result(raise_on_failure=False).summary
    assert summary["counts"]["waiting"] == 1 and summary["counts"]["duplicates"] == 0


def test_rejections_show_in_the_runs_list_and_nothing_scored_is_not_completed(inbox, prefect_client):
    inbox.drop_csv("tablet/good.csv", rows=slice(0, 10))
    inbox.drop_text("tablet/bad.csv", "sample_id,600,602\na,1.0,oops\n")
    state = inbox.run(return_state=True)
    assert state.is_completed() and state.name == "Completed with rejections"
    assert "scored 1 files" in state.message and "rejected 1: tablet/bad.csv" in state.message
    flow_run = prefect_client.read_flow_run(UUID(state.result()["flow_run_id"]))
    assert flow_run.state.name == "Completed with rejections" and "rejected" in flow_run.tags
    assert "tablet/bad.csv" in flow_run.state.message
    # named and tagged by dataset, as training runs are, the later "rejected" tag kept beside them
    assert flow_run.name == "score · tablet (2 files)"
    assert {"nirsflow", "score", "dataset:tablet", "rejected"} <= set(flow_run.tags)

    inbox.drop_text("tablet/worse.csv", "sample_id,600\nb,not-a-number\n")
    state = inbox.run(return_state=True)
    assert state.is_failed() and state.message.startswith("nothing scored: scored 0 files")
    assert "rejected 1: tablet/worse.csv" in state.message

    state = inbox.run(return_state=True)  # an empty inbox is not a failure
    assert state.is_completed() and state.name == "Completed"
