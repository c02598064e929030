"""Issue #18 experiment: how much does the chain k_reciprocal+csa on MPEG-7 classes 35-69 depend on
the training seed of its model, and does averaging the scores of several seeds' models make it
steady? Each checkpoint is a `pycsa train --recipe k_reciprocal --class-split first --seed S` model.

    python bench/csa_seed_ensemble_experiment.py A.pt B.pt C.pt [--k 1024]

Prints each model's mAP and that of the mean of the models' scores (every item of each list is
scored by every model: the lists are the whole database, K >= 700).
"""
import argparse

import torch

import pycsa
from pycsa.datasets import load_retrieval_features
from pycsa.ranking import Ranking
from pycsa.rerank.csa import CSAReranker
from pycsa.tune import Scorer

ap = argparse.ArgumentParser()
ap.add_argument("checkpoints", nargs="+")
ap.add_argument("--data", default="../shared/data/mpeg7/mpeg7_mobilenetv2_imagenet_gap1280.npz")
ap.add_argument("--k", type=int, default=1024)
args = ap.parse_args()

test = load_retrieval_features(args.data).class_half("second")
X = test.database
if args.k < X.shape[0]:  # a shorter list leaves a tail in the stage's order, which the mean below would lose
    ap.error(f"--k: the mean of the scores needs every item scored, so at least {X.shape[0]}, got {args.k}")
s, i = pycsa.search(X, X, X.shape[0])
first = Ranking(i, s)
score = Scorer("classes", test)
stage = pycsa.create("k_reciprocal").fit(X).rerank(X, X, first)
print(f"k_reciprocal (defaults) {score(stage):6.2f}")
total = None
for n, path in enumerate(args.checkpoints, 1):
    out = CSAReranker(path, k=args.k).fit(X).rerank(X, X, stage)
    # each model's scores in database order, so that lists ranked differently can be added
    dense = torch.full((X.shape[0], X.shape[0]), float("-inf"), dtype=torch.float64)
    dense.scatter_(1, torch.as_tensor(out.indices).long(), torch.as_tensor(out.scores).double())
    total = dense if total is None else total + dense
    print(f"{path}: {score(out):6.2f}")
    if n > 1:
        sc, ix = torch.sort(total / n, dim=1, descending=True, stable=True)
        print(f"  mean of the first {n} models' scores: {score(Ranking(ix, sc)):6.2f}")
