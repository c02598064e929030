"""Affinity: our kernels against the plain-PyTorch reference (index_select + bmm).

    pytest bench/test_bench_affinity.py --benchmark-group-by=param:case

CI runs this file with --benchmark-disable (each case once, as a smoke test).
Sizes: CPU cases fit a 2-core machine; "issue" is the issue's GPU target
(B=64, K=1024, L=512, d=2048, bfloat16), run on CUDA only.
"""
from __future__ import annotations

import pytest
import torch

import pycsa
from pycsa.ops import reference

CASES = {
    # name: (B, K, L, d, n, dtype)
    "small-f32": (16, 256, 128, 512, 20_000, torch.float32),
    "small-bf16": (16, 256, 128, 512, 20_000, torch.bfloat16),
    "csa-f32": (8, 1024, 512, 2048, 20_000, torch.float32),  # CSA serving, 8 queries
    "csa-bf16": (8, 1024, 512, 2048, 20_000, torch.bfloat16),
    "issue": (64, 1024, 512, 2048, 100_000, torch.bfloat16),
}


def _inputs(case, device):
    B, K, L, d, n, dtype = CASES[case]
    g = torch.Generator().manual_seed(0)
    X = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1).to(dtype).to(device)
    ranks = torch.randint(0, n, (B, K), generator=g).to(device)
    return X, ranks, L


@pytest.mark.parametrize("impl", ["pycsa", "reference"])
@pytest.mark.parametrize("case", list(CASES))
def test_affinity(benchmark, case, impl, device, timed):
    if case == "issue" and device != "cuda":
        pytest.skip("the issue's size is a GPU target")
    X, ranks, L = _inputs(case, device)
    if impl == "pycsa":
        fn = lambda: pycsa.ops.affinity(X, ranks, L, check_finite=False)  # noqa: E731
    else:
        fn = lambda: reference.affinity(X, ranks, L)  # noqa: E731
    out = benchmark(timed(fn))
    assert out.shape == (ranks.shape[0], ranks.shape[1], L)
