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
    return a.astype(np.int64, copy=False)


def vector(x, name: str, length: int | None = None) -> np.ndarray:
    """A 1-D array, optionally of a required length."""
    a = to_numpy(x, name)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if length is not None and a.shape[0] != length:
        raise ValueError(f"{name}: expected length {length}, got {a.shape[0]}")
    return a


def check_index_range(a: np.ndarray, name: str, n: int | None) -> None:
    """Indices must be non-negative and, when ``n`` is known, below ``n``."""
    if a.size == 0:
        return
    lo, hi = int(a.min()), int(a.max())
    if lo < 0:
        raise ValueError(f"{name}: holds negative index {lo}")
    if n is not None and hi >= n:
        raise ValueError(f"{name}: holds index {hi}, but the database has {n} items")


def check_no_repeats(ranks: np.ndarray, name: str) -> None:
    """A ranking lists each database item at most once."""
    if ranks.shape[1] < 2:
        return
    s = np.sort(ranks, axis=1)
    dup = s[:, 1:] == s[:, :-1]
    if dup.any():
        row = int(np.nonzero(dup.any(axis=1))[0][0])
        raise ValueError(f"{name}: query {row} lists the same database item more than once")
