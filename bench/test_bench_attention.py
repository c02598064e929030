"""Attention: pycsa.ops.attention against torch's scaled_dot_product_attention (SDPA).

    pytest bench/test_bench_attention.py --benchmark-group-by=param:case

Cases "tN": full sequences of N tokens, 12 heads of 64 (the CSA model's attention).
"ragged": 8 sequences of 128..1024 valid tokens in a 1024-token batch; pycsa skips
the padding through ``lengths``, SDPA gets the same batch with a key-padding mask
(what a user of SDPA runs today). CI runs this file with --benchmark-disable.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pycsa

CASES = {
    # name: (batch, heads, tokens, ragged, devices)
    "t256": (8, 12, 256, False, ("cpu", "cuda")),
    "t1024": (1, 12, 1024, False, ("cpu",)),
    "t1024-b16": (16, 12, 1024, False, ("cuda",)),
    "t2048": (8, 12, 2048, False, ("cuda",)),
    "ragged": (8, 12, 1024, True, ("cpu", "cuda")),
}
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def _inputs(case, dtype, device):
    B, H, T, ragged, _ = CASES[case]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, 64, generator=g).to(dtype).to(device) for _ in range(3))
    lengths = torch.linspace(128, T, B).long().to(device) if ragged else None
    return q, k, v, lengths


@pytest.mark.parametrize("impl", ["pycsa", "sdpa"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", list(CASES))
def test_attention(benchmark, case, dtype, impl, device, timed):
    if device not in CASES[case][4]:
        pytest.skip(f"case {case} is sized for {'/'.join(CASES[case][4])}")
    if device == "cuda" and dtype == "f32":
        pytest.skip("the GPU target is bfloat16")
    q, k, v, lengths = _inputs(case, DTYPES[dtype], device)
    if impl == "pycsa":
        fn = lambda: pycsa.ops.attention(q, k, v, lengths)  # noqa: E731
    elif lengths is None:
        fn = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
    else:  # the peer as users run it: a key-padding mask over the padded batch
        mask = (torch.arange(q.shape[2], device=device) < lengths[:, None])[:, None, None, :]
        fn = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # noqa: E731
    out = benchmark(timed(fn))
    assert out.shape == q.shape
