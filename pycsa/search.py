"""Initial retrieval: exact inner-product top-k (SPEC §1).

CPU, float32 database: pycsa's kernel (``ops.inner_product_topk``: a GEMM per
256 x 4,096 block, then each row's top-k; C++). Where the CPU's bfloat16 GEMM is at
least 1.5x its float32 one (timed once per process) and the database has at least
4,096 rows, a bfloat16 first pass picks candidates that are then scored again in
float32; a bound on the bfloat16 error proves, row by row, that no item left out can
reach the top-k, and the rows it cannot prove (rare) are searched again exactly.
Without the compiled kernels, faiss ``IndexFlatIP`` when installed, else a blocked
torch search, which also serves CUDA, float64 and half-precision databases and
float64 queries (summed in float64). None holds the full q x n score matrix: the
torch path keeps at most ``block_elems`` scores at a time (256 MB in float32 by
default), the kernel a 4 MB block. Ties (equal float32 scores) are broken by the
lower database index. Exact duplicates of a row may still differ in the last
bit when BLAS computes them in different blocks.

``Index(database)`` does the per-database work once (validation, the faiss
index) for repeated searches; ``search(queries, database, k)`` is the one-shot form.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np
import torch

from . import ops
from ._checks import integer, one_of, optional_callable
from ._precision import matmul
from ._tensors import as_tensor, check_features, fingerprint, rescaled, to_caller
from ._types import ArrayLike
from .ops import _extension

Progress = Optional[Callable[[int, int], None]]  # (done, total) in queries

_faiss_module = ...  # not looked for yet; then the module, or None when not installed


def _faiss():
    """faiss, imported on first use (it takes a second to import) or None when not installed:
    faiss is optional, its absence only changes which exact search runs on the CPU."""
    global _faiss_module
    if _faiss_module is ...:
        try:
            import faiss
        except ImportError:
            faiss = None
        _faiss_module = faiss
    return _faiss_module


def __getattr__(name):
    if name == "faiss":  # ``pycsa.search.faiss``: None when faiss is not installed
        return _faiss()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Index:
    """An exact inner-product index over ``database`` (rows are items).

    The database is held by reference: after changing it in place, build a new Index.
    Rows of norm above about 9.2e18 are refused (their inner products overflow float32);
    features with huge or tiny values are searched at a power-of-two scale, which ranks
    exactly as the inputs given, and the scores are scaled back.
    ``backend``: "auto" (the bfloat16 prefilter where the CPU's bfloat16 GEMM is at least
    1.5x its float32 one, timed once per process, and the database is float32 with at
    least 4,096 rows; else pycsa's kernel for float32 on the CPU; else faiss on CPU
    when installed; else torch), "bf16"
    (the prefilter; float32 CPU databases on any CPU, slow without bfloat16
    instructions), "faiss", "kernel" (``ops.inner_product_topk``, the C++ blocked
    GEMM + top-k; float32 CPU databases) or "torch" (blocked ``torch.mm`` + top-k;
    any device and dtype). Every backend is exact; the prefilter keeps a bfloat16 copy
    of the database (half the float32 size).
    """

    def __init__(self, database: ArrayLike, *, backend: str = "auto", block_elems: int = 1 << 26):
        X, _ = as_tensor(database, "database")
        X = X.detach()
        check_features(X, "database")
        one_of(backend, "backend", ("auto", "bf16", "faiss", "kernel", "torch"))
        self.block_elems = integer(block_elems, "block_elems", low=1)
        if backend == "faiss" and (_faiss() is None or X.device.type != "cpu"):
            raise ValueError("backend: 'faiss' needs faiss-cpu installed and CPU inputs")
        if backend == "bf16" and not (X.device.type == "cpu" and X.dtype == torch.float32
                                      and _extension.has_cpu_kernels()):
            raise ValueError("backend: 'bf16' needs a float32 CPU database and the compiled pycsa kernels")
        if backend == "kernel" and not _kernel_serves(X):
            raise ValueError("backend: 'kernel' needs a float32 CPU database and the compiled pycsa kernels")
        self.database = X
        # What tells an in-place change of the caller's array apart: torch counts them (detach
        # shares the counter); numpy counts none, so a sample of its rows is hashed. A numpy
        # array that as_tensor had to copy is not held by reference and needs no check.
        self._numpy_source = database if isinstance(database, np.ndarray) and \
            database.__array_interface__["data"][0] == X.data_ptr() else None
        self._fingerprint = fingerprint(self._numpy_source if self._numpy_source is not None else X)
        # The search runs on X / 2^e when X's values are huge or tiny (scores scaled back):
        # the ranking is the same, and float32 neither overflows nor sinks into subnormals.
        self._scaled, self._scale = rescaled(X)
        self._prefilter = None
        if backend == "bf16" or (backend == "auto" and _Bf16Prefilter.worthwhile(self._scaled)):
            self._prefilter = _Bf16Prefilter(self._scaled)
        self._use_kernel = backend in ("auto", "bf16", "kernel") and _kernel_serves(self._scaled)
        self._faiss_only = backend == "faiss"
        # faiss serves only where the kernel does not (and is imported only then)
        self._use_faiss = X.device.type == "cpu" and (self._faiss_only or (backend in ("auto", "bf16")
                                                                            and not self._use_kernel)) \
            and _faiss() is not None
        self._faiss = None  # built on first use: behind the prefilter only rows it cannot prove need it

    @property
    def ntotal(self) -> int:
        return self.database.shape[0]

    def same_database(self, database: ArrayLike) -> bool:
        """True when ``database`` is the very array this index was built on (same memory and shape)."""
        X, _ = as_tensor(database, "database")
        D = self.database
        return X.data_ptr() == D.data_ptr() and X.shape == D.shape and X.stride() == D.stride() and \
            X.dtype == D.dtype and X.device == D.device

    def search(self, queries: ArrayLike, k: int, *, progress: Progress = None) -> tuple[ArrayLike, ArrayLike]:
        """``(scores, indices)``, each q x k, best first (float32, int64), in the kind of ``queries``."""
        Q, was_numpy = as_tensor(queries, "queries")
        Q = Q.detach()
        X = self.database
        progress = optional_callable(progress, "progress")
        self._check_unchanged()
        check_features(Q, "queries")
        if Q.shape[1] != X.shape[1]:
            raise ValueError(f"queries: dimension {Q.shape[1]} differs from database dimension {X.shape[1]}")
        if Q.device != X.device:
            raise ValueError(f"queries: on {Q.device} but database is on {X.device}")
        k = integer(k, "k", 1, X.shape[0], "the database size")
        Q, q_scale = rescaled(Q, per_row=True)  # a query's ranking does not depend on its own scale
        if self._prefilter is not None and self._prefilter.applies(Q, k):
            scores, indices = self._prefilter.search(Q, k, self._exact, progress)
        else:
            scores, indices = self._exact(Q, k, progress)
        if isinstance(q_scale, torch.Tensor) or self._scale != 1.0:  # the scores of the inputs as given
            scores = (scores.double() * q_scale * self._scale).float()
        if indices.numel() and int(indices.min()) < 0:  # faiss's "no result": never handed on as an index
            raise RuntimeError("search: found fewer than k results; please report this with the inputs")
        return to_caller(scores, was_numpy), to_caller(indices, was_numpy)

    def _check_unchanged(self) -> None:
        """ValueError when the database was changed in place since construction: the
        validation, the scaled copy and the prefilter's bfloat16 copy describe the old values,
        and a search over a mix of them fails (or ranks) in ways that name nothing."""
        before = self._fingerprint
        if self._numpy_source is not None:
            changed = fingerprint(self._numpy_source).sample != before.sample
        else:
            changed = self.database._version != before.version
        if changed:
            raise ValueError("database: changed in place since the Index was built; build a new Index")

    def _exact(self, Q, k, progress=None):
        # pycsa's kernel before faiss: as fast on AVX2 (Intel, capped: 2.68 s against 2.69 s for
        # 20,000 x 20,000 x 512) and 4x faster on the AVX-512 VM (1.68 s against 6.61 s), ties by
        # the lower index without faiss's second pass
        if Q.dtype == torch.float64 and not self._faiss_only:  # summed in float64, as torch does
            return _search_torch(Q, self._scaled, k, self.block_elems, progress)
        if self._use_kernel:
            return _search_kernel(Q, self._scaled, k, progress)
        if self._use_faiss:
            if self._faiss is None:
                self._faiss = _faiss().IndexFlatIP(self.database.shape[1])
                self._faiss.add(self._scaled.float().contiguous().numpy())
            return _search_faiss(self._faiss, Q, k, progress)
        return _search_torch(Q, self._scaled, k, self.block_elems, progress)


def search(queries: ArrayLike, database: ArrayLike, k: int, *, backend: str = "auto", block_elems: int = 1 << 26,
           progress: Progress = None) -> tuple[ArrayLike, ArrayLike]:
    """Exact top-``k`` database rows by inner product for each query.

    Returns ``(scores, indices)``, each q x k, best first (float32 scores, int64
    indices), as torch tensors or numpy arrays like ``queries``. ``backend``:
    "auto", "bf16" (CPU only), "faiss" (CPU only), "kernel" (CPU only) or "torch" (see
    :class:`Index`). For many searches of one database, build an :class:`Index` once.
    """
    Q, _ = as_tensor(queries, "queries")
    X, _ = as_tensor(database, "database")
    k = integer(k, "k", low=1)
    optional_callable(progress, "progress")  # before the index is built, which may be costly
    if Q.device != X.device:  # before the index is built, which may be costly
        raise ValueError(f"queries: on {Q.device} but database is on {X.device}")
    if Q.dim() == 2 and X.dim() == 2 and Q.shape[1] != X.shape[1]:
        raise ValueError(f"queries: dimension {Q.shape[1]} differs from database dimension {X.shape[1]}")
    return Index(database, backend=backend, block_elems=block_elems).search(queries, k, progress=progress)


class _Bf16Prefilter:
    """Exact float32 top-k through a bfloat16 first pass.

    For each query the first pass (``ops.inner_product_topk`` on bfloat16 copies)
    keeps the best ``k + margin`` candidates and the best approximate score a of
    any item left out; the candidates are scored again in float32 and sorted
    (score, then index). ``_score_bound(a)`` bounds the float32 score of every
    item left out, so when it is below the k-th float32 score no such item can
    enter the top-k or tie with it, and the row is exact. Other rows are searched
    again with ``exact`` (the float32 search).
    """

    min_rows = 4096
    queries_per_call = 4096  # progress granularity; also bounds the candidate buffers

    def __init__(self, X: torch.Tensor):
        self.database = X
        self.unproven = 0  # rows of the last search that went to the exact search
        self.low = X.bfloat16()
        # max ||x||, max ||x̃|| and max ||x - x̃|| over the database
        self.norm, self.norm_low, self.rounding = (float(v.max()) if v.numel() else 0.0
                                                   for v in _rounding_norms(X, self.low))

    # The first pass must beat the float32 kernel it stands in for. bfloat16 dot-product
    # instructions do not make it so: on an Intel AVX512-BF16 VM without AMX (2026-11-30) oneDNN's
    # bfloat16 GEMM ran at 0.65x its float32 one and the prefilter took twice the float32 kernel's
    # time (20,000 x 20,000 x 512: 3.4 s against 1.7 s); on an AMD AVX512-BF16 machine it had
    # beaten faiss. So the CPU's two GEMMs are timed once and the prefilter runs where bfloat16
    # is at least this many times faster.
    min_gemm_speedup = 1.5

    @classmethod
    def worthwhile(cls, X: torch.Tensor) -> bool:
        return (X.device.type == "cpu" and X.dtype == torch.float32 and X.shape[0] >= cls.min_rows
                and _extension.has_cpu_kernels() and bool(getattr(_extension._C, "bf16_dot_products", bool)())
                and _bf16_gemm_speedup() >= cls.min_gemm_speedup)

    @staticmethod
    def margin(k: int) -> int:
        return max(32, k)

    def applies(self, Q: torch.Tensor, k: int) -> bool:
        # Large features could overflow bfloat16 (max 3.4e38) or the float32 scores.
        return (2 * (k + self.margin(k)) <= self.database.shape[0] and Q.dtype == torch.float32
                and Q.shape[0] > 0 and self.norm < 1e15 and float(Q.abs().max()) < 1e15)

    def _score_bound(self, Q: torch.Tensor, Ql: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
        """Per query, an upper bound on the float32 score of any row whose approximate score is <= approx
        (``approx``: one value per query, or q x m values).

        With x̃ = bf16(x), q̃ = bf16(q), d features, g = d·2^-24 / (1 - d·2^-24)
        (any float32 summation order, FMA or not), u = 2^-8, and the first pass's
        float32 sum c of the products of q̃ and x̃ rounded once to bfloat16, a = bf16(c):
          c <= f(a) = a / (1 - u) for a >= 0, a / (1 + u) below (rounding keeps the
               sign and moves by at most u|c|; f increases, so f(approx) bounds them all)
          |c - q̃·x̃|    <= g ||q̃|| max||x̃||
          |q̃·x̃ - q·x|  <= ||q|| max||x - x̃|| + ||q - q̃|| max||x̃||
          |fp32(q·x) - q·x| <= g ||q|| max||x||
        plus an absolute 1e-30 for bfloat16 subnormals flushed to zero.
        """
        d, u = Q.shape[1], 2.0 ** -8
        g = d * 2.0 ** -24 / (1 - d * 2.0 ** -24)
        nq, nql, rq = _rounding_norms(Q, Ql)
        a = approx.double()
        c = torch.where(a >= 0, a / (1 - u), a / (1 + u))
        eps = g * nql * self.norm_low + nq * self.rounding + rq * self.norm_low + g * nq * self.norm
        eps = eps.reshape(-1, *([1] * (a.dim() - 1)))  # approx: one per query, or q x m
        return c + eps * (1 + 1e-6) + 1e-30

    def search(self, Q: torch.Tensor, k: int, exact, progress: Progress):
        q = Q.shape[0]
        kc = k + self.margin(k)
        scores = torch.empty((q, k), dtype=torch.float32)
        indices = torch.empty((q, k), dtype=torch.int64)
        self.unproven = 0
        for start in range(0, q, self.queries_per_call):
            Qb = Q[start:start + self.queries_per_call]
            Ql = Qb.bfloat16()
            approx, cand = ops.inner_product_topk(Ql, self.low, kc + 1)
            left_out = approx[:, kc]  # the best approximate score of any item not kept
            cand = cand[:, :kc]
            rescored = ops.affinity(self.database, cand, 1, queries=Qb)[:, 1:, 0]
            s, i = sort_by_score(rescored, cand)
            s, i = s[:, :k], i[:, :k]
            unproven = torch.nonzero(~(self._score_bound(Qb, Ql, left_out) < s[:, k - 1].double())).flatten()
            if unproven.numel():
                s[unproven], i[unproven] = exact(Qb[unproven], k)
                self.unproven += unproven.numel()
            scores[start:start + Qb.shape[0]], indices[start:start + Qb.shape[0]] = s, i
            if progress is not None:
                progress(start + Qb.shape[0], q)
        return scores, indices


def _rounding_norms(X: torch.Tensor, Xl: torch.Tensor):
    """Per row, in float64: ||x||, ||x̃|| and ||x - x̃|| for x̃ = Xl's row (its bfloat16 copy).

    Blocks of 32 MB in float64, so no n x d float64 copy exists."""
    n = X.shape[0]
    out = tuple(torch.empty(n, dtype=torch.float64) for _ in range(3))
    step = max(1, (1 << 22) // max(1, X.shape[1]))
    for s in range(0, n, step):
        x, xl = X[s:s + step].double(), Xl[s:s + step].double()
        out[0][s:s + step], out[1][s:s + step], out[2][s:s + step] = \
            x.norm(dim=1), xl.norm(dim=1), (x - xl).norm(dim=1)
    return out


def sort_by_score(scores: torch.Tensor, indices: torch.Tensor):
    """Each row best first: descending score, equal scores by the lower index. Returns (scores, indices)."""
    order = torch.sort(indices, dim=1, stable=True).indices
    order = order.gather(1, torch.sort(scores.gather(1, order), dim=1, descending=True, stable=True).indices)
    return scores.gather(1, order), indices.gather(1, order)


def _search_faiss(index, Q, k, progress):
    q, n = Q.shape[0], index.ntotal
    scores = torch.empty((q, k), dtype=torch.float32)
    indices = torch.empty((q, k), dtype=torch.int64)
    step = max(1, min(q, 4096))
    for start in range(0, q, step):
        stop = min(q, start + step)
        Qb = Q[start:stop].float().contiguous().numpy()
        D, I = index.search(Qb, min(n, k + 1))
        if k < n:
            D, I = _widen_ties(index, Qb, D, I, k)
        else:
            D, I = torch.from_numpy(D), torch.from_numpy(I)
        scores[start:stop], indices[start:stop] = sort_by_score(D, I)
        if progress is not None:
            progress(stop, q)
    return scores, indices


def _widen_ties(index, Qb, D, I, k):
    """Top-k rows whose k-th score ties with a score faiss left out are searched again, deeper.

    faiss may keep any of several items tied at the k-th score; a row is complete
    once the last score returned is below its k-th, so that every tied item is seen.
    Only the rows with such a tie (rare) are searched again.
    """
    n = index.ntotal
    D, I = torch.from_numpy(D), torch.from_numpy(I)
    out_d, out_i = D[:, :k].clone(), I[:, :k].clone()
    rows = torch.nonzero(D[:, -1] >= D[:, k - 1]).flatten()
    wide = D.shape[1]
    while rows.numel():
        wide = min(n, 2 * wide)
        Dw, Iw = (torch.from_numpy(a) for a in index.search(Qb[rows.numpy()], wide))
        tied = Dw[:, k - 1:k]
        # Of the items tied at the k-th score, keep the lowest indices.
        key = torch.where(Dw > tied, -1, torch.where(Dw == tied, Iw, torch.iinfo(torch.int64).max))
        pick = torch.sort(key, dim=1, stable=True).indices[:, :k]
        out_d[rows], out_i[rows] = Dw.gather(1, pick), Iw.gather(1, pick)
        rows = rows[(Dw[:, -1] >= Dw[:, k - 1]) & (wide < n)]
    return out_d, out_i


def topk_lower_index(scores: torch.Tensor, k: int):
    """Exact top-k of each row, best first, equal scores in column order (lower column first).

    O(n) per row: ``torch.topk`` finds the k-th value; of the entries equal to it,
    the leftmost are kept. Returns (values, columns).
    """
    kth = scores.topk(k, dim=1, sorted=False).values.min(dim=1, keepdim=True).values
    above = scores > kth
    at = scores == kth
    need = k - above.sum(dim=1, keepdim=True)
    keep = above | (at & (at.cumsum(dim=1, dtype=torch.int32) <= need))  # int32: half the memory of int64
    cols = keep.nonzero()[:, 1].reshape(scores.shape[0], k)  # row-major: ascending columns
    vals = scores.gather(1, cols)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return vals.gather(1, order), cols.gather(1, order)


def _bf16_gemm_speedup() -> float:
    """This CPU's bfloat16 GEMM speed over its float32 one on the prefilter's block (256 x 4,096
    x 512, as ``ops.inner_product_topk`` runs it), measured once per process by the extension
    (``_C.bf16_gemm_speedup``, which also decides the CPU kernels' bfloat16 path); 0 without
    the compiled kernels. PYCSA_SEARCH_PREFILTER=1 or 0 decides instead (reported as 1000x or
    0x), for runs that must take the same path on every start."""
    forced = os.environ.get("PYCSA_SEARCH_PREFILTER", "").strip()
    if forced in ("0", "1"):
        return 1000.0 if forced == "1" else 0.0
    return float(_extension._C.bf16_gemm_speedup()) if _extension.has_cpu_kernels() else 0.0


def _kernel_serves(X: torch.Tensor) -> bool:
    return X.device.type == "cpu" and X.dtype == torch.float32 and _extension.has_cpu_kernels()


def _search_kernel(Q, X, k, progress, step=4096):
    """ops.inner_product_topk (its own 256 x 4,096 blocks), a call per ``step`` queries for progress."""
    q = Q.shape[0]
    Q = Q.float()
    scores = torch.empty((q, k), dtype=torch.float32)
    indices = torch.empty((q, k), dtype=torch.int64)
    for qs in range(0, q, step):
        scores[qs:qs + step], indices[qs:qs + step] = ops.inner_product_topk(Q[qs:qs + step], X, k)
        if progress is not None:
            progress(min(q, qs + step), q)
    return scores, indices


def _search_torch(Q, X, k, block_elems, progress):
    q, n = Q.shape[0], X.shape[0]
    compute = torch.float32 if Q.dtype != torch.float64 else torch.float64
    q_step = max(1, min(q, 1024))
    n_step = max(k, min(n, block_elems // q_step))
    scores = torch.empty((q, k), dtype=torch.float32, device=Q.device)
    indices = torch.empty((q, k), dtype=torch.int64, device=Q.device)
    for qs in range(0, q, q_step):
        Qb = Q[qs:qs + q_step].to(compute)
        best_s = torch.empty((Qb.shape[0], 0), dtype=compute, device=Q.device)
        best_i = torch.empty((Qb.shape[0], 0), dtype=torch.int64, device=Q.device)
        for ns in range(0, n, n_step):
            S = matmul(Qb, X[ns:ns + n_step].to(compute).T)  # never TF32 (pycsa._precision)
            # The running best (lower indices) goes first, so column order is index order.
            merged_s = torch.cat([best_s, S], 1)
            prev = best_i.shape[1]
            best_s, cols = topk_lower_index(merged_s, min(k, merged_s.shape[1]))
            # column c < prev is the running best's c-th entry, else item ns + c - prev of this block
            new_i = cols + (ns - prev)
            if prev:
                new_i = torch.where(cols < prev, best_i.gather(1, cols.clamp(max=prev - 1)), new_i)
            best_i = new_i
        scores[qs:qs + q_step], indices[qs:qs + q_step] = best_s.float(), best_i
        if progress is not None:
            progress(min(q, qs + q_step), q)
    return scores, indices


def own_last(idx: torch.Tensor) -> torch.Tensor:
    """The column order that moves each row's own index (row i's i, wherever it ranks) to the
    end of the row and keeps the others in order (a stable sort)."""
    is_self = idx == torch.arange(idx.shape[0], device=idx.device).unsqueeze(1)
    return torch.sort(is_self.to(torch.uint8), dim=1, stable=True).indices


def neighbours_without_self(X: torch.Tensor, depth: int) -> torch.Tensor:
    """Each row's top-``depth`` other rows (its own index removed wherever it ranks)."""
    _, idx = search(X, X, min(depth + 1, X.shape[0]))
    idx = torch.as_tensor(idx, device=X.device)
    return idx.gather(1, own_last(idx))[:, :depth]
