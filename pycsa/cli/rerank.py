"""`pycsa rerank`: the initial search and one re-ranker on a features file; saves the ranking."""
from __future__ import annotations

import numpy as np

import pycsa
from pycsa.datasets import load_retrieval_features

from .output import int_arg, output_path, progress_bar, written
from .rerankers import learned_args, parse_methods, refuse_unused, run_reranker, with_tuned


def add_parser(sub) -> None:
    rr = sub.add_parser("rerank", help="initial search and one re-ranker on a features file; saves the ranking")
    rr.add_argument("--features", required=True)
    rr.add_argument("--method", required=True, help="re-ranker name or chain 'a+b'")
    rr.add_argument("--checkpoint", action="append", help="METHOD=PATH of a trained model (a bare PATH is csa)")
    rr.add_argument("--locals", help="local descriptors of the database (rrt)")
    rr.add_argument("--query-locals", help="local descriptors of the queries when they are not the database rows")
    rr.add_argument("--rrt-top", type=int_arg(), default=None, help="RRT re-ranks each query's top-N (default 100)")
    rr.add_argument("--k", type=int_arg(), default=1000, help="ranking depth (default 1000)")
    rr.add_argument("--csa-k", type=int_arg(), default=None, help="CSA list length K at serving (default 1024)")
    rr.add_argument("--config", help="a `pycsa tune` result (tuned.json): tuned methods run with its parameters")
    rr.add_argument("--out", required=True, help=".npz file for the new ranking (indices, scores)")
    rr.set_defaults(run=run)


def run(args) -> int:
    out = output_path(args.out, "--out", ".npz")  # numpy appends .npz to a name without it
    learned = learned_args(args)
    methods = parse_methods(args.method, learned=set(learned["checkpoints"]))
    if learned["config"] is not None:
        methods = with_tuned(methods, learned, args.method, args.config)
    if len(methods) != 1:
        raise ValueError("--method: name one re-ranker (or one chain 'a+b') for `pycsa rerank`")
    refuse_unused(args, methods, learned)
    fs = load_retrieval_features(args.features)
    Q, X = fs.queries, fs.database
    k = min(X.shape[0], args.k)
    with progress_bar("initial search") as cb:
        scores, indices = pycsa.search(Q, X, k, progress=cb)
    new, seconds = run_reranker(methods[0], Q, X, pycsa.Ranking(indices, scores), learned)
    arrays = {"indices": np.asarray(new.indices), "scores": np.asarray(new.scores)}
    if fs.names is not None:  # e.g. from `pycsa extract`: the ranking can be read without the features file
        arrays["database_names"] = fs.names
        if fs.queries_are_database:
            arrays["query_names"] = fs.names
    with written(out) as tmp:
        np.savez(tmp, **arrays)
    named = ", database_names" if "database_names" in arrays else ""
    print(f"{methods[0]}: re-ranked {Q.shape[0]} queries (top {k} of {X.shape[0]}) in {seconds:.3f} s; "
          f"wrote {out} (indices, scores: queries x {k}, best first{named})")
    return 0

