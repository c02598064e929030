"""pycsa.search: exact inner-product top-k, ties by lower index, faiss and torch paths."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pycsa
import importlib

search_module = importlib.import_module("pycsa.search")  # the package exports the function under this name

BACKENDS = ["torch"] + (["faiss"] if search_module.faiss is not None else []) + \
    (["bf16", "kernel"] if pycsa.ops.has_cpu_kernels() else [])
# the instructions (and the kernels at AVX-512); whether bfloat16 GEMMs pay is timed apart
NATIVE_BF16 = pycsa.ops.has_cpu_kernels() and bool(pycsa.ops._extension._C.bf16_dot_products())


@pytest.fixture
def gemm_ratio():
    """Sets the extension's bfloat16/float32 GEMM ratio, which the search reads; restores it."""
    _C = pycsa.ops._extension._C
    before = _C.bf16_gemm_speedup()
    yield _C.set_bf16_gemm_speedup
    _C.set_bf16_gemm_speedup(before)


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


def test_a_global_tf32_setting_does_not_change_the_search(device):
    # float32 GEMMs in TF32 (a 10-bit mantissa) would move scores by ~1e-3 and reorder near-ties
    g = torch.Generator().manual_seed(6)
    Q, X = torch.randn(40, 256, generator=g), torch.randn(3001, 256, generator=g)
    want = torch.topk(Q.double() @ X.double().T, 50).values  # scores ~16: TF32 errs by ~1e-2, float32 by ~1e-5
    before = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        s, i = pycsa.search(Q.to(device), X.to(device), 50)
    finally:
        torch.backends.cuda.matmul.fp32_precision = before
    torch.testing.assert_close(s.cpu().double(), want, rtol=0, atol=1e-3)
    torch.testing.assert_close((Q.double() @ X.double().T).gather(1, i.cpu()), want, rtol=0, atol=1e-3)


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


def _unit(g, *shape):
    return torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)


@pytest.mark.skipif(not pycsa.ops.has_cpu_kernels(), reason="needs the compiled kernels")
def test_bf16_prefilter_is_exact_and_proves_most_rows():
    # Retrieval-like data: near-duplicates of database rows, so both the top and
    # the dense tail of near-equal scores (near-ties for the bound) are exercised.
    g = torch.Generator().manual_seed(0)
    X = _unit(g, 6007, 64)
    Q = torch.nn.functional.normalize(X[:300] + 0.4 * torch.randn(300, 64, generator=g), dim=1)
    index = pycsa.Index(X, backend="bf16")
    for k in (1, 10, 100):
        s, i = index.search(Q, k)
        s_ref, i_ref = _brute(Q, X, k)
        np.testing.assert_allclose(s.numpy(), s_ref, rtol=0, atol=1e-6)
        # the item at each rank has the true rank's float64 score (indices may differ only
        # between items whose scores are within float32 error of each other)
        got = (Q.double() @ X.double().T).gather(1, i).numpy()
        np.testing.assert_allclose(got, s_ref, rtol=0, atol=2e-6)
        assert (i.numpy() == i_ref).mean() > 0.999
        assert index._prefilter.unproven <= 0.02 * Q.shape[0]  # the bound is tight enough to matter


@pytest.mark.skipif(not pycsa.ops.has_cpu_kernels(), reason="needs the compiled kernels")
@pytest.mark.parametrize("scale", [1.0, 1e-20, 1e12])
def test_bf16_score_bound_holds_for_every_row(scale):
    # Wide dynamic range within a row (magnitudes 1e-3..1e3) and extreme overall scales.
    g = torch.Generator().manual_seed(1)
    d = 517
    X = torch.randn(2000, d, generator=g) * 10 ** (6 * torch.rand(2000, d, generator=g) - 3) * scale
    Q = torch.randn(37, d, generator=g) * 10 ** (6 * torch.rand(37, d, generator=g) - 3)
    pre = search_module._Bf16Prefilter(X)
    Ql = Q.bfloat16()
    approx = (Ql.float() @ pre.low.float().T).bfloat16()  # what the first pass computes, row by row
    for rescored in (Q @ X.T, (Q.double() @ X.double().T).float()):  # two float32 summation orders
        bound = pre._score_bound(Q, Ql, approx)
        assert rescored.double().le(bound).all()
        # and not vacuous: within 2 % of the Cauchy-Schwarz scale ||q|| max||x|| (about 2^-7 is expected)
        slack = (bound - rescored.double()).max(dim=1).values
        assert (slack < 0.02 * Q.double().norm(dim=1) * pre.norm + 1e-30).all()


@pytest.mark.skipif(not NATIVE_BF16, reason="the CPU has no bfloat16 dot products")
def test_auto_uses_the_prefilter_only_where_it_pays(gemm_ratio):
    gemm_ratio(3.0)  # as if bfloat16 GEMMs were 3x faster
    g = torch.Generator().manual_seed(2)
    assert pycsa.Index(_unit(g, 4096, 16))._prefilter is not None
    assert pycsa.Index(_unit(g, 4095, 16))._prefilter is None  # small: the plain exact search
    assert pycsa.Index(_unit(g, 5000, 16).double())._prefilter is None  # float64 stays float64
    index = pycsa.Index(_unit(g, 5000, 16))
    Q = _unit(g, 3, 16)
    for k in (2000, 5000):  # too deep for a prefilter to save work: the exact search serves
        s, i = index.search(Q, k)
        np.testing.assert_array_equal(i.numpy()[:, :50], _brute(Q, index.database, k)[1][:, :50])


@pytest.mark.skipif(not pycsa.ops.has_cpu_kernels(), reason="needs the compiled kernels")
def test_bf16_backend_refuses_what_it_cannot_serve():
    with pytest.raises(ValueError, match="backend"):
        pycsa.Index(torch.zeros(10, 3, dtype=torch.float64), backend="bf16")


@pytest.mark.skipif(not pycsa.ops.has_cpu_kernels(), reason="needs the compiled kernels")
def test_auto_takes_the_float32_kernel_where_bfloat16_gemms_do_not_pay(monkeypatch, gemm_ratio):
    gemm_ratio(1.2)
    g = torch.Generator().manual_seed(4)
    index = pycsa.Index(_unit(g, 4096, 16))
    assert index._prefilter is None and index._use_kernel
    Q = _unit(g, 5, 16)
    calls = []
    monkeypatch.setattr(search_module, "_search_kernel", lambda *a: calls.append(1) or search_module.ops.inner_product_topk(*a[:3]))
    np.testing.assert_array_equal(index.search(Q, 7)[1].numpy(), _brute(Q, index.database, 7)[1])
    assert calls  # the kernel served it, faiss installed or not
    assert not pycsa.Index(_unit(g, 4096, 16).double())._use_kernel  # float64 keeps the torch path


@pytest.mark.parametrize("backend, runner", [("torch", "_search_torch"), ("faiss", "_search_faiss"),
                                             ("kernel", "_search_kernel")])
def test_each_named_backend_runs_its_own_search(monkeypatch, backend, runner):
    if backend == "faiss" and search_module.faiss is None:
        pytest.skip("faiss is not installed")
    if backend == "kernel" and not pycsa.ops.has_cpu_kernels():
        pytest.skip("needs the compiled kernels")
    calls = []
    real = getattr(search_module, runner)
    monkeypatch.setattr(search_module, runner, lambda *a: calls.append(runner) or real(*a))
    others = {"_search_torch", "_search_faiss", "_search_kernel"} - {runner}
    for name in others:
        monkeypatch.setattr(search_module, name, lambda *a, name=name: pytest.fail(f"{backend} ran {name}"))
    g = torch.Generator().manual_seed(5)
    X = _unit(g, 5000, 8)  # large enough for the prefilter, which these backends must not take
    pycsa.search(X[:3], X, 4, backend=backend)
    assert calls


@pytest.mark.skipif(not pycsa.ops.has_cpu_kernels(), reason="needs the compiled kernels")
@pytest.mark.parametrize("backend", ["auto", "kernel"])
def test_float64_queries_are_summed_in_float64(backend):
    # two items whose scores differ only past float32: the float64 query must rank them right
    X = torch.tensor([[1.0, 0.0], [1.0, 2.0 ** -20]])
    Q = torch.tensor([[1.0, 2.0 ** -10]], dtype=torch.float64)  # scores 1 and 1 + 2^-30
    _, i = pycsa.search(Q, X, 2, backend=backend)
    assert i.tolist() == [[1, 0]]
    _, i32 = pycsa.search(Q.float(), X, 2, backend=backend)
    assert i32.tolist() == [[0, 1]]  # in float32 they tie: the lower index first


@pytest.mark.skipif(not pycsa.ops.has_cpu_kernels(), reason="needs the compiled kernels")
def test_the_kernel_backend_reports_progress_through_index_search():
    g = torch.Generator().manual_seed(6)
    X = _unit(g, 100, 8)
    seen = []
    pycsa.Index(X, backend="kernel").search(torch.cat([X] * 50), 2, progress=lambda a, b: seen.append((a, b)))
    assert seen == [(4096, 5000), (5000, 5000)]


def test_the_prefilter_choice_can_be_forced(monkeypatch):
    monkeypatch.setenv("PYCSA_SEARCH_PREFILTER", "0")
    assert search_module._bf16_gemm_speedup() == 0.0
    monkeypatch.setenv("PYCSA_SEARCH_PREFILTER", "1")
    assert search_module._bf16_gemm_speedup() >= search_module._Bf16Prefilter.min_gemm_speedup


def test_the_gemm_timing_runs_once_and_gives_a_ratio():
    if not pycsa.ops.has_cpu_kernels():  # no kernels, no prefilter: nothing is timed
        assert search_module._bf16_gemm_speedup() == 0.0
        return
    r = search_module._bf16_gemm_speedup()
    assert 0 < r < 1000 and search_module._bf16_gemm_speedup() == r


@pytest.mark.skipif(not pycsa.ops.has_cpu_kernels(), reason="needs the compiled kernels")
def test_kernel_backend_refuses_what_it_cannot_serve():
    with pytest.raises(ValueError, match="backend"):
        pycsa.Index(torch.zeros(10, 3, dtype=torch.float64), backend="kernel")


@pytest.mark.skipif(not pycsa.ops.has_cpu_kernels(), reason="needs the compiled kernels")
def test_kernel_backend_reports_progress_and_keeps_float64_queries_exact():
    g = torch.Generator().manual_seed(3)
    X = _unit(g, 500, 12)
    seen = []
    s, i = search_module._search_kernel(X[:10], X, 3, lambda a, b: seen.append((a, b)), step=4)
    assert seen == [(4, 10), (8, 10), (10, 10)] and i[:, 0].tolist() == list(range(10))
    np.testing.assert_array_equal(i.numpy(), _brute(X[:10], X, 3)[1])
    # float64 queries sum in float64 (the torch path), as before the kernel backend existed
    Q = X[:4].double() + 1e-12
    _, i64 = pycsa.search(Q, X, 5, backend="kernel")
    np.testing.assert_array_equal(i64.numpy(), _brute(Q, X, 5)[1])


def test_k_takes_numpy_integers_not_bools_or_floats():
    import numpy as np

    X = torch.nn.functional.normalize(torch.randn(20, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    s, i = pycsa.search(X[:3], X, np.int64(5))
    assert i.shape == (3, 5)
    for bad in (True, 5.0, np.float32(5)):
        with pytest.raises(ValueError, match="k: must be an int"):
            pycsa.search(X[:3], X, bad)
    with pytest.raises(TypeError, match="k: must be an int"):  # also a TypeError
        pycsa.search(X[:3], X, "5")
    with pytest.raises(ValueError, match=r"k: must be an int in \[1, 20\] \(the database size\), got 21"):
        pycsa.search(X[:3], X, np.int32(21))
