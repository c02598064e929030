"""pycsa.gnn_rerank and pycsa.compat.gnn_reranking against the dense torch baseline (SPEC §3)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pycsa
from _baselines import baselines

gnn_rerank_dense_torch = baselines.gnn_rerank_dense_torch


def _feats(nq, ng, dim=24, seed=0):
    """Clustered continuous features, L2-normalised float32 torch (no ties in Z Zᵀ)."""
    g = torch.Generator().manual_seed(seed)
    num_ids = max(1, (nq + ng) // 8)
    centers = torch.randn(num_ids, dim, generator=g, dtype=torch.float64)
    Q = centers[torch.randint(0, num_ids, (nq,), generator=g)] + 0.7 * torch.randn(nq, dim, generator=g, dtype=torch.float64)
    G = centers[torch.randint(0, num_ids, (ng,), generator=g)] + 0.7 * torch.randn(ng, dim, generator=g, dtype=torch.float64)
    Q = torch.nn.functional.normalize(Q, dim=1).float()
    G = torch.nn.functional.normalize(G, dim=1).float()
    return Q, G


def _np(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


CASES = [
    # (q, g, k1, k2, lamb)
    (1, 1, 26, 7, 0.0),  # N = 2: k1 clamps to 2, k2 to 2
    (7, 29, 26, 7, 0.0),
    (7, 29, 5, 1, 0.0),  # k2 = 1 (SPEC §3: both layers still run)
    (7, 29, 11, 3, 0.3),  # blended with Q Gᵀ
    (13, 17, 100, 50, 0.0),  # k1 > N = 30 clamps to N, k2 to k1
    (40, 300, 26, 7, 0.0),
    (40, 300, 26, 7, 1.0),
    (41, 251, 60, 10, 0.3),  # the vehicle defaults
]


@pytest.mark.parametrize("nq,ng,k1,k2,lamb", CASES)
def test_matches_dense_baseline(device, nq, ng, k1, k2, lamb):
    Q, G = _feats(nq, ng, seed=nq * 1000 + ng)
    want = gnn_rerank_dense_torch(Q, G, k1=k1, k2=k2, lamb=lamb)
    got = pycsa.gnn_rerank(Q.to(device), G.to(device), k1=k1, k2=k2, lamb=lamb)
    got = _np(got)
    assert got.shape == (nq, ng)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("nq,ng,k1,k2,lamb", CASES)
def test_torch_sparse_path_matches_the_kernels(device, nq, ng, k1, k2, lamb):
    # the fallback CUDA path (torch.sparse), run here on every device against the C++ kernels
    from pycsa.rerank.gnn import gnn_similarity, gnn_similarity_sparse, knn_graph

    Q, G = _feats(nq, ng, seed=nq * 1000 + ng + 1)
    Z = torch.cat([Q, G])
    k1 = min(k1, Z.shape[0])
    S, R = knn_graph(Z, k1)
    want = gnn_similarity(S, R, nq, min(k2, k1))
    got = gnn_similarity_sparse(S.to(device), R.to(device), nq, min(k2, k1))
    assert got.shape == (nq, ng) and got.device.type == device
    np.testing.assert_allclose(_np(got), want.numpy(), rtol=0, atol=1e-5)


def test_defaults_are_the_papers():
    Q, G = _feats(9, 70, seed=4)
    np.testing.assert_allclose(_np(pycsa.gnn_rerank(Q, G)), gnn_rerank_dense_torch(Q, G, 26, 7).numpy(), atol=1e-5)


def test_lamb_is_a_blend_with_plain_similarity():
    Q, G = _feats(6, 40, seed=9)
    a = _np(pycsa.gnn_rerank(Q, G, k1=10, k2=4, lamb=0.0))
    b = _np(pycsa.gnn_rerank(Q, G, k1=10, k2=4, lamb=0.3))
    np.testing.assert_allclose(b, 0.7 * a + 0.3 * (Q @ G.T).numpy(), rtol=0, atol=1e-5)


def test_numpy_in_numpy_out_and_torch_stays_on_device(device):
    Q, G = _feats(5, 30, seed=6)
    out = pycsa.gnn_rerank(Q.numpy(), G.numpy(), k1=8, k2=3)
    assert isinstance(out, np.ndarray) and out.shape == (5, 30)
    t = pycsa.gnn_rerank(Q.to(device), G.to(device), k1=8, k2=3)
    assert isinstance(t, torch.Tensor) and t.device.type == device
    np.testing.assert_allclose(_np(t), out, rtol=0, atol=1e-5)


@pytest.mark.parametrize("nq,ng,k1,k2", [(1, 1, 26, 7), (7, 29, 26, 7), (40, 300, 26, 7), (13, 17, 100, 50)])
def test_compat_gnn_reranking_is_the_ranking(device, nq, ng, k1, k2):
    from pycsa import compat

    Q, G = _feats(nq, ng, seed=nq * 7 + ng)
    sim = gnn_rerank_dense_torch(Q, G, k1=k1, k2=k2).numpy()
    order = _np(compat.gnn_reranking(Q.to(device), G.to(device), k1, k2, lamb=0.0))
    assert order.shape == (nq, ng)
    assert np.issubdtype(order.dtype, np.integer)
    # every row a permutation of the gallery
    np.testing.assert_array_equal(np.sort(order, axis=1), np.broadcast_to(np.arange(ng), (nq, ng)))
    # compare similarity values along the returned order, not raw indices (near-ties may swap)
    along = np.take_along_axis(sim, order, axis=1)
    assert (np.diff(along, axis=1) <= 1e-5).all()
    np.testing.assert_allclose(along, -np.sort(-sim, axis=1), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda Q, G: (Q, G[:, :5]), "query_feats|gallery_feats"),  # dims differ
        (lambda Q, G: (Q.reshape(-1), G), "query_feats"),  # 1-D
        (lambda Q, G: (Q, G.reshape(-1)), "gallery_feats"),
        (lambda Q, G: (Q.index_put((torch.tensor([0]), torch.tensor([1])), torch.tensor(float("nan"))), G), "query_feats"),
        (lambda Q, G: (Q, G.index_put((torch.tensor([2]), torch.tensor([0])), torch.tensor(float("nan")))), "gallery_feats"),
    ],
)
def test_bad_features_raise(make, match):
    Q, G = _feats(4, 12, seed=1)
    with pytest.raises(ValueError, match=match):
        pycsa.gnn_rerank(*make(Q, G))


@pytest.mark.parametrize("kwargs,match", [({"k1": 0}, "k1"), ({"k2": 0}, "k2"), ({"lamb": -0.5}, "lamb"), ({"lamb": 2.0}, "lamb")])
def test_bad_parameters_raise(kwargs, match):
    Q, G = _feats(4, 12, seed=1)
    with pytest.raises(ValueError, match=match):
        pycsa.gnn_rerank(Q, G, **kwargs)
