"""Re-rankers from command-line names: registry look-ups, checkpoints, fitting with progress."""
from __future__ import annotations

import time
from pathlib import Path

import pycsa

from .output import progress_bar

def needs_checkpoint(name: str) -> bool:
    return name in pycsa.available() and getattr(pycsa.ranking.registered(name), "needs_checkpoint", False)


def checkpoints(items, check_files: bool = True) -> dict:
    """--checkpoint values, 'METHOD=PATH' or a bare PATH (for csa), as {method: path}."""
    out = {}
    for item in items or []:
        method, sep, path = item.partition("=")
        if not sep or method not in pycsa.available():  # a bare path, maybe with '=' in it (runs/lr=0.1/csa.pt)
            method, path = "csa", item
        if not needs_checkpoint(method):
            raise ValueError(f"--checkpoint: {method!r} is not a learned re-ranker (learned: "
                             f"{', '.join(n for n in pycsa.available() if needs_checkpoint(n))})")
        # checked now, not when the method runs after the search (or never, if it is not run)
        if check_files and not Path(path).is_file():
            what = "is a directory, not a checkpoint file" if Path(path).is_dir() else "no such file"
            raise ValueError(f"--checkpoint: {method}={path}: {what}")
        out[method] = path
    return out


def learned_args(args) -> dict:
    """What learned re-rankers need from the command line: checkpoints, CSA's K, RRT's local descriptors."""
    from pycsa.datasets import load_local_descriptors

    locals_ = getattr(args, "locals", None)
    qlocals = getattr(args, "query_locals", None)
    config = getattr(args, "config", None)
    found = checkpoints(getattr(args, "checkpoint", None))
    from_config = set()
    if config is not None:
        from pycsa.tune import config_checkpoints, load_config

        path = config
        try:
            config = load_config(config)
        except RecursionError:  # json's message names neither the option nor the file
            raise ValueError(f"--config: {config} is nested too deeply to be a `pycsa tune` result") from None
        # models `pycsa tune --train` saved beside the config, unless --checkpoint names others
        given = set(found)
        for method, saved in config_checkpoints(path).items():
            # a chain's own model ('k_reciprocal+csa') too gives way to the user's --checkpoint csa=...
            if method not in given and method.split("+")[-1] not in given:  # checked when a method needs it
                found[method] = saved
                from_config.add(method)
    return {"checkpoints": found, "from_config": from_config, "csa_k": getattr(args, "csa_k", None),
            "config": config,
            "rrt_top": getattr(args, "rrt_top", None),
            "locals": None if locals_ is None else load_local_descriptors(locals_),
            "query_locals": None if qlocals is None else load_local_descriptors(qlocals)}


def build_reranker(name: str, learned: dict | None = None):
    """A re-ranker or chain by name; learned methods get their checkpoint (and CSA's K, RRT's
    locals); with ``learned["config"]`` (a `pycsa tune` result) the tuned parameters."""
    from pycsa.tune import learned_key

    learned = learned or {"checkpoints": {}}
    tuned = None
    if learned.get("config") is not None:
        from pycsa.tune import tuned_stages

        tuned = tuned_stages(learned["config"], name)
    made = []
    for i, part in enumerate(name.split("+")):
        params = tuned[i][1] if tuned is not None else {}
        if not needs_checkpoint(part):
            made.append(pycsa.create(part, **params))
            continue
        # a model saved for this chain ('k_reciprocal+csa', by `pycsa tune --train`) before the part's own,
        # when the config tuned the chain as a whole (else its stages come from separate entries)
        whole = learned.get("config") is not None and name in learned["config"]["methods"]
        key = learned_key(learned["checkpoints"], name.split("+"), i) if whole else part
        path = learned["checkpoints"].get(key)
        if path is not None and key in learned.get("from_config", ()) and not Path(path).is_file():
            raise ValueError(f"--config: names {part}'s checkpoint {path}, which is missing (`pycsa tune --train` "
                             "writes it beside the config; move them together)")
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
        # --csa-k (and the like) win over a tuned value of the same parameter
        made.append(pycsa.create(part, checkpoint=path, **{**params, **kwargs}))
    parts = name.split("+")
    for i, r in enumerate(made):
        stage = getattr(getattr(r, "model", None), "stage", None)
        if stage is None:
            continue
        # a CSA trained over a stage reads that stage's scores: it must follow it, built as in training
        path = getattr(r, "checkpoint", None) or learned["checkpoints"].get(parts[i])
        if i == 0 or parts[i - 1] != stage:
            raise ValueError(f"--method: {name}: the CSA model {path} was trained over {stage}'s ranking; run it "
                             f"right after that stage: {'+'.join(parts[:i] + [stage] + parts[i:]) if i == 0 else stage + '+' + parts[i]}")
        want = r.model.stage_params
        # compared as the stage runs: a config lists every searched parameter, defaults included
        if tuned is not None and tuned[i - 1][1] and _with_defaults(stage, tuned[i - 1][1]) != _with_defaults(stage, want):
            raise ValueError(f"--config: {name}: {stage} tuned to {tuned[i - 1][1]}, but the CSA model {path} was "
                             f"trained over {stage} with {want or 'its defaults'}")
        made[i - 1] = pycsa.create(stage, **want)
    return made[0] if len(made) == 1 else pycsa.Chain(made)


def _with_defaults(name: str, params: dict) -> dict:
    from pycsa.tune import _defaults

    return {**_defaults(name), **params}


def run_reranker(name: str, Q, X, ranking, learned: dict | None = None):
    """Fits and applies one re-ranker with progress bars; returns (new ranking, seconds)."""
    reranker = build_reranker(name, learned)
    t0 = time.perf_counter()
    with progress_bar(f"{name}: offline", unit="item") as cb:
        reranker.fit(X, progress=cb)
    with progress_bar(f"{name}: re-rank") as cb:
        new = reranker.rerank(Q, X, ranking, progress=cb)
    return new, time.perf_counter() - t0


def parse_methods(spec: str, learned=frozenset(), option: str = "--method") -> list[str]:
    """Comma-separated names; 'all' stands for every registered one (a learned one only
    when it is in ``learned``, i.e. its checkpoint is at hand), 'a+b' for a chain. A name
    given twice or a blank entry is refused here: both are typos, and a repeated name would
    run twice and break the plot's one-bar-per-method layout after all the work."""
    entries = [m.strip() for m in spec.split(",")]
    if "" in entries and any(entries):
        raise ValueError(f"{option}: blank entry in {spec!r}; separate the names with single commas")
    named = [m for m in entries if m and m != "all"]
    for name in named:
        if named.count(name) > 1:
            raise ValueError(f"{option}: {name!r} is named twice in {spec!r}")
    names = []
    for m in entries:
        if m == "all":  # what else is named keeps its place and is not repeated
            names.extend(n for n in pycsa.available()
                         if (n in learned or not needs_checkpoint(n)) and n not in named and n not in names)
        elif m:
            names.append(m)
    if not names:
        raise ValueError(f"{option}: name at least one re-ranker, or 'all' (see `pycsa methods`)")
    for name in names:
        for part in name.split("+"):
            if part not in pycsa.available():
                raise ValueError(f"{option}: unknown re-ranker {part!r}; available: {', '.join(pycsa.available())}")
    return names


def refuse_unused(args, methods: list[str], learned: dict, option: str = "--method") -> None:
    """Options for a learned method that none of ``methods`` runs would be silently ignored:
    refused instead, naming the method that uses them."""
    parts = {p for m in methods for p in m.split("+")}
    uses = [("--checkpoint", name, "") for name in learned["checkpoints"]
            if name not in learned.get("from_config", ())] + [
        ("--csa-k", "csa", "csa_k"), ("--rrt-top", "rrt", "rrt_top"), ("--locals", "rrt", "locals"),
        ("--query-locals", "rrt", "query_locals")]
    for opt, method, attr in uses:
        if method in parts or (attr and getattr(args, attr, None) is None):
            continue
        given = f" {method}=..." if opt == "--checkpoint" else ""
        raise ValueError(f"{opt}{given}: only {method} uses it, and {method} is not among the methods run "
                         f"({option} {getattr(args, option.lstrip('-'))}: {', '.join(methods)})")


def with_tuned(methods: list[str], learned: dict, spec: str, path) -> list[str]:
    """With --config, 'all' means the methods the config tuned (those whose learned stages
    have a checkpoint); prints the parameters each method runs with."""
    from pycsa.tune import tuned_stages

    config = learned["config"]
    if "all" in [m.strip() for m in spec.split(",")]:
        named = [m.strip() for m in spec.split(",") if m.strip() and m.strip() != "all"]
        methods = named + [name for name in config["methods"] if name not in named and all(
            p in learned["checkpoints"] or not needs_checkpoint(p) for p in name.split("+"))]
    for name in methods:
        stages = tuned_stages(config, name)
        if stages is not None:
            shown = " + ".join(f"{n}({', '.join(f'{k}={v}' for k, v in p.items())})" for n, p in stages)
            print(f"{name}: tuned parameters from {path}: {shown}")
    return methods
