"""Exact inner-product top-k: the first pass of pycsa.search's bfloat16 prefilter."""
from __future__ import annotations

import torch

from .._checks import integer
from .._tensors import as_tensor, to_caller
from .._types import ArrayLike
from . import _extension, reference
from ._inputs import same_device, tensor


def inner_product_topk(queries: ArrayLike, database: ArrayLike, k: int) -> tuple[ArrayLike, ArrayLike]:
    """``(scores, indices)``, q x k, of the best ``queries · databaseᵀ`` per row.

    Best first, equal scores by the lower database index; a NaN score ranks last,
    as -inf. float32 or bfloat16 inputs (the same for both); scores are float32
    sums, rounded to bfloat16 for bfloat16 inputs (returned as float32). Accepts
    torch tensors or numpy arrays (numpy float32 in, numpy out); the scores are
    differentiable with respect to both inputs. CPU: a
    C++ kernel that never holds the q x n scores (blocks of 256 x 4,096). Other
    devices: the plain-PyTorch reference (pycsa.search has its own blocked search
    there).
    """
    queries, was_numpy = as_tensor(queries, "queries")
    database = tensor(database, "database")
    for name, t in (("queries", queries), ("database", database)):
        if t.dim() != 2:
            raise ValueError(f"{name}: expected a 2-D array, got shape {tuple(t.shape)}")
        if t.dtype not in (torch.float32, torch.bfloat16):
            raise TypeError(f"{name}: expected float32 or bfloat16, got {t.dtype}")
    if queries.dtype != database.dtype:
        raise TypeError(f"queries: dtype {queries.dtype} differs from database dtype {database.dtype}")
    if queries.shape[1] != database.shape[1]:
        raise ValueError(f"queries: dimension {queries.shape[1]} differs from database dimension {database.shape[1]}")
    same_device("database", database, queries=queries)
    k = integer(k, "k", 1, database.shape[0], "the database size")
    if database.device.type == "cpu" and _extension.use_kernels("inner_product_topk", database.device):
        out = torch.ops.pycsa.inner_product_topk(queries, database, k)
    else:
        out = reference.inner_product_topk(queries, database, k)
    return tuple(to_caller(t, was_numpy) for t in out)


def _register_autograd_and_fake() -> None:
    @torch.library.register_fake("pycsa::inner_product_topk")
    def _(queries, database, k):
        shape = (queries.shape[0], k)
        return queries.new_empty(shape, dtype=torch.float32), queries.new_empty(shape, dtype=torch.int64)

    def setup_context(ctx, inputs, output):
        queries, database, _ = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(queries, database, output[1])

    def backward(ctx, grad, _):
        # score[r, j] = <queries[r], database[indices[r, j]]>; the selection itself is
        # piecewise constant, so only the kept products carry gradient.
        queries, database, indices = ctx.saved_tensors
        g_q = g_db = None
        if ctx.needs_input_grad[0]:
            g_q = torch.einsum("rk,rkd->rd", grad, database[indices].float()).to(queries.dtype)
        if ctx.needs_input_grad[1]:
            rows = (grad.unsqueeze(-1) * queries.float().unsqueeze(1)).reshape(-1, queries.shape[1])
            g_db = torch.zeros_like(database).index_add_(0, indices.reshape(-1), rows.to(database.dtype))
        return g_q, g_db, None

    torch.library.register_autograd("pycsa::inner_product_topk", backward, setup_context=setup_context)


if _extension.has_cpu_kernels():
    _register_autograd_and_fake()
