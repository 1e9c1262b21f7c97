"""The journal: small write transactions committed as one record of a file beside the
database, ``store.duckdb.journal``.

Why: DuckDB's cost for committing rows grows with the tables and columns a transaction
touches (~90 us a column here, DuckDB 2.0.1), hardly with the rows: a single prediction
(29 columns) is ~3 ms as rows in its tables, ~1 ms as one row of a journal table, ~0.2 ms
as one record appended here and fsynced. And an append needs no workspace lock, only the
journal's (``.nirsflow/journal/``): a flow's single calls (a pipeline's start) do not
queue behind a notebook's reads or a scoring flow's turns. Measured on the realistic mix
(bench/mix_bench.py: a training flow, a scoring flow and a notebook on one workspace), a
journal table instead cost the training flow ~8 % and the scoring flow ~5 %.

The file is part of the database, as DuckDB's own ``.wal`` is: a copy of a workspace takes
both. Layout: a header (magic, format, a random generation), then records, each
``length, crc32, payload, length, magic`` (the trailer lets an appender check the end of
the file with one small read). A payload is a transaction's operations
(storage/operations.py) pickled as plain tuples; reading one imports nothing.

How it is used (storage/connection.py says when):

* append: under the journal's lock, with or without the workspace lock;
* settle: under both locks, in one database transaction: every record after the settled
  marker (``meta.journal_settled``, "generation:offset") is applied and the marker moved
  past it; once that commits, the file is reset (a new, empty generation). A crash between
  the two leaves records the marker says are applied: skipped, never applied twice;
* a record cut short (kill -9 in the middle of a large write) was never acknowledged: the
  next append cuts the file back to its last whole record;
* a damaged record with whole ones after it (a disk fault) is refused, naming its offset,
  until ``check_workspace(repair=True)`` sets the file aside and keeps its whole records.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zlib
from datetime import datetime
from pathlib import Path
from typing import Iterator, Sequence

import duckdb

from .atomic import write_bytes
from .errors import WorkspaceCorruptError
from .operations import Insert, Op, SaveArtifact, Update

SETTLED_KEY = "journal_settled"  # the meta row of the settled marker
_KINDS = {Insert: 0, Update: 1, SaveArtifact: 2}
_BY_CODE = {code: kind for kind, code in _KINDS.items()}
_MAGIC = b"NFJF"
_FORMAT = 1
_HEADER = struct.Struct("<4sB16s")  # magic, format, generation
HEADER_SIZE = _HEADER.size
_FRONT = struct.Struct("<II")  # length, crc32 of the payload
_TRAILER = struct.Struct("<I4s")  # length again, magic
_RECORD_END = b"NFJ."


# -- payloads ---------------------------------------------------------------------------
class _Unpickler(pickle.Unpickler):
    # Payloads hold plain values only; anything else in one is refused, never imported.
    def find_class(self, module: str, name: str):
        if (module, name) == ("datetime", "datetime"):
            return datetime
        raise pickle.UnpicklingError(f"journal payloads hold plain values, not {module}.{name}")


def encode(ops: Sequence[Op]) -> bytes:
    """C-speed for plain values: a pipeline's ~700 values encode in ~0.2 ms (JSON with
    markers for timestamps and bytes took ~2 ms)."""
    return pickle.dumps([(_KINDS[type(op)], *op) for op in ops], protocol=5)


def decode(payload: bytes) -> list[Op]:
    return [_BY_CODE[code](*fields) for code, *fields in _Unpickler(io.BytesIO(payload)).load()]


def record(payload: bytes) -> bytes:
    return _FRONT.pack(len(payload), zlib.crc32(payload)) + payload + _TRAILER.pack(len(payload), _RECORD_END)


# -- the settled marker, in the database ------------------------------------------------------
def settled_marker(con) -> tuple[bytes, int] | None:
    row = con.execute("SELECT value FROM meta WHERE key = ?", [SETTLED_KEY]).fetchall()
    if not row or not row[0][0]:
        return None
    generation, offset = row[0][0].split(":")
    return bytes.fromhex(generation), int(offset)


def take(con, journal: "JournalFile") -> list[Op]:
    """The operations of every record not yet applied, in the order they committed, and
    the marker moved past them, in the caller's transaction (which applies them). The
    caller resets the file once that transaction has committed."""
    generation, payloads, end = journal.read(settled_marker(con))
    if payloads:
        con.execute("UPDATE meta SET value = ? WHERE key = ?", [f"{generation.hex()}:{end}", SETTLED_KEY])
    return [op for payload in payloads for op in decode(payload)]


# -- the file -------------------------------------------------------------------------------------
class JournalFile:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    def has_records(self) -> bool:
        return self.size() > HEADER_SIZE

    def append(self, payload: bytes) -> None:
        """One record, fsynced before this returns (under the journal's lock)."""
        if not self.path.exists():
            self.reset()
        fd = os.open(self.path, os.O_RDWR)
        try:
            end = self._sound_end(fd)
            data = record(payload)
            written = os.pwrite(fd, data, end)
            if written != len(data):
                os.ftruncate(fd, end)
                raise OSError(f"{self.path}: wrote {written} of {len(data)} bytes of a journal record")
            os.fsync(fd)
        finally:
            os.close(fd)

    def _sound_end(self, fd: int) -> int:
        """Where the next record goes: the end of the file, or of its last whole record
        when an append was cut short (cut back here)."""
        size = os.fstat(fd).st_size
        self._generation(os.pread(fd, HEADER_SIZE, 0))
        if size == HEADER_SIZE:
            return size
        length, magic = _TRAILER.unpack(os.pread(fd, _TRAILER.size, size - _TRAILER.size).ljust(_TRAILER.size, b"\0"))
        start = size - _TRAILER.size - length - _FRONT.size
        if magic == _RECORD_END and start >= HEADER_SIZE and _FRONT.unpack(os.pread(fd, _FRONT.size, start))[0] == length:
            return size
        _, end = self._parse(os.pread(fd, size, 0), HEADER_SIZE)
        os.ftruncate(fd, end)
        os.fsync(fd)
        return end

    def reset(self, records: bytes = b"") -> None:
        """Replace the journal, whole or not at all, by one of a new generation holding
        `records` (none: empty)."""
        write_bytes(self.path, _HEADER.pack(_MAGIC, _FORMAT, os.urandom(16)) + records)

    def read(self, settled: tuple[bytes, int] | None) -> tuple[bytes, list[bytes], int]:
        """(generation, the payloads of the whole records past the marker `settled`, the
        end of the last one). A record cut short at the end, never acknowledged, is left out."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return b"", [], 0
        generation = self._generation(data[:HEADER_SIZE])
        start = self._unsettled_from(generation, settled)
        payloads, end = self._parse(data, start)
        return generation, payloads, end

    @staticmethod
    def _unsettled_from(generation: bytes, settled: tuple[bytes, int] | None) -> int:
        if settled is not None and settled[0] == generation:
            return max(settled[1], HEADER_SIZE)
        return HEADER_SIZE

    def _generation(self, header: bytes) -> bytes:
        if len(header) < HEADER_SIZE:
            raise WorkspaceCorruptError(f"journal {self.path} is cut short ({len(header)} bytes), expected a "
                                        f"{HEADER_SIZE}-byte header; it was not changed")
        magic, version, generation = _HEADER.unpack(header)
        if magic != _MAGIC or version != _FORMAT:
            raise WorkspaceCorruptError(f"journal {self.path} starts with {header[:5]!r}, expected "
                                        f"{_MAGIC!r} format {_FORMAT}; it was not changed")
        return generation

    def _parse(self, data: bytes, at: int) -> tuple[list[bytes], int]:
        """The payloads of the whole records from `at`, and the end of the last. A bad
        record with whole records after it is not an append cut short: refused."""
        payloads, whole_to = [], at
        for start, end, bad in self._records(data, at):
            if bad:
                if end < len(data):
                    raise WorkspaceCorruptError(
                        f"journal {self.path}: the record at byte {start} is damaged ({bad}) and more records "
                        "follow it; nothing was applied or changed. `nirsflow check --repair` (or "
                        "check_workspace(repair=True)) applies every whole record and keeps the file "
                        "aside for a person.")
                break
            payloads.append(data[start + _FRONT.size:end - _TRAILER.size])
            whole_to = end
        return payloads, whole_to

    @classmethod
    def _records(cls, data: bytes, at: int) -> Iterator[tuple[int, int, str]]:
        """(start, end, why it is damaged or "") of each record from `at` on. A damaged
        record ends where the next whole one starts, or with the file."""
        while at < len(data):
            bad = cls._bad_record(data, at)
            if bad:
                following = cls._next_record(data, at)
                end = following if following is not None else len(data)
            else:
                end = at + _FRONT.size + _FRONT.unpack_from(data, at)[0] + _TRAILER.size
            yield at, end, bad
            at = end

    @staticmethod
    def _bad_record(data: bytes, at: int) -> str:
        if at + _FRONT.size > len(data):
            return "its length is cut short"
        length, crc = _FRONT.unpack_from(data, at)
        body = at + _FRONT.size
        if body + length + _TRAILER.size > len(data):
            return f"it should hold {length} bytes, {len(data) - body} are left"
        if _TRAILER.unpack_from(data, body + length) != (length, _RECORD_END):
            return "its trailer does not match"
        if zlib.crc32(data[body:body + length]) != crc:
            return "its checksum does not match"
        return ""

    @staticmethod
    def _next_record(data: bytes, at: int) -> int | None:
        """Where the first whole record past the bad one at `at` starts, if any."""
        start = data.find(_RECORD_END, at)
        while start != -1:
            begin = start + len(_RECORD_END)
            if begin < len(data) and not JournalFile._bad_record(data, begin):
                return begin
            start = data.find(_RECORD_END, start + 1)
        return None

    def salvage(self, settled: tuple[bytes, int] | None, aside: Path) -> tuple[int, list[str]] | None:
        """A journal with a damaged record among whole ones: keep the file as `aside` (a
        hard link, for a person), and replace it by a journal of a new generation holding
        every whole record not yet settled, in order. Returns (records kept, what was
        damaged), or None when nothing is damaged. Under both locks."""
        data = self.path.read_bytes()
        start = self._unsettled_from(self._generation(data[:HEADER_SIZE]), settled)
        kept, damaged = [], []
        for at, end, bad in self._records(data, start):
            if bad:
                damaged.append((at, end, bad))
            else:
                kept.append(data[at:end])
        if not any(end < len(data) for _, end, _ in damaged):
            return None  # whole, or only an append cut short at the end (the next append cuts it)
        os.link(self.path, aside)
        self.reset(b"".join(kept))
        return len(kept), [f"bytes {at}-{end} ({bad})" for at, end, bad in damaged]


def salvage_message(journal: JournalFile, db_path: Path, aside: Path) -> str | None:
    """``JournalFile.salvage`` with the marker read from the database file (no store
    attached: the caller holds both locks with nothing attached); what was done, or None."""
    if not journal.has_records():
        return None
    with duckdb.connect(str(db_path), read_only=True) as con:
        settled = settled_marker(con)
    salvaged = journal.salvage(settled, aside)
    if salvaged is None:
        return None
    kept, damaged = salvaged
    return (f"journal {journal.path}: left out the damaged {'; '.join(damaged)}; kept its {kept} whole record(s) "
            f"not yet applied; the damaged file is kept as {aside}")
