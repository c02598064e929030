"""pycsa.k_reciprocal and its compat drop-ins against the plain-numpy baseline (SPEC §4)."""
from __future__ import annotations

import math

import numpy as np
import torch
import pytest

import pycsa
from _baselines import baselines
from pycsa.rerank.kreciprocal import k_reciprocal_features

re_ranking_numpy = baselines.re_ranking_numpy


def _feats(nq, ng, dim=16, seed=0, num_ids=None):
    """Re-ID-like continuous features: identity clusters plus noise, L2-normalised (no exact ties)."""
    rng = np.random.default_rng(seed)
    num_ids = num_ids or max(1, (nq + ng) // 6)
    centers = rng.standard_normal((num_ids, dim))
    ids_q = rng.integers(0, num_ids, nq)
    ids_g = rng.integers(0, num_ids, ng)
    Q = centers[ids_q] + 0.6 * rng.standard_normal((nq, dim))
    G = centers[ids_g] + 0.6 * rng.standard_normal((ng, dim))
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    G /= np.linalg.norm(G, axis=1, keepdims=True)
    return Q.astype(np.float32), G.astype(np.float32)


def _euclid(a, b):
    """Exact, symmetric Euclidean distances in float64 (a[i]-b[j] and b[j]-a[i] square alike)."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def _dists(Q, G, dtype=np.float64):
    return _euclid(Q, G).astype(dtype), _euclid(Q, Q).astype(dtype), _euclid(G, G).astype(dtype)


CASES = [
    # (q, g, k1, k2, lambda)
    (1, 1, 20, 6, 0.3),  # N = 2: k1 + 1 > N, every set is {0, 1}
    (1, 1, 20, 1, 0.3),
    (1, 1, 1, 1, 0.5),
    (7, 29, 20, 6, 0.3),  # k1 + 1 < N = 36
    (7, 29, 5, 3, 0.0),
    (7, 29, 5, 1, 1.0),
    (3, 11, 20, 6, 0.3),  # k1 + 1 > N = 14: clamped
    (5, 13, 7, 40, 0.3),  # k2 > N
    (40, 300, 20, 6, 0.3),
    (40, 300, 10, 1, 0.3),
    (40, 300, 2, 2, 0.7),
]


@pytest.mark.parametrize("nq,ng,k1,k2,lam", CASES)
def test_matches_numpy_baseline(nq, ng, k1, k2, lam, device):
    Q, G = _feats(nq, ng, seed=nq * 1000 + ng)
    qg, qq, gg = _dists(Q, G)
    want = re_ranking_numpy(qg, qq, gg, k1=k1, k2=k2, lambda_value=lam)
    if device == "cpu":
        got = pycsa.k_reciprocal(qg, qq, gg, k1=k1, k2=k2, lambda_value=lam)
        assert isinstance(got, np.ndarray)
    else:  # torch tensors stay on their device
        t = pycsa.k_reciprocal(*(torch.from_numpy(m).to(device) for m in (qg, qq, gg)), k1=k1, k2=k2,
                               lambda_value=lam)
        assert t.device.type == device
        got = t.cpu().numpy()
    assert got.shape == (nq, ng)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("nq,ng,k1,k2", [(1, 1, 20, 6), (7, 29, 5, 3), (40, 300, 20, 6), (13, 101, 20, 1)])
def test_features_route_matches_the_cpu_kernel(nq, ng, k1, k2, device):
    Q, G = (torch.from_numpy(x) for x in _feats(nq, ng, seed=nq + ng))
    want = k_reciprocal_features(Q, G, k1=k1, k2=k2)
    got = k_reciprocal_features(Q.to(device), G.to(device), k1=k1, k2=k2)
    assert got.device.type == device and got.shape == (nq, ng)
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-5)


def test_features_route_ignores_a_global_tf32_setting(device):
    if device != "cuda":
        pytest.skip("TF32 is a CUDA matmul setting")
    Q, G = (torch.from_numpy(x) for x in _feats(31, 257, dim=512, seed=5))
    want = k_reciprocal_features(Q, G)
    before = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"  # lets at::mm use TF32 (10-bit mantissa)
    try:
        got = k_reciprocal_features(Q.cuda(), G.cuda()).cpu()
    finally:
        torch.backends.cuda.matmul.fp32_precision = before
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_matches_numpy_baseline_float32_inputs():
    Q, G = _feats(17, 83, seed=3)
    qg, qq, gg = _dists(Q, G, np.float32)
    want = re_ranking_numpy(qg, qq, gg)
    got = pycsa.k_reciprocal(qg, qq, gg)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_default_arguments_are_the_papers():
    Q, G = _feats(11, 61, seed=5)
    qg, qq, gg = _dists(Q, G)
    np.testing.assert_allclose(pycsa.k_reciprocal(qg, qq, gg), re_ranking_numpy(qg, qq, gg, 20, 6, 0.3), atol=1e-5)


def test_two_items_by_hand():
    """N = 2 with k2 = 1 is not degenerate: check the baseline itself, so the comparison means something."""
    qg, qq, gg = np.array([[0.8]]), np.zeros((1, 1)), np.zeros((1, 1))
    # normalised squared distances [[0, 1], [1, 0]]; V rows softmax(-[0, 1]); k2 = 1 keeps them
    b = math.exp(-1) / (1 + math.exp(-1))
    jaccard = 1 - (2 * b) / (2 - 2 * b)
    expected = 0.7 * jaccard + 0.3 * 1.0
    assert re_ranking_numpy(qg, qq, gg, k1=20, k2=1, lambda_value=0.3)[0, 0] == pytest.approx(expected, abs=1e-6)
    # with k2 = 2 both V rows become [0.5, 0.5]: Jaccard 0, only the λ part is left
    assert re_ranking_numpy(qg, qq, gg, k1=20, k2=6, lambda_value=0.3)[0, 0] == pytest.approx(0.3, abs=1e-6)
    got = pycsa.k_reciprocal(qg, qq, gg, k1=20, k2=1, lambda_value=0.3)
    assert got.shape == (1, 1)
    assert got[0, 0] == pytest.approx(expected, abs=1e-5)


def test_expansion_branch_is_exercised():
    """The test data must make the > 2/3 expansion add items, or the comparison misses that path."""
    mod = baselines
    Q, G = _feats(40, 300, seed=40 * 1000 + 300)
    qg, qq, gg = _dists(Q, G)
    d = np.concatenate([np.concatenate([qq, qg], 1), np.concatenate([qg.T, gg], 1)]) ** 2
    rank = np.argsort(d, axis=1)
    grew = 0
    for i in range(d.shape[0]):
        members = mod._reciprocal_members(rank, i, 21)
        extra = set()
        for c in members:
            cand = mod._reciprocal_members(rank, c, 11)
            if len(np.intersect1d(cand, members)) > 2 / 3 * len(cand):
                extra.update(cand.tolist())
        grew += bool(extra - set(members.tolist()))
    assert grew > 20


def test_duplicate_gallery_rows_are_finite_and_consistent():
    Q, G = _feats(9, 40, seed=11)
    G = np.concatenate([G, G[[3, 17, 17]]])  # exact duplicates: ties in every distance to them
    qg, qq, gg = _dists(Q, G)
    got = pycsa.k_reciprocal(qg, qq, gg)
    assert got.shape == (9, 43)
    assert np.isfinite(got).all()
    assert (got >= -1e-6).all() and (got <= 1 + 1e-6).all()
    # the λ part is identical for duplicates, and so, up to tie order in the top-k sets, is the rest:
    # the columns of a duplicated item agree closely
    for a, b in [(3, 40), (17, 41), (41, 42)]:
        np.testing.assert_allclose(got[:, a], got[:, b], atol=0.05)
    # a baseline run on the same input is finite too (it breaks ties by numpy's argsort)
    assert np.isfinite(re_ranking_numpy(qg, qq, gg)).all()


def test_numpy_in_numpy_out_float32():
    Q, G = _feats(4, 20, seed=2)
    out = pycsa.k_reciprocal(*_dists(Q, G))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32


def _bad(nq=4, ng=9):
    Q, G = _feats(nq, ng, seed=7)
    return list(_dists(Q, G))


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda d: d.__setitem__(0, d[0].reshape(-1)), "q_g_dist"),  # 1-D
        (lambda d: d.__setitem__(1, d[1][:, :3]), "q_q_dist"),  # q_q not square
        (lambda d: d.__setitem__(2, d[2][:, :5]), "g_g_dist"),  # g_g not square
        (lambda d: d.__setitem__(1, _bad(5, 9)[1]), "q_q_dist|q_g_dist"),  # q mismatch
        (lambda d: d.__setitem__(2, _bad(4, 8)[2]), "g_g_dist|q_g_dist"),  # g mismatch
        (lambda d: d[0].__setitem__((1, 2), np.nan), "q_g_dist"),
        (lambda d: d[1].__setitem__((0, 3), np.nan), "q_q_dist"),
        (lambda d: d[2].__setitem__((5, 5), np.nan), "g_g_dist"),
    ],
)
def test_bad_matrices_raise(mutate, match):
    d = _bad()
    mutate(d)
    with pytest.raises(ValueError, match=match):
        pycsa.k_reciprocal(*d)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"k1": 0}, "k1"),
        ({"k1": -3}, "k1"),
        ({"k2": 0}, "k2"),
        ({"lambda_value": -0.1}, "lambda_value"),
        ({"lambda_value": 1.5}, "lambda_value"),
        ({"lambda_value": float("nan")}, "lambda_value"),
    ],
)
def test_bad_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pycsa.k_reciprocal(*_bad(), **kwargs)


def test_compat_re_ranking_equals_k_reciprocal():
    from pycsa import compat

    Q, G = _feats(12, 70, seed=21)
    qg, qq, gg = _dists(Q, G)
    a = compat.re_ranking(qg, qq, gg, k1=15, k2=4, lambda_value=0.2)
    b = pycsa.k_reciprocal(qg, qq, gg, k1=15, k2=4, lambda_value=0.2)
    assert isinstance(a, np.ndarray) and a.shape == (12, 70)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(compat.re_ranking(qg, qq, gg), re_ranking_numpy(qg, qq, gg), rtol=0, atol=1e-5)


def test_compat_re_ranking_features_equals_distances_route():
    from pycsa import compat

    Q, G = _feats(12, 70, seed=22)  # already L2-normalised: Euclidean = sqrt(2 - 2 cos)
    Q64, G64 = Q.astype(np.float64), G.astype(np.float64)

    def ed(a, b):
        return np.sqrt(np.maximum(2 - 2 * a @ b.T, 0))

    want = compat.re_ranking(ed(Q64, G64), ed(Q64, Q64), ed(G64, G64), k1=20, k2=6, lambda_value=0.3)
    got = compat.re_ranking_features(Q, G, k1=20, k2=6, lambda_value=0.3)
    assert isinstance(got, np.ndarray) and got.shape == (12, 70)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
