"""Initial retrieval: exact inner-product top-k (SPEC §1).

CPU: faiss ``IndexFlatIP`` when faiss is installed, else a blocked torch search.
CUDA: the blocked torch search on the GPU. Neither holds the full q x n score
matrix: the torch path keeps at most ``block_elems`` scores at a time
(256 MB in float32 by default). Ties (equal float32 scores) are broken by the
lower database index. Exact duplicates of a row may still differ in the last
bit when BLAS computes them in different blocks.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ._tensors import as_tensor, check_features, to_caller

Progress = Optional[Callable[[int, int], None]]  # (done, total) in queries

try:  # faiss is optional: its absence only changes which exact search runs on the CPU
    import faiss
except ImportError:
    faiss = None


def search(queries, database, k: int, *, backend: str = "auto", block_elems: int = 1 << 26,
           progress: Progress = None):
    """Exact top-``k`` database rows by inner product for each query.

    Returns ``(scores, indices)``, each q x k, best first (float32 scores, int64
    indices), as torch tensors or numpy arrays like ``queries``. ``backend``:
    "auto", "faiss" (CPU only) or "torch".
    """
    Q, was_numpy = as_tensor(queries, "queries")
    X, _ = as_tensor(database, "database")
    check_features(Q, "queries")
    check_features(X, "database")
    if Q.shape[1] != X.shape[1]:
        raise ValueError(f"queries: dimension {Q.shape[1]} differs from database dimension {X.shape[1]}")
    if Q.device != X.device:
        raise ValueError(f"queries: on {Q.device} but database is on {X.device}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= X.shape[0]:
        raise ValueError(f"k: must be an int in [1, {X.shape[0]}] (the database size), got {k!r}")
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"backend: expected 'auto', 'faiss' or 'torch', got {backend!r}")
    if backend == "faiss" and (faiss is None or Q.device.type != "cpu"):
        raise ValueError("backend: 'faiss' needs faiss-cpu installed and CPU inputs")

    use_faiss = Q.device.type == "cpu" and faiss is not None and backend != "torch"
    run = _search_faiss if use_faiss else _search_torch
    scores, indices = run(Q, X, k, block_elems, progress)
    return to_caller(scores, was_numpy), to_caller(indices, was_numpy)


def _order_ties(scores: torch.Tensor, indices: torch.Tensor):
    """Within runs of equal scores put the lower index first (rows are already score-sorted)."""
    order = torch.sort(indices, dim=1, stable=True).indices
    order = order.gather(1, torch.sort(scores.gather(1, order), dim=1, descending=True, stable=True).indices)
    return scores.gather(1, order), indices.gather(1, order)


def _search_faiss(Q, X, k, block_elems, progress):
    index = faiss.IndexFlatIP(X.shape[1])
    index.add(X.float().contiguous().numpy())
    q, n = Q.shape[0], X.shape[0]
    scores = torch.empty((q, k), dtype=torch.float32)
    indices = torch.empty((q, k), dtype=torch.int64)
    step = max(1, min(q, 4096))
    for start in range(0, q, step):
        stop = min(q, start + step)
        Qb = Q[start:stop].float().contiguous().numpy()
        # faiss may keep any of several items tied at the k-th score. Widen the search
        # until the last score returned is below the k-th, so every tied item is seen.
        wide = min(n, k + 1)
        while True:
            D, I = index.search(Qb, wide)
            if wide == n or not (D[:, wide - 1] >= D[:, k - 1]).any():
                break
            wide = min(n, 2 * wide)
        D, I = _order_ties(torch.from_numpy(D), torch.from_numpy(I))
        scores[start:stop], indices[start:stop] = D[:, :k], I[:, :k]
        if progress is not None:
            progress(stop, q)
    return scores, indices


def _topk_lower_index(scores: torch.Tensor, indices: torch.Tensor, k: int):
    """Top-k per row where equal scores keep their column order (callers keep lower indices first)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), indices.gather(1, order)


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
            S = Qb @ X[ns:ns + n_step].to(compute).T
            cols = torch.arange(ns, ns + S.shape[1], device=Q.device).expand_as(S)
            # The running best (lower indices) goes first so a stable sort keeps it ahead on ties.
            best_s, best_i = _topk_lower_index(torch.cat([best_s, S], 1), torch.cat([best_i, cols], 1), k)
        scores[qs:qs + q_step], indices[qs:qs + q_step] = best_s.float(), best_i
        if progress is not None:
            progress(min(q, qs + q_step), q)
    return scores, indices
