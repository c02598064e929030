"""Drop-ins with the signatures users already call: swap one import, keep the call.

    # from utils.re_ranking import re_ranking
    from pycsa.compat import re_ranking

Adapters only: the algorithms live in pycsa.rerank.
"""
from __future__ import annotations

from .rerank.gnn import gnn_rerank
from .rerank.kreciprocal import k_reciprocal, k_reciprocal_features


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """The k-reciprocal ``re_ranking`` of re-ID code bases: numpy distance matrices in, q x g out."""
    return k_reciprocal(q_g_dist, q_q_dist, g_g_dist, k1=k1, k2=k2, lambda_value=lambda_value)


def re_ranking_features(query_feats, gallery_feats, k1=20, k2=6, lambda_value=0.3):
    """The same from features (Euclidean distances), without any g x g or N x N matrix."""
    return k_reciprocal_features(query_feats, gallery_feats, k1=k1, k2=k2, lambda_value=lambda_value)


def gnn_reranking(X_q, X_g, k1, k2):
    """The public GNN re-ranking entry point: the q x g ranking (argsort of the GNN similarity).

    As the public code does, k2 == 1 skips the propagation layers.
    """
    return gnn_rerank(X_q, X_g, k1=k1, k2=k2, layers=0 if k2 == 1 else 2, return_ranking=True)
