"""SuperGlobal (SPEC §7) one query at a time, written plainly: the baseline that
tests/test_rerank_superglobal.py holds pycsa.superglobal_rerank to, and the
"per-query reference" of bench/superglobal_side_by_side.py.

Float64, a Python loop over queries and over each list's candidates; neighbours and
the 10 best by (-similarity, position), the final order by (-score, database index).
"""
from __future__ import annotations

import torch


def superglobal_plain(Q, X, ranks, M=400, K=9, beta=0.15, refine=10):
    out = ranks.clone()
    for b in range(Q.shape[0]):
        top = ranks[b, :M]
        m = len(top)
        F = X[top].double()
        S = F @ F.T
        refined = []
        for i in range(m):
            others = [j for j in range(m) if j != i]
            nbrs = sorted(others, key=lambda j: (-float(S[i, j]), j))[:K]
            num, den = F[i].clone(), 1.0
            for j in nbrs:
                num += beta * S[i, j] * F[j]
                den += beta * float(S[i, j])
            refined.append(num / den)
        R = torch.stack(refined)
        s1 = R @ Q[b].double()
        best = sorted(range(m), key=lambda i: (-float(s1[i]), i))[:refine]
        q2 = R[best].max(dim=0).values
        final = (s1 + R @ q2) / 2
        order = sorted(range(m), key=lambda i: (-float(final[i]), int(top[i])))
        out[b, :m] = top[order]
    return out
