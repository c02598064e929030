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
