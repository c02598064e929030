"""k-reciprocal re-ranking (Zhong et al. 2017; SPEC §4), exact and sparse.

Same result as the numpy function copied into most re-ID code (to float32
rounding, wherever the inputs have no ties), computed by a C++ kernel (CPU) or a
CUDA kernel (csrc/cuda/kreciprocal.cu) that keeps V sparse and never forms the
joint N x N matrix: memory beyond the inputs and the q x g output is O(N·k1) plus
O(256·N) per thread on the CPU, one block of 2^25 distances on the GPU. ``k1`` is
clamped to N - 1 and ``k2`` to N (N = q + g), which is what the original's slicing does.
"""
from __future__ import annotations

import torch

from .._checks import boolean, positive_int, unit_interval
from .._tensors import (as_tensor, check_features, check_finite, leave_one_out as leave_one_out_rows, to_caller,
                        unit_exponent)
from .._types import ArrayLike
from ..ranking import Progress, Ranking, Reranker, register
from ..search import topk_lower_index
from ..ops import _extension


def _params(k1, k2, lambda_value) -> tuple[int, int, float]:
    return positive_int(k1, "k1"), positive_int(k2, "k2"), unit_interval(lambda_value, "lambda_value")


def _require_kernels(device: torch.device, what: str) -> None:
    """The kernels run on the inputs' device (a CUDA build is needed for CUDA inputs)."""
    _extension.use_kernels(what, device)  # a missing CUDA build is reported here
    if _extension._C is None:
        raise RuntimeError(f"pycsa.{what} needs the compiled extension (pycsa._C); "
                           "reinstall with `pip install --no-build-isolation -e .`")


def _matrix(x, name: str, shape: tuple[int, int] | None = None) -> torch.Tensor:
    t = as_tensor(x, name)[0]
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D matrix, got shape {tuple(t.shape)}")
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point dtype, got {t.dtype}")
    check_finite(t, name)
    return t


def _features(x, name: str) -> torch.Tensor:
    t = as_tensor(x, name)[0].detach()
    check_features(t, name, allow_empty=False)
    return t


def _common_scale(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The features in float32, divided by one power of two when their values are huge or
    tiny: the result depends only on ratios of distances (each column's distances are
    divided by their largest), so it is the same, exactly, while float32 keeps the squared
    distances away from inf and from subnormals. (Rows of norm above 9.2e18 are refused
    first, as everywhere: one rule for every function that takes features.)"""
    e = unit_exponent(*xs)
    return tuple(x.float() * 2.0 ** -e if e else x.float() for x in xs)


def k_reciprocal(q_g_dist: ArrayLike, q_q_dist: ArrayLike, g_g_dist: ArrayLike, k1: int = 20, k2: int = 6,
                 lambda_value: float = 0.3) -> ArrayLike:
    """Final q x g distance ``(1 - λ)·Jaccard + λ·original`` from Euclidean distance matrices.

    Takes and returns numpy arrays or torch tensors (float32 result), like the
    function it replaces: ``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)``.
    """
    k1, k2, lam = _params(k1, k2, lambda_value)
    qg = _matrix(q_g_dist, "q_g_dist")
    was_numpy = not isinstance(q_g_dist, torch.Tensor)
    q, g = qg.shape
    if q < 1 or g < 1:
        raise ValueError(f"q_g_dist: needs at least one query and one gallery item, got shape {(q, g)}")
    qq = _matrix(q_q_dist, "q_q_dist", (q, q))
    gg = _matrix(g_g_dist, "g_g_dist", (g, g))
    if not (qg.device == qq.device == gg.device):
        raise ValueError("q_q_dist/g_g_dist: must be on the same device as q_g_dist")
    dtype = torch.float64 if torch.float64 in (qg.dtype, qq.dtype, gg.dtype) else torch.float32
    # each column's distances are divided by their largest: a common power of two changes
    # nothing, and keeps huge (NaN in the kernel) or tiny (subnormal) distances in range
    e = unit_exponent(qg, qq, gg)
    qg, qq, gg = (m.to(dtype) * 2.0 ** -e if e else m.to(dtype) for m in (qg, qq, gg))
    _require_kernels(qg.device, "k_reciprocal")
    out = torch.ops.pycsa.k_reciprocal(qg, qq, gg, k1, k2, lam)
    return to_caller(out, was_numpy)


def k_reciprocal_features(query_feats: ArrayLike, gallery_feats: ArrayLike, k1: int = 20, k2: int = 6,
                          lambda_value: float = 0.3) -> ArrayLike:
    """k-reciprocal re-ranking from features: Euclidean distances are computed a block at a
    time, so neither g x g nor N x N is ever held (MSMT17-sized sets fit in memory)."""
    k1, k2, lam = _params(k1, k2, lambda_value)
    Q = _features(query_feats, "query_feats")
    G = _features(gallery_feats, "gallery_feats")
    was_numpy = not isinstance(query_feats, torch.Tensor)
    if Q.shape[1] != G.shape[1]:
        raise ValueError(f"query_feats: dimension {Q.shape[1]} differs from gallery_feats dimension {G.shape[1]}")
    if Q.device != G.device:
        raise ValueError(f"query_feats: on {Q.device} but gallery_feats is on {G.device}")
    _require_kernels(Q.device, "k_reciprocal_features")
    out = torch.ops.pycsa.k_reciprocal_features(*_common_scale(Q, G), k1, k2, lam)
    return to_caller(out, was_numpy)


def k_reciprocal_self(feats: ArrayLike, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> ArrayLike:
    """k-reciprocal re-ranking with every item a query against all items (the leave-one-out
    protocol): the graph is built once over the rows of ``feats``, so an item is not its own
    duplicate neighbour as it would be in ``k_reciprocal_features(feats, feats)``. N x N."""
    k1, k2, lam = _params(k1, k2, lambda_value)
    F = _features(feats, "feats")
    was_numpy = not isinstance(feats, torch.Tensor)
    _require_kernels(F.device, "k_reciprocal_self")
    out = torch.ops.pycsa.k_reciprocal_self(*_common_scale(F), k1, k2, lam)
    return to_caller(out, was_numpy)


@register("k_reciprocal")
class KReciprocal(Reranker):
    """k-reciprocal re-ranking of the whole database (Euclidean distances of the features).

    Returns the top-k (k = the input ranking's depth) by ascending final distance;
    scores are ``1 - distance``. When the queries are the database's rows (detected, or
    ``leave_one_out=True``), the graph is built over the database alone
    (:func:`k_reciprocal_self`).
    """

    def __init__(self, k1: int = 20, k2: int = 6, lambda_value: float = 0.3, leave_one_out: bool | None = None):
        self.k1, self.k2, self.lambda_value = _params(k1, k2, lambda_value)
        self.leave_one_out = boolean(leave_one_out, "leave_one_out", allow_none=True)

    def _rerank(self, Q, X, ranking: Ranking, progress: Progress) -> Ranking:
        if leave_one_out_rows(self.leave_one_out, Q, X):
            dist = k_reciprocal_self(X, self.k1, self.k2, self.lambda_value)
        else:
            dist = k_reciprocal_features(Q, X, self.k1, self.k2, self.lambda_value)
        scores, indices = topk_lower_index(1.0 - dist, ranking.indices.shape[1])
        if progress is not None:
            progress(Q.shape[0], Q.shape[0])
        return Ranking(indices, scores)
