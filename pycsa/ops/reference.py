"""Plain-PyTorch versions of every pycsa op: the specification in code.

The compiled kernels are tested against these, and these against float64 maths.
They favour clarity over memory (they materialise what the kernels avoid).
"""
from __future__ import annotations

import torch


def gather_lists(database: torch.Tensor, ranks: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
    """Rows of each ranking list, B x K x d: the query of row b first (when given), then ranks[b]."""
    B, K = ranks.shape
    items = database.index_select(0, ranks.reshape(-1)).reshape(B, K, database.shape[1])
    if queries is not None:
        items = torch.cat([queries.unsqueeze(1), items], dim=1)
    return items


def affinity(database: torch.Tensor, ranks: torch.Tensor, num_anchors: int,
             queries: torch.Tensor | None = None) -> torch.Tensor:
    """out[b, i, j] = <item(b, i), item(b, j)> for the K items of list b and its first L (anchors)."""
    items = gather_lists(database, ranks, queries)
    return torch.bmm(items, items[:, :num_anchors].transpose(1, 2))


def csr_to_dense(rowptr: torch.Tensor, col: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    n = rowptr.numel() - 1
    rows = torch.repeat_interleave(torch.arange(n), rowptr.diff())
    return torch.zeros(n, n, dtype=val.dtype).index_put_((rows, col), val, accumulate=True)


def gnn_propagate(A: torch.Tensor, nbr: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Dense GNN layer (SPEC §3): out[i] = Σ_j weight[i,j]·A[nbr[i,j]], rows L2-normalised (0 stays 0)."""
    out = torch.einsum("nk,nkd->nd", weight, A[nbr])
    norm = out.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, out / norm.clamp_min(torch.finfo(out.dtype).tiny), out)


def csr_cross_dense(A: torch.Tensor, split: int) -> torch.Tensor:
    """A[:split] A[split:]ᵀ for a dense A."""
    return A[:split] @ A[split:].T


def weighted_gather_sum(source: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """out[r] = Σ_j weight[r, j]·source[index[r, j]] (materialises the r x k x d gather)."""
    acc = torch.float64 if source.dtype == torch.float64 else torch.float32
    return torch.einsum("rk,rkd->rd", weight.to(acc), source[index].to(acc))
