"""Every CUDA kernel of csrc/cuda, executed on the CPU: the CUDA sources (host and device
code, unchanged) built on the emulator in csrc/emu as ``torch.ops.pycsa_emu.*``, called
through each op's own host function with CPU tensors standing in for device memory, and
held to the CPU twins (``torch.ops.pycsa.*``) and float64 references.

The emulator checks as compute-sanitizer does: out-of-range shared/global indices in the
kernels' checked accessors, shared memory read before the block wrote it (poisoned with
0xff: NaN / -1), __syncthreads reached by only some threads or at different call sites,
warp collectives with bad masks. Every case runs under three schedules of the threads
and blocks (forward, reverse, seeded random) and must give the same bits: a result that
depends on the order has a race. ``make test-cuda`` runs this file alone;
``make test-cuda-sanitize`` runs it on ThreadSanitizer and AddressSanitizer/UBSan builds.

Environment: PYCSA_EMU_SANITIZE (thread | address,undefined) picks the build,
PYCSA_EMU_SRC a copy of csrc/ to build instead (bug-injection runs), PYCSA_REQUIRE_EMU=1
fails instead of skipping where no C++ compiler exists.
"""
from __future__ import annotations

import ctypes
import inspect
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import torch

import pycsa  # noqa: F401 - loads pycsa._C: the CPU twins, torch.ops.pycsa.*

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "csrc" / "emu"))
import build_emulated  # noqa: E402

cpu = torch.ops.pycsa
emu = torch.ops.pycsa_emu  # resolved at call time, once the library is loaded
SCHEDULES = os.environ.get("CUEMU_SCHEDULES", "fwd,rev,random:1").split(",")
_LIB = {}


def _have_compiler() -> bool:
    return shutil.which(os.environ.get("CXX", "c++")) is not None


@pytest.fixture(scope="module", autouse=True)
def emulated_library():
    """Builds (or finds up to date) and loads the emulated operator library."""
    if not _have_compiler():
        if os.environ.get("PYCSA_REQUIRE_EMU") == "1":
            pytest.fail("PYCSA_REQUIRE_EMU=1 but no C++ compiler is found (CXX or c++)")
        pytest.skip("no C++ compiler: the emulated CUDA tests build csrc/cuda with one")
    if "so" not in _LIB:
        so = build_emulated.build(src=os.environ.get("PYCSA_EMU_SRC"),
                                  sanitize=os.environ.get("PYCSA_EMU_SANITIZE", ""))  # and loads it
        lib = ctypes.CDLL(str(so))
        lib.cuemu_get_launch_log.restype = ctypes.c_char_p
        _LIB["so"], _LIB["lib"] = so, lib
    yield _LIB["lib"]


def launches() -> str:
    """The kernels launched since the last emulated() call, one line each."""
    return _LIB["lib"].cuemu_get_launch_log().decode()


def _bits(t):
    if t.is_floating_point():
        return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


def same_bits(a, b) -> bool:
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same_bits(x, y) for x, y in zip(a, b))
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def emulated(fn):
    """fn() under every schedule; the results must be bit-identical. Returns the first."""
    _LIB["lib"].cuemu_reset_launch_log()
    outs = []
    try:
        for s in SCHEDULES:
            os.environ["CUEMU_SCHEDULE"] = s
            outs.append(fn())
    finally:
        os.environ["CUEMU_SCHEDULE"] = "fwd"
    for s, o in zip(SCHEDULES[1:], outs[1:]):
        assert same_bits(outs[0], o), f"result depends on the schedule ({SCHEDULES[0]} vs {s}): a race"
    return outs[0]


def launch_count(kernel: str) -> int:
    """Launches of ``kernel`` in the first schedule's run of the last emulated() call."""
    names = (line.split(" ", 1)[0].split("<", 1)[0] for line in launches().splitlines())  # drop template args
    return sum(1 for name in names if name == kernel) // len(SCHEDULES)


# ---------------------------------------------------------------------------- graph
def random_csr(n, density, seed, empty_every=5):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, n, generator=g) < density
    if empty_every:
        mask[::empty_every] = False
    rows, cols = mask.nonzero(as_tuple=True)
    val = (torch.rand(rows.numel(), generator=g) + 0.05).float()
    rowptr = torch.zeros(n + 1, dtype=torch.long)
    rowptr[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    return rowptr, cols.contiguous(), val


def neighbours(n, k, seed):
    g = torch.Generator().manual_seed(seed + 1)
    nbr = torch.randint(0, max(n, 1), (n, k), generator=g)
    if n:
        nbr[:, 0] = torch.arange(n)
    return nbr, torch.rand(n, k, generator=g).float()


# rows of > 32 entries (a warp's worth), tile edges 16/17, 63/64/65, primes, one item, no rows
GRAPHS = [(0, 0.5), (1, 1.0), (7, 0.4), (17, 0.3), (40, 0.15), (64, 0.2), (65, 0.2), (150, 0.3)]


@pytest.mark.parametrize("n,density", GRAPHS)
def test_csr_add_transpose_bits(n, density):
    A = random_csr(n, density, seed=n)
    out = emulated(lambda: emu.csr_add_transpose(*A))
    assert same_bits(out, cpu.csr_add_transpose(*A))
    if A[1].numel():
        assert launch_count("expand_rows_kernel") >= 1 and launch_count("sum_runs_kernel") >= 1


@pytest.mark.parametrize("n,density", GRAPHS)
@pytest.mark.parametrize("k", [1, 4])
def test_gnn_propagate_bits(n, density, k):
    A = random_csr(n, density, seed=n + k)
    nbr, w = neighbours(n, k, seed=n)
    out = emulated(lambda: emu.gnn_propagate(*A, nbr, w))
    assert same_bits(out, cpu.gnn_propagate(*A, nbr, w))
    if A[1].numel():
        assert launch_count("expand_products_kernel") >= 1 and launch_count("normalize_rows_kernel") >= 1


def test_gnn_propagate_takes_non_contiguous_neighbours():
    A = random_csr(40, 0.2, seed=2)
    nbr, w = neighbours(40, 6, seed=3)
    nbr, w = nbr[:, ::2], w[:, ::2]  # strided views
    assert not nbr.is_contiguous()
    out = emulated(lambda: emu.gnn_propagate(*A, nbr, w))
    assert same_bits(out, cpu.gnn_propagate(*A, nbr.contiguous(), w.contiguous()))


@pytest.mark.parametrize("n,density", GRAPHS)
def test_csr_cross_dense_bits(n, density):
    A = random_csr(n, density, seed=3 * n)
    for split in sorted({0, 1 % (n + 1), n // 2, n}):
        out = emulated(lambda: emu.csr_cross_dense(*A, split))
        assert same_bits(out, cpu.csr_cross_dense(*A, split)), f"split {split}"
        if split and n - split and A[1].numel():
            assert launch_count("cross_kernel") == 1


@pytest.mark.parametrize("n,density", GRAPHS[:6])
def test_gnn_propagate_cross_bits(n, density):
    # On CUDA the last layer is formed, then crossed: the same bits as the CPU's
    # gnn_propagate + csr_cross_dense. The CPU's gnn_propagate_cross fuses the two and
    # rounds differently (a few ulp), as graph.cu says, so it is held to a tolerance.
    A = random_csr(n, density, seed=5 * n)
    nbr, w = neighbours(n, 3, seed=n)
    split = max(1, n // 3) if n > 1 else 0
    out = emulated(lambda: emu.gnn_propagate_cross(*A, nbr, w, split))
    assert same_bits(out, cpu.csr_cross_dense(*cpu.gnn_propagate(*A, nbr, w), split))
    torch.testing.assert_close(out, cpu.gnn_propagate_cross(*A, nbr, w, split), rtol=2e-6, atol=1e-7)


def test_graph_checks_run_on_the_device_path():
    rowptr, col, val = random_csr(6, 0.5, seed=1, empty_every=0)
    bad = col.clone()
    bad[0] = 99
    with pytest.raises(IndexError):
        emu.csr_add_transpose(rowptr, bad, val)
    repeated = col.clone()
    repeated[1] = repeated[0]
    with pytest.raises(ValueError):
        emu.csr_cross_dense(rowptr, repeated, val, 3)


# ------------------------------------------------------------------------- affinity
def ref_affinity(db, ranks, L, q):
    items = db.double()[ranks]
    if q is not None:
        items = torch.cat([q.double().unsqueeze(1), items], 1)
    return torch.bmm(items, items[:, :L].transpose(1, 2))


def ulps(a, ref, dtype):
    """|a - ref| in units of the dtype's spacing at ref (ref: float64)."""
    spacing = torch.finfo(dtype).eps * torch.maximum(ref.abs(), torch.tensor(torch.finfo(dtype).tiny))
    spacing = 2.0 ** torch.floor(torch.log2(spacing))
    return ((a.double() - ref).abs() / spacing).max().item()


AFF_CASES = [  # B, K, L, d, queries, layout
    (1, 1, 1, 1, False, "contiguous"),
    (1, 5, 3, 7, False, "contiguous"),
    (2, 70, 65, 40, True, "contiguous"),
    (1, 64, 64, 64, False, "contiguous"),
    (3, 16, 15, 17, False, "contiguous"),  # B above the emulated grid-z cap of 2: lists loop in the kernel
    (2, 17, 16, 15, True, "contiguous"),
    (5, 65, 63, 33, False, "contiguous"),
    (2, 33, 17, 13, True, "contiguous"),
    (2, 40, 40, 48, False, "offset"),  # data_ptr not 16-byte aligned: scalar loads
    (1, 20, 9, 40, True, "strided"),  # row stride 41
]


def make_db(n, d, dtype, layout, g):
    if layout == "contiguous":
        return torch.randn(n, d, generator=g).to(dtype)
    if layout == "offset":
        return torch.randn(n * d + 1, generator=g).to(dtype)[1:].view(n, d)
    return torch.randn(n, d + 1, generator=g).to(dtype)[:, :d]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,K,L,d,with_q,layout", AFF_CASES)
def test_affinity(dtype, B, K, L, d, with_q, layout):
    g = torch.Generator().manual_seed(B * 1000 + K * 10 + d)
    n = 90
    db = make_db(n, d, dtype, layout, g)
    ranks = torch.randint(0, n, (B, K - 1 if with_q else K), generator=g)
    q = make_db(B, d, dtype, layout, g) if with_q else None
    out = emulated(lambda: emu.affinity(db, ranks, L, q))
    ref = ref_affinity(db, ranks, L, q)
    assert out.dtype == dtype and out.shape == ref.shape
    kernel = "affinity_wmma_kernel" if dtype in (torch.float16, torch.bfloat16) else "affinity_simt_kernel"
    assert launch_count(kernel) == 1
    if dtype == torch.float64:
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    elif dtype == torch.float32:
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5 * d)
        torch.testing.assert_close(out, cpu.affinity(db, ranks, L, q), rtol=1e-5, atol=1e-5 * d)
    else:
        # float32 accumulation of exact products, one rounding to the 16-bit output
        assert ulps(out, ref, dtype) <= 1.0


def test_affinity_empty_lists():
    db = torch.randn(10, 8)
    out = emulated(lambda: emu.affinity(db, torch.zeros(0, 4, dtype=torch.long), 2, None))
    assert out.shape == (0, 4, 2)


def test_affinity_half_needs_sm80():
    db = torch.randn(10, 16).half()
    ranks = torch.randint(0, 10, (1, 4))
    os.environ["CUEMU_CC"] = "7.5"
    try:
        with pytest.raises(RuntimeError, match="compute capability 8.0"):
            emu.affinity(db, ranks, 2, None)
    finally:
        del os.environ["CUEMU_CC"]


# ------------------------------------------------------------------------ attention
def ref_attention(q, k, v, lengths, scale=None):
    B, H, T, D = q.shape
    scale = D**-0.5 if scale is None else scale
    s = torch.matmul(q.double(), k.double().transpose(-1, -2)) * scale
    valid = torch.ones(B, T, dtype=torch.bool) if lengths is None else torch.arange(T) < lengths.clamp(0, T)[:, None]
    s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return torch.matmul(p, v.double()) * valid[:, None, :, None]


# (B, H, T): one token, primes, the 64-row tile's edges; B = 3 above the emulated grid-z cap
ATT_SHAPES = [(1, 1, 1), (2, 3, 5), (3, 1, 15), (1, 2, 16), (2, 1, 17), (1, 2, 64), (3, 1, 63), (2, 1, 65),
              (1, 1, 130)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [32, 64])
@pytest.mark.parametrize("B,H,T", ATT_SHAPES)
@pytest.mark.parametrize("with_lengths", [False, True])
def test_attention(dtype, D, B, H, T, with_lengths):
    g = torch.Generator().manual_seed(B * 100 + H * 10 + T + D)
    q, k, v = (torch.randn(B, H, T, D, generator=g).to(dtype) for _ in range(3))
    lengths = None
    if with_lengths:  # ragged: one full-ish, one empty sequence
        lengths = torch.randint(0, T + 1, (B,), generator=g)
        lengths[0] = min(T, max(1, T - 3))
        if B > 1:
            lengths[-1] = 0 if T > 1 else 1
    out = emulated(lambda: emu.attention(q, k, v, lengths, None))
    ref = ref_attention(q, k, v, lengths)
    kernel = "attention_simt_kernel" if dtype == torch.float32 else "attention_wmma_kernel"
    assert launch_count(kernel) == 1
    tol = {torch.float32: 2e-6, torch.float16: 3e-3, torch.bfloat16: 2.5e-2}[dtype]
    err = (out.double() - ref).abs().max().item()
    assert err <= tol, f"max error {err:.3g} > {tol:g}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_attention_unaligned_half_takes_scalar_loads(dtype):
    g = torch.Generator().manual_seed(9)
    B, H, T, D = 2, 2, 70, 64
    q, k, v = (torch.randn(B * H * T * D + 1, generator=g).to(dtype)[1:].view(B, H, T, D) for _ in range(3))
    lengths = torch.tensor([70, 41])
    out = emulated(lambda: emu.attention(q, k, v, lengths, None))
    err = (out.double() - ref_attention(q, k, v, lengths)).abs().max().item()
    assert err <= {torch.float16: 3e-3, torch.bfloat16: 2.5e-2}[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_attention_views_of_fused_qkv(dtype):
    g = torch.Generator().manual_seed(7)
    B, T, H, D = 2, 70, 2, 32
    qkv = torch.randn(B, T, 3, H, D, generator=g).to(dtype)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, T, D), strided
    lengths = torch.tensor([70, 33])
    out = emulated(lambda: emu.attention(q, k, v, lengths, 0.3))
    err = (out.double() - ref_attention(q, k, v, lengths, 0.3)).abs().max().item()
    assert err <= (2e-6 if dtype == torch.float32 else 3e-3)


def test_attention_matches_the_cpu_kernel():
    g = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(2, 2, 37, 32, generator=g) for _ in range(3))
    lengths = torch.tensor([37, 20])
    out = emulated(lambda: emu.attention(q, k, v, lengths, None))
    torch.testing.assert_close(out, cpu.attention(q, k, v, lengths, None), rtol=2e-6, atol=2e-6)


def test_attention_lengths_out_of_range_are_clamped_on_cuda():
    # The CUDA path leaves the range check to the kernel (is_cpu() is false there).
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(3, 1, 20, 32, generator=g) for _ in range(3))
    lengths = torch.tensor([-4, 25, 7])
    out = emulated(lambda: emu.attention(q, k, v, lengths, None))
    err = (out.double() - ref_attention(q, k, v, lengths)).abs().max().item()
    assert err <= 2e-6


# ----------------------------------------------------------------------- k-reciprocal
# With the emulated build's limits (csrc/emu/build_emulated.py TEST_LIMITS) every case
# but the smallest stages its distances in several blocks and its expanded sets in
# several chunks; launch_count checks that the chunk loop really ran more than once.
@pytest.mark.parametrize("q,g,k1,k2", [(1, 1, 1, 1), (3, 12, 4, 2), (5, 40, 10, 4), (4, 30, 6, 1), (7, 60, 20, 6)])
def test_k_reciprocal_features(q, g, k1, k2):
    gen = torch.Generator().manual_seed(q * g)
    qf, gf = torch.randn(q, 16, generator=gen), torch.randn(g, 16, generator=gen)
    out = emulated(lambda: emu.k_reciprocal_features(qf, gf, k1, k2, 0.3))
    ref = cpu.k_reciprocal_features(qf, gf, k1, k2, 0.3)
    assert launch_count("pair_d2_features_kernel") >= 1 and launch_count("softmax_rows_kernel") == 1
    if q + g >= 15:
        assert launch_count("reciprocal_sets_kernel") > 1  # the chunked path
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


# every item a query against all items: one graph over the rows, gallery columns from row 0
@pytest.mark.parametrize("n,k1,k2", [(1, 1, 1), (2, 20, 6), (17, 4, 2), (40, 10, 4), (63, 20, 1)])
def test_k_reciprocal_self(n, k1, k2):
    gen = torch.Generator().manual_seed(3 * n)
    feats = torch.randn(n, 16, generator=gen)
    out = emulated(lambda: emu.k_reciprocal_self(feats, k1, k2, 0.3))
    ref = cpu.k_reciprocal_self(feats, k1, k2, 0.3)
    assert out.shape == (n, n)
    assert launch_count("pair_d2_features_kernel") >= 1 and launch_count("softmax_rows_kernel") == 1
    assert launch_count("cross_kernel") == (1 if n > 0 else 0)
    if n >= 15:
        assert launch_count("reciprocal_sets_kernel") > 1  # the chunked path
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("nq,n,k1,k2", [(5, 25, 6, 3), (1, 2, 1, 1), (9, 47, 12, 5)])
def test_k_reciprocal_matrices(dtype, nq, n, k1, k2):
    gen = torch.Generator().manual_seed(11 + n)
    z = torch.randn(n, 8, generator=gen, dtype=torch.float64)
    d = torch.cdist(z, z).to(dtype)
    qg, qq, gg = d[:nq, nq:].contiguous(), d[:nq, :nq].contiguous(), d[nq:, nq:].contiguous()
    out = emulated(lambda: emu.k_reciprocal(qg, qq, gg, k1, k2, 0.3))
    ref = cpu.k_reciprocal(qg, qq, gg, k1, k2, 0.3)
    assert launch_count("pair_d2_matrix_kernel") >= 1
    if n >= 25:
        assert launch_count("reciprocal_sets_kernel") > 1
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_k_reciprocal_non_contiguous_distances():
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(30, 8, generator=gen, dtype=torch.float64)
    d = torch.cdist(z, z).float()
    qg, qq, gg = d[:6, 6:], d[:6, :6], d[6:, 6:]  # views of one matrix, row stride 30
    assert not qg.is_contiguous()
    out = emulated(lambda: emu.k_reciprocal(qg, qq, gg, 8, 3, 0.3))
    torch.testing.assert_close(out, cpu.k_reciprocal(qg.contiguous(), qq.contiguous(), gg.contiguous(), 8, 3, 0.3),
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- emulator itself
def test_emulator_self_test_catches_the_classic_bugs():
    """csrc/emu/selftest.cu: a missing __syncthreads, unwritten shared memory, barrier
    divergence, bad warp masks, misaligned WMMA pointers, ... must each be reported."""
    sanitize = os.environ.get("PYCSA_EMU_SANITIZE", "")
    exe = build_emulated.build_selftest(sanitize=sanitize)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}  # linked in; preloading twice fails

    def run(*args, options=None):
        return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600,
                              env=dict(env, **(options or {})))

    if sanitize != "thread":  # the error-path cases abandon fibers mid-kernel, which TSan cannot follow
        res = run()
        assert res.returncode == 0 and "0 failure(s)" in res.stdout, res.stdout + res.stderr
    if not sanitize:  # a wild global store dies naming the kernel, block and thread
        res = run("crash")
        assert res.returncode == -11, (res.returncode, res.stderr[-2000:])
        assert re.search(r"cuemu: wild_store \(launched at \S+selftest\.cu:\d+\): block \(0,0,0\) thread \(\d+,0,0\) "
                         r"made an invalid memory access", res.stderr), res.stderr[-2000:]
    if sanitize == "thread":  # each missing barrier is a race report naming the kernel; no other report
        assert run("tsan", "clean").returncode == 0
        for case, kernel in (("block_race", "shift_no_sync"), ("warp_race", "neighbour_lane")):
            res = run("tsan", case, options={"TSAN_OPTIONS": "halt_on_error=1 exitcode=66"})
            reports = re.findall(r"SUMMARY: ThreadSanitizer: data race \S+ in (\w+)", res.stderr)
            assert res.returncode == 66 and reports == [kernel], res.stderr[-3000:]
    if sanitize == "address,undefined":  # out-of-bounds shared and global accesses, named
        # a shared array's index is checked against its type by UBSan (-fsanitize=bounds)
        res = run("asan", "shared_oob")
        assert res.returncode != 0, res.stderr[-3000:]
        assert re.search(r"selftest\.cu:\d+:\d+: runtime error: index 64 out of bounds for type 'float \[64\]'",
                         res.stderr), res.stderr[-3000:]
        # global memory (the tensors' heap) by ASan, with the kernel in the stack
        res = run("asan", "global_oob")
        assert res.returncode != 0 and "ERROR: AddressSanitizer: heap-buffer-overflow" in res.stderr, res.stderr[-3000:]
        assert "global_past_end" in res.stderr and "selftest.cu" in res.stderr


# Which test exercises each __global__ function of csrc/cuda (each asserts the kernel's
# launch by name). The coverage test below fails when a kernel is added without one.
KERNEL_TESTS = {
    "expand_rows_kernel": ["test_csr_add_transpose_bits"],
    "sum_runs_kernel": ["test_csr_add_transpose_bits"],
    "expand_products_kernel": ["test_gnn_propagate_bits"],
    "normalize_rows_kernel": ["test_gnn_propagate_bits"],
    "cross_kernel": ["test_csr_cross_dense_bits", "test_k_reciprocal_self"],
    "affinity_simt_kernel": ["test_affinity"],
    "affinity_wmma_kernel": ["test_affinity"],
    "attention_simt_kernel": ["test_attention"],
    "attention_wmma_kernel": ["test_attention"],
    "reciprocal_sets_kernel": ["test_k_reciprocal_features", "test_k_reciprocal_matrices", "test_k_reciprocal_self"],
    "pair_d2_matrix_kernel": ["test_k_reciprocal_matrices"],
    "pair_d2_features_kernel": ["test_k_reciprocal_features", "test_k_reciprocal_self"],
    "softmax_rows_kernel": ["test_k_reciprocal_features", "test_k_reciprocal_self"],
}


def cuda_kernels(src: pathlib.Path) -> set[str]:
    """The __global__ functions defined in the .cu / .cuh files of ``src``."""
    names = set()
    for path in sorted(src.glob("*.cu")) + sorted(src.glob("*.cuh")):
        text = re.sub(r"//[^\n]*|/\*.*?\*/", "", path.read_text(), flags=re.S)
        for m in re.finditer(r"__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(", text):
            names.add(m.group(1))
    return names


def test_every_cuda_kernel_has_an_emulated_test():
    kernels = cuda_kernels(ROOT / "csrc" / "cuda")
    assert len(kernels) >= 13
    missing = sorted(kernels - KERNEL_TESTS.keys())
    assert not missing, f"__global__ functions in csrc/cuda without an emulated test: {missing}"
    module = sys.modules[__name__]
    for kernel, tests in KERNEL_TESTS.items():
        assert kernel in kernels, f"KERNEL_TESTS names {kernel}, which csrc/cuda no longer defines"
        for name in tests:
            source = inspect.getsource(getattr(module, name))
            assert f'"{kernel}"' in source or "kernel = " in source, f"{name} does not check that {kernel} ran"


def test_a_killed_build_does_not_hang_the_next(tmp_path, capfd):
    """torch's load() marks a build in progress with a plain file that a killed build leaves
    behind, and the next load() would wait for it forever; the build's own flock (released by
    the OS when its holder dies) tells a leftover from a build that is running."""
    import fcntl
    import threading

    (tmp_path / "lock").touch()
    with open(tmp_path / "build.flock", "w") as running:  # a build running in another process
        fcntl.flock(running, fcntl.LOCK_EX)
        entered = threading.Event()

        def build():
            with build_emulated._build_lock(tmp_path):
                entered.set()

        waiting = threading.Thread(target=build)
        waiting.start()
        assert not entered.wait(0.5), "entered while another build held the folder"
        assert (tmp_path / "lock").exists(), "removed the lock file of a build that is running"
    waiting.join(10)  # the running build ended (its flock released) and left its lock file
    assert entered.is_set() and not (tmp_path / "lock").exists()
    assert "left by a build that was killed" in capfd.readouterr().err
