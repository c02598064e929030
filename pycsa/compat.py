"""Drop-ins with the signatures users already call: swap one import, keep the call.

    # from utils.re_ranking import re_ranking
    from pycsa.compat import re_ranking

Adapters only: the algorithms live in pycsa.rerank.
"""
from __future__ import annotations

import numpy as np
import torch

from ._types import ArrayLike
from .rerank.gnn import _gnn_rerank
from .rerank.kreciprocal import k_reciprocal, k_reciprocal_features

__all__ = ["re_ranking", "re_ranking_features", "gnn_reranking"]


def re_ranking(q_g_dist: ArrayLike, q_q_dist: ArrayLike, g_g_dist: ArrayLike, k1: int = 20, k2: int = 6,
               lambda_value: float = 0.3) -> ArrayLike:
    """The k-reciprocal ``re_ranking`` of re-ID code bases (``torchreid/utils/rerank.py`` of
    KaiyangZhou/deep-person-reid and its copies): numpy distance matrices in, q x g out."""
    return k_reciprocal(q_g_dist, q_q_dist, g_g_dist, k1=k1, k2=k2, lambda_value=lambda_value)


def re_ranking_features(query_feats: ArrayLike, gallery_feats: ArrayLike, k1: int = 20, k2: int = 6,
                        lambda_value: float = 0.3) -> ArrayLike:
    """The same from features (Euclidean distances), without any g x g or N x N matrix."""
    return k_reciprocal_features(query_feats, gallery_feats, k1=k1, k2=k2, lambda_value=lambda_value)


def gnn_reranking(X_q: ArrayLike, X_g: ArrayLike, k1: int, k2: int, lamb: float = 0.3) -> np.ndarray:
    """The public GNN re-ranking entry point (``GPU-Re-Ranking/gnn_reranking.py`` of
    layumi/Person_reID_baseline_pytorch): the q x g ranking of the GNN similarity blended
    with the plain cosine, ``(1 - lamb)·A_q A_gᵀ + lamb·X_q X_gᵀ``, as a numpy int64 array
    whatever the inputs are (the public code returns ``L.data.cpu().numpy()``).

    As the public code does, k2 == 1 skips the propagation layers. Unlike it, this runs
    on the CPU too, in O(N·k) memory, breaks ties by the lower index and clamps k1 to N.
    """
    # k2 == 1: zero layers, which the public gnn_rerank does not offer (there, layers >= 1)
    ranking = _gnn_rerank(X_q, X_g, k1, k2, lamb, 0 if k2 == 1 else 2, True, False)
    if isinstance(ranking, torch.Tensor):
        ranking = ranking.cpu().numpy()
    return ranking.astype(np.int64, copy=False)
