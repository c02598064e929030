"""SuperGlobal batched against the plain per-query loop of SPEC §7 (bench/superglobal_plain.py); chains."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pycsa
from _baselines import superglobal_plain


def _data(B=5, n=300, d=24, R=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    Q = torch.nn.functional.normalize(torch.randn(B, d, generator=g), dim=1)
    _, ranks = pycsa.search(Q, X, R)
    return Q, X, ranks


@pytest.mark.parametrize("M, K, beta", [(40, 9, 0.15), (60, 3, 0.5), (1, 9, 0.15), (2, 1, 0.15), (17, 16, 0.15)])
def test_matchessuperglobal_plain(M, K, beta, device):
    Q, X, ranks = _data()
    got = pycsa.superglobal_rerank(Q.to(device), X.to(device), ranks.to(device), M=M, K=K, beta=beta)
    assert got.device.type == device and got.shape == ranks.shape
    assert torch.equal(got.cpu(), superglobal_plain(Q, X, ranks, M, K, beta))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_both_neighbour_routes_agree(dtype):
    # the fused per-list GEMM + top-k (CPU) and the affinity op route (CUDA) on the same
    # lists; both work on the gathered rows in float32, whatever the database's dtype
    from pycsa.rerank.superglobal import _list_neighbours

    Q, X, ranks = _data(B=4, n=200, d=16, R=37, seed=3)
    X[5] = X[7]  # an exact duplicate: a tie in the similarities
    X = X.to(dtype)
    top = ranks[:, :37]
    F = X[top].float()
    for Kn in (1, 9, 36):
        a = _list_neighbours(F, Kn, fused=True)
        b = _list_neighbours(F, Kn, fused=False)
        assert torch.equal(a[1], b[1]) and torch.allclose(a[0], b[0], atol=1e-6)


def test_tail_unchanged_and_numpy_round_trip():
    Q, X, ranks = _data(seed=1)
    got = pycsa.superglobal_rerank(Q.numpy(), X.numpy(), ranks.numpy(), M=20)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got[:, 20:], ranks[:, 20:].numpy())
    for b in range(got.shape[0]):
        assert sorted(got[b, :20].tolist()) == sorted(ranks[b, :20].tolist())


def test_registry_and_chain():
    Q, X, ranks = _data(seed=2)
    s, i = pycsa.search(Q, X, 60)
    new = pycsa.create("superglobal", M=30).rerank(Q, X, pycsa.Ranking(i, s))
    assert torch.equal(new.indices, pycsa.superglobal_rerank(Q, X, i, M=30))
    chain = pycsa.create("alpha_qe+superglobal")
    assert isinstance(chain, pycsa.Chain) and chain.name == "alpha_qe+superglobal"
    both = chain.fit(X).rerank(Q, X, pycsa.Ranking(i, s))
    step = pycsa.create("alpha_qe").rerank(Q, X, pycsa.Ranking(i, s))
    assert torch.equal(both.indices, pycsa.create("superglobal").rerank(Q, X, step).indices)
    with pytest.raises(ValueError, match="chain"):
        pycsa.create("aqe+superglobal", k=3)


def test_bad_input():
    Q, X, ranks = _data()
    with pytest.raises(ValueError, match="ranks"):
        pycsa.superglobal_rerank(Q, X, ranks[:2])
    with pytest.raises(ValueError, match="M"):
        pycsa.superglobal_rerank(Q, X, ranks, M=0)
    with pytest.raises(IndexError, match="ranks"):
        pycsa.superglobal_rerank(Q, X, ranks + 1000)
