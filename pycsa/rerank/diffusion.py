"""Diffusion re-ranking (Iscen et al. 2017, "DFS"; SPEC §6).

Offline (``fit``): the mutual kNN graph of the database (k neighbours each, exact,
blocked search), affinities max(s, 0)^γ, the symmetric normalisation
S = D^{-1/2} W D^{-1/2}; O(n·k) memory.
Online: for a block of queries at once, y = each query's similarities to its top-``query_k``
candidates raised to γ (sparse; see :func:`query_seeds`), f solves (I - α S) f = y by
conjugate gradient on all columns together (one sparse x dense product per iteration),
and the database is ranked by f.
Memory online: a few n x block dense vectors (block chosen to stay under
``block_elems`` values per vector).
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .._checks import finite_float, positive_int
from .._safe_load import load_weights_only
from .._tensors import as_tensor, check_features
from .._types import ArrayLike
from ..ranking import Progress, Ranking, Reranker, register
from ..search import Index, topk_lower_index


def mutual_knn_graph(X: torch.Tensor, k: int, gamma: float, progress: Progress = None) -> torch.Tensor:
    """Sparse (COO) symmetric-normalised affinity S of the mutual kNN graph of the rows of X."""
    n = X.shape[0]
    rows, cols, w = mutual_knn_weights(X, k, gamma, progress)
    deg = torch.zeros(n, dtype=w.dtype).index_add_(0, rows, w)
    inv_sqrt = torch.where(deg > 0, deg.clamp_min(1e-30).rsqrt(), torch.zeros_like(deg))
    w = w * inv_sqrt[rows] * inv_sqrt[cols]
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), w, (n, n), check_invariants=False).coalesce()


def mutual_knn_weights(X: torch.Tensor, k: int, gamma: float, progress: Progress = None):
    """(rows, cols, w): the edges of the mutual kNN graph of the rows of X, both directions,
    w = min of the two directions' max(s, 0)^γ (not normalised); no self loops."""
    n = X.shape[0]
    k = min(k, n - 1)
    if k < 1:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty, torch.zeros(0)
    s, idx = Index(X).search(X, k + 1, progress=progress)
    rows = torch.arange(n).repeat_interleave(k + 1)
    cols, vals = idx.reshape(-1), powered(s.reshape(-1), gamma)
    keep = rows != cols  # no self loops
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    # Mutual edges only, weighted by the smaller of the two directions (W = min(W, Wᵀ)).
    key, key_t = rows * n + cols, cols * n + rows
    order = torch.argsort(key)
    key_sorted = key[order]
    pos = torch.searchsorted(key_sorted, key_t).clamp(max=key.numel() - 1)
    mutual = key_sorted[pos] == key_t
    w = torch.minimum(vals[mutual], vals[order][pos][mutual])
    return rows[mutual], cols[mutual], w


def powered(s: torch.Tensor, gamma: float) -> torch.Tensor:
    """max(s, 0)^γ, all of ``s`` first divided by a power of two when its largest value raised
    to γ would leave [2^-32, 2^32] (similarities of features far from unit norm): the graph's
    normalisation and the ranking by f do not depend on a common factor of the weights, and
    float32 would otherwise overflow to inf (NaN after normalising) or underflow to 0 (a
    graph without edges, a ranking by index). Unit-norm features are never rescaled."""
    s = s.clamp(min=0)
    top = float(s.max()) if s.numel() else 0.0
    if top > 0 and abs(gamma * math.log2(top)) > 32:
        s = s * 2.0 ** -max(-120, min(120, math.frexp(top)[1]))
    return s.pow(gamma)


def query_seeds(Q: torch.Tensor, X: torch.Tensor, top: torch.Tensor, gamma: float,
                block_elems: int = 1 << 22) -> torch.Tensor:
    """The diffusion's seeds y (q x kq, float32): max(q·x, 0)^γ of each query and the
    database rows ``top`` (q x kq, its first candidates), as Iscen et al. define them: the
    query's kNN similarities, computed from the features (in float64, a block of about
    ``block_elems`` gathered values at a time) and not read from the ranking's scores,
    whose convention (distances, negated distances, another re-ranker's scores) the
    diffusion cannot know.

    A row whose largest similarity raised to γ would leave [2^-32, 2^32] is divided by that
    similarity (its largest seed becomes 1): f is linear in a query's seeds, so its ranking
    is unchanged, while float32 would overflow or underflow to 0. Each query is scaled on
    its own, so one query of huge norm changes no other query's seeds. Rows of unit-norm
    features are never scaled. A row with no positive similarity is all 0."""
    q, kq = top.shape
    d = Q.shape[1]
    sims = torch.empty((q, kq), dtype=torch.float64, device=Q.device)
    step = max(1, block_elems // max(1, kq * d))
    for s in range(0, q, step):
        t = top[s:s + step]
        F = X.index_select(0, t.reshape(-1)).reshape(t.shape[0], kq, d).double()
        sims[s:s + step] = (F @ Q[s:s + step].double().unsqueeze(2)).squeeze(2)
    sims = sims.clamp(min=0)
    peak = sims.amax(1, keepdim=True) if kq else sims.new_zeros((q, 1))
    out_of_range = (peak > 0) & ((gamma * peak.log2()).abs() > 32)
    sims = torch.where(out_of_range, sims / torch.where(out_of_range, peak, 1.0), sims)
    return sims.pow(gamma).float()


def _check_alpha_gamma(alpha, gamma) -> tuple[float, float]:
    # α = 1 makes I - αS singular (f diverges); γ <= 0 weights the least similar most
    return finite_float(alpha, "alpha", 0, 1, low_open=True, high_open=True), \
        finite_float(gamma, "gamma", low=0, low_open=True)


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

    Defaults: k=50 graph neighbours, γ=3 (> 0), α=0.99 (in (0, 1)), the query's top-10 as
    its seed, 20 conjugate-gradient iterations. ``fit`` keeps the graph of its database
    (see :class:`pycsa.Reranker` for a database that differs from fit's).

    The seeds are the query's similarities to the ranking's first ``query_k`` items,
    computed from the features (:func:`query_seeds`); the ranking's scores are not read.
    A query with no positive similarity to any of them has no seed, and diffusion has
    nothing to say about it: its row of the input ranking (indices and scores) is
    returned unchanged, rather than the database in index order that a zero f would give.
    """

    keeps_fit = True

    def __init__(self, k: int = 50, gamma: float = 3.0, alpha: float = 0.99, query_k: int = 10,
                 iters: int = 20, block_elems: int = 1 << 25, cache_dir: str | os.PathLike | None = None):
        self.k, self.query_k, self.iters = positive_int(k, "k"), positive_int(query_k, "query_k"), positive_int(iters, "iters")
        self.alpha, self.gamma = _check_alpha_gamma(alpha, gamma)
        self.block_elems = positive_int(block_elems, "block_elems")
        if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
            raise TypeError(f"cache_dir: expected a path or None, got {type(cache_dir).__name__}")
        self.cache_dir = cache_dir
        self._graph = None

    def fit(self, database: ArrayLike, *, progress: Progress = None) -> "Diffusion":
        """Builds the graph, or with ``cache_dir`` reloads the one saved for this very database
        (the file name is a hash of the database's bytes and of k and γ, so a changed database
        or setting builds and saves a new graph)."""
        X, _ = as_tensor(database, "database")
        X = X.detach()
        check_features(X, "database", allow_empty=False)
        path, key = self._cache_path(X)
        if path is not None and path.is_file():
            graph, why = _read_cached_graph(path, key, X.shape[0])
            if graph is not None:
                self._graph = graph
                self._remember(database)
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
        self._remember(database)
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
        n, q = X.shape[0], Q.shape[0]
        depth = ranking.indices.shape[1]
        kq = min(self.query_k, depth)
        seed_idx = ranking.indices[:, :kq].cpu()
        seed_val = query_seeds(Q, X, ranking.indices[:, :kq], self.gamma).cpu()
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
        _input_order_past_reach(out_i, out_s, ranking.indices.cpu())
        unseeded = ~(seed_val > 0).any(1)
        if bool(unseeded.any()):
            out_i[unseeded] = ranking.indices[unseeded.to(ranking.indices.device)].cpu()
            out_s[unseeded] = ranking.scores[unseeded.to(ranking.scores.device)].float().cpu()
        return Ranking(out_i.to(Q.device), out_s.to(Q.device))


def _input_order_past_reach(out_i: torch.Tensor, out_s: torch.Tensor, given: torch.Tensor) -> None:
    """Items the diffusion never reaches (f = 0: no graph path from the seeds) carry no
    information; in place, they follow the reached ones in the input ranking's order, not
    in database-index order (what a top-k of equal zeros gives)."""
    unreached = out_s <= 0
    for r in torch.nonzero(unreached.any(1)).flatten().tolist():
        reached = out_i[r][~unreached[r]]
        taken = set(reached.tolist())
        rest = [i for i in given[r].tolist() if i not in taken]  # rows are unique: enough to fill
        m = reached.numel()
        out_i[r, m:] = torch.tensor(rest[:out_i.shape[1] - m], dtype=out_i.dtype)
        out_s[r, m:] = 0.0


def restricted_graph(nbr: torch.Tensor, wts: torch.Tensor, top: torch.Tensor):
    """The database graph restricted to each list of ``top`` (b x T database indices) and
    normalised inside it: S_b = D_b^{-1/2} W[top_b, top_b] D_b^{-1/2}, as padded rows
    (local column b x T x k, weight b x T x k; 0 where the edge leaves the list or is
    padding). ``nbr``/``wts``: the graph as n x k neighbour lists (-1 padded; a mutual
    kNN graph has at most k edges per node). O(b·T·k + b·n) work and memory."""
    b, T = top.shape
    n = nbr.shape[0]
    dev = top.device
    table = torch.full((b, n), -1, dtype=torch.int64, device=dev)  # database item -> place in the list
    table.scatter_(1, top.long(), torch.arange(T, device=dev).expand(b, T))
    nb = nbr[top.long()].long()  # b x T x k database neighbours of every candidate
    inside_pos = table.gather(1, nb.clamp(min=0).reshape(b, -1)).reshape(nb.shape)
    keep = (nb >= 0) & (inside_pos >= 0)
    w = torch.where(keep, wts[top.long()].float(), torch.zeros((), device=dev))
    local = torch.where(keep, inside_pos, torch.zeros((), dtype=torch.int64, device=dev))
    deg = w.sum(2)
    inv = torch.where(deg > 0, deg.clamp_min(1e-30).rsqrt(), torch.zeros_like(deg))
    w = w * inv.unsqueeze(2) * inv.gather(1, local.reshape(b, -1)).reshape(local.shape)
    return local, w


def _restricted_product(local: torch.Tensor, w: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """S_b p_b for every list b (P: b x T), with S in the padded form of restricted_graph."""
    b, T, k = local.shape
    return (w * P.gather(1, local.reshape(b, -1)).reshape(b, T, k)).sum(2)


@register("diffusion_truncated")
class TruncatedDiffusion(Reranker):
    """Diffusion restricted to each query's top-T (SPEC §6, the truncated variant of Iscen et
    al.): the database's mutual kNN graph (built once by ``fit``, as for full diffusion)
    restricted to the T candidates and normalised inside them, the query's top-``query_k``
    as its seed, conjugate gradient on a block of queries at once (one block-diagonal sparse
    product per iteration); the top-T are re-sorted by f, the rest keep their place.
    Seeds as for :class:`Diffusion` (from the features; a query with no positive seed keeps
    its input row, scores included).
    Memory: the graph O(n·k); online, O(b·(T·k + n)) per block of b queries, b·T·k and b·n at
    most ``block_elems``: the default (2^19) keeps a block's graph in the CPU caches through
    its conjugate-gradient iterations, 4x faster than blocks 64 times larger.
    """

    keeps_fit = True

    def __init__(self, T: int = 1000, k: int = 50, gamma: float = 3.0, alpha: float = 0.99, query_k: int = 10,
                 iters: int = 20, block_elems: int = 1 << 19):
        self.T, self.k = positive_int(T, "T"), positive_int(k, "k")
        self.query_k, self.iters = positive_int(query_k, "query_k"), positive_int(iters, "iters")
        self.alpha, self.gamma = _check_alpha_gamma(alpha, gamma)
        self.block_elems = positive_int(block_elems, "block_elems")
        self._graph = None

    def fit(self, database: ArrayLike, *, progress: Progress = None) -> "TruncatedDiffusion":
        X, _ = as_tensor(database, "database")
        X = X.detach()
        check_features(X, "database", allow_empty=False)
        n = X.shape[0]
        rows, cols, w = mutual_knn_weights(X.float().cpu(), self.k, self.gamma, progress)
        # neighbour lists padded to the largest degree (at most k: mutual edges are kNN edges)
        order = torch.argsort(rows * n + cols)
        rows, cols, w = rows[order], cols[order], w[order]
        counts = torch.bincount(rows, minlength=n)
        width = max(1, int(counts.max()) if counts.numel() else 1)
        slot = torch.arange(rows.numel()) - (torch.cumsum(counts, 0) - counts).repeat_interleave(counts)
        nbr = torch.full((n, width), -1, dtype=torch.int32)
        wts = torch.zeros((n, width), dtype=torch.float32)
        nbr[rows, slot], wts[rows, slot] = cols.to(torch.int32), w.float()
        self._graph = (nbr.to(X.device), wts.to(X.device))
        self._remember(database)
        return self

    def _rerank(self, Q, X, ranking: Ranking, progress: Progress) -> Ranking:
        q, depth = ranking.indices.shape
        T = min(self.T, depth)
        kq = min(self.query_k, T)
        new_i, new_s = ranking.indices.clone(), ranking.scores.clone().float()
        nbr, wts = self._graph
        seeds = query_seeds(Q, X, ranking.indices[:, :kq], self.gamma)
        step = max(1, self.block_elems // max(1, T * nbr.shape[1], X.shape[0]))
        for s in range(0, q, step):
            top = ranking.indices[s:s + step, :T].to(nbr.device)
            b = top.shape[0]
            local, w = restricted_graph(nbr, wts, top)
            Y = torch.zeros(b, T, device=w.device)
            Y[:, :kq] = seeds[s:s + step].to(w.device)
            f = _cg(lambda P: _restricted_product(local, w, P), Y, self.alpha, self.iters, 1e-6, dim=1)
            # equal f (0 for the candidates the diffusion never reaches) keep their input order
            order = torch.sort(f, dim=1, descending=True, stable=True).indices
            new_s[s:s + step, :T] = f.gather(1, order).to(new_s.device)
            new_i[s:s + step, :T] = top.gather(1, order).to(new_i.device)
            if progress is not None:
                progress(s + b, q)
        # f is 0 all along a row without a positive seed: the stable sort kept its order,
        # and its scores go back to the input's, as in Diffusion
        unseeded = ~(seeds > 0).any(1)
        if bool(unseeded.any()):
            new_s[unseeded] = ranking.scores[unseeded].float()
        return Ranking(new_i, new_s)
