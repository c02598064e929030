"""`pycsa eval`: the initial search and re-rankers on a features file, scored by its protocol."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

import pycsa
from pycsa.datasets import load_gnd, load_retrieval_features
from pycsa.evaluate import bullseye, class_map, reid, revisited

from .output import cell, format_table, int_arg, output_path, pct, plot_bars, plot_path, progress_bar, written, write_json
from .rerankers import learned_args, parse_methods, refuse_unused, run_reranker, with_tuned
from .train import require_classes


def add_parser(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate the initial search and re-rankers on a features file")
    ev.add_argument("--features", required=True,
                    help="features file: .npy, .npz, .pt or .mat (queries/database, or one matrix with labels)")
    truth = ev.add_mutually_exclusive_group()
    truth.add_argument("--gnd", help="Revisited Oxford/Paris ground truth (gnd_*.pkl) for the features' queries")
    truth.add_argument("--labels", action="store_true",
                       help="score with the labels in the features file (the default when it has labels; "
                            "re-ID protocol when it also has cameras)")
    ev.add_argument("--method", default="all", help="comma-separated re-rankers, or 'all' (default; see `pycsa methods`)")
    ev.add_argument("--k", type=int_arg(), default=1000,
                    help="ranking depth with --gnd (default 1000, capped at the database size); "
                         "label protocols rank the whole database")
    ev.add_argument("--json", help="also write the table rows as JSON to this file")
    ev.add_argument("--plot", help="also write a bar chart of mAP per method to this PNG file (needs matplotlib)")
    ev.add_argument("--checkpoint", action="append",
                    help="METHOD=PATH of a trained model (csa, rrt; a bare PATH is csa); repeatable. "
                         "'all' includes a learned method only with its checkpoint")
    ev.add_argument("--locals", help="local descriptors of the database (rrt): .npz/.pt with local, offsets[, scale]")
    ev.add_argument("--query-locals", help="local descriptors of the queries when they are not the database rows")
    ev.add_argument("--rrt-top", type=int_arg(), default=None, help="RRT re-ranks each query's top-N (default 100)")
    ev.add_argument("--class-split", default="all", choices=["all", "first", "second"],
                    help="evaluate on one half of the classes only (e.g. the half a model was not trained on)")
    ev.add_argument("--csa-k", type=int_arg(), default=None, help="CSA list length K at serving (default 1024)")
    ev.add_argument("--config", help="a `pycsa tune` result (tuned.json): tuned methods run with its parameters, "
                                     "and --method all means the methods it tuned")
    ev.set_defaults(run=run)


def run(args) -> int:
    # output files checked before the work, under the names really written
    if args.json:
        args.json = output_path(args.json, "--json")
    if args.plot:
        args.plot = plot_path(args.plot)
    learned = learned_args(args)
    methods = parse_methods(args.method, learned=set(learned["checkpoints"]))
    if learned["config"] is not None:
        methods = with_tuned(methods, learned, args.method, args.config)
    refuse_unused(args, methods, learned)
    fs = load_retrieval_features(args.features)
    if args.class_split != "all":
        rows = fs.class_half_rows(args.class_split)
        fs = fs.subset(rows)
        if learned["locals"] is not None:
            learned["locals"] = learned["locals"].subset(rows)
    Q, X = fs.queries, fs.database
    if args.gnd:
        mode = "revisited"
        gnd = load_gnd(args.gnd)
        _check_gnd(gnd, fs, args.gnd)
    elif fs.has_cams:
        mode = "reid"
    elif fs.has_labels:
        mode = "classes"
    elif args.labels:
        raise ValueError(f"--labels: {args.features} has no labels (keys used: {fs.keys})")
    else:
        raise ValueError(f"{args.features} has no labels: pass --gnd FILE (Revisited Oxford/Paris ground truth)")
    if mode != "revisited" and not fs.has_labels:
        raise ValueError(f"{args.features}: has cameras but no labels (identities)")
    if mode == "classes":
        require_classes(fs.query_labels, f"--features: {args.features}")
    # class mAP and re-ID need every database item ranked
    k = min(X.shape[0], args.k) if mode == "revisited" else X.shape[0]

    kind = "every item is a query against all items" if fs.queries_are_database else f"{Q.shape[0]} queries"
    layout = ", stored as d x N columns (transposed)" if fs.transposed else ""
    print(f"pycsa {pycsa.__version__} eval: {args.features}: {kind}, {X.shape[0]} database items, d={X.shape[1]}{layout}")
    protocol = {"revisited": f"Revisited Oxford/Paris ({args.gnd})", "reid": "re-ID (CMC, mAP)",
                "classes": "class labels (mAP, bullseye@40)"}[mode]
    parts = fs.splits()
    if len(parts) > 1:
        protocol += f", the mean over the file's {len(parts)} splits of the test identities"
    print(f"protocol: {protocol}; ranking depth k={k}"
          + (" (the whole database, as this protocol needs)" if mode != "revisited" else "") + "\n")

    def score(method, indices, scores, seconds, part):
        if mode == "revisited":
            return _eval_revisited(method, indices, gnd, seconds)
        if mode == "reid":
            return _eval_reid(method, indices, scores, part, seconds)
        return _eval_classes(method, indices, part, seconds)

    per_split = []
    for part in parts:
        t0 = time.perf_counter()
        with progress_bar("initial search") as cb:  # a split's gallery is a part of the whole
            scores, indices = pycsa.search(part.queries, part.database, min(k, part.database.shape[0]), progress=cb)
        rows = score("cosine", indices, scores, time.perf_counter() - t0, part)
        ranking = pycsa.Ranking(indices, scores)
        for name in methods:
            new, seconds = run_reranker(name, part.queries, part.database, ranking, learned)
            rows += score(name, new.indices, new.scores, seconds, part)
        per_split.append(rows)
    rows = _mean_rows(per_split)

    columns = {"revisited": ["method", "protocol", "mAP", "mP@1", "mP@5", "mP@10", "time (s)"],
               "reid": ["method", "rank-1", "rank-5", "rank-10", "mAP", "time (s)"],
               "classes": ["method", "mAP", "bullseye", "time (s)"]}[mode]
    shown = []
    for i, r in enumerate(rows):
        cells = {c: cell(r[c], ".3f" if c == "time (s)" else ".2f") for c in columns}
        if mode == "revisited" and i % 3:  # one method per three protocol rows
            cells["method"], cells["time (s)"] = "", ""
        shown.append(cells)
    print(format_table(shown, columns))
    print("\nscores in percent; 'cosine' is the initial search; time includes each method's offline work.")
    empty = sorted({r.get("protocol", "") for r in rows for v in r.values() if isinstance(v, float) and math.isnan(v)})
    if empty:  # e.g. a gnd where no query has a hard positive: nothing to score, not a score of 0
        print(f"n/a: no query has a positive under the {', '.join(p or 'this' for p in empty)} protocol "
              "(null in the --json file)")
    if args.json:
        write_json(args.json, {"features": str(args.features), "gnd": args.gnd, "protocol": mode, "k": k,
                               "num_queries": int(Q.shape[0]), "num_database": int(X.shape[0]), "rows": rows})
        print(f"wrote {args.json}")
    if args.plot:
        name = Path(args.features).name
        title = {"revisited": f"mAP per method and protocol: {name}", "reid": f"re-ID mAP per method: {name}",
                 "classes": f"class mAP per method: {name}"}[mode]
        with written(args.plot) as tmp:
            plot_bars(rows, mode, title, tmp)
        print(f"wrote {args.plot}")
    return 0


def _mean_rows(per_split: list[list[dict]]) -> list[dict]:
    """Each score (and time) averaged over the splits, row by row."""
    if len(per_split) == 1:
        return per_split[0]

    def mean(i: int, c: str) -> float:
        return round(float(np.mean([rows[i][c] for rows in per_split])), 3 if c == "time (s)" else 2)

    return [{c: mean(i, c) if isinstance(v, (int, float)) else v for c, v in row.items()}
            for i, row in enumerate(per_split[0])]


def _eval_revisited(method: str, indices, gnd, seconds: float) -> list[dict]:
    res = revisited(np.asarray(indices), gnd)
    return [{"method": method, "protocol": proto, "mAP": pct(res[proto]["mAP"]),
             "mP@1": pct(res[proto]["mP@1"]), "mP@5": pct(res[proto]["mP@5"]),
             "mP@10": pct(res[proto]["mP@10"]), "time (s)": round(seconds, 3)}
            for proto in ("easy", "medium", "hard")]


def _eval_classes(method: str, indices, fs, seconds: float) -> list[dict]:
    ranks = np.asarray(indices)
    m = class_map(ranks, fs.query_labels, fs.db_labels, exclude_self=fs.queries_are_database)
    b = bullseye(ranks, fs.query_labels, fs.db_labels)
    return [{"method": method, "mAP": pct(m), "bullseye": pct(b), "time (s)": round(seconds, 3)}]


def _eval_reid(method: str, indices, scores, fs, seconds: float) -> list[dict]:
    indices = np.asarray(indices)
    q, n = indices.shape[0], fs.database.shape[0]
    # scored by the ranking's order, not its scores: re-rankers that re-score only their top
    # (SuperGlobal, CSA, RRT, truncated diffusion) keep the input's scores past it
    dist = np.full((q, n), float(indices.shape[1]))
    dist[np.arange(q)[:, None], indices] = np.arange(indices.shape[1])[None, :]
    cmc, m = reid(dist, fs.query_labels, fs.db_labels, fs.query_cams, fs.db_cams, max_rank=min(10, n))
    at = lambda r: pct(cmc[min(r, len(cmc)) - 1])  # noqa: E731
    return [{"method": method, "rank-1": at(1), "rank-5": at(5), "rank-10": at(10), "mAP": pct(m),
             "time (s)": round(seconds, 3)}]


def _check_gnd(gnd: dict, fs, path) -> None:
    nq, nd = fs.queries.shape[0], fs.database.shape[0]
    if len(gnd["gnd"]) != nq:
        raise ValueError(f"--gnd: {path} has {len(gnd['gnd'])} queries but the features have {nq} "
                         "(the gnd must list the features' queries, in order)")
    if len(gnd["imlist"]) != nd:
        raise ValueError(f"--gnd: {path} has {len(gnd['imlist'])} database images but the features have {nd}")

