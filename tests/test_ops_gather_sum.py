"""weighted_gather_sum against float64 maths."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pycsa
from pycsa.ops import reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n, d, r, k", [(1, 1, 1, 1), (13, 7, 5, 3), (101, 37, 29, 11), (50, 8, 0, 4), (9, 3, 4, 0)])
def test_matches_float64(n, d, r, k, dtype, device):
    g = torch.Generator().manual_seed(n + d)
    src = torch.randn(n, d, generator=g).to(dtype).to(device)
    idx = torch.randint(0, n, (r, k), generator=g).to(device)
    w = torch.rand(r, k, generator=g).to(device)
    out = pycsa.ops.weighted_gather_sum(src, idx, w)
    want = reference.weighted_gather_sum(src.double().cpu(), idx.cpu(), w.double().cpu())
    assert out.shape == (r, d)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(out.double().cpu(), want, atol=tol * max(1, k))


def test_strided_source_and_errors():
    big = torch.randn(20, 30)
    src = big[:, 5:17]
    idx = torch.tensor([[0, 19, 3]])
    w = torch.tensor([[1.0, 0.5, -2.0]])
    assert torch.allclose(pycsa.ops.weighted_gather_sum(src, idx, w), reference.weighted_gather_sum(src, idx, w))
    with pytest.raises(IndexError, match="index"):
        pycsa.ops.weighted_gather_sum(src, idx + 1, w)
    with pytest.raises(ValueError, match="weight"):
        pycsa.ops.weighted_gather_sum(src, idx, w[:, :2])
    with pytest.raises(TypeError, match="index"):
        pycsa.ops.weighted_gather_sum(src, idx.float(), w)


def test_the_reference_path_works_in_blocks_of_rows(monkeypatch, device):
    # the path CUDA takes (and the CPU without the extension): r x k x d = 2^26 + 3·2^10
    # gathered values, so the rows run in two blocks
    from pycsa.ops import _extension

    monkeypatch.setattr(_extension, "use_kernels", lambda op, dev: False)
    g = torch.Generator().manual_seed(0)
    src = torch.randn(300, 1024, generator=g).to(device)
    idx = torch.randint(0, 300, (2 ** 15 + 3, 2), generator=g).to(device)
    w = torch.rand(idx.shape, generator=g).to(device)
    out = pycsa.ops.weighted_gather_sum(src, idx, w)
    want = (src[idx] * w.unsqueeze(-1)).sum(1)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-4)


def test_numpy_in_numpy_out():
    rng = np.random.default_rng(0)
    src = rng.standard_normal((12, 5)).astype(np.float32)
    idx = rng.integers(0, 12, (4, 3))
    w = rng.random((4, 3)).astype(np.float32)
    out = pycsa.ops.weighted_gather_sum(src, idx, w)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    want = pycsa.ops.weighted_gather_sum(torch.from_numpy(src), torch.from_numpy(idx), torch.from_numpy(w))
    np.testing.assert_array_equal(out, want.numpy())


@pytest.mark.parametrize(
    "change, exc, word",
    [
        (dict(index=torch.tensor([[True, False]])), TypeError, "index"),  # a mask, not rows 0 and 1
        (dict(index=torch.tensor([[0.0, 1.0]])), TypeError, "index"),
        (dict(index=torch.tensor([0, 1])), ValueError, "index"),
        (dict(index=[[0, 1]]), TypeError, "index"),
        (dict(source=torch.zeros(5)), ValueError, "source"),
        (dict(source=torch.zeros(5, 3, dtype=torch.int64)), TypeError, "source"),
        (dict(weight=torch.ones(1, 3)), ValueError, "weight"),
        (dict(index=torch.tensor([[0, 1]], device="meta")), ValueError, "index"),
        (dict(weight=torch.ones(1, 2, device="meta")), ValueError, "weight"),
    ],
)
def test_bad_input_names_the_argument(change, exc, word):
    args = dict(source=torch.zeros(5, 3), index=torch.tensor([[0, 1]]), weight=torch.ones(1, 2))
    args.update(change)
    with pytest.raises(exc, match=word):
        pycsa.ops.weighted_gather_sum(**args)
