"""Exact inner-product top-k: the first pass of pycsa.search's bfloat16 prefilter."""
from __future__ import annotations

import torch

from .._checks import integer
from . import _extension, reference


def inner_product_topk(queries: torch.Tensor, database: torch.Tensor, k: int):
    """``(scores, indices)``, q x k, of the best ``queries · databaseᵀ`` per row.

    Best first, equal scores by the lower database index; a NaN score ranks last,
    as -inf. float32 or bfloat16 inputs (the same for both); scores are float32
    sums, rounded to bfloat16 for bfloat16 inputs (returned as float32). CPU: a
    C++ kernel that never holds the q x n scores (blocks of 256 x 4,096). Other
    devices: the plain-PyTorch reference (pycsa.search has its own blocked search
    there).
    """
    for name, t in (("queries", queries), ("database", database)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{name}: expected a 2-D tensor")
        if t.dtype not in (torch.float32, torch.bfloat16):
            raise TypeError(f"{name}: expected float32 or bfloat16, got {t.dtype}")
    if queries.dtype != database.dtype:
        raise TypeError(f"queries: dtype {queries.dtype} differs from database dtype {database.dtype}")
    if queries.shape[1] != database.shape[1]:
        raise ValueError(f"queries: dimension {queries.shape[1]} differs from database dimension {database.shape[1]}")
    if queries.device != database.device:
        raise ValueError(f"queries: on {queries.device} but database is on {database.device}")
    k = integer(k, "k", 1, database.shape[0], "the database size")
    if database.device.type == "cpu" and _extension.use_kernels("inner_product_topk", database.device):
        return torch.ops.pycsa.inner_product_topk(queries, database, k)
    return reference.inner_product_topk(queries, database, k)
