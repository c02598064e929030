"""pycsa.search: exact inner-product top-k, ties by lower index, faiss and torch paths."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pycsa
import importlib

search_module = importlib.import_module("pycsa.search")  # the package exports the function under this name

BACKENDS = ["torch"] + (["faiss"] if search_module.faiss is not None else [])


def _brute(Q, X, k):
    S = (Q.double() @ X.double().T).cpu().numpy()
    # lexsort: last key first -> by descending score, then ascending index
    order = np.stack([np.lexsort((np.arange(S.shape[1]), -row)) for row in S])[:, :k]
    return np.take_along_axis(S, order, 1), order


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("q, n, d, k", [(1, 1, 1, 1), (7, 101, 13, 5), (30, 997, 32, 997), (3, 50, 8, 1)])
def test_matches_brute_force(backend, q, n, d, k):
    # Small integers: every product is exact in float32, so the order is exact and ties are common.
    g = torch.Generator().manual_seed(q * n)
    Q = torch.randint(-3, 4, (q, d), generator=g).float()
    X = torch.randint(-3, 4, (n, d), generator=g).float()
    s, i = pycsa.search(Q, X, k, backend=backend, block_elems=64)  # tiny blocks: many merges
    s_ref, i_ref = _brute(Q, X, k)
    assert i.dtype == torch.int64 and s.dtype == torch.float32 and s.shape == (q, k)
    np.testing.assert_array_equal(i.numpy(), i_ref)
    np.testing.assert_allclose(s.numpy(), s_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_the_lower_index(backend):
    base = torch.randint(-3, 4, (6, 16)).float()  # exact products: duplicates tie bit for bit
    X = base[torch.tensor([3, 1, 3, 0, 1, 3, 5, 2, 3, 4, 3, 1])]  # many exact duplicates
    Q = base[torch.tensor([3, 1])]
    for k in (1, 3, 5, 12):
        _, i = pycsa.search(Q, X, k, backend=backend, block_elems=8)
        np.testing.assert_array_equal(i.numpy(), _brute(Q, X, k)[1])
    _, i = pycsa.search(Q, X, 5, backend=backend)
    assert i[0].tolist() == [0, 2, 5, 8, 10]  # all five copies of row 3, in index order


def test_backends_agree_and_numpy_round_trip():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 48)).astype(np.float32)
    Q = rng.standard_normal((64, 48)).astype(np.float32)
    results = [pycsa.search(Q, X, 20, backend=b) for b in BACKENDS]
    for s, i in results:
        assert isinstance(s, np.ndarray) and isinstance(i, np.ndarray)
        np.testing.assert_array_equal(i, results[0][1])


def test_half_inputs_and_progress():
    g = torch.Generator().manual_seed(0)
    X = torch.nn.functional.normalize(torch.randn(300, 24, generator=g), dim=1).to(torch.bfloat16)
    seen = []
    s, i = pycsa.search(X[:10], X, 4, backend="torch", block_elems=50, progress=lambda a, b: seen.append((a, b)))
    assert s.dtype == torch.float32 and i[:, 0].tolist() == list(range(10))
    assert seen and seen[-1] == (10, 10)


def test_cuda_matches_cpu(device):
    g = torch.Generator().manual_seed(5)
    Q = torch.randint(-3, 4, (33, 20), generator=g).float()
    X = torch.randint(-3, 4, (1009, 20), generator=g).float()
    s, i = pycsa.search(Q.to(device), X.to(device), 17, block_elems=500)
    assert i.device.type == device
    np.testing.assert_array_equal(i.cpu().numpy(), _brute(Q, X, 17)[1])


@pytest.mark.parametrize(
    "args, exc, word",
    [
        ((torch.zeros(2, 3), torch.zeros(5, 3), 6), ValueError, "k"),
        ((torch.zeros(2, 3), torch.zeros(5, 3), 0), ValueError, "k"),
        ((torch.zeros(2, 3), torch.zeros(5, 4), 1), ValueError, "queries"),
        ((torch.zeros(3), torch.zeros(5, 3), 1), ValueError, "queries"),
        ((torch.zeros(2, 3, dtype=torch.int64), torch.zeros(5, 3), 1), TypeError, "queries"),
        ((torch.zeros(2, 3), torch.full((5, 3), float("nan")), 1), ValueError, "database"),
    ],
)
def test_bad_input(args, exc, word):
    with pytest.raises(exc, match=word):
        pycsa.search(*args)
