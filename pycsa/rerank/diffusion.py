"""Diffusion re-ranking (Iscen et al. 2017, "DFS"; SPEC §6).

Offline (``fit``): the mutual kNN graph of the database (k neighbours each, exact,
blocked search), affinities max(s, 0)^γ, the symmetric normalisation
S = D^{-1/2} W D^{-1/2}; O(n·k) memory.
Online: for a block of queries at once, y = each query's top-``query_k`` similarities
raised to γ (sparse), f solves (I - α S) f = y by conjugate gradient on all columns
together (one sparse x dense product per iteration), and the database is ranked by f.
Memory online: a few n x block dense vectors (block chosen to stay under
``block_elems`` values per vector).
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch

from .._checks import positive_int, unit_interval
from .._safe_load import load_weights_only
from .._precision import matmul
from .._tensors import as_tensor, check_features
from ..ranking import Progress, Ranking, Reranker, register
from ..search import Index, sort_by_score, topk_lower_index


def mutual_knn_graph(X: torch.Tensor, k: int, gamma: float, progress: Progress = None) -> torch.Tensor:
    """Sparse (COO) symmetric-normalised affinity S of the mutual kNN graph of the rows of X."""
    n = X.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.int64), torch.zeros(0), (n, n),
                                       check_invariants=False).coalesce()
    s, idx = Index(X).search(X, k + 1, progress=progress)
    rows = torch.arange(n).repeat_interleave(k + 1)
    cols, vals = idx.reshape(-1), s.reshape(-1).clamp(min=0).pow(gamma)
    keep = rows != cols  # no self loops
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    # Mutual edges only, weighted by the smaller of the two directions (W = min(W, Wᵀ)).
    key, key_t = rows * n + cols, cols * n + rows
    order = torch.argsort(key)
    key_sorted = key[order]
    pos = torch.searchsorted(key_sorted, key_t).clamp(max=key.numel() - 1)
    mutual = key_sorted[pos] == key_t
    w = torch.minimum(vals[mutual], vals[order][pos][mutual])
    rows, cols = rows[mutual], cols[mutual]
    deg = torch.zeros(n, dtype=w.dtype).index_add_(0, rows, w)
    inv_sqrt = torch.where(deg > 0, deg.clamp_min(1e-30).rsqrt(), torch.zeros_like(deg))
    w = w * inv_sqrt[rows] * inv_sqrt[cols]
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), w, (n, n), check_invariants=False).coalesce()


def conjugate_gradient(S: torch.Tensor, Y: torch.Tensor, alpha: float, iters: int = 20, tol: float = 1e-6):
    """Solves (I - α S) F = Y column by column (all columns in each sparse product)."""
    return _cg(lambda P: torch.sparse.mm(S, P), Y, alpha, iters, tol, dim=0)


def _cg(apply_S, Y: torch.Tensor, alpha: float, iters: int, tol: float, dim: int) -> torch.Tensor:
    """Conjugate gradient for (I - α S) f = y on every vector of Y at once (vectors run along ``dim``)."""
    F = torch.zeros_like(Y)
    R = Y.clone()
    P = R.clone()
    rr = (R * R).sum(dim, keepdim=True)
    stop = tol * tol * rr.clamp_min(1e-30)
    for _ in range(iters):
        if bool((rr <= stop).all()):
            break
        AP = P - alpha * apply_S(P)
        step = rr / (P * AP).sum(dim, keepdim=True).clamp_min(1e-30)
        F += step * P
        R -= step * AP
        rr_new = (R * R).sum(dim, keepdim=True)
        P = R + (rr_new / rr.clamp_min(1e-30)) * P
        rr = rr_new
    return F


def _read_cached_graph(path: Path, key: str, n: int):
    """(graph, None) for a sound cache entry of this database, else (None, what is wrong)."""
    try:
        entry = load_weights_only(path, "cache_dir", "a pycsa diffusion graph")
    except ValueError as exc:  # truncated, foreign or hostile file
        return None, f"unreadable: {exc}"
    if not isinstance(entry, dict) or not {"key", "n", "indices", "values"} <= entry.keys():
        return None, "not a pycsa diffusion graph of this version"
    if entry["key"] != key or entry["n"] != n:
        return None, "written for another database or setting"
    idx, val = entry["indices"], entry["values"]
    if not (isinstance(idx, torch.Tensor) and isinstance(val, torch.Tensor) and idx.dim() == 2
            and idx.shape[0] == 2 and idx.dtype == torch.int64 and val.dim() == 1 and val.is_floating_point()
            and val.shape[0] == idx.shape[1]):
        return None, "damaged: the index and value arrays do not form a graph"
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        return None, f"damaged: node indices outside [0, {n})"
    if not bool(torch.isfinite(val).all()):
        return None, "damaged: non-finite edge weights"
    return torch.sparse_coo_tensor(idx, val, (n, n), check_invariants=False).coalesce(), None


@register("diffusion")
class Diffusion(Reranker):
    """Diffusion on the database's mutual kNN graph; the top-k of each query's diffusion scores.

    Defaults: k=50 graph neighbours, γ=3, α=0.99, the query's top-10 as its seed,
    20 conjugate-gradient iterations.
    """

    def __init__(self, k: int = 50, gamma: float = 3.0, alpha: float = 0.99, query_k: int = 10,
                 iters: int = 20, block_elems: int = 1 << 25, cache_dir: str | None = None):
        self.k, self.query_k, self.iters = positive_int(k, "k"), positive_int(query_k, "query_k"), positive_int(iters, "iters")
        self.gamma, self.alpha = float(gamma), unit_interval(alpha, "alpha")
        self.block_elems = block_elems
        self.cache_dir = cache_dir
        self._graph = None
        self._index = None

    def fit(self, database, *, progress: Progress = None):
        """Builds the graph, or with ``cache_dir`` reloads the one saved for this very database
        (the file name is a hash of the database's bytes and of k and γ, so a changed database
        or setting builds and saves a new graph)."""
        X, _ = as_tensor(database, "database")
        check_features(X, "database", allow_empty=False)
        self._index = Index(X)
        path, key = self._cache_path(X)
        if path is not None and path.is_file():
            graph, why = _read_cached_graph(path, key, X.shape[0])
            if graph is not None:
                self._graph = graph
                return self
            # the cache holds derived data only: a bad entry is rebuilt, and the user told why
            warnings.warn(f"cache_dir: ignoring the cached graph {path} ({why}); rebuilding it", RuntimeWarning,
                          stacklevel=2)
        self._graph = mutual_knn_graph(X.float().cpu(), self.k, self.gamma, progress)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save({"key": key, "n": X.shape[0], "indices": self._graph.indices(),
                        "values": self._graph.values()}, tmp)
            tmp.replace(path)  # a reader never sees a half-written file
        return self

    def _cache_path(self, X: torch.Tensor) -> tuple[Path | None, str | None]:
        """The cache file for this database and setting, and its key (also stored inside,
        so that a renamed or copied file is not taken for another database's)."""
        if self.cache_dir is None:
            return None, None
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{tuple(X.shape)} {X.dtype} k={self.k} gamma={self.gamma!r}".encode())
        data = X.detach().cpu().contiguous()
        if data.dtype == torch.bfloat16:
            data = data.view(torch.int16)
        h.update(memoryview(np.ascontiguousarray(data.numpy())).cast("B"))
        key = h.hexdigest()
        return Path(self.cache_dir) / f"diffusion-graph-{key}.pt", key

    def _rerank(self, Q, X, ranking: Ranking, progress: Progress) -> Ranking:
        if self._index is None or not self._index.same_database(X):
            self.fit(X)
        n, q = X.shape[0], Q.shape[0]
        depth = ranking.indices.shape[1]
        kq = min(self.query_k, depth)
        seed_idx = ranking.indices[:, :kq].cpu()
        seed_val = ranking.scores[:, :kq].float().cpu().clamp(min=0).pow(self.gamma)
        out_i = torch.empty((q, depth), dtype=torch.int64)
        out_s = torch.empty((q, depth), dtype=torch.float32)
        step = max(1, min(q, self.block_elems // max(1, n)))
        for s in range(0, q, step):
            b = min(q, s + step) - s
            Y = torch.zeros(n, b)
            Y[seed_idx[s:s + b].T, torch.arange(b).expand(kq, b)] = seed_val[s:s + b].T
            F = conjugate_gradient(self._graph, Y, self.alpha, self.iters)
            out_s[s:s + b], out_i[s:s + b] = topk_lower_index(F.T.contiguous(), depth)
            if progress is not None:
                progress(s + b, q)
        return Ranking(out_i.to(Q.device), out_s.to(Q.device))


def truncated_graph(sims: torch.Tensor, k: int, gamma: float) -> torch.Tensor:
    """Dense b x T x T normalised mutual-kNN affinities inside each query's top-T list."""
    b, T, _ = sims.shape
    k = min(k, T - 1)
    S = torch.zeros_like(sims)
    if k < 1:
        return S
    masked = sims.clone()
    masked.diagonal(dim1=1, dim2=2).fill_(float("-inf"))  # no self loops
    val, idx = topk_lower_index(masked.reshape(b * T, T), k)
    W = torch.zeros(b * T, T, dtype=sims.dtype, device=sims.device)
    W.scatter_(1, idx, val.clamp(min=0).pow(gamma))
    W = W.reshape(b, T, T)
    Wt = W.transpose(1, 2)
    M = torch.where((W > 0) & (Wt > 0), torch.minimum(W, Wt), S)
    deg = M.sum(2)
    inv = torch.where(deg > 0, deg.clamp_min(1e-30).rsqrt(), torch.zeros_like(deg))
    return inv.unsqueeze(2) * M * inv.unsqueeze(1)


@register("diffusion_truncated")
class TruncatedDiffusion(Reranker):
    """Diffusion restricted to each query's top-T (SPEC §6, the truncated variant): the graph of
    the T candidates (one affinity call for a block of queries), the query's top-``query_k`` as
    its seed, batched conjugate gradient; the top-T are re-sorted by f, the rest keep their place.
    No offline stage. Memory: b x T x T per block of b queries (``block_elems`` values).
    """

    def __init__(self, T: int = 1000, k: int = 50, gamma: float = 3.0, alpha: float = 0.99, query_k: int = 10,
                 iters: int = 20, block_elems: int = 1 << 25):
        self.T, self.k = positive_int(T, "T"), positive_int(k, "k")
        self.query_k, self.iters = positive_int(query_k, "query_k"), positive_int(iters, "iters")
        self.gamma, self.alpha = float(gamma), unit_interval(alpha, "alpha")
        self.block_elems = block_elems

    def _rerank(self, Q, X, ranking: Ranking, progress: Progress) -> Ranking:
        from ..ops import affinity

        q, depth = ranking.indices.shape
        T = min(self.T, depth)
        kq = min(self.query_k, T)
        new_i, new_s = ranking.indices.clone(), ranking.scores.clone().float()
        step = max(1, self.block_elems // max(1, T * T))
        for s in range(0, q, step):
            top = ranking.indices[s:s + step, :T]
            b = top.shape[0]
            S = truncated_graph(affinity(X, top, T, check_finite=False).float(), self.k, self.gamma)
            Y = torch.zeros(b, T, device=S.device)
            Y[:, :kq] = ranking.scores[s:s + step, :kq].float().clamp(min=0).pow(self.gamma)
            f = _batched_cg(S, Y, self.alpha, self.iters)
            new_s[s:s + step, :T], new_i[s:s + step, :T] = sort_by_score(f, top)
            if progress is not None:
                progress(s + b, q)
        return Ranking(new_i, new_s)


def _batched_cg(S: torch.Tensor, Y: torch.Tensor, alpha: float, iters: int, tol: float = 1e-6) -> torch.Tensor:
    """(I - α S_b) f_b = y_b for each b (S: b x T x T dense, Y: b x T)."""
    return _cg(lambda P: matmul(S, P.unsqueeze(2)).squeeze(2), Y, alpha, iters, tol, dim=1)
