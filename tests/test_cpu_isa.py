"""Every instruction-set build of the CPU kernels' loops (generic, AVX2, AVX-512: the ones
this CPU runs) gives the float64 reference's results; the choice can be read, set and
capped from the environment, and attention says which path it takes."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import pycsa
from pycsa.ops import reference

pytestmark = pytest.mark.skipif(not pycsa.ops.has_cpu_kernels(), reason="no compiled CPU kernels")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=["default", "avx2", "avx512"])
def capability(request):
    if request.param not in pycsa.ops.supported_cpu_capabilities():
        pytest.skip(f"this CPU cannot run {request.param}")
    before = pycsa.ops.cpu_capability()
    pycsa.ops.set_cpu_capability(request.param)
    yield request.param
    pycsa.ops.set_cpu_capability(before)


@pytest.fixture
def attention_kernel_only():
    from pycsa import _C
    _C.set_attention_cpu_to_sdpa(False)
    yield
    _C.set_attention_cpu_to_sdpa(True)


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# T crosses the kernel's 256-query and 512-key blocks; D = 17 leaves a vector remainder
@pytest.mark.parametrize("B, H, T, D", [(1, 1, 1, 64), (2, 3, 67, 17), (2, 2, 521, 64), (1, 2, 1031, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_attention_every_isa(capability, attention_kernel_only, B, H, T, D, dtype):
    q, k, v = (_randn(B, H, T, D, seed=s, dtype=dtype) * 2 for s in range(3))
    tol = {torch.float32: 2e-5, torch.bfloat16: 2.5e-2, torch.float16: 4e-3}[dtype]
    for lengths in (torch.full((B,), T), torch.arange(B) * T // max(B, 1) + 1):
        assert pycsa.ops.attention_cpu_path(q, lengths) == "pycsa"
        out = pycsa.ops.attention(q, k, v, lengths)
        want = reference.attention(q.double(), k.double(), v.double(), lengths)
        assert torch.allclose(out.double(), want, rtol=tol, atol=tol), capability


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n, d, r, k", [(1, 1, 1, 1), (13, 7, 5, 3), (101, 37, 29, 11), (64, 33, 17, 16)])
def test_weighted_gather_sum_every_isa(capability, dtype, n, d, r, k):
    src = _randn(n, d, dtype=dtype)
    idx = torch.randint(0, n, (r, k), generator=torch.Generator().manual_seed(1))
    w = _randn(r, k, seed=2)
    out = pycsa.ops.weighted_gather_sum(src, idx, w)
    want = reference.weighted_gather_sum(src.double(), idx, w.double())
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert torch.allclose(out.double(), want, rtol=tol, atol=tol), capability


@pytest.mark.parametrize("q, g, d", [(1, 2, 1), (7, 31, 17), (13, 97, 33)])
def test_k_reciprocal_features_every_isa(capability, q, g, d):
    from pycsa.compat import re_ranking, re_ranking_features
    Q, G = _randn(q, d, seed=3), _randn(g, d, seed=4)
    out = re_ranking_features(Q, G, k1=5, k2=3)
    # the matrix form reads exact float64 distances: the features' GEMM differs by rounding
    dist = lambda a, b: torch.cdist(a.double(), b.double())  # noqa: E731
    want = re_ranking(dist(Q, G), dist(Q, Q), dist(G, G), k1=5, k2=3)
    assert torch.allclose(out.double(), want.double(), atol=1e-4), capability


def test_every_isa_gives_the_same_attention_as_the_best(attention_kernel_only):
    # The variants differ only in vector width: results agree to float32 rounding.
    q, k, v = (_randn(2, 3, 300, 64, seed=s) for s in range(3))
    lengths = torch.tensor([300, 123])
    before = pycsa.ops.cpu_capability()
    outs = {}
    try:
        for cap in pycsa.ops.supported_cpu_capabilities():
            pycsa.ops.set_cpu_capability(cap)
            outs[cap] = pycsa.ops.attention(q, k, v, lengths)
    finally:
        pycsa.ops.set_cpu_capability(before)
    for cap, out in outs.items():
        assert torch.allclose(out, outs[before], atol=1e-6), cap


def test_attention_path_names_what_runs():
    q = _randn(2, 3, 10, 8)
    assert pycsa.ops.attention_cpu_path(q) == "sdpa"
    assert pycsa.ops.attention_cpu_path(q, torch.tensor([10, 10])) == "sdpa"
    assert pycsa.ops.attention_cpu_path(q, torch.tensor([10, 4])) == "pycsa"
    assert pycsa.ops.attention_cpu_path(q.double()) == "reference"
    # the dense path is SDPA's own answer; with full lengths the op's, in a contiguous tensor
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert torch.equal(pycsa.ops.attention(q, q, q), sdpa)
    out = pycsa.ops.attention(q, q, q, torch.tensor([10, 10]))
    assert out.is_contiguous() and torch.allclose(out, sdpa, atol=1e-6)
    # ragged with sequences of 32 tokens or more on average: SDPA on each valid part
    q = _randn(3, 2, 70, 8)
    assert pycsa.ops.attention_cpu_path(q, torch.tensor([70, 40, 1])) == "sdpa per sequence"
    assert pycsa.ops.attention_cpu_path(q, torch.tensor([70, 20, 0])) == "pycsa"  # 30 on average


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_attention_ragged_sdpa_per_sequence_matches_the_reference(dtype):
    # an empty sequence, a full one, one of a single token; strided views (k, v transposed back)
    B, H, T, D = 4, 3, 67, 16
    q = _randn(B, H, T, D, seed=1, dtype=dtype) * 2
    k = (_randn(B, T, H, D, seed=2, dtype=dtype) * 2).transpose(1, 2)
    v = (_randn(B, T, H, D, seed=3, dtype=dtype) * 2).transpose(1, 2)
    lengths = torch.tensor([67, 0, 1, 60])
    assert pycsa.ops.attention_cpu_path(q, lengths) == "sdpa per sequence"
    out = pycsa.ops.attention(q, k, v, lengths)
    want = reference.attention(q.double(), k.double(), v.double(), lengths)
    tol = {torch.float32: 2e-5, torch.bfloat16: 2.5e-2, torch.float16: 4e-3}[dtype]
    assert out.dtype == dtype and out.is_contiguous() and out.shape == q.shape
    assert torch.allclose(out.double(), want, rtol=tol, atol=tol)
    assert not out[1].any() and not out[2, :, 1:].any() and not out[3, :, 60:].any()


def test_set_capability_refuses_unknown_and_unsupported():
    with pytest.raises(ValueError, match="capability"):
        pycsa.ops.set_cpu_capability("sse9")
    with pytest.raises(TypeError, match="capability"):
        pycsa.ops.set_cpu_capability(2)
    assert pycsa.ops.cpu_capability() in pycsa.ops.supported_cpu_capabilities()
    assert pycsa.ops.supported_cpu_capabilities()[0] == "default"


def _capability_in_subprocess(value):
    env = dict(os.environ, PYCSA_CPU_CAPABILITY=value, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-W", "always", "-c", "import pycsa.ops as o; print(o.cpu_capability())"],
                         env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip(), out.stderr


def test_environment_caps_the_capability():
    best = pycsa.ops.supported_cpu_capabilities()[-1]
    assert _capability_in_subprocess("default")[0] == "default"
    # a CPU cannot run more than it has: asking for more gives the best it has
    assert _capability_in_subprocess("avx512")[0] == best
    cap, err = _capability_in_subprocess("turbo")
    assert cap == best and "PYCSA_CPU_CAPABILITY=turbo" in err


# n crosses the 16-score chunks and the 4k buffer; integer-valued features make exact ties
@pytest.mark.parametrize("q, n, d, k", [(1, 1, 3, 1), (7, 33, 5, 4), (5, 400, 16, 10), (3, 1000, 8, 97)])
def test_inner_product_topk_every_isa(capability, q, n, d, k):
    Q = torch.randint(-2, 3, (q, d), generator=torch.Generator().manual_seed(5)).float()
    X = torch.randint(-2, 3, (n, d), generator=torch.Generator().manual_seed(6)).float()
    X[n // 2] = float("nan")  # a NaN score ranks last
    scores, index = pycsa.ops.inner_product_topk(Q, X, k)
    want_s, want_i = reference.inner_product_topk(Q, X, k)
    assert torch.equal(index, want_i), capability
    assert torch.equal(scores, want_s), capability


# ------------------------------------------------------------------------------------------
# k-reciprocal from features at sizes with several 256-row blocks: the symmetric pass sends
# values past the diagonal block to their columns' candidates, pairs blocks into tasks for two
# threads and merges per-thread candidates; leave-one-out writes the output both ways.

def _clustered(n, dim=16, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(1, n // 6), dim))
    X = centers[rng.integers(0, centers.shape[0], n)] + 0.6 * rng.standard_normal((n, dim))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def _euclid(a, b):
    import numpy as np
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sqrt(np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0))


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=["symmetric", "symmetric-unseeded", "symmetric-low-seeds", "staged"])
def kreciprocal_pass(request):
    """The symmetric pass (its rows start under bounds from their cell mates, or at +inf, or under
    bounds too low, so that rows left short are ranked again), and the row-staging pass it
    falls back to when its candidates would take too much memory."""
    from pycsa import _C
    if request.param == "staged":
        _C.set_k_reciprocal_heap_limit(0)
    _C.set_k_reciprocal_seed_scale({"symmetric-unseeded": -1.0, "symmetric-low-seeds": 0.9}.get(request.param, 1.0))
    yield request.param
    _C.set_k_reciprocal_heap_limit(1 << 29)
    _C.set_k_reciprocal_seed_scale(1.0)


def test_k_reciprocal_features_several_blocks_every_isa(capability, two_threads, kreciprocal_pass):
    import numpy as np
    from _baselines import baselines
    from pycsa.compat import re_ranking_features
    X = _clustered(840, seed=11)
    Q, G = X[:40], X[40:]
    want = baselines.re_ranking_numpy(_euclid(Q, G), _euclid(Q, Q), _euclid(G, G), k1=20, k2=6, lambda_value=0.3)
    np.testing.assert_allclose(re_ranking_features(Q, G), want, rtol=0, atol=1e-5)


def test_k_reciprocal_self_several_blocks_every_isa(capability, two_threads, kreciprocal_pass):
    import numpy as np
    from _baselines import baselines
    from pycsa.rerank.kreciprocal import k_reciprocal_self
    X = _clustered(700, seed=12)
    want = baselines.re_ranking_numpy_leave_one_out(_euclid(X, X), k1=20, k2=6, lambda_value=0.3)
    np.testing.assert_allclose(k_reciprocal_self(X, 20, 6, 0.3), want, rtol=0, atol=1e-5)


# Past 1,024 columns pass 1 works in 256 x 1,024 tiles: a block's columns span several tiles
# (the last one partial), the query/gallery split falls inside a tile, and each row's
# candidates are cut back to its m best many times.
_TILED = {}


def _tiled_case():
    if not _TILED:
        from _baselines import baselines
        X = _clustered(2600, seed=14)
        Q, G = X[:1300], X[1300:]
        _TILED["features"] = (Q, G, baselines.re_ranking_numpy(_euclid(Q, G), _euclid(Q, Q), _euclid(G, G), k1=20,
                                                                k2=6, lambda_value=0.3))
        Y = X[:2300]
        _TILED["self"] = (Y, baselines.re_ranking_numpy_leave_one_out(_euclid(Y, Y), k1=20, k2=6, lambda_value=0.3))
    return _TILED


def test_k_reciprocal_features_several_tiles_every_isa(capability, two_threads, kreciprocal_pass):
    import numpy as np
    from pycsa.compat import re_ranking_features
    Q, G, want = _tiled_case()["features"]
    np.testing.assert_allclose(re_ranking_features(Q, G), want, rtol=0, atol=1e-5)


def test_k_reciprocal_self_several_tiles_every_isa(capability, two_threads):
    import numpy as np
    from pycsa.rerank.kreciprocal import k_reciprocal_self
    Y, want = _tiled_case()["self"]
    np.testing.assert_allclose(k_reciprocal_self(Y, 20, 6, 0.3), want, rtol=0, atol=1e-5)


def test_k_reciprocal_tiles_keep_the_lower_index_on_exact_ties():
    # duplicates in other tiles tie exactly (numpy's argsort leaves such ties unspecified, so
    # the reference is the row-staging pass, which scans each row in order)
    from pycsa import _C
    from pycsa.compat import re_ranking_features
    X = _clustered(2600, seed=15)
    X[2000:2030] = X[100:130]
    X[1500:1510] = X[1200:1210]
    Q, G = X[:1300], X[1300:]
    before = torch.get_num_threads()
    try:
        outs = []
        for threads, limit in ((2, 1 << 29), (1, 1 << 29), (2, 0)):
            torch.set_num_threads(threads)
            _C.set_k_reciprocal_heap_limit(limit)
            outs.append(re_ranking_features(Q, G))
    finally:
        torch.set_num_threads(before)
        _C.set_k_reciprocal_heap_limit(1 << 29)
    assert (outs[0] == outs[2]).all()
    assert (outs[1] == outs[2]).all()


def test_k_reciprocal_threads_agree_with_duplicate_rows():
    # duplicates tie exactly: every thread count must keep the lower index
    X = _clustered(600, seed=13)
    X[300:320] = X[:20]
    from pycsa.rerank.kreciprocal import k_reciprocal_self
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(k_reciprocal_self(X, 20, 6, 0.3))
    finally:
        torch.set_num_threads(before)
    assert (outs[0] == outs[1]).all()


def test_k_reciprocal_rows_left_short_are_ranked_again(two_threads):
    # bounds of 0 leave every row (none has m exact duplicates) short of candidates after pass 1:
    # each is ranked again from its full row, and the result is still the reference's
    import numpy as np
    from pycsa import _C
    from pycsa.compat import re_ranking_features
    from pycsa.rerank.kreciprocal import k_reciprocal_self
    Q, G, want = _tiled_case()["features"]
    Y, want_self = _tiled_case()["self"]
    _C.set_k_reciprocal_seed_scale(0.0)
    try:
        out, out_self = re_ranking_features(Q, G), k_reciprocal_self(Y, 20, 6, 0.3)
    finally:
        _C.set_k_reciprocal_seed_scale(1.0)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out_self, want_self, rtol=0, atol=1e-5)


def test_k_reciprocal_features_ignore_cpu_autocast():
    # the kernel's own products are float32 whatever autocast the caller runs under
    import numpy as np
    from pycsa.compat import re_ranking_features
    Q, G, want = _tiled_case()["features"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = re_ranking_features(torch.from_numpy(Q), torch.from_numpy(G))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), want, rtol=0, atol=1e-5)
