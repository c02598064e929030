"""Baselines as people run them today, kept as test references and for the side-by-side benchmark.

* :func:`re_ranking_numpy`: k-reciprocal re-ranking (Zhong et al. 2017; SPEC §4)
  in plain numpy with the numerics of the numpy function copied into most re-ID
  code bases: every N x N matrix dense and float32, Python loops over probes and
  over the columns for the inverted index. About 23·N² bytes and minutes at
  Market-1501 size. Written from the algorithm description, not copied; the
  public code it ports (and ``pycsa.compat.re_ranking`` replaces) is
  ``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3)`` in
  KaiyangZhou/deep-person-reid, ``torchreid/utils/rerank.py`` at commit
  08bb2cc5ebf6242078796b9a58fcd3a11cc3207c.
* :func:`gnn_rerank_dense_torch`: GNN re-ranking (Zhang et al. 2020; SPEC §3)
  with dense N x N torch matrices, as the authors' public code keeps them.

Neither is part of the library; both are deliberately slow and memory-hungry.
"""
from __future__ import annotations

import numpy as np

__all__ = ["re_ranking_numpy", "re_ranking_numpy_leave_one_out", "gnn_rerank_dense_torch"]


def _reciprocal_members(initial_rank: np.ndarray, probe: int, depth: int) -> np.ndarray:
    """The members j of ``probe``'s top-``depth`` whose own top-``depth`` contains ``probe``.

    Returned in the order of ``probe``'s ranking (slicing clamps ``depth`` to N).
    """
    forward = initial_rank[probe, :depth]
    back = initial_rank[forward, :depth]
    keep = np.nonzero((back == probe).any(axis=1))[0]
    return forward[keep]


def re_ranking_numpy(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """k-reciprocal re-ranking of a query x gallery distance matrix; returns q x g float32.

    Inputs are Euclidean distances: ``q_g_dist`` (q x g), ``q_q_dist`` (q x q),
    ``g_g_dist`` (g x g). Steps, all on the joint N x N matrix (N = q + g):

    1. ``D = [[q_q, q_g], [q_gᵀ, g_g]]`` squared (in the inputs' dtype), cast to
       float32, each column divided by its maximum, transposed:
       ``O[i, j] = D[j, i]² / max_k D[k, i]²``.
    2. ``initial_rank = argsort(O, axis=1)`` (numpy's default sort).
    3. For each probe i: R(i) = members of its top-(k1+1) that have i in their
       own top-(k1+1); for each member c of R(i), its set R'(c) from the
       top-(round(k1/2)+1) is added when ``|R'(c) ∩ R(i)| > 2/3·|R'(c)|``.
       ``V[i, U] = exp(-O[i, U]) / Σ exp(-O[i, U])`` over the union U.
    4. If ``k2 != 1``: ``V[i] = mean(V[initial_rank[i, :k2]])`` (rows of the old V).
    5. For each query i and every column j:
       ``s = Σ_c min(V[i, c], V[j, c])`` accumulated in float32 over the columns
       c in increasing order through an inverted index of the nonzeros;
       ``jaccard = 1 - s / (2 - s)``.
    6. ``(1 - λ)·jaccard + λ·O`` on the query rows, gallery columns.

    Any k1 + 1 > N, k2 > N simply take every item (numpy slicing).
    """
    q_g = np.asarray(q_g_dist)
    q_q = np.asarray(q_q_dist)
    g_g = np.asarray(g_g_dist)
    nq = q_g.shape[0]
    joint = np.concatenate(
        [np.concatenate([q_q, q_g], axis=1), np.concatenate([q_g.T, g_g], axis=1)], axis=0
    )
    return _k_reciprocal_joint(joint, nq, k1, k2, lambda_value)[:, nq:]


def re_ranking_numpy_leave_one_out(g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """The same algorithm with every gallery item a query against all items (the
    leave-one-out protocol) and the graph built once over the gallery: the joint matrix
    is ``g_g`` itself, and the result g x g (not the public function called with
    queries = gallery, where each item would be in the joint set twice)."""
    g_g = np.asarray(g_g_dist)
    return _k_reciprocal_joint(g_g, g_g.shape[0], k1, k2, lambda_value)


def _k_reciprocal_joint(joint, nq, k1, k2, lambda_value):
    """Steps 1-6 on a joint distance matrix whose first ``nq`` rows are the queries;
    returns their rows against every item (nq x N)."""
    n = joint.shape[0]
    joint = np.power(joint, 2).astype(np.float32)
    dist = np.transpose(joint / np.max(joint, axis=0))
    del joint
    weights = np.zeros_like(dist, dtype=np.float32)
    initial_rank = np.argsort(dist).astype(np.int32)

    half = int(np.around(k1 / 2)) + 1
    for i in range(n):
        members = _reciprocal_members(initial_rank, i, k1 + 1)
        expanded = members
        for c in members:
            cand = _reciprocal_members(initial_rank, c, half)
            shared = np.intersect1d(cand, members)
            if len(shared) > 2.0 / 3.0 * len(cand):
                expanded = np.append(expanded, cand)
        expanded = np.unique(expanded)
        e = np.exp(-dist[i, expanded])
        weights[i, expanded] = e / np.sum(e)

    dist = dist[:nq]
    if k2 != 1:
        averaged = np.zeros_like(weights, dtype=np.float32)
        for i in range(n):
            averaged[i, :] = np.mean(weights[initial_rank[i, :k2], :], axis=0)
        weights = averaged
        del averaged
    del initial_rank

    # rows holding a nonzero, per column (the slow, strided pass of the original)
    holders = [np.nonzero(weights[:, c] != 0)[0] for c in range(n)]

    jaccard = np.zeros_like(dist, dtype=np.float32)
    for i in range(nq):
        acc = np.zeros((1, n), dtype=np.float32)
        cols = np.nonzero(weights[i, :] != 0)[0]
        for c in cols:
            rows = holders[c]
            acc[0, rows] = acc[0, rows] + np.minimum(weights[i, c], weights[rows, c])
        jaccard[i] = 1 - acc / (2 - acc)

    final = jaccard * (1 - lambda_value) + dist * lambda_value
    del jaccard, dist, weights
    return final[:nq]


def gnn_rerank_dense_torch(X_q, X_g, k1=26, k2=7, lamb=0.0, *, skip_propagation_if_k2_is_1=False,
                           leave_one_out=False):
    """GNN re-ranking with dense N x N matrices (SPEC §3); returns the q x g similarity (torch, float32).

    ``X_q`` (q x d) and ``X_g`` (g x d): torch tensors or arrays, rows
    L2-normalised (not re-normalised here); the result is on their device.

    1. ``Z = [X_q; X_g]``; ``S, R = topk(Z Zᵀ, k1)`` per row (sorted, self first).
    2. ``A[i, R[i, :k1]] = 1`` (dense N x N); ``W = S²``.
    3. Twice: ``A = A + Aᵀ``; ``A'[i] = Σ_{j<k2} W[i, j] · A[R[i, j]]``; rows
       L2-normalised.
    4. ``(1 - lamb)·A_q A_gᵀ + lamb·X_q X_gᵀ``.

    ``k1`` is clamped to N and ``k2`` to ``k1``. The authors' public code skips
    step 3 entirely when ``k2 == 1`` (the similarity is then the raw count of
    shared top-k1 neighbours); SPEC §3 does not, and neither does this function
    unless ``skip_propagation_if_k2_is_1=True``.

    ``leave_one_out``: ``X_q`` are the rows of ``X_g`` (every item a query against all
    items); then ``Z = X_g`` (each item once) and the result is g x g, ``A Aᵀ``.
    """
    import torch

    X_q = torch.as_tensor(X_q)
    X_g = torch.as_tensor(X_g, device=X_q.device)
    nq = X_q.shape[0]
    Z = X_g.float() if leave_one_out else torch.cat([X_q, X_g], dim=0).float()
    n = Z.shape[0]
    k1 = min(int(k1), n)
    k2 = min(int(k2), k1)

    score = Z @ Z.T
    S, R = torch.topk(score, k=k1, dim=1, largest=True, sorted=True)
    del score
    A = torch.zeros((n, n), dtype=torch.float32, device=Z.device)
    A.scatter_(1, R, 1.0)
    W = S * S
    if not (skip_propagation_if_k2_is_1 and k2 == 1):
        Rk = R[:, :k2]
        Wk = W[:, :k2]
        for _ in range(2):
            A = A + A.T
            B = torch.zeros_like(A)
            rows = torch.empty_like(A)
            for j in range(k2):  # one neighbour slot at a time, in order: B = Σ_j W[:, j] · A[R[:, j]]
                torch.index_select(A, 0, Rk[:, j], out=rows)
                rows.mul_(Wk[:, j : j + 1])
                B.add_(rows)
            del rows
            A = B
            del B
            A = A / torch.linalg.vector_norm(A, ord=2, dim=1, keepdim=True)
    if leave_one_out:
        sim = A @ A.T
        return (1 - lamb) * sim + lamb * (Z @ Z.T) if lamb else sim
    sim = A[:nq] @ A[nq:].T
    if lamb:
        sim = (1 - lamb) * sim + lamb * (Z[:nq] @ Z[nq:].T)
    return sim
