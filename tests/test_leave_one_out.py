"""Every item a query against all items (the leave-one-out protocol of `pycsa eval --labels`):
GNN and k-reciprocal build their graph once over the database, as the protocol means, and
equal the database-only construction of the plain ports; the public code's joint graph
over [queries; database] (each item twice, its own nearest neighbour) stays available."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pycsa
from _baselines import baselines
from pycsa.rerank.gnn import gnn_self_similarity, gnn_similarity_sparse, knn_graph
from pycsa.rerank.kreciprocal import k_reciprocal_features, k_reciprocal_self


def _feats(n, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(1, n // 6), dim))
    X = centers[rng.integers(0, centers.shape[0], n)] + 0.6 * rng.standard_normal((n, dim))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def _euclid(a):
    a = a.astype(np.float64)
    return np.sqrt(((a[:, None, :] - a[None, :, :]) ** 2).sum(-1))


@pytest.mark.parametrize("n,k1,k2,lam", [(3, 20, 6, 0.3), (2, 1, 1, 0.5), (9, 20, 6, 0.3), (37, 5, 3, 0.0),
                                         (60, 20, 6, 0.3), (61, 10, 1, 0.3), (150, 20, 6, 1.0)])
def test_k_reciprocal_self_is_the_database_only_construction(n, k1, k2, lam, device):
    X = _feats(n, seed=n)
    want = baselines.re_ranking_numpy_leave_one_out(_euclid(X), k1=k1, k2=k2, lambda_value=lam)
    got = k_reciprocal_self(torch.from_numpy(X).to(device), k1, k2, lam).cpu().numpy()
    assert got.shape == (n, n)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("n,k1,k2,lam", [(1, 26, 7, 0.0), (2, 1, 1, 0.0), (30, 26, 7, 0.0), (31, 5, 1, 0.3),
                                         (120, 26, 7, 0.0), (97, 11, 3, 1.0)])
def test_gnn_leave_one_out_is_the_database_only_construction(n, k1, k2, lam, device):
    X = torch.from_numpy(_feats(n, seed=n + 1))
    want = baselines.gnn_rerank_dense_torch(X, X, k1=k1, k2=k2, lamb=lam, leave_one_out=True)
    got = pycsa.gnn_rerank(X.to(device), X.to(device), k1, k2, lam, leave_one_out=True).cpu()
    assert got.shape == (n, n)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-5)
    # the torch.sparse path (CUDA builds without pycsa's kernels) gives the same
    S, R = knn_graph(X, min(k1, n))
    sparse = gnn_similarity_sparse(S, R, None, min(k2, k1, n))
    np.testing.assert_allclose(sparse.numpy(), gnn_self_similarity(S, R, min(k2, k1, n)).numpy(), rtol=0, atol=1e-5)


def test_the_public_joint_graph_is_still_the_functions_default():
    X = torch.from_numpy(_feats(40, seed=3))
    joint = baselines.gnn_rerank_dense_torch(X, X, k1=10, k2=3)
    np.testing.assert_allclose(pycsa.gnn_rerank(X, X, 10, 3).numpy(), joint.numpy(), atol=1e-5)
    assert not np.allclose(pycsa.gnn_rerank(X, X, 10, 3, leave_one_out=True).numpy(), joint.numpy(), atol=1e-3)
    # detected when asked to (None): the same array, or equal values in another array
    np.testing.assert_allclose(pycsa.gnn_rerank(X, X.clone(), 10, 3, leave_one_out=None).numpy(),
                               pycsa.gnn_rerank(X, X, 10, 3, leave_one_out=True).numpy())


@pytest.mark.parametrize("name, params", [("gnn", dict(k1=10, k2=3)), ("k_reciprocal", dict(k1=10, k2=3))])
def test_rerankers_detect_leave_one_out(name, params):
    X = _feats(48, seed=5)
    scores, indices = pycsa.search(X, X, 48)
    ranking = pycsa.Ranking(indices, scores)
    auto = pycsa.create(name, **params).rerank(X, X.copy(), ranking)  # equal values, another array
    forced = pycsa.create(name, leave_one_out=True, **params).rerank(X, X, ranking)
    joint = pycsa.create(name, leave_one_out=False, **params).rerank(X, X, ranking)
    np.testing.assert_array_equal(auto.indices, forced.indices)
    assert not np.array_equal(auto.indices, joint.indices)
    if name == "gnn":
        want = baselines.gnn_rerank_dense_torch(X, X, leave_one_out=True, **params).numpy()
    else:
        want = 1 - baselines.re_ranking_numpy_leave_one_out(_euclid(X), lambda_value=0.3, **params)
    top = np.take_along_axis(want, np.asarray(auto.indices), 1)
    np.testing.assert_allclose(np.asarray(auto.scores), top, atol=1e-5)
    assert (np.diff(np.asarray(auto.scores), axis=1) <= 1e-6).all()


def test_k_reciprocal_features_on_the_same_rows_still_doubles_them():
    X = _feats(20, seed=7)
    d = _euclid(X)
    np.testing.assert_allclose(k_reciprocal_features(X, X, 5, 3), baselines.re_ranking_numpy(d, d, d, 5, 3), atol=1e-5)


def test_leave_one_out_needs_matching_shapes():
    X = torch.from_numpy(_feats(10))
    with pytest.raises(ValueError, match="leave_one_out: True needs"):
        pycsa.gnn_rerank(X[:4], X, leave_one_out=True)
    scores, indices = pycsa.search(X[:4], X, 5)
    with pytest.raises(ValueError, match="leave_one_out: True needs"):
        pycsa.create("k_reciprocal", leave_one_out=True).rerank(X[:4], X, pycsa.Ranking(indices, scores))
