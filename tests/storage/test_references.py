"""How ids are named (full, a unique 8-digit prefix, DATASET:ALIAS), the promotion rule,
check's view of young orphan files, and the mode of the files the store writes."""

from __future__ import annotations

import os
import stat
import time

import pytest

from storage import InvalidInputError, NotFoundError
from storage.atomic import write_bytes
from storage.references import AmbiguousIdError, resolve_id, short_id
from tests.storage.conftest import make_run, save_scaler_pls_chain


@pytest.fixture
def chains(store, fitted_folds, tablet):
    _, pipeline_id = make_run(store, dataset="tablet")
    return [save_scaler_pls_chain(store, pipeline_id, fitted_folds, tablet[0].shape[1]) for _ in range(2)]


def test_a_chain_is_named_by_its_id_a_unique_prefix_or_its_alias(store, chains):
    first, second = chains
    assert store.resolve_chain(first) == first
    assert store.resolve_chain(short_id(first)) == first and len(short_id(first)) == 8
    assert store.resolve_chain(short_id(first).upper()) == first
    store.set_alias("tablet", "production", second)
    assert store.resolve_chain("tablet:production") == second
    with pytest.raises(NotFoundError, match="alias"):
        store.resolve_chain("tablet:staging")
    with pytest.raises(NotFoundError, match="unknown chain id 'ffffffff'"):
        store.resolve_chain("ffffffff")
    with pytest.raises(InvalidInputError, match="DATASET:ALIAS"):
        store.resolve_chain(":production")


def test_a_prefix_of_two_ids_says_so_and_lists_them(store, chains):
    chain = store.get_chain(chains[0])
    fields = {k: chain[k] for k in ("steps", "model_step_idx", "model_class", "preprocessings", "fold_strategy",
                                    "fold_artifacts", "shared_artifacts")}
    seen: dict[str, str] = {c[:4]: c for c in chains}
    with store.batch():  # random ids: about 300 chains before two share their first 4 digits
        while True:
            new = store.save_chain(chain["pipeline_id"], **fields)
            if new[:4] in seen:
                pair = sorted([seen[new[:4]], new])
                break
            seen[new[:4]] = new
    with pytest.raises(AmbiguousIdError) as raised:
        store.resolve_chain(new[:4])
    assert "more than one chain id" in str(raised.value) and all(c in str(raised.value) for c in pair)
    assert store.resolve_chain(new[:8]) == new  # 8 digits: one in 4 billion would share them


def test_show_finds_runs_pipelines_and_chains_by_prefix(store, chains):
    run_id = store.list_runs()["run_id"][0]
    pipeline_id = store.get_chain(chains[0])["pipeline_id"]
    assert resolve_id(store, short_id(run_id), ("run", "pipeline", "chain")) == ("run", run_id)
    assert resolve_id(store, pipeline_id, ("run", "pipeline", "chain")) == ("pipeline", pipeline_id)
    with pytest.raises(NotFoundError, match="unknown run/pipeline/chain id"):
        resolve_id(store, "nope", ("run", "pipeline", "chain"))


def test_an_alias_moves_only_to_a_chain_of_its_dataset_unless_forced(store, chains):
    with pytest.raises(InvalidInputError, match="trained on dataset 'tablet', not 'wheet' \\(no dataset 'wheet' "
                                                "in this workspace; its datasets: tablet\\).*force"):
        store.set_alias("wheet", "production", chains[0])
    assert store.list_aliases().height == 0
    store.set_alias("moisture", "production", chains[0], force=True)  # on purpose: another property's name
    assert store.get_alias("moisture") == chains[0]
    store.set_alias("tablet", "production", chains[1])
    assert store.get_alias("tablet") == chains[1]


def test_check_lists_young_orphan_files_apart_as_expected(store, chains):
    shard = store.path / "artifacts" / "ee"
    shard.mkdir(exist_ok=True)
    young, old = shard / ("ee" * 32 + ".joblib"), shard / ("ef" + "e" * 62 + ".joblib")
    young.write_bytes(b"left by a stopped run"), old.write_bytes(b"left long ago")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    report = store.check_workspace(grace=3600)
    assert report.orphan_files == [str(old)] and not report.ok
    assert [o["path"] for o in report.young_orphans] == [str(young)] and report.young_orphans[0]["age_s"] < 60
    old.unlink()
    report = store.check_workspace(grace=3600)
    assert report.ok and report.as_dict()["young_orphans"][0]["path"] == str(young)


def test_files_written_whole_follow_the_process_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        written = write_bytes(tmp_path / "result.json", b"{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(written.stat().st_mode) == 0o640
