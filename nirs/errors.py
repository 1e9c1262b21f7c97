"""The errors a user of `nirs` can catch, each with a message that names the problem.

Both are ValueErrors. They pickle with their fields intact, because they are raised inside
Prefect tasks that may run in another process.
"""

from __future__ import annotations


class SpectraFileError(ValueError):
    """A spectra file that cannot be read; the message names the file and, where it applies,
    the 1-based data row (row 1 is the first line after the header) and the column."""

    def __init__(self, path, problem: str, *, row: int | None = None, column: str | None = None):
        self.path = str(path)
        self.problem = problem
        self.row = row
        self.column = column
        where = []
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        prefix = f"{self.path}: " + (", ".join(where) + ": " if where else "")
        super().__init__(prefix + problem)

    def __reduce__(self):
        return (_rebuild_file_error, (self.path, self.problem, self.row, self.column))


def _rebuild_file_error(path, problem, row, column):
    return SpectraFileError(path, problem, row=row, column=column)


class ConfigError(ValueError):
    """A pipeline configuration that cannot run: unknown class, bad parameter, missing model,
    too many generated pipelines, ... Raised before anything is fitted."""
