"""The ``pycsa`` command: the only place that prints tables and shows progress bars."""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

import pycsa
from pycsa.datasets import load_gnd, load_retrieval_features
from pycsa.datasets.synthetic import make_retrieval_preset
from pycsa.evaluate import bullseye, class_map, reid, revisited


@contextmanager
def progress_bar(desc: str, unit: str = "query"):
    """A progress callback (done, total) drawing a tqdm bar; silent when the work is instant."""
    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit=unit, leave=False, delay=1.0, file=sys.stderr)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def run_reranker(name: str, Q, X, ranking):
    """Fits and applies one re-ranker with progress bars; returns (new ranking, seconds)."""
    reranker = pycsa.create(name)
    t0 = time.perf_counter()
    with progress_bar(f"{name}: offline", unit="item") as cb:
        reranker.fit(X, progress=cb)
    with progress_bar(f"{name}: re-rank") as cb:
        new = reranker.rerank(Q, X, ranking, progress=cb)
    return new, time.perf_counter() - t0


def format_table(rows: list[dict], columns: list[str]) -> str:
    cells = [[str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths)))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _score_row(method: str, indices, gnd, seconds: float) -> dict:
    res = revisited(np.asarray(indices), gnd)
    row = {"method": method}
    for proto in ("easy", "medium", "hard"):
        row[f"{proto} mAP"] = f"{100 * res[proto]['mAP']:.2f}"
    row["mP@10 (M)"] = f"{100 * res['medium']['mP@10']:.2f}"
    row["time (s)"] = f"{seconds:.3f}"
    return row


def run_demo(args) -> int:
    t0 = time.perf_counter()
    data = make_retrieval_preset(args.preset, seed=args.seed)
    gen_s = time.perf_counter() - t0
    Q, X = data.queries, data.database
    k = min(X.shape[0], args.k)
    print(f"pycsa {pycsa.__version__} demo: synthetic '{args.preset}' (seed {args.seed}): "
          f"{Q.shape[0]} queries, {X.shape[0]} database items, d={X.shape[1]}; generated in {gen_s:.2f} s")
    print(f"kernels: C++ {'yes' if pycsa.ops.has_cpu_kernels() else 'NO (reference fallback)'}, "
          f"CUDA {'yes' if pycsa.ops.has_cuda_kernels() else 'no'}; ranking depth k={k}\n")

    t0 = time.perf_counter()
    with progress_bar("initial search") as cb:
        scores, indices = pycsa.search(Q, X, k, progress=cb)
    rows = [_score_row("cosine (initial search)", indices, data.gnd, time.perf_counter() - t0)]
    ranking = pycsa.Ranking(indices, scores)

    methods = _methods(args.methods)
    for name in methods:
        new, seconds = run_reranker(name, Q, X, ranking)
        rows.append(_score_row(name, new.indices, data.gnd, seconds))

    columns = ["method", "easy mAP", "medium mAP", "hard mAP", "mP@10 (M)", "time (s)"]
    print(format_table(rows, columns))
    print("\nmAP in percent, Revisited Oxford protocols on the synthetic set; time includes offline work.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "seed": args.seed, "k": k, "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def _methods(spec: str) -> list[str]:
    """Comma-separated names; 'all' stands for every registered one, 'a+b' for a chain."""
    names = []
    for m in (m.strip() for m in spec.split(",")):
        if m:
            names.extend(pycsa.available() if m == "all" else [m])
    if not names:
        raise ValueError("--method: name at least one re-ranker, or 'all' (see `pycsa methods`)")
    for name in names:
        for part in name.split("+"):
            if part not in pycsa.available():
                raise ValueError(f"--method: unknown re-ranker {part!r}; available: {', '.join(pycsa.available())}")
    return names


def _pct(x: float) -> float:
    return round(100.0 * float(x), 2)


def _eval_revisited(method: str, indices, gnd, seconds: float) -> list[dict]:
    res = revisited(np.asarray(indices), gnd)
    return [{"method": method, "protocol": proto, "mAP": _pct(res[proto]["mAP"]),
             "mP@1": _pct(res[proto]["mP@1"]), "mP@5": _pct(res[proto]["mP@5"]),
             "mP@10": _pct(res[proto]["mP@10"]), "time (s)": round(seconds, 3)}
            for proto in ("easy", "medium", "hard")]


def _eval_classes(method: str, indices, fs, seconds: float) -> list[dict]:
    ranks = np.asarray(indices)
    m = class_map(ranks, fs.query_labels, fs.db_labels, exclude_self=fs.queries_are_database)
    b = bullseye(ranks, fs.query_labels, fs.db_labels)
    return [{"method": method, "mAP": _pct(m), "bullseye": _pct(b), "time (s)": round(seconds, 3)}]


def _eval_reid(method: str, indices, scores, fs, seconds: float) -> list[dict]:
    indices, scores = np.asarray(indices), np.asarray(scores, dtype=np.float64)
    q, n = indices.shape[0], fs.database.shape[0]
    # a full ranking lists every gallery item once, so this fills the whole matrix
    dist = np.empty((q, n))
    dist[np.arange(q)[:, None], indices] = 1.0 - scores
    cmc, m = reid(dist, fs.query_labels, fs.db_labels, fs.query_cams, fs.db_cams, max_rank=min(10, n))
    at = lambda r: _pct(cmc[min(r, len(cmc)) - 1])  # noqa: E731
    return [{"method": method, "rank-1": at(1), "rank-5": at(5), "rank-10": at(10), "mAP": _pct(m),
             "time (s)": round(seconds, 3)}]


def _check_gnd(gnd: dict, fs, path) -> None:
    nq, nd = fs.queries.shape[0], fs.database.shape[0]
    if len(gnd["gnd"]) != nq:
        raise ValueError(f"--gnd: {path} has {len(gnd['gnd'])} queries but the features have {nq} "
                         "(the gnd must list the features' queries, in order)")
    if len(gnd["imlist"]) != nd:
        raise ValueError(f"--gnd: {path} has {len(gnd['imlist'])} database images but the features have {nd}")


def _plot(rows: list[dict], mode: str, title: str, out: str) -> None:
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("--plot needs matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    cmap = plt.get_cmap("tab10")
    if mode == "revisited":  # one group of bars per protocol, one colour per method
        groups = ["easy", "medium", "hard"]
        value = {(r["method"], r["protocol"]): r["mAP"] for r in rows}
        width = 0.8 / len(methods)
        fig, ax = plt.subplots(figsize=(max(7.0, 1.5 + 0.55 * len(methods) * len(groups)), 5.0), dpi=120)
        for i, m in enumerate(methods):
            xs = [g + (i - (len(methods) - 1) / 2) * width for g in range(len(groups))]
            vals = [value[(m, g)] for g in groups]
            bars = ax.bar(xs, vals, width * 0.92, label=m, color=cmap(i % 10))
            ax.bar_label(bars, labels=[f"{v:.1f}" for v in vals], padding=2, fontsize=7)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([g.capitalize() for g in groups])
        ax.set_xlabel("protocol")
        ax.legend(title="method", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:  # one bar per method, named on the axis
        vals = [r["mAP"] for r in rows]
        fig, ax = plt.subplots(figsize=(max(6.0, 1.5 + 1.0 * len(methods)), 4.8), dpi=120)
        bars = ax.bar(range(len(methods)), vals, 0.7, color=[cmap(i % 10) for i in range(len(methods))])
        ax.bar_label(bars, labels=[f"{v:.1f}" for v in vals], padding=2, fontsize=9)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=20 if len(methods) > 6 else 0, ha="right" if len(methods) > 6 else "center")
        ax.set_xlabel("method ('cosine' = initial search, no re-ranking)")
        value = dict(enumerate(vals))
    ax.set_ylabel("mAP (%)")
    top = max(value.values()) if value else 100.0
    ax.set_ylim(0, top * 1.12 + 3 if top > 0 else 1.0)  # room for the value labels
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def run_eval(args) -> int:
    methods = _methods(args.method)
    if args.k < 1:
        raise ValueError(f"--k: must be a positive int, got {args.k}")
    fs = load_retrieval_features(args.features)
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
    # class mAP and re-ID need every database item ranked
    k = min(X.shape[0], args.k) if mode == "revisited" else X.shape[0]

    kind = "every item is a query against all items" if fs.queries_are_database else f"{Q.shape[0]} queries"
    layout = ", stored as d x N columns (transposed)" if fs.transposed else ""
    print(f"pycsa {pycsa.__version__} eval: {args.features}: {kind}, {X.shape[0]} database items, d={X.shape[1]}{layout}")
    protocol = {"revisited": f"Revisited Oxford/Paris ({args.gnd})", "reid": "re-ID (CMC, mAP)",
                "classes": "class labels (mAP, bullseye@40)"}[mode]
    print(f"protocol: {protocol}; ranking depth k={k}"
          + (" (the whole database, as this protocol needs)" if mode != "revisited" else "") + "\n")

    def score(method, indices, scores, seconds):
        if mode == "revisited":
            return _eval_revisited(method, indices, gnd, seconds)
        if mode == "reid":
            return _eval_reid(method, indices, scores, fs, seconds)
        return _eval_classes(method, indices, fs, seconds)

    t0 = time.perf_counter()
    with progress_bar("initial search") as cb:
        scores, indices = pycsa.search(Q, X, k, progress=cb)
    rows = score("cosine", indices, scores, time.perf_counter() - t0)
    ranking = pycsa.Ranking(indices, scores)
    for name in methods:
        new, seconds = run_reranker(name, Q, X, ranking)
        rows += score(name, new.indices, new.scores, seconds)

    columns = {"revisited": ["method", "protocol", "mAP", "mP@1", "mP@5", "mP@10", "time (s)"],
               "reid": ["method", "rank-1", "rank-5", "rank-10", "mAP", "time (s)"],
               "classes": ["method", "mAP", "bullseye", "time (s)"]}[mode]
    shown = []
    for i, r in enumerate(rows):
        cells = {c: (f"{r[c]:.3f}" if c == "time (s)" else f"{r[c]:.2f}" if isinstance(r[c], float) else r[c])
                 for c in columns}
        if mode == "revisited" and i % 3:  # one method per three protocol rows
            cells["method"], cells["time (s)"] = "", ""
        shown.append(cells)
    print(format_table(shown, columns))
    print("\nscores in percent; 'cosine' is the initial search; time includes each method's offline work.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"features": str(args.features), "gnd": args.gnd, "protocol": mode, "k": k,
                       "num_queries": int(Q.shape[0]), "num_database": int(X.shape[0]), "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        name = Path(args.features).name
        title = {"revisited": f"mAP per method and protocol: {name}", "reid": f"re-ID mAP per method: {name}",
                 "classes": f"class mAP per method: {name}"}[mode]
        _plot(rows, mode, title, args.plot)
        print(f"wrote {args.plot}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pycsa", description="Fast re-ranking for image retrieval.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="synthetic benchmark: initial search and every re-ranker, as a table")
    demo.add_argument("--preset", default="roxford", choices=["small", "roxford", "large"])
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--k", type=int, default=1000, help="ranking depth (default 1000)")
    demo.add_argument("--methods", default="all", help="comma-separated re-rankers, or 'all' (see `pycsa methods`)")
    demo.add_argument("--json", help="also write the table as JSON to this file")
    demo.set_defaults(run=run_demo)

    ev = sub.add_parser("eval", help="evaluate the initial search and re-rankers on a features file")
    ev.add_argument("--features", required=True,
                    help="features file: .npy, .npz, .pt or .mat (queries/database, or one matrix with labels)")
    truth = ev.add_mutually_exclusive_group()
    truth.add_argument("--gnd", help="Revisited Oxford/Paris ground truth (gnd_*.pkl) for the features' queries")
    truth.add_argument("--labels", action="store_true",
                       help="score with the labels in the features file (the default when it has labels; "
                            "re-ID protocol when it also has cameras)")
    ev.add_argument("--method", default="all", help="comma-separated re-rankers, or 'all' (default; see `pycsa methods`)")
    ev.add_argument("--k", type=int, default=1000,
                    help="ranking depth with --gnd (default 1000, capped at the database size); "
                         "label protocols rank the whole database")
    ev.add_argument("--json", help="also write the table rows as JSON to this file")
    ev.add_argument("--plot", help="also write a bar chart of mAP per method to this PNG file (needs matplotlib)")
    ev.set_defaults(run=run_eval)

    methods = sub.add_parser("methods", help="list the re-rankers")
    methods.set_defaults(run=lambda a: print("\n".join(pycsa.available())) or 0)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, IndexError, FileNotFoundError, ImportError) as exc:
        print(f"pycsa: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
