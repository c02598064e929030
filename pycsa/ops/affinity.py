"""Top-K affinity features (SPEC §2): each ranked item against the list's top-L anchors."""
from __future__ import annotations

import torch

from .._checks import boolean, integer
from .._tensors import as_tensor, to_caller
from .._types import ArrayLike
from . import _extension, reference
from ._inputs import indices, require_finite

_FLOAT_TYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def affinity(database: ArrayLike, ranks: ArrayLike, num_anchors: int, queries: ArrayLike | None = None, *,
             check_finite: bool = True) -> ArrayLike:
    """Affinity features of ranking lists.

    For each row b of ``ranks`` (B x R database indices, best first) the list of
    items is ``F_b = database[ranks[b]]`` (K = R items) or, with ``queries`` (B x d),
    the query followed by those rows (K = R + 1 items: the query takes position 1
    of both the candidates and the anchors, as the CSA authors prepend it). Returns
    ``F_b F_b[:L]ᵀ`` for every b: a B x K x L array, L = ``num_anchors``, in the
    database's dtype (accumulated in float32, or float64 for float64 inputs).

    Accepts torch tensors or numpy arrays (the result is of the same kind);
    float32, float64, float16 and bfloat16; CPU (C++) and CUDA. With
    ``check_finite`` a NaN or inf reaching the result raises ValueError (under
    torch.compile a RuntimeError with the same message, from an assert in the graph).
    Differentiable with respect to ``database`` and ``queries``.
    """
    db, was_numpy = as_tensor(database, "database")
    rk, _ = as_tensor(ranks, "ranks")
    q = None if queries is None else as_tensor(queries, "queries")[0]
    rk = _check(db, rk, num_anchors, q)
    check_finite = boolean(check_finite, "check_finite")
    if not _extension.half_on_older_gpu(db) and _extension.use_kernels("affinity", db.device):
        out = torch.ops.pycsa.affinity(db, rk, int(num_anchors), q)  # checks the index range itself
    else:
        # Reading the range back breaks a compiled graph; there index_select's own
        # bounds check guards the reference instead (with a less specific message).
        if not torch.compiler.is_compiling():
            _check_range(rk, db.shape[0])
        out = reference.affinity(db, rk, int(num_anchors), q)
    if check_finite:
        require_finite(out, "database/queries: the rows selected by ranks contain NaN or inf "
                            "(or their products overflow the dtype)")
    return to_caller(out, was_numpy)


def _check(db: torch.Tensor, rk: torch.Tensor, num_anchors, q: torch.Tensor | None) -> torch.Tensor:
    """Validates the arguments with errors that name them; returns ranks as int64."""
    if db.dim() != 2:
        raise ValueError(f"database: expected a 2-D (n x d) array, got shape {tuple(db.shape)}")
    if db.dtype not in _FLOAT_TYPES:
        raise TypeError(f"database: expected float32, float64, float16 or bfloat16, got {db.dtype}")
    if rk.dim() != 2:
        raise ValueError(f"ranks: expected a 2-D (B x K) array of database indices, got shape {tuple(rk.shape)}")
    rk = indices(rk, "ranks")
    if rk.device != db.device:
        raise ValueError(f"ranks: on {rk.device} but database is on {db.device}")
    if q is not None:
        if q.dim() != 2 or q.shape[0] != rk.shape[0] or q.shape[1] != db.shape[1]:
            raise ValueError(f"queries: expected shape ({rk.shape[0]}, {db.shape[1]}), got {tuple(q.shape)}")
        if q.dtype != db.dtype:
            raise TypeError(f"queries: dtype {q.dtype} differs from database dtype {db.dtype}")
        if q.device != db.device:
            raise ValueError(f"queries: on {q.device} but database is on {db.device}")
    k = rk.shape[1] + (q is not None)
    if k == 0:  # no item to take anchors from: the fault is the empty lists, not num_anchors
        raise ValueError(f"ranks: has 0 columns (empty ranking lists), shape {tuple(rk.shape)}; "
                         "each row needs at least one database index")
    integer(num_anchors, "num_anchors", 1, k, "the ranking list length")
    return rk


def _check_range(rk: torch.Tensor, n: int) -> None:
    if rk.numel():
        lo, hi = (int(v) for v in torch.aminmax(rk))
        if lo < 0 or hi >= n:
            raise IndexError(f"ranks: indices must lie in [0, {n}) (database rows), found [{lo}, {hi}]")


def _register_autograd_and_fake() -> None:
    """Lets torch.compile trace the op (fake) and gradients flow through it (backward)."""

    @torch.library.register_fake("pycsa::affinity")
    def _(database, ranks, num_anchors, queries=None):
        k = ranks.shape[1] + (queries is not None)
        return database.new_empty((ranks.shape[0], k, num_anchors))

    def setup_context(ctx, inputs, output):
        database, ranks, num_anchors, queries = inputs
        ctx.num_anchors = num_anchors
        ctx.has_queries = queries is not None
        ctx.save_for_backward(database, ranks, queries)

    def backward(ctx, grad):
        # d/dF of F F_Lᵀ: every item gets grad·F_L, and the anchors also grad_ᵀ·F.
        # Plain PyTorch on the gathered lists (B x K x d): the fused backward is not written yet.
        database, ranks, queries = ctx.saved_tensors
        L = ctx.num_anchors
        items = reference.gather_lists(database, ranks, queries if ctx.has_queries else None)
        grad = grad.to(items.dtype)
        g_items = torch.bmm(grad, items[:, :L])
        g_items[:, :L] += torch.bmm(grad.transpose(1, 2), items)
        off = 1 if ctx.has_queries else 0
        g_db = g_q = None
        if ctx.needs_input_grad[0]:
            g_db = torch.zeros_like(database).index_add_(
                0, ranks.reshape(-1), g_items[:, off:].reshape(-1, database.shape[1]))
        if ctx.has_queries and ctx.needs_input_grad[3]:
            g_q = g_items[:, 0].contiguous()
        return g_db, None, None, g_q

    torch.library.register_autograd("pycsa::affinity", backward, setup_context=setup_context)


if _extension.has_cpu_kernels():
    _register_autograd_and_fake()
