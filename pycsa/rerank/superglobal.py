"""SuperGlobal re-ranking (Shao et al. 2023; SPEC §7), all queries at once.

Per query, on its top-M list:
1. each candidate d_i is refined with its K nearest other candidates of the list
   (similarities from the affinity op): d'_i = (d_i + Σ_j β s_ij d_j) / (1 + Σ_j β s_ij),
   not renormalised;
2. s1_i = q·d'_i, and q' = the element-wise max of the d' of the 10 best s1;
3. the top-M are re-sorted by (s1 + s2) / 2 with s2_i = q'·d'_i; the rest keep their order.
The candidate itself always has weight 1 (the authors take it as the first of its
K + 1 neighbours, which it is unless an exact duplicate is in the list).
Memory: queries go in blocks of about ``block_elems`` gathered feature values
(8 MB in float32 on the CPU, where it stays in cache; 256 MB on CUDA). On the CPU each list's neighbours come from one fused GEMM +
top-k (pycsa.ops.inner_product_topk), elsewhere from the affinity op (b x M x M).
"""
from __future__ import annotations

import torch

from .._checks import finite_float, positive_int
from .._precision import matmul
from .._tensors import as_tensor, check_distinct_rows, check_features, rescaled, row_abs_max, to_caller
from .._types import ArrayLike
from ..ops import _extension, affinity, inner_product_topk
from ..ranking import Progress, Ranking, Reranker, register, resort_top
from ..search import topk_lower_index


def _check_params(M, K, beta, refine) -> tuple[int, int, float, int]:
    return positive_int(M, "M"), positive_int(K, "K"), finite_float(beta, "beta", low=0), positive_int(refine, "refine")


def _list_neighbours(F: torch.Tensor, Kn: int, fused: bool | None = None):
    """Each candidate's Kn most similar other candidates of its list (b x M x Kn similarities
    and list positions, best first, ties to the lower position). ``fused``: per-list GEMM +
    top-k (the default on the CPU with the extension) or the affinity op's b x M x M."""
    b, M, _ = F.shape
    if fused is None:
        fused = F.device.type == "cpu" and _extension.use_kernels("inner_product_topk", F.device)
    if fused:
        # One fused GEMM + top-k per list: the M x M similarities are never held.
        sims, cols = zip(*(inner_product_topk(F[i], F[i], Kn + 1) for i in range(b)))
        sims, cols = torch.stack(sims), torch.stack(cols)
        # drop the candidate itself (or, if exact duplicates pushed it out, the last of the Kn + 1)
        other = cols != torch.arange(M).view(1, M, 1)
        keep = other & (other.cumsum(-1) <= Kn)
        return sims[keep].view(b, M, Kn), cols[keep].view(b, M, Kn)
    # b x M x M within each list, from the gathered float32 rows (the database's own dtype
    # would round the similarities, and half-precision near-ties would pick other neighbours)
    rows = torch.arange(b * M, device=F.device).view(b, M)
    sims = affinity(F.reshape(b * M, -1), rows, M, check_finite=False)
    sims.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
    s_nb, j_nb = topk_lower_index(sims.reshape(b * M, M), Kn)
    return s_nb.view(b, M, Kn), j_nb.view(b, M, Kn)


def _weights(s_nb: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(own, w): the candidate's weight and its neighbours' (b x M x 1, b x M x Kn, float64),
    1 and β s_ij divided by max(1, β max_j |s_ij|). d'_i is their normalised sum, which
    this common factor leaves as it is; it keeps every weight in [-1, 1], where a large β
    (or large similarities) would make β s_ij overflow and d'_i come out as inf / inf."""
    s = s_nb.double()
    top = s.abs().amax(-1, keepdim=True)
    big = beta * top > 1
    w = torch.where(big, s / torch.where(big, top, 1.0), beta * s)
    own = torch.where(big, 1 / (beta * top), 1.0)
    return own, w


def _aggregate(v: torch.Tensor, own: torch.Tensor, w: torch.Tensor, j_nb: torch.Tensor,
               den: torch.Tensor) -> torch.Tensor:
    """(own_i v_i + Σ_j w_ij v_j) / den_i for a value per candidate (b x M): x·d'_i without d'_i."""
    b, M, Kn = j_nb.shape
    return (own.squeeze(-1) * v + (w * v.gather(1, j_nb.reshape(b, M * Kn)).view(b, M, Kn)).sum(-1)) / den


def _list_scores(F: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """F_b · q_b for each list b (b x M) from the lists F (b x M x d) and vectors q (b x d)."""
    if F.device.type == "cpu":
        # a matrix-vector product per list: MKL's batched GEMM with one column took 6.7x as
        # long (4 lists of 400 x 1,280: 1.25 ms against 0.19 ms)
        return torch.stack([torch.mv(F[i], q[i]) for i in range(F.shape[0])])
    return matmul(F, q.unsqueeze(2)).squeeze(2)


def _too_large(x: torch.Tensor) -> None:
    # with every scale brought near 1, only a denominator 1 + Σ β s_ij near 0 (similarities
    # of both signs that cancel) is left to make a refined descriptor, and a score, infinite
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError("queries/database: SuperGlobal's refined descriptors are not finite for these "
                         "features (weights β·s_ij of both signs that cancel); L2-normalise them or lower beta")


def superglobal_scores(Q: torch.Tensor, X: torch.Tensor, top: torch.Tensor, K: int = 9, beta: float = 0.15,
                       refine: int = 10, block_elems: int | None = None) -> torch.Tensor:
    """The final SuperGlobal score (s1 + s2) / 2 of each of the B x M candidates in ``top``
    (float64: the order of scores of features far from unit norm survives, which float32's
    subnormals would not keep).

    The refined d'_i is linear in the list's features, so q·d'_i and q'·d'_i come from
    q·d_j and q'·d_j of the list (two M x d products per query); only the 10 refined
    descriptors that q' pools are formed.

    Not scale-free (β s_ij weighs features against features), but exactly equivariant: with
    the list's rows divided by a power of two p and the query by p_q, β p² gives d'/p, so
    s1 = p_q p ŝ1 and s2 = p² ŝ2. Each list and each query is brought that way to values
    near 1, where float32 neither overflows nor falls into subnormals, and the scores are
    put back together from ŝ1 and ŝ2 in float64: features of any accepted norm and any
    finite β give the answer of the formula.
    """
    B, M = top.shape
    d = X.shape[1]
    out = torch.empty((B, M), dtype=torch.float64, device=Q.device)
    Kn = min(K, M - 1)  # neighbours other than the candidate itself
    r = min(refine, M)
    if block_elems is None:
        # CPU: a few lists at a time, so that the gathered rows stay in cache between the
        # neighbour GEMM and the two score products (MPEG-7, M=400, d=1280: 6.2 s against
        # 7.2 s in 256 MB blocks); CUDA: large blocks keep the GPU busy.
        block_elems = 1 << 21 if Q.device.type == "cpu" else 1 << 26
    step = max(1, block_elems // max(1, M * d, 3 * M * M))  # the gathered rows, or the b x M x M route
    # A list needs rescaling only when its rows' largest |value| lies outside rescaled()'s
    # window. When the lists hold at least as many rows as the database, each row's largest
    # is found once (a pass over X); else from each gathered block, never a pass over a
    # database much larger than what is re-ranked.
    row_top = None
    if X.shape[0] <= B * M:
        row_top = row_abs_max(X)
    for s in range(0, B, step):
        t = top[s:s + step]
        b = t.shape[0]
        F = X.index_select(0, t.reshape(-1)).reshape(b, M * d).float()
        if row_top is not None:
            list_top = row_top[t].amax(1)
        else:
            list_top = row_abs_max(F)
        if bool(((list_top == 0) | ((list_top >= 2.0 ** -16) & (list_top <= 2.0 ** 16))).all()):
            p = 1.0
        else:
            F, p = rescaled(F, per_row=True)
        F = F.reshape(b, M, d)
        q, pq = rescaled(Q[s:s + step].float(), per_row=True)
        p, pq = (torch.as_tensor(x, dtype=torch.float64, device=F.device).reshape(-1, 1) for x in (p, pq))
        if Kn > 0:
            s_nb, j_nb = _list_neighbours(F, Kn)
            # β p², held finite: past float64's range the candidate's own weight, 1 / (β p² max|s_ij|),
            # is far below the resolution of the largest neighbour's, 1
            beta_list = (beta * p * p).clamp(max=torch.finfo(torch.float64).max).unsqueeze(-1)
            own, w = _weights(s_nb, beta_list)
        else:
            own = torch.ones((b, M, 1), dtype=torch.float64, device=F.device)
            w, j_nb = own.new_zeros((b, M, 0)), torch.zeros((b, M, 0), dtype=torch.long, device=F.device)
        den = own.squeeze(-1) + w.sum(-1)
        s1 = _aggregate(_list_scores(F, q).double(), own, w, j_nb, den)
        _too_large(s1)  # before the top-k, which cannot rank NaN
        best = topk_lower_index(s1, r)[1]  # b x r
        rows = torch.arange(b, device=F.device).unsqueeze(1)
        jb, wb, ob = j_nb[rows, best], w[rows, best].float(), own[rows, best].float()  # b x r x Kn
        summed = ob * F[rows, best] + (wb.unsqueeze(-1) * F[rows.unsqueeze(-1), jb]).sum(2)
        refined = (summed.double() / den[rows, best].unsqueeze(-1)).float()
        q2 = refined.amax(dim=1)
        s2 = _aggregate(_list_scores(F, q2).double(), own, w, j_nb, den)
        out[s:s + step] = (s1 * (pq * p) + s2 * (p * p)) / 2
    _too_large(out)
    return out


def superglobal_rerank(queries: ArrayLike, database: ArrayLike, ranks: ArrayLike, M: int = 400, K: int = 9,
                       beta: float = 0.15, *, refine: int = 10) -> ArrayLike:
    """SuperGlobal re-ranking of each query's top-M; returns the new ranks (same shape as ``ranks``).

    Inputs: queries (B x d), database (n x d), ranks (B x R database indices, best first),
    numpy or torch, CPU or CUDA. Candidates beyond M keep their place.
    """
    new_ranks, _ = _rerank_top(queries, database, ranks, M, K, beta, refine)
    return new_ranks


def _rerank_top(queries, database, ranks, M, K, beta, refine, scores=None, *, checked: bool = False):
    """``checked``: the caller (Reranker.rerank) has refused repeated items already."""
    M, K, beta, refine = _check_params(M, K, beta, refine)
    Q, was_numpy = as_tensor(queries, "queries")
    X, _ = as_tensor(database, "database")
    rk, _ = as_tensor(ranks, "ranks")
    Q, X = Q.detach(), X.detach()
    check_features(Q, "queries")
    check_features(X, "database", allow_empty=False)
    if rk.dim() != 2 or rk.shape[0] != Q.shape[0] or rk.shape[1] < 1:
        raise ValueError(f"ranks: expected shape ({Q.shape[0]}, R) with R >= 1, got {tuple(rk.shape)}")
    if Q.shape[1] != X.shape[1]:
        raise ValueError(f"queries: dimension {Q.shape[1]} differs from database dimension {X.shape[1]}")
    if rk.is_floating_point() or rk.dtype == torch.bool:
        raise TypeError(f"ranks: expected integers, got {rk.dtype}")
    rk = rk.to(X.device).long()
    if rk.numel() and (int(rk.min()) < 0 or int(rk.max()) >= X.shape[0]):
        raise IndexError(f"ranks: indices must lie in [0, {X.shape[0]}) (database rows)")
    if not checked:
        check_distinct_rows(rk, "ranks", X.shape[0])
    final = superglobal_scores(Q.to(X.device), X, rk[:, :M], K, beta, refine)
    new = resort_top(Ranking(rk, torch.zeros(rk.shape, device=rk.device) if scores is None else scores), final)
    return to_caller(new.indices, was_numpy), None if scores is None else new.scores


@register("superglobal")
class SuperGlobal(Reranker):
    """SuperGlobal: the top-M re-sorted by refined global features (SPEC §7).

    Scores of the top-M are the SuperGlobal scores; the rest keep their initial scores.
    """

    def __init__(self, M: int = 400, K: int = 9, beta: float = 0.15):
        self.M, self.K, self.beta, _ = _check_params(M, K, beta, 10)

    def _rerank(self, Q, X, ranking: Ranking, progress: Progress) -> Ranking:
        indices, scores = _rerank_top(Q, X, ranking.indices, self.M, self.K, self.beta, 10, ranking.scores,
                                      checked=True)
        if progress is not None:
            progress(Q.shape[0], Q.shape[0])
        return Ranking(indices, scores)
