"""Property-based tests (hypothesis) over the public API: random valid inputs agree with the
references and never give NaN scores or out-of-range indices; each class of invalid input
is refused by a ValueError/TypeError/IndexError that names the argument.

Select them with ``pytest -k hypothesis``. Example counts are kept small so that the
whole file runs in about a minute on two cores (CI runs it with the rest of ``make test``);
``HYPOTHESIS_PROFILE=thorough`` runs ten times more examples per property.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import pycsa  # noqa: E402
from pycsa import ops  # noqa: E402
from pycsa.ops import reference  # noqa: E402

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=250, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

pytestmark = pytest.mark.hypothesis


def _rows(rng: np.random.Generator, n: int, d: int, *, grid: bool = False) -> torch.Tensor:
    """n unit rows (or small integers, whose float32 products are exact, to force ties)."""
    if grid:
        return torch.from_numpy(rng.integers(-2, 3, (n, d)).astype(np.float32))
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)
    return torch.from_numpy(x)


seeds = st.integers(0, 2**31 - 1)


# ------------------------------------------------------------------ operators against the references


@given(seed=seeds, n=st.integers(1, 37), d=st.integers(1, 33), r=st.integers(0, 17), k=st.integers(1, 9))
def test_hypothesis_weighted_gather_sum_matches_the_float64_reference(seed, n, d, r, k):
    rng = np.random.default_rng(seed)
    src = torch.from_numpy(rng.standard_normal((n, d)).astype(np.float32))
    idx = torch.from_numpy(rng.integers(0, n, (r, k)))
    w = torch.from_numpy(rng.standard_normal((r, k)).astype(np.float32))
    got = ops.weighted_gather_sum(src, idx, w)
    want = reference.weighted_gather_sum(src.double(), idx, w.double())
    assert got.shape == (r, d)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@given(seed=seeds, q=st.integers(1, 9), n=st.integers(1, 41), d=st.integers(1, 19), grid=st.booleans(),
       data=st.data())
def test_hypothesis_inner_product_topk_is_the_reference_ties_by_lower_index(seed, q, n, d, grid, data):
    k = data.draw(st.integers(1, n))
    rng = np.random.default_rng(seed)
    Q, X = _rows(rng, q, d, grid=grid), _rows(rng, n, d, grid=grid)
    scores, idx = ops.inner_product_topk(Q, X, k)
    S = Q.double() @ X.double().T
    want_idx = torch.sort(-S, dim=1, stable=True).indices[:, :k]
    if grid:  # exact products: the order, ties included, must be the float64 one
        assert torch.equal(idx, want_idx)
        assert torch.equal(idx, reference.inner_product_topk(Q, X, k)[1])
    assert idx.min() >= 0 and idx.max() < n
    torch.testing.assert_close(scores.double(), S.gather(1, want_idx), rtol=1e-5, atol=1e-5)


@given(seed=seeds, n=st.integers(1, 30), d=st.integers(1, 17), B=st.integers(1, 5), data=st.data(),
       with_queries=st.booleans())
def test_hypothesis_affinity_matches_the_float64_reference(seed, n, d, B, data, with_queries):
    K = data.draw(st.integers(1, 13))
    L = data.draw(st.integers(1, K + with_queries))
    rng = np.random.default_rng(seed)
    X = _rows(rng, n, d)
    ranks = torch.from_numpy(rng.integers(0, n, (B, K)))
    Q = _rows(rng, B, d) if with_queries else None
    got = ops.affinity(X, ranks, L, Q)
    want = reference.affinity(X.double(), ranks, L, None if Q is None else Q.double())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@given(seed=seeds, B=st.integers(1, 3), H=st.integers(1, 3), T=st.integers(1, 21), D=st.integers(1, 17),
       ragged=st.booleans())
def test_hypothesis_attention_matches_the_float64_reference(seed, B, H, T, D, ragged):
    rng = np.random.default_rng(seed)
    q, k, v = (torch.from_numpy(rng.standard_normal((B, H, T, D)).astype(np.float32)) for _ in range(3))
    lengths = torch.from_numpy(rng.integers(0, T + 1, B)) if ragged else None
    got = ops.attention(q, k, v, lengths)
    want = reference.attention(q.double(), k.double(), v.double(), lengths)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def _random_csr(rng, n: int, density: float):
    dense = (rng.random((n, n)) < density) * rng.random((n, n)).astype(np.float32)
    A = torch.from_numpy(dense.astype(np.float32))
    nz = A.to_sparse_csr()
    return A, nz.crow_indices().long(), nz.col_indices().long(), nz.values().float()


@given(seed=seeds, n=st.integers(1, 23), density=st.floats(0.0, 1.0), data=st.data())
def test_hypothesis_sparse_graph_ops_match_their_dense_twins(seed, n, density, data):
    rng = np.random.default_rng(seed)
    A, rowptr, col, val = _random_csr(rng, n, density)
    S = ops.csr_add_transpose(rowptr, col, val)
    torch.testing.assert_close(reference.csr_to_dense(*S), A + A.T)
    k = data.draw(st.integers(1, n))
    nbr = torch.from_numpy(rng.integers(0, n, (n, k)))
    w = torch.from_numpy(rng.random((n, k)).astype(np.float32))
    P = ops.gnn_propagate(rowptr, col, val, nbr, w)
    torch.testing.assert_close(reference.csr_to_dense(*P).double(),
                               reference.gnn_propagate(A.double(), nbr, w.double()), rtol=1e-5, atol=1e-6)
    split = data.draw(st.integers(0, n))
    torch.testing.assert_close(ops.csr_cross_dense(rowptr, col, val, split).double(),
                               reference.csr_cross_dense(A.double(), split), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ search and every re-ranker

TRAINING_FREE = [m for m in pycsa.available() if m not in ("csa", "rrt")]


def _small(name: str, n: int):
    """Each re-ranker with parameters that fit an n-item database (its defaults assume thousands)."""
    if name == "csa":
        from pycsa.rerank.csa.model import CSA

        torch.manual_seed(0)
        return pycsa.create("csa", model=CSA(num_anchors=4, dim=16, depth=1, heads=2).eval(), k=min(8, n))
    small = {"k_reciprocal": dict(k1=min(5, n), k2=min(2, n)), "gnn": dict(k1=min(5, n), k2=min(2, n)),
             "superglobal": dict(M=min(6, n), K=min(3, n)),
             "diffusion": dict(k=min(5, n), query_k=min(3, n), iters=5),
             "diffusion_truncated": dict(T=min(12, n), k=min(5, n), query_k=min(3, n), iters=5)}
    if name in small:
        return pycsa.create(name, **small[name])
    return pycsa.create(name, k=min(3, n))


@given(seed=seeds, q=st.integers(1, 6), n=st.integers(2, 40), d=st.integers(2, 12), data=st.data(),
       name=st.sampled_from(TRAINING_FREE + ["csa"]))
@settings(max_examples=60)
def test_hypothesis_every_reranker_returns_valid_rankings_in_the_callers_kind(seed, q, n, d, data, name):
    depth = data.draw(st.integers(1, n))
    rng = np.random.default_rng(seed)
    Q, X = _rows(rng, q, d), _rows(rng, n, d)
    scores, indices = pycsa.search(Q, X, depth)
    ranking = pycsa.Ranking(indices, scores)
    r = _small(name, n).fit(X)
    out = r.rerank(Q, X, ranking)
    idx, sc = out.indices, out.scores
    assert idx.shape == sc.shape and idx.shape[0] == q and idx.dtype == torch.int64
    assert int(idx.min()) >= 0 and int(idx.max()) < n, "indices out of range"
    assert torch.isfinite(sc).all(), "NaN or inf scores"
    assert all(len(set(row)) == len(row) for row in idx.tolist()), "an item twice in one list"
    out_np = _small(name, n).fit(X.numpy()).rerank(Q.numpy(), X.numpy(),
                                                   pycsa.Ranking(ranking.indices.numpy(), ranking.scores.numpy()))
    assert isinstance(out_np.indices, np.ndarray) and isinstance(out_np.scores, np.ndarray)
    np.testing.assert_array_equal(out_np.indices, idx.numpy())
    np.testing.assert_allclose(out_np.scores, sc.numpy(), rtol=1e-5, atol=1e-6)


@given(seed=seeds, q=st.integers(1, 6), n=st.integers(1, 50), d=st.integers(1, 12), data=st.data(),
       scale=st.sampled_from([1.0, 1e-20, 1e15]))
def test_hypothesis_search_is_exact_and_never_returns_minus_one(seed, q, n, d, data, scale):
    k = data.draw(st.integers(1, n))
    rng = np.random.default_rng(seed)
    Q, X = _rows(rng, q, d) * scale, _rows(rng, n, d) * scale
    scores, idx = pycsa.search(Q, X, k)
    assert int(idx.min()) >= 0 and int(idx.max()) < n
    assert torch.isfinite(scores).all()
    _, want = reference.inner_product_topk(Q.double() / scale, X.double() / scale, k)
    S = (Q.double() / scale) @ (X.double() / scale).T  # unit rows: compare the picked scores, not orders
    torch.testing.assert_close(S.gather(1, idx), S.gather(1, want), rtol=0, atol=1e-5)


# ------------------------------------------------------------------ invalid input is refused by name

BAD_FLOATS = [math.nan, math.inf, -math.inf]


def _valid_inputs(rng, q=3, n=12, d=6, depth=8):
    Q, X = _rows(rng, q, d), _rows(rng, n, d)
    scores, indices = pycsa.search(Q, X, depth)
    return Q, X, pycsa.Ranking(indices, scores)


def _refused(fn, *names, kinds=(ValueError, TypeError, IndexError)):
    with pytest.raises(kinds) as exc:
        fn()
    assert any(name in str(exc.value) for name in names), f"{exc.value!r} does not name {names}"


@given(seed=seeds, name=st.sampled_from(TRAINING_FREE + ["csa"]), where=st.sampled_from(["queries", "database"]),
       bad=st.sampled_from(BAD_FLOATS), data=st.data())
def test_hypothesis_non_finite_features_are_refused_by_name(seed, name, where, bad, data):
    rng = np.random.default_rng(seed)
    Q, X, ranking = _valid_inputs(rng)
    target = Q if where == "queries" else X
    target[data.draw(st.integers(0, target.shape[0] - 1)), data.draw(st.integers(0, target.shape[1] - 1))] = bad
    r = _small(name, X.shape[0])
    _refused(lambda: r.fit(X).rerank(Q, X, ranking), where)


@given(seed=seeds, name=st.sampled_from(TRAINING_FREE + ["csa"]),
       case=st.sampled_from(["nan_score", "depth0", "index_high", "index_negative", "float_index",
                             "wrong_rows", "shape_mismatch"]))
def test_hypothesis_bad_rankings_are_refused_by_name(seed, name, case):
    rng = np.random.default_rng(seed)
    Q, X, (idx, sc) = _valid_inputs(rng)
    if case == "nan_score":
        sc = sc.clone()
        sc[0, 1] = math.nan
    elif case == "depth0":
        idx, sc = idx[:, :0], sc[:, :0]
    elif case == "index_high":
        idx = idx.clone()
        idx[1, 0] = X.shape[0]
    elif case == "index_negative":
        idx = idx.clone()
        idx[0, 0] = -1
    elif case == "float_index":
        idx = idx.float()
    elif case == "wrong_rows":
        idx, sc = idx[:-1], sc[:-1]
    else:
        sc = sc[:, :-1]
    r = _small(name, X.shape[0]).fit(X)
    _refused(lambda: r.rerank(Q, X, pycsa.Ranking(idx, sc)), "ranking")


# each parameter with values outside its range (every one of them was accepted or failed
# somewhere unrelated before: negative alpha, gamma <= 0, layers < 1, floats for counts)
BAD_PARAMS = [
    ("alpha_qe", "alpha", -1.0), ("alpha_qe", "alpha", math.nan), ("alpha_qe", "k", 2.5), ("alpha_qe", "k", 0),
    ("alpha_dba", "alpha", -0.5), ("alpha_dba", "k", True), ("dba", "k", -3), ("aqe", "alpha", math.inf),
    ("alpha_qe_dba", "dba_alpha", -2.0),
    ("diffusion", "alpha", 1.0), ("diffusion", "alpha", 0.0), ("diffusion", "gamma", -1.0),
    ("diffusion", "gamma", math.nan), ("diffusion", "k", 0), ("diffusion", "iters", 0),
    ("diffusion_truncated", "alpha", 1.0), ("diffusion_truncated", "gamma", math.nan),
    ("diffusion_truncated", "T", 0), ("diffusion_truncated", "gamma", 0.0),
    ("k_reciprocal", "k1", 0), ("k_reciprocal", "k2", 4.7), ("k_reciprocal", "lambda_value", -0.1),
    ("k_reciprocal", "lambda_value", math.nan), ("gnn", "k1", -1), ("gnn", "lamb", math.nan),
    ("superglobal", "beta", math.inf), ("superglobal", "beta", -1.0), ("superglobal", "M", 0),
    ("superglobal", "K", 1.5),
]


@pytest.mark.parametrize("name,param,value", BAD_PARAMS)
def test_hypothesis_out_of_range_parameters_are_refused_by_name(name, param, value):
    rng = np.random.default_rng(0)
    Q, X, ranking = _valid_inputs(rng)
    # refused when built, or at the latest when used: never a result
    _refused(lambda: pycsa.create(name, **{param: value}).fit(X).rerank(Q, X, ranking), param)


@given(seed=seeds, layers=st.integers(-3, 0))
def test_hypothesis_gnn_rerank_refuses_fewer_than_one_layer(seed, layers):
    rng = np.random.default_rng(seed)
    Q, X, _ = _valid_inputs(rng)
    _refused(lambda: pycsa.gnn_rerank(Q, X, k1=4, k2=2, layers=layers), "layers")


@given(seed=seeds, scale=st.sampled_from([1e20, 1e25, 1e30]),
       fn=st.sampled_from(["search", "gnn_rerank", "re_ranking_features", "k_reciprocal"]))
def test_hypothesis_features_whose_products_overflow_are_refused_or_ranked_right(seed, scale, fn):
    """Finite features whose products overflow float32: refused naming the argument, or
    handled exactly (a scale-free method may rescale); never -1 indices or NaN."""
    rng = np.random.default_rng(seed)
    Q, X, _ = _valid_inputs(rng)
    Q, X = Q * scale, X * scale
    try:
        if fn == "search":
            scores, idx = pycsa.search(Q, X, 5)
            assert int(idx.min()) >= 0 and torch.isfinite(scores).all()
        elif fn == "gnn_rerank":
            out = pycsa.gnn_rerank(Q, X, k1=4, k2=2)
            assert torch.isfinite(torch.as_tensor(out)).all()
        elif fn == "re_ranking_features":
            from pycsa.compat import re_ranking_features

            out = re_ranking_features(Q, X, k1=4, k2=2)
            assert np.isfinite(np.asarray(out)).all()
        else:
            scores, indices = pycsa.search(Q / scale, X / scale, 6)
            out = pycsa.create("k_reciprocal", k1=4, k2=2).fit(X).rerank(Q, X, pycsa.Ranking(indices, scores))
            assert torch.isfinite(out.scores).all() and int(out.indices.min()) >= 0
    except (ValueError, TypeError) as exc:
        assert any(w in str(exc) for w in ("queries", "database", "query", "gallery", "features")), exc


@given(seed=seeds, name=st.sampled_from(["dba", "alpha_dba", "diffusion", "alpha_qe_dba"]))
@settings(max_examples=8)
def test_hypothesis_a_database_changed_after_fit_is_noticed(seed, name):
    rng = np.random.default_rng(seed)
    Q, X, ranking = _valid_inputs(rng)
    r = _small(name, X.shape[0]).fit(X)
    other = _rows(rng, *X.shape)
    _refused(lambda: r.rerank(Q, other, ranking), "database", "fit")
    X.mul_(-1.0)  # changed in place
    _refused(lambda: r.rerank(Q, X, ranking), "database", "fit")


@pytest.mark.parametrize("op", ["weighted_gather_sum", "inner_product_topk", "csr_add_transpose"])
def test_hypothesis_ops_take_numpy_like_torch(op):
    rng = np.random.default_rng(1)
    if op == "weighted_gather_sum":
        args = (rng.standard_normal((7, 3)).astype(np.float32), rng.integers(0, 7, (4, 2)),
                rng.standard_normal((4, 2)).astype(np.float32))
    elif op == "inner_product_topk":
        args = (rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal((9, 5)).astype(np.float32), 4)
    else:
        _, rowptr, col, val = _random_csr(rng, 6, 0.4)
        args = (rowptr.numpy(), col.numpy(), val.numpy())
    got = getattr(ops, op)(*args)
    want = getattr(ops, op)(*(torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in args))
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for g, w in zip(got, want):
        assert isinstance(g, np.ndarray)
        np.testing.assert_array_equal(g, w.numpy())
