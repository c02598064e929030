"""Exact inner-product search: each backend of pycsa.Index (small sizes; bench/qe_side_by_side.py
times the αQE size, 1,000 x 100,000 x 512, where the search dominates).

    pytest bench/test_bench_search.py --benchmark-group-by=param:dim
"""
from __future__ import annotations

import importlib

import pytest
import torch

import pycsa

search_module = importlib.import_module("pycsa.search")
BACKENDS = ["torch"] + (["faiss"] if search_module.faiss is not None else []) + \
    (["bf16"] if pycsa.ops.has_cpu_kernels() else [])


@pytest.mark.parametrize("dim", [128, 512])
@pytest.mark.parametrize("backend", BACKENDS)
def test_search(benchmark, backend, dim):
    g = torch.Generator().manual_seed(0)
    X = torch.nn.functional.normalize(torch.randn(50_000, dim, generator=g), dim=1)
    Q = torch.nn.functional.normalize(X[:500] + 0.3 * torch.randn(500, dim, generator=g), dim=1)
    index = pycsa.Index(X, backend=backend)
    s, i = benchmark(lambda: index.search(Q, 100))
    assert i.shape == (500, 100)
    if backend == "bf16":  # the bound proves (nearly) every row here: the fallback is not what is timed
        assert index._prefilter.unproven <= 5


@pytest.mark.skipif(not pycsa.ops.has_cpu_kernels(), reason="needs the compiled kernels")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inner_product_topk(benchmark, dtype):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(50_000, 256, generator=g).to(dtype)
    Q = torch.randn(500, 256, generator=g).to(dtype)
    s, i = benchmark(lambda: pycsa.ops.inner_product_topk(Q, X, 200))
    assert i.shape == (500, 200)
