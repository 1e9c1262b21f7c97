"""`SpectraDataset`: one table of spectra with its grid, ids, targets and metadata.

It checks itself on construction, so every later stage (operators, fitting, storage) can
trust that X is a finite float64 matrix whose columns match the grid and whose rows match
the ids and targets. Errors name the offending row and column.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

TASK_TYPES = ("regression", "classification")

# How many offending items an error message lists before summarising the rest.
_SHOW = 5


def _preview(items) -> str:
    items = list(items)
    shown = ", ".join(repr(str(i)) for i in items[:_SHOW])
    return shown + (f" (and {len(items) - _SHOW} more)" if len(items) > _SHOW else "")


@dataclass(frozen=True, eq=False)
class SpectraDataset:
    """Spectra X (n samples x p wavelengths) with their grid, ids, targets and metadata.

    `y` may be numeric (regression) or class labels, strings included. The task type is
    "classification" when y holds strings, objects or booleans, or when `task` says so
    (integer class codes); "regression" otherwise. Numeric regression targets are stored as
    float64; classification labels keep their dtype, because predictions must come back in
    the user's own labels.
    """

    X: np.ndarray
    wavelengths: np.ndarray | None = None
    sample_ids: np.ndarray | None = None
    y: np.ndarray | None = None
    metadata: object | None = None  # polars.DataFrame; typed loosely to keep polars optional here
    name: str = "dataset"
    task: str | None = field(default=None)

    def __post_init__(self) -> None:
        X = np.asarray(self.X, dtype=np.float64)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        if X.ndim != 2:
            raise ValueError(f"dataset {self.name!r}: X must be 2-D (samples x wavelengths), got {X.ndim}-D")
        n, p = X.shape
        if n == 0 or p == 0:
            raise ValueError(f"dataset {self.name!r}: X is empty ({n} samples x {p} wavelengths)")
        X = np.ascontiguousarray(X)
        object.__setattr__(self, "X", X)

        wl = self.wavelengths
        if wl is not None:
            wl = np.asarray(wl, dtype=np.float64).ravel()
            if wl.shape[0] != p:
                raise ValueError(
                    f"dataset {self.name!r}: {wl.shape[0]} wavelengths for {p} columns of X; they must match"
                )
            bad = np.flatnonzero(~np.isfinite(wl))
            if bad.size:
                raise ValueError(f"dataset {self.name!r}: wavelength at column {bad[0]} is {wl[bad[0]]}")
            steps = np.diff(wl)
            if np.any(steps <= 0):
                j = int(np.flatnonzero(steps <= 0)[0])
                raise ValueError(
                    f"dataset {self.name!r}: wavelengths must be strictly increasing; "
                    f"column {j + 1} ({wl[j + 1]:g}) follows column {j} ({wl[j]:g})"
                )
        object.__setattr__(self, "wavelengths", wl)

        ids = self.sample_ids
        if ids is None:
            ids = np.array([str(i) for i in range(n)])
        else:
            ids = np.asarray([str(i) for i in np.asarray(ids, dtype=object).ravel()])
            if ids.shape[0] != n:
                raise ValueError(f"dataset {self.name!r}: {ids.shape[0]} sample ids for {n} rows of X")
            uniq, counts = np.unique(ids, return_counts=True)
            if np.any(counts > 1):
                raise ValueError(f"dataset {self.name!r}: duplicate sample ids {_preview(uniq[counts > 1])}")
        object.__setattr__(self, "sample_ids", ids)

        # Checked after the ids so the message can name the sample.
        finite = np.isfinite(X)
        if not finite.all():
            rows, cols = np.nonzero(~finite)
            r, c = int(rows[0]), int(cols[0])
            where = f"column {c}" + (f" (wavelength {wl[c]:g})" if wl is not None else "")
            raise ValueError(
                f"dataset {self.name!r}: X has {X[r, c]} at row {r} (sample {str(ids[r])!r}), {where}; "
                f"{rows.size} non-finite value(s) in total"
            )

        if self.task is not None and self.task not in TASK_TYPES:
            raise ValueError(f"dataset {self.name!r}: task must be one of {TASK_TYPES}, got {self.task!r}")
        object.__setattr__(self, "y", self._check_y(self.y, n, ids))

        if self.metadata is not None:
            height = getattr(self.metadata, "height", None)
            if height is None:
                raise TypeError(f"dataset {self.name!r}: metadata must be a polars.DataFrame")
            if height != n:
                raise ValueError(f"dataset {self.name!r}: metadata has {height} rows for {n} samples")

    def _check_y(self, y, n: int, ids: np.ndarray) -> np.ndarray | None:
        if y is None:
            if self.task is not None:
                raise ValueError(f"dataset {self.name!r}: task {self.task!r} given but no targets y")
            return None
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(f"dataset {self.name!r}: y must be one target per sample, got shape {y.shape}")
        if y.shape[0] != n:
            raise ValueError(f"dataset {self.name!r}: {y.shape[0]} targets for {n} rows of X")
        numeric = y.dtype.kind in "iuf"
        if numeric and self.task != "classification":
            y = y.astype(np.float64)
            bad = np.flatnonzero(~np.isfinite(y))
            if bad.size:
                raise ValueError(
                    f"dataset {self.name!r}: target y is {y[bad[0]]} at row {bad[0]} (sample {str(ids[bad[0]])!r}); "
                    f"{bad.size} missing/non-finite target(s)"
                )
            return y
        if y.dtype.kind == "f":
            bad = np.flatnonzero(~np.isfinite(y))
            if bad.size:
                raise ValueError(f"dataset {self.name!r}: class label is {y[bad[0]]} at row {bad[0]}")
        if y.dtype.kind == "O":
            missing = [i for i, v in enumerate(y) if v is None or (isinstance(v, float) and not np.isfinite(v))]
            if missing:
                raise ValueError(
                    f"dataset {self.name!r}: class label missing at row {missing[0]} (sample {str(ids[missing[0]])!r})"
                )
            # Mixed-type labels (3 and "3") cannot be sorted into a stable class order.
            kinds = {type(v) for v in y}
            if len(kinds) > 1:
                raise ValueError(
                    f"dataset {self.name!r}: class labels mix types {sorted(k.__name__ for k in kinds)}"
                )
        return y

    # -- derived ---------------------------------------------------------------------------

    @property
    def n_samples(self) -> int:
        return self.X.shape[0]

    @property
    def n_features(self) -> int:
        return self.X.shape[1]

    def __len__(self) -> int:
        return self.X.shape[0]

    @property
    def task_type(self) -> str | None:
        """"classification" or "regression" (None without targets); see the class docstring."""
        if self.y is None:
            return None
        if self.task is not None:
            return self.task
        return "classification" if self.y.dtype.kind in "OUSb" else "regression"

    def subset(self, indices, *, name: str | None = None) -> "SpectraDataset":
        """The rows at `indices` (an index array or boolean mask), as a new dataset."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return SpectraDataset(
            X=self.X[idx],
            wavelengths=self.wavelengths,
            sample_ids=self.sample_ids[idx],
            y=None if self.y is None else self.y[idx],
            metadata=None if self.metadata is None else self.metadata[idx.tolist()],
            name=name or self.name,
            task=self.task,
        )

    def content_hash(self) -> str:
        """SHA-256 over X, the grid and the targets: the dataset_hash recorded with every run.

        Shapes and dtypes are hashed too, so a 2x6 and a 3x4 matrix with the same bytes differ.
        Ids and metadata are left out: renaming samples does not change what a model learns.
        """
        h = hashlib.sha256()
        h.update(f"X{self.X.shape}".encode())
        h.update(self.X.tobytes())
        if self.wavelengths is None:
            h.update(b"wl:none")
        else:
            h.update(b"wl:")
            h.update(self.wavelengths.tobytes())
        if self.y is None:
            h.update(b"y:none")
        elif self.y.dtype.kind in "iufb":
            h.update(f"y:{self.y.dtype.str}".encode())
            h.update(np.ascontiguousarray(self.y).tobytes())
        else:
            h.update(b"y:labels")
            h.update(json.dumps([str(v) for v in self.y]).encode())
        return h.hexdigest()

    def __repr__(self) -> str:
        grid = "no grid" if self.wavelengths is None else f"{self.wavelengths[0]:g}-{self.wavelengths[-1]:g}"
        return f"SpectraDataset({self.name!r}, {self.n_samples}x{self.n_features}, {grid}, task={self.task_type})"
