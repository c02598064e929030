"""RRT serving: one query's top-100 re-ranked, every candidate with 500 local descriptors.

    pytest bench/test_bench_rrt.py --benchmark-columns=min,median,rounds

The issue's targets: at most 1 s per query on CPU, 5 ms per query on the H100 in
bfloat16. Paper-default model (d=128, 6 layers, 4 heads, FFN 1024), untrained
weights (the time does not depend on them). "ragged": candidates with 100..500
descriptors (the lengths let shorter pairs cost less). CI runs this with
--benchmark-disable (once each).
"""
from __future__ import annotations

import pytest
import torch

from pycsa.datasets.local import LocalDescriptors
from pycsa.rrt import RRT, rerank_scores

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def _store(n, counts, dim=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.as_tensor(counts)
    M = int(counts.sum())
    desc = torch.nn.functional.normalize(torch.randn(M, dim, generator=g), dim=1)
    return LocalDescriptors(desc, torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
                            torch.randint(0, 7, (M,), generator=g))


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", ["500", "ragged"])
def test_rrt_one_query_top100(benchmark, case, dtype, device, timed):
    if device == "cuda" and dtype == "f32":
        pytest.skip("the GPU target is bfloat16")
    n = 101  # the query is item 0
    counts = [500] * n if case == "500" else torch.linspace(100, 500, n).long().tolist()
    local = _store(n, counts).to(device)
    G = torch.nn.functional.normalize(torch.randn(n, 2048), dim=1).to(device, DTYPES[dtype])
    torch.manual_seed(0)
    model = RRT().to(device=device, dtype=DTYPES[dtype]).eval()
    top = torch.arange(1, n).unsqueeze(0)
    fn = lambda: rerank_scores(model, G, local, top, batch_pairs=100)  # noqa: E731
    out = benchmark(timed(fn))
    assert out.shape == (1, 100)
