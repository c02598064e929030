"""The ``pycsa`` command: the only place that prints tables and shows progress bars."""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
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


def _needs_checkpoint(name: str) -> bool:
    return name in pycsa.available() and getattr(pycsa.ranking.registered(name), "needs_checkpoint", False)


def _checkpoints(items) -> dict:
    """--checkpoint values, 'METHOD=PATH' or a bare PATH (for csa), as {method: path}."""
    out = {}
    for item in items or []:
        method, sep, path = item.partition("=")
        if not sep:
            method, path = "csa", item
        if not _needs_checkpoint(method):
            raise ValueError(f"--checkpoint: {method!r} is not a learned re-ranker (learned: "
                             f"{', '.join(n for n in pycsa.available() if _needs_checkpoint(n))})")
        out[method] = path
    return out


def _learned(args) -> dict:
    """What learned re-rankers need from the command line: checkpoints, CSA's K, RRT's local descriptors."""
    from pycsa.datasets import load_local_descriptors

    locals_ = getattr(args, "locals", None)
    qlocals = getattr(args, "query_locals", None)
    return {"checkpoints": _checkpoints(getattr(args, "checkpoint", None)), "csa_k": getattr(args, "csa_k", None),
            "rrt_top": getattr(args, "rrt_top", None),
            "locals": None if locals_ is None else load_local_descriptors(locals_),
            "query_locals": None if qlocals is None else load_local_descriptors(qlocals)}


def build_reranker(name: str, learned: dict | None = None):
    """A re-ranker or chain by name; learned methods get their checkpoint (and CSA's K, RRT's locals)."""
    learned = learned or {"checkpoints": {}}
    made = []
    for part in name.split("+"):
        if not _needs_checkpoint(part):
            made.append(pycsa.create(part))
            continue
        path = learned["checkpoints"].get(part)
        if path is None:
            raise ValueError(f"--checkpoint: {part!r} needs a trained model: --checkpoint {part}=PATH "
                             f"(train one with `pycsa train --method {part}`)")
        kwargs = {}
        if part == "csa" and learned.get("csa_k") is not None:
            kwargs["k"] = learned["csa_k"]
        if part == "rrt":
            if learned.get("locals") is None:
                raise ValueError("--locals: rrt needs the database's local descriptors (an .npz with local, offsets)")
            kwargs.update(locals=learned["locals"], query_locals=learned.get("query_locals"))
            if learned.get("rrt_top") is not None:
                kwargs["top"] = learned["rrt_top"]
        made.append(pycsa.create(part, checkpoint=path, **kwargs))
    return made[0] if len(made) == 1 else pycsa.Chain(made)


def run_reranker(name: str, Q, X, ranking, learned: dict | None = None):
    """Fits and applies one re-ranker with progress bars; returns (new ranking, seconds)."""
    reranker = build_reranker(name, learned)
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

    learned = _learned(args)
    methods = _methods(args.methods, learned=set(learned["checkpoints"]) | {"csa", "rrt"})
    if "csa" not in learned["checkpoints"] and any(p == "csa" for m in methods for p in m.split("+")):
        learned["checkpoints"]["csa"] = _demo_csa_checkpoint(args)
    if any(p == "rrt" for m in methods for p in m.split("+")):
        _demo_rrt(args, data, learned)
    for name in methods:
        new, seconds = run_reranker(name, Q, X, ranking, learned)
        rows.append(_score_row(name, new.indices, data.gnd, seconds))

    columns = ["method", "easy mAP", "medium mAP", "hard mAP", "mP@10 (M)", "time (s)"]
    print(format_table(rows, columns))
    print("\nmAP in percent, Revisited Oxford protocols on the synthetic set; time includes offline work.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "seed": args.seed, "k": k, "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def _demo_csa_checkpoint(args) -> str:
    """Trains a small CSA model on a separate synthetic set (other seed: no test image is
    seen) so that the demo can show CSA without a checkpoint; returns its path."""
    import tempfile

    train_set = make_retrieval_preset("small", seed=args.seed + 1000)
    path = str(Path(tempfile.mkdtemp(prefix="pycsa-demo-")) / "csa-demo.pt")
    print(f"csa: no --checkpoint given; training a small model (K=L=96, dim 64, 4 epochs) on a separate "
          f"synthetic set of {train_set.num_db} items (seed {args.seed + 1000}) -> {path}")
    t0 = time.perf_counter()
    with progress_bar("csa: training", unit="batch") as cb:
        pycsa.csa.train(train_set.database, train_set.db_labels, K=96, L=96, dim=64, depth=2, heads=1, epochs=4,
                        batch_size=16, lr=0.03, dropout=0.0, drop_path=0.0, checkpoint=path, progress=cb)
    print(f"csa: trained in {time.perf_counter() - t0:.1f} s (the table's time is re-ranking only)\n")
    return path


def _demo_local_descriptors(data, seed: int):
    """Synthetic local descriptors (128-d, 20..120 per image) for a synthetic retrieval set:
    images of one class share noisy copies of the class's parts (pycsa.datasets.local);
    returns (database store, query store)."""
    from pycsa.datasets.local import make_local_descriptors

    nq = data.queries.shape[0]
    both = make_local_descriptors(np.concatenate([data.query_labels, data.db_labels]), dim=128, seed=seed)
    return both.subset(np.arange(nq, nq + data.database.shape[0])), both.subset(np.arange(nq))


def _demo_rrt(args, data, learned) -> None:
    """RRT needs local descriptors: the demo makes synthetic ones for its test set and,
    without an rrt checkpoint, trains a small RRT on a separate synthetic set (other seed)."""
    import tempfile

    learned["locals"], learned["query_locals"] = _demo_local_descriptors(data, seed=args.seed + 7)
    print("rrt: synthetic local descriptors (128-d, 20..120 per image, shared parts within a class); "
          "its figures show the mechanics, not what real local features give")
    if "rrt" in learned["checkpoints"]:
        return
    train_set = make_retrieval_preset("small", seed=args.seed + 1000)
    train_locals, _ = _demo_local_descriptors(train_set, seed=args.seed + 1007)
    path = str(Path(tempfile.mkdtemp(prefix="pycsa-demo-")) / "rrt-demo.pt")
    print(f"rrt: no --checkpoint given; training a small model (2 layers, 1 head, 2 epochs) on a separate "
          f"synthetic set of {train_set.num_db} items (seed {args.seed + 1000}) -> {path}")
    t0 = time.perf_counter()
    with progress_bar("rrt: training", unit="batch") as cb:
        pycsa.rrt.train(train_set.database, train_locals, train_set.db_labels, topk=100, dim=128, depth=2, heads=1,
                        ffn=64, dropout=0.0, epochs=2, batch_size=32, lr=1e-3, triplets_per_anchor=8,
                        # no global skip: the demo's globals are weak by design and 2 epochs do not
                        # let the pair logit outgrow 20·cos (it stayed at the cosine ranking, 71.0)
                        global_skip=None, checkpoint=path, progress=cb)
    print(f"rrt: trained in {time.perf_counter() - t0:.1f} s (the table's time is re-ranking only)\n")
    learned["checkpoints"]["rrt"] = path


def _methods(spec: str, learned=frozenset()) -> list[str]:
    """Comma-separated names; 'all' stands for every registered one (a learned one only
    when it is in ``learned``, i.e. its checkpoint is at hand), 'a+b' for a chain."""
    names = []
    for m in (m.strip() for m in spec.split(",")):
        if m == "all":
            names.extend(n for n in pycsa.available() if n in learned or not _needs_checkpoint(n))
        elif m:
            names.append(m)
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
    learned = _learned(args)
    methods = _methods(args.method, learned=set(learned["checkpoints"]))
    if args.k < 1:
        raise ValueError(f"--k: must be a positive int, got {args.k}")
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
        new, seconds = run_reranker(name, Q, X, ranking, learned)
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


def _training_sets(paths: list, split: str):
    """Feature sets of the same labelled images (one per extractor), optionally one class half."""
    sets = []
    for p in paths:
        fs = load_retrieval_features(p)
        if not (fs.queries_are_database and fs.has_labels):
            raise ValueError(f"--features: {p} must hold one labelled matrix (features and labels) to train on")
        sets.append(fs if split == "all" else fs.class_half(split))
    first = sets[0]
    for p, fs in zip(paths[1:], sets[1:]):
        if fs.database.shape[0] != first.database.shape[0] or not np.array_equal(fs.db_labels, first.db_labels):
            raise ValueError(f"--features: {p} does not describe the same images as {paths[0]} "
                             "(counts or labels differ); pooled feature sets must list the same images in order")
    return sets


_TRAIN_DEFAULTS = {
    "csa": dict(depth=2, heads=12, dim=768, epochs=100, batch_size=256, dropout=0.1, weight_decay=1e-5),
    "rrt": dict(depth=6, heads=4, dim=128, epochs=10, batch_size=32, dropout=0.1, lr=1e-4, weight_decay=5e-4),
}


def run_train(args) -> int:
    for key, value in _TRAIN_DEFAULTS[args.method].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.method == "rrt":
        return _run_train_rrt(args)
    sets = _training_sets(args.features, args.class_split)
    val = None
    if args.val_features:
        val = load_retrieval_features(args.val_features)
        if not (val.queries_are_database and val.has_labels):
            raise ValueError(f"--val-features: {args.val_features} must hold one labelled matrix")
        if args.val_class_split != "all":
            val = val.class_half(args.val_class_split)
    n = sets[0].database.shape[0]
    print(f"pycsa {pycsa.__version__} train csa: {len(sets)} feature set(s) x {n} images (d={', '.join(str(fs.database.shape[1]) for fs in sets)}), "
          f"{np.unique(sets[0].db_labels).size} classes"
          + (f"; validation: {val.database.shape[0]} images" if val is not None else "; no validation set"))
    print(f"model: L={args.L} dim={args.dim} depth={args.depth} heads={args.heads}; lists K={args.K}; "
          f"{args.epochs} epochs, batch {args.batch_size}; checkpoint -> {args.out}")
    fmt = lambda r: (f"epoch {r['epoch']:3d}  loss {r['loss']:.4f} (contrastive {r['contrastive']:.4f}, "  # noqa: E731
                     f"mse {r['mse']:.4f})  lr {r['lr']:.4g}"
                     + (f"  val mAP {100 * r['val_map']:.2f}" if r["val_map"] is not None else ""))
    with progress_bar("csa: training", unit="batch") as cb:
        result = pycsa.csa.train(
            [fs.database for fs in sets], sets[0].db_labels,
            val_features=None if val is None else val.database, val_labels=None if val is None else val.db_labels,
            K=args.K, L=args.L, dim=args.dim, depth=args.depth, heads=args.heads, dropout=args.dropout,
            drop_path=args.drop_path, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            weight_decay=args.weight_decay,
            warmup_epochs=args.warmup_epochs, tau=args.tau, lam=args.lam, amp=args.amp, device=args.device,
            checkpoint=args.out, resume=args.resume, seed=args.seed, optimizer=args.optimizer, progress=cb,
            on_epoch=lambda r: tqdm.write(fmt(r), file=sys.stdout))
    if result.history:
        print(f"wrote {args.out}")
    if args.plot:
        _plot_training(result.history, f"CSA training: {Path(args.features[0]).name}", args.plot)
        print(f"wrote {args.plot}")
    return 0


def _plot_training(history: list, title: str, out: str) -> None:
    """Loss per epoch (left axis) and validation mAP (right axis, when measured)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("--plot needs matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7.0, 4.2), dpi=120)
    ax.plot(epochs, [h["loss"] for h in history], "o-", color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("training loss", color="tab:blue")
    ax.grid(alpha=0.3)
    handles = ax.get_lines()
    if any(h.get("val_map") is not None for h in history):
        ax2 = ax.twinx()
        pts = [(h["epoch"], 100 * h["val_map"]) for h in history if h.get("val_map") is not None]
        ax2.plot(*zip(*pts), "s-", color="tab:orange", label="validation mAP")
        ax2.set_ylabel("validation mAP (%)", color="tab:orange")
        handles = handles + ax2.get_lines()
    ax.legend(handles, [h.get_label() for h in handles], loc="center right", frameon=False)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _run_train_rrt(args) -> int:
    from pycsa.datasets import load_local_descriptors

    if len(args.features) != 1:
        raise ValueError("--features: RRT trains on one feature set (with --locals)")
    if not args.locals:
        raise ValueError("--locals: RRT needs the local descriptors of the training images")
    fs = load_retrieval_features(args.features[0])
    if not (fs.queries_are_database and fs.has_labels):
        raise ValueError(f"--features: {args.features[0]} must hold one labelled matrix to train on")
    local = load_local_descriptors(args.locals)
    if local.num_images != fs.database.shape[0]:
        raise ValueError(f"--locals: {local.num_images} images but {args.features[0]} has {fs.database.shape[0]}")

    def split(part):
        if part == "all":
            return fs.database, local, fs.db_labels
        keep = fs.class_half_rows(part)
        return fs.database[keep], local.subset(keep), fs.db_labels[keep]

    if args.val_features:
        raise ValueError("--val-features: for rrt use --val-class-split on the same files")
    G, loc, y = split(args.class_split)
    val = split(args.val_class_split) if args.val_class_split != "all" else None
    print(f"pycsa {pycsa.__version__} train rrt: {G.shape[0]} images (global d={G.shape[1]}, "
          f"{int(loc.counts.sum())} local descriptors of d={loc.dim}), {np.unique(y).size} classes"
          + (f"; validation: {val[0].shape[0]} images" if val else ""))
    print(f"model: depth={args.depth} heads={args.heads} ffn={args.ffn}; top-{args.topk} triplets "
          f"(x{args.triplets_per_anchor} per anchor), match init {args.match_init or 'off'}, "
          f"global skip {args.global_skip or 'off'}, "
          f"augment {'on' if args.augment else 'off'}; "
          f"{args.epochs} epochs, batch {args.batch_size}; checkpoint -> {args.out}")
    fmt = lambda r: (f"epoch {r['epoch']:3d}  loss {r['loss']:.4f}"  # noqa: E731
                     + (f"  val mAP {100 * r['val_map']:.2f}" if r["val_map"] is not None else ""))
    with progress_bar("rrt: training", unit="batch") as cb:
        result = pycsa.rrt.train(G, loc, y, val=val, topk=args.topk, dim=loc.dim, depth=args.depth, heads=args.heads,
                        ffn=args.ffn, dropout=args.dropout, epochs=args.epochs, batch_size=args.batch_size,
                        lr=args.lr, weight_decay=args.weight_decay, max_local=args.max_local, device=args.device,
                        triplets_per_anchor=args.triplets_per_anchor, match_init=args.match_init or None,
                        global_skip=args.global_skip or None,
                        augment=args.augment, val_topk=args.val_topk,
                        checkpoint=args.out, seed=args.seed, progress=cb,
                        on_epoch=lambda r: tqdm.write(fmt(r), file=sys.stdout))
    print(f"wrote {args.out}")
    if args.plot:
        _plot_training(result.history, f"RRT training: {Path(args.features[0]).name}", args.plot)
        print(f"wrote {args.plot}")
    return 0


def run_rerank(args) -> int:
    learned = _learned(args)
    methods = _methods(args.method, learned=set(learned["checkpoints"]))
    if len(methods) != 1:
        raise ValueError("--method: name one re-ranker (or one chain 'a+b') for `pycsa rerank`")
    fs = load_retrieval_features(args.features)
    Q, X = fs.queries, fs.database
    k = min(X.shape[0], args.k)
    with progress_bar("initial search") as cb:
        scores, indices = pycsa.search(Q, X, k, progress=cb)
    new, seconds = run_reranker(methods[0], Q, X, pycsa.Ranking(indices, scores), learned)
    np.savez(args.out, indices=np.asarray(new.indices), scores=np.asarray(new.scores))
    print(f"{methods[0]}: re-ranked {Q.shape[0]} queries (top {k} of {X.shape[0]}) in {seconds:.3f} s; "
          f"wrote {args.out} (indices, scores: queries x {k}, best first)")
    return 0


def _device(text: str) -> str:
    """--device: a device torch knows and this machine has (argparse reports the error)."""
    try:
        dev = torch.device(text)
    except RuntimeError as exc:
        raise argparse.ArgumentTypeError(f"not a device: {text!r} (cpu, cuda, cuda:1)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: this torch has no CUDA device (torch {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text}: training runs on cpu or cuda")
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pycsa", description="Fast re-ranking for image retrieval.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="synthetic benchmark: initial search and every re-ranker, as a table")
    demo.add_argument("--preset", default="roxford", choices=["small", "roxford", "large"])
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--k", type=int, default=1000, help="ranking depth (default 1000)")
    demo.add_argument("--methods", default="all", help="comma-separated re-rankers, or 'all' (see `pycsa methods`)")
    demo.add_argument("--json", help="also write the table as JSON to this file")
    demo.add_argument("--checkpoint", action="append",
                      help="csa=PATH (default: train a small CSA on a separate synthetic set)")
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
    ev.add_argument("--checkpoint", action="append",
                    help="METHOD=PATH of a trained model (csa, rrt; a bare PATH is csa); repeatable. "
                         "'all' includes a learned method only with its checkpoint")
    ev.add_argument("--locals", help="local descriptors of the database (rrt): .npz/.pt with local, offsets[, scale]")
    ev.add_argument("--query-locals", help="local descriptors of the queries when they are not the database rows")
    ev.add_argument("--rrt-top", type=int, default=None, help="RRT re-ranks each query's top-N (default 100)")
    ev.add_argument("--class-split", default="all", choices=["all", "first", "second"],
                    help="evaluate on one half of the classes only (e.g. the half a model was not trained on)")
    ev.add_argument("--csa-k", type=int, default=None, help="CSA list length K at serving (default 1024)")
    ev.set_defaults(run=run_eval)

    tr = sub.add_parser("train", help="train a CSA model on labelled features")
    tr.add_argument("--features", required=True, action="append",
                    help="labelled features file; repeat to pool several extractors' features of the same images")
    tr.add_argument("--out", required=True, help="checkpoint path, written after every epoch")
    tr.add_argument("--method", default="csa", choices=["csa", "rrt"], help="what to train (csa, rrt)")
    tr.add_argument("--locals", help="rrt: local descriptors of the training images (.npz: local, offsets, scale)")
    tr.add_argument("--topk", type=int, default=100, help="rrt: triplets from each anchor's top-k (default 100)")
    tr.add_argument("--ffn", type=int, default=1024, help="rrt: feed-forward width (default 1024)")
    tr.add_argument("--max-local", type=int, default=500, help="rrt: local descriptors per image at most (500)")
    tr.add_argument("--triplets-per-anchor", type=int, default=1, help="rrt: triplets per anchor and epoch (1)")
    tr.add_argument("--match-init", type=float, default=5.0,
                    help="rrt: the first layer starts attending by descriptor similarity, logit = this x cosine "
                         "(default 5; 0: the plain initialisation)")
    tr.add_argument("--global-skip", type=float, default=20.0,
                    help="rrt: add s x cos(global_q, global_d) to the pair logit, s learned from this start "
                         "(default 20; 0: the paper's model, the logit from the transformer alone)")
    tr.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                    help="rrt: random signed permutations of the descriptor coordinates per pair (default on)")
    tr.add_argument("--val-topk", type=int, default=None, help="rrt: validation re-ranks each top-N (default --topk)")
    tr.add_argument("--weight-decay", type=float, default=None, help="default 1e-5 (csa), 5e-4 (rrt)")
    tr.add_argument("--class-split", default="all", choices=["all", "first", "second"],
                    help="train on one half of the classes only")
    tr.add_argument("--val-features", help="labelled features for the validation mAP after each epoch")
    tr.add_argument("--val-class-split", default="all", choices=["all", "first", "second"])
    tr.add_argument("--K", type=int, default=512, help="ranking list length in training (default 512)")
    tr.add_argument("--L", type=int, default=512, help="anchors (default 512)")
    tr.add_argument("--dim", type=int, default=None, help="csa: hidden size (768)")
    tr.add_argument("--depth", type=int, default=None, help="blocks (csa 2, rrt 6)")
    tr.add_argument("--heads", type=int, default=None, help="attention heads (csa 12, rrt 4)")
    tr.add_argument("--dropout", type=float, default=None, help="default 0.1")
    tr.add_argument("--drop-path", type=float, default=0.1)
    tr.add_argument("--epochs", type=int, default=None, help="default 100 (csa), 10 (rrt)")
    tr.add_argument("--batch-size", type=int, default=None, help="default 256 (csa), 32 anchors (rrt)")
    tr.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"],
                    help="sgd: the paper's recipe (needs long training); adamw: converges in fewer steps")
    tr.add_argument("--lr", type=float, default=None, help="default 0.1 x batch / 256 (sgd), 1e-3 x batch / 256 (adamw)")
    tr.add_argument("--warmup-epochs", type=int, default=None)
    tr.add_argument("--tau", type=float, default=2.0)
    tr.add_argument("--lam", type=float, default=0.2)
    tr.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                    help="bfloat16 autocast (default: on for CUDA)")
    tr.add_argument("--device", type=_device, default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    tr.add_argument("--resume", help="continue from this checkpoint")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--plot", help="also draw the loss and validation mAP per epoch to this PNG (needs matplotlib)")
    tr.set_defaults(run=run_train)

    rr = sub.add_parser("rerank", help="initial search and one re-ranker on a features file; saves the ranking")
    rr.add_argument("--features", required=True)
    rr.add_argument("--method", required=True, help="re-ranker name or chain 'a+b'")
    rr.add_argument("--checkpoint", action="append", help="METHOD=PATH of a trained model (a bare PATH is csa)")
    rr.add_argument("--locals", help="local descriptors of the database (rrt)")
    rr.add_argument("--query-locals", help="local descriptors of the queries when they are not the database rows")
    rr.add_argument("--rrt-top", type=int, default=None, help="RRT re-ranks each query's top-N (default 100)")
    rr.add_argument("--k", type=int, default=1000, help="ranking depth (default 1000)")
    rr.add_argument("--csa-k", type=int, default=None, help="CSA list length K at serving (default 1024)")
    rr.add_argument("--out", required=True, help=".npz file for the new ranking (indices, scores)")
    rr.set_defaults(run=run_rerank)

    methods = sub.add_parser("methods", help="list the re-rankers")
    methods.set_defaults(run=lambda a: print("\n".join(pycsa.available())) or 0)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, IndexError, FileNotFoundError, ImportError, FloatingPointError) as exc:
        print(f"pycsa: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
