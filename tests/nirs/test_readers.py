import contextlib
import io
import os
import pickle
import tempfile
from pathlib import Path

import jcamp
import numpy as np
import polars as pl
import pytest

from nirs.datasets import load_tablet
from nirs.readers import SpectraFileError, iter_spectra_chunks, read_spectra

WL = [1000, 1002, 1004]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def csv_text(rows, header="sample_id,protein,batch,1000,1002,1004", sep=","):
    return "\n".join([header.replace(",", sep)] + [r.replace(",", sep) for r in rows]) + "\n"


GOOD = ["a,10.5,b1,0.1,0.2,0.3", "b,11.0,b1,0.2,0.3,0.4", "c,12.5,b2,0.3,0.4,0.5"]


def assert_error(path, match, **kw):
    with pytest.raises(SpectraFileError, match=match) as info:
        read_spectra(path, **kw)
    assert str(path) in str(info.value)
    return info.value


# -- good files --------------------------------------------------------------------------


def test_wide_csv_with_id_target_and_metadata(tmp_path):
    ds = read_spectra(write(tmp_path / "s.csv", csv_text(GOOD)), target_column="protein")
    np.testing.assert_array_equal(ds.wavelengths, WL)
    np.testing.assert_array_equal(ds.X, [[0.1, 0.2, 0.3], [0.2, 0.3, 0.4], [0.3, 0.4, 0.5]])
    assert list(ds.sample_ids) == ["a", "b", "c"] and ds.y.tolist() == [10.5, 11.0, 12.5]
    assert ds.metadata.columns == ["batch"] and ds.name == "s" and ds.task_type == "regression"


def test_tsv_semicolons_padding_blank_lines_and_string_labels(tmp_path):
    tsv = read_spectra(write(tmp_path / "s.tsv", csv_text(GOOD, sep="\t")), target_column="batch")
    assert tsv.y.tolist() == ["b1", "b1", "b2"] and tsv.task_type == "classification"
    padded = csv_text([" a ; 1 ; x ; 0.1 ; 0.2 ; 0.3", "b;2;y;1e-3;2E-3;-0.5"], header="sample_id; protein;batch; 1000;1002 ;1004")
    ds = read_spectra(write(tmp_path / "p.csv", padded + "\n\n"), target_column="protein")
    assert list(ds.sample_ids) == ["a", "b"] and ds.X[1].tolist() == [1e-3, 2e-3, -0.5]
    numbered = read_spectra(write(tmp_path / "n.csv", "1000,1002\n1,2\n3,4\n"), id_column=None)
    assert list(numbered.sample_ids) == ["1", "2"]


def test_parquet_in_the_same_shape(tmp_path):
    cal, _ = load_tablet()
    frame = pl.DataFrame({"sample_id": cal.sample_ids, "y": cal.y}).hstack(
        pl.DataFrame(cal.X, schema=[f"{w:g}" for w in cal.wavelengths])
    )
    frame.write_parquet(tmp_path / "tablet.parquet")
    ds = read_spectra(tmp_path / "tablet.parquet", target_column="y")
    np.testing.assert_array_equal(ds.X, cal.X)
    np.testing.assert_array_equal(ds.wavelengths, cal.wavelengths)
    assert ds.content_hash() == cal.content_hash()


def _jdx(path: Path, x, y, **header):
    with contextlib.redirect_stdout(io.StringIO()):  # jcamp.writefile prints progress
        jcamp.writefile(str(path), {"title": path.stem.upper(), "x": np.asarray(x), "y": np.asarray(y), **header})
    return path


def test_jcamp_file_and_folder(tmp_path):
    x = np.linspace(1100, 2500, 36)
    one = read_spectra(_jdx(tmp_path / "s1.jdx", x, np.cos(x / 300), **{"$protein": 12.5}), target_column="protein")
    np.testing.assert_allclose(one.wavelengths, x)
    np.testing.assert_allclose(one.X[0], np.cos(x / 300), atol=1e-4)  # JCAMP keeps 4 decimals here
    assert one.y.tolist() == [12.5] and one.metadata["title"].to_list() == ["S1"]

    folder = tmp_path / "inbox"
    folder.mkdir()
    for k in range(3):
        _jdx(folder / f"s{k}.dx", x, np.sin(x / 200) + k, **{"$protein": 10.0 + k})
    ds = read_spectra(folder, target_column="protein")
    assert list(ds.sample_ids) == ["s0", "s1", "s2"] and ds.y.tolist() == [10.0, 11.0, 12.0]
    chunks = list(iter_spectra_chunks(folder, chunk_rows=2))
    assert [len(c) for c in chunks] == [2, 1]

    _jdx(folder / "s9.jdx", x[:-1], np.sin(x[:-1]))
    with pytest.raises(SpectraFileError, match=r"s9.jdx: grid 1100-2460 \(35 points\) differs from s0.dx"):
        read_spectra(folder)


# -- bad files: each one named -----------------------------------------------------------


def test_empty_and_header_only(tmp_path):
    assert_error(write(tmp_path / "e.csv", ""), "the file is empty")
    assert_error(write(tmp_path / "h.csv", "sample_id,1000,1002\n"), "has a header but no data rows")


def test_non_numeric_cell_names_row_column_and_value(tmp_path):
    rows = GOOD[:2] + ["c,12.5,b2,0.3,oops,0.5"]
    err = assert_error(write(tmp_path / "bad.csv", csv_text(rows)), r"row 3, column '1002': not a number: 'oops'")
    assert (err.row, err.column) == (3, "1002")


def test_nan_inf_and_missing_cells(tmp_path):
    assert_error(write(tmp_path / "nan.csv", csv_text(GOOD[:1] + ["b,1,x,NaN,1,1"])), r"row 2, column '1000': value .*nan.* is not finite")
    assert_error(write(tmp_path / "inf.csv", csv_text(GOOD[:2] + ["c,1,x,1,1,inf"])), r"row 3, column '1004': value .*inf.* is not finite")
    assert_error(write(tmp_path / "gap.csv", csv_text(["a,1,x,1,,1"])), r"row 1, column '1002': missing value")
    assert_error(write(tmp_path / "y.csv", csv_text(["a,1,x,1,1,1", "b,,x,1,1,1"])), r"row 2, column 'protein': missing target value", target_column="protein")


def test_duplicate_ids_name_both_rows(tmp_path):
    rows = GOOD + ["b,1,x,1,1,1"]
    assert_error(write(tmp_path / "dup.csv", csv_text(rows)), r"row 4, column 'sample_id': duplicate sample id 'b': also on row 2")


def test_header_problems(tmp_path):
    assert_error(write(tmp_path / "nowl.csv", "sample_id,protein\na,1\n"), r"no wavelength columns: expected column headers that are numbers")
    assert_error(write(tmp_path / "dec.csv", "sample_id,1000,1004,1002\na,1,2,3\n"),
                 r"column '1002': wavelength headers must increase from left to right; '1002' \(column 4\) follows '1004' \(column 3\)")
    assert_error(write(tmp_path / "word.csv", "sample_id,1000,nm1002,1004\na,1,2,3\n"),
                 r"column 'nm1002': header 'nm1002' \(column 3\) sits among the wavelength columns but is not a number")
    assert_error(write(tmp_path / "noid.csv", "id,1000\na,1\n"), r"no id column 'sample_id' \(found: 'id', '1000'\); pass id_column=None")
    assert_error(write(tmp_path / "notarget.csv", csv_text(GOOD)), r"no target column 'fat'", target_column="fat")
    assert_error(write(tmp_path / "ragged.csv", "sample_id,1000,1002\na,1,2\nb,1,2,3\n"), r"row 2: 4 fields, but the header has 3 columns")


def test_binary_garbage_truncated_parquet_and_unknown_files(tmp_path):
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    assert_error(garbage, r"not (a text file|UTF-8 text)")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("sample_id,1000\n\xe9chantillon,1\n".encode("latin-1"))
    assert_error(latin, r"not UTF-8 text: byte 0xe9 at offset 15")

    pl.DataFrame({"sample_id": ["a", "b"], "1000": [1.0, 2.0]}).write_parquet(tmp_path / "ok.parquet")
    data = (tmp_path / "ok.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    assert_error(tmp_path / "cut.parquet", r"not a readable Parquet file \(truncated or corrupt\)")
    (tmp_path / "fake.parquet").write_text("sample_id,1000\n")
    assert_error(tmp_path / "fake.parquet", "not a Parquet file")

    assert_error(tmp_path / "missing.csv", "no such file")
    assert_error(write(tmp_path / "s.xlsx", "x"), r"unsupported file type '.xlsx'")
    assert_error(write(tmp_path / "junk.jdx", "hello\nworld\n"), r"not JCAMP-DX")
    assert_error(write(tmp_path / "nodata.jdx", "##TITLE=x\n##END=\n"), r"no spectral data")


def test_unreadable_file(tmp_path):
    if os.geteuid() != 0:
        path = write(tmp_path / "locked.csv", csv_text(GOOD))
        path.chmod(0)
        assert_error(path, "cannot be read: permission denied")
        return
    # root reads anything: take an unprivileged effective uid for the read, keep root's saved uid
    folder = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        folder.chmod(0o755)
        path = write(folder / "locked.csv", csv_text(GOOD))
        path.chmod(0)
        os.seteuid(65534)
        try:
            with pytest.raises(SpectraFileError, match="locked.csv: cannot be read: permission denied"):
                read_spectra(path)
        finally:
            os.seteuid(0)
    finally:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()


def test_errors_pickle_with_their_fields(tmp_path):
    err = SpectraFileError(tmp_path / "f.csv", "not a number: 'x'", row=4, column="1002")
    back = pickle.loads(pickle.dumps(err))
    assert (str(back), back.row, back.column) == (str(err), 4, "1002")
    assert isinstance(back, ValueError)


def test_errors_pickled_before_expected_and_found_still_load(tmp_path):
    from nirs.errors import _rebuild_file_error

    old = _rebuild_file_error(str(tmp_path / "f.csv"), "not a number: 'x'", 4, "1002")  # the 4-field form
    assert (old.row, old.column, old.expected, old.found) == (4, "1002", None, None)


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _cut_parquet(path: Path) -> Path:
    pl.DataFrame({"sample_id": ["a", "b"], "1000": [1.0, 2.0]}).write_parquet(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _jdx_points(path: Path, points) -> Path:
    return write(path, "##TITLE=s\n##JCAMP-DX=4.24\n##$PROTEIN=12.5\n##XYPOINTS=(XY..XY)\n"
                 + "".join(f"{x}, {y}\n" for x, y in points) + "##END=\n")


# name: (writes the bad file into a folder, read keywords, expected, found)
BAD_FILES = {
    "non-numeric cell": (lambda d: write(d / "word.csv", csv_text(GOOD[:2] + ["c,12.5,b2,0.3,oops,0.5"])), {},
                         "a number", "'oops'"),
    "short row": (lambda d: write(d / "short.csv", csv_text(GOOD[:1] + ["b,11.0,b1,0.2"])), {},
                  "a number", "an empty cell or a short row"),
    "long row": (lambda d: write(d / "long.csv", "sample_id,1000,1002\na,1,2\nb,1,2,3\n"), {},
                 "3 fields per row", "4 fields"),
    "non-finite cell": (lambda d: write(d / "inf.csv", csv_text(GOOD[:2] + ["c,1,x,1,1,-inf"])), {},
                        "a finite number", "-inf"),
    "duplicate id": (lambda d: write(d / "dup.csv", csv_text(GOOD + ["b,1,x,1,1,1"])), {},
                     "unique sample ids", "'b' again (first on row 2)"),
    # across chunks: the path the batch scorer reads by
    "duplicate id, chunked": (lambda d: write(d / "dupc.csv", csv_text(GOOD + ["b,1,x,1,1,1"])), {"chunk_rows": 2},
                              "unique sample ids", "'b' again (first on row 2)"),
    "missing id": (lambda d: write(d / "noid.csv", csv_text(GOOD[:1] + [",1,x,1,1,1"])), {},
                   "a sample id", "an empty cell"),
    "empty file": (lambda d: write(d / "empty.csv", ""), {},
                   "a header row and at least one spectrum", "an empty file (0 bytes)"),
    "header only": (lambda d: write(d / "head.csv", "sample_id,1000,1002\n"), {},
                    "at least one data row", "a header row only"),
    "no id column": (lambda d: write(d / "idless.csv", "id,1000\na,1\n"), {},
                     "an id column 'sample_id'", "'id', '1000'"),
    "no target column": (lambda d: write(d / "t.csv", "sample_id,1000\na,1\n"), {"target_column": "fat"},
                         "a target column 'fat'", "'sample_id', '1000'"),
    "no wavelength columns": (lambda d: write(d / "nowl.csv", "sample_id,protein\na,1\n"), {},
                              "column headers that are numbers (wavelengths)", None),
    "decreasing wavelengths": (lambda d: write(d / "dec.csv", "sample_id,1000,1004,1002\na,1,2,3\n"), {},
                               "a wavelength above 1004", "1002"),
    "binary garbage named .csv": (lambda d: _write_bytes(d / "garbage.csv", b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(64)), {},
                                  "a UTF-8 text table", "binary data (byte 0x00 at offset 8)"),
    "latin-1 text": (lambda d: _write_bytes(d / "latin.csv", "sample_id,1000\n\xe9chantillon,1\n".encode("latin-1")), {},
                     "UTF-8 text", "byte 0xe9 at offset 15"),
    "truncated parquet": (lambda d: _cut_parquet(d / "cut.parquet"), {},
                          "a whole Parquet file", "a truncated or corrupt one"),
    "text named .parquet": (lambda d: write(d / "fake.parquet", "sample_id,1000\n"), {},
                            "a Parquet file (starting with 'PAR1')", "other bytes"),
    "unknown suffix": (lambda d: write(d / "s.xlsx", "x"), {},
                       ".csv, .dx, .jcamp, .jdx, .parquet, .pq, .tab, .tsv, .txt", "'.xlsx'"),
    "no such file": (lambda d: d / "missing.csv", {}, "an existing file", "no such file"),
    "JCAMP-DX without labels": (lambda d: write(d / "junk.jdx", "hello\nworld\n"), {},
                                "JCAMP-DX '##LABEL=' lines", "no '##' anywhere in the file"),
    "JCAMP-DX empty": (lambda d: write(d / "empty.jdx", ""), {},
                       "JCAMP-DX '##LABEL=' lines and one spectrum", "an empty file (0 bytes)"),
    "JCAMP-DX whitespace only": (lambda d: write(d / "blank.jdx", "  \n\n"), {},
                                 "JCAMP-DX '##LABEL=' lines and one spectrum", "only whitespace (4 bytes)"),
    "JCAMP-DX binary": (lambda d: _write_bytes(d / "bin.jdx", b"##TITLE=\x00x"), {},
                        "JCAMP-DX text", "binary data (byte 0x00 at offset 8)"),
    "JCAMP-DX without data": (lambda d: write(d / "nodata.jdx", "##TITLE=x\n##END=\n"), {},
                              "an ##XYDATA or ##XYPOINTS block with values", "no spectral values"),
    "JCAMP-DX value not finite": (lambda d: _jdx_points(d / "nan.jdx", [(1100, 0.1), (1102, "nan"), (1104, 0.3)]), {},
                                  "a finite number", "nan"),
    "JCAMP-DX abscissa twice": (lambda d: _jdx_points(d / "twice.jdx", [(1100, 0.1), (1100, 0.2), (1104, 0.3)]), {},
                                "distinct abscissa values", "1100 twice"),
    "JCAMP-DX without the target label": (
        lambda d: _jdx_points(d / "label.jdx", [(1100, 0.1), (1102, 0.2)]), {"target_column": "fat"},
        "a header label 'fat'", "end, jcamp-dx, protein, title, xypoints"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_errors_say_expected_and_found_as_fields(tmp_path, case):
    make, kw, expected, found = BAD_FILES[case]
    path = make(tmp_path)
    with pytest.raises(SpectraFileError) as info:
        if "chunk_rows" in kw:
            list(iter_spectra_chunks(path, **kw))
        else:
            read_spectra(path, **kw)
    err = info.value
    assert (err.expected, err.found) == (expected, found), str(err)
    back = pickle.loads(pickle.dumps(err))  # errors cross process boundaries in Prefect tasks
    assert (back.expected, back.found, back.problem, back.row, back.column, str(back)) == \
        (expected, found, err.problem, err.row, err.column, str(err))


# -- chunks --------------------------------------------------------------------------------


def test_chunks_equal_the_whole_read(tmp_path):
    cal, _ = load_tablet()
    cols = [f"{w:g}" for w in cal.wavelengths]
    frame = pl.DataFrame({"sample_id": cal.sample_ids, "y": cal.y}).hstack(pl.DataFrame(cal.X, schema=cols))
    frame.write_csv(tmp_path / "t.csv")
    frame.write_parquet(tmp_path / "t.parquet", row_group_size=64)
    whole = read_spectra(tmp_path / "t.csv", target_column="y")
    for name in ("t.csv", "t.parquet"):
        chunks = list(iter_spectra_chunks(tmp_path / name, chunk_rows=150, target_column="y"))
        assert [len(c) for c in chunks] == [150, 150, 100]
        assert chunks[1].name == "t[rows 151-300]"
        np.testing.assert_array_equal(np.vstack([c.X for c in chunks]), whole.X)
        np.testing.assert_array_equal(np.concatenate([c.y for c in chunks]), cal.y)


def test_chunk_errors_name_the_file_row(tmp_path):
    rows = [f"s{i},1,x,{i},1,1" for i in range(1, 11)]
    rows[7] = "s8,1,x,1,bad,1"
    path = write(tmp_path / "c.csv", csv_text(rows))
    chunks = iter_spectra_chunks(path, chunk_rows=3)
    assert len(next(chunks)) == 3 and len(next(chunks)) == 3
    with pytest.raises(SpectraFileError, match=r"c.csv: row 8, column '1002': not a number: 'bad'"):
        next(chunks)
    dup = write(tmp_path / "d.csv", csv_text([f"s{i % 4},1,x,1,1,1" for i in range(6)]))
    with pytest.raises(SpectraFileError, match=r"row 5, column 'sample_id': duplicate sample id 's0': also on row 1"):
        list(iter_spectra_chunks(dup, chunk_rows=2))


def test_chunk_bytes_sets_the_rows_by_the_width_of_the_spectra(tmp_path):
    rng = np.random.default_rng(3)
    for width in (3, 6):
        wl = [f"{1000 + 2 * k}" for k in range(width)]
        frame = pl.DataFrame({"sample_id": [f"s{i}" for i in range(7)]}).hstack(
            pl.DataFrame(rng.random((7, width)), schema=wl))
        frame.write_csv(tmp_path / f"w{width}.csv")
        frame.write_parquet(tmp_path / f"w{width}.parquet")
        budget = 8 * 3 * 2  # two spectra of 3 wavelengths, one of 6
        per_chunk = budget // (8 * width)
        for name in (f"w{width}.csv", f"w{width}.parquet"):
            chunks = list(iter_spectra_chunks(tmp_path / name, chunk_rows=100, chunk_bytes=budget))
            assert [len(c) for c in chunks] == [per_chunk] * (7 // per_chunk) + ([7 % per_chunk] if 7 % per_chunk else [])
            np.testing.assert_array_equal(np.vstack([c.X for c in chunks]), read_spectra(tmp_path / name).X)
            assert [len(c) for c in iter_spectra_chunks(tmp_path / name, chunk_rows=1, chunk_bytes=budget)] == [1] * 7
            assert [len(c) for c in iter_spectra_chunks(tmp_path / name, chunk_rows=100, chunk_bytes=1)] == [1] * 7
    with pytest.raises(ValueError, match="chunk_bytes must be at least 1"):
        next(iter_spectra_chunks(tmp_path / "w3.csv", chunk_bytes=0))


# Plain tables (an id column and wavelengths) are read in chunks by pyarrow's CSV reader
# while they are clean, by polars otherwise: either way as read_spectra (polars) reads them.
PLAIN_CASES = {
    "clean": b"sample_id,1000,1002\ns1,0.1,2\ns2,-3.5e-2,4\ns3,5,6\n",
    "odd numbers": "sample_id,1000,1002\ns1,+1,.5\ns2,-0,1e-400\ns3,00012,\t1.5\ns4,\"2.5\",4.9e-324\n"
                   "s5,0.1000000000000000055511151231257827021181583404541015625,123456789012345678901234567890\n".encode(),
    "crlf, bom, no final newline": "\ufeffsample_id,1000,1002\r\ns1,1,2\r\ns2,3,4".encode(),
    "semicolons": b"sample_id;1000;1002\ns1;1;2\ns2;3;4\n",
    "id last, padded header": b" 1000 ,1002,sample_id\n1,2,s1\n3,4,s2\n",
    "padded and quoted ids": b'sample_id,1000,1002\n  s1 ,1,2\n"s,2",3,4\n',
    "unicode id": "sample_id,1000,1002\ns1,1,2\nÅ2,3,4\n".encode(),
    "blank lines": b"sample_id,1000,1002\ns1,1,2\n\ns2,3,4\n,,\ns3,5,6\n\n",
    "empty id": b"sample_id,1000,1002\ns1,1,2\n,3,4\n",
    "blank id": b"sample_id,1000,1002\ns1,1,2\n   ,3,4\n",
    "duplicate id": b"sample_id,1000,1002\ns1,1,2\ns2,3,4\ns1,5,6\n",
    "not a number": b"sample_id,1000,1002\ns1,1,2\ns2,0x10,4\n",
    "not finite": b"sample_id,1000,1002\ns1,1,2\ns2,3,1e309\n",
    "NA": b"sample_id,1000,1002\ns1,1,2\ns2,NA,4\n",
    "short row": b"sample_id,1000,1002\ns1,1,2\ns2,3\n",
    "long row": b"sample_id,1000,1002\ns1,1,2\ns2,3,4,5\n",
}


@pytest.mark.parametrize("case", PLAIN_CASES)
@pytest.mark.parametrize("chunk_rows", [1, 2, 10])
def test_plain_tables_read_in_chunks_as_read_whole(tmp_path, case, chunk_rows):
    path = tmp_path / "p.csv"
    path.write_bytes(PLAIN_CASES[case])

    def outcome(read):
        try:
            return read()
        except SpectraFileError as exc:
            return ("error", str(exc), exc.row, exc.column)

    whole = outcome(lambda: read_spectra(path))
    chunks = outcome(lambda: list(iter_spectra_chunks(path, chunk_rows=chunk_rows)))
    if isinstance(whole, tuple):
        assert chunks == whole
        return
    X = np.vstack([c.X for c in chunks])
    assert X.tobytes() == whole.X.tobytes()  # the same bits, signs of zeros included
    assert [i for c in chunks for i in c.sample_ids.tolist()] == whole.sample_ids.tolist()
    assert all(c.X.flags.c_contiguous and c.X.dtype == np.float64 for c in chunks)


def test_a_clean_plain_table_does_not_need_polars_csv_parser(tmp_path, monkeypatch):
    import nirs.readers as readers

    path = write(tmp_path / "p.csv", "sample_id,1000,1002\ns1,1,2\ns2,3,4\ns3,5,6\n")
    monkeypatch.setattr(readers, "_read_csv", lambda *a, **k: pytest.fail("polars' CSV reader was used"))
    chunks = list(iter_spectra_chunks(path, chunk_rows=2))
    assert [c.name for c in chunks] == ["p[rows 1-2]", "p[rows 3-3]"]
    assert chunks[1].sample_ids.tolist() == ["s3"] and chunks[1].X.tolist() == [[5.0, 6.0]]


def test_ids_that_share_a_hash_are_told_apart(tmp_path, monkeypatch):
    import nirs.readers as readers

    monkeypatch.setattr(readers._SeenIds, "_hash", staticmethod(lambda sid: len(sid)))  # collisions galore
    rows = [f"s{i},1,x,{i},1,1" for i in range(1, 21)]
    ok = write(tmp_path / "ok.csv", csv_text(rows))
    assert [i for c in iter_spectra_chunks(ok, chunk_rows=3) for i in c.sample_ids] == [f"s{i}" for i in range(1, 21)]
    rows[16] = "s12,1,x,1,1,1"
    dup = write(tmp_path / "dup.csv", csv_text(rows))
    with pytest.raises(SpectraFileError, match=r"row 17, column 'sample_id': duplicate sample id 's12': also on row 12"):
        list(iter_spectra_chunks(dup, chunk_rows=3))
