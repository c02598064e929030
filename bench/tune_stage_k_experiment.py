"""Issue #18 experiment: does training CSA (the chain k_reciprocal+csa's model, pycsa.tune_learned's
stage recipe, or with --method csa the plain CSA_RECIPE) at longer lists make it better at K=1,024, the
serving default tune starts from?

Trains the cross-fitted fold models and the final one as `pycsa tune --train csa` does, on MPEG-7
classes 0-34, with the recipe's training K replaced by --train-k; then scores the method at each
serving K cross-fitted on classes 0-34 (what tune sees) and with the final model on classes 35-69.

    python bench/tune_stage_k_experiment.py --train-k 128,256,512,1024 [--method csa]
"""
import argparse
import time

import pycsa
from pycsa.datasets import load_retrieval_features
from pycsa.ranking import Chain, Ranking
from pycsa.rerank.csa import CSAReranker
from pycsa.tune import Scorer, tune_method
from pycsa.tune_learned import CSA_RECIPE, STAGE_RECIPES, train_csa_for_tuning

ap = argparse.ArgumentParser()
ap.add_argument("--data", default="../shared/data/mpeg7/mpeg7_mobilenetv2_imagenet_gap1280.npz")
ap.add_argument("--train-k", default="128,256,512,1024", help="training list lengths (comma-separated)")
ap.add_argument("--serve-k", default="128,256,512,1024")
ap.add_argument("--method", default="k_reciprocal+csa", choices=["k_reciprocal+csa", "csa"])
args = ap.parse_args()

method = args.method
recipe = dict(STAGE_RECIPES.get(method, CSA_RECIPE), K=tuple(int(k) for k in args.train_k.split(",")))
stage = recipe.get("stage")  # None: csa re-ranks the cosine ranking
serve = [int(k) for k in args.serve_k.split(",")]
fs = load_retrieval_features(args.data)
val, test = fs.class_half("first"), fs.class_half("second")
print(f"recipe: {recipe}")
t0 = time.monotonic()
trained = train_csa_for_tuning(val.database, val.db_labels, recipe=recipe, report=print)
print(f"trained in {time.monotonic() - t0:.1f} s")


def cosine(part) -> Ranking:
    """Every item a query against the others: the whole database, as the class protocol needs."""
    X = part.database
    s, i = pycsa.search(X, X, X.shape[0])
    return Ranking(i, s)


ranking = {"val": cosine(val), "test": cosine(test)}


def score(part, name, reranker=None) -> float:
    X = part.database
    out = ranking[name] if reranker is None else reranker.fit(X).rerank(X, X, ranking[name])
    return Scorer("classes", part)(out)


ref = stage or "cosine"
ref_val = score(val, "val", pycsa.create(stage) if stage else None)
ref_test = score(test, "test", pycsa.create(stage) if stage else None)
# classes 0-34 exactly as tune scores the method (its trials: the default K=1,024 and the searched ones)
result = tune_method(method, val.database, val.database, ranking["val"], Scorer("classes", val),
                     learned={method: trained.factory()})
on_val = {({"k": 1024} | t["moved"][-1]).get("k"): t["score"] for t in result.to_json()["trials"]}
print(f"\ntraining K {args.train_k}; mAP, classes 0-34 cross-fitted (tune's trials) | classes 35-69, final model")
print(f"{ref + ' alone (defaults)':36s} {ref_val:6.2f} | {ref_test:6.2f}")
for k in serve:
    csa = CSAReranker(model=trained.final, k=k)
    t = score(test, "test", Chain([pycsa.create(stage), csa]) if stage else csa)
    print(f"{method + f', K={k}':36s} {on_val.get(k, float('nan')):6.2f} | {t:6.2f}")
