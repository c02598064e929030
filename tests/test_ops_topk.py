"""pycsa.ops.inner_product_topk: the C++ kernel against the plain-PyTorch reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pycsa
from pycsa.ops import reference

pytestmark = pytest.mark.skipif(not pycsa.ops.has_cpu_kernels(), reason="needs the compiled kernels")


def _ints(g, *shape, dtype):
    # small integers: exact in bfloat16, every sum exact in float32, so ties are exact too
    return torch.randint(-3, 4, shape, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("q, n, d, k", [(1, 1, 1, 1), (7, 13, 5, 13), (257, 4099, 7, 31), (3, 8200, 11, 1),
                                        (2, 4097, 3, 4097), (5, 101, 0, 17), (5, 101, 0, 16), (300, 400, 6, 10),
                                        (513, 50, 3, 16)])
def test_matches_reference_exactly(dtype, q, n, d, k):
    # sizes cross both blocks (256 queries, or up to 512 in one; 4,096 rows); d = 0 makes every
    # score 0 (all ties); k <= 16 takes the sorted-insertion rows, (300, 400, ., 10) is SuperGlobal's
    # within-list search
    g = torch.Generator().manual_seed(q * n + d)
    Q, X = _ints(g, q, d, dtype=dtype), _ints(g, n, d, dtype=dtype)
    s, i = pycsa.ops.inner_product_topk(Q, X, k)
    s_ref, i_ref = reference.inner_product_topk(Q, X, k)
    assert s.dtype == torch.float32 and i.dtype == torch.int64 and s.shape == (q, k)
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)
    torch.testing.assert_close(i, i_ref, rtol=0, atol=0)


def test_ties_go_to_the_lower_index_across_blocks():
    base = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    X = base[torch.arange(9000) % 2]  # every other row identical, across three database blocks
    s, i = pycsa.ops.inner_product_topk(base[:1], X, 5)
    assert i[0].tolist() == [0, 2, 4, 6, 8]
    s, i = pycsa.ops.inner_product_topk(base[:1], X, 4600)
    assert i[0, :4500].tolist() == list(range(0, 9000, 2)) and i[0, 4500:].tolist() == list(range(1, 201, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_inputs_against_float64(dtype):
    g = torch.Generator().manual_seed(3)
    Q, X = torch.randn(31, 97, generator=g), torch.randn(5003, 97, generator=g)
    Q, X = Q.to(dtype), X.to(dtype)
    s, i = pycsa.ops.inner_product_topk(Q, X, 50)
    exact = Q.double() @ X.double().T
    # each returned score is its row's product (float32 sum; bf16 rounds it), and nothing outside beats it
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    np.testing.assert_allclose(s.double(), exact.gather(1, i), rtol=tol, atol=tol)
    outside = exact.scatter(1, i, float("-inf")).max(dim=1).values
    assert (outside <= s[:, -1].double() + tol * s[:, -1].double().abs().clamp_min(1)).all()
    assert (s[:, :-1] >= s[:, 1:]).all()


def test_nan_scores_rank_last():
    g = torch.Generator().manual_seed(5)
    X = _ints(g, 5000, 6, dtype=torch.float32)
    X[[0, 17, 4500]] = float("nan")  # in the first chunk, a later chunk and the last block
    Q = _ints(g, 4, 6, dtype=torch.float32)
    for k in (3, 40, 4998, 5000):
        s, i = pycsa.ops.inner_product_topk(Q, X, k)
        s_ref, i_ref = reference.inner_product_topk(Q, X, k)
        torch.testing.assert_close(i, i_ref, rtol=0, atol=0)
        assert not torch.isin(i[:, :min(k, 4997)], torch.tensor([0, 17, 4500])).any()


def test_strided_inputs():
    g = torch.Generator().manual_seed(4)
    big = _ints(g, 600, 40, dtype=torch.float32)
    Q, X = big[::7, ::2], big[100:, 1::2]  # no dense feature axis
    s, i = pycsa.ops.inner_product_topk(Q, X, 9)
    s_ref, i_ref = reference.inner_product_topk(Q, X, 9)
    torch.testing.assert_close(i, i_ref, rtol=0, atol=0)
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)
    s, i = pycsa.ops.inner_product_topk(Q[:0], X, 3)
    assert s.shape == (0, 3)


@pytest.mark.parametrize(
    "args, exc, word",
    [
        ((torch.zeros(2, 3), torch.zeros(5, 3), 6), ValueError, "k"),
        ((torch.zeros(2, 3), torch.zeros(5, 3), 0), ValueError, "k"),
        ((torch.zeros(2, 3), torch.zeros(5, 4), 1), ValueError, "dimension"),
        ((torch.zeros(3), torch.zeros(5, 3), 1), ValueError, "queries"),
        ((torch.zeros(2, 3), torch.zeros(5, 3, dtype=torch.bfloat16), 1), TypeError, "dtype"),
        ((torch.zeros(2, 3, dtype=torch.float64), torch.zeros(5, 3, dtype=torch.float64), 1), TypeError, "queries"),
    ],
)
def test_bad_input(args, exc, word):
    with pytest.raises(exc, match=word):
        pycsa.ops.inner_product_topk(*args)
    if exc is ValueError and word in ("k", "dimension"):  # the C++ checks say the same without Python's
        with pytest.raises((ValueError, RuntimeError), match=word):
            torch.ops.pycsa.inner_product_topk(*args)


def test_numpy_in_numpy_out():
    rng = np.random.default_rng(0)
    Q, X = rng.standard_normal((3, 6)).astype(np.float32), rng.standard_normal((20, 6)).astype(np.float32)
    s, i = pycsa.ops.inner_product_topk(Q, X, 5)
    assert isinstance(s, np.ndarray) and isinstance(i, np.ndarray) and i.dtype == np.int64
    s_t, i_t = pycsa.ops.inner_product_topk(torch.from_numpy(Q), torch.from_numpy(X), 5)
    np.testing.assert_array_equal(s, s_t.numpy())
    np.testing.assert_array_equal(i, i_t.numpy())


def test_inputs_on_two_devices_name_the_argument():
    with pytest.raises(ValueError, match="queries: on meta"):
        pycsa.ops.inner_product_topk(torch.zeros(2, 3, device="meta"), torch.zeros(5, 3), 1)
    with pytest.raises(TypeError, match="database"):
        pycsa.ops.inner_product_topk(torch.zeros(2, 3), [[0.0, 1.0, 2.0]], 1)
