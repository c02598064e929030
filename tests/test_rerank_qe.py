"""Query expansion / database augmentation: batched code against a per-query loop of SPEC §5."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pycsa
from pycsa.evaluate import bullseye


def _data(q=9, n=211, d=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    Q = torch.nn.functional.normalize(torch.randn(q, d, generator=g), dim=1)
    return Q, X


def _loop_expand(item, X, idx, sc, kind, alpha=3.0):
    """One item at a time, as the papers write it."""
    k = len(idx)
    acc = item.double().clone()
    for r in range(k):
        w = {"mean": 1.0, "decay": (k - r) / k, "alpha": max(float(sc[r]), 0.0) ** alpha}[kind]
        acc += w * X[idx[r]].double()
    return acc / acc.norm()


def _assert_ranks(indices, Q, X, k):
    """``indices`` is the top-k of Q Xᵀ in float64, up to the order of near-ties (float32 rounding)."""
    S = (Q.double() @ X.double().T).numpy()
    got = np.take_along_axis(S, np.asarray(indices.cpu()), 1)
    best = -np.sort(-S, axis=1)[:, :k]
    np.testing.assert_allclose(got, best, atol=1e-6)


@pytest.mark.parametrize("name, kind", [("aqe", "mean"), ("aqewd", "decay"), ("alpha_qe", "alpha")])
def test_query_expansion_matches_loop(name, kind, device):
    Q, X = _data()
    s, i = pycsa.search(Q, X, 30)
    new = pycsa.create(name, k=4).rerank(Q.to(device), X.to(device), pycsa.Ranking(i.to(device), s.to(device)))
    expanded = torch.stack([_loop_expand(Q[b], X, i[b, :4], s[b, :4], kind) for b in range(Q.shape[0])])
    assert new.indices.shape == (9, 30) and new.indices.device.type == device
    _assert_ranks(new.indices, expanded, X, 30)
    np.testing.assert_allclose(new.scores.cpu().numpy(), (expanded @ X.double().T).gather(1, new.indices.cpu()).numpy(),
                               atol=1e-5)


@pytest.mark.parametrize("name, kind", [("dba", "mean"), ("alpha_dba", "alpha")])
def test_database_augmentation_matches_loop(name, kind, device):
    Q, X = _data(seed=1)
    s, i = pycsa.search(Q, X, 25)
    r = pycsa.create(name, k=3)
    Xd = X.to(device)  # one copy: a second .to("cuda") is another array, which rerank refuses after fit
    new = r.fit(Xd).rerank(Q.to(device), Xd, pycsa.Ranking(i.to(device), s.to(device)))
    sx, ix = pycsa.search(X, X, 4)  # each row's top-4: itself, then its 3 neighbours
    Xa = torch.stack([_loop_expand(X[j], X, ix[j, 1:], sx[j, 1:], kind) for j in range(X.shape[0])])
    _assert_ranks(new.indices, Q, Xa, 25)


def test_alpha_qe_dba_expands_the_query_in_the_augmented_database(device):
    Q, X = _data(seed=2)
    s, i = pycsa.search(Q, X, 20)
    new = pycsa.create("alpha_qe_dba", k=3).rerank(Q.to(device), X.to(device), pycsa.Ranking(i.to(device), s.to(device)))
    sx, ix = pycsa.search(X, X, 4)
    Xa = torch.stack([_loop_expand(X[j], X, ix[j, 1:], sx[j, 1:], "alpha") for j in range(X.shape[0])]).float()
    sa, ia = pycsa.search(Q, Xa, 3)  # the query's top-3 in the augmented database expand it
    expanded = torch.stack([_loop_expand(Q[b], Xa, ia[b], sa[b], "alpha") for b in range(Q.shape[0])])
    assert new.indices.shape == (9, 20)
    _assert_ranks(new.indices, expanded, Xa, 20)
    chain = pycsa.create("alpha_dba+alpha_qe").rerank(Q, X, pycsa.Ranking(i, s))
    assert not torch.equal(chain.indices, new.indices.cpu())  # the chain's QE searches the original database


def test_refuses_another_database_until_fit_again():
    Q, X = _data(seed=2)
    r = pycsa.create("dba", k=2).fit(X)
    X2 = X.flip(0).contiguous()
    s, i = pycsa.search(Q, X2, 10)
    with pytest.raises(ValueError, match="database: differs from the one given to fit"):
        r.rerank(Q, X2, pycsa.Ranking(i, s))
    a = r.fit(X2).rerank(Q, X2, pycsa.Ranking(i, s))
    b = pycsa.create("dba", k=2).rerank(Q, X2, pycsa.Ranking(i, s))  # never fitted: fits on its database
    assert torch.equal(a.indices, b.indices)


def test_numpy_in_numpy_out():
    Q, X = _data()
    s, i = pycsa.search(Q.numpy(), X.numpy(), 12)
    new = pycsa.create("alpha_qe").rerank(Q.numpy(), X.numpy(), pycsa.Ranking(i, s))
    assert isinstance(new.indices, np.ndarray) and new.indices.shape == (9, 12)


def test_registry_and_errors():
    assert {"aqe", "aqewd", "alpha_qe", "dba", "alpha_dba"} <= set(pycsa.available())
    with pytest.raises(ValueError, match="unknown re-ranker"):
        pycsa.create("nope")
    with pytest.raises(ValueError, match="k"):
        pycsa.create("aqe", k=0)
    Q, X = _data()
    s, i = pycsa.search(Q, X, 5)
    r = pycsa.create("aqe")
    with pytest.raises(ValueError, match="ranking"):
        r.rerank(Q, X, pycsa.Ranking(i[:3], s[:3]))
    with pytest.raises(IndexError, match="ranking.indices"):
        r.rerank(Q, X, pycsa.Ranking(i + 1000, s))
    with pytest.raises(ValueError, match="queries"):
        r.rerank(Q[:, :3], X, pycsa.Ranking(i, s))


def test_alpha_qe_improves_mpeg7_bullseye(shared_data):
    f = np.load(shared_data / "mpeg7" / "mpeg7_mobilenetv2_imagenet_gap1280.npz")
    X, y = f["feats"].astype(np.float32), f["labels"]
    s, i = pycsa.search(X, X, 100)
    base = bullseye(i, y, y)
    assert abs(base - 0.748) < 0.002  # SPEC §10: plain cosine 74.8 %
    new = pycsa.create("alpha_qe", k=5).rerank(X, X, pycsa.Ranking(i, s))
    assert bullseye(new.indices, y, y) > base + 0.01
