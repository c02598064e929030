"""pycsa.ops.affinity against float64 maths, on awkward shapes, dtypes and layouts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pycsa
from pycsa.ops import _extension, reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# (B, n, R, d, L, with_queries): ones, primes, tile edges (64) crossed, d not a multiple of 8
SHAPES = [
    (1, 1, 1, 1, 1, False),
    (1, 5, 3, 7, 1, True),
    (7, 101, 13, 37, 5, False),
    (3, 97, 67, 130, 65, True),
    (2, 300, 131, 64, 131, False),
    (5, 50, 17, 8, 18, True),
    (0, 10, 4, 16, 2, False),
    # several lists longer than the CPU's 256-row head, whose last chunk is partial: its rows were
    # once gathered at the full chunk's stride, so every list but the first read garbage
    (3, 400, 299, 24, 128, True),
    (4, 700, 699, 16, 100, False),
    (2, 600, 512, 8, 64, True),
]


def _inputs(B, n, R, d, with_queries, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g).to(dtype).to(device)
    ranks = torch.randint(0, n, (B, R), generator=g).to(device)
    Q = torch.randn(B, d, generator=g).to(dtype).to(device) if with_queries else None
    return X, ranks, Q


def _expected(X, ranks, L, Q):
    """float64 maths on exactly the values the op sees."""
    return reference.affinity(X.double().cpu(), ranks.cpu(), L, None if Q is None else Q.double().cpu())


def _tolerance(dtype, d, ref):
    scale = float(ref.abs().max()) if ref.numel() else 1.0
    # Accumulation error grows like sqrt(d); half types also round the result once.
    rel = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    return rel * max(scale, 1.0) * (1 + np.sqrt(d) / 8)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}n{}R{}d{}L{}q{}".format(*s))
def test_matches_float64(shape, dtype, device):
    B, n, R, d, L, with_queries = shape
    X, ranks, Q = _inputs(B, n, R, d, with_queries, dtype, device)
    out = pycsa.ops.affinity(X, ranks, L, queries=Q)
    K = R + with_queries
    assert out.shape == (B, K, L) and out.dtype == dtype and out.device.type == device
    ref = _expected(X, ranks, L, Q)
    assert torch.allclose(out.double().cpu(), ref, rtol=0, atol=_tolerance(dtype, d, ref))


def test_query_takes_position_one():
    X, ranks, Q = _inputs(3, 20, 6, 5, True, torch.float64, "cpu")
    out = pycsa.ops.affinity(X, ranks, 4, queries=Q)
    assert torch.allclose(out[:, 0, 0], (Q * Q).sum(1))
    assert torch.allclose(out[:, 1:, 0], torch.einsum("bkd,bd->bk", X[ranks], Q))
    assert torch.allclose(out[:, 1:, 1:], pycsa.ops.affinity(X, ranks, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_non_contiguous_inputs(dtype, device):
    g = torch.Generator().manual_seed(1)
    big = torch.randn(60, 90, generator=g).to(dtype).to(device)
    X = big[:, 3:44]  # strided rows, dense features
    Xt = torch.randn(41, 60, generator=g).to(dtype).to(device).T  # strided features
    ranks = torch.randint(0, 60, (5, 22), generator=g).to(device)[:, ::2]
    Q = torch.randn(5, 82, generator=g).to(dtype).to(device)[:, ::2]
    for db in (X, Xt):
        out = pycsa.ops.affinity(db, ranks, 7, queries=Q)
        ref = _expected(db, ranks, 7, Q)
        assert torch.allclose(out.double().cpu(), ref, rtol=0, atol=_tolerance(dtype, 41, ref))


def test_numpy_in_numpy_out_and_int32_ranks():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 12)).astype(np.float32)
    ranks = rng.integers(0, 30, (4, 9)).astype(np.int32)
    out = pycsa.ops.affinity(X, ranks, 3)
    assert isinstance(out, np.ndarray) and out.shape == (4, 9, 3) and out.dtype == np.float32
    F = X.astype(np.float64)[ranks]
    np.testing.assert_allclose(out, F @ F[:, :3].transpose(0, 2, 1), atol=1e-5)


def test_repeated_and_duplicate_rows():
    X = torch.randn(4, 6, dtype=torch.float64)
    X[3] = X[1]
    ranks = torch.tensor([[1, 1, 3, 0, 1]])
    out = pycsa.ops.affinity(X, ranks, 5)
    assert torch.allclose(out, _expected(X, ranks, 5, None))
    assert torch.allclose(out[0, 0], out[0, 1]) and torch.allclose(out[0, 0], out[0, 2])


@pytest.mark.parametrize(
    "kwargs, exc, word",
    [
        (dict(ranks=torch.tensor([[0, 10]])), IndexError, "ranks"),
        (dict(ranks=torch.tensor([[-1, 0]])), IndexError, "ranks"),
        (dict(ranks=torch.tensor([0, 1])), ValueError, "ranks"),
        (dict(ranks=torch.tensor([[0.0, 1.0]])), TypeError, "ranks"),
        (dict(num_anchors=0), ValueError, "num_anchors"),
        (dict(num_anchors=4), ValueError, "num_anchors"),
        (dict(num_anchors=2.0), TypeError, "num_anchors"),
        (dict(database=torch.zeros(10, 4, dtype=torch.int64)), TypeError, "database"),
        (dict(database=torch.zeros(10)), ValueError, "database"),
        (dict(queries=torch.zeros(1, 3)), ValueError, "queries"),
        (dict(queries=torch.zeros(2, 4)), ValueError, "queries"),
        (dict(queries=torch.zeros(1, 4, dtype=torch.float64)), TypeError, "queries"),
        (dict(database=[[1.0]]), TypeError, "database"),
    ],
)
def test_bad_input_names_the_argument(kwargs, exc, word):
    args = dict(database=torch.zeros(10, 4), ranks=torch.tensor([[0, 1, 2]]), num_anchors=2)
    args.update(kwargs)
    with pytest.raises(exc, match=word):
        pycsa.ops.affinity(**args)


def test_nan_in_selected_rows_raises(device):
    X = torch.randn(10, 4, device=device)
    X[7, 2] = float("nan")
    pycsa.ops.affinity(X, torch.tensor([[0, 1, 2]], device=device), 2)  # row 7 unused: fine
    with pytest.raises(ValueError, match="NaN"):
        pycsa.ops.affinity(X, torch.tensor([[0, 7, 2]], device=device), 2)


def test_mixed_devices_raise():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    with pytest.raises(ValueError, match="ranks"):
        pycsa.ops.affinity(torch.zeros(5, 3, device="cuda"), torch.tensor([[0, 1]]), 1)


def test_kernels_are_built():
    assert pycsa.ops.has_cpu_kernels(), "pycsa._C did not import: the C++ kernels are not being tested"


def test_cuda_without_cuda_kernels_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(_extension, "has_cuda_kernels", lambda: False)
    with pytest.raises(RuntimeError, match="PYCSA_WITH_CUDA=1"):
        _extension.use_kernels("affinity", torch.device("cuda"))


def test_falls_back_to_reference_without_extension(monkeypatch):
    monkeypatch.setattr(_extension, "_C", None)
    monkeypatch.setattr(_extension, "_warned", False)
    X, ranks, Q = _inputs(2, 9, 4, 3, True, torch.float32, "cpu")
    with pytest.warns(RuntimeWarning, match="reference"):
        out = pycsa.ops.affinity(X, ranks, 2, queries=Q)
    assert torch.allclose(out.double(), _expected(X, ranks, 2, Q), atol=1e-5)


@pytest.mark.parametrize("with_queries", [False, True])
def test_gradients(with_queries, device):
    X, ranks, Q = _inputs(3, 8, 5, 4, with_queries, torch.float64, device, seed=3)
    ranks[0, :2] = 2  # a row used twice in one list
    X.requires_grad_(True)
    inputs = (X,) + ((Q.requires_grad_(True),) if with_queries else ())

    def f(*args):
        return torch.ops.pycsa.affinity(args[0], ranks, 3, args[1] if with_queries else None)

    assert torch.autograd.gradcheck(f, inputs)


def test_opcheck_and_compile():
    X, ranks, Q = _inputs(2, 11, 5, 6, True, torch.float32, "cpu")
    torch.library.opcheck(torch.ops.pycsa.affinity.default, (X, ranks, 3, Q))
    compiled = torch.compile(lambda x, r, q: torch.ops.pycsa.affinity(x, r, 3, q) * 2, backend="aot_eager",
                             fullgraph=True)
    assert torch.allclose(compiled(X, ranks, Q), 2 * pycsa.ops.affinity(X, ranks, 3, queries=Q))


def test_inputs_on_two_devices_name_the_argument():
    with pytest.raises(ValueError, match="ranks: on meta"):
        pycsa.ops.affinity(torch.zeros(5, 3), torch.tensor([[0, 1]], device="meta"), 1)
    with pytest.raises(ValueError, match="queries: on meta"):
        pycsa.ops.affinity(torch.zeros(5, 3), torch.tensor([[0, 1]]), 1, queries=torch.zeros(1, 3, device="meta"))


@pytest.fixture
def bf16_ratio():
    """Sets the measured bfloat16/float32 GEMM ratio that decides the bf16 path; restores it."""
    from pycsa import _C
    before = _C.bf16_gemm_speedup()
    yield _C.set_bf16_gemm_speedup
    _C.set_bf16_gemm_speedup(before)


def test_bfloat16_path_follows_the_measured_gemm_ratio(bf16_ratio):
    # the instructions alone do not decide: a bf16 GEMM slower than float32 (an AVX512-BF16 VM
    # without AMX ran it at 0.6x) widens the inputs, one at least 1.2x as fast keeps them
    from pycsa import _C
    bf16_ratio(1000.0)
    hardware = _C.native_bf16_gemm()  # the CPU has the instructions and the kernels run AVX-512
    bf16_ratio(1.19)
    assert not _C.native_bf16_gemm()
    bf16_ratio(1.2)
    assert _C.native_bf16_gemm() == hardware


@pytest.mark.parametrize("ratio", [0.5, 3.0], ids=["widened", "native-if-the-cpu-has-it"])
@pytest.mark.parametrize("shape", [SHAPES[3], SHAPES[7]], ids=["B3n97R67", "B3n400R299"])
def test_bfloat16_either_path_matches_float64(shape, ratio, bf16_ratio):
    bf16_ratio(ratio)
    B, n, R, d, L, with_queries = shape
    X, ranks, Q = _inputs(B, n, R, d, with_queries, torch.bfloat16, "cpu", seed=3)
    out = pycsa.ops.affinity(X, ranks, L, queries=Q)
    assert out.dtype == torch.bfloat16
    ref = _expected(X, ranks, L, Q)
    assert torch.allclose(out.double(), ref, rtol=0, atol=_tolerance(torch.bfloat16, d, ref))


def test_measuring_the_gemm_ratio_leaves_the_random_stream_alone(bf16_ratio):
    from pycsa import _C
    torch.manual_seed(5)
    want = torch.rand(4)
    torch.manual_seed(5)
    bf16_ratio(-1.0)  # measure again
    ratio = _C.bf16_gemm_speedup()
    assert ratio > 0 and _C.bf16_gemm_speedup() == ratio
    assert torch.equal(torch.rand(4), want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_inputs_ignore_cpu_autocast(dtype, bf16_ratio):
    # widened half inputs are multiplied in float32 even under the caller's bfloat16 autocast
    # (a plain bmm there would round float16 values to bfloat16 before multiplying)
    bf16_ratio(0.5)
    B, n, R, d, L, with_queries = SHAPES[7]
    X, ranks, Q = _inputs(B, n, R, d, with_queries, dtype, "cpu", seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pycsa.ops.affinity(X, ranks, L, queries=Q)
    assert out.dtype == dtype
    ref = _expected(X, ranks, L, Q)
    assert torch.allclose(out.double(), ref, rtol=0, atol=_tolerance(dtype, d, ref))


@pytest.mark.skipif(not _extension.has_cpu_kernels(), reason="needs the compiled kernels")
def test_the_bfloat16_choice_can_be_fixed_by_the_environment():
    import os
    import subprocess
    import sys
    code = "from pycsa.ops import _extension; print(_extension._C.bf16_gemm_speedup())"
    for value, want in (("0", 0.0), ("1", 1000.0)):
        env = dict(os.environ, PYCSA_BF16_GEMM=value)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert float(out.stdout.split()[-1]) == want
