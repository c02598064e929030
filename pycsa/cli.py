"""The ``pycsa`` command: the only place that prints tables and shows progress bars."""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager

import numpy as np
from tqdm.auto import tqdm

import pycsa
from pycsa.datasets.synthetic import make_retrieval_preset
from pycsa.evaluate import revisited


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

    methods = pycsa.available() if args.methods == "all" else [m for m in args.methods.split(",") if m]
    for name in methods:
        reranker = pycsa.create(name)
        t0 = time.perf_counter()
        with progress_bar(f"{name}: offline", unit="item") as cb:
            reranker.fit(X, progress=cb)
        with progress_bar(f"{name}: re-rank") as cb:
            new = reranker.rerank(Q, X, ranking, progress=cb)
        rows.append(_score_row(name, new.indices, data.gnd, time.perf_counter() - t0))

    columns = ["method", "easy mAP", "medium mAP", "hard mAP", "mP@10 (M)", "time (s)"]
    print(format_table(rows, columns))
    print("\nmAP in percent, Revisited Oxford protocols on the synthetic set; time includes offline work.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "seed": args.seed, "k": k, "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")
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

    methods = sub.add_parser("methods", help="list the re-rankers")
    methods.set_defaults(run=lambda a: print("\n".join(pycsa.available())) or 0)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, IndexError, FileNotFoundError) as exc:
        print(f"pycsa: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
