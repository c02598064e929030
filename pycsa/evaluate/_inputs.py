"""Input conversion shared by the evaluators: numpy arrays, torch tensors or sequences in, numpy out.

torch is never imported here, so the evaluators stay independent of the code
they judge; a tensor is recognised by its ``detach``/``cpu``/``numpy`` methods.
"""
from __future__ import annotations

import numpy as np


def to_numpy(x, name: str) -> np.ndarray:
    """Return ``x`` as a numpy array (tensors are detached and moved to the CPU)."""
    if hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy"):
        x = x.detach().cpu()
        try:
            return x.numpy()
        except TypeError:  # bfloat16 and friends have no numpy dtype
            return x.float().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - ragged lists and the like
        raise ValueError(f"{name}: cannot be read as an array ({exc})") from exc


def int_matrix(x, name: str) -> np.ndarray:
    """A 2-D integer array as int64, else ValueError/TypeError naming ``name``."""
    a = to_numpy(x, name)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array, got shape {a.shape}")
    if a.dtype.kind not in "iu":
        if a.size == 0 and a.dtype.kind == "f":  # np.asarray([[]]) is float64
            return a.astype(np.int64)
        raise TypeError(f"{name}: expected integer indices, got dtype {a.dtype}")
    return as_int64(a, name)


INT64_MAX = 2 ** 63 - 1


def as_int64(a: np.ndarray, name: str) -> np.ndarray:
    """Integer indices as int64. uint64 values >= 2**63 would wrap to negatives and be
    reported as numbers the caller never passed, or index the tables from the end."""
    if a.dtype == np.uint64 and a.size and int(a.max()) > INT64_MAX:
        where = ""
        if a.ndim == 2:
            where = f" (query {int(np.nonzero((a > INT64_MAX).any(axis=1))[0][0])})"
        raise IndexOutOfRangeError(f"{name}: holds index {int(a.max())}{where}, beyond the int64 range of indices")
    return a.astype(np.int64, copy=False)


def positive_count(value, name: str, what: str = "a positive int", low: int = 1) -> int:
    """An integer >= ``low``; integral floats (5.0) pass, as they always have. NaN, inf,
    strings and bools are refused by name rather than failing inside int()."""
    try:
        ok = not isinstance(value, bool) and int(value) == value and value >= low
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return int(value)


class IndexOutOfRangeError(IndexError, ValueError):
    """An index outside [0, n): an IndexError, and a ValueError as the evaluators have always raised."""


def vector(x, name: str, length: int | None = None) -> np.ndarray:
    """A 1-D array, optionally of a required length."""
    a = to_numpy(x, name)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if length is not None and a.shape[0] != length:
        raise ValueError(f"{name}: expected length {length}, got {a.shape[0]}")
    return a


def labels(x, name: str, length: int | None = None) -> np.ndarray:
    """A 1-D array of labels (ids, cameras): NaN equals nothing, so it would quietly make an
    item match no query; it is refused instead."""
    a = vector(x, name, length)
    if a.dtype.kind in "fc" and not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return a


def ranking(x, name: str) -> np.ndarray:
    """A 2-D integer array, one row per query, of at least one column."""
    return check_depth(int_matrix(x, name), name)


def check_depth(a: np.ndarray, name: str) -> np.ndarray:
    """A ranking of depth 0 scores nothing, and comes from a bug upstream more often than by intent."""
    if a.shape[0] and not a.shape[1]:
        raise ValueError(f"{name}: lists no items per query (depth 0): there is nothing to score")
    return a


def check_index_range(a: np.ndarray, name: str, n: int | None) -> None:
    """Indices must be non-negative and, when ``n`` is known, below ``n``; the error names
    the query (row) holding the first bad one."""
    if a.size == 0 or (int(a.min()) >= 0 and (n is None or int(a.max()) < n)):
        return
    bad = (a < 0) | (a >= n) if n is not None else a < 0
    where = ""
    if a.ndim == 2:
        row = int(np.nonzero(bad.any(axis=1))[0][0])
        where, a, bad = f" (query {row})", a[row], bad[row]
    value = int(a[bad][0])
    if value < 0:
        raise IndexOutOfRangeError(f"{name}: holds negative index {value}{where}")
    raise IndexOutOfRangeError(f"{name}: holds index {value}{where}, but the database has {n} items")


def check_no_repeats(ranks: np.ndarray, name: str) -> None:
    """A ranking lists each database item at most once."""
    if ranks.shape[1] < 2:
        return
    s = np.sort(ranks, axis=1)
    dup = s[:, 1:] == s[:, :-1]
    if dup.any():
        row = int(np.nonzero(dup.any(axis=1))[0][0])
        raise ValueError(f"{name}: query {row} lists the same database item more than once")
