"""A plain port of the public GNN re-ranking entry point, kept as the test reference of
``pycsa.compat.gnn_reranking`` (the one-line swap must return what this returns).

Ported from the description of ``gnn_reranking(X_q, X_g, k1, k2, lamb=0.3)`` in
layumi/Person_reID_baseline_pytorch, ``GPU-Re-Ranking/gnn_reranking.py`` at commit
4dae9cdf42f71c72a44a64fb23bfc470c501085f (the signature with ``lamb`` dates from
August 2023; its demo, ``evaluate_rerank_gpu.py``, calls it with k1=26, k2=7 on
Market-1501). Written here, not copied: the public code needs two CUDA extensions
(``build_adjacency_matrix``, ``gnn_propagate``); their effect is spelled out below in
dense torch so that the port runs on a CPU. Dense N x N: for small inputs only.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["gnn_reranking_official", "gnn_similarity_official"]


def gnn_similarity_official(X_q, X_g, k1, k2, lamb=0.3, lower_index_on_ties=False) -> torch.Tensor:
    """The q x g similarity that the public function sorts (float32 torch).

    lower_index_on_ties: not in the public code. Its topk leaves the order of exactly equal
    scores unspecified, and an exact float32 tie at a row's k1-th neighbour puts a different
    item in the graph, which propagation spreads to many rows; pycsa takes the lower index.
    With True the neighbours are chosen by a stable sort, as pycsa chooses them."""
    X_q, X_g = torch.as_tensor(X_q).float(), torch.as_tensor(X_g).float()
    nq = X_q.shape[0]
    original_cos = X_q @ X_g.T
    X_u = torch.cat((X_q, X_g), dim=0)
    original_score = X_u @ X_u.T
    if lower_index_on_ties:
        S, initial_rank = torch.sort(original_score, dim=-1, descending=True, stable=True)
        S, initial_rank = S[:, :k1].contiguous(), initial_rank[:, :k1].contiguous()
    else:
        # the public code calls topk(k=k1) unclamped: k1 > N raises there as here
        S, initial_rank = original_score.topk(k=k1, dim=-1, largest=True, sorted=True)

    # build_adjacency_matrix: a zero N x N matrix with a 1 at each row's top-k1 columns
    n = X_u.shape[0]
    A = torch.zeros(n, n)
    for i in range(n):
        A[i, initial_rank[i]] = 1.0
    S = S * S

    if k2 != 1:  # the public code skips both layers for k2 == 1
        for _ in range(2):
            A = A + A.T
            # gnn_propagate: row i of the output is Σ_{j<k2} S[i, j] · A[initial_rank[i, j]],
            # accumulated from zero in neighbour order
            out = torch.zeros_like(A)
            for i in range(n):
                for j in range(k2):
                    out[i] += A[initial_rank[i, j]] * S[i, j]
            A = out
            A = A / torch.norm(A, p=2, dim=1, keepdim=True)

    cosine_similarity = A[:nq] @ A[nq:].T
    return (1 - lamb) * cosine_similarity + lamb * original_cos


def gnn_reranking_official(X_q, X_g, k1, k2, lamb=0.3) -> np.ndarray:
    """What the public function returns: the q x g ranking (gallery indices by descending
    similarity) as a numpy int64 array. Its sort is not stable; near-ties may order
    differently between two implementations."""
    sim = gnn_similarity_official(X_q, X_g, k1, k2, lamb)
    return torch.sort(-sim, dim=1)[1].cpu().numpy()
