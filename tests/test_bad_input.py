"""No silent wrong answers (issue #17, the re-rankers): each class of bad input is refused
by a ValueError/TypeError/IndexError that names the argument, and inputs that are
accepted give finite scores and valid indices."""
from __future__ import annotations

import importlib
import inspect
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import pycsa
from pycsa._checks import boolean, finite_float, integer, optional_int
from pycsa._tensors import MAX_ROW_NORM_SQ, as_device, fingerprint
from pycsa.ranking import registered
from pycsa.compat import gnn_reranking, re_ranking, re_ranking_features
from pycsa.rerank.csa.model import CSA
from pycsa.rerank.kreciprocal import k_reciprocal_features
from pycsa.rerank.rrt.train import pair_inputs

TRAINING_FREE = [m for m in pycsa.available() if m not in ("csa", "rrt")]
search_module = importlib.import_module("pycsa.search")  # pycsa.search is the function
SMALL = {"k_reciprocal": dict(k1=5, k2=2), "gnn": dict(k1=5, k2=2), "superglobal": dict(M=6, K=3),
         "diffusion": dict(k=5, query_k=3), "diffusion_truncated": dict(T=12, k=5, query_k=3)}


def _unit(n, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def _data(q=4, n=40, depth=10):
    Q, X = _unit(q, seed=1), _unit(n, seed=2)
    scores, indices = pycsa.search(Q, X, depth)
    return Q, X, pycsa.Ranking(indices, scores)


def _create(name):
    if name == "csa":
        torch.manual_seed(0)
        return pycsa.create("csa", model=CSA(num_anchors=4, dim=16, depth=1, heads=2).eval(), k=8)
    return pycsa.create(name, **SMALL.get(name, dict(k=3)))


def _refused(fn, *names, kinds=(ValueError, TypeError, IndexError)):
    with pytest.raises(kinds) as exc:
        fn()
    assert any(n in str(exc.value) for n in names), f"{exc.value!r} does not name {names}"
    return exc.value


def _sound(ranking, n):
    idx, sc = torch.as_tensor(ranking.indices), torch.as_tensor(ranking.scores)
    assert int(idx.min()) >= 0 and int(idx.max()) < n, "index out of range"
    assert bool(torch.isfinite(sc).all()), "NaN or inf score"


# ------------------------------------------------------------------ finite inputs, finite products

HUGE = 1e25  # finite, but the products of two such rows overflow float32


@pytest.mark.parametrize("call,names", [
    (lambda Q, X: pycsa.search(Q, X, 5), ("database",)),
    (lambda Q, X: pycsa.Index(X), ("database",)),
    (lambda Q, X: pycsa.Index(X / HUGE).search(Q, 5), ("queries",)),
    (lambda Q, X: re_ranking_features(Q.numpy(), X.numpy()), ("query_feats",)),
    (lambda Q, X: k_reciprocal_features(Q / HUGE, X), ("gallery_feats",)),
    (lambda Q, X: pycsa.gnn_rerank(Q, X, k1=4, k2=2), ("query_feats",)),
    (lambda Q, X: gnn_reranking(Q, X, 4, 2), ("query_feats",)),
    (lambda Q, X: pycsa.superglobal_rerank(Q, X, pycsa.search(Q / HUGE, X / HUGE, 6)[1], M=6, K=2), ("queries",)),
])
def test_features_whose_products_overflow_are_refused(call, names):
    Q, X = _unit(3) * HUGE, _unit(30) * HUGE
    err = _refused(lambda: call(Q, X), *names)
    assert "normalise" in str(err)


@pytest.mark.parametrize("name", TRAINING_FREE + ["csa"])
@pytest.mark.parametrize("where", ["queries", "database"])
def test_every_reranker_refuses_features_whose_products_overflow(name, where):
    Q, X, ranking = _data()
    Q, X = (Q * HUGE, X) if where == "queries" else (Q, X * HUGE)
    _refused(lambda: _create(name).rerank(Q, X, ranking), where)


def test_the_bound_is_the_squared_norm_not_the_largest_value():
    d = 64
    x = torch.full((2, d), math.sqrt(MAX_ROW_NORM_SQ / d) * 0.99)  # every value large, the norm just inside
    pycsa.Index(x)
    _refused(lambda: pycsa.Index(x * 1.02), "database")


@pytest.mark.parametrize("scale", [1e18, 1e-20])
def test_search_of_huge_or_tiny_accepted_features_is_exact(scale):
    Q, X = _unit(5, seed=3), _unit(200, seed=4)
    want_s, want_i = pycsa.search(Q, X, 10)
    for backend in ["torch"] + (["faiss"] if search_module.faiss is not None else []) + \
            (["kernel"] if pycsa.ops.has_cpu_kernels() else []):
        s, i = pycsa.search(Q * scale, X * scale, 10, backend=backend)
        assert torch.equal(i, want_i), backend
        assert bool(torch.isfinite(s).all()) and int(i.min()) >= 0
        if scale > 1:
            torch.testing.assert_close(s.double() / scale ** 2, want_s.double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", TRAINING_FREE + ["csa"])
@pytest.mark.parametrize("scale", [1e18, 1e-20])
def test_accepted_huge_or_tiny_features_never_give_nan_or_minus_one(name, scale):
    """Features the check accepts: finite scores and valid indices, or (CSA, whose arithmetic
    is not scale-free) a ValueError naming them; never NaN or -1."""
    Q, X = _unit(4, seed=1) * scale, _unit(40, seed=2) * scale
    scores, indices = pycsa.search(Q, X, 10)
    try:
        out = _create(name).rerank(Q, X, pycsa.Ranking(indices, scores))
    except ValueError as exc:
        assert "queries" in str(exc) and "database" in str(exc) and name == "csa", exc
        return
    _sound(out, X.shape[0])


@pytest.mark.parametrize("scale", [1e18, 1e-20])
def test_scale_free_functions_give_the_unit_norm_answer(scale):
    Q, X = _unit(4, seed=1), _unit(40, seed=2)
    torch.testing.assert_close(k_reciprocal_features(Q * scale, X * scale, k1=5, k2=2),
                               k_reciprocal_features(Q, X, k1=5, k2=2), rtol=0, atol=1e-5)
    torch.testing.assert_close(pycsa.gnn_rerank(Q * scale, X * scale, k1=5, k2=2),
                               pycsa.gnn_rerank(Q, X, k1=5, k2=2), rtol=0, atol=1e-5)


@pytest.mark.parametrize("scale", [2.0 ** 100, 1e36, 2.0 ** -130])
def test_k_reciprocal_of_huge_or_tiny_finite_distances_is_the_unit_answer(scale):
    Q, X = _unit(4, seed=1), _unit(30, seed=2)
    dist = [torch.cdist(a, b) ** 2 for a, b in ((Q, X), (Q, Q), (X, X))]
    want = pycsa.k_reciprocal(*dist, k1=5, k2=2)
    got = pycsa.k_reciprocal(*(d * scale for d in dist), k1=5, k2=2)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ the ranking

@pytest.mark.parametrize("name", TRAINING_FREE + ["csa"])
def test_nan_in_ranking_scores_is_refused_by_name(name):
    Q, X, (idx, sc) = _data()
    sc = sc.clone()
    sc[1, 2] = math.nan
    _refused(lambda: _create(name).rerank(Q, X, pycsa.Ranking(idx, sc)), "ranking.scores")


@pytest.mark.parametrize("name", TRAINING_FREE + ["csa"])
def test_rankings_of_depth_zero_are_refused_by_name(name):
    Q, X, (idx, sc) = _data()
    _refused(lambda: _create(name).rerank(Q, X, pycsa.Ranking(idx[:, :0], sc[:, :0])), "ranking")


def test_superglobal_rerank_refuses_depth_zero():
    Q, X, (idx, _) = _data()
    _refused(lambda: pycsa.superglobal_rerank(Q, X, idx[:, :0]), "ranks")


@pytest.mark.parametrize("bad", [lambda i: i.bool(), lambda i: i.float()])
def test_ranking_indices_must_be_integers(bad):
    Q, X, (idx, sc) = _data()
    _refused(lambda: pycsa.create("aqe").rerank(Q, X, pycsa.Ranking(bad(idx), sc)), "ranking.indices")


# ------------------------------------------------------------------ parameters

BAD_PARAMS = [
    ("aqe", "k", 2.0), ("aqewd", "k", True),
    ("alpha_qe", "alpha", -1.0), ("alpha_qe", "alpha", math.nan), ("alpha_qe", "k", 0), ("alpha_qe", "alpha", "3"),
    ("dba", "k", -3), ("alpha_dba", "alpha", -0.5), ("alpha_dba", "k", np.float64(2)),
    ("alpha_qe_dba", "alpha", -1.0), ("alpha_qe_dba", "dba_alpha", math.nan), ("alpha_qe_dba", "dba_k", 0),
    ("diffusion", "alpha", 1.0), ("diffusion", "alpha", 0.0), ("diffusion", "alpha", math.nan),
    ("diffusion", "gamma", -1.0), ("diffusion", "gamma", 0.0), ("diffusion", "gamma", math.inf),
    ("diffusion", "k", 0), ("diffusion", "query_k", 1.5), ("diffusion", "iters", 0),
    ("diffusion", "block_elems", 0), ("diffusion", "cache_dir", 3),
    ("diffusion_truncated", "alpha", 1.0), ("diffusion_truncated", "gamma", math.nan),
    ("diffusion_truncated", "gamma", -2.0), ("diffusion_truncated", "T", 0), ("diffusion_truncated", "block_elems", -1),
    ("gnn", "k1", -1), ("gnn", "k2", 2.5), ("gnn", "lamb", math.nan), ("gnn", "lamb", 1.5),
    ("gnn", "leave_one_out", "yes"),
    ("k_reciprocal", "k1", 0), ("k_reciprocal", "k2", 4.7), ("k_reciprocal", "lambda_value", -0.1),
    ("k_reciprocal", "lambda_value", math.nan), ("k_reciprocal", "leave_one_out", 1),
    ("superglobal", "beta", math.inf), ("superglobal", "beta", -1.0), ("superglobal", "beta", math.nan),
    ("superglobal", "M", 0), ("superglobal", "K", 1.5),
]


@pytest.mark.parametrize("name,param,value", BAD_PARAMS)
def test_out_of_range_parameters_are_refused_when_built(name, param, value):
    _refused(lambda: pycsa.create(name, **{param: value}), param)


@pytest.mark.parametrize("call,param", [
    (lambda Q, X, r: pycsa.gnn_rerank(Q, X, k1=4, k2=2, layers=-1), "layers"),
    (lambda Q, X, r: pycsa.gnn_rerank(Q, X, k1=4, k2=2, layers=0), "layers"),
    (lambda Q, X, r: pycsa.gnn_rerank(Q, X, k1=4, k2=2, layers=1.0), "layers"),
    (lambda Q, X, r: pycsa.gnn_rerank(Q, X, k1=4.0), "k1"),
    (lambda Q, X, r: pycsa.gnn_rerank(Q, X, return_ranking="no"), "return_ranking"),
    (lambda Q, X, r: pycsa.k_reciprocal(X.numpy() @ X.numpy().T, X.numpy() @ X.numpy().T,
                                        X.numpy() @ X.numpy().T, k1=2.5), "k1"),
    (lambda Q, X, r: re_ranking(Q @ X.T, Q @ Q.T, X @ X.T, lambda_value=math.nan), "lambda_value"),
    (lambda Q, X, r: k_reciprocal_features(Q, X, k2=-1), "k2"),
    (lambda Q, X, r: gnn_reranking(Q, X, 4, 2, lamb=math.inf), "lamb"),
    (lambda Q, X, r: pycsa.superglobal_rerank(Q, X, r.indices, beta=math.inf), "beta"),
    (lambda Q, X, r: pycsa.superglobal_rerank(Q, X, r.indices, refine=0), "refine"),
    (lambda Q, X, r: pycsa.search(Q, X, 2.0), "k"),
    (lambda Q, X, r: pycsa.search(Q, X, 0), "k"),
    (lambda Q, X, r: pycsa.search(Q, X, 3, backend="gpu"), "backend"),
    (lambda Q, X, r: pycsa.Index(X, block_elems=0), "block_elems"),
    (lambda Q, X, r: pair_inputs(X, None, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long),
                                 max_local=-1), "max_local"),
    (lambda Q, X, r: pair_inputs(X, None, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long),
                                 max_local=2.5), "max_local"),
])
def test_functional_forms_refuse_bad_parameters_by_name(call, param):
    Q, X, ranking = _data()
    _refused(lambda: call(Q, X, ranking), param)


def test_compat_gnn_reranking_still_runs_without_layers_for_k2_1():
    Q, X, _ = _data()
    out = gnn_reranking(Q, X, 4, 1)
    assert out.shape == (4, 40) and out.dtype == np.int64


def test_check_helpers():
    assert finite_float(np.float32(0.5), "x", 0, 1, low_open=True, high_open=True) == 0.5
    assert finite_float(3, "x", low=0) == 3.0
    for bad in (math.nan, math.inf, -math.inf):
        _refused(lambda: finite_float(bad, "beta"), "beta")
    _refused(lambda: finite_float(0.0, "gamma", low=0, low_open=True), "gamma")
    _refused(lambda: finite_float(True, "alpha"), "alpha")
    _refused(lambda: finite_float(None, "alpha"), "alpha")
    assert optional_int(None, "max_local", low=1) is None and optional_int(np.int64(3), "max_local", low=1) == 3
    assert boolean(np.bool_(True), "flag") is True and boolean(None, "flag", allow_none=True) is None
    _refused(lambda: boolean(0, "flag"), "flag")
    assert integer(np.int32(4), "k", low=1) == 4


# ------------------------------------------------------------------ gradients and devices

@pytest.mark.parametrize("backend", ["auto", "torch", "kernel"])
def test_search_takes_tensors_that_require_grad(backend):
    if backend == "kernel" and not pycsa.ops.has_cpu_kernels():
        pytest.skip("needs the compiled kernels")
    Q, X = _unit(3).requires_grad_(), _unit(30).requires_grad_()
    s, i = pycsa.search(Q, X, 5, backend=backend)
    # the same backend: "auto" rescoring a bfloat16 prefilter rounds unlike torch's GEMM
    want_s, want_i = pycsa.search(Q.detach(), X.detach(), 5, backend=backend)
    assert torch.equal(i, want_i) and torch.equal(s, want_s) and not s.requires_grad


def test_rerank_takes_tensors_that_require_grad():
    Q, X, ranking = _data()
    out = pycsa.create("alpha_qe", k=3).rerank(Q.requires_grad_(), X.requires_grad_(), ranking)
    _sound(out, X.shape[0])


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "", 3.5])
def test_invalid_devices_are_refused_by_name(device):
    _refused(lambda: as_device(device), "device")
    model = CSA(num_anchors=4, dim=16, depth=1, heads=2).eval()
    _refused(lambda: pycsa.create("csa", model=model, k=8, device=device), "device")  # when built
    Q, X, ranking = _data()
    r = pycsa.create("csa", model=model, k=8)
    r.device = device  # set after building: refused at the rerank
    _refused(lambda: r.rerank(Q, X, ranking), "device")


def test_valid_devices_pass():
    assert as_device("cpu") == torch.device("cpu") and as_device(torch.device("cpu")).type == "cpu"
    if not torch.cuda.is_available():
        _refused(lambda: as_device("cuda"), "device")


# ------------------------------------------------------------------ a database changed after fit

FITTED = [m for m in TRAINING_FREE if registered(m).keeps_fit]


def test_the_fitted_rerankers_are_the_ones_that_keep_state():
    assert {"aqe", "aqewd", "alpha_qe", "dba", "alpha_dba", "alpha_qe_dba", "diffusion",
            "diffusion_truncated"} == set(FITTED)


@pytest.mark.parametrize("name", FITTED)
@pytest.mark.parametrize("kind", ["torch", "numpy"])
def test_a_database_changed_after_fit_is_refused(name, kind):
    Q, X, ranking = _data()
    if kind == "numpy":
        Q, X, ranking = Q.numpy(), X.numpy(), pycsa.Ranking(ranking.indices.numpy(), ranking.scores.numpy())
    r = _create(name).fit(X)
    want = r.rerank(Q, X, ranking)
    _sound(want, 40)
    other = X.copy() if kind == "numpy" else X.clone()  # equal values, another array
    _refused(lambda: r.rerank(Q, other, ranking), "database: differs from the one given to fit")
    _refused(lambda: r.rerank(Q, X[:30], pycsa.Ranking(ranking.indices % 30, ranking.scores)), "database")
    X[5] = -X[5]  # in place: torch counts it, numpy's edit is in a sampled row
    err = _refused(lambda: r.rerank(Q, X, ranking), "database")
    assert "fit again" in str(err) and "changed in place" in str(err)
    got = r.fit(X).rerank(Q, X, ranking)  # fit again: accepted
    _sound(got, 40)


def test_the_same_numpy_buffer_is_the_same_database():
    Q, X, ranking = _data()
    r = pycsa.create("dba", k=3).fit(X.numpy())
    a = r.rerank(Q.numpy(), X.numpy(), ranking)  # another ndarray object over the same memory
    b = r.rerank(Q, X, ranking)  # and the tensor it came from
    np.testing.assert_array_equal(a.indices, b.indices.numpy())


def test_rerank_before_fit_fits_and_then_keeps_that_database():
    Q, X, ranking = _data()
    r = pycsa.create("diffusion", k=5)
    first = r.rerank(Q, X, ranking)
    assert torch.equal(first.indices, pycsa.create("diffusion", k=5).fit(X).rerank(Q, X, ranking).indices)
    _refused(lambda: r.rerank(Q, X.clone(), ranking), "database")


def test_a_chain_checks_each_fitted_member():
    Q, X, ranking = _data()
    chain = pycsa.create("alpha_dba+alpha_qe")
    chain.rerank(Q, X, ranking)
    X.mul_(-1.0)
    _refused(lambda: chain.rerank(Q, X, ranking), "database")


def test_fingerprint_sees_in_place_changes():
    X = torch.randn(1000, 4)
    before = fingerprint(X)
    assert not before.differs(fingerprint(X))
    X[999, 0] += 1  # torch's version counter, even outside the sampled rows
    assert before.differs(fingerprint(X)) == "changed in place since"
    A = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    before = fingerprint(A)
    A[9] += 1  # every row of a small array is sampled
    assert before.differs(fingerprint(A)) == "changed in place since"
    assert before.differs(fingerprint(A[::2])).startswith("shape")


def test_a_corrupt_diffusion_cache_entry_is_rebuilt_with_a_warning(tmp_path):
    Q, X, ranking = _data()
    want = pycsa.create("diffusion", k=5, cache_dir=tmp_path).fit(X).rerank(Q, X, ranking)
    (entry,) = tmp_path.glob("diffusion-graph-*.pt")
    entry.write_bytes(entry.read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match="cache_dir"):
        got = pycsa.create("diffusion", k=5, cache_dir=tmp_path).fit(X).rerank(Q, X, ranking)
    assert torch.equal(got.indices, want.indices)
    pycsa.create("diffusion", k=5, cache_dir=tmp_path).fit(X)  # rewritten: no warning now


# ------------------------------------------------------------------ probe findings (issue #17, round 2)

def _named(fn, name, kinds=(ValueError, TypeError, IndexError)):
    """The error's message starts with the argument's name and a colon."""
    with pytest.raises(kinds) as exc:
        fn()
    assert str(exc.value).startswith(f"{name}:"), f"{exc.value!r} does not start with {name}:"
    return exc.value


def _probe_data(n=200):
    Q, X = _unit(10, d=16, seed=5), _unit(n, d=16, seed=6)
    scores, indices = pycsa.search(Q, X, 50)
    return Q, X, pycsa.Ranking(indices, scores)


DIFFUSIONS = ["diffusion", "diffusion_truncated"]


@pytest.mark.parametrize("name", DIFFUSIONS)
def test_diffusion_seeds_come_from_the_features_not_the_ranking_scores(name):
    # negated distances (a re-ID convention), all-zero scores: the same query, the same seeds
    Q, X, (idx, sc) = _probe_data()
    want = pycsa.create(name).fit(X).rerank(Q, X, pycsa.Ranking(idx, sc))
    dist = torch.cdist(Q, X).gather(1, idx)
    for scores in (-dist, torch.zeros_like(sc)):
        got = pycsa.create(name).fit(X).rerank(Q, X, pycsa.Ranking(idx, scores))
        assert torch.equal(got.indices, want.indices)
    in_index_order = (want.indices == torch.arange(want.indices.shape[1])).all(1)
    assert not bool(in_index_order.any())


@pytest.mark.parametrize("name", DIFFUSIONS)
def test_one_huge_query_changes_no_other_query(name):
    Q, X, ranking = _probe_data()
    want = pycsa.create(name).fit(X).rerank(Q, X, ranking)
    Q2 = Q.clone()
    Q2[0] *= 1e15
    got = pycsa.create(name).fit(X).rerank(Q2, X, ranking)
    assert torch.equal(got.indices, want.indices)  # the scaled query's own ranking too
    torch.testing.assert_close(got.scores[1:], want.scores[1:])


@pytest.mark.parametrize("name", DIFFUSIONS)
def test_a_query_without_a_positive_seed_keeps_its_input_row(name):
    Q, X, (idx, sc) = _probe_data()
    idx = idx.clone()
    idx[3] = torch.argsort(X @ Q[3])[:50]  # the least similar items first: every seed <= 0
    assert bool(((X[idx[3, :10]] @ Q[3]) < 0).all())
    out = pycsa.create(name).fit(X).rerank(Q, X, pycsa.Ranking(idx, sc))
    assert torch.equal(out.indices[3], idx[3]) and torch.equal(out.scores[3], sc[3])
    assert not torch.equal(out.indices[0], idx[0])  # the other queries are diffused


@pytest.mark.parametrize("scale,beta", [(1e10, 0.15), (1e18, 0.15), (1e-20, 0.15), (1.0, 1e39), (1.0, 1e300)])
def test_superglobal_takes_any_accepted_scale_and_any_finite_beta(scale, beta):
    from _baselines import superglobal_plain  # the plain float64 loop of SPEC §7

    Q, X, (idx, sc) = _probe_data()
    got = pycsa.superglobal_rerank(Q * scale, X * scale, idx, M=20, K=5, beta=beta)
    assert torch.equal(got, superglobal_plain((Q * scale).double(), (X * scale).double(), idx, 20, 5, beta))
    out = pycsa.create("superglobal", M=20, K=5, beta=beta).rerank(Q * scale, X * scale, pycsa.Ranking(idx, sc))
    assert torch.equal(out.indices, got)
    _sound(out, X.shape[0])


@pytest.mark.parametrize("name", ["aqe", "aqewd", "dba"])
def test_expansions_without_an_exponent_take_no_alpha(name):
    assert "alpha" not in inspect.signature(registered(name)).parameters
    with pytest.raises(TypeError, match="alpha"):
        pycsa.create(name, alpha=3.0)
    from pycsa.tune import SEARCH_SPACES
    assert "alpha" not in SEARCH_SPACES.get(name, {})


@pytest.mark.parametrize("name", ["alpha_qe", "alpha_dba"])
def test_the_alpha_expansions_use_alpha(name):
    Q, X, ranking = _probe_data()
    a = pycsa.create(name, alpha=0.0).rerank(Q, X, ranking)
    b = pycsa.create(name, alpha=50.0).rerank(Q, X, ranking)
    assert not torch.equal(a.scores, b.scores)


@pytest.mark.parametrize("name", TRAINING_FREE + ["csa"])
def test_a_ranking_that_lists_an_item_twice_is_refused(name):
    Q, X, (idx, sc) = _data(n=40, depth=10)
    idx = idx.clone()
    idx[2, 7] = idx[2, 1]
    err = _named(lambda: _create(name).rerank(Q, X, pycsa.Ranking(idx, sc)), "ranking.indices")
    assert "row 2" in str(err) and f"item {int(idx[2, 1])}" in str(err)


@pytest.mark.parametrize("name", TRAINING_FREE + ["csa"])
def test_a_ranking_deeper_than_the_database_is_refused_by_name(name):
    Q, X, (idx, sc) = _data(n=40, depth=40)
    deep_i, deep_s = torch.cat([idx, idx[:, :5]], 1), torch.cat([sc, sc[:, :5]], 1)
    err = _named(lambda: _create(name).rerank(Q, X, pycsa.Ranking(deep_i, deep_s)), "ranking.indices")
    assert "45" in str(err) and "40" in str(err)


def test_superglobal_rerank_refuses_repeated_ranks():
    Q, X, (idx, _) = _data()
    idx = idx.clone()
    idx[0, 3] = idx[0, 0]
    _named(lambda: pycsa.superglobal_rerank(Q, X, idx), "ranks")


@pytest.mark.parametrize("name", TRAINING_FREE + ["csa"])
def test_an_empty_database_is_refused_by_fit_and_rerank(name):
    Q, X, (idx, sc) = _data()
    empty = np.zeros((0, 8), np.float32)
    err = _named(lambda: _create(name).fit(empty), "database")
    assert "is empty" in str(err)
    err = _named(lambda: _create(name).rerank(Q[:0], X[:0], pycsa.Ranking(idx[:0], sc[:0])), "database")
    assert "is empty" in str(err)


@pytest.mark.parametrize("name", TRAINING_FREE + ["csa"])
def test_features_of_dimension_zero_are_refused(name):
    Q, X, (idx, sc) = _data()
    _named(lambda: _create(name).fit(np.zeros((40, 0), np.float32)), "database")
    _named(lambda: _create(name).rerank(Q[:, :0], X[:, :0], pycsa.Ranking(idx, sc)), "queries")
    _named(lambda: pycsa.search(Q[:, :0], X[:, :0], 3), "database")


@pytest.mark.parametrize("x", [np.zeros((0, 8), np.float32), np.zeros((40, 0), np.float32),
                               torch.zeros(0, 8), torch.zeros(40, 0), torch.zeros(0, 8, dtype=torch.bfloat16)])
def test_fingerprints_of_zero_size_arrays(x):
    assert not fingerprint(x).differs(fingerprint(x))


TOO_BIG = 2 ** 63  # one past int64


@pytest.mark.parametrize("call", [
    lambda Q, X: pycsa.k_reciprocal(torch.cdist(Q, X), torch.cdist(Q, Q), torch.cdist(X, X), k1=TOO_BIG),
    lambda Q, X: k_reciprocal_features(Q, X, k1=TOO_BIG),
    lambda Q, X: pycsa.create("k_reciprocal", k1=TOO_BIG),
    lambda Q, X: importlib.import_module("pycsa.rerank.kreciprocal").k_reciprocal_self(X, k1=TOO_BIG),
    lambda Q, X: re_ranking(torch.cdist(Q, X), torch.cdist(Q, Q), torch.cdist(X, X), k1=TOO_BIG),
])
def test_k1_beyond_int64_is_refused_by_name(call):
    Q, X, _ = _data()
    _named(lambda: call(Q, X), "k1")


def test_k1_up_to_int64_is_clamped_as_documented():
    Q, X, _ = _data()
    torch.testing.assert_close(k_reciprocal_features(Q, X, k1=2 ** 63 - 1, k2=2),
                               k_reciprocal_features(Q, X, k1=Q.shape[0] + X.shape[0] - 1, k2=2))


def test_integer_keeps_to_int64():
    assert integer(2 ** 63 - 1, "k", low=1) == 2 ** 63 - 1 and integer(-2 ** 63, "k") == -2 ** 63
    for bad in (2 ** 63, -2 ** 63 - 1, 10 ** 30):
        _named(lambda: integer(bad, "block_elems"), "block_elems")
    _named(lambda: pycsa.create("diffusion", block_elems=2 ** 64), "block_elems")


@pytest.mark.parametrize("name,kind", [(5, TypeError), (None, TypeError), ("", ValueError), ("a+b", ValueError)])
def test_register_takes_only_a_usable_name(name, kind):
    before = pycsa.available()

    class Probe(pycsa.Reranker):
        pass

    _named(lambda: pycsa.register(name)(Probe), "name", kinds=kind)
    assert pycsa.available() == before


@pytest.mark.parametrize("name", [5, None, ("aqe",), b"aqe"])
def test_create_and_registered_take_a_str(name):
    _named(lambda: pycsa.create(name), "name", kinds=TypeError)
    _named(lambda: registered(name), "name", kinds=TypeError)


# ------------------------------------------------------------------ import cost

def test_import_does_not_load_faiss():
    code = "import sys, pycsa; print('faiss' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
