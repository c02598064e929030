"""Training CSA inside `pycsa tune` (``--train csa``), scored without looking at its own classes.

A model scored on the classes it was trained on would look better than it is, and the
tuner would pick it for that. So the validation set's classes are dealt into F folds
(cross-fitting, F = FOLDS by default): the queries of fold f are re-ranked by a model trained
on the other folds' classes, and the tuner scores that combined ranking, over the whole
validation set, like every other method's. The more folds, the closer each fold model is to
the final one (a share (F-1)/F of the classes) and the less pessimistic its score: with two
halves on MPEG-7's 35 classes the fold models scored k_reciprocal+csa 1.5 points below
k-reciprocal, while the final model was above it on the test classes; the cost is F models
of (F-1)/F of the data before the final one. The model written for later use
(``pycsa eval --config``) is trained on all of the validation set. The database of each
query still holds the other folds' items, which its model saw in training; they are
irrelevant to it, and CSA scores lists by their affinity patterns, not by who the items are.

The recipe is the one measured on MPEG-7 (bench/csa_residual_mpeg7.sh, bench/results/*-csa-residual-mpeg7-*.md): a residual
model (it starts at the input order) on standardised affinities, the per-positive loss, training K of 128/256/512,
two perturbed copies of the features and two dense ones (more relevant items per list: without them a
model trained on MPEG-7's classes of 20 over-corrected data with 72 views per object), AdamW. A second model, trained the same way over k-reciprocal's ranking
with eight perturbed copies and training K up to 1,024 (bench/csa_stage_mpeg7.sh,
bench/tune_stage_k_experiment.py), serves the chain 'k_reciprocal+csa'.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ._checks import integer
from ._tensors import same_rows
from .ranking import Progress, Ranking, Reranker

__all__ = ["FOLDS", "CSA_RECIPE", "STAGE_RECIPES", "fit_recipe", "TrainedCSA", "train_csa_for_tuning", "CrossFitted"]

# Cross-fitting folds of `pycsa tune --train csa` (--folds): each fold model sees 3/4 of the classes
FOLDS = 4
# The recipe of `pycsa tune --train csa` (and of bench/csa_residual_mpeg7.sh)
CSA_RECIPE = dict(K=(128, 256, 512), L=128, dim=64, depth=2, heads=1, dropout=0.0, drop_path=0.0, epochs=3,
                  batch_size=16, optimizer="adamw", lr=3e-4, warmup_epochs=0, tau=1.0, lam=0.0, loss="positive",
                  residual=True, standardize=True, perturb=2, dense=2)
# The chains whose CSA tune trains over the stage before it, and their recipes (bench/csa_stage_mpeg7.sh):
# over k-reciprocal it beat every training-free re-ranker on MPEG-7; over GNN and alpha-QE+alpha-DBA it did not
# Its training K reach the serving default (1,024, fitted to the data): trained at K up to 512, the chain
# served at K=1,024 scored 0.29 lower on the validation classes (bench/tune_stage_k_experiment.py, section 11
# of the CSA experiments file)
# Each copy of the training set sees k-reciprocal at parameters drawn around its defaults (stage_jitter): on
# MPEG-7 35-69 the chain scored 86.13/85.56/85.92 over seeds 0-2 without, 86.43/86.32 over seeds 0-1 with
# (section 15 of the CSA experiments file; a first run with other draws: 86.29/86.37/86.26)
STAGE_RECIPES = {"k_reciprocal+csa": dict(CSA_RECIPE, K=(128, 256, 512, 1024), perturb=8, stage="k_reciprocal",
                                          stage_jitter=dict(k1=(14, 30), k2=(4, 8), lambda_value=(0.1, 0.5)))}


class CrossFitted(Reranker):
    """Each query re-ranked by the re-ranker of its fold: ``rerankers[f]`` takes the queries
    whose ``query_fold`` is f (trained on the other folds' classes)."""

    def __init__(self, rerankers: list[Reranker], query_fold: np.ndarray):
        self.rerankers = list(rerankers)
        self.query_fold = _numpy(query_fold)
        if self.query_fold.min(initial=0) < 0 or self.query_fold.max(initial=0) >= len(self.rerankers):
            raise ValueError(f"query_fold: folds must be 0..{len(self.rerankers) - 1}")

    def fit(self, database, *, progress: Progress = None) -> "CrossFitted":
        for r in self.rerankers:
            r.fit(database, progress=progress)
        return self

    def _rerank(self, Q, X, ranking: Ranking, progress: Progress) -> Ranking:
        if Q.shape[0] != self.query_fold.shape[0]:
            raise ValueError(f"queries: {Q.shape[0]} rows, but the folds were made for {self.query_fold.shape[0]}")
        indices, scores = ranking.indices.clone(), ranking.scores.clone()
        # every item a query against the others: each fold's queries are some of the rows, so
        # their own rows are named for the re-ranker's leave-one-out handling
        loo = same_rows(Q, X)
        for f, r in enumerate(self.rerankers):
            rows = torch.from_numpy(np.nonzero(self.query_fold == f)[0]).to(Q.device)
            if rows.numel() == 0:
                continue
            sub_ranking = Ranking(ranking.indices[rows], ranking.scores[rows])
            if loo and getattr(r, "leave_one_out", None) is not False and "own" in inspect.signature(r.rerank).parameters:
                sub = r.rerank(Q[rows], X, sub_ranking, own=rows)
            else:
                sub = r.rerank(Q[rows], X, sub_ranking)
            indices[rows] = torch.as_tensor(sub.indices).to(indices.device, indices.dtype)
            scores[rows] = torch.as_tensor(sub.scores).to(scores.device, scores.dtype)
        if progress is not None:
            progress(Q.shape[0], Q.shape[0])
        return Ranking(indices, scores)


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@dataclass
class TrainedCSA:
    folds: list  # folds[f]: the model trained without fold f's classes
    query_fold: np.ndarray  # each query's fold
    final: object  # trained on every class: the model to keep
    seconds: float
    recipe: dict  # as used for the final model (K and L fitted to the data)

    def factory(self, **serve) -> Callable[..., Reranker]:
        """params -> the cross-fitted CSA re-ranker (what the tuner scores). ``serve``: fixed
        constructor arguments (e.g. k from --csa-k); they are not searched (``make.pinned``)."""
        from .rerank.csa import CSAReranker

        def make(**params):
            return CrossFitted([CSAReranker(model=m, **{**params, **serve}) for m in self.folds], self.query_fold)
        from .tune import model_stage

        make.pinned = dict(serve)
        make.stage = model_stage(self.final)  # None, or the stage before it keeps the models' parameters
        return make


def fit_recipe(n: int, recipe: dict) -> dict:
    """The recipe with its list lengths and anchors fitted to n training images."""
    out = dict(recipe)
    out["L"] = min(out["L"], n - 1)
    ks = sorted({min(k, n - 1) for k in (out["K"] if isinstance(out["K"], (list, tuple)) else [out["K"]])})
    out["K"] = ks if len(ks) > 1 else ks[0]
    return out


def train_csa_for_tuning(X, labels, *, recipe: dict | None = None, seed: int = 0, folds: int = FOLDS,
                         report: Callable[[str], None] | None = None) -> TrainedCSA:
    """Trains the ``folds`` cross-fitted CSA models and the final one on labelled features
    (every item a query against the others). Needs at least two classes; with fewer classes
    than ``folds``, one fold per class."""
    import time

    from .rerank.csa import train

    recipe = dict(CSA_RECIPE if recipe is None else recipe)
    seed = integer(seed, "seed", 0, 2 ** 32 - 1)
    folds = integer(folds, "folds", 2)
    X = torch.as_tensor(_numpy(X)).float()
    y = _numpy(labels)
    if y.shape != (X.shape[0],):
        raise ValueError(f"labels: expected {X.shape[0]} labels (one per row of X), got shape {y.shape}")
    classes = np.unique(y[y >= 0])
    if classes.size < 2:
        raise ValueError(f"labels: training CSA inside tune needs at least 2 classes (found {classes.size}): "
                         "the classes are dealt into folds, a model trained without each fold's")
    nf = min(folds, classes.size)
    # deal the classes round-robin: sorted ids often follow some order of the data
    fold_of_class = {c: i % nf for i, c in enumerate(classes)}
    query_fold = np.array([fold_of_class.get(c, 0) for c in y])
    t0 = time.monotonic()
    models = []
    for f in range(nf):
        rows = np.nonzero((query_fold != f) & (y >= 0))[0]
        if rows.size < 3:
            raise ValueError(f"labels: the classes outside fold {f + 1} have {rows.size} items; "
                             "CSA needs lists of at least 3")
        if report is not None:
            report(f"csa: training the model for fold {f + 1} of {nf} on {rows.size} items (the other folds' classes)")
        models.append(train(X[rows], y[rows], seed=seed, **fit_recipe(rows.size, recipe)).model)
    if report is not None:
        report(f"csa: training the final model on all {X.shape[0]} items")
    used = fit_recipe(X.shape[0], recipe)
    final = train(X, y, seed=seed, **used).model
    return TrainedCSA(models, query_fold, final, time.monotonic() - t0, used)
