"""Loading feature files: every format round-trips, and bad files fail clearly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pycsa.datasets import FeatureSet, load_features, load_retrieval_features


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def qx():
    rng = np.random.default_rng(0)
    return _unit(rng, 7, 16), _unit(rng, 40, 16)


# --------------------------------------------------------------------------- round trips


def test_npy_round_trip(tmp_path, qx):
    _, X = qx
    p = tmp_path / "x.npy"
    np.save(p, X.astype(np.float64))
    got = load_features(p)
    assert got.dtype == np.float32 and np.array_equal(got, X)
    fs = load_retrieval_features(p)
    assert fs.queries_are_database and fs.queries is fs.database and np.array_equal(fs.database, X)
    assert fs.query_labels is None and not fs.has_labels


def test_npz_queries_database(tmp_path, qx):
    Q, X = qx
    p = tmp_path / "f.npz"
    np.savez(p, queries=Q.astype(np.float16), database=X)
    fs = load_retrieval_features(p)
    assert isinstance(fs, FeatureSet) and not fs.queries_are_database and not fs.transposed
    assert fs.queries.dtype == np.float32 and fs.queries.shape == Q.shape
    np.testing.assert_allclose(fs.queries, Q, atol=1e-3)
    assert np.array_equal(fs.database, X)
    assert np.array_equal(load_features(p, key="database"), X)


def test_npz_column_major_cnnimageretrieval(tmp_path, qx):
    Q, X = qx
    p = tmp_path / "cols.npz"
    np.savez(p, qvecs=Q.T, vecs=X.T)  # d x N, as cnnimageretrieval-pytorch saves them
    fs = load_retrieval_features(p)
    assert fs.transposed and fs.keys == {"queries": "qvecs", "database": "vecs"}
    assert np.array_equal(fs.queries, Q) and np.array_equal(fs.database, X)
    assert fs.queries.flags["C_CONTIGUOUS"]


def test_npz_single_matrix_with_labels_and_names(tmp_path, qx):
    _, X = qx
    labels = np.repeat(np.arange(8), 5)
    names = np.array([f"img{i}.png" for i in range(40)])
    p = tmp_path / "mpeg7like.npz"
    np.savez(p, feats=X, labels=labels, names=names, classes=np.array([f"c{i}" for i in range(8)]))
    fs = load_retrieval_features(p)
    assert fs.queries_are_database and np.array_equal(fs.queries, X)
    assert np.array_equal(fs.query_labels, labels) and np.array_equal(fs.db_labels, labels)
    assert list(fs.names) == list(names)
    # load_features picks the only matrix among 1-D arrays
    assert np.array_equal(load_features(p), X)


def test_single_matrix_stored_as_columns_is_transposed_by_labels(tmp_path, qx):
    _, X = qx
    p = tmp_path / "t.npz"
    np.savez(p, feats=X.T, labels=np.arange(40))
    fs = load_retrieval_features(p)
    assert fs.transposed and np.array_equal(fs.database, X)


def test_pt_tensor_and_dict(tmp_path, qx):
    Q, X = qx
    p1, p2 = tmp_path / "x.pt", tmp_path / "d.pt"
    torch.save(torch.from_numpy(X).to(torch.bfloat16), p1)
    got = load_features(p1)
    assert got.dtype == np.float32 and got.shape == X.shape
    np.testing.assert_allclose(got, X, atol=1e-2)
    torch.save({"qvecs": torch.from_numpy(Q), "vecs": torch.from_numpy(X),
                "query_labels": torch.arange(7), "db_labels": torch.arange(40) % 7}, p2)
    fs = load_retrieval_features(p2)
    assert np.array_equal(fs.queries, Q) and np.array_equal(fs.database, X)
    assert fs.query_labels.tolist() == list(range(7)) and fs.db_labels.dtype == np.int64


def test_mat_reid_keys(tmp_path, qx):
    scipy_io = pytest.importorskip("scipy.io")
    Q, X = qx
    p = tmp_path / "pytorch_result.mat"
    scipy_io.savemat(p, {"query_f": Q, "gallery_f": X,
                         "query_label": np.arange(7)[None], "gallery_label": (np.arange(40) % 7)[None],
                         "query_cam": np.ones((1, 7)), "gallery_cam": np.full((1, 40), 2.0)})
    fs = load_retrieval_features(p)
    assert np.array_equal(fs.queries, Q) and np.array_equal(fs.database, X)
    assert fs.query_labels.shape == (7,) and fs.db_labels.shape == (40,)
    assert fs.query_cams.dtype == np.int64 and set(fs.db_cams.tolist()) == {2}
    assert fs.has_labels and fs.has_cams
    assert np.array_equal(load_features(p, key="gallery_f"), X)


# --------------------------------------------------------------------------- errors


def test_missing_file_is_named(tmp_path):
    p = tmp_path / "absent.npz"
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        load_retrieval_features(p)
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        load_features(p)


def test_unknown_extension(tmp_path):
    p = tmp_path / "f.h5"
    p.write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown extension '.h5'"):
        load_features(p)


def test_missing_key_lists_keys(tmp_path, qx):
    Q, X = qx
    p = tmp_path / "f.npz"
    np.savez(p, queries=Q, database=X)
    with pytest.raises(ValueError, match=r"no key 'vecs'.*'queries'.*'database'"):
        load_features(p, key="vecs")
    with pytest.raises(ValueError, match="several arrays"):
        load_features(p)
    np.savez(p, foo=Q, bar=X)
    with pytest.raises(ValueError, match=r"found no feature matrix.*'foo'.*'bar'"):
        load_retrieval_features(p)
    np.savez(p, qvecs=Q, other=X)
    with pytest.raises(ValueError, match="no database matrix"):
        load_retrieval_features(p)


def test_key_on_single_array_file(tmp_path, qx):
    p = tmp_path / "x.npy"
    np.save(p, qx[1])
    with pytest.raises(ValueError, match="single unnamed array"):
        load_features(p, key="feats")


def test_wrong_ndim(tmp_path, qx):
    p = tmp_path / "x.npy"
    np.save(p, np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"2-D.*\(2, 3, 4\)"):
        load_features(p)
    p2 = tmp_path / "f.npz"
    np.savez(p2, queries=np.zeros(16, np.float32), database=qx[1])
    with pytest.raises(ValueError, match="2-D"):
        load_retrieval_features(p2)


def test_dimension_mismatch(tmp_path, qx):
    Q, X = qx
    p = tmp_path / "f.npz"
    np.savez(p, queries=Q[:, :10], database=X)
    with pytest.raises(ValueError, match="no common dimension"):
        load_retrieval_features(p)


def test_label_count_mismatch(tmp_path, qx):
    Q, X = qx
    p = tmp_path / "f.npz"
    np.savez(p, feats=X, labels=np.arange(39))
    with pytest.raises(ValueError, match="39 entries but there are 40 items"):
        load_retrieval_features(p)
    np.savez(p, queries=Q, database=X, query_labels=np.arange(7))
    with pytest.raises(ValueError, match="one side only"):
        load_retrieval_features(p)


def test_nan_is_refused(tmp_path, qx):
    X = qx[1].copy()
    X[3, 4] = np.nan
    p = tmp_path / "x.npy"
    np.save(p, X)
    with pytest.raises(ValueError, match="NaN"):
        load_features(p)
    with pytest.raises(ValueError, match="NaN"):
        load_retrieval_features(p)


def test_non_numeric_and_pickled(tmp_path):
    p = tmp_path / "s.npy"
    np.save(p, np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(TypeError, match="numeric"):
        load_features(p)
    p2 = tmp_path / "o.npy"
    np.save(p2, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="without pickle"):
        load_features(p2)


def test_pt_refuses_code_and_odd_objects(tmp_path):
    p = tmp_path / "list.pt"
    torch.save([torch.zeros(2, 2)], p)
    with pytest.raises(ValueError, match="tensor or a dict"):
        load_features(p)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p2 = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, p2)
    with pytest.raises(ValueError, match="weights_only"):
        load_features(p2)


def test_mat_v73_is_detected(tmp_path):
    # a v7.3 file: a 512-byte MATLAB text header followed by an HDF5 superblock
    p = tmp_path / "big.mat"
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    p.write_bytes(header.ljust(512, b" ") + b"\x89HDF\r\n\x1a\n" + bytes(64))
    with pytest.raises(ValueError, match=r"v7\.3.*h5py"):
        load_features(p)


def test_mat_without_scipy_says_how_to_install(tmp_path, monkeypatch):
    import builtins

    p = tmp_path / "f.mat"
    p.write_bytes(b"MATLAB 5.0 MAT-file".ljust(128, b" "))
    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name == "scipy" or name.startswith("scipy."):
            raise ImportError("No module named 'scipy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    with pytest.raises(ImportError, match="pip install scipy"):
        load_features(p)
