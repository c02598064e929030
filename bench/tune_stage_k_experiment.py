"""Issue #18 experiment: does training the chain's CSA (k_reciprocal+csa, pycsa.tune_learned's
stage recipe) at longer lists make it better at K=1,024, the serving default tune starts from?

Trains the cross-fitted fold models and the final one as `pycsa tune --train csa` does, on MPEG-7
classes 0-34, with the recipe's training K replaced by --train-k; then scores the chain at each
serving K cross-fitted on classes 0-34 (what tune sees) and with the final model on classes 35-69.

    python bench/tune_stage_k_experiment.py --train-k 128,256,512,1024
"""
import argparse
import time



import pycsa
from pycsa.datasets import load_retrieval_features
from pycsa.ranking import Chain, Ranking
from pycsa.rerank.csa import CSAReranker
from pycsa.tune import Scorer, tune_method
from pycsa.tune_learned import STAGE_RECIPES, train_csa_for_tuning

ap = argparse.ArgumentParser()
ap.add_argument("--data", default="../shared/data/mpeg7/mpeg7_mobilenetv2_imagenet_gap1280.npz")
ap.add_argument("--train-k", default="128,256,512,1024", help="training list lengths (comma-separated)")
ap.add_argument("--serve-k", default="128,256,512,1024")
args = ap.parse_args()

chain = "k_reciprocal+csa"
recipe = dict(STAGE_RECIPES[chain], K=tuple(int(k) for k in args.train_k.split(",")))
serve = [int(k) for k in args.serve_k.split(",")]
fs = load_retrieval_features(args.data)
val, test = fs.class_half("first"), fs.class_half("second")
print(f"recipe: {recipe}")
t0 = time.monotonic()
trained = train_csa_for_tuning(val.database, val.db_labels, recipe=recipe, report=print)
print(f"trained in {time.monotonic() - t0:.1f} s")


def score(part, make):
    X = part.database
    s, i = pycsa.search(X, X, X.shape[0])
    ranking = Ranking(i, s)
    return Scorer("classes", part)(make().fit(X).rerank(X, X, ranking))


stage = pycsa.create(recipe["stage"])
kr_val, kr_test = score(val, lambda: stage), score(test, lambda: stage)
# classes 0-34 exactly as tune scores the chain (its trials: the default K=1,024 and the searched ones)
Xv = val.database
s, i = pycsa.search(Xv, Xv, Xv.shape[0])
result = tune_method(chain, Xv, Xv, Ranking(i, s), Scorer("classes", val), learned={chain: trained.factory()})
on_val = {({"k": 1024} | t["moved"][1]).get("k"): t["score"] for t in result.to_json()["trials"]}
print(f"\ntraining K {args.train_k}; mAP, classes 0-34 cross-fitted (tune's trials) | classes 35-69, final model")
print(f"{'k_reciprocal alone (defaults)':36s} {kr_val:6.2f} | {kr_test:6.2f}")
for k in serve:
    t = score(test, lambda: Chain([pycsa.create(recipe["stage"]), CSAReranker(model=trained.final, k=k)]))
    print(f"{chain + f', K={k}':36s} {on_val.get(k, float('nan')):6.2f} | {t:6.2f}")
