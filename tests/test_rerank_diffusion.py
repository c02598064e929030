"""Diffusion: the sparse graph and batched CG against dense maths; MPEG-7 bullseye (SPEC §10)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import pycsa
from pycsa.evaluate import bullseye
from pycsa.rerank.diffusion import conjugate_gradient, mutual_knn_graph


def _dense_graph(X, k, gamma):
    """Mutual kNN affinities min(w_ij, w_ji), symmetric normalisation, all dense."""
    M = _dense_weights(X, k, gamma)
    d = M.sum(1)
    inv = torch.where(d > 0, d.clamp_min(1e-300).rsqrt(), torch.zeros_like(d))
    return inv[:, None] * M * inv[None, :]


def _data(n=60, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


@pytest.mark.parametrize("n, k, gamma", [(2, 1, 3.0), (30, 5, 3.0), (60, 10, 1.0)])
def test_graph_matches_dense(n, k, gamma):
    X = _data(n)
    S = mutual_knn_graph(X, k, gamma).to_dense().double()
    assert torch.allclose(S, _dense_graph(X, k, gamma), atol=1e-6)
    assert torch.allclose(S, S.T)


def test_cg_solves_the_system():
    X = _data(80, seed=1)
    S = mutual_knn_graph(X, 8, 3.0)
    Y = torch.rand(80, 5)
    F = conjugate_gradient(S, Y, 0.9, iters=200, tol=1e-10)
    A = torch.eye(80, dtype=torch.float64) - 0.9 * S.to_dense().double()
    assert torch.allclose(F.double(), torch.linalg.solve(A, Y.double()), atol=1e-4)


def test_reranker_matches_dense_diffusion():
    X = _data(70, seed=2)
    Q = X[:6]
    s, i = pycsa.search(Q, X, 70)
    new = pycsa.create("diffusion", k=6, query_k=4, alpha=0.9, iters=200).fit(X).rerank(Q, X, pycsa.Ranking(i, s))
    A = torch.eye(70, dtype=torch.float64) - 0.9 * _dense_graph(X, 6, 3.0)
    Y = torch.zeros(70, 6, dtype=torch.float64)
    for b in range(6):
        Y[i[b, :4], b] = s[b, :4].double().clamp(min=0) ** 3
    f = torch.linalg.solve(A, Y).T
    got = f.gather(1, new.indices)
    assert torch.all(got[:, :-1] >= got[:, 1:] - 1e-6)  # ordered by the exact diffusion scores
    assert torch.allclose(new.scores.double(), got, atol=1e-5)


def test_mpeg7_bullseye(shared_data):
    f = np.load(shared_data / "mpeg7" / "mpeg7_mobilenetv2_imagenet_gap1280.npz")
    X, y = f["feats"].astype(np.float32), f["labels"]
    s, i = pycsa.search(X, X, 200)
    r = pycsa.create("diffusion", k=15, query_k=3, alpha=0.9)
    new = r.fit(X).rerank(X, X, pycsa.Ranking(i, s))
    assert bullseye(new.indices, y, y) >= 0.84  # SPEC §10: a simple kNN diffusion reaches 84.0 %


def test_bad_parameters():
    with pytest.raises(ValueError, match="alpha"):
        pycsa.create("diffusion", alpha=1.5)
    with pytest.raises(ValueError, match="k"):
        pycsa.create("diffusion", k=0)


def test_graph_cache_round_trip_and_key(tmp_path):
    X = _data(50, seed=3)
    a = pycsa.create("diffusion", k=5, cache_dir=str(tmp_path)).fit(X)
    files = list(tmp_path.glob("diffusion-graph-*.pt"))
    assert len(files) == 1
    b = pycsa.create("diffusion", k=5, cache_dir=str(tmp_path)).fit(X)  # reloaded
    assert torch.equal(a._graph.to_dense(), b._graph.to_dense())
    X2 = X.clone()
    X2[7, 0] += 1e-3  # any change of the database makes a new key
    pycsa.create("diffusion", k=5, cache_dir=str(tmp_path)).fit(X2)
    pycsa.create("diffusion", k=6, cache_dir=str(tmp_path)).fit(X)  # and so does another k
    assert len(list(tmp_path.glob("diffusion-graph-*.pt"))) == 3


def _bad_entries(path, other):
    """Ways a cache entry goes wrong: (what to write at ``path``, words the warning must say)."""
    good = torch.load(path, weights_only=True)
    yield lambda: path.write_bytes(b"not a torch file"), "unreadable"
    yield lambda: path.write_bytes(other.read_bytes()), "another database"  # a copied or renamed file
    yield lambda: torch.save((good["indices"], good["values"], 50), path), "not a pycsa diffusion graph"
    damaged = dict(good, indices=good["indices"].clone())
    damaged["indices"][1, 3] = 50  # a column past the last node
    yield lambda: torch.save(damaged, path), "outside"
    yield lambda: torch.save(dict(good, values=good["values"][:-1]), path), "damaged"


def test_a_bad_cache_entry_is_named_and_rebuilt(tmp_path):
    X = _data(50, seed=3)
    want = pycsa.create("diffusion", k=5, cache_dir=str(tmp_path / "a")).fit(X)._graph.to_dense()
    path = next((tmp_path / "a").glob("*.pt"))
    pycsa.create("diffusion", k=5, cache_dir=str(tmp_path / "b")).fit(_data(50, seed=4))
    other = next((tmp_path / "b").glob("*.pt"))
    for spoil, words in _bad_entries(path, other):
        spoil()
        with pytest.warns(RuntimeWarning, match=f"cache_dir: ignoring the cached graph {path}.*{words}"):
            got = pycsa.create("diffusion", k=5, cache_dir=str(tmp_path / "a")).fit(X)._graph.to_dense()
        assert torch.equal(got, want)
        # and the rebuilt entry is sound again: it loads without a warning
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pycsa.create("diffusion", k=5, cache_dir=str(tmp_path / "a")).fit(X)


def _dense_weights(X, k, gamma):
    """The database's mutual kNN weights min(w_ij, w_ji), dense and not normalised."""
    n = X.shape[0]
    S = X.double() @ X.double().T
    W = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        order = sorted(range(n), key=lambda j: (-float(S[i, j]), j))
        for j in [j for j in order[:k + 1] if j != i][:k]:
            W[i, j] = max(float(S[i, j]), 0.0) ** gamma
    return torch.where((W > 0) & (W.T > 0), torch.minimum(W, W.T), torch.zeros_like(W))


@pytest.mark.parametrize("T, k, kq, block", [(40, 6, 4, 1 << 25), (40, 6, 4, 500), (1, 3, 1, 1 << 25),
                                            (90, 10, 5, 1 << 25)])
def test_truncated_is_the_database_graph_restricted_to_each_list(T, k, kq, block):
    X = _data(90, seed=4)
    Q = torch.nn.functional.normalize(X[:5] + 0.1 * _data(5, seed=5), dim=1)
    s, i = pycsa.search(Q, X, 90)
    new = pycsa.create("diffusion_truncated", T=T, k=k, query_k=kq, alpha=0.9, iters=200,
                       block_elems=block).rerank(Q, X, pycsa.Ranking(i, s))
    W = _dense_weights(X, k, 3.0)
    for b in range(5):
        top = i[b, :T]
        M = W[top][:, top]  # the database graph between the candidates, normalised inside the list
        d = M.sum(1)
        inv = torch.where(d > 0, d.clamp_min(1e-300).rsqrt(), torch.zeros_like(d))
        A = torch.eye(T, dtype=torch.float64) - 0.9 * (inv[:, None] * M * inv[None, :])
        y = torch.zeros(T, dtype=torch.float64)
        y[:kq] = s[b, :kq].double().clamp(min=0) ** 3
        f = torch.linalg.solve(A, y)
        got = f[[int((top == j).nonzero()) for j in new.indices[b, :T]]]
        assert torch.all(got[:-1] >= got[1:] - 1e-6)
        assert torch.allclose(new.scores[b, :T].double(), got, atol=1e-5)
        assert sorted(new.indices[b, :T].tolist()) == sorted(top.tolist())
        assert torch.equal(new.indices[b, T:], i[b, T:])  # the rest keeps its place


def test_truncated_over_the_whole_database_is_full_diffusion():
    X = _data(70, seed=6)
    s, i = pycsa.search(X, X, 70)
    full = pycsa.create("diffusion", k=8, alpha=0.9, iters=300).rerank(X, X, pycsa.Ranking(i, s))
    trunc = pycsa.create("diffusion_truncated", T=70, k=8, alpha=0.9, iters=300).rerank(X, X, pycsa.Ranking(i, s))
    torch.testing.assert_close(trunc.scores, full.scores, atol=1e-5, rtol=0)


def test_truncated_candidates_the_diffusion_never_reaches_keep_their_order():
    X = _data(200, d=32, seed=8)  # a sparse graph (k=3): many of the top-100 are unreachable from the seeds
    s, i = pycsa.search(X[:6], X, 200)
    new = pycsa.create("diffusion_truncated", T=100, k=3, query_k=2).rerank(X[:6], X, pycsa.Ranking(i, s))
    for b in range(6):
        zero = new.scores[b, :100] == 0
        assert zero.any()
        rank_in = {int(j): r for r, j in enumerate(i[b, :100])}
        tail = [rank_in[int(j)] for j in new.indices[b, :100][zero]]
        assert tail == sorted(tail)  # input order among the unreached, not database-index order


def test_full_diffusion_items_it_never_reaches_follow_in_input_order():
    X = _data(200, d=32, seed=8)  # k=2: small components, most items unreachable from the seeds
    s, i = pycsa.search(X[:6], X, 120)
    new = pycsa.create("diffusion", k=2, query_k=2).fit(X).rerank(X[:6], X, pycsa.Ranking(i, s))
    for b in range(6):
        zero = new.scores[b] == 0
        assert zero.any() and not zero[0]
        assert bool((zero[:-1] <= zero[1:]).all())  # reached first, then the rest
        rank_in = {int(j): r for r, j in enumerate(i[b])}
        tail = [rank_in[int(j)] for j in new.indices[b][zero]]
        assert tail == sorted(tail)  # input order among the unreached, not database-index order
        assert len(set(new.indices[b].tolist())) == 120
