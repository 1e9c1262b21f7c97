"""Kennard–Stone and SPXY sample selection as scikit-learn splitters.

Both choose a calibration (training) set that spans the data by a maximin rule: start from
the two most distant samples, then repeatedly add the sample farthest from everything chosen
so far. The rest is the validation set. Kennard–Stone measures distance in X; SPXY (Galvão
et al. 2005) adds the distance in y, each normalised by its largest pairwise value, so the
calibration set spans the targets too.

They give one deterministic train/validation split (`get_n_splits() == 1`): there is nothing
random to vary. KFold, ShuffleSplit and the other scikit-learn splitters work in configs too.

Cost: finding the most distant pair is O(n^2 p), done in row blocks so memory stays O(n) per
block; the selection loop is O(n_train n p).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
from sklearn.model_selection import BaseCrossValidator

__all__ = ["KennardStone", "SPXY"]

_BLOCK_ELEMENTS = 2_000_000  # distances computed per block when searching the farthest pair


def _as_matrix(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X.reshape(-1, 1)
    return X


def _block_distances(Z: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Euclidean distances from rows start..stop of Z to every row."""
    sq = np.einsum("ij,ij->i", Z, Z)
    block = Z[start:stop]
    d2 = sq[start:stop, None] + sq[None, :] - 2.0 * block @ Z.T
    return np.sqrt(np.maximum(d2, 0.0))


def _blocks(n: int):
    step = max(1, _BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _max_distance(Z: np.ndarray) -> float:
    return max(float(_block_distances(Z, a, b).max()) for a, b in _blocks(Z.shape[0]))


def _farthest_pair(parts: list[tuple[np.ndarray, float]]) -> tuple[int, int]:
    """The pair maximising sum(d_k / scale_k) over the parts; first one found on ties."""
    n = parts[0][0].shape[0]
    best, pair = -1.0, (0, 1)
    for a, b in _blocks(n):
        total = sum(_block_distances(Z, a, b) / s for Z, s in parts)
        k = int(np.argmax(total))
        if total.flat[k] > best:
            best = float(total.flat[k])
            i, j = divmod(k, n)
            pair = (a + i, j)
    return pair


def _distances_to(parts: list[tuple[np.ndarray, float]], k: int) -> np.ndarray:
    out = 0.0
    for Z, s in parts:
        diff = Z - Z[k]
        out = out + np.sqrt(np.einsum("ij,ij->i", diff, diff)) / s
    return out


def _maximin(parts, n_select: int) -> np.ndarray:
    i, j = _farthest_pair(parts)
    if i == j:
        raise ValueError("all samples are identical; a maximin selection cannot spread them")
    chosen = [i, j]
    nearest = np.minimum(_distances_to(parts, i), _distances_to(parts, j))
    nearest[chosen] = -np.inf
    while len(chosen) < n_select:
        k = int(np.argmax(nearest))
        chosen.append(k)
        nearest = np.minimum(nearest, _distances_to(parts, k))
        nearest[k] = -np.inf
    return np.sort(np.asarray(chosen, dtype=np.int64))


class _MaximinSplit(BaseCrossValidator):
    def __init__(self, test_size=0.25):
        self.test_size = test_size

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        return 1

    def _n_train(self, n: int) -> int:
        t = self.test_size
        if isinstance(t, Integral) and not isinstance(t, bool):
            n_test = int(t)
        elif isinstance(t, Real) and 0.0 < float(t) < 1.0:
            n_test = math.ceil(float(t) * n)
        else:
            raise ValueError(
                f"{type(self).__name__}: test_size must be a fraction in (0, 1) or a sample count, got {t!r}"
            )
        n_train = n - n_test
        if n_test < 1 or n_train < 2:
            raise ValueError(
                f"{type(self).__name__}: test_size={t!r} leaves {n_train} training and {n_test} validation "
                f"samples out of {n}; need at least 2 and 1"
            )
        return n_train

    def _parts(self, X, y) -> list[tuple[np.ndarray, float]]:
        raise NotImplementedError

    def split(self, X, y=None, groups=None):
        X = _as_matrix(X)
        n = X.shape[0]
        n_train = self._n_train(n)
        train = _maximin(self._parts(X, y), n_train)
        mask = np.ones(n, dtype=bool)
        mask[train] = False
        yield train, np.flatnonzero(mask).astype(np.int64)

    def _iter_test_indices(self, X=None, y=None, groups=None):  # BaseCrossValidator's hook
        for _, test in self.split(X, y, groups):
            yield test


def _scale(Z: np.ndarray, what: str, name: str) -> float:
    s = _max_distance(Z)
    if s <= 0:
        raise ValueError(f"{name}: all samples have identical {what}; no split can spread them")
    return s


class KennardStone(_MaximinSplit):
    """Kennard–Stone: calibration samples chosen by maximin Euclidean distance in X.

    `test_size` is the validation share (a fraction) or count; one split is produced.
    """

    def _parts(self, X, y):
        return [(X, 1.0)]


class SPXY(_MaximinSplit):
    """SPXY: maximin on the X distance and the y distance, each divided by its maximum.

    Needs numeric targets.
    """

    def _parts(self, X, y):
        if y is None:
            raise ValueError("SPXY needs the targets y (it spreads the calibration set over y too)")
        y = np.asarray(y)
        if y.dtype.kind not in "iuf":
            raise ValueError(f"SPXY needs numeric targets, got {y.dtype} labels; use KennardStone or StratifiedKFold")
        Y = _as_matrix(y)
        if Y.shape[0] != X.shape[0]:
            raise ValueError(f"SPXY: {Y.shape[0]} targets for {X.shape[0]} samples")
        return [(X, _scale(X, "spectra", "SPXY")), (Y, _scale(Y, "targets", "SPXY"))]
