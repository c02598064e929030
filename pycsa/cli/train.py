"""`pycsa train`: CSA or RRT on labelled features, a checkpoint after every epoch."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import pycsa
from pycsa.datasets import load_retrieval_features

from .output import device_arg, echo, float_arg, int_arg, output_path, plot_path, plot_training, progress_bar, written


def add_parser(sub) -> None:
    tr = sub.add_parser("train", help="train a CSA model on labelled features")
    tr.add_argument("--features", required=True, action="append",
                    help="labelled features file; repeat to pool several extractors' features of the same images")
    tr.add_argument("--out", required=True, help="checkpoint path, written after every epoch")
    tr.add_argument("--method", default="csa", choices=["csa", "rrt"], help="what to train (csa, rrt)")
    tr.add_argument("--locals", help="rrt: local descriptors of the training images (.npz: local, offsets, scale)")
    tr.add_argument("--topk", type=int_arg(), default=100, help="rrt: triplets from each anchor's top-k (default 100)")
    tr.add_argument("--ffn", type=int_arg(), default=1024, help="rrt: feed-forward width (default 1024)")
    tr.add_argument("--max-local", type=int_arg(), default=500, help="rrt: local descriptors per image at most (500)")
    tr.add_argument("--triplets-per-anchor", type=int_arg(), default=1, help="rrt: triplets per anchor and epoch (1)")
    tr.add_argument("--match-init", type=float_arg(0.0), default=5.0,
                    help="rrt: the first layer starts attending by descriptor similarity, logit = this x cosine "
                         "(default 5; 0: the plain initialisation)")
    tr.add_argument("--global-skip", type=float_arg(0.0), default=20.0,
                    help="rrt: add s x cos(global_q, global_d) to the pair logit, s learned from this start "
                         "(default 20; 0: the paper's model, the logit from the transformer alone)")
    tr.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                    help="rrt: random signed permutations of the descriptor coordinates per pair (default on)")
    tr.add_argument("--val-topk", type=int_arg(), default=None, help="rrt: validation re-ranks each top-N (default --topk)")
    tr.add_argument("--weight-decay", type=float_arg(0.0), default=None, help="default 1e-5 (csa), 5e-4 (rrt)")
    tr.add_argument("--class-split", default="all", choices=["all", "first", "second"],
                    help="train on one half of the classes only")
    tr.add_argument("--val-features", help="labelled features for the validation mAP after each epoch")
    tr.add_argument("--val-class-split", default="all", choices=["all", "first", "second"])
    tr.add_argument("--K", type=int_list_arg, default=None,
                    help="ranking list length in training (default 512, or the training set's size when smaller); "
                         "csa: several, comma-separated (128,256,512), draw one per batch")
    tr.add_argument("--L", type=int_arg(), default=None, help="anchors (default 512, or the training set's size when smaller)")
    tr.add_argument("--dim", type=int_arg(), default=None, help="csa: hidden size (768)")
    tr.add_argument("--depth", type=int_arg(), default=None, help="blocks (csa 2, rrt 6)")
    tr.add_argument("--heads", type=int_arg(), default=None, help="attention heads (csa 12, rrt 4)")
    tr.add_argument("--dropout", type=float_arg(0.0, 1.0, high_open=True), default=None, help="default 0.1")
    tr.add_argument("--drop-path", type=float_arg(0.0, 1.0, high_open=True), default=0.1)
    tr.add_argument("--epochs", type=int_arg(), default=None, help="default 100 (csa), 10 (rrt)")
    tr.add_argument("--batch-size", type=int_arg(), default=None, help="default 256 (csa), 32 anchors (rrt)")
    tr.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"],
                    help="sgd: the paper's recipe (needs long training); adamw: converges in fewer steps")
    tr.add_argument("--lr", type=float_arg(0.0, low_open=True), default=None, help="default 0.1 x batch / 256 (sgd), 1e-3 x batch / 256 (adamw)")
    tr.add_argument("--warmup-epochs", type=int_arg(0), default=None)
    tr.add_argument("--tau", type=float_arg(0.0, low_open=True), default=2.0)
    tr.add_argument("--lam", type=float_arg(0.0), default=0.2)
    tr.add_argument("--loss", default="mass", choices=["mass", "positive"],
                    help="csa: mass, the paper's (-log softmax mass of the relevant items); positive: every relevant "
                         "item against the irrelevant ones (better for mAP)")
    # on/off pairs (--no-residual), so that a flag beside --recipe can turn off what the recipe turns on
    tr.add_argument("--residual", action=argparse.BooleanOptionalAction, default=False,
                    help="csa: the new score corrects the input ranking's, z(s_in) + g z(csa), g learned from 0")
    tr.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=False,
                    help="csa: scale each list's affinities by their mean and spread over the anchors")
    tr.add_argument("--perturb", type=int_arg(0), default=0,
                    help="csa: perturbed copies of each feature set (80%% of the images, 80%% of the dimensions)")
    tr.add_argument("--dense", type=int_arg(0), default=0,
                    help="csa: dense copies of each feature set (a quarter of the classes, each grown fourfold "
                         "by points between two of its items): lists with many relevant items, where the input "
                         "ranking is already good")
    tr.add_argument("--stage", default=None,
                    help="csa: train over this training-free re-ranker's ranking (its lists, scores and, as affinities, "
                         "its scores between items); serve the model after it: --method k_reciprocal+csa")
    tr.add_argument("--stage-params", type=json_dict_arg, default=None, metavar="JSON",
                    help='csa: the stage\'s parameters, e.g. \'{"k1": 20, "k2": 6}\'')
    tr.add_argument("--stage-jitter", type=json_dict_arg, default=None, metavar="JSON",
                    help='csa: bounds to draw the stage\'s parameters from for each perturbed or dense copy, e.g. '
                         '\'{"k1": [14, 30], "lambda_value": [0.1, 0.5]}\' (the model is served at --stage-params)')
    tr.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                    help="bfloat16 autocast (default: on for CUDA)")
    tr.add_argument("--device", type=device_arg, default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    tr.add_argument("--resume", help="continue from this checkpoint")
    tr.add_argument("--seed", type=int_arg(0), default=0)
    tr.add_argument("--plot", help="also draw the loss and validation mAP per epoch to this PNG (needs matplotlib)")
    tr.add_argument("--recipe", default=None, choices=sorted(RECIPES),
                    help="csa: a measured recipe instead of the paper's defaults; flags given beside it win. "
                         "residual: pycsa.tune_learned.CSA_RECIPE (serve as csa or in any chain); k_reciprocal: "
                         "the same over k-reciprocal's ranking (serve as k_reciprocal+csa; the best on MPEG-7)")
    tr.set_defaults(run=run, presets=recipe_defaults, subparser=tr)


# --recipe NAME: the recipe's train() arguments (pycsa.tune_learned), by the option's dest
RECIPES = {"residual": "csa", "k_reciprocal": "k_reciprocal+csa"}


def _copies(perturb: int, dense: int) -> str:
    """'2 perturbed, 2 dense copies' ('' for none): what the training sets are grown by."""
    kinds = [f"{n} {kind}" for n, kind in ((perturb, "perturbed"), (dense, "dense")) if n]
    return ", ".join(kinds) + (" copies" if perturb + dense > 1 else " copy") if kinds else ""


def recipe_defaults(args) -> dict:
    """The defaults --recipe sets (the command line is parsed again with them, so given flags win)."""
    if getattr(args, "recipe", None) is None:
        return {}
    if args.method != "csa":
        raise ValueError(f"--recipe: a CSA option; {args.method.upper()} does not use it")
    from pycsa.tune_learned import CSA_RECIPE, STAGE_RECIPES

    key = RECIPES[args.recipe]
    recipe = CSA_RECIPE if key == "csa" else STAGE_RECIPES[key]
    return {name: list(v) if isinstance(v, tuple) else v for name, v in recipe.items()}


def json_dict_arg(text: str) -> dict:
    """A JSON object of parameters."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object, e.g. '{{\"k1\": 20}}': {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, e.g. '{{\"k1\": 20}}', got {text!r}")
    return value


def int_list_arg(text: str) -> list[int]:
    """One positive int or several, comma-separated."""
    parse = int_arg()
    parts = [p.strip() for p in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return [parse(p) for p in parts]


_TRAIN_DEFAULTS = {
    "csa": dict(depth=2, heads=12, dim=768, epochs=100, batch_size=256, dropout=0.1, weight_decay=1e-5),
    "rrt": dict(depth=6, heads=4, dim=128, epochs=10, batch_size=32, dropout=0.1, lr=1e-4, weight_decay=5e-4),
}


def run(args) -> int:
    # output files checked before loading and training (--out is written by the trainer itself)
    args.out = output_path(args.out, "--out")
    if args.plot:
        args.plot = plot_path(args.plot)
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
        require_classes(val.db_labels, f"--val-features: {args.val_features}")
        if args.val_class_split != "all":
            val = val.class_half(args.val_class_split)
    n = sets[0].database.shape[0]
    if args.recipe:  # the recipe's lists fitted to a small training set, as tune fits them
        from pycsa.tune_learned import fit_recipe

        preset = recipe_defaults(args)
        fitted = fit_recipe(n, {"K": preset["K"], "L": preset["L"]})
        for name in ("K", "L"):
            if getattr(args, name) == preset[name] and fitted[name] != preset[name]:
                setattr(args, name, fitted[name])
                print(f"--{name}: {fitted[name]} (the recipe's {preset[name]} fitted to the training set's {n} images)")
    for name in ("K", "L"):
        if getattr(args, name) is None:  # a small folder of images still trains; an explicit value is checked as given
            setattr(args, name, min(512, n))
            if n < 512:
                print(f"--{name}: {n} (the training set's size; the default 512 needs 512 images)")
    print(f"pycsa {pycsa.__version__} train csa: {len(sets)} feature set(s) x {n} images (d={', '.join(str(fs.database.shape[1]) for fs in sets)}), "
          f"{np.unique(sets[0].db_labels).size} classes"
          + (f"; validation: {val.database.shape[0]} images" if val is not None else "; no validation set"))
    print((f"recipe {args.recipe}; " if args.recipe else "") + f"model: L={args.L} dim={args.dim} depth={args.depth} heads={args.heads}"
          + (" residual" if args.residual else "") + (" standardized" if args.standardize else "")
          + (f"; over {args.stage}" + (f" {json.dumps(args.stage_params)}" if args.stage_params else "")
             + (f", its parameters per copy drawn from {json.dumps(args.stage_jitter)}" if args.stage_jitter else "")
             if args.stage else "")
          + f"; lists K={','.join(map(str, args.K)) if isinstance(args.K, list) else args.K}"
          + "".join(f", {copies}" for copies in [_copies(args.perturb, args.dense)] if copies)
          + f"; loss {args.loss}; "
          f"{args.epochs} epochs, batch {args.batch_size}; checkpoint -> {args.out}")
    fmt = lambda r: (f"epoch {r['epoch']:3d}  loss {r['loss']:.4f} (contrastive {r['contrastive']:.4f}, "  # noqa: E731
                     f"mse {r['mse']:.4f})  lr {r['lr']:.4g}"
                     + (f"  val mAP {100 * r['val_map']:.2f}" if r["val_map"] is not None else ""))
    with progress_bar("csa: training", unit="batch") as cb:
        result = pycsa.csa.train(
            [fs.database for fs in sets], sets[0].db_labels,
            val_features=None if val is None else val.database, val_labels=None if val is None else val.db_labels,
            K=args.K[0] if isinstance(args.K, list) and len(args.K) == 1 else args.K, L=args.L, dim=args.dim, depth=args.depth, heads=args.heads, dropout=args.dropout,
            drop_path=args.drop_path, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            weight_decay=args.weight_decay,
            warmup_epochs=args.warmup_epochs, tau=args.tau, lam=args.lam, amp=args.amp, device=args.device,
            checkpoint=args.out, resume=args.resume, seed=args.seed, optimizer=args.optimizer, loss=args.loss,
            residual=args.residual, standardize=args.standardize, perturb=args.perturb, dense=args.dense,
            stage=args.stage, stage_params=args.stage_params, stage_jitter=args.stage_jitter, progress=cb,
            on_epoch=lambda r: echo(fmt(r)))
    if result.history:
        print(f"wrote {args.out}")
    if args.plot:
        with written(args.plot) as tmp:
            plot_training(result.history, f"CSA training: {Path(args.features[0]).name}", tmp)
        print(f"wrote {args.plot}")
    return 0


def _run_train_rrt(args) -> int:
    from pycsa.datasets import load_local_descriptors

    for flag, given in (("--loss", args.loss != "mass"), ("--residual", args.residual),
                        ("--standardize", args.standardize), ("--perturb", args.perturb > 0),
                        ("--dense", args.dense > 0),
                        ("--stage", args.stage is not None), ("--stage-params", args.stage_params is not None),
                        ("--stage-jitter", args.stage_jitter is not None),
                        ("--K", args.K is not None)):
        if given:
            raise ValueError(f"{flag}: a CSA option; RRT does not use it")
    if len(args.features) != 1:
        raise ValueError("--features: RRT trains on one feature set (with --locals)")
    if not args.locals:
        raise ValueError("--locals: RRT needs the local descriptors of the training images")
    fs = load_retrieval_features(args.features[0])
    if not (fs.queries_are_database and fs.has_labels):
        raise ValueError(f"--features: {args.features[0]} must hold one labelled matrix to train on")
    require_classes(fs.db_labels, f"--features: {args.features[0]}")
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
                        checkpoint=args.out, resume=args.resume, seed=args.seed, progress=cb,
                        on_epoch=lambda r: echo(fmt(r)))
    print(f"wrote {args.out}")
    if args.plot:
        with written(args.plot) as tmp:
            plot_training(result.history, f"RRT training: {Path(args.features[0]).name}", tmp)
        print(f"wrote {args.plot}")
    return 0


def require_classes(labels, where: str) -> None:
    """ValueError naming ``where`` when every label is negative: distractors all, no class to
    learn or score (training would run with a contrastive loss of 0, scoring would find nothing)."""
    labels = np.asarray(labels)
    if labels.dtype.kind in "iuf" and labels.size and (labels < 0).all():
        raise ValueError(f"{where}: every label is negative (a distractor): there is no class to train on or score")


def _training_sets(paths: list, split: str):
    """Feature sets of the same labelled images (one per extractor), optionally one class half."""
    sets = []
    for p in paths:
        fs = load_retrieval_features(p)
        if not (fs.queries_are_database and fs.has_labels):
            raise ValueError(f"--features: {p} must hold one labelled matrix (features and labels) to train on")
        require_classes(fs.db_labels, f"--features: {p}")
        sets.append(fs if split == "all" else fs.class_half(split))
    first = sets[0]
    for p, fs in zip(paths[1:], sets[1:]):
        if fs.database.shape[0] != first.database.shape[0] or not np.array_equal(fs.db_labels, first.db_labels):
            raise ValueError(f"--features: {p} does not describe the same images as {paths[0]} "
                             "(counts or labels differ); pooled feature sets must list the same images in order")
    return sets
