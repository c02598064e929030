"""``.npy`` and ``.npz`` files read without pickle, every array's header checked before numpy
allocates it: a 100-byte file whose header claims 10**15 floats is refused by name instead
of raising MemoryError.

An array must fit in the bytes that follow its header, and in this machine's memory (the
budget). A member of a compressed ``.npz`` may expand, but deflate (``np.savez_compressed``)
shrinks data at most about 1032:1, so a member claiming more is damaged or lies.
"""
from __future__ import annotations

import math
import os
import zipfile

import numpy as np
from numpy.lib import format as npy

_DEFLATE_RATIO = 1032


def memory_budget() -> int | None:
    """Bytes of physical memory, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,} bytes" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError  # the loop returns at TiB


def _check_header(fp, where: str, size: int) -> int:
    """Reads the .npy header at the start of ``fp`` (``size`` bytes long) and returns the
    bytes its array needs; ValueError naming ``where`` when it does not fit."""
    try:
        version = npy.read_magic(fp)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"format version {version[0]}.{version[1]} is not read here")
        read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _, dtype = read(fp)
    except ValueError as exc:
        raise ValueError(f"{where}: not a readable .npy array ({exc})") from exc
    if dtype.hasobject:
        raise ValueError(f"{where}: holds Python objects (dtype {dtype}); pycsa reads arrays without pickle, "
                         "which could run code: save plain numeric arrays")
    need, have = math.prod(shape) * dtype.itemsize, size - fp.tell()
    if need > have:
        raise ValueError(f"{where}: its header claims a {dtype} array of shape {shape} ({_bytes(need)}) but only "
                         f"{_bytes(have)} follow: the file is truncated or damaged")
    return need


def _check_budget(path, need: int) -> None:
    budget = memory_budget()
    if budget is not None and need > budget:
        raise ValueError(f"{path}: its arrays need {_bytes(need)}, more than this machine's memory "
                         f"({_bytes(budget)})")


def load_npy(path) -> np.ndarray:
    """The array of a ``.npy`` file; ValueError naming the file when it cannot be read safely."""
    with open(path, "rb") as f:
        _check_budget(path, _check_header(f, str(path), os.fstat(f.fileno()).st_size))
        f.seek(0)
        try:
            return np.load(f, allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"{path}: not a readable .npy file ({exc})") from exc


def load_npz(path) -> dict:
    """The arrays of a ``.npz`` file by key; ValueError naming the file (and the key) when
    it cannot be read safely."""
    try:
        with zipfile.ZipFile(path) as archive:
            need = sum(_check_member(path, archive, info) for info in archive.infolist())
        _check_budget(path, need)
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ValueError as exc:
        if str(exc).startswith(str(path)):  # ours, which name the file and the key
            raise
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - BadZipFile, zlib.error, EOFError, OSError, ...
        raise ValueError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from exc


def _check_member(path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
    where = f"{path}[{key!r}]"
    ratio = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: _DEFLATE_RATIO}.get(info.compress_type)
    if ratio is None:
        raise ValueError(f"{where}: compression method {info.compress_type} is not one numpy writes")
    if info.file_size > ratio * info.compress_size + 1024:  # + 1024: deflate's fixed overhead on tiny members
        raise ValueError(f"{where}: claims {_bytes(info.file_size)} from {_bytes(info.compress_size)} of data: "
                         "the file is damaged")
    with archive.open(info) as member:
        return _check_header(member, where, info.file_size)


def require_dense(t, where: str) -> None:
    """ValueError naming ``where`` for a tensor with no plain values to read as an array
    (sparse, meta, quantized or nested): their ``.numpy()`` and later steps fail with messages
    that name neither the file nor the fix."""
    import torch

    if t.layout != torch.strided:
        raise ValueError(f"{where}: holds a sparse tensor ({t.layout}); save a dense one (.to_dense())")
    for kind, is_it in (("meta", t.is_meta), ("quantized", t.is_quantized), ("nested", t.is_nested)):
        if is_it:
            raise ValueError(f"{where}: holds a {kind} tensor; save a dense one")
