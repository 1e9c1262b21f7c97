"""Read spectra files into `SpectraDataset`s, with errors that say what is wrong and where.

Formats, chosen by suffix:

* wide text tables, ``.csv`` / ``.tsv`` / ``.tab`` / ``.txt``: one row per sample; columns
  whose header is a number are wavelengths (left to right, increasing); the id column
  (``id_column``) and optional target column (``target_column``) are named; every other
  column becomes metadata. The separator follows the suffix (tab for .tsv/.tab) or is sniffed
  from the header line (comma, semicolon or tab).
* Parquet (``.parquet`` / ``.pq``) in the same wide shape.
* JCAMP-DX (``.jdx`` / ``.dx`` / ``.jcamp``), one spectrum per file, or a folder of them
  (see `nirs.jcampdx`).

Every problem raises `SpectraFileError` (a ValueError) naming the file, and where it applies
the data row (1-based: row 1 is the line after the header), the column, and what was
expected against what was found.

`iter_spectra_chunks` reads the same files in chunks of rows with bounded memory, for the
scoring of large files. Text files are cut at line ends, so a quoted field that spans lines
is not supported there (spectra files have none). Chunks of a plain table (ids and
wavelengths only) are parsed by pyarrow while they are clean, which reads them exactly as
polars does at less memory (see `_read_plain`); everything else is read by polars.
"""

from __future__ import annotations

import bisect
import codecs
import csv
import difflib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from nirs.dataset import SpectraDataset
from nirs.errors import SpectraFileError, unreadable

__all__ = ["SpectraFileError", "read_spectra", "iter_spectra_chunks"]

TEXT_SUFFIXES = {".csv": None, ".txt": None, ".tsv": "\t", ".tab": "\t"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
JCAMP_SUFFIXES = {".jdx", ".dx", ".jcamp"}
_ROW = "__nirs_row__"  # row-number column added while reading; never a user column
_SNIFF_BYTES = 1 << 16

_NUL = b"\x00"


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in JCAMP_SUFFIXES:
        return "jcamp"
    if suffix in TEXT_SUFFIXES:
        return "text"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    known = sorted(set(TEXT_SUFFIXES) | PARQUET_SUFFIXES | JCAMP_SUFFIXES)
    shown = repr(suffix or "(no suffix)")
    raise SpectraFileError(path, f"unsupported file type {shown}; expected one of {', '.join(known)}",
                           expected=", ".join(known), found=shown)


def _head_bytes(path: Path) -> bytes:
    """The first bytes of the file, after the checks every format shares."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError as exc:
        raise unreadable(path, exc) from None
    if size == 0:
        raise SpectraFileError(path, "the file is empty (0 bytes)",
                               expected="a header row and at least one spectrum", found="an empty file (0 bytes)")
    return head


def _check_text(path: Path, head: bytes, what: str) -> None:
    if _NUL in head:
        at = head.index(_NUL)
        raise SpectraFileError(
            path, f"not a text file: binary byte 0x00 at offset {at}; expected a {what}",
            expected="a UTF-8 text table", found=f"binary data (byte 0x00 at offset {at})",
        )
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as exc:
        raise SpectraFileError(
            path, f"not UTF-8 text: byte 0x{head[exc.start]:02x} at offset {exc.start}; expected a {what}",
            expected="UTF-8 text", found=f"byte 0x{head[exc.start]:02x} at offset {exc.start}",
        ) from None


# -- layout: which column is what -----------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    names: list[str]  # header names exactly as in the file
    id_col: str | None
    target_col: str | None
    wl_cols: list[str]
    wavelengths: np.ndarray
    meta_cols: list[str]


def _as_number(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def _layout(path: Path, names: list[str], id_column: str | None, target_column: str | None) -> _Layout:
    clean = [n.strip() for n in names]
    dupes = sorted({n for n in clean if clean.count(n) > 1})
    if dupes:
        raise SpectraFileError(path, f"duplicate column headers {dupes}",
                               expected="unique column headers", found=f"{', '.join(map(repr, dupes))} more than once")
    for role, wanted in (("id", id_column), ("target", target_column)):
        if wanted is not None and wanted not in clean:
            hint = "; pass id_column=None to number the rows instead" if role == "id" else ""
            close = difflib.get_close_matches(wanted, [c for c in clean if _as_number(c) is None], n=1)
            mean = f"did you mean {close[0]!r}? " if close else ""
            shown = ", ".join(repr(c) for c in clean[:8]) + (", ..." if len(clean) > 8 else "")
            article = "an" if role == "id" else "a"
            raise SpectraFileError(path, f"no {role} column {wanted!r} ({mean}found: {shown}){hint}",
                                   expected=f"{article} {role} column {wanted!r}", found=shown)
    wl_idx, wl_values, other = [], [], []
    for i, name in enumerate(clean):
        if name in (id_column, target_column):
            continue
        value = _as_number(name)
        if value is None:
            other.append(i)
        else:
            wl_idx.append(i)
            wl_values.append(value)
    if not wl_idx:
        raise SpectraFileError(
            path,
            "no wavelength columns: expected column headers that are numbers (e.g. 1100 or 1100.5), "
            f"found only {clean[:8]}",
            expected="column headers that are numbers (wavelengths)",
        )
    for i in other:
        if wl_idx[0] < i < wl_idx[-1]:
            raise SpectraFileError(
                path,
                f"header {clean[i]!r} (column {i + 1}) sits among the wavelength columns but is not a number",
                column=names[i], expected="a wavelength (a number)", found=repr(clean[i]),
            )
    for k in range(1, len(wl_values)):
        if wl_values[k] <= wl_values[k - 1]:
            raise SpectraFileError(
                path,
                f"wavelength headers must increase from left to right; {clean[wl_idx[k]]!r} "
                f"(column {wl_idx[k] + 1}) follows {clean[wl_idx[k - 1]]!r} (column {wl_idx[k - 1] + 1})",
                column=names[wl_idx[k]], expected=f"a wavelength above {clean[wl_idx[k - 1]]}", found=clean[wl_idx[k]],
            )
    by_clean = dict(zip(clean, names))
    return _Layout(
        names=list(names),
        id_col=None if id_column is None else by_clean[id_column],
        target_col=None if target_column is None else by_clean[target_column],
        wl_cols=[names[i] for i in wl_idx],
        wavelengths=np.asarray(wl_values, dtype=np.float64),
        meta_cols=[names[i] for i in other],
    )


# -- frame -> dataset (shared by every table path) ---------------------------------------------


def _bad_cell(path: Path, raw, *, row: int, column: str) -> SpectraFileError:
    """The error for a spectrum cell that is not a finite number, by what is in it."""
    if raw is None:
        return SpectraFileError(path, "missing value (empty cell or short row); expected a number", row=row,
                                column=column, expected="a number", found="an empty cell or a short row")
    if isinstance(raw, str):
        try:
            float(raw.strip())
        except ValueError:
            return SpectraFileError(path, f"not a number: {raw!r}", row=row, column=column,
                                    expected="a number", found=repr(raw))
    return SpectraFileError(path, f"value {raw!r} is not finite; spectra must be finite numbers", row=row,
                            column=column, expected="a finite number", found=repr(raw))


def _to_float_matrix(frame: pl.DataFrame) -> np.ndarray:
    # Row-major straight away: SpectraDataset wants C order, and polars' default (Fortran
    # order) would be copied once more there, a second matrix for every chunk.
    if all(dt == pl.Float64 for dt in frame.dtypes):
        return frame.to_numpy(order="c")
    # Text (or booleans, dates) where numbers belong: parse leniently, then report the cells
    # that did not parse by looking at their raw value.
    exprs = [
        pl.col(c).cast(pl.Float64) if dt.is_numeric()
        else pl.col(c).cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
        for c, dt in zip(frame.columns, frame.dtypes)
    ]
    return frame.select(exprs).to_numpy(order="c")


class _SeenIds:
    """The sample ids met so far in a file, and the row each was first on: the duplicate
    check across the chunks of a file.

    Held as arrays, about 40 bytes an id: the ids' hashes (sorted, with where each id
    sits in file order), their rows, and the ids themselves as one numpy string array
    per chunk, to tell a repeated id from two ids that share a hash. A dict of Python strings
    costs some 130 bytes an id, and would grow with the file (~25 MB at 190,000 spectra)
    however small the chunks are.
    """

    _hash = staticmethod(hash)  # str hashes: stable within a process, which is all this needs

    def __init__(self) -> None:
        self.hashes = np.empty(0, dtype=np.int64)  # sorted
        self.where = np.empty(0, dtype=np.int64)   # aligned with hashes: the id's place in file order
        self.starts: list[int] = []                # place of each chunk's first id
        self.ids: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []

    def _first_row(self, sid: str, h: int) -> int | None:
        lo, hi = np.searchsorted(self.hashes, h, "left"), np.searchsorted(self.hashes, h, "right")
        for place in self.where[lo:hi].tolist():
            k = bisect.bisect_right(self.starts, place) - 1
            if self.ids[k][place - self.starts[k]] == sid:
                return int(self.rows[k][place - self.starts[k]])
        return None  # only a hash in common

    def add(self, ids: list[str], rows: np.ndarray) -> tuple[str, int, int] | None:
        """Remember a chunk's ids (on `rows`), or return the first repeated one in file
        order as (id, its row, the row it was first on), remembering nothing."""
        h = np.fromiter(map(self._hash, ids), dtype=np.int64, count=len(ids))
        pos = np.searchsorted(self.hashes, h)
        known = np.zeros(len(ids), dtype=bool)
        if self.hashes.size:
            known = self.hashes[np.minimum(pos, self.hashes.size - 1)] == h
        if known.any() or len(set(ids)) < len(ids):
            here: dict[str, int] = {}
            for i, (sid, r) in enumerate(zip(ids, rows.tolist())):
                first = here.get(sid)
                if first is None and known[i]:
                    first = self._first_row(sid, int(h[i]))
                if first is not None:
                    return sid, r, first
                here[sid] = r
        order = np.argsort(h, kind="stable")
        at = np.searchsorted(self.hashes, h[order])
        start = self.starts[-1] + len(self.ids[-1]) if self.ids else 0
        self.hashes = np.insert(self.hashes, at, h[order])
        self.where = np.insert(self.where, at, start + order)
        self.starts.append(start)
        self.ids.append(np.array(ids, dtype=np.dtypes.StringDType()))
        self.rows.append(np.asarray(rows, dtype=np.int64))
        return None


class _Converter:
    """Turns polars frames of one file into datasets, remembering ids across chunks."""

    def __init__(self, path: Path, layout: _Layout, task: str | None, name: str):
        self.path, self.layout, self.task, self.name = path, layout, task, name
        # Row numbers (id_column=None) cannot repeat; only ids from the file are checked.
        self.seen = None if layout.id_col is None else _SeenIds()

    def __call__(self, df: pl.DataFrame, chunk_name: str | None = None) -> SpectraDataset:
        path, lay = self.path, self.layout
        rows = df[_ROW].to_numpy() + 1  # 1-based data rows
        X = _to_float_matrix(df.select(lay.wl_cols))
        bad = ~np.isfinite(X)
        if bad.any():
            r, c = divmod(int(np.argmax(bad.ravel())), X.shape[1])
            col = lay.wl_cols[c]
            raise _bad_cell(path, df[col][r], row=int(rows[r]), column=col)

        ids = self._ids(rows, None if lay.id_col is None else
                        df[lay.id_col].cast(pl.String).str.strip_chars().to_list())
        y = None if lay.target_col is None else self._targets(df[lay.target_col], rows)
        meta = None
        if lay.meta_cols:
            meta = df.select(lay.meta_cols).rename({c: c.strip() for c in lay.meta_cols})
        return self._dataset(X, ids, y, meta, chunk_name)

    def plain(self, chunk: "_PlainChunk", chunk_name: str | None = None) -> SpectraDataset:
        """A chunk pyarrow read (see `_read_plain`): X already checked, no targets, no metadata."""
        rows = np.arange(chunk.offset + 1, chunk.offset + 1 + chunk.X.shape[0])
        return self._dataset(chunk.X, self._ids(rows, chunk.ids), None, None, chunk_name)

    def _ids(self, rows: np.ndarray, raw_ids: list | None) -> list[str]:
        """The chunk's ids, checked (present, not already met in the file); row numbers
        when the file has no id column."""
        path, lay = self.path, self.layout
        if raw_ids is None:
            ids = [str(r) for r in rows]
        else:
            ids = []
            for r, sid in zip(rows, raw_ids):
                if not sid:
                    raise SpectraFileError(path, "missing sample id", row=int(r), column=lay.id_col,
                                           expected="a sample id", found="an empty cell")
                ids.append(sid)
        repeated = None if self.seen is None else self.seen.add(ids, rows)
        if repeated is not None:
            sid, r, first = repeated
            raise SpectraFileError(path, f"duplicate sample id {sid!r}: also on row {first}", row=r, column=lay.id_col,
                                   expected="unique sample ids", found=f"{sid!r} again (first on row {first})")
        return ids

    def _dataset(self, X, ids, y, meta, chunk_name) -> SpectraDataset:
        path, lay = self.path, self.layout
        try:
            return SpectraDataset(
                X=X, wavelengths=lay.wavelengths, sample_ids=np.array(ids), y=y, metadata=meta,
                name=chunk_name or self.name, task=self.task,
            )
        except ValueError as exc:  # anything the checks above missed still names the file
            raise SpectraFileError(path, str(exc)) from None

    def _targets(self, col: pl.Series, rows: np.ndarray) -> np.ndarray:
        path, name = self.path, self.layout.target_col
        text = col.cast(pl.String).str.strip_chars()
        missing = (text.is_null() | (text == "")).to_numpy()
        if missing.any():
            r = int(rows[int(np.argmax(missing))])
            raise SpectraFileError(path, "missing target value", row=r, column=name,
                                   expected="a target value", found="an empty cell")
        numbers = text.cast(pl.Float64, strict=False)
        if self.task != "classification" and numbers.null_count() == 0:
            y = numbers.to_numpy()
            bad = ~np.isfinite(y)
            if bad.any():
                k = int(np.argmax(bad))
                raise SpectraFileError(path, f"target {text[k]!r} is not finite", row=int(rows[k]), column=name,
                                       expected="a finite number", found=repr(text[k]))
            return y
        if self.task == "regression":
            k = int(np.argmax(numbers.is_null().to_numpy()))
            raise SpectraFileError(
                path, f"regression target is not a number: {text[k]!r}", row=int(rows[k]), column=name,
                expected="a number", found=repr(text[k]),
            )
        return np.asarray(text.to_list(), dtype=object)


def _drop_blank_rows(df: pl.DataFrame) -> pl.DataFrame:
    """Blank lines (often one at the end) come back as all-null rows; they are not samples."""
    data = [c for c in df.columns if c != _ROW]
    if any(df[c].null_count() == 0 for c in data):
        return df  # a column without nulls: no row is all-null (and the frame is not copied)
    return df.filter(~pl.all_horizontal([pl.col(c).is_null() for c in data]))


# -- text tables ------------------------------------------------------------------------------


def _text_header(path: Path, separator: str | None) -> tuple[list[str], str]:
    head = _head_bytes(path)
    _check_text(path, head, "text table with a header row")
    with open(path, encoding="utf-8-sig", newline="") as fh:
        first = fh.readline()
    if not first.strip():
        raise SpectraFileError(path, "the first line is empty; expected the header row (sample id, wavelengths, ...)",
                               expected="a header row (sample id, wavelengths, ...)", found="an empty first line")
    line = first.rstrip("\r\n")
    sep = separator or TEXT_SUFFIXES.get(path.suffix.lower())
    if sep is None:
        sep = max([",", ";", "\t"], key=line.count)
    return next(csv.reader([line], delimiter=sep)), sep


def _typed_schema(layout: _Layout) -> dict:
    schema = {c: pl.Float64 for c in layout.wl_cols}
    for c in (layout.id_col, layout.target_col):
        if c is not None:
            schema[c] = pl.String
    return schema


def _read_csv(source, sep: str, layout: _Layout | None, *, typed: bool, offset: int = 0) -> pl.DataFrame:
    kwargs = dict(separator=sep, row_index_name=_ROW, row_index_offset=offset)
    if typed:
        return pl.read_csv(source, schema_overrides=_typed_schema(layout), **kwargs)
    return pl.read_csv(source, infer_schema=False, **kwargs)


def _structure_error(path: Path, sep: str, n_cols: int, exc: Exception) -> SpectraFileError:
    """Find the row polars choked on (usually one with too many fields) with the csv module."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, delimiter=sep)
            next(reader, None)
            for row_no, fields in enumerate(reader, start=1):
                if fields and len(fields) > n_cols:
                    return SpectraFileError(
                        path, f"{len(fields)} fields, but the header has {n_cols} columns", row=row_no,
                        expected=f"{n_cols} fields per row", found=f"{len(fields)} fields",
                    )
    except (UnicodeDecodeError, csv.Error) as err:
        return SpectraFileError(path, f"unreadable text: {err}")
    return SpectraFileError(path, f"cannot be parsed as a table: {str(exc).splitlines()[0]}")


def _read_text_frame(path: Path, sep: str, layout: _Layout) -> pl.DataFrame:
    try:
        return _read_csv(path, sep, layout, typed=True)
    except pl.exceptions.PolarsError:
        pass  # a bad cell, padded numbers, mixed metadata: the untyped read below says which
    try:
        return _read_csv(path, sep, layout, typed=False)
    except pl.exceptions.PolarsError as exc:
        raise _structure_error(path, sep, len(layout.names), exc) from None


@dataclass(frozen=True)
class _PlainChunk:
    X: np.ndarray           # checked: finite float64
    ids: list[str] | None   # stripped, non-empty; None without an id column
    offset: int             # data rows before this chunk


def _read_plain(data: bytes, n_lines: int, offset: int, sep: str, layout: _Layout) -> _PlainChunk | None:
    """A chunk of a plain table (an id column and wavelengths, nothing else) parsed by
    pyarrow's CSV reader, or None: then polars reads it, as it reads everything else.

    Why two parsers: a scoring process has pyarrow's code in memory anyway (results are
    written with it, and pandas, which scikit-learn imports, loads it), while polars' CSV
    parser and the frame operations after it would bring some 30 MB more of polars' library
    into memory. Only a clean chunk is taken here, so that it reads exactly as polars would
    read it: every line a row (no blank lines), every wavelength a finite number, every id
    plain printable ASCII. Anything else (a bad cell, a short row, an odd id) goes to the
    polars path, whose errors name row and column.
    """
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    types = {c: pa.float64() for c in layout.wl_cols}
    if layout.id_col is not None:
        types[layout.id_col] = pa.string()
    try:
        table = pa_csv.read_csv(
            pa.py_buffer(data),
            read_options=pa_csv.ReadOptions(column_names=layout.names, use_threads=False, block_size=len(data) + 1),
            parse_options=pa_csv.ParseOptions(delimiter=sep),
            convert_options=pa_csv.ConvertOptions(column_types=types),
        )
    except pa.ArrowException:
        return None
    if table.num_rows != n_lines:
        return None
    columns = [table.column(c) for c in layout.wl_cols]
    if any(c.null_count or c.type != pa.float64() for c in columns):
        return None
    X = np.column_stack([c.to_numpy() for c in columns])
    del columns
    if not np.isfinite(X).all():
        return None
    ids = None
    if layout.id_col is not None:
        ids = table.column(layout.id_col).to_pylist()
        if not all(sid and sid.isascii() and sid.isprintable() and '"' not in sid for sid in ids):
            return None
        ids = [sid.strip() for sid in ids]  # for printable ASCII, what polars' strip_chars() strips
    return _PlainChunk(X, ids, offset)


class _TextChunks:
    """The chunks of a text table, `rows` lines at a time: `_PlainChunk`s while pyarrow
    can read them (`_read_plain`), polars frames from the first chunk it cannot on.

    An iterator object rather than a generator on purpose: a generator suspended at its
    ``yield`` keeps its locals (the lines, their joined text, the parsed frame) alive while
    the caller scores the chunk, two or three more copies of it; here nothing of a chunk
    outlives ``__next__``."""

    def __init__(self, path: Path, sep: str, layout: _Layout, rows: int):
        self.path, self.sep, self.layout, self.rows = path, sep, layout, rows
        self.plain = layout.target_col is None and not layout.meta_cols
        self.fh = open(path, "rb")
        self.header = self.fh.readline()
        self.offset = 0

    def __iter__(self) -> "_TextChunks":
        return self

    def __next__(self) -> pl.DataFrame | _PlainChunk:
        lines = list(itertools.islice(self.fh, self.rows)) if not self.fh.closed else []
        if not lines:
            self.close()
            raise StopIteration
        offset, self.offset = self.offset, self.offset + len(lines)
        data = b"".join(lines)
        del lines
        if self.plain:
            chunk = _read_plain(data, self.offset - offset, offset, self.sep, self.layout)
            if chunk is not None:
                return chunk
            self.plain = False  # this file needs polars: read it all with polars from here on
        text = self.header + data
        del data
        try:
            return _read_csv(text, self.sep, self.layout, typed=True, offset=offset)
        except pl.exceptions.PolarsError:
            pass  # a bad cell, padded numbers, mixed metadata: the untyped read below says which
        try:
            return _read_csv(text, self.sep, self.layout, typed=False, offset=offset)
        except pl.exceptions.PolarsError as exc:
            self.close()
            raise _structure_error(self.path, self.sep, len(self.layout.names), exc) from None

    def close(self) -> None:
        self.fh.close()


# -- parquet ------------------------------------------------------------------------------


def _parquet_columns(path: Path) -> list[str]:
    head = _head_bytes(path)
    if not head.startswith(b"PAR1"):
        raise SpectraFileError(path, "not a Parquet file: it does not start with the 'PAR1' magic bytes",
                               expected="a Parquet file (starting with 'PAR1')", found="other bytes")
    try:
        return list(pl.read_parquet_schema(path))
    except Exception as exc:  # polars raises several types for a damaged footer
        raise _corrupt_parquet(path, exc) from None


def _corrupt_parquet(path: Path, exc: Exception) -> SpectraFileError:
    return SpectraFileError(path, f"not a readable Parquet file (truncated or corrupt): {str(exc).splitlines()[0]}",
                            expected="a whole Parquet file", found="a truncated or corrupt one")


def _read_parquet(path: Path, *, offset: int = 0, length: int | None = None) -> pl.DataFrame:
    try:
        lf = pl.scan_parquet(path).with_row_index(_ROW)
        if length is not None:
            lf = lf.slice(offset, length)
        return lf.collect()
    except Exception as exc:
        raise _corrupt_parquet(path, exc) from None


def _parquet_rows(path: Path) -> int:
    try:
        return int(pl.scan_parquet(path).select(pl.len()).collect().item())
    except Exception as exc:
        raise _corrupt_parquet(path, exc) from None


# -- public API ---------------------------------------------------------------------------


def _prepare(path, id_column, target_column, separator):
    path = Path(path)
    kind = _kind(path)
    if kind == "text":
        names, sep = _text_header(path, separator)
    elif kind == "parquet":
        names, sep = _parquet_columns(path), None
    else:
        return path, kind, None, None
    return path, kind, sep, _layout(path, names, id_column, target_column)


def _no_rows(path: Path) -> SpectraFileError:
    return SpectraFileError(path, "has a header but no data rows", expected="at least one data row",
                            found="a header row only")


def read_spectra(
    path,
    *,
    id_column: str | None = "sample_id",
    target_column: str | None = None,
    separator: str | None = None,
    task: str | None = None,
    name: str | None = None,
) -> SpectraDataset:
    """Read a whole spectra file (or a folder of JCAMP-DX files) into one dataset.

    id_column: the column of sample ids; None numbers the rows ("1", "2", ...) instead.
    target_column: the column of targets (numbers, or class labels); None reads no targets.
    task: "regression" or "classification" to force how targets are read (class codes that
    look like numbers need "classification").
    """
    path, kind, sep, layout = _prepare(path, id_column, target_column, separator)
    name = name or path.stem
    if kind == "jcamp":
        from nirs.jcampdx import read_jcamp

        return read_jcamp(path, target_column=target_column, task=task, name=name)
    df = _read_text_frame(path, sep, layout) if kind == "text" else _read_parquet(path)
    df = _drop_blank_rows(df)
    if df.height == 0:
        raise _no_rows(path)
    return _Converter(path, layout, task, name)(df)


def iter_spectra_chunks(
    path,
    *,
    chunk_rows: int = 10_000,
    chunk_bytes: int | None = None,
    id_column: str | None = "sample_id",
    target_column: str | None = None,
    separator: str | None = None,
    task: str | None = None,
    name: str | None = None,
) -> Iterator[SpectraDataset]:
    """Yield the file as datasets of at most `chunk_rows` samples, holding one chunk at a time.

    chunk_bytes: also at most as many samples as fit this many bytes of spectra as
    float64 (8 bytes a wavelength, so a wide file gets fewer rows a chunk than a narrow
    one); at least one sample a chunk. Working on a chunk (replaying a chain, say) takes a
    few times this. JCAMP-DX folders are cut by `chunk_rows` alone.

    Chunks are named "<name>[rows a-b]" with 1-based data rows; ids are checked for
    duplicates across the whole file. Text files are cut at line ends; Parquet files are
    sliced (row groups outside the slice are not read); a JCAMP-DX folder is read
    `chunk_rows` files at a time. Nothing of a chunk is kept once the next is asked for.
    """
    if int(chunk_rows) < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows!r}")
    if chunk_bytes is not None and int(chunk_bytes) < 1:
        raise ValueError(f"chunk_bytes must be at least 1, got {chunk_bytes!r}")
    chunk_rows = int(chunk_rows)
    path, kind, sep, layout = _prepare(path, id_column, target_column, separator)
    name = name or path.stem
    if kind == "jcamp":
        from nirs.jcampdx import iter_jcamp

        yield from iter_jcamp(path, chunk_rows=chunk_rows, target_column=target_column, task=task, name=name)
        return
    rows = _chunk_rows(len(layout.wl_cols), chunk_rows, chunk_bytes)
    convert = _Converter(path, layout, task, name)
    if kind == "text":
        frames = _TextChunks(path, sep, layout, rows)
    else:
        total = _parquet_rows(path)
        frames = (_read_parquet(path, offset=o, length=rows) for o in range(0, total, rows))
    produced = False
    try:
        while True:
            ds = _next_chunk(frames, convert, name)
            if ds is None:
                break
            produced = True
            yield ds
            del ds  # the caller has moved on: let this chunk go before the next one is read
    finally:
        frames.close()
    if not produced:
        raise _no_rows(path)


def _chunk_rows(n_wavelengths: int, chunk_rows: int, chunk_bytes: int | None) -> int:
    """Rows a chunk of `iter_spectra_chunks`: at most `chunk_rows`, and at most as many
    spectra of `n_wavelengths` float64 values as fit `chunk_bytes`; at least 1."""
    if chunk_bytes is None:
        return max(1, int(chunk_rows))
    return max(1, min(int(chunk_rows), int(chunk_bytes) // (8 * max(1, n_wavelengths))))


def _next_chunk(frames, convert: _Converter, name: str) -> SpectraDataset | None:
    """The next chunk with data rows as a dataset (None at the end); a function, so its
    frame is gone by the time the dataset is scored."""
    for piece in frames:
        if isinstance(piece, _PlainChunk):
            first, last = piece.offset + 1, piece.offset + piece.X.shape[0]
            return convert.plain(piece, f"{name}[rows {first}-{last}]")
        df = _drop_blank_rows(piece)
        if df.height:
            first, last = int(df[_ROW][0]) + 1, int(df[_ROW][-1]) + 1
            return convert(df, f"{name}[rows {first}-{last}]")
    return None
