"""GNN re-ranking (Zhang et al.; SPEC §3) on a sparse kNN graph.

1. kNN graph of the joint set Z = [Q; G]: top-k1 of Z Zᵀ per row (exact, blocked:
   pycsa.Index, so Z Zᵀ is never held), adjacency A = 1 on those edges, W = S².
2. Two layers of A ← A + Aᵀ; A[i] ← Σ_{j<k2} W[i,j]·A[R[i,j]]; row L2 normalisation.
3. Similarity A_Q A_Gᵀ, optionally blended: (1 - lamb)·that + lamb·Q Gᵀ. The second
   layer and this product run as one kernel (ops.gnn_propagate_cross) that never
   forms the gallery's last-layer rows.

Memory: A starts with k1 entries per row; A + Aᵀ at most doubles a row; a layer's
row i has at most Σ_{j<k2} nnz((A+Aᵀ)[R[i,j]]) entries (≤ N). On re-ID data the
second layer's rows hold a few thousand entries: O(N·k1·k2·c) overall instead of
the public code's dense N x N (33 GB at N = 94k). The q x g result is dense by nature.
k1 is clamped to N and k2 to k1.
"""
from __future__ import annotations

import warnings

import torch

from .._checks import boolean, integer, positive_int, unit_interval
from .._precision import matmul
from .._tensors import as_tensor, check_features, leave_one_out as leave_one_out_rows, rescaled, to_caller
from .._types import ArrayLike
from ..ops import _extension, csr_add_transpose, csr_cross_dense, gnn_propagate, gnn_propagate_cross
from ..ranking import Progress, Ranking, Reranker, register
from ..search import Index, topk_lower_index


def _params(k1, k2, lamb) -> tuple[int, int, float]:
    return positive_int(k1, "k1"), positive_int(k2, "k2"), unit_interval(lamb, "lamb")


def knn_graph(Z: torch.Tensor, k: int):
    """(S, R): each row's top-k similarities and indices in Z (ties by lower index)."""
    return Index(Z).search(Z, k)


def _initial_graph(S: torch.Tensor, R: torch.Tensor, k2: int):
    """(A, nbr, W): the kNN adjacency as CSR (rowptr, col, val = 1), each row's top-k2
    neighbours and their weights S² (SPEC §3, step 1)."""
    n, k1 = R.shape
    rowptr = torch.arange(0, n * k1 + 1, k1, dtype=torch.int64, device=R.device)
    col = torch.sort(R.long(), dim=1).values.reshape(-1).contiguous()
    val = torch.ones(n * k1, dtype=torch.float32, device=R.device)
    return (rowptr, col, val), R[:, :k2].long().contiguous(), (S.float() ** 2)[:, :k2].contiguous()


def gnn_similarity(S: torch.Tensor, R: torch.Tensor, num_queries: int, k2: int, layers: int = 2) -> torch.Tensor:
    """Steps 2-3 of SPEC §3 on a given kNN graph (S, R: N x k1): the q x g similarity,
    by the graph kernels on the graph's device (C++ on the CPU, csrc/cuda/graph.cu on CUDA)."""
    A, nbr, W = _initial_graph(S, R, k2)
    if layers == 0:
        return csr_cross_dense(*A, num_queries)
    for _ in range(layers - 1):
        A = csr_add_transpose(*A)
        A = gnn_propagate(*A, nbr, W)
    # the last layer's gallery rows are never formed (see ops.gnn_propagate_cross)
    return gnn_propagate_cross(*csr_add_transpose(*A), nbr, W, num_queries)


def gnn_self_similarity(S: torch.Tensor, R: torch.Tensor, k2: int, layers: int = 2) -> torch.Tensor:
    """Steps 2-3 of SPEC §3 with every item a query against all items (n x n): the graph
    once over the items, their last-layer rows against themselves."""
    A, nbr, W = _initial_graph(S, R, k2)
    for _ in range(layers):
        A = gnn_propagate(*csr_add_transpose(*A), nbr, W)
    ptr, c, v = A  # A·Aᵀ as the cross product of [A; A]: rows [0, n) against rows [n, 2n)
    n = R.shape[0]
    return csr_cross_dense(torch.cat([ptr, ptr[1:] + ptr[-1]]), torch.cat([c, c]), torch.cat([v, v]), n)


def gnn_similarity_sparse(S: torch.Tensor, R: torch.Tensor, num_queries: int | None, k2: int,
                          layers: int = 2) -> torch.Tensor:
    """Steps 2-3 of SPEC §3 with torch.sparse on the inputs' device (cuSPARSE on CUDA);
    ``num_queries`` None: every item a query against all items.

    The CUDA path when pycsa was built without its CUDA kernels; equal to
    :func:`gnn_similarity`.
    Memory: the sparse layers as on the CPU path, plus the gallery's last layer held
    dense for the final product: 4·g·N bytes (1.8 GB at Market size).
    """
    n, k1 = R.shape
    dev = R.device
    R = R.long()
    rows = torch.arange(n, device=dev)
    A = torch.sparse_coo_tensor(torch.stack([rows.repeat_interleave(k1), R.reshape(-1)]),
                                torch.ones(n * k1, device=dev), (n, n), check_invariants=False).coalesce()
    P = torch.sparse_coo_tensor(torch.stack([rows.repeat_interleave(k2), R[:, :k2].reshape(-1)]),
                                (S.float()[:, :k2] ** 2).reshape(-1), (n, n), check_invariants=False).coalesce()
    for _ in range(layers):
        A = (A + A.t()).coalesce()
        with warnings.catch_warnings():  # torch's "sparse CSR support is in beta" note, from inside mm
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            A = torch.sparse.mm(P, A).coalesce()  # row i: Σ_j W[i, j]·A[R[i, j]]
        idx, val = A.indices(), A.values()
        norm = torch.zeros(n, device=dev).index_add_(0, idx[0], val * val).sqrt()[idx[0]]
        val = torch.where(norm > 0, val / norm.clamp_min(torch.finfo(val.dtype).tiny), val)
        A = torch.sparse_coo_tensor(idx, val, (n, n), is_coalesced=True, check_invariants=False)
    idx, val = A.indices(), A.values()
    if num_queries is None:  # every item a query against all items
        return torch.sparse.mm(A, A.to_dense().T)
    query = idx[0] < num_queries
    Aq = torch.sparse_coo_tensor(idx[:, query], val[query], (num_queries, n), is_coalesced=True,
                                 check_invariants=False)
    Ag = torch.zeros(n - num_queries, n, device=dev).index_put_((idx[0, ~query] - num_queries, idx[1, ~query]),
                                                                val[~query])
    return torch.sparse.mm(Aq, Ag.T)


def gnn_rerank(query_feats: ArrayLike, gallery_feats: ArrayLike, k1: int = 26, k2: int = 7, lamb: float = 0.0, *,
               layers: int = 2, return_ranking: bool = False, leave_one_out: bool | None = False) -> ArrayLike:
    """GNN re-ranking: the q x g similarity (higher is better), or with ``return_ranking``
    the q x g ranking (gallery indices by descending similarity, ties to the lower index).

    ``leave_one_out``: the queries are the gallery's own rows (every item a query against
    all items). The graph is then built once over the gallery, as the protocol means,
    instead of over [queries; gallery], where each item would appear twice and be its own
    nearest neighbour. False (the default here, as the public code does): the joint graph;
    None: detect it (the same array, or equal values); True: the caller says so.

    Inputs are numpy arrays or torch tensors (rows are items, ideally L2-normalised);
    the result comes back in the same kind and on the same device. CPU: the C++ graph
    kernels. CUDA: the kNN graph by the blocked GPU search and the layers by the CUDA
    graph kernels (torch.sparse, :func:`gnn_similarity_sparse`, when pycsa was built
    without CUDA).
    """
    layers = integer(layers, "layers", low=1)
    return _gnn_rerank(query_feats, gallery_feats, k1, k2, lamb, layers, return_ranking, leave_one_out)


def _gnn_rerank(query_feats, gallery_feats, k1, k2, lamb, layers: int, return_ranking, leave_one_out):
    """:func:`gnn_rerank`, where ``layers`` may also be 0 (no propagation: the public code's k2 == 1)."""
    k1, k2, lamb = _params(k1, k2, lamb)
    return_ranking = boolean(return_ranking, "return_ranking")
    leave_one_out = boolean(leave_one_out, "leave_one_out", allow_none=True)
    Q, was_numpy = as_tensor(query_feats, "query_feats")
    G, _ = as_tensor(gallery_feats, "gallery_feats")
    check_features(Q, "query_feats", allow_empty=False)
    check_features(G, "gallery_feats", allow_empty=False)
    if Q.shape[1] != G.shape[1]:
        raise ValueError(f"query_feats: dimension {Q.shape[1]} differs from gallery_feats dimension {G.shape[1]}")
    if Q.device != G.device:
        raise ValueError(f"query_feats: on {Q.device} but gallery_feats is on {G.device}")
    device = Q.device
    self_mode = leave_one_out_rows(leave_one_out, Q, G)
    Q, G = Q.detach().float(), G.detach().float()
    # The graph depends on no common factor of the features (ranks, then S² weights of
    # rows normalised after each layer): a power-of-two rescale is exact and keeps S²
    # finite for features far from unit norm. The blend below uses them as given.
    Z, _ = rescaled(G if self_mode else torch.cat([Q, G]))
    k1 = min(k1, Z.shape[0])
    k2 = min(k2, k1)
    S, R = knn_graph(Z, k1)
    if self_mode and (device.type == "cpu" or _extension.has_cuda_kernels()):
        sim = gnn_self_similarity(S, R, k2, layers)
    elif self_mode:
        sim = gnn_similarity_sparse(S, R, None, k2, layers)
    elif device.type == "cpu" or _extension.has_cuda_kernels():
        sim = gnn_similarity(S, R, Q.shape[0], k2, layers)  # the graph is on the device already
    else:
        sim = gnn_similarity_sparse(S, R, Q.shape[0], k2, layers)
    if lamb > 0:
        sim = (1 - lamb) * sim + lamb * matmul(Q, G.T)
    out = torch.sort(sim, dim=1, descending=True, stable=True).indices if return_ranking else sim
    return to_caller(out.to(device), was_numpy)


@register("gnn")
class GNN(Reranker):
    """GNN re-ranking over the queries and the whole database; top-k by GNN similarity.
    When the queries are the database's rows (detected, or ``leave_one_out=True``), the
    graph is built over the database alone (see :func:`gnn_rerank`)."""

    def __init__(self, k1: int = 26, k2: int = 7, lamb: float = 0.0, leave_one_out: bool | None = None):
        self.k1, self.k2, self.lamb = _params(k1, k2, lamb)
        self.leave_one_out = boolean(leave_one_out, "leave_one_out", allow_none=True)

    def _rerank(self, Q, X, ranking: Ranking, progress: Progress) -> Ranking:
        sim = gnn_rerank(Q, X, self.k1, self.k2, self.lamb, leave_one_out=self.leave_one_out)
        scores, indices = topk_lower_index(sim, ranking.indices.shape[1])
        if progress is not None:
            progress(Q.shape[0], Q.shape[0])
        return Ranking(indices, scores)
