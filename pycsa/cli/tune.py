"""`pycsa tune`: the best parameters of each re-ranker on a labelled validation set."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pycsa
from pycsa.datasets import load_gnd, load_retrieval_features
from pycsa.tune import Scorer, tune
from pycsa.tune_learned import FOLDS

from .output import echo, float_arg, format_table, int_arg, output_path, progress_bar, written
from .rerankers import checkpoints, learned_args, parse_methods, refuse_unused


def add_parser(sub) -> None:
    tu = sub.add_parser("tune", help="search each re-ranker's parameters on a labelled validation set")
    tu.add_argument("--features", required=True,
                    help="validation features: labelled (classes, or re-ID with cameras), or with --gnd. Its "
                         "classes must not be those of the data you will test on (use --class-split, or a "
                         "separate file)")
    truth = tu.add_mutually_exclusive_group()
    truth.add_argument("--gnd", help="Revisited Oxford/Paris ground truth for the features' queries")
    truth.add_argument("--labels", action="store_true", help="score with the labels in the features file (default)")
    tu.add_argument("--class-split", default="all", choices=["all", "first", "second"],
                    help="tune on one half of the classes only (then evaluate on the other half)")
    tu.add_argument("--method", default="all",
                    help="comma-separated re-rankers or chains 'a+b', or 'all' (every training-free one, plus "
                         "learned ones given --checkpoint)")
    tu.add_argument("--checkpoint", action="append", help="METHOD=PATH of a trained model (a bare PATH is csa)")
    tu.add_argument("--csa-k", type=int_arg(), default=None, help="CSA list length K at serving (default 1024)")
    tu.add_argument("--train", default=None, choices=["csa"],
                    help="train this learned method here (pycsa.tune_learned.CSA_RECIPE), scored cross-fitted: "
                         "each fold's queries are re-ranked by a model trained on the other folds' classes. The "
                         "model trained on all of them is written beside --out (NAME.csa.pt) and used by "
                         "--config. With --method all, csa and the chains ending in it are tuned too; "
                         "k_reciprocal+csa gets a model trained over k-reciprocal (NAME.k_reciprocal+csa.pt)")
    tu.add_argument("--folds", type=int_arg(2), default=None,
                    help="with --train: the cross-fitting folds; fold f's queries are scored by a model trained "
                         f"without fold f's classes (default {FOLDS}: each model sees {FOLDS - 1}/{FOLDS} of them)")
    tu.add_argument("--budget", type=float, default=None,
                    help="seconds in all (shared between the methods); the best found so far is kept")
    tu.add_argument("--margin", type=float_arg(0.0), default=0.1,
                    help="a parameter leaves its current value only for a gain above this many points (0.1)")
    tu.add_argument("--out", required=True, help="JSON file of the tuned settings (for --config and "
                                                 "pycsa.create_from_config)")
    tu.set_defaults(run=run)


def run(args) -> int:
    if not args.out.endswith(".json"):
        raise ValueError(f"--out: must end in .json, got {args.out}")
    # checked here rather than by an argparse type: the tests hold `pycsa tune` to return 2 for it
    if args.budget is not None and not (args.budget > 0 and math.isfinite(args.budget)):
        raise ValueError(f"--budget: must be a positive number of seconds, got {args.budget}")
    out = output_path(args.out, "--out")  # before the search, not after it
    # rrt refused before the checkpoint files are looked at: no checkpoint makes it tunable
    if any("rrt" in m.split("+") for m in parse_methods(args.method, set(checkpoints(args.checkpoint, False)))):
        raise ValueError("--method: rrt cannot be tuned yet (tune takes no local descriptors); leave it out")
    learned = learned_args(args)
    if args.train is not None and args.train in learned["checkpoints"]:
        raise ValueError(f"--train {args.train}: a checkpoint for it is given too (--checkpoint); "
                         "give one or the other")
    if args.folds is not None and args.train is None:
        raise ValueError("--folds: only with --train (they are the folds of the model trained here)")
    trainable = {args.train} if args.train else set()
    methods = parse_methods(args.method, learned=set(learned["checkpoints"]) | trainable)
    if args.train is not None:
        if "all" in [m.strip() for m in args.method.split(",")]:
            # the chains the paper and issue #18 ask about: CSA as the last stage
            methods += [f"{m}+csa" for m in ("k_reciprocal", "gnn", "alpha_qe_dba") if f"{m}+csa" not in methods]
        if not any(args.train in m.split("+") for m in methods):
            raise ValueError(f"--train {args.train}: none of the methods uses it (--method {args.method})")
    refuse_unused(args, methods, learned)
    fs = load_retrieval_features(args.features)
    if args.class_split != "all":
        fs = fs.class_half(args.class_split)
    gnd = None
    if args.gnd:
        mode, gnd = "revisited", load_gnd(args.gnd)
        if len(gnd["gnd"]) != fs.queries.shape[0] or len(gnd["imlist"]) != fs.database.shape[0]:
            raise ValueError(f"--gnd: {args.gnd} does not list the features' {fs.queries.shape[0]} queries and "
                             f"{fs.database.shape[0]} database images")
    elif fs.has_cams and fs.has_labels:
        mode = "reid"
    elif fs.has_labels:
        mode = "classes"
    else:
        raise ValueError(f"--features: {args.features} has no labels: pass --gnd FILE, or features with labels")
    if len(fs.splits()) > 1:
        fs = fs.splits()[0]  # the first split of the test identities is the validation set
    stage_kwargs = {}
    for name, path in learned["checkpoints"].items():
        stage_kwargs[name] = {"checkpoint": path}
        if name == "csa" and learned.get("csa_k") is not None:
            stage_kwargs[name]["k"] = learned["csa_k"]
    trained = None
    if args.train is not None:
        if mode != "classes" or not fs.queries_are_database:
            raise ValueError(f"--train {args.train}: needs one labelled matrix (class labels, every item a query "
                             f"against the others); {args.features} is scored by the {mode} protocol"
                             + ("" if fs.queries_are_database else " with queries of its own"))
        from pycsa.tune_learned import STAGE_RECIPES, train_csa_for_tuning

        serve = {} if learned.get("csa_k") is None else {"k": learned["csa_k"]}
        trained = {}
        # the plain model serves csa and every chain but those with a model of their own
        for key in ["csa"] + [chain for chain in STAGE_RECIPES if chain in methods]:
            recipe = STAGE_RECIPES.get(key)
            trained[key] = train_csa_for_tuning(fs.database, fs.db_labels, recipe=recipe,
                                                folds=args.folds or FOLDS,
                                                report=lambda m, key=key: echo(m.replace("csa:", f"{key}:", 1)))
            stage_kwargs[key] = trained[key].factory(**serve)
            echo(f"{key}: trained in {trained[key].seconds:.1f} s")
    scorer = Scorer(mode, fs, gnd)
    Q, X = fs.queries, fs.database
    print(f"pycsa {pycsa.__version__} tune: {args.features}"
          + (f" (classes: {args.class_split} half)" if args.class_split != "all" else "")
          + f": {Q.shape[0]} queries, {X.shape[0]} database items; score: {scorer.metric}")
    print(f"methods: {', '.join(methods)}" + (f"; budget {args.budget:g} s" if args.budget else "") + "\n")
    with progress_bar("tune", unit="setting") as cb:
        result = tune(methods, Q, X, scorer, learned=stage_kwargs, budget=args.budget, margin=args.margin,
                      progress=cb, report=echo)
    result.update(features=str(args.features), class_split=args.class_split, protocol=mode,
                  gnd=args.gnd, num_queries=int(Q.shape[0]), num_database=int(X.shape[0]))
    rows = [{"method": "cosine (no re-ranking)", "default": f"{result['cosine']:.2f}", "tuned": "",
             "parameters": ""}]
    for name, entry in sorted(result["methods"].items(), key=lambda kv: -kv[1]["score"]):
        params = " + ".join(", ".join(f"{k}={v}" for k, v in p.items()) or "-" for _, p in entry["stages"])
        rows.append({"method": name, "default": f"{entry['default_score']:.2f}", "tuned": f"{entry['score']:.2f}",
                     "parameters": params})
    print("\n" + format_table(rows, ["method", "default", "tuned", "parameters"]))
    print(f"\n{scorer.metric} in percent on the validation set; best: {result.get('best')}")
    if trained is not None:
        from pycsa.csa import save_checkpoint

        result["checkpoints"] = {}
        for key, model in trained.items():
            model_path = Path(str(out)[:-len(".json")] + f".{key}.pt")
            used = {**model.recipe, "K": list(model.recipe["K"]) if isinstance(model.recipe["K"], (list, tuple))
                    else model.recipe["K"]}
            save_checkpoint(model_path, model.final, train_config={**used, "trained_by": "pycsa tune --train csa"})
            result["checkpoints"][key] = model_path.name  # beside the config: they move together
            print(f"wrote {model_path}: CSA trained on all {X.shape[0]} items"
                  + (f" over {model.final.stage} (for {key})" if model.final.stage else "") + " (--config uses it)")
    # NaN is no JSON and, as a score, would mean nothing was tuned; serialised before the file is made
    text = json.dumps(result, indent=2, allow_nan=False)
    with written(out) as tmp, open(tmp, "w") as f:  # removed again if the write fails
        f.write(text)
    print(f"wrote {out}: `pycsa eval --config {out}` or pycsa.create_from_config('{out}')")
    return 0
