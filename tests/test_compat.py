"""pycsa.compat: each drop-in takes the public function's exact signature and returns what
it returns, held to a plain port of that public code (cited in the port's docstring)."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from pycsa import compat
from _baselines import baselines, gnn_official

re_ranking_numpy = baselines.re_ranking_numpy


def _feats(nq, ng, dim=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = max(1, (nq + ng) // 8)
    centers = torch.randn(ids, dim, generator=g, dtype=torch.float64)
    pick = lambda n: centers[torch.randint(0, ids, (n,), generator=g)] + 0.7 * torch.randn(n, dim, generator=g, dtype=torch.float64)  # noqa: E731
    Q = torch.nn.functional.normalize(pick(nq), dim=1).float()
    G = torch.nn.functional.normalize(pick(ng), dim=1).float()
    return Q, G


@pytest.mark.parametrize("func,params", [
    # the public signatures, parameter names and defaults included
    (compat.gnn_reranking, "(X_q, X_g, k1, k2, lamb=0.3)"),
    (compat.re_ranking, "(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3)"),
    (compat.re_ranking_features, "(query_feats, gallery_feats, k1=20, k2=6, lambda_value=0.3)"),
])
def test_signatures_are_the_public_ones(func, params):
    # the annotations are ours (pycsa is typed); what a caller meets is the same
    sig = inspect.signature(func)
    bare = sig.replace(parameters=[p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()],
                       return_annotation=inspect.Signature.empty)
    assert str(bare) == params


def _assert_same_ranking(got, want, sim, atol=1e-5):
    """Equal indices wherever no near-tie decides: where two rankings differ, the public
    code's similarity of the two items must agree within ``atol``."""
    assert got.shape == want.shape and got.dtype == np.int64
    np.testing.assert_array_equal(np.sort(got, axis=1), np.sort(want, axis=1))
    rows, cols = np.nonzero(got != want)
    if rows.size:
        gap = np.abs(sim[rows, got[rows, cols]] - sim[rows, want[rows, cols]])
        assert gap.max() <= atol, f"{rows.size} positions differ, largest similarity gap {gap.max():.3g}"


@pytest.mark.parametrize("nq,ng,k1,k2,lamb", [
    (7, 29, 26, 7, 0.3),     # Market's k1, k2 with the public default blend
    (40, 300, 26, 7, 0.3),
    (13, 17, 30, 5, 0.3),    # k1 = N
    (7, 29, 11, 1, 0.3),     # k2 == 1: the public code skips the layers
    (11, 60, 20, 6, 0.0),
    (11, 60, 20, 6, 1.0),
    (1, 1, 2, 1, 0.3),
])
def test_gnn_reranking_equals_the_public_code(nq, ng, k1, k2, lamb):
    Q, G = _feats(nq, ng, seed=nq * 31 + ng)
    want = gnn_official.gnn_reranking_official(Q, G, k1, k2, lamb)
    sim = gnn_official.gnn_similarity_official(Q, G, k1, k2, lamb).numpy()
    got = compat.gnn_reranking(Q, G, k1, k2, lamb)  # five positional arguments, as its demo passes them
    assert isinstance(got, np.ndarray)
    _assert_same_ranking(got, want, sim)


def test_gnn_exact_ties_at_the_k1th_neighbour_go_to_the_lower_index():
    # Features in quarters of {-1, 0, 1}: every product is exact in float32 whatever the
    # summation order, so many items tie exactly at their k1-th neighbour. The public topk
    # may keep either item there (one changed neighbour then moves many rows, 2.6e-2 on
    # Market-size data); pycsa keeps the lower index, as the port does with a stable sort.
    import pycsa
    g = torch.Generator().manual_seed(5)
    Z = torch.randint(-1, 2, (90, 16), generator=g).float() / 4
    Q, G = Z[:10], Z[10:]
    k1, k2 = 9, 4
    top = torch.sort(Z @ Z.T, dim=1, descending=True).values
    assert (top[:, k1 - 1] == top[:, k1]).sum() >= 20  # the case is really exercised
    want = gnn_official.gnn_similarity_official(Q, G, k1, k2, 0.3, lower_index_on_ties=True)
    got = torch.as_tensor(pycsa.gnn_rerank(Q, G, k1=k1, k2=k2, lamb=0.3))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_gnn_reranking_four_arguments_blend_as_the_public_default():
    Q, G = _feats(9, 80, seed=3)
    sim = gnn_official.gnn_similarity_official(Q, G, 26, 7).numpy()
    _assert_same_ranking(compat.gnn_reranking(Q, G, 26, 7), gnn_official.gnn_reranking_official(Q, G, 26, 7), sim)
    # and the blend changes the answer on these inputs, so the default is really exercised
    assert not np.array_equal(compat.gnn_reranking(Q, G, 26, 7), compat.gnn_reranking(Q, G, 26, 7, 0.0))


def test_gnn_reranking_returns_numpy_for_every_input_kind(device):
    Q, G = _feats(5, 30, seed=6)
    a = compat.gnn_reranking(Q.to(device), G.to(device), 10, 3)
    b = compat.gnn_reranking(Q.numpy(), G.numpy(), 10, 3)
    assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == np.int64
    np.testing.assert_array_equal(a, b)


def test_re_ranking_equals_the_public_code_on_its_defaults_and_others():
    Q, G = _feats(10, 50, seed=8)
    Q, G = Q.double().numpy(), G.double().numpy()
    ed = lambda a, b: np.sqrt(np.maximum(2 - 2 * a @ b.T, 0))  # noqa: E731
    qg, qq, gg = ed(Q, G), ed(Q, Q), ed(G, G)
    for kw in ({}, {"k1": 7, "k2": 1, "lambda_value": 0.0}, {"k1": 12, "k2": 3, "lambda_value": 0.5}):
        np.testing.assert_allclose(compat.re_ranking(qg, qq, gg, **kw), re_ranking_numpy(qg, qq, gg, **kw),
                                   rtol=0, atol=1e-5)
