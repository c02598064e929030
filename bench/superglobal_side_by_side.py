"""SuperGlobal batched (pycsa) against per-query loops.

    python bench/superglobal_side_by_side.py [--queries 70] [--db 5000] [--dim 2048] [--M 400]
                                             [--plain-queries 7] [--device cpu|cuda] [--repeat 1]

Two baselines, both from the same initial ranking:
- "per-query loop": for each query in Python, what SPEC §7 says with torch ops on
  that one list (vectorised within the query: one M x M GEMM, top-K, refinement);
- "plain reference": bench/superglobal_plain.py, the test's reference (float64, a
  Python loop over candidates too), timed on --plain-queries queries and scaled.
One run each after a warm-up call (the plain reference: no warm-up); with --repeat R the
median of R runs. On CUDA the batched and per-query runs are on the GPU, timed with a
synchronize before each clock read; the plain reference stays on the CPU (float64).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import pycsa
from superglobal_plain import superglobal_plain


def superglobal_loop(Q, X, ranks, M=400, K=9, beta=0.15, refine=10):
    out = ranks.clone()
    for b in range(Q.shape[0]):
        top = ranks[b, :M]
        F = X[top]
        S = F @ F.T
        S.fill_diagonal_(float("-inf"))
        s_nb, j_nb = S.topk(K, dim=1)
        w = beta * s_nb
        refined = (F + (w.unsqueeze(-1) * F[j_nb]).sum(1)) / (1 + w.sum(1, keepdim=True))
        s1 = refined @ Q[b]
        q2 = refined[s1.topk(refine).indices].max(dim=0).values
        final = (s1 + refined @ q2) / 2
        out[b, :M] = top[final.argsort(descending=True)]
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--queries", type=int, default=70)
    p.add_argument("--db", type=int, default=5000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--M", type=int, default=400)
    p.add_argument("--plain-queries", type=int, default=7)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=1)
    a = p.parse_args()
    dev = torch.device(a.device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    g = torch.Generator().manual_seed(0)
    X = torch.nn.functional.normalize(torch.randn(a.db, a.dim, generator=g), dim=1)
    Q = torch.nn.functional.normalize(X[:a.queries] + 0.5 * torch.randn(a.queries, a.dim, generator=g), dim=1)
    _, ranks = pycsa.search(Q, X, a.M)
    Qd, Xd, ranks_d = Q.to(dev), X.to(dev), ranks.to(dev)

    times = {}
    for name, fn in [("batched (pycsa)", lambda: pycsa.superglobal_rerank(Qd, Xd, ranks_d, M=a.M)),
                     ("per-query loop", lambda: superglobal_loop(Qd, Xd, ranks_d, M=a.M))]:
        fn()
        runs = []
        for _ in range(max(1, a.repeat)):
            sync()
            t = time.perf_counter()
            out = fn()
            sync()
            runs.append(time.perf_counter() - t)
        times[name] = statistics.median(runs)
        out = out.cpu()
        if name.startswith("batched"):
            ours = out
        else:
            agree = float((out[:, :10] == ours[:, :10]).float().mean())
    nplain = min(a.plain_queries, a.queries)
    t = time.perf_counter()
    plain = superglobal_plain(Q[:nplain], X, ranks[:nplain], M=a.M)
    times["plain reference"] = (time.perf_counter() - t) * a.queries / nplain
    plain_agree = float((plain[:, :10] == ours[:nplain, :10]).float().mean())
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, torch threads {torch.get_num_threads()}"
    print(f"SuperGlobal, {a.queries} queries, M={a.M}, d={a.dim}, database {a.db}, on {where}, "
          f"median of {max(1, a.repeat)} run(s)")
    for name, t in times.items():
        print(f"{name:16s} {t:.4f} s" + (f"  (measured on {nplain} queries, scaled, CPU float64)"
                                          if name == "plain reference" else ""))
    print(f"speed-up over the per-query loop: {times['per-query loop'] / times['batched (pycsa)']:.1f}x; "
          f"top-10 agreement {100 * agree:.1f} % (differences: float32 near-ties)")
    print(f"speed-up over the plain reference: {times['plain reference'] / times['batched (pycsa)']:.1f}x; "
          f"top-10 agreement {100 * plain_agree:.1f} %")


if __name__ == "__main__":
    main()
