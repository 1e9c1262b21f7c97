"""Prediction arrays to and from bytes, losslessly and fast.

Each array is stored as a one-line header (``dtype-str;shape;kind``) and its raw
C-ordered bytes. That keeps shape (a 2-D ``y_proba`` stays 2-D), dtype (float32 stays
float32, int64 stays int64) and string labels; object arrays of strings, which pandas
and polars hand out, come back as object arrays. It costs a few microseconds where
``np.save`` costs tens, which matters at 20,000 predictions a second. Python objects
are never pickled.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidInputError

ARRAY_FIELDS = ("y_true", "y_pred", "y_proba", "sample_indices", "weights")
_MAGIC = b"NFA1;"


def as_array(name: str, value) -> np.ndarray | None:
    if value is None:
        return None
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} cannot be read as an array: {exc}") from exc
    if array.ndim == 0:
        raise InvalidInputError(f"{name} must be an array, got the scalar {value!r}")
    return array


def encode(name: str, array: np.ndarray | None) -> bytes | None:
    if array is None:
        return None
    kind = "plain"
    if array.dtype == object:
        if not all(isinstance(v, str) for v in array.ravel()):
            kinds = sorted({type(v).__name__ for v in array.ravel()})
            raise InvalidInputError(f"{name} holds Python objects of types {kinds}; "
                                    "only numbers, booleans and strings can be stored")
        array, kind = array.astype(str), "objstr"
    if array.dtype.hasobject or array.dtype.kind == "V":
        raise InvalidInputError(f"{name} has dtype {array.dtype}, which cannot be stored")
    shape = ",".join(map(str, array.shape))
    header = f"{array.dtype.str};{shape};{kind}\n".encode()
    return _MAGIC + header + np.ascontiguousarray(array).tobytes()


def decode(data: bytes | None) -> np.ndarray | None:
    if data is None:
        return None
    if not data.startswith(_MAGIC):
        raise ValueError("not an nirsflow array blob")
    end = data.index(b"\n", len(_MAGIC))
    dtype, shape, kind = data[len(_MAGIC):end].decode().split(";")
    dims = tuple(int(n) for n in shape.split(",")) if shape else ()
    array = np.frombuffer(data, dtype=np.dtype(dtype), offset=end + 1).reshape(dims).copy()
    return array.astype(object) if kind == "objstr" else array
