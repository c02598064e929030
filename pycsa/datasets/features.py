"""Load feature matrices written by retrieval and re-ID code: ``.npy``, ``.npz``, ``.pt`` and ``.mat``.

Two entry points:

* :func:`load_features` reads ONE matrix (rows as stored) as float32;
* :func:`load_retrieval_features` reads a whole evaluation file into a
  :class:`FeatureSet`: queries, database and, where the file has them,
  labels, cameras and item names, with rows as items.

Keys :func:`load_retrieval_features` recognises (first match wins):

==============  ============================================================
role            keys
==============  ============================================================
queries         ``query_f``, ``queries``, ``qvecs``, ``query``, ``query_feats``, ``query_features``
database        ``gallery_f``, ``database``, ``vecs``, ``gallery``, ``db``, ``db_feats``,
                ``database_features``, ``gallery_features``
single matrix   ``feats``, ``features``, ``embeddings``, ``descriptors``, ``X``
                (or the file's only 2-D numeric array)
query labels    ``query_label``, ``query_labels``, ``qlabels``, ``q_labels``
database labels ``gallery_label``, ``gallery_labels``, ``db_labels``, ``database_labels``, ``labels``
query cameras   ``query_cam``, ``query_cams``, ``q_cams``
database cams   ``gallery_cam``, ``gallery_cams``, ``db_cams``
names           ``names`` (with a single matrix, or when it has one entry per database item)
==============  ============================================================

Index-based re-ID files hold one matrix of every image with per-image identities and
cameras, and say which rows are queries and which the gallery:

==============  ============================================================
query rows      ``query_idx`` (0-based row numbers; 1-based in ``.mat`` files)
gallery rows    ``gallery_idx``
identities      ``pids``, ``labels``, ``label``
cameras         ``cams``, ``camids``, ``camId``, ``cam_ids``
splits          ``test_pids_splits`` (optional): S x P, the test identities of
                each of S splits; :meth:`FeatureSet.splits` gives one set per
                split and ``pycsa eval`` averages their scores
==============  ============================================================

Such a file is never read as class retrieval: a missing key is an error that names it.

With a single matrix, every item is a query against all the others (as for
MPEG-7): ``queries`` and ``database`` are the same array and
``queries_are_database`` is True; ``labels`` then serves both sides.

Orientation rule. cnnimageretrieval-pytorch stores ``qvecs``/``vecs`` as
``d x N`` columns. With two matrices, rows are items when their column counts
(the dimension) agree; when they do not but their ROW counts agree, both are
taken as ``d x N`` and transposed. A single matrix is transposed only when the
file has labels whose count matches its column count and not its row count.
Otherwise the layout is used as stored. When the two matrices have the same shape the
shapes cannot tell: query and database labels decide where their counts fit one
orientation only; else ``qvecs``/``vecs`` are taken as ``d x N`` (the Revisited
convention) and other keys as rows. ``FeatureSet.transposed`` reports it.

``.pt`` files are read with ``torch.load(..., weights_only=True)`` (a tensor or
a dict of tensors; no code in the file runs); ``.npy``/``.npz`` without pickle.
``.mat`` needs scipy; MATLAB v7.3 files are HDF5 and are not read.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np

from .._types import ArrayLike, PathLike
from ._arrays import load_npy, load_npz, require_dense

__all__ = ["FeatureSet", "load_features", "load_retrieval_features", "SUPPORTED_EXTENSIONS"]

SUPPORTED_EXTENSIONS = (".npy", ".npz", ".pt", ".pth", ".mat")

_QUERY_KEYS = ("query_f", "queries", "qvecs", "query", "query_feats", "query_features")
_DB_KEYS = ("gallery_f", "database", "vecs", "gallery", "db", "db_feats", "database_features", "gallery_features")
_SINGLE_KEYS = ("feats", "features", "embeddings", "descriptors", "X")
_QLABEL_KEYS = ("query_label", "query_labels", "qlabels", "q_labels")
_DBLABEL_KEYS = ("gallery_label", "gallery_labels", "db_labels", "database_labels", "labels")
_QCAM_KEYS = ("query_cam", "query_cams", "q_cams")
_DBCAM_KEYS = ("gallery_cam", "gallery_cams", "db_cams")

# index-based re-ID files (one matrix, rows picked as queries and gallery)
_QIDX_KEYS, _GIDX_KEYS = ("query_idx",), ("gallery_idx",)
_PID_KEYS = ("pids", "labels", "label")
_CAM_KEYS = ("cams", "camids", "camId", "cam_ids")
_SPLIT_KEYS = ("test_pids_splits",)
_INDEX_REID_MARKERS = _QIDX_KEYS + _GIDX_KEYS + _SPLIT_KEYS

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass
class FeatureSet:
    """Features ready for evaluation: rows are items, float32."""

    queries: np.ndarray
    """q x d float32."""
    database: np.ndarray
    """n x d float32 (the same array as ``queries`` when ``queries_are_database``)."""
    query_labels: Optional[np.ndarray] = None
    """q labels (class or identity), or None."""
    db_labels: Optional[np.ndarray] = None
    """n labels, or None."""
    query_cams: Optional[np.ndarray] = None
    """q camera ids (re-ID), or None."""
    db_cams: Optional[np.ndarray] = None
    """n camera ids (re-ID), or None."""
    names: Optional[np.ndarray] = None
    """n item names, or None."""
    queries_are_database: bool = False
    """True when the file held one matrix: query i is database item i."""
    transposed: bool = False
    """True when the matrices were stored as d x N columns and were transposed."""
    keys: dict = field(default_factory=dict)
    """Which key of the file filled which role, e.g. ``{"queries": "qvecs", "database": "vecs"}``."""
    split_pids: Optional[list] = None
    """Index-based re-ID files with ``test_pids_splits``: the test identities of each split."""

    def splits(self) -> list:
        """One feature set per evaluation split (queries and gallery restricted to the split's
        identities), or ``[self]`` when the file defines no splits."""
        if self.split_pids is None:
            return [self]
        out = []
        for s, pids in enumerate(self.split_pids):
            q, g = np.isin(self.query_labels, pids), np.isin(self.db_labels, pids)
            if not g.any():  # a set split_pids, not checked by the loader
                raise ValueError(f"split_pids: split {s} names no identity of the gallery (db_labels): "
                                 "it has no gallery items to rank")
            out.append(replace(self, queries=self.queries[q], database=self.database[g],
                               query_labels=self.query_labels[q], db_labels=self.db_labels[g],
                               query_cams=self.query_cams[q], db_cams=self.db_cams[g],
                               names=None, split_pids=None))
        return out

    @property
    def has_labels(self) -> bool:
        return self.query_labels is not None and self.db_labels is not None

    @property
    def has_cams(self) -> bool:
        return self.query_cams is not None and self.db_cams is not None

    def class_half_rows(self, part: str) -> np.ndarray:
        """Rows of the first or the second half of the classes (sorted label ids; negative
        labels, distractors, are dropped): a class-disjoint train/test split. Only for
        sets whose queries are the database (one labelled matrix)."""
        if part not in ("first", "second"):
            raise ValueError(f"part: expected 'first' or 'second', got {part!r}")
        if not (self.queries_are_database and self.has_labels):
            raise ValueError("a class split needs one labelled matrix (every item a query against the others)")
        classes = np.unique(self.db_labels[self.db_labels >= 0])
        if classes.size < 2:
            raise ValueError(f"a class split needs at least 2 classes, found {classes.size}")
        half = classes.size // 2
        return np.nonzero(np.isin(self.db_labels, classes[:half] if part == "first" else classes[half:]))[0]

    def class_half(self, part: str) -> "FeatureSet":
        """The items of :meth:`class_half_rows`, as a feature set of their own."""
        return self.subset(self.class_half_rows(part))

    def subset(self, rows: ArrayLike) -> "FeatureSet":
        """The given items of a labelled set whose queries are the database, in that order."""
        if not (self.queries_are_database and self.has_labels):
            raise ValueError("subset: needs one labelled matrix (every item a query against the others)")
        X, y = self.database[rows], self.db_labels[rows]
        return replace(self, queries=X, database=X, query_labels=y, db_labels=y,
                       names=None if self.names is None else self.names[rows])


# --------------------------------------------------------------------------- reading


def _check_path(path) -> Path:
    path = Path(os.fspath(path))
    if not path.exists():
        raise FileNotFoundError(f"features file not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, expected a features file")
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise ValueError(f"{path}: unknown extension {path.suffix!r}; supported: {', '.join(SUPPORTED_EXTENSIONS)}")
    return path


def _read_npy(path: Path) -> dict:
    return {None: load_npy(path)}


def _tensor_to_numpy(value, where: str):
    import torch

    if isinstance(value, torch.Tensor):
        require_dense(value, where)
        value = value.detach().cpu()
        if value.is_floating_point() and value.dtype not in (torch.float16, torch.float32, torch.float64):
            value = value.float()  # bfloat16 and the float8 types have no numpy dtype; float32 holds them exactly
        return value.numpy()
    return np.asarray(value)


def _read_pt(path: Path) -> dict:
    import torch

    from .._safe_load import load_weights_only

    obj = load_weights_only(path, "features", "a features file")
    if isinstance(obj, torch.Tensor):
        return {None: _tensor_to_numpy(obj, str(path))}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            where = f"{path}[{str(k)!r}]"
            try:
                out[str(k)] = _tensor_to_numpy(v, where)
            except Exception as exc:  # noqa: BLE001
                if str(exc).startswith(where):  # ours, which names the entry
                    raise
                raise ValueError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor or array") from exc
        return out
    raise ValueError(f"{path}: holds a {type(obj).__name__}; expected a tensor or a dict of tensors")


def _is_mat_v73(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(520)
    return (
        head.startswith(_HDF5_SIGNATURE)
        or head[512:520] == _HDF5_SIGNATURE
        or head[:20].startswith(b"MATLAB 7.3")
    )


def _read_mat(path: Path) -> dict:
    if _is_mat_v73(path):
        raise ValueError(
            f"{path}: is a MATLAB v7.3 (HDF5) file, which scipy cannot read; re-save it in MATLAB with "
            "save(..., '-v7') or scipy.io.savemat, or read it with h5py and save an .npz"
        )
    try:
        import scipy.io
    except ImportError as exc:
        raise ImportError(f"reading {path} (.mat) needs scipy: pip install scipy") from exc
    try:
        data = scipy.io.loadmat(path)
    except NotImplementedError as exc:  # scipy's own message for v7.3 files
        raise ValueError(f"{path}: is a MATLAB v7.3 (HDF5) file; re-save it with -v7 or read it with h5py") from exc
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path}: not a readable .mat file ({exc})") from exc
    return {k: np.asarray(v) for k, v in data.items() if not k.startswith("__")}


def _read_arrays(path) -> tuple[Path, dict]:
    """The file's arrays by key; a file holding one bare array uses the key None."""
    path = _check_path(path)
    ext = path.suffix.lower()
    reader = {".npy": _read_npy, ".npz": load_npz, ".pt": _read_pt, ".pth": _read_pt, ".mat": _read_mat}[ext]
    arrays = reader(path)
    if not arrays:
        raise ValueError(f"{path}: holds no arrays")
    return path, arrays


def _keys_text(arrays: dict) -> str:
    return ", ".join(f"{k!r} {tuple(v.shape)}" for k, v in arrays.items()) or "none"


# --------------------------------------------------------------------------- checking


def _as_matrix(a: np.ndarray, where: str) -> np.ndarray:
    if a.ndim != 2:
        raise ValueError(f"{where}: expected a 2-D feature matrix (items x dim), got shape {a.shape}")
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{where}: expected numeric features, got dtype {a.dtype}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{where}: is empty (shape {a.shape})")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{where}: contains NaN or inf")
    return a


def _as_vector(a: np.ndarray, where: str, length: int) -> np.ndarray:
    # MATLAB writes vectors as 1 x N (or N x 1) matrices
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1:
        raise ValueError(f"{where}: expected a vector (or a 1 x N matrix), got shape {a.shape}")
    if a.shape[0] != length:
        raise ValueError(f"{where}: has {a.shape[0]} entries but there are {length} items")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ValueError(f"{where}: contains NaN or inf")
        if np.array_equal(a, np.round(a)):  # MATLAB stores integer ids as doubles
            a = a.astype(np.int64)
    elif a.dtype.kind in "iub":
        a = a.astype(np.int64)
    return a


def _pick(arrays: dict, candidates: tuple) -> Optional[str]:
    for k in candidates:
        if k in arrays:
            return k
    return None


def load_features(path: PathLike, key: Optional[str] = None) -> np.ndarray:
    """One feature matrix from ``path`` as float32, rows as stored.

    ``key`` names the array in a ``.npz``, ``.mat`` or dict-``.pt`` file. Without
    it the file must hold a single array, or a single 2-D numeric array among
    others (labels and names are 1-D). ``.npy`` files and ``.pt`` files holding
    a bare tensor take no key.

    Raises ``FileNotFoundError`` naming a missing file; ``ValueError`` for an
    unknown extension, a missing key (listing the keys present), an array that
    is not 2-D or is empty, or NaN/inf values; ``TypeError`` for a non-numeric
    array; ``ImportError`` for ``.mat`` without scipy.
    """
    path, arrays = _read_arrays(path)
    if None in arrays:
        if key is not None:
            raise ValueError(f"{path}: holds a single unnamed array, so key={key!r} does not apply; omit key")
        return _as_matrix(arrays[None], str(path))
    if key is None:
        matrices = [k for k, v in arrays.items() if v.ndim == 2 and v.dtype.kind in "fiu" and min(v.shape) > 1]
        if len(arrays) == 1:
            key = next(iter(arrays))
        elif len(matrices) == 1:
            key = matrices[0]
        else:
            raise ValueError(f"{path}: holds several arrays; pass key= one of: {_keys_text(arrays)}")
    if key not in arrays:
        raise ValueError(f"{path}: has no key {key!r}; keys present: {_keys_text(arrays)}")
    return _as_matrix(arrays[key], f"{path}[{key!r}]")


def load_retrieval_features(path: PathLike) -> FeatureSet:
    """Queries, database and their labels/cameras/names from one file (see the module docstring).

    Raises ``FileNotFoundError`` naming a missing file and ``ValueError`` for an
    unknown extension, a file without recognised feature keys (listing the keys
    present), matrices that are not 2-D, query/database dimensions that differ
    in either orientation, label/camera/name counts that do not match their
    items, labels or cameras given for one side only, and NaN/inf values.
    """
    path, arrays = _read_arrays(path)
    if None in arrays:  # .npy or a bare tensor: one unlabelled matrix
        X = _as_matrix(arrays[None], str(path))
        return FeatureSet(queries=X, database=X, queries_are_database=True)
    if any(k in arrays for k in _INDEX_REID_MARKERS):
        return _index_reid_set(path, arrays)

    def need_2d(key: str) -> np.ndarray:
        a = arrays[key]
        if a.ndim != 2:
            raise ValueError(f"{path}[{key!r}]: expected a 2-D feature matrix, got shape {a.shape}")
        return a

    keys: dict = {}
    qk, dk = _pick(arrays, _QUERY_KEYS), _pick(arrays, _DB_KEYS)
    transposed = False
    if qk is not None or dk is not None:
        if qk is None or dk is None:
            have, missing = ("queries", "database") if qk else ("database", "queries")
            raise ValueError(
                f"{path}: has {have} ({qk or dk!r}) but no {missing} matrix (looked for "
                f"{', '.join(_DB_KEYS if qk else _QUERY_KEYS)}); keys present: {_keys_text(arrays)}"
            )
        Qr, Xr = need_2d(qk), need_2d(dk)
        if Qr.shape == Xr.shape:  # both orientations fit the shapes
            transposed = _same_shape_transposed(path, arrays, qk, dk, Qr.shape)
            if transposed:
                Qr, Xr = Qr.T, Xr.T
        elif Qr.shape[1] == Xr.shape[1]:
            pass
        elif Qr.shape[0] == Xr.shape[0]:  # d x N columns (cnnimageretrieval)
            Qr, Xr, transposed = Qr.T, Xr.T, True
        else:
            raise ValueError(
                f"{path}: queries {qk!r} {Qr.shape} and database {dk!r} {Xr.shape} have no common "
                "dimension (neither as rows nor as d x N columns)"
            )
        suffix = " (transposed)" if transposed else ""
        Q = _as_matrix(Qr, f"{path}[{qk!r}]{suffix}")
        X = _as_matrix(Xr, f"{path}[{dk!r}]{suffix}")
        keys.update(queries=qk, database=dk)
        single = False
    else:
        sk = _pick(arrays, _SINGLE_KEYS)
        if sk is None:
            matrices = [k for k, v in arrays.items() if v.ndim == 2 and v.dtype.kind in "fiu" and min(v.shape) > 1]
            if len(matrices) != 1:
                raise ValueError(
                    f"{path}: found no feature matrix; expected queries/database keys ({', '.join(_QUERY_KEYS)} / "
                    f"{', '.join(_DB_KEYS)}) or one matrix ({', '.join(_SINGLE_KEYS)}); keys present: {_keys_text(arrays)}"
                )
            sk = matrices[0]
        Xr = need_2d(sk)
        lk = _pick(arrays, _DBLABEL_KEYS)
        if lk is not None:
            n_lab = arrays[lk].size
            if Xr.shape[0] != n_lab and Xr.shape[1] == n_lab:
                Xr, transposed = Xr.T, True
        X = _as_matrix(Xr, f"{path}[{sk!r}]" + (" (transposed)" if transposed else ""))
        Q = X
        keys.update(queries=sk, database=sk)
        single = True

    fs = FeatureSet(queries=Q, database=X, queries_are_database=single, transposed=transposed, keys=keys)

    def side_vectors(role: str, q_keys: tuple, d_keys: tuple):
        kq, kd = _pick(arrays, q_keys), _pick(arrays, d_keys)
        if single:
            if kd is None:
                kd = kq
            if kd is None:
                return None, None
            v = _as_vector(arrays[kd], f"{path}[{kd!r}]", X.shape[0])
            keys[role] = kd
            return v, v
        if kq is None and kd is None:
            return None, None
        if kq is None or kd is None:
            have = kq or kd
            raise ValueError(
                f"{path}: has {role} for one side only ({have!r}); need both query and database {role} "
                f"(query: {', '.join(q_keys)}; database: {', '.join(d_keys)})"
            )
        keys[f"query_{role}"], keys[f"db_{role}"] = kq, kd
        return (_as_vector(arrays[kq], f"{path}[{kq!r}]", Q.shape[0]),
                _as_vector(arrays[kd], f"{path}[{kd!r}]", X.shape[0]))

    fs.query_labels, fs.db_labels = side_vectors("labels", _QLABEL_KEYS, _DBLABEL_KEYS)
    fs.query_cams, fs.db_cams = side_vectors("cams", _QCAM_KEYS, _DBCAM_KEYS)
    if "names" in arrays:
        names = arrays["names"].reshape(-1) if arrays["names"].ndim == 2 and 1 in arrays["names"].shape else arrays["names"]
        if names.ndim == 1 and names.shape[0] == X.shape[0]:
            fs.names = names
            keys["names"] = "names"
        elif single:
            raise ValueError(f"{path}['names']: has shape {arrays['names'].shape} but there are {X.shape[0]} items")
    return fs


def _same_shape_transposed(path: Path, arrays: dict, qk: str, dk: str, shape: tuple) -> bool:
    """Whether queries and database of one shape are stored as d x N columns: the shapes
    cannot tell, so the labels decide where their counts fit one orientation only, else the
    Revisited keys (qvecs/vecs, which cnnimageretrieval writes as d x N); other keys as rows."""
    lq, ld = _pick(arrays, _QLABEL_KEYS), _pick(arrays, _DBLABEL_KEYS)
    if lq is not None and ld is not None:
        counts = (arrays[lq].size, arrays[ld].size)
        as_rows, as_cols = counts == (shape[0], shape[0]), counts == (shape[1], shape[1])
        if as_rows != as_cols:
            return as_cols
    # qvecs/vecs: cnnimageretrieval writes them as d x N; every other key holds rows (items),
    # pycsa's convention and what such files were always read as
    return (qk, dk) == ("qvecs", "vecs")


def _index_reid_set(path: Path, arrays: dict) -> FeatureSet:
    """An index-based re-ID file (see the module docstring) as queries and gallery."""
    def need(role: str, candidates: tuple) -> str:
        k = _pick(arrays, candidates)
        if k is None:
            raise ValueError(f"{path}: looks like an index-based re-ID file (it has "
                             f"{', '.join(k for k in _INDEX_REID_MARKERS if k in arrays)}) but has no {role} "
                             f"(looked for {', '.join(candidates)}); keys present: {_keys_text(arrays)}")
        return k

    qk, gk = need("query rows", _QIDX_KEYS), need("gallery rows", _GIDX_KEYS)
    fk = _pick(arrays, _SINGLE_KEYS)
    if fk is None:
        matrices = [k for k, v in arrays.items() if v.ndim == 2 and v.dtype.kind == "f" and min(v.shape) > 1]
        if len(matrices) != 1:
            raise ValueError(f"{path}: index-based re-ID file without one feature matrix (looked for "
                             f"{', '.join(_SINGLE_KEYS)}); keys present: {_keys_text(arrays)}")
        fk = matrices[0]
    X = _as_matrix(arrays[fk], f"{path}[{fk!r}]")
    n = X.shape[0]
    pk, ck = need("identities", _PID_KEYS), need("cameras", _CAM_KEYS)
    pids = _as_vector(arrays[pk], f"{path}[{pk!r}]", n)
    cams = _as_vector(arrays[ck], f"{path}[{ck!r}]", n)
    base = 1 if path.suffix.lower() == ".mat" else 0  # MATLAB files count rows from 1

    def rows(key: str) -> np.ndarray:
        a = np.asarray(arrays[key])
        a = a.reshape(-1) if a.ndim == 2 and 1 in a.shape else a
        if a.ndim != 1 or a.size == 0 or a.dtype.kind not in "iuf" or (a.dtype.kind == "f" and not np.array_equal(a, np.round(a))):
            raise ValueError(f"{path}[{key!r}]: expected a non-empty vector of row numbers, got {a.dtype} {a.shape}")
        a = a.astype(np.int64) - base
        if a.min() < 0 or a.max() >= n:
            raise ValueError(f"{path}[{key!r}]: row numbers must lie in [{base}, {n - 1 + base}] "
                             f"({'1' if base else '0'}-based, {n} feature rows), got {a.min() + base}..{a.max() + base}")
        return a

    qi, gi = rows(qk), rows(gk)
    fs = FeatureSet(queries=X[qi], database=X[gi], query_labels=pids[qi], db_labels=pids[gi],
                    query_cams=cams[qi], db_cams=cams[gi],
                    keys={"features": fk, "query_rows": qk, "gallery_rows": gk, "labels": pk, "cams": ck})
    sk = _pick(arrays, _SPLIT_KEYS)
    if sk is not None:
        splits = np.asarray(arrays[sk])
        splits = splits[None] if splits.ndim == 1 else splits
        if splits.ndim != 2 or splits.size == 0 or splits.dtype.kind not in "iuf":
            raise ValueError(f"{path}[{sk!r}]: expected S x P identities (one row per split), got {splits.dtype} {splits.shape}")
        for s, split in enumerate(splits):
            if not np.isin(split, fs.query_labels).any():
                raise ValueError(f"{path}[{sk!r}]: split {s} names no identity of the queries")
            # else its search would ask for the top 0 of an empty gallery ("k: ... got 0")
            if not np.isin(split, fs.db_labels).any():
                raise ValueError(f"{path}[{sk!r}]: split {s} names no identity of the gallery (it has no gallery "
                                 "items to rank)")
        fs.split_pids = [np.asarray(split) for split in splits]
        fs.keys["splits"] = sk
    return fs
