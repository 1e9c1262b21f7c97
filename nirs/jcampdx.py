"""JCAMP-DX spectra: one spectrum per file, or a folder of such files, read with `jcamp`.

The sample id is the file name without its suffix (unique within a folder; titles often
repeat). The target, when asked for, is a header label of each file, e.g. ``##$PROTEIN=12.3``
is found by ``target_column="protein"`` (labels are matched without case and without the
leading ``$`` of user-defined labels). Metadata holds the file name and the ##TITLE.

JCAMP-DX may record the abscissa in either direction (infrared files usually run from high
to low wavenumber), so points are sorted into increasing order; every file of a folder must
then have the same grid.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

from nirs.dataset import SpectraDataset
from nirs.errors import SpectraFileError, unreadable

SUFFIXES = {".jdx", ".dx", ".jcamp"}

_NUL = b"\x00"


def _parse(path: Path):
    import jcamp  # a project dependency, imported where it is needed

    try:
        raw = path.read_bytes()
    except (PermissionError, IsADirectoryError, FileNotFoundError) as exc:
        raise unreadable(path, exc) from None
    if not raw.strip():
        found = "an empty file (0 bytes)" if not raw else f"only whitespace ({len(raw)} bytes)"
        raise SpectraFileError(path, "the file is empty" if not raw else "the file holds only whitespace",
                               expected="JCAMP-DX '##LABEL=' lines and one spectrum", found=found)
    if _NUL in raw:
        at = raw.index(_NUL)
        raise SpectraFileError(path, f"not a text file: binary byte 0x00 at offset {at}; expected JCAMP-DX",
                               expected="JCAMP-DX text", found=f"binary data (byte 0x00 at offset {at})")
    text = raw.decode("utf-8", errors="replace")
    if "##" not in text:
        raise SpectraFileError(path, "not JCAMP-DX: no '##LABEL=' lines",
                               expected="JCAMP-DX '##LABEL=' lines", found="no '##' anywhere in the file")
    chatter = io.StringIO()  # jcamp prints its consistency checks; keep them for our message
    try:
        with contextlib.redirect_stdout(chatter):
            record = jcamp.read(io.StringIO(text))
    except Exception as exc:
        raise SpectraFileError(path, f"not valid JCAMP-DX: {type(exc).__name__}: {exc}",
                               expected="valid JCAMP-DX", found=f"{type(exc).__name__}: {exc}") from None
    if record.get("children"):
        raise SpectraFileError(
            path, f"holds {len(record['children'])} linked blocks; one spectrum per file is expected",
            expected="one spectrum per file", found=f"{len(record['children'])} linked blocks",
        )
    x = np.asarray(record.get("x", []), dtype=np.float64)
    y = np.asarray(record.get("y", []), dtype=np.float64)
    if x.size == 0 or y.size == 0:
        raise SpectraFileError(path, "no spectral data: expected an ##XYDATA or ##XYPOINTS block with values",
                               expected="an ##XYDATA or ##XYPOINTS block with values", found="no spectral values")
    if x.size != y.size:
        note = chatter.getvalue().strip()
        raise SpectraFileError(
            path, f"{x.size} abscissa values but {y.size} ordinate values" + (f" ({note})" if note else ""),
            expected=f"{x.size} ordinate values (one per abscissa value)", found=f"{y.size} ordinate values",
        )
    return record, x, y


def _one(path: Path, target_column: str | None):
    record, x, y = _parse(path)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if np.any(np.diff(x) <= 0):
        k = int(np.flatnonzero(np.diff(x) <= 0)[0])
        raise SpectraFileError(path, f"abscissa value {x[k + 1]:g} appears twice",
                               expected="distinct abscissa values", found=f"{x[k + 1]:g} twice")
    bad = np.flatnonzero(~np.isfinite(y))
    if bad.size:
        raise SpectraFileError(path, f"value {y[bad[0]]} is not finite", column=f"{x[bad[0]]:g}",
                               expected="a finite number", found=str(y[bad[0]]))
    target = None
    if target_column is not None:
        wanted = target_column.strip().lower().lstrip("$")
        found = {k.lstrip("$"): v for k, v in record.items() if isinstance(k, str)}
        if wanted not in found:
            labels = sorted(k for k in found if k not in {"x", "y"})
            raise SpectraFileError(path, f"no header label {target_column!r} for the target (labels: {labels})",
                                   expected=f"a header label {target_column!r}", found=", ".join(labels) or "no labels")
        target = found[wanted]
    return x, y, target, str(record.get("title", ""))


def _files(folder: Path) -> list[Path]:
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
    except PermissionError as exc:
        raise unreadable(folder, exc) from None
    if not files:
        raise SpectraFileError(folder, f"no JCAMP-DX files ({', '.join(sorted(SUFFIXES))}) in this folder",
                               expected=f"JCAMP-DX files ({', '.join(sorted(SUFFIXES))})", found="none in this folder")
    return files


def _dataset(files: list[Path], grid_ref, target_column, task, name) -> tuple[SpectraDataset, tuple]:
    rows, targets, titles = [], [], []
    for f in files:
        x, y, target, title = _one(f, target_column)
        if grid_ref is None:
            grid_ref = (f, x)
        ref_file, ref_x = grid_ref
        if x.shape != ref_x.shape or not np.allclose(x, ref_x, rtol=1e-9, atol=0):
            raise SpectraFileError(
                f,
                f"grid {x[0]:g}-{x[-1]:g} ({x.size} points) differs from {ref_file.name}'s "
                f"{ref_x[0]:g}-{ref_x[-1]:g} ({ref_x.size} points); a folder must share one grid",
                expected=f"{ref_file.name}'s grid, {ref_x[0]:g}-{ref_x[-1]:g} ({ref_x.size} points)",
                found=f"{x[0]:g}-{x[-1]:g} ({x.size} points)",
            )
        rows.append(y)
        targets.append(target)
        titles.append(title)
    y_arr = None
    if target_column is not None:
        numeric = all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in targets)
        if numeric and task != "classification":
            y_arr = np.asarray(targets, dtype=np.float64)
        else:
            y_arr = np.asarray([str(t) for t in targets], dtype=object)
    ds = SpectraDataset(
        X=np.vstack(rows),
        wavelengths=grid_ref[1],
        sample_ids=np.array([f.stem for f in files]),
        y=y_arr,
        metadata=pl.DataFrame({"file": [f.name for f in files], "title": titles}),
        name=name,
        task=task,
    )
    return ds, grid_ref


def read_jcamp(path, *, target_column=None, task=None, name=None) -> SpectraDataset:
    """One JCAMP-DX file, or every .jdx/.dx/.jcamp file of a folder, as one dataset."""
    path = Path(path)
    files = _files(path) if path.is_dir() else [path]
    try:
        ds, _ = _dataset(files, None, target_column, task, name or path.stem)
    except SpectraFileError:
        raise
    except ValueError as exc:
        raise SpectraFileError(path, str(exc)) from None
    return ds


def iter_jcamp(path, *, chunk_rows: int, target_column=None, task=None, name=None) -> Iterator[SpectraDataset]:
    """The files of a folder (or one file) `chunk_rows` at a time, all on the first file's grid."""
    path = Path(path)
    files = _files(path) if path.is_dir() else [path]
    name = name or path.stem
    grid_ref = None
    for start in range(0, len(files), chunk_rows):
        part = files[start : start + chunk_rows]
        ds, grid_ref = _dataset(part, grid_ref, target_column, task, f"{name}[files {start + 1}-{start + len(part)}]")
        yield ds
