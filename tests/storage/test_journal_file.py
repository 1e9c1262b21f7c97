"""The journal file (storage/journal_file.py): records cut short, damaged, or applied by a
settle that did not get to empty the file. Real files in a temporary folder; the one
fault that cannot be caused on demand (the file system refusing the reset after the
settle committed) is injected."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest

from storage import WorkspaceStore
from storage.errors import WorkspaceCorruptError
from storage.journal_file import HEADER_SIZE, JournalFile, record


@pytest.fixture
def workspace(tmp_path):
    ws = tmp_path / "ws"
    with WorkspaceStore(ws) as store:
        pipeline_id = store.begin_pipeline(store.begin_run("r"), "p", None, [], "tablet")
    return ws, pipeline_id


def _journal(ws: Path) -> JournalFile:
    return JournalFile(ws / "store.duckdb.journal")


def _save(store, pipeline_id: str, k: int) -> str:
    return store.save_prediction(pipeline_id, val_score=float(k), y_true=np.arange(50.0), y_pred=np.full(50, float(k)))


def _stored(ws: Path) -> dict[str, float]:
    with WorkspaceStore(ws) as store:
        return dict(store.query_predictions().select("prediction_id", "val_score").rows())


def test_a_record_cut_short_is_cut_back_by_the_next_append_and_never_applied(workspace):
    """A writer killed in the middle of a large append leaves part of a record, never
    acknowledged. The next writer appends after the last whole record, not after the
    fragment; the settle applies every acknowledged record and nothing else."""
    ws, pipeline_id = workspace
    store = WorkspaceStore(ws, idle=60)
    first = _save(store, pipeline_id, 1)
    journal = _journal(ws)
    whole = journal.size()
    fragment = record(b"x" * 5000)[:3000]
    with open(journal.path, "ab") as fh:  # what SIGKILL leaves of a cut-short write()
        fh.write(fragment)
    assert journal.read()[1] == journal.read()[1][:1]  # the fragment is not a record
    second = _save(store, pipeline_id, 2)
    grown = journal.size()
    assert grown > whole and grown < whole + len(fragment) + 1000
    assert len(journal.read()[1]) == 2
    store.close()
    assert _stored(ws) == {first: 1.0, second: 2.0}
    assert journal.size() == HEADER_SIZE


def test_a_damaged_record_with_records_after_it_is_refused_and_nothing_is_changed(workspace):
    ws, pipeline_id = workspace
    store = WorkspaceStore(ws, idle=60)
    for k in range(3):
        _save(store, pipeline_id, k)
    journal = _journal(ws)
    data = bytearray(journal.path.read_bytes())
    second_record = HEADER_SIZE + (len(data) - HEADER_SIZE) // 3
    data[second_record + 100] ^= 0xFF  # a flipped byte inside the second record's payload
    journal.path.write_bytes(bytes(data))
    store._db.known_journal(None)  # as another process, which knows nothing of these records
    with pytest.raises(WorkspaceCorruptError, match=rf"journal .*journal: the record at byte {second_record} "
                                                    r"is damaged \(its checksum does not match\)"):
        store.query_predictions()
    assert journal.path.read_bytes() == bytes(data)  # not cut back, not emptied
    with pytest.raises(WorkspaceCorruptError, match="the record at byte"):
        store.release()  # it would settle what it appended: the same error, the lock let go
    assert not store._db.is_open and journal.path.read_bytes() == bytes(data)
    with duckdb.connect(str(ws / "store.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM predictions").fetchall()[0][0] == 0
    with pytest.raises(WorkspaceCorruptError, match="the record at byte"):
        WorkspaceStore(ws).list_runs()  # any reader, any process: the same error


def test_a_settle_whose_reset_failed_does_not_apply_its_records_twice(workspace, monkeypatch):
    """The settle's transaction records how far it applied the journal; emptying the file
    comes after the commit. If that fails (or the process dies there), the next settle
    skips what is already applied."""
    ws, pipeline_id = workspace
    store = WorkspaceStore(ws, idle=60)
    ids = [_save(store, pipeline_id, k) for k in range(3)]

    def refuse(self, records=b""):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(JournalFile, "reset", refuse)
        with pytest.raises(OSError, match="No space left"):
            store.query_predictions()
    journal = _journal(ws)
    assert len(journal.read()[1]) == 3  # still in the file, and marked applied
    later = _save(store, pipeline_id, 9)  # appended after them, in the same generation
    store._db.known_journal(None)  # another process: reads the file and the mark
    assert sorted(store.query_predictions()["prediction_id"].to_list()) == sorted(ids + [later])
    store.close()
    assert sorted(_stored(ws)) == sorted(ids + [later])
    assert journal.size() == HEADER_SIZE


def test_a_journal_that_is_not_one_is_refused_by_name(workspace):
    ws, pipeline_id = workspace
    journal = _journal(ws)
    journal.path.parent.mkdir(exist_ok=True)
    journal.path.write_bytes(b"PK\x03\x04 not a journal at all")
    with pytest.raises(WorkspaceCorruptError, match=r"journal .*/store\.duckdb\.journal starts with b'PK\\x03\\x04 ', "
                                                    r"expected b'NFJF' format 1"):
        WorkspaceStore(ws).query_predictions()
    assert journal.path.read_bytes() == b"PK\x03\x04 not a journal at all"


def test_check_repair_sets_a_damaged_journal_aside_and_applies_its_whole_records(workspace, monkeypatch):
    """Records a settle had applied (the file not emptied after) are not applied twice;
    of the rest, the whole ones land, the damaged one is left out; the file is kept for
    a person; the workspace reads again."""
    ws, pipeline_id = workspace
    store = WorkspaceStore(ws, idle=60)
    applied = [_save(store, pipeline_id, k) for k in range(2)]
    with monkeypatch.context() as patch:  # applied and marked, but still in the file
        patch.setattr(JournalFile, "reset", lambda self, records=b"": (_ for _ in ()).throw(OSError(28, "No space left")))
        with pytest.raises(OSError):
            store.query_predictions()
    rest = [_save(store, pipeline_id, k) for k in range(10, 13)]
    with store._db._mutex:
        store._db._disconnect(handing_over=True)  # a short journal is handed over as it is
    journal = _journal(ws)
    data = bytearray(journal.path.read_bytes())
    ends = [HEADER_SIZE]
    for _ in range(5):
        length = int.from_bytes(data[ends[-1]:ends[-1] + 4], "little")
        ends.append(ends[-1] + 8 + length + 8)
    data[ends[3] + 50] ^= 0xFF  # the fourth record (the second of `rest`): damaged
    journal.path.write_bytes(bytes(data))
    with pytest.raises(WorkspaceCorruptError, match=rf"the record at byte {ends[3]} is damaged.*check --repair"):
        WorkspaceStore(ws).query_predictions()

    with WorkspaceStore(ws) as repairer:
        report = repairer.check_workspace(repair=True)
    (aside,) = ws.glob("store.duckdb.journal.damaged-*")
    assert aside.read_bytes() == bytes(data)
    assert any(f"bytes {ends[3]}-{ends[4]} (its checksum does not match)" in line and "kept its 2 whole" in line
               and str(aside) in line for line in report.repaired), report.repaired
    assert _stored(ws) == {applied[0]: 0.0, applied[1]: 1.0, rest[0]: 10.0, rest[2]: 12.0}
    assert journal.size() == HEADER_SIZE
    with WorkspaceStore(ws) as again:  # nothing left to repair
        assert not any("journal" in line for line in again.check_workspace(repair=True).repaired)
    store.close()
