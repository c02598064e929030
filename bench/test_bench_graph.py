"""The re-ID kernels, C++ against the plain-PyTorch / numpy code they replace (small sizes;
bench/rerank_side_by_side.py runs the issue's Market and MSMT sizes).

    pytest bench/test_bench_graph.py --benchmark-group-by=func
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pycsa
from kreciprocal_numpy import re_ranking_numpy
from pycsa.datasets import make_reid
from pycsa.ops import reference
from pycsa.rerank.gnn import knn_graph

pytestmark = pytest.mark.skipif(not pycsa.ops.has_cpu_kernels(), reason="needs the compiled kernels")


@pytest.fixture(scope="module")
def reid():
    d = make_reid(num_query=300, num_gallery=1700, dim=256, num_ids=100, seed=0)
    return torch.as_tensor(d.query_feats).float(), torch.as_tensor(d.gallery_feats).float()


@pytest.fixture(scope="module")
def graph(reid):
    """The GNN's inputs at this size: the symmetric first layer (CSR), its neighbours and weights."""
    Q, G = reid
    S, R = knn_graph(torch.cat([Q, G]), 26)
    n, k1 = R.shape
    rowptr = torch.arange(0, n * k1 + 1, k1, dtype=torch.int64)
    col = torch.sort(R, dim=1).values.reshape(-1).contiguous()
    A = pycsa.ops.csr_add_transpose(rowptr, col, torch.ones(n * k1))
    nbr, W = R[:, :7].contiguous(), (S[:, :7] ** 2).contiguous()
    return A, nbr, W, Q.shape[0]


@pytest.mark.parametrize("impl", ["cpp", "dense-reference"])
def test_gnn_propagate(benchmark, graph, impl):
    A, nbr, W, _ = graph
    if impl == "cpp":
        out = benchmark(lambda: pycsa.ops.gnn_propagate(*A, nbr, W))
        assert out[0].numel() == A[0].numel()
    else:
        D = reference.csr_to_dense(*A)
        out = benchmark(lambda: reference.gnn_propagate(D, nbr, W))
        assert out.shape == D.shape


@pytest.mark.parametrize("impl", ["cpp-fused", "cpp-propagate-then-cross", "dense-reference"])
def test_gnn_last_layer_and_cross(benchmark, graph, impl):
    A, nbr, W, q = graph
    B = pycsa.ops.csr_add_transpose(*pycsa.ops.gnn_propagate(*A, nbr, W))
    if impl == "cpp-fused":
        out = benchmark(lambda: pycsa.ops.gnn_propagate_cross(*B, nbr, W, q))
    elif impl == "cpp-propagate-then-cross":
        out = benchmark(lambda: pycsa.ops.csr_cross_dense(*pycsa.ops.gnn_propagate(*B, nbr, W), q))
    else:
        D = reference.csr_to_dense(*B)
        out = benchmark(lambda: reference.gnn_propagate_cross(D, nbr, W, q))
    assert out.shape == (q, B[0].numel() - 1 - q)


def test_csr_add_transpose(benchmark, graph):
    A, _, _, _ = graph
    out = benchmark(lambda: pycsa.ops.csr_add_transpose(*A))
    assert out[0].numel() == A[0].numel()


@pytest.mark.parametrize("impl", ["cpp", "numpy"])
def test_k_reciprocal(benchmark, reid, impl):
    Q, G = reid
    dist = lambda a, b: torch.cdist(a, b).numpy()  # noqa: E731
    qg, qq, gg = dist(Q, G), dist(Q, Q), dist(G, G)
    fn = pycsa.k_reciprocal if impl == "cpp" else re_ranking_numpy
    out = benchmark.pedantic(lambda: fn(qg, qq, gg, k1=20, k2=6, lambda_value=0.3), rounds=3 if impl == "cpp" else 1)
    assert np.asarray(out).shape == qg.shape
