"""Truncated diffusion, side by side: on the database's kNN graph restricted to each query's
top-T (pycsa now, Iscen et al.'s truncation) against the per-list graph that pycsa built
until commit 03fea45 (each query's T x T affinities from the features, kNN inside the list:
O(T²·d) per query), ported below as it was. Same inputs, same run: time per query, mAP.

    python bench/diffusion_truncated_side_by_side.py [--mpeg7 FILE] [--T 1000] [--skip-old]

Data: MPEG-7 (every image a query against all 1,400) and a COIL-20-like set made here (20
objects x 72 views on a closed curve each, 1,440 images: the manifold data diffusion is
for). Class mAP with the query itself left out.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import pycsa
from pycsa.datasets import load_retrieval_features
from pycsa.evaluate import class_map
from pycsa.ops import affinity
from pycsa.search import sort_by_score, topk_lower_index


def per_list_graph(sims: torch.Tensor, k: int, gamma: float) -> torch.Tensor:
    """The former graph: dense b x T x T normalised mutual-kNN affinities inside each list."""
    b, T, _ = sims.shape
    k = min(k, T - 1)
    S = torch.zeros_like(sims)
    if k < 1:
        return S
    masked = sims.clone()
    masked.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
    val, idx = topk_lower_index(masked.reshape(b * T, T), k)
    W = torch.zeros(b * T, T, dtype=sims.dtype)
    W.scatter_(1, idx, val.clamp(min=0).pow(gamma))
    W = W.reshape(b, T, T)
    Wt = W.transpose(1, 2)
    M = torch.where((W > 0) & (Wt > 0), torch.minimum(W, Wt), S)
    deg = M.sum(2)
    inv = torch.where(deg > 0, deg.clamp_min(1e-30).rsqrt(), torch.zeros_like(deg))
    return inv.unsqueeze(2) * M * inv.unsqueeze(1)


def per_list_truncated(X, ranking, T=1000, k=50, gamma=3.0, alpha=0.99, query_k=10, iters=20, block=1 << 25):
    """The former TruncatedDiffusion._rerank, with its defaults."""
    from pycsa.rerank.diffusion import _cg

    q, depth = ranking.indices.shape
    T = min(T, depth)
    kq = min(query_k, T)
    new_i, new_s = ranking.indices.clone(), ranking.scores.clone().float()
    step = max(1, block // max(1, T * T))
    for s in range(0, q, step):
        top = ranking.indices[s:s + step, :T]
        b = top.shape[0]
        S = per_list_graph(affinity(X, top, T, check_finite=False).float(), k, gamma)
        Y = torch.zeros(b, T)
        Y[:, :kq] = ranking.scores[s:s + step, :kq].float().clamp(min=0).pow(gamma)
        f = _cg(lambda P: torch.bmm(S, P.unsqueeze(2)).squeeze(2), Y, alpha, iters, 1e-6, dim=1)
        new_s[s:s + step, :T], new_i[s:s + step, :T] = sort_by_score(f, top)
    return pycsa.Ranking(new_i, new_s)


def coil_like(objects=20, views=72, dim=512, seed=0, spread=1.0):
    # spread scales each object's curve: 1 gives cosine mAP 58.8, 0.59375 gives 90.8 (as a real COIL-20's)
    rng = np.random.default_rng(seed)
    theta = 2 * np.pi * np.arange(views) / views
    feats, labels = [], []
    for o in range(objects):
        c = rng.standard_normal(dim)
        basis = rng.standard_normal((4, dim)) * (np.array([[1.6], [1.6], [0.7], [0.7]]) * spread)
        curve = (np.cos(theta)[:, None] * basis[0] + np.sin(theta)[:, None] * basis[1]
                 + np.cos(2 * theta)[:, None] * basis[2] + np.sin(3 * theta)[:, None] * basis[3])
        x = c + curve + 0.35 * rng.standard_normal((views, dim))
        feats.append(x)
        labels += [o] * views
    X = np.concatenate(feats)
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32), np.array(labels)


def score(ranking, labels):
    idx = np.asarray(ranking.indices)
    return 100 * class_map(idx, labels, labels, exclude_self=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mpeg7", default="../shared/data/mpeg7/mpeg7_mobilenetv2_imagenet_gap1280.npz")
    ap.add_argument("--T", type=int, default=1000)
    ap.add_argument("--skip-old", action="store_true", help="time pycsa only")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores; T={args.T}, k=50, gamma=3, alpha=0.99")
    sets = []
    if os.path.exists(args.mpeg7):
        fs = load_retrieval_features(args.mpeg7)
        sets.append(("MPEG-7", torch.as_tensor(fs.database).float(), np.asarray(fs.db_labels)))
    X, y = coil_like()
    sets.append(("COIL-like", torch.from_numpy(X), y))
    for name, X, y in sets:
        n = X.shape[0]
        s, i = pycsa.search(X, X, n)
        ranking = pycsa.Ranking(i, s)
        t = time.perf_counter()
        new = pycsa.create("diffusion_truncated", T=args.T).fit(X).rerank(X, X, ranking)
        t_new = time.perf_counter() - t
        line = f"{name} ({n} queries, database {n}): cosine {score(ranking, y):.2f}; graph-restricted (pycsa) " \
               f"{score(new, y):.2f} mAP in {t_new:.2f} s ({1000 * t_new / n:.2f} ms/query, fit included)"
        if not args.skip_old:
            t = time.perf_counter()
            old = per_list_truncated(X, ranking, T=args.T)
            t_old = time.perf_counter() - t
            line += f"; per-list (before) {score(old, y):.2f} mAP in {t_old:.1f} s; {t_old / t_new:.0f}x faster"
        print(line, flush=True)


if __name__ == "__main__":
    main()
