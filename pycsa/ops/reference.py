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


def gnn_propagate_cross(A: torch.Tensor, nbr: torch.Tensor, weight: torch.Tensor, split: int) -> torch.Tensor:
    """The GNN's last layer and its query-gallery similarity: csr_cross_dense(gnn_propagate(A))."""
    return csr_cross_dense(gnn_propagate(A, nbr, weight), split)


def weighted_gather_sum(source: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """out[r] = Σ_j weight[r, j]·source[index[r, j]] (materialises the r x k x d gather)."""
    acc = torch.float64 if source.dtype == torch.float64 else torch.float32
    return torch.einsum("rk,rkd->rd", weight.to(acc), source[index].to(acc))


def key_mask(lengths: torch.Tensor | None, tokens: int, batch: int, device) -> torch.Tensor:
    """B x T boolean mask, True where token t < lengths[b] (all True without lengths)."""
    if lengths is None:
        return torch.ones(batch, tokens, dtype=torch.bool, device=device)
    return torch.arange(tokens, device=device) < lengths.to(device).reshape(-1, 1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor | None = None,
              scale: float | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scale) v per (batch, head), (B, H, T, D) in and out.

    Keys at or past ``lengths[b]`` get no weight; query rows at or past it are zero
    (a sequence of length 0 is all zeros). Computed in float32 (float64 for float64
    inputs) through the full T x T matrix, returned in the input dtype.
    """
    B, H, T, D = q.shape
    dtype = q.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    scale = D ** -0.5 if scale is None else scale
    valid = key_mask(lengths, T, B, q.device)  # B x T
    tokens = valid[:, None, :, None]
    # Padding gets zero weight, but 0·NaN is NaN (in the output and in every gradient):
    # it is zeroed rather than trusted to the weights.
    q, k, v = (torch.where(tokens, t.to(acc), 0) for t in (q, k, v))
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # a length-0 row is all -inf: no weights
    out = torch.where(tokens, torch.matmul(p, v), 0)
    return out.to(dtype)


def inner_product_topk(queries: torch.Tensor, database: torch.Tensor, k: int):
    """Top-k of queries · databaseᵀ per row, best first, equal scores by the lower index.

    Scores are float32 sums of the products; for bfloat16 inputs each score is then
    rounded to bfloat16 (what a bfloat16 GEMM writes) and returned as float32.
    """
    S = queries.float() @ database.float().T
    if queries.dtype == torch.bfloat16:
        S = S.bfloat16().float()
    S = S.nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))  # NaN ranks last
    order = torch.sort(-S, dim=1, stable=True).indices[:, :k]  # stable: lower index first among equals
    return S.gather(1, order), order
