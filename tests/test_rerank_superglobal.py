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


# --- against the public code (bench/superglobal_official.py: a plain port of
# ShihaoShao-GH/SuperGlobal modules/reranking/{MDescAug,RerankwMDA}.py @ 6db11a7c) ---

def _official():
    from _baselines import _load

    return _load("superglobal_official")


# (M, K, refine): the public code pools the K+1 best refined descriptors into q', pycsa
# ``refine`` (10) whatever K is; they agree at K=9 and, for another K, with refine=K+1
@pytest.mark.parametrize("M, K, refine", [(50, 9, 10), (300, 9, 10), (50, 3, 4), (7, 9, 10)])
def test_matches_superglobal_official(M, K, refine):
    from pycsa.rerank.superglobal import superglobal_scores

    official = _official()
    g = torch.Generator().manual_seed(M + K)
    X = torch.nn.functional.normalize(torch.randn(300, 32, generator=g), dim=1)  # unit rows, as in
    Q = torch.nn.functional.normalize(torch.randn(5, 32, generator=g), dim=1)    # the public code
    _, ranks = pycsa.search(Q, X, 300)
    want, want_scores = official.superglobal_official_scores(Q, X, ranks, M=M, K=K, beta=0.15)
    got = pycsa.superglobal_rerank(Q, X, ranks, M=M, K=K, beta=0.15, refine=refine)
    assert torch.equal(got[:, M:], ranks[:, M:])
    got = got[:, :M]
    assert want.dtype == torch.int64 and want.shape == got.shape == (5, M)
    # the scores themselves: pycsa's float64 against the public float32
    mine = superglobal_scores(Q, X, ranks[:, :M], K, 0.15, refine)
    for b in range(5):
        score_of = dict(zip(want[b].tolist(), want_scores[b].double().tolist()))
        assert sorted(score_of) == sorted(got[b].tolist())
        theirs = torch.tensor([score_of[i] for i in ranks[b, :M].tolist()], dtype=torch.float64)
        torch.testing.assert_close(mine[b], theirs, atol=1e-5, rtol=0)
        # rank by rank: a difference only where the two items' public scores nearly tie
        for p in range(M):
            i, j = int(got[b, p]), int(want[b, p])
            assert i == j or abs(score_of[i] - score_of[j]) < 1e-5, (b, p, i, j)
    if refine != 10:  # pycsa's default pool of 10 is not the public K+1 (here most positions move)
        assert not torch.equal(pycsa.superglobal_rerank(Q, X, ranks, M=M, K=K)[:, :M], want)


def test_official_weight_one_goes_to_the_most_similar_not_to_the_candidate():
    # The one difference in the maths: the public MDescAug gives weight 1 to the FIRST of
    # each candidate's K+1 most similar list members (by inner product) and β·s to the
    # rest, without checking that the first is the candidate itself; pycsa always weighs the
    # candidate itself 1 and its K most similar others β·s. With unit rows the two coincide
    # (test above); here u and 2u (K=1, M=2) and the query u:
    #   public: d'_u  = (2u + β·1·u) / (1 + β)      (2u is u's most similar: u·2u = 2 > u·u)
    #           d'_2u = (2u + β·2·u) / (1 + 2β)
    #   pycsa:  d'_u  = (u + β·2·2u) / (1 + 2β),   d'_2u as above;
    # each d'_i = c_i u, q' = max_i c_i u (both pooled), final_i = c_i (q·u + max c) / 2.
    official = _official()
    from pycsa.rerank.superglobal import superglobal_scores

    beta = 0.15
    u = torch.nn.functional.normalize(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), dim=1)
    X, Q, ranks = torch.cat([u, 2 * u]), u.clone(), torch.tensor([[0, 1]])
    c_2u = 2 * (1 + beta) / (1 + 2 * beta)

    def final(c):
        return [ci * (1 + max(c)) / 2 for ci in c]

    public = final([(2 + beta) / (1 + beta), c_2u])  # u first: 1.870 > 1.769
    ours = final([(1 + 4 * beta) / (1 + 2 * beta), c_2u])  # 2u first: 1.231 < 1.769
    new, scores = official.superglobal_official_scores(Q, X, ranks, M=2, K=1, beta=beta)
    assert new.tolist() == [[0, 1]]
    torch.testing.assert_close(scores[0].double(), torch.tensor(public, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(superglobal_scores(Q, X, ranks, 1, beta, 10)[0],
                               torch.tensor(ours, dtype=torch.float64), atol=1e-6, rtol=0)
    assert pycsa.superglobal_rerank(Q, X, ranks, M=2, K=1, beta=beta).tolist() == [[1, 0]]
