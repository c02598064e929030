"""Diffusion's offline stage (the database's mutual kNN graph) at scale: time and peak memory.

    python bench/diffusion_offline.py [--db 1000000] [--dim 512] [--k 50] [--queries 100]

Data: ``pycsa.datasets.make_retrieval`` (seeded synthetic retrieval set, classes on
curved manifolds plus distractors), ``--db`` rows of ``--dim`` features, float32.
Times ``Diffusion(k).fit(database)`` (one exact kNN search of the database against
itself, then the sparse mutual graph), then one online ``rerank`` of ``--queries``
queries; reports peak resident memory (ru_maxrss) after each step. One run, no repeats.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time

import torch

import pycsa
from pycsa.datasets.synthetic import make_retrieval


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--queries", type=int, default=100)
    a = p.parse_args()

    t = time.perf_counter()
    data = make_retrieval(num_queries=a.queries, num_db=a.db, dim=a.dim, num_classes=max(11, a.db // 10_000))
    X, Q = torch.as_tensor(data.database), torch.as_tensor(data.queries)
    print(f"data: {a.db} x {a.dim} ({X.dtype}), {a.queries} queries, generated in {time.perf_counter() - t:.0f} s; "
          f"peak memory {peak_gb():.1f} GB; torch threads {torch.get_num_threads()}", flush=True)

    last = [time.perf_counter()]

    def progress(done, total):
        if time.perf_counter() - last[0] > 60 or done == total:
            last[0] = time.perf_counter()
            print(f"  kNN search {done}/{total} rows, {time.perf_counter() - t0:.0f} s", flush=True)

    reranker = pycsa.create("diffusion", k=a.k)
    t0 = time.perf_counter()
    reranker.fit(X, progress=progress)
    offline = time.perf_counter() - t0
    print(f"offline (fit, k={a.k}): {offline:.0f} s ({offline / 60:.1f} min); peak memory {peak_gb():.1f} GB", flush=True)

    t0 = time.perf_counter()
    ranking = pycsa.Index(X).search(Q, 100)
    ranked = reranker.rerank(Q, X, pycsa.Ranking(*reversed(ranking)))
    online = time.perf_counter() - t0
    print(f"online ({a.queries} queries: initial search + diffusion): {online:.1f} s; peak memory {peak_gb():.1f} GB")
    print(f"mAP (Medium) initial {pycsa.evaluate.revisited(ranking[1], data.gnd)['medium']['mAP']:.4f}, "
          f"diffusion {pycsa.evaluate.revisited(ranked.indices, data.gnd)['medium']['mAP']:.4f}")


if __name__ == "__main__":
    sys.exit(main())
