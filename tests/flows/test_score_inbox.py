"""The score_inbox flow on real chains (Tablet SNV+PLS 5-fold, coffee logistic regression):
results equal to ``replay_chain``, one test per bad input of issue 5, idempotency, and a
kill -9 at several points of a run followed by a rerun."""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import json
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID

import numpy as np
import polars as pl
import pytest

from nirs.errors import SpectraFileError
from tasks.scoring import (FileStat, InboxFile, ScoreJob, ScoringLock, describe_problem, result_paths,
                           scan_inbox, score_file)
from tests.conftest import copy_fitted_by
from tests.flows.conftest import start_flow_process
from tests.waiting import wait_for
from tests.flows.scoring_fixtures import Inbox, inbox, scoring_chains, sha256_file  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(300)


def _replay(inbox: Inbox, chain_id: str, X, **kw):
    with inbox.store() as store:
        return store.replay_chain(chain_id, X, **kw)


def _assert_good_scored(inbox: Inbox, summary: dict, rel: str = "tablet/good.csv") -> None:
    """The well-formed file dropped beside a bad one was scored all the same."""
    assert rel in [s["file"] for s in summary["scored"]], summary
    assert (inbox.root / "processed" / rel).is_file() and not (inbox.inbox / rel).exists()


def _assert_rejected(inbox: Inbox, summary: dict, rel: str, *, stage: str, problem: str, row=None, column=None,
                     expected: str | None = None, found: str | None = None) -> dict:
    note = inbox.error_note(rel)
    assert (inbox.root / "rejected" / rel).is_file(), "the bad file is set aside, not deleted"
    assert not (inbox.inbox / rel).exists()
    assert note["file"] == rel and note["stage"] == stage, note
    assert problem in note["problem"], note
    assert note["row"] == row and note["column"] == column, note
    if expected is not None:
        assert expected in (note["expected"] or ""), note
    if found is not None:
        assert found in (note["found"] or ""), note
    assert note["moved_to"] == str(inbox.root / "rejected" / rel)
    assert rel in [r["file"] for r in summary["rejected"]]
    with inbox.store() as store:  # a rejected file is not recorded as scored
        assert rel not in store.list_scored_files()["file_name"].to_list()
    return note


# -- the happy path -------------------------------------------------------------------------


def test_tablet_csv_and_parquet_and_coffee_are_scored_equal_to_replay_chain(inbox, prefect_client):
    chains = inbox.chains
    t = chains.tablet_test
    csv_in = inbox.drop_csv("tablet/test-tablets.csv")
    pq_in = inbox.drop_parquet("tablet/test-tablets.parquet")
    coffee = chains.coffee
    coffee_in = inbox.drop_csv("coffee/beans.csv", coffee.X, coffee.sample_ids)
    hashes = {rel: sha256_file(p) for rel, p in
              [("tablet/test-tablets.csv", csv_in), ("tablet/test-tablets.parquet", pq_in), ("coffee/beans.csv", coffee_in)]}

    summary = inbox.run(csv=True, chunk_rows=50)  # 212 spectra in 5 chunks

    assert summary["counts"] == {"scored": 3, "rejected": 0, "duplicates": 0, "recovered": 0, "waiting": 0,
                                 "failed": 0, "gone": 0}
    assert summary["n_spectra"] == 2 * 212 + 60 and summary["spectra_per_s"] > 0
    expected_y = _replay(inbox, chains.tablet_chain, t.X)
    with inbox.store() as store:
        tablet_model = store.get_chain(chains.tablet_chain)["model_class"]
        records = {r["file_name"]: r for r in store.list_scored_files().to_dicts()}
    assert set(records) == set(hashes)
    for rel in ("tablet/test-tablets.csv", "tablet/test-tablets.parquet"):
        rec = records[rel]
        assert rec["content_hash"] == hashes[rel] and rec["chain_id"] == chains.tablet_chain
        assert rec["alias"] == "production" and rec["n_spectra"] == 212 and rec["dataset_name"] == "tablet"
        assert rec["flow_run_id"] == summary["flow_run_id"]
        result = Path(rec["result_path"])
        assert result.parent == inbox.root / "outbox" / "tablet" and result.name.endswith(".parquet")
        df = pl.read_parquet(result)
        assert df.columns == ["sample_id", "prediction", "t2", "q", "t2_ratio", "q_ratio", "flag", "dataset", "alias",
                              "chain_id", "model_class", "input_file", "input_sha256", "scored_at"]
        assert df["sample_id"].to_list() == t.sample_ids.tolist()
        np.testing.assert_allclose(df["prediction"].to_numpy(), expected_y, rtol=0, atol=1e-9)
        assert set(df["chain_id"]) == {chains.tablet_chain} and set(df["alias"]) == {"production"}
        assert set(df["model_class"]) == {tablet_model} and set(df["input_file"]) == {rel}
        assert set(df["input_sha256"]) == {hashes[rel]} and df["scored_at"].null_count() == 0
        csv_df = pl.read_csv(result.with_suffix(".csv"))  # CSV on request, same rows
        np.testing.assert_allclose(csv_df["prediction"].to_numpy(), expected_y, rtol=0, atol=1e-9)
        assert (inbox.root / "processed" / rel).is_file()

    # classifier: labels and one probability column per class, as replay_chain gives them
    labels, proba = _replay(inbox, chains.coffee_chain, coffee.X, return_proba=True)
    df = pl.read_parquet(records["coffee/beans.csv"]["result_path"])
    with inbox.store() as store:
        classes = store.get_chain(chains.coffee_chain)["classes"]
    assert df["prediction"].to_list() == [str(v) for v in labels]
    np.testing.assert_allclose(df.select([f"proba_{c}" for c in classes]).to_numpy(), proba, rtol=0, atol=1e-12)
    assert inbox.inbox_files() == []

    # the UI: a markdown artifact with the counts, no rejected table when nothing was rejected
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    arts = prefect_client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(summary["flow_run_id"])])))
    markdown = [a for a in arts if a.type == "markdown" and a.key.startswith("score-inbox")]
    assert len(markdown) == 1 and "| 3 | 0 | 0 | 0 | 0 | 0 | 484 |" in markdown[0].data
    # the outlier checks per file, the run's T² vs Q picture inline; each dataset's drift as a table
    assert "| tablet/test-tablets.csv | 212 |" in markdown[0].data and "data:image/png;base64," in markdown[0].data
    tables = [a for a in arts if a.type == "table"]
    assert sorted(a.key for a in tables) == ["drift-coffee", "drift-tablet"]


# -- bad input, one test each ------------------------------------------------------------------


def test_empty_file(inbox):
    inbox.drop_csv("tablet/good.csv", rows=slice(0, 10))
    inbox.drop_bytes("tablet/empty.csv", b"")
    summary = inbox.run()
    _assert_rejected(inbox, summary, "tablet/empty.csv", stage="read", problem="the file is empty (0 bytes)",
                     expected="at least one spectrum", found="0 bytes")
    _assert_good_scored(inbox, summary)


def test_header_only(inbox):
    inbox.drop_csv("tablet/good.csv", rows=slice(0, 10))
    inbox.drop_text("tablet/header.csv", inbox.csv_text().splitlines()[0] + "\n")
    summary = inbox.run()
    _assert_rejected(inbox, summary, "tablet/header.csv", stage="read", problem="has a header but no data rows",
                     expected="at least one data row", found="a header row only")
    _assert_good_scored(inbox, summary)


def test_non_numeric_cell_names_row_and_column_in_the_note_and_the_ui(inbox, prefect_client):
    inbox.drop_csv("tablet/good.csv", rows=slice(0, 10))
    lines = inbox.csv_text(slice(0, 30)).splitlines()
    cells = lines[4].split(",")  # data row 4
    cells[11] = "0.12o"          # the 11th wavelength: 620 nm
    lines[4] = ",".join(cells)
    inbox.drop_text("tablet/typo.csv", "\n".join(lines) + "\n")
    summary = inbox.run(chunk_rows=10)
    note = _assert_rejected(inbox, summary, "tablet/typo.csv", stage="read", problem="not a number", row=4,
                            column="620", expected="a number", found="'0.12o'")
    assert "row 4, column '620'" in note["message"]
    assert not list((inbox.root / "outbox").rglob("typo*")), "no result, not even a partial one"
    _assert_good_scored(inbox, summary)

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    arts = prefect_client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(summary["flow_run_id"])])))
    (table,) = [a for a in arts if a.type == "table" and a.key.endswith("-rejected")]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert rows[0]["file"] == "tablet/typo.csv" and rows[0]["row"] == 4 and rows[0]["column"] == "620"
    (markdown,) = [a for a in arts if a.type == "markdown" and a.key.startswith("score-inbox")]
    assert "| 1 | 1 | 0 | 0 | 0 | 0 | 10 |" in markdown.data and "tablet/typo.csv" in markdown.data


def test_nan_or_infinite_values(inbox):
    inbox.drop_csv("tablet/good.csv", rows=slice(0, 10))
    for rel, value, row, col in (("tablet/nan.csv", "nan", 3, 5), ("tablet/inf.csv", "-inf", 7, 100)):
        lines = inbox.csv_text(slice(0, 10)).splitlines()
        cells = lines[row].split(",")
        cells[col + 1] = value
        lines[row] = ",".join(cells)
        inbox.drop_text(rel, "\n".join(lines) + "\n")
    summary = inbox.run()
    wl = inbox.chains.tablet_test.wavelengths
    _assert_rejected(inbox, summary, "tablet/nan.csv", stage="read", problem="is not finite", row=3,
                     column=f"{wl[5]:g}", expected="a finite number", found="nan")
    _assert_rejected(inbox, summary, "tablet/inf.csv", stage="read", problem="is not finite", row=7,
                     column=f"{wl[100]:g}", expected="a finite number", found="-inf")
    _assert_good_scored(inbox, summary)


def test_wrong_number_of_wavelengths(inbox):
    inbox.drop_csv("tablet/good.csv", rows=slice(0, 10))
    X, ids, wl = inbox.tablet(slice(0, 10))
    inbox.drop_csv("tablet/short.csv", X[:, :-1], ids, wl[:-1])        # 596 columns, the last one missing
    coffee = inbox.chains.coffee                                        # a chain without a grid: count only
    inbox.drop_csv("coffee/short.csv", coffee.X[:5, :-1], coffee.sample_ids[:5])
    summary = inbox.run()
    _assert_rejected(inbox, summary, "tablet/short.csv", stage="check", problem="wrong number of wavelengths",
                     expected="597 wavelengths, 600-1792", found="596 wavelengths, 600-1790")
    _assert_rejected(inbox, summary, "coffee/short.csv", stage="check", problem="wrong number of wavelengths",
                     expected="1841 wavelength columns", found="1840 wavelength columns")
    _assert_good_scored(inbox, summary)


def test_grid_outside_the_trained_range_is_refused_and_a_covering_grid_resampled(inbox):
    X, ids, wl = inbox.tablet(slice(0, 10))
    shifted = np.linspace(700.0, 1700.0, 597)                          # same count, narrower range
    inbox.drop_csv("tablet/narrow.csv", X, ids, shifted)
    fine = np.linspace(590.0, 1800.0, 1211)                            # covers 600-1792: resampled
    X_fine = np.vstack([np.interp(fine, wl, row) for row in X])
    inbox.drop_csv("tablet/good.csv", X_fine, ids, fine)
    summary = inbox.run()
    _assert_rejected(inbox, summary, "tablet/narrow.csv", stage="check", problem="does not cover the trained range",
                     expected="597 wavelengths, 600-1792", found="597 wavelengths, 700-1700")
    _assert_good_scored(inbox, summary)
    (good,) = summary["scored"]
    assert good["resampled_from"] == "1211 wavelengths, 590-1800"
    df = pl.read_parquet(good["result"])
    np.testing.assert_allclose(df["prediction"].to_numpy(),
                               _replay(inbox, inbox.chains.tablet_chain, X_fine, wavelengths=fine), atol=1e-9)


def test_duplicate_sample_ids_across_chunks(inbox):
    inbox.drop_csv("tablet/good.csv", rows=slice(0, 10))
    X, ids, wl = inbox.tablet(slice(0, 30))
    ids = ids.copy()
    ids[25] = ids[2]                                                   # row 26 repeats row 3, two chunks later
    inbox.drop_csv("tablet/dupes.csv", X, ids, wl)
    summary = inbox.run(chunk_rows=10)
    _assert_rejected(inbox, summary, "tablet/dupes.csv", stage="read", problem="duplicate sample id", row=26,
                     column="sample_id", expected="unique sample ids", found=f"'{ids[2]}' again (first on row 3)")
    assert not list((inbox.root / "outbox").rglob("*dupes*")), "the chunks scored before are not kept"
    _assert_good_scored(inbox, summary)


def test_chunk_mb_gives_wide_spectra_fewer_rows_a_chunk(inbox):
    import pyarrow.parquet as pq

    X, ids, wl = inbox.tablet(slice(0, 30))
    inbox.drop_csv("tablet/narrow.csv", X, ids, wl)                     # 597 wavelengths
    fine = np.linspace(590.0, 1800.0, 1211)                            # 1211, resampled onto the trained grid
    X_fine = np.vstack([np.interp(fine, wl, row) for row in X])
    inbox.drop_csv("tablet/wide.csv", X_fine, ids, fine)
    summary = inbox.run(chunk_rows=1000, chunk_mb=0.1)
    assert summary["counts"]["scored"] == 2, summary
    for s in summary["scored"]:
        width = 597 if s["file"] == "tablet/narrow.csv" else 1211
        rows = int(0.1e6) // (8 * width)                               # 20 and 10 spectra a chunk
        meta = pq.ParquetFile(s["result"]).metadata                    # one row group a chunk
        assert [meta.row_group(k).num_rows for k in range(meta.num_row_groups)] == \
            [rows] * (30 // rows) + ([30 % rows] if 30 % rows else []), s["file"]
    with pytest.raises(ValueError, match="chunk_mb must be more than 0"):
        inbox.run(chunk_mb=0)


def test_binary_garbage_with_a_csv_name(inbox):
    inbox.drop_csv("tablet/good.csv", rows=slice(0, 10))
    garbage = bytes(np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8))
    inbox.drop_bytes("tablet/garbage.csv", b"\x89PNG\r\n\x1a\n\x00\x00" + garbage)
    inbox.drop_bytes("tablet/latin1.csv", "sample_id,600\nSchöne,0.5\n".encode("latin-1"))  # no NUL byte
    summary = inbox.run()
    _assert_rejected(inbox, summary, "tablet/garbage.csv", stage="read", problem="not a text file",
                     expected="a UTF-8 text table", found="byte 0x00 at offset 8")
    _assert_rejected(inbox, summary, "tablet/latin1.csv", stage="read", problem="not UTF-8 text",
                     expected="UTF-8 text", found="byte 0xf6")
    _assert_good_scored(inbox, summary)


def test_truncated_parquet(inbox):
    inbox.drop_csv("tablet/good.csv", rows=slice(0, 10))
    whole = inbox.drop_parquet("tablet/cut.parquet", rows=slice(0, 50))
    data = whole.read_bytes()
    whole.write_bytes(data[: len(data) * 2 // 3])
    summary = inbox.run()
    _assert_rejected(inbox, summary, "tablet/cut.parquet", stage="read", problem="truncated or corrupt",
                     expected="a whole Parquet file", found="truncated or corrupt")
    _assert_good_scored(inbox, summary)


def test_a_file_that_grows_while_the_flow_looks_is_left_until_it_settles(inbox):
    inbox.drop_csv("tablet/good.csv", rows=slice(0, 10))
    lines = inbox.csv_text(slice(0, 40)).splitlines()
    growing = inbox.path("tablet/growing.csv")
    growing.write_text("\n".join(lines[:6]) + "\n")
    stop = threading.Event()

    def instrument():  # appends a spectrum every 40 ms, like a slow instrument export
        # ... for as long as the flow runs: however slowly the flow starts (1.4 s on a
        # busy machine), the file is still growing when it looks
        with open(growing, "a") as fh:
            for line in itertools.cycle(lines[6:]):
                if stop.is_set():
                    return
                fh.write(line + "\n")
                fh.flush()
                time.sleep(0.04)

    writer = threading.Thread(target=instrument)
    writer.start()
    try:
        summary = inbox.run(settle_seconds=0.3)
    finally:
        stop.set()
        writer.join()
    assert "tablet/growing.csv" in [w["file"] for w in summary["waiting"]], summary
    assert "size or mtime changed" in summary["waiting"][0]["reason"]
    assert growing.exists() and not list((inbox.root / "outbox").rglob("growing*"))
    _assert_good_scored(inbox, summary)
    assert inbox.scored_records().height == 1

    growing.write_text("\n".join(lines) + "\n")  # the instrument finished (whatever it wrote by then)
    summary = inbox.run()
    assert [s["file"] for s in summary["scored"]] == ["tablet/growing.csv"] and summary["n_spectra"] == 40


def test_a_file_changed_after_the_stable_look_is_not_scored_or_moved(inbox):
    """The second guard: the task re-checks size/mtime/inode once the file is scored; a file
    that changed meanwhile (a writer that paused longer than the settle window) keeps no
    result and stays in the inbox."""
    p = inbox.drop_csv("tablet/late.csv", rows=slice(0, 20))
    (f,) = scan_inbox(inbox.inbox)[0].values()
    with open(p, "a") as fh:  # the writer resumes after the look
        fh.write(inbox.csv_text(slice(20, 21)).splitlines()[1] + "\n")
    with inbox.store() as store:
        chain = store.load_chain(inbox.chains.tablet_chain)
    result, _ = result_paths(inbox.root, f, "0" * 64, inbox.chains.tablet_chain, csv=False)
    outcome = score_file(ScoreJob(f, "0" * 64, result, None, chunk_rows=5), chain)
    assert outcome["status"] == "changed" and "changed while it was being scored" in outcome["reason"]
    assert not result.exists() and not list(result.parent.glob(".*.part"))
    assert p.exists()


@contextmanager
def _without_root_file_access():
    """Root reads any file whatever its mode. Drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
    from this thread's effective capabilities (Linux keeps them per thread; threads started
    from here, such as the flow's task pool, inherit the reduced set), so mode 000 really
    refuses the read; put them back afterwards. A no-op for a non-root user."""
    if os.geteuid() != 0:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    def caps():
        header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
        assert libc.capget(ctypes.byref(header), data) == 0, os.strerror(ctypes.get_errno())
        return header, data

    header, data = caps()
    before = data[0].effective
    data[0].effective = before & ~((1 << 1) | (1 << 2))  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    assert libc.capset(ctypes.byref(header), data) == 0, os.strerror(ctypes.get_errno())
    try:
        yield
    finally:
        header, data = caps()
        data[0].effective = before
        assert libc.capset(ctypes.byref(header), data) == 0, os.strerror(ctypes.get_errno())


def test_an_unreadable_file_is_rejected(inbox):
    inbox.drop_csv("tablet/good.csv", rows=slice(0, 10))
    locked = inbox.drop_csv("tablet/locked.csv", rows=slice(10, 20))
    locked.chmod(0)
    try:
        with _without_root_file_access():
            with pytest.raises(PermissionError):  # the read really fails here, root or not
                open(locked, "rb").close()
            summary = inbox.run()
    finally:
        (inbox.root / "rejected" / "tablet" / "locked.csv").chmod(0o644)
    _assert_rejected(inbox, summary, "tablet/locked.csv", stage="read", problem="cannot be read: Permission denied",
                     expected="a file this process may read", found="Permission denied")
    _assert_good_scored(inbox, summary)


def test_the_note_takes_expected_and_found_from_the_error_not_its_message(tmp_path):
    f = InboxFile(tmp_path / "tablet" / "x.csv", "tablet/x.csv", "tablet", FileStat(1, 1, 1))
    err = SpectraFileError(f.path, "not a number: 'oops'", row=3, column="620", expected="a number", found="'oops'")
    note = describe_problem(err, "replay", f)
    assert (note["stage"], note["row"], note["column"], note["expected"], note["found"]) == \
        ("read", 3, "620", "a number", "'oops'")
    # A file made unreadable after the reader's first look fails on a later open() with a bare PermissionError.
    denied = PermissionError(13, "Permission denied", str(f.path))
    note = describe_problem(denied, "read", f)
    assert (note["error"], note["expected"], note["found"]) == \
        ("PermissionError", "a file this process may read", "permission denied")
    note = describe_problem(RuntimeError("boom"), "replay", f)  # nothing to say beyond the message
    assert (note["expected"], note["found"], note["message"]) == (None, None, "boom")


def test_an_alias_that_points_nowhere_leaves_the_files_waiting(inbox):
    inbox.drop_csv("tablet/good.csv", rows=slice(0, 10))
    wheat = inbox.drop_csv("wheat/w1.csv", rows=slice(10, 20))
    summary = inbox.run()
    assert summary["counts"]["waiting"] == 1 and summary["counts"]["rejected"] == 0
    (waiting,) = summary["waiting"]
    assert waiting["file"] == "wheat/w1.csv"
    assert "unknown alias id 'wheat/production'" in waiting["reason"] and "set_alias('wheat'" in waiting["reason"]
    assert wheat.exists(), "not the file's fault: it stays in the inbox"
    _assert_good_scored(inbox, summary)

    with inbox.store() as store:  # a chain is promoted: the next run scores the waiting file
        store.set_alias("wheat", "production", inbox.chains.tablet_chain, changed_by="tests", force=True)
    summary = inbox.run()
    assert [s["file"] for s in summary["scored"]] == ["wheat/w1.csv"]
    assert summary["scored"][0]["chain_id"] == inbox.chains.tablet_chain


def test_a_chain_fitted_under_another_scikit_learn_scores_and_says_so_in_the_flow_log(inbox, prefect_client):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    with inbox.store() as store:  # the production chain, as if fitted by an older scikit-learn
        old = copy_fitted_by(store, inbox.chains.tablet_chain, "0.24.2")
        store.set_alias("tablet", "production", old, changed_by="tests")
    inbox.drop_csv("tablet/good.csv", rows=slice(0, 10))
    summary = inbox.run()
    assert [(s["file"], s["chain_id"]) for s in summary["scored"]] == [("tablet/good.csv", old)]
    APILogWorker.drain_all(timeout=10)
    logs = prefect_client.read_logs(log_filter=LogFilter(
        flow_run_id=LogFilterFlowRunId(any_=[UUID(summary["flow_run_id"])])))
    warned = [log for log in logs if "fitted with scikit-learn 0.24.2" in log.message]
    assert len(warned) == 1 and warned[0].level == 30 and f"chain {old}" in warned[0].message


def test_a_chain_whose_code_is_gone_fails_the_run_says_why_and_keeps_the_file(inbox, vanishing_step):
    """Years later the module a production chain's step came from may be gone. The file is
    not at fault: it stays for the next run. The run fails (red in the UI), and its error
    names the artifact, what is missing, and the scikit-learn that fitted the chain."""
    from importlib import metadata

    from flows.score_inbox import ScoringIncomplete
    from nirs.datasets import load_tablet

    with inbox.store() as store:
        saved = vanishing_step.save_chain(store, load_tablet(instrument=1)[0])
        store.set_alias("tablet", "production", saved.chain_id, changed_by="tests")
    vanishing_step.remove()
    dropped = inbox.drop_csv("tablet/good.csv", rows=slice(0, 10))
    with pytest.raises(ScoringIncomplete) as failed:
        inbox.run()
    here = metadata.version("scikit-learn")
    message = str(failed.value)
    assert message.startswith(
        f"1 files could not be finished and stay in the inbox: tablet/good.csv: chain {saved.chain_id} of "
        f"tablet/production cannot be loaded: ArtifactLoadError: artifact {saved.centre_id} "), message
    assert message.endswith(
        "is intact but cannot be loaded here: ModuleNotFoundError: No module named 'nf_vanishing_step'; the chain "
        f"was fitted with scikit-learn {here}, this environment has scikit-learn {here}"), message
    assert dropped.exists() and inbox.results() == []

    with inbox.store() as store:  # the lab promotes a chain that loads: the file is scored next run
        store.set_alias("tablet", "production", inbox.chains.tablet_chain, changed_by="tests")
    summary = inbox.run()
    assert [s["file"] for s in summary["scored"]] == ["tablet/good.csv"] and not dropped.exists()


def test_a_file_outside_a_dataset_folder_is_rejected(inbox):
    inbox.drop_csv("tablet/good.csv", rows=slice(0, 10))
    inbox.drop_csv("loose.csv", rows=slice(10, 20))
    inbox.drop_text("tablet/.partial-export.csv", "sample_id,600\n")   # hidden: a write in progress
    inbox.drop_text("tablet/export.csv.part", "sample_id,600\n")       # temporary name: same
    summary = inbox.run()
    note = inbox.error_note("loose.csv")
    assert note["stage"] == "inbox" and note["expected"] == "<inbox>/<dataset>/<file>"
    _assert_good_scored(inbox, summary)
    assert (inbox.inbox / "tablet/.partial-export.csv").exists() and (inbox.inbox / "tablet/export.csv.part").exists()


# -- idempotency --------------------------------------------------------------------------------


def test_same_bytes_again_are_skipped_as_duplicates_and_say_where_the_result_is(inbox):
    a = inbox.drop_csv("tablet/a.csv", rows=slice(0, 20))
    data = a.read_bytes()
    first = inbox.run()
    assert [s["file"] for s in first["scored"]] == ["tablet/a.csv"]
    result = first["scored"][0]["result"]

    inbox.drop_bytes("tablet/a.csv", data)                  # the instrument sends it again
    inbox.drop_bytes("tablet/a-copy.csv", data)             # under another name
    c = inbox.drop_csv("tablet/c.csv", rows=slice(20, 40))  # two new files with the same bytes in one run
    inbox.drop_bytes("tablet/d.csv", c.read_bytes())
    os.utime(inbox.inbox / "tablet/d.csv", ns=(time.time_ns(), c.stat().st_mtime_ns + 1_000_000))
    second = inbox.run()

    assert second["counts"]["scored"] == 1 and second["counts"]["duplicates"] == 3, second
    assert [s["file"] for s in second["scored"]] == ["tablet/c.csv"]
    dupes = {d["file"]: d for d in second["duplicates"]}
    assert dupes["tablet/a.csv"]["duplicate_of"] == "tablet/a.csv" and dupes["tablet/a.csv"]["result"] == result
    assert dupes["tablet/a-copy.csv"]["duplicate_of"] == "tablet/a.csv"
    assert dupes["tablet/d.csv"]["duplicate_of"] == "tablet/c.csv"
    processed = inbox.root / "processed" / "tablet"
    note = json.loads((processed / "a.1.csv.duplicate.json").read_text())  # a.csv was taken: nothing overwritten
    assert note["result_path"] == result and note["result_present"] is True
    assert note["content_sha256"] == hashlib.sha256(data).hexdigest()
    assert (processed / "a.csv").read_bytes() == data and (processed / "a.1.csv").read_bytes() == data
    assert (processed / "a-copy.csv.duplicate.json").is_file() and (processed / "d.csv.duplicate.json").is_file()
    assert inbox.inbox_files() == []
    records = inbox.scored_records()
    assert sorted(records["file_name"]) == ["tablet/a.csv", "tablet/c.csv"]  # one record per content
    assert len(inbox.results()) == 2                                         # no second result


def test_a_second_run_on_a_locked_inbox_does_nothing(tmp_path):
    (tmp_path / "inbox").mkdir()
    with ScoringLock([tmp_path / "inbox"]) as held:
        assert held.acquired
        with ScoringLock([tmp_path / "inbox"]) as second:
            assert not second.acquired and f"pid {os.getpid()}" in second.held_by
    with ScoringLock([tmp_path / "inbox"]) as again:
        assert again.acquired


# -- crash recovery -----------------------------------------------------------------------------

_DRIVER = """
import json, os, signal, sys, time
point, k = {point!r}, {k!r}
import tasks.scoring as scoring
from flows.score_inbox import score_inbox
from storage import WorkspaceStore

calls = {{"n": 0}}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def counted(fn, before):
    def wrapper(*a, **kw):
        calls["n"] += 1
        if before and calls["n"] == k:
            die()
        out = fn(*a, **kw)
        if not before and calls["n"] == k:
            die()
        return out
    return wrapper

if point == "before-record":   # the result is renamed into outbox/, the store not yet written
    WorkspaceStore.record_scored_file = counted(WorkspaceStore.record_scored_file, before=True)
elif point == "after-record":  # the store has the record, the input is not yet moved
    import flows.score_inbox as si
    si.move_file = counted(si.move_file, before=True)
elif point == "mid-write":     # chunks are being written to a temporary result
    scoring.ReplayableChain.replay = counted(scoring.ReplayableChain.replay, before=True)
elif point == "external":      # slow files; the test kills this process from outside
    slow = scoring.score_file
    def score_file(*a, **kw):
        time.sleep(0.3)
        return slow(*a, **kw)
    scoring.score_file = score_file
score_inbox(**json.loads({args!r}))
print("FINISHED WITHOUT BEING KILLED")
"""


@pytest.mark.slow
@pytest.mark.parametrize("point,k", [("external", None), ("before-record", 2), ("after-record", 3),
                                     ("mid-write", 5)])
def test_kill_9_mid_run_then_rerun_scores_every_file_exactly_once(inbox, prefect_server, tmp_path, point, k):
    names = [f"tablet/batch-{i}.csv" for i in range(6)]
    hashes = {rel: sha256_file(inbox.drop_csv(rel, rows=slice(30 * i, 30 * i + 30))) for i, rel in enumerate(names)}
    args = {"workspace": str(inbox.workspace), "inbox": str(inbox.inbox), "settle_seconds": 0.05, "chunk_rows": 10}
    proc = start_flow_process(prefect_server, _DRIVER.format(point=point, k=k, args=json.dumps(args)),
                              tmp_path / "driver.log")
    try:
        if point == "external":
            wait_for(lambda: inbox.results() or proc.poll() is not None, 120, "a first result", interval=0.02)
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "driver.log").read_text()
    assert proc.returncode == -signal.SIGKILL, log[-3000:]
    left = inbox.inbox_files()
    assert left, "the kill came before the end of the run"
    if point == "mid-write":
        assert list((inbox.root / "outbox").rglob(".*.part")), "a half-written result was left behind"
    records_before = inbox.scored_records()
    recorded = records_before.height
    if point == "before-record":
        assert len(inbox.results()) > recorded, "a result not yet recorded"
    if point == "after-record":  # k - 1 inputs moved; the k-th (at least) recorded but still in the inbox
        assert recorded >= k and len(left) == len(names) - (k - 1)

    summary = inbox.run(chunk_rows=10)

    assert summary["counts"]["failed"] == 0 and summary["counts"]["rejected"] == 0
    assert summary["counts"]["duplicates"] == 0, "a recorded file that was not moved yet is not a duplicate"
    if point == "after-record":
        # what the rerun recovers is exactly what was recorded but still in the inbox (which
        # file that is depends on the order files finished in, not only on their names)
        recorded_hashes = set(records_before["content_hash"])
        stranded = {rel for rel in left if hashes[rel] in recorded_hashes}
        assert len(stranded) == recorded - (k - 1)
        assert {r["file"] for r in summary["recovered"]} == stranded
    assert inbox.inbox_files() == []
    processed = inbox.root / "processed" / "tablet"
    assert sorted(p.name for p in processed.iterdir()) == sorted(Path(n).name for n in names)  # no .1, no notes
    records = inbox.scored_records()
    assert records.height == len(names)
    assert dict(zip(records["file_name"], records["content_hash"])) == hashes
    results = inbox.results()
    assert sorted(map(str, results)) == sorted(records["result_path"])  # one result per file, no orphan
    assert not list((inbox.root / "outbox").rglob(".*.part"))
    expected = _replay(inbox, inbox.chains.tablet_chain, inbox.chains.tablet_test.X[:180])
    got = pl.concat([pl.read_parquet(r) for r in results]).sort("input_file", maintain_order=True)
    assert got.height == 180 and got["sample_id"].to_list() == inbox.chains.tablet_test.sample_ids[:180].tolist()
    np.testing.assert_allclose(got["prediction"].to_numpy(), expected, atol=1e-9)
