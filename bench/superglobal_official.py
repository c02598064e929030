"""A plain port of the public SuperGlobal re-ranking, kept as the test reference that
tests/test_rerank_superglobal.py holds ``pycsa.superglobal_rerank`` to.

Ported from ShihaoShao-GH/SuperGlobal at commit 6db11a7ce3c284063191533a09b2c56973781120:
``modules/reranking/MDescAug.py`` (class ``MDescAug``, top-M descriptor augmentation) and
``modules/reranking/RerankwMDA.py`` (class ``RerankwMDA``, re-ranking with the maximum of
the refined descriptors), as ``test/test_model.py`` of that commit chains them
(``MDescAug()`` then ``RerankwMDA()``, defaults M=400, K=9, beta=0.15). Written here, not
copied: the same maths in the same order (float32, unstable argsorts, the top-M lists of
all queries at once), with these changes of form only:

- no ``.cuda()``: everything stays on the device of the inputs (the CPU in the tests);
- inputs in pycsa's convention: ``ranks`` is q x R (query-major, best first) where the
  public code takes the n x q argsort of ``X @ Q.T`` and transposes it; the result is the
  q x M new order of each query's top-M (the public code appends ranks M.. unchanged and
  transposes back to n x q);
- ``superglobal_official_scores`` also hands back the final scores, for deciding near-ties;
- the public code's per-query Python loops (the neighbour gather, the final concatenation)
  are written as batched gathers; its ``ranks_value_trans`` (the top s1 values times beta,
  computed in ``RerankwMDA.forward`` and never used) is left out.

The public maths, against pycsa's (SPEC §7):

1. For each candidate d_i of the top-M list, the K+1 (``self.K = K + 1``, "including
   oneself") largest entries of its row of the M x M inner products, best first. The FIRST
   of them gets weight 1 whoever it is and the other K get β·s_ij; d'_i = Σ w_j d_j / Σ w_j,
   not renormalised. The public code never checks that the first is the candidate itself:
   it is when the features are L2-normalised (s_ii = 1 > s_ij for any other distinct
   unit row, up to float32 rounding for near-identical rows; an exact duplicate ties at 1
   and either order gives the same d'_i). pycsa instead always gives the candidate itself
   weight 1 plus its K most similar OTHER candidates. With rows of unequal norms the two differ: a candidate j with
   d_i·d_j > |d_i|² takes weight 1 in the public code, and the candidate itself gets
   β·|d_i|² (or drops out of the K+1).
2. s1_i = q·d'_i; the list is argsorted by s1.
3. q' = element-wise max of the d' of the K+1 best by s1 (``ranks_trans_1000_pre[:, :self.K]``
   with ``self.K = K + 1``): the pool size is tied to K. pycsa pools ``refine=10`` refined
   descriptors whatever K is; the two agree for the default K=9 (and for any K with
   ``superglobal_rerank(..., refine=K + 1)``).
4. s2_i = q'·d'_i; final (s1 + s2) / 2, argsorted (descending) — as in pycsa.

Ties: the public argsorts are unstable (order of equal values unspecified); pycsa breaks
ties by list position / database index and computes the scores in float64. Dense q x M x M
and q x M x (K+1) x d: for small inputs only.
"""
from __future__ import annotations

import torch

__all__ = ["superglobal_official", "superglobal_official_scores"]


def _mdescaug(Q: torch.Tensor, X: torch.Tensor, top: torch.Tensor, K: int, beta: float):
    """MDescAug.forward: (top-M by s1, s1 per list position, argsort of s1, refined d')."""
    n_keep = K + 1  # the candidate's own slot and K others, as the public code counts them
    F = X[top]  # q x M x d
    S = torch.einsum("abc,adc->abd", F, F)  # q x M x M within-list inner products
    nb = torch.argsort(-S, dim=-1)[:, :, :n_keep]  # q x M x (K+1)
    w = (-torch.sort(-S, dim=-1)[0][:, :, :n_keep]).unsqueeze(-1)  # q x M x (K+1) x 1
    w[:, :, 1:, :] *= beta
    w[:, :, 0:1, :] = 1.0  # the first of the K+1, whoever it is
    gathered = torch.stack([F[b][nb[b]] for b in range(F.shape[0])])  # q x M x (K+1) x d
    refined = torch.sum(gathered * w, 2) / torch.sum(w, 2)  # q x M x d, not renormalised
    s1 = torch.einsum("ac,adc->ad", Q, refined)  # q x M
    by_s1 = torch.argsort(-s1, dim=-1)
    return top.gather(1, by_s1), s1, by_s1, refined


def _rerank_wmda(top_by_s1, s1, by_s1, refined, K: int):
    """RerankwMDA.forward on the top-M: (new top-M order, final scores in that order)."""
    n_pool = K + 1  # the public code pools the refined descriptors of the K+1 best by s1
    s1_sorted = -torch.sort(-s1, dim=-1)[0]  # q x M, aligned with top_by_s1
    pooled = torch.take_along_dim(refined, by_s1[:, :n_pool].unsqueeze(-1), 1)  # q x (K+1) x d
    in_s1_order = torch.take_along_dim(refined, by_s1.unsqueeze(-1), 1)  # q x M x d
    q2 = torch.max(pooled, 1, True)[0]  # q x 1 x d
    s2 = torch.sum(torch.einsum("abc,adc->abd", q2, in_s1_order), 1)  # q x M
    final = (s1_sorted + s2) / 2.0
    order = torch.argsort(-final, dim=-1)
    return top_by_s1.gather(1, order), final.gather(1, order)


def superglobal_official_scores(Q, X, ranks, M=400, K=9, beta=0.15):
    """(new ranks of each query's top-M, their final scores (s1 + s2) / 2), both q x M:
    int64 database indices best first, and the float32 scores in the same order."""
    Q = torch.as_tensor(Q).float()
    X = torch.as_tensor(X).float()
    top = torch.as_tensor(ranks).long()[:, :M]
    top_by_s1, s1, by_s1, refined = _mdescaug(Q, X, top, K, beta)
    return _rerank_wmda(top_by_s1, s1, by_s1, refined, K)


def superglobal_official(Q, X, ranks, M=400, K=9, beta=0.15) -> torch.Tensor:
    """What the public MDescAug + RerankwMDA give for each query's top-M: the q x M new
    ranks (int64 database indices, best first). Queries q x d, database n x d, ranks
    q x R (R >= 1, best first), numpy or torch; only ranks[:, :M] are read."""
    return superglobal_official_scores(Q, X, ranks, M, K, beta)[0]
