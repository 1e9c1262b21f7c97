"""The errors a user of `nirs` can catch, each with a message that names the problem.

Both are ValueErrors. They pickle with their fields intact, because they are raised inside
Prefect tasks that may run in another process.
"""

from __future__ import annotations


class SpectraFileError(ValueError):
    """A spectra file that cannot be read; the message names the file and, where it applies,
    the 1-based data row (row 1 is the first line after the header) and the column.

    `expected` and `found` say the same problem as data for notes and the UI (e.g. "a number"
    against "'oops'"); they are set where the error is raised, so nobody has to parse the
    message, and they are not part of it (None when nothing useful can be said)."""

    def __init__(self, path, problem: str, *, row: int | None = None, column: str | None = None,
                 expected: str | None = None, found: str | None = None):
        self.path = str(path)
        self.problem = problem
        self.row = row
        self.column = column
        self.expected = expected
        self.found = found
        where = []
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        prefix = f"{self.path}: " + (", ".join(where) + ": " if where else "")
        super().__init__(prefix + problem)

    def __reduce__(self):
        return (_rebuild_file_error, (self.path, self.problem, self.row, self.column, self.expected, self.found))


def unreadable(path, exc: OSError) -> SpectraFileError:
    """The error for a file (or folder) the operating system would not read, by why."""
    if isinstance(exc, FileNotFoundError):
        return SpectraFileError(path, "no such file", expected="an existing file", found="no such file")
    if isinstance(exc, IsADirectoryError):
        return SpectraFileError(path, "is a folder, expected a file", expected="a file", found="a folder")
    reason = "permission denied" if isinstance(exc, PermissionError) else exc.strerror or str(exc)
    return SpectraFileError(path, f"cannot be read: {reason}", expected="a file this process may read", found=reason)


# expected/found default to None: an error pickled before they existed (4 fields) still rebuilds.
def _rebuild_file_error(path, problem, row, column, expected=None, found=None):
    return SpectraFileError(path, problem, row=row, column=column, expected=expected, found=found)


class ConfigError(ValueError):
    """A pipeline configuration that cannot run: unknown class, bad parameter, missing model,
    too many generated pipelines, ... Raised before anything is fitted."""
