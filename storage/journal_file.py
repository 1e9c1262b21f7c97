"""The journal on disk: an append-only file beside the database, ``store.duckdb.journal``.

It is part of the database, as DuckDB's own ``store.duckdb.wal`` is: a copy of a
workspace takes both, and whoever opens the workspace applies it first.

A small write transaction made only of buffered writes (a single prediction, a pipeline
recorded whole) commits as one record appended here and fsynced, under the journal's
own lock (``.nirsflow/journal/``), without opening the database at all. Opening it
(attach, WAL replay, a transaction, detach) was ~8 ms of every turn when processes take
turns call by call; an append and its fsync are ~0.1 ms. The records are settled into
their tables in bulk (``storage/writes.py``), under the workspace lock, before anything
reads them. A settle reads the records without the journal's lock, while appends go on:
it takes the whole records it finds, and an append under way is not yet one.

Layout: a header (magic, format, a random generation), then records, each
``length, crc32, payload, length, magic`` (the trailer lets a writer check the end of
the file with one small read before it appends).

Settling is made idempotent by a marker in the database: the generation and the offset
up to which the journal has been applied, written in the settle's own transaction. Once
that commits, the file is replaced, under the journal's lock, by one of a new generation
holding the records appended meanwhile (written beside, fsynced, renamed). A crash
between the two leaves records the marker says are applied: they are skipped, never
applied twice.

A writer killed in the middle of an append (a large write() can stop part-way on
SIGKILL) leaves a record without its trailer. It was never acknowledged: the next
appender sees the bad end, cuts the file back to its last whole record, then appends.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Iterator

from .atomic import write_bytes
from .errors import WorkspaceCorruptError

_MAGIC = b"NFJF"
_FORMAT = 1
_HEADER = struct.Struct("<4sB16s")  # magic, format, generation
HEADER_SIZE = _HEADER.size
_FRONT = struct.Struct("<II")  # length, crc32 of the payload
_TRAILER = struct.Struct("<I4s")  # length again, magic
_RECORD_END = b"NFJ."


RECORD_OVERHEAD = _FRONT.size + _TRAILER.size  # a record's bytes besides its payload


def record(payload: bytes) -> bytes:
    return (_FRONT.pack(len(payload), zlib.crc32(payload)) + payload
            + _TRAILER.pack(len(payload), _RECORD_END))


class JournalFile:
    def __init__(self, path: Path, applied_note: Path | None = None) -> None:
        self.path = Path(path)
        # Where settles note how far they applied the file when they could not replace it
        # (others were appending): "<generation hex>:<offset>". Advisory: it spares a
        # reader a needless settle, and is never ahead of the marker in the database,
        # which alone decides what a settle applies. Missing or unreadable: not known.
        self.applied_note = Path(applied_note) if applied_note is not None else None
        self._applied_seen: tuple[tuple, tuple[bytes, int] | None] | None = None  # (its stat, its mark)

    def size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    def has_records(self) -> bool:
        return self.size() > HEADER_SIZE

    def unapplied_bytes(self, end: tuple[bytes, int] | None = None) -> int:
        """Bytes of records past what a settle noted as applied (all of them, if none did):
        0 means there is nothing to settle. `end`: the file's (generation, size), if known."""
        end = end or self.end()
        if end is None or end[1] <= HEADER_SIZE:
            return 0
        applied = self._applied()
        start = applied[1] if applied is not None and applied[0] == end[0] else HEADER_SIZE
        return max(end[1] - max(start, HEADER_SIZE), 0)

    def has_unapplied(self) -> bool:
        return self.unapplied_bytes() > 0

    def note_applied(self, generation: bytes, end: int) -> None:
        """A settle applied the records up to `end` and left them in the file."""
        if self.applied_note is not None:
            self.applied_note.parent.mkdir(parents=True, exist_ok=True)
            self.applied_note.write_text(f"{generation.hex()}:{end}")

    def _applied(self) -> tuple[bytes, int] | None:
        if self.applied_note is None:
            return None
        try:
            # read again only when it changed: every append looks (a note read a moment
            # too late, with an unchanged stat, is an older mark: at worst a needless settle)
            st = os.stat(self.applied_note)
            seen = (st.st_ino, st.st_size, st.st_mtime_ns)
            if self._applied_seen is None or self._applied_seen[0] != seen:
                generation, offset = self.applied_note.read_text().split(":")
                self._applied_seen = (seen, (bytes.fromhex(generation), int(offset)))
            return self._applied_seen[1]
        except (OSError, ValueError):
            return None  # none yet, or being written: not known

    def end(self) -> tuple[bytes, int] | None:
        """(generation, size) of the file now; None if there is none."""
        try:
            with open(self.path, "rb") as fh:
                header = fh.read(HEADER_SIZE)
                size = os.fstat(fh.fileno()).st_size
        except FileNotFoundError:
            return None
        return self._generation(header), size

    # -- writing (under the exclusive workspace lock) -------------------------------------
    def append(self, payload: bytes, unsynced: list[int] | None = None) -> tuple[bytes, int]:
        """Append one record and fsync it; return (generation, the file's new end).

        With `unsynced`, the open descriptor is added to it instead of fsynced and closed:
        the caller fsyncs it once it has let the journal's lock go, and only then reports
        the write done. The next appender need not wait for that fsync (an fsync flushes
        every record written before it, so appenders taking turns share one: a disk
        slow to flush stalls each of them once, not one after another)."""
        if not self.path.exists():
            self.reset()
        fd = os.open(self.path, os.O_RDWR)
        try:
            generation, end = self._sound_end(fd)
            data = record(payload)
            written = os.pwrite(fd, data, end)
            if written != len(data):
                os.ftruncate(fd, end)
                raise OSError(f"{self.path}: wrote {written} of {len(data)} bytes of a journal record")
            if unsynced is None:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        if unsynced is None:
            os.close(fd)
        else:
            unsynced.append(fd)
        return generation, end + len(data)

    def _sound_end(self, fd: int) -> tuple[bytes, int]:
        """The generation and where the next record goes: the end of the file, or of its
        last whole record when an append was cut short (cut back here)."""
        size = os.fstat(fd).st_size
        generation = self._generation(os.pread(fd, HEADER_SIZE, 0))
        if size == HEADER_SIZE:
            return generation, size
        tail = os.pread(fd, _TRAILER.size, size - _TRAILER.size)
        length, magic = _TRAILER.unpack(tail) if len(tail) == _TRAILER.size else (-1, b"")
        start = size - _TRAILER.size - length - _FRONT.size
        if magic == _RECORD_END and start >= HEADER_SIZE:
            front = os.pread(fd, _FRONT.size, start)
            if _FRONT.unpack(front)[0] == length:
                return generation, size
        _, end = self._parse(os.pread(fd, size, 0), HEADER_SIZE)
        os.ftruncate(fd, end)
        os.fsync(fd)
        return generation, end

    def reset(self, records: bytes = b"") -> bytes:
        """Replace the journal, whole or not at all, by one of a new generation holding
        `records` (none: empty); return the generation."""
        generation = os.urandom(16)
        write_bytes(self.path, _HEADER.pack(_MAGIC, _FORMAT, generation) + records)
        return generation

    def reset_after(self, generation: bytes, end: int) -> tuple[bytes, int]:
        """Replace the journal, whose records up to `end` are applied, by one of a new
        generation holding the whole records appended after `end` (a record cut short at
        the end, never acknowledged, is left out); return its (generation, size). Under
        the journal's lock. A journal of another generation is left as it is."""
        try:
            with open(self.path, "rb") as fh:
                header = fh.read(HEADER_SIZE)
                fh.seek(end)
                after = fh.read()
        except FileNotFoundError:
            header = b""
        if len(header) < HEADER_SIZE or self._generation(header) != generation:
            raise WorkspaceCorruptError(f"journal {self.path} was replaced while its records were being applied; "
                                        "it was left as it is")
        _, whole_to = self._parse(after, 0, origin=end)
        kept = after[:whole_to]
        return self.reset(kept), HEADER_SIZE + len(kept)

    # -- reading ------------------------------------------------------------------------
    def read(self, settled: tuple[bytes, int] | None = None) -> tuple[bytes, list[bytes], int]:
        """(generation, the payloads of the whole records not yet settled, the end of the
        last record). `settled` is the marker (generation, offset): records of that
        generation before that offset were applied already. A record cut short at the
        end, never acknowledged, is left out."""
        try:
            with open(self.path, "rb") as fh:
                generation = self._generation(fh.read(HEADER_SIZE))
                start = self._unsettled_from(generation, settled)
                fh.seek(start)
                data = fh.read()  # appends may go on meanwhile: whole records only
        except FileNotFoundError:
            return b"", [], 0
        payloads, end = self._parse(data, 0, origin=start)
        return generation, payloads, start + end

    @staticmethod
    def _unsettled_from(generation: bytes, settled: tuple[bytes, int] | None) -> int:
        """Where the records not yet applied start, by the marker (generation, offset)."""
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

    def _parse(self, data: bytes, at: int, origin: int = 0) -> tuple[list[bytes], int]:
        """The payloads of the whole records from `at`, and the end of the last. A bad
        record with whole records after it is not an append cut short: refused. (`data`
        starts at byte `origin` of the file.)"""
        payloads, whole_to = [], at
        for start, end, bad in self._records(data, at):
            if bad:
                if end < len(data):
                    raise WorkspaceCorruptError(
                        f"journal {self.path}: the record at byte {origin + start} is damaged ({bad}) and more records "
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
        """Where the first whole record past the bad one at `at` starts, if any (appends
        went on after it)."""
        start = data.find(_RECORD_END, at)
        while start != -1:
            begin = start + len(_RECORD_END)
            if begin < len(data) and not JournalFile._bad_record(data, begin):
                return begin
            start = data.find(_RECORD_END, start + 1)
        return None

    # -- repair (under the exclusive workspace lock) --------------------------------------
    def salvage(self, settled: tuple[bytes, int] | None, aside: Path) -> tuple[int, list[str]] | None:
        """A journal with a damaged record among whole ones: keep the file as `aside`
        (a hard link, for a person), and replace it by a journal of a new generation
        holding every whole record not yet settled, in order. Returns (records kept,
        what was damaged), or None when nothing is damaged."""
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
