"""The best re-ranker and parameters for a user's data: a search on a labelled validation set.

Each method's main parameters are searched coordinate by coordinate from its defaults: every
value of one parameter with the others fixed, the best kept, then the next parameter; rounds
repeat until one changes nothing. A value replaces the current one only when it beats it by
more than ``margin`` (0.1 points) and by more than two standard errors of the per-class
differences (per query for Revisited), so that noise on a small validation set does not
pull a parameter away from its default (on MPEG-7, gains below that did not carry over
from one half of the classes to the other). The score is the data's own protocol (see
:class:`Scorer`). Learned methods (CSA, RRT) take part with a trained checkpoint; their own
training parameters are not searched here.

The result is a JSON-able dict (``pycsa tune --out tuned.json``) that
:func:`create_from_config` and ``pycsa eval/rerank --config`` turn back into re-rankers.
"""
from __future__ import annotations

import json
import math
import os
import reprlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ._checks import finite_float, one_of, optional_callable, optional_int, positive_int
from ._types import ArrayLike, PathLike
from ._tensors import as_tensor
from .ranking import Chain, Ranking, Reranker, available, check_params, create, registered

__all__ = ["SEARCH_SPACES", "search_space", "Scorer", "tune_method", "tune", "create_from_config",
           "load_config", "config_checkpoints", "CONFIG_FORMAT"]

CONFIG_FORMAT = 1
_SMALL = (1, 2, 3, 5, 7, 10, 15, 20)

# The main parameters of each re-ranker and the values tried (defaults included).
SEARCH_SPACES: dict[str, dict[str, tuple]] = {
    "aqe": {"k": _SMALL},
    "aqewd": {"k": _SMALL},
    "alpha_qe": {"k": _SMALL, "alpha": (1.0, 2.0, 3.0, 5.0)},
    "dba": {"k": _SMALL},
    "alpha_dba": {"k": _SMALL, "alpha": (1.0, 2.0, 3.0, 5.0)},
    "alpha_qe_dba": {"k": (1, 2, 3, 5, 7, 10), "dba_k": _SMALL, "alpha": (1.0, 3.0, 5.0)},
    "diffusion": {"k": (5, 10, 15, 20, 30, 50, 100), "gamma": (1.0, 2.0, 3.0), "alpha": (0.8, 0.9, 0.95, 0.99),
                  "query_k": (3, 5, 10, 20)},
    "diffusion_truncated": {"T": (100, 200, 500, 1000), "k": (5, 10, 20, 50), "alpha": (0.8, 0.9, 0.99)},
    "gnn": {"k1": (5, 10, 15, 20, 26, 35, 52, 80), "k2": (1, 2, 3, 5, 7, 10, 14), "lamb": (0.0, 0.1, 0.3)},
    "k_reciprocal": {"k1": (5, 10, 15, 20, 30, 40, 60), "k2": (1, 3, 6, 10), "lambda_value": (0.0, 0.1, 0.3, 0.5)},
    "superglobal": {"M": (50, 100, 200, 400), "K": (3, 5, 9, 15), "beta": (0.05, 0.15, 0.3)},
    "csa": {"k": (128, 256, 512, 1024)},  # the serving list length; the model is trained elsewhere
}
# integer sizes that cannot exceed the database: larger values are not tried
_SIZE_PARAMS = {"k", "k1", "k2", "dba_k", "query_k", "M", "K", "T"}


def search_space(name: str, n: int | None = None) -> dict[str, tuple]:
    """The values tried for re-ranker ``name`` (its ``search_space`` class attribute for
    re-rankers registered outside pycsa); sizes capped at ``n`` database items."""
    space = SEARCH_SPACES.get(name)
    if space is None:
        space = getattr(registered(name), "search_space", None) or {}
    out = {}
    for param, values in space.items():
        if n is not None and param in _SIZE_PARAMS:
            kept = tuple(v for v in values if v <= n)
            values = kept or (min(values),)
        out[param] = tuple(values)
    return out


def _defaults(name: str) -> dict:
    import inspect

    sig = inspect.signature(registered(name).__init__)
    return {p.name: p.default for p in sig.parameters.values()
            if p.name != "self" and p.default is not inspect.Parameter.empty}


@dataclass
class Scorer:
    """A ranking's score on the validation set, in percent, by the data's protocol:
    'classes' (mAP over every item as a query against the others, the item itself left
    out), 'reid' (mAP with the same-camera rule) or 'revisited' (the mean of the Medium
    and Hard mAP of a gnd file)."""

    mode: str
    fs: object
    gnd: dict | None = None

    def __post_init__(self):
        one_of(self.mode, "mode", ("classes", "reid", "revisited"))
        if self.mode == "revisited" and self.gnd is None:
            raise ValueError("gnd: the 'revisited' protocol needs the ground truth (load_gnd's dict)")

    @property
    def metric(self) -> str:
        return {"classes": "mAP", "reid": "mAP", "revisited": "mAP (mean of Medium and Hard)"}[self.mode]

    def __call__(self, ranking: Ranking) -> float:
        return self.evaluate(ranking)[0]

    def evaluate(self, ranking: Ranking) -> tuple[float, np.ndarray | None]:
        """(score, the scores of its parts or None: per class, or per query for Revisited):
        the parts let the search tell a real gain from noise."""
        from .evaluate import class_map, reid, revisited

        indices = np.asarray(ranking.indices)
        if self.mode == "classes":
            fs = self.fs
            m, aps = class_map(indices, fs.query_labels, fs.db_labels, exclude_self=fs.queries_are_database,
                               return_aps=True)
            # per class, not per query: the tuned setting must carry over to other classes, and
            # the queries of one class move together
            aps = np.asarray(aps, dtype=np.float64)
            labels = np.asarray(fs.query_labels)
            per_class = np.array([np.nanmean(aps[labels == c]) if np.isfinite(aps[labels == c]).any() else np.nan
                                  for c in np.unique(labels)])
            return 100.0 * m, 100.0 * per_class
        if self.mode == "revisited":
            res = revisited(indices, self.gnd)
            for level in ("medium", "hard"):
                # a NaN score would compare False with every other and let the search keep any trial
                if not math.isfinite(res[level]["mAP"]):
                    raise ValueError(f"scorer: the Revisited score is NaN: no query of the ground truth has "
                                     f"{'a hard' if level == 'hard' else 'an easy or hard'} positive, so the "
                                     f"{level.capitalize()} mAP (half of the score) is undefined; use a ground "
                                     "truth whose queries have them, or score by the features' labels "
                                     "(Scorer('classes' or 'reid', ...); `pycsa tune` without --gnd)")
            aps = 0.5 * (np.asarray(res["medium"]["aps"]) + np.asarray(res["hard"]["aps"]))
            return 100.0 * 0.5 * (res["medium"]["mAP"] + res["hard"]["mAP"]), 100.0 * aps
        fs = self.fs
        q, n = indices.shape[0], fs.database.shape[0]
        # the ranking's own order, not its scores: re-rankers that re-score only their top
        # (SuperGlobal, CSA, RRT, truncated diffusion) keep the input's scores past it
        dist = np.full((q, n), float(indices.shape[1]))
        dist[np.arange(q)[:, None], indices] = np.arange(indices.shape[1])[None, :]
        _, m = reid(dist, fs.query_labels, fs.db_labels, fs.query_cams, fs.db_cams, max_rank=min(10, n))
        return 100.0 * m, None


def _score(value) -> float:
    """A scorer's result as a finite float: NaN compares False with everything, so the search
    would accept every trial and report made-up parameters."""
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"scorer: must return a number, got {value!r} ({type(value).__name__})") from None
    if not math.isfinite(score):
        raise ValueError(f"scorer: returned {score} for a ranking; a score must be a finite number (NaN usually "
                         "means no query could be scored, e.g. none has a relevant item)")
    return score


def _check_method(method, name: str) -> None:
    """A registered re-ranker's name or a chain 'a+b' of them; else an error naming ``name``."""
    if not isinstance(method, str):
        raise TypeError(f"{name}: expected a re-ranker name or chain 'a+b', got {method!r} ({type(method).__name__})")
    for part in method.split("+"):
        try:
            registered(part)
        except ValueError as exc:
            raise ValueError(f"{name}: {str(exc).removeprefix('name: ')}") from None


def learned_key(learned: dict | None, names: list[str], s: int) -> str:
    """The key of ``learned`` for stage ``s`` of the chain ``names``: the chain up to that stage
    ('k_reciprocal+csa': a CSA trained over k-reciprocal) when ``learned`` has it, else the
    stage's own name ('csa')."""
    prefix = "+".join(names[:s + 1])
    return prefix if s > 0 and prefix in (learned or {}) else names[s]


def learned_for(learned: dict | None, names: list[str], s: int):
    """What ``learned`` holds for stage ``s`` of the chain ``names`` (see :func:`learned_key`);
    {} when nothing."""
    return (learned or {}).get(learned_key(learned, names, s), {})


def model_stage(model) -> tuple[str, dict] | None:
    """(stage, parameters) a CSA model was trained over, the searched ones filled in with the
    stage's defaults (as a tune result lists them); None for a model trained on plain lists."""
    stage = getattr(model, "stage", None)
    if stage is None:
        return None
    defaults = _defaults(stage)
    return stage, {**{p: defaults[p] for p in search_space(stage) if p in defaults}, **(model.stage_params or {})}


def _stage_of(extra) -> tuple[str, dict] | None:
    """The stage a learned stage's model was trained over: a tune-trained factory says so
    (``.stage``); constructor arguments with a CSA checkpoint or model are read."""
    if callable(extra):
        return getattr(extra, "stage", None)
    if isinstance(extra, dict) and ("checkpoint" in extra or "model" in extra):
        model = extra.get("model")
        if model is None:
            from .csa import load_model

            try:
                model = load_model(extra["checkpoint"])
            except Exception:  # noqa: BLE001 - not a CSA checkpoint (RRT's): building it says what is wrong
                return None
        return model_stage(model)
    return None


def _build(stages: list[tuple[str, dict]], learned: dict | None) -> Reranker:
    """The chain of ``stages``; ``learned[name]`` (or ``learned['a+name']`` for that chain
    only, see :func:`learned_for`): constructor arguments of a learned stage (they win over a
    tuned value of the same name: --csa-k pins CSA's k), or a callable that makes it from its
    parameters (tune's cross-fitted CSA)."""
    names = [name for name, _ in stages]
    made = []
    for s, (name, params) in enumerate(stages):
        extra = learned_for(learned, names, s)
        made.append(extra(**params) if callable(extra) else create(name, **{**params, **extra}))
    return made[0] if len(made) == 1 else Chain(made)


@dataclass
class TuneResult:
    method: str
    stages: list
    """[(stage name, tuned parameters)], one per stage of the chain."""
    score: float
    default_score: float
    evaluations: int
    seconds: float
    stopped_by_budget: bool = False
    history: list = field(default_factory=list)
    fixed_stages: tuple = ()
    """The stages kept at the fixed_stages given (where no model pinned them)."""
    trials: list = field(default_factory=list)
    """Every setting the search scored, in order: ([per stage, the parameters it moved from
    where the search started], score). Shows how flat the optimum is, which the margin and the
    noise test may have declined to move to."""

    def to_json(self) -> dict:
        return {"stages": [[n, p] for n, p in self.stages], "score": round(self.score, 4),
                "default_score": round(self.default_score, 4), "evaluations": self.evaluations,
                "seconds": round(self.seconds, 2), "stopped_by_budget": self.stopped_by_budget,
                "trials": [{"moved": moved, "score": round(score, 4)} for moved, score in self.trials]}


def tune_method(method: str, Q: ArrayLike, X: ArrayLike, ranking: Ranking, scorer: Callable[[Ranking], float], *,
                learned: dict | None = None, deadline: float | None = None, margin: float = 0.1,
                standard_errors: float = 2.0, max_rounds: int = 3,
                on_eval: Callable[[int], None] | None = None,
                fixed_stages: dict[int, dict] | None = None) -> TuneResult:
    """Coordinate search over the parameters of ``method`` (a name or a chain 'a+b'), each
    stage's parameters in turn. ``learned``: constructor arguments of learned stages
    ({"csa": {"checkpoint": ...}}; under a chain's name, 'k_reciprocal+csa', for that chain
    only). A CSA trained over a stage (a factory's ``stage`` attribute, (name, params), or the
    model a checkpoint holds) keeps the stage before it at those parameters. ``fixed_stages``:
    {stage index: parameters} kept as given, not searched (tune() passes a chain's earlier stages
    as tuned alone); ``default_score`` is still the chain at its defaults. ``deadline``:
    time.monotonic() after which the search stops with the best found so far."""
    _check_method(method, "method")
    margin = finite_float(margin, "margin", low=0.0)
    standard_errors = finite_float(standard_errors, "standard_errors", low=0.0)
    max_rounds = positive_int(max_rounds, "max_rounds")
    if not callable(scorer):
        raise TypeError(f"scorer: expected a callable (ranking -> score), got {type(scorer).__name__}")
    on_eval = optional_callable(on_eval, "on_eval")
    as_tensor(Q, "Q")  # a list has no .shape: refuse it by name
    as_tensor(X, "X")
    names = method.split("+")
    n = X.shape[0]
    current = [{} for _ in names]  # only what differs from the defaults
    # parameters the caller fixed (e.g. --csa-k): not searched, recorded as given
    extras = [learned_for(learned, names, s) for s in range(len(names))]
    pins = [dict(getattr(e, "pinned", {})) if callable(e) else dict(e) for e in extras]
    for s, e in enumerate(extras):
        # a CSA trained over a stage serves after that stage as it was trained: its parameters are fixed
        before = _stage_of(e) if s > 0 and names[s] == "csa" else None
        if before is not None and before[0] == names[s - 1]:
            pins[s - 1].update(before[1])
    from_fixed = set()  # (stage, parameter) pinned by fixed_stages alone
    if fixed_stages is not None:
        if not isinstance(fixed_stages, dict) or any(not isinstance(s, int) or not 0 <= s < len(names)
                                                     or not isinstance(p, dict) for s, p in fixed_stages.items()):
            raise ValueError(f"fixed_stages: expected {{stage index: parameters}} for the stages of {method!r} "
                             f"(0..{len(names) - 1}), got {fixed_stages!r}")
        for s, params in fixed_stages.items():
            if extras[s]:
                raise ValueError(f"fixed_stages: stage {s} of {method!r} ({names[s]}) is learned; its parameters "
                                 "come with its model (learned)")
            for p, v in params.items():
                if p not in pins[s]:  # the caller's and a model's pins come first
                    pins[s][p] = v
                    from_fixed.add((s, p))
    fixed = [{} if extras[s] else pins[s] for s in range(len(names))]  # passed to a training-free stage

    coords = [(s, p, vals) for s, name in enumerate(names) for p, vals in search_space(name, n).items()
              if p not in pins[s]]
    defaults = [_defaults(name) for name in names]
    cache: dict = {}
    t0 = time.monotonic()
    stopped = False

    def key(params):
        return tuple(tuple(sorted(p.items())) for p in params)

    def evaluate(params):
        k = key(params)
        if k not in cache:
            reranker = _build([(name, {**fixed[s], **p}) for s, (name, p) in enumerate(zip(names, params))], learned)
            new = reranker.fit(X).rerank(Q, X, ranking)
            out = scorer.evaluate(new) if hasattr(scorer, "evaluate") else (scorer(new), None)
            cache[k] = (_score(out[0]), out[1])
            if on_eval is not None:
                on_eval(len(cache))
        return cache[k]

    def better(new, old) -> bool:
        """A gain above ``margin`` and, where the scorer gives per-class (or per-query)
        scores, above ``standard_errors`` standard errors of their paired differences: a
        gain the validation set can tell from noise."""
        gain = new[0] - old[0]
        if gain <= margin:
            return False
        if new[1] is None or old[1] is None:
            return True
        diff = new[1] - old[1]
        diff = diff[~np.isnan(diff)]
        return diff.size < 2 or gain > standard_errors * diff.std(ddof=1) / math.sqrt(diff.size)

    best_eval = evaluate(current)
    best = best_eval[0]
    default_score = best
    if from_fixed:
        # the search starts from the fixed stages; the chain at its defaults is scored for the record
        plain = [{p: v for p, v in fixed[s].items() if (s, p) not in from_fixed} for s in range(len(names))]
        reranker = _build([(name, plain[s]) for s, name in enumerate(names)], learned)
        default_score = _score(scorer(reranker.fit(X).rerank(Q, X, ranking)))
    history = [(dict(enumerate(current)), best)]
    for _ in range(max_rounds):
        changed = False
        for s, param, values in coords:
            here = current[s].get(param, defaults[s].get(param))
            for v in values:
                if v == here:
                    continue
                if deadline is not None and time.monotonic() > deadline:
                    stopped = True
                    break
                trial = [dict(p) for p in current]
                trial[s][param] = v
                result = evaluate(trial)
                if better(result, best_eval):
                    best_eval, best, current, changed = result, result[0], trial, True
                    history.append((dict(enumerate(current)), best))
            if stopped:
                break
        if stopped or not changed:
            break
    # a training-free stage records every parameter it was built with, searched or pinned (a
    # stage model's parameter outside the search space included: the config must rebuild that stage)
    stages = [(name, {**{p: pins[s].get(p, defaults[s].get(p)) for p in search_space(name, n)},
                      **fixed[s], **current[s]})
              for s, name in enumerate(names)]
    trials = [([dict(p) for p in k], score) for k, (score, _) in cache.items()]
    return TuneResult(method, stages, best, default_score, len(cache), time.monotonic() - t0, stopped, history,
                      tuple(sorted({s for s, _ in from_fixed})), trials)


def tune(methods: list[str], Q: ArrayLike, X: ArrayLike, scorer: Callable[[Ranking], float], *,
         depth: int | None = None, learned: dict | None = None, budget: float | None = None, margin: float = 0.1,
         standard_errors: float = 2.0, progress: Callable[[int, int], None] | None = None,
         report: Callable[[str], None] | None = None) -> dict:
    """Tunes each method in turn on (Q, X) (the validation set) and returns the config dict:
    {"format", "metric", "cosine", "methods": {name: TuneResult.to_json()}, "best"}.
    ``budget`` seconds are shared out: each method gets what is left over the methods left."""
    from .search import search

    if isinstance(methods, str):
        methods = [methods]  # one method, not its letters
    if not isinstance(methods, (list, tuple)):
        raise TypeError(f"methods: expected a list of re-ranker names, got {methods!r} ({type(methods).__name__})")
    if not methods:
        raise ValueError("methods: empty; name at least one re-ranker")
    for m in methods:
        _check_method(m, "methods")
    depth = optional_int(depth, "depth", low=1)
    margin = finite_float(margin, "margin", low=0.0)
    standard_errors = finite_float(standard_errors, "standard_errors", low=0.0)
    if budget is not None:
        budget = finite_float(budget, "budget", low=0.0, low_open=True)
    if not callable(scorer):
        raise TypeError(f"scorer: expected a callable (ranking -> score), got {type(scorer).__name__}")
    progress = optional_callable(progress, "progress")
    report = optional_callable(report, "report")
    as_tensor(Q, "Q")  # a list has no .shape: refuse it by name before X.shape[0] below
    as_tensor(X, "X")
    n = X.shape[0]
    depth = n if depth is None else min(depth, n)
    scores, indices = search(Q, X, depth)
    ranking = Ranking(indices, scores)
    cosine = _score(scorer(ranking))
    out = {"format": CONFIG_FORMAT, "metric": getattr(scorer, "metric", "score"), "cosine": round(cosine, 4),
           "methods": {}}
    start = time.monotonic()
    total = sum(_grid_size(m, n) for m in methods)
    done = 0
    # single methods first: a chain's earlier stages then keep the settings tuned for them alone,
    # and the chain's search covers the rest. Fewer settings, and a first stage is not fitted to
    # the noise of what follows it (MPEG-7: searched with a cross-fitted CSA after it, GNN's k1
    # went to 5, and gnn+csa scored 81.32 on the other classes, below its default's 82.36;
    # with GNN as tuned alone, 83.94)
    methods = sorted(methods, key=lambda m: "+" in m)
    for i, method in enumerate(methods):
        names = method.split("+")
        fixed_stages = {s: dict(out["methods"][names[s]]["stages"][0][1]) for s in range(len(names) - 1)
                        if names[s] in out["methods"] and not learned_for(learned, names, s)}
        deadline = None
        if budget is not None:
            left = budget - (time.monotonic() - start)
            deadline = time.monotonic() + max(0.0, left / (len(methods) - i))
        base = done

        def on_eval(count, base=base):
            if progress is not None:
                progress(min(total, base + count), total)

        result = tune_method(method, Q, X, ranking, scorer, learned=learned, deadline=deadline, margin=margin,
                             standard_errors=standard_errors, on_eval=on_eval, fixed_stages=fixed_stages or None)
        done = base + _grid_size(method, n)
        if progress is not None:
            progress(min(done, total), total)
        out["methods"][method] = result.to_json()
        if report is not None:
            report(f"{method}: {result.default_score:.2f} at its defaults, {result.score:.2f} tuned "
                   f"({result.evaluations} settings, {result.seconds:.1f} s)"
                   + (f"; {', '.join(names[s] for s in result.fixed_stages)} as tuned alone"
                      if result.fixed_stages else "")
                   + (" - stopped by the budget" if result.stopped_by_budget else ""))
    if out["methods"]:
        out["best"] = max(out["methods"], key=lambda m: out["methods"][m]["score"])
    return out


def _grid_size(method: str, n: int) -> int:
    """A rough count of settings one round of the search tries (for the progress bar)."""
    return 1 + sum(len(v) - 1 for name in method.split("+") for v in search_space(name, n).values())


def _where(config) -> str:
    return "the dict" if isinstance(config, dict) else str(config)


def load_config(config: dict | PathLike) -> dict:
    """A tune result: a dict, or the path of the JSON file ``pycsa tune`` wrote. Its structure
    is checked here, so that a damaged or hand-edited file is named with the offending key
    instead of failing later inside the re-ranker's construction."""
    if isinstance(config, dict):
        cfg = config
    elif isinstance(config, (str, os.PathLike)):
        path = Path(os.fspath(config))
        if path.is_dir():
            raise ValueError(f"config: {path} is a directory, not the JSON file `pycsa tune --out` wrote")
        if not path.is_file():
            raise FileNotFoundError(f"config: no such file: {path}")
        try:
            cfg = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"config: {path} is not a JSON file written by `pycsa tune` ({exc})") from exc
    else:
        raise TypeError(f"config: expected a dict or the path of a `pycsa tune` JSON file, got {config!r} "
                        f"({type(config).__name__})")
    where = _where(config)
    if not isinstance(cfg, dict) or cfg.get("format") != CONFIG_FORMAT or not isinstance(cfg.get("methods"), dict):
        raise ValueError(f"config: {where} is not a `pycsa tune` result (format {CONFIG_FORMAT} with 'methods')")
    if not cfg["methods"]:
        raise ValueError(f"config: {where}: 'methods' is empty (nothing was tuned)")
    for name, entry in cfg["methods"].items():
        parts = name.split("+") if isinstance(name, str) else None
        stages = entry.get("stages") if isinstance(entry, dict) else None
        if (parts is None or not isinstance(stages, list) or len(stages) != len(parts)
                or not all(isinstance(s, (list, tuple)) and len(s) == 2 and s[0] == part and isinstance(s[1], dict)
                           for s, part in zip(stages, parts))):
            raise ValueError(f"config: {where}: methods[{name!r}] has no valid 'stages' ([[name, params], ...] "
                             f"for {parts}), got {reprlib.repr(stages)}")
        for stage, params in stages:
            for p, v in params.items():
                if not isinstance(p, str):
                    raise ValueError(f"config: {where}: methods[{name!r}]: {stage} has a parameter named {p!r}, "
                                     "not a str")
                if isinstance(v, float) and not math.isfinite(v):
                    raise ValueError(f"config: {where}: methods[{name!r}]: {stage}.{p} = {v} is not finite")
            # a hand-edited or foreign parameter would otherwise fail in create() naming no config;
            # a stage not registered now (a plugin not imported) is named when it is built
            if stage in available():
                try:
                    check_params(stage, params)
                except TypeError as exc:
                    raise ValueError(f"config: {where}: methods[{name!r}]: {exc}") from None
        # a NaN score (older `pycsa tune`) means every trial was accepted: the parameters were not tuned
        for key in ("score", "default_score"):
            v = entry.get(key, 0.0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"config: {where}: methods[{name!r}].{key} is {v!r}, not a finite number: "
                                 "its parameters were not tuned on a real score; rerun `pycsa tune`")
    saved = cfg.get("checkpoints", {})
    if not isinstance(saved, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in saved.items()):
        raise ValueError(f"config: {where}: 'checkpoints' must map learned methods to checkpoint files, "
                         f"got {reprlib.repr(saved)}")
    best = cfg.get("best")
    if best is not None and (not isinstance(best, str) or best not in cfg["methods"]):
        raise ValueError(f"config: {where}: 'best' is {best!r}, not one of its methods "
                         f"({', '.join(cfg['methods'])})")
    return cfg


def config_checkpoints(config: dict | PathLike) -> dict:
    """{method: path} of the models `pycsa tune --train` trained and saved beside the config;
    a relative path is relative to the config file's folder (to the current folder when the
    config is given as a dict: pass the file's path to keep them together)."""
    cfg = load_config(config)
    base = Path(os.fspath(config)).parent if isinstance(config, (str, os.PathLike)) else Path(".")
    return {name: str(base / path) for name, path in cfg.get("checkpoints", {}).items()}


def tuned_stages(config: dict | PathLike, method: str) -> list[tuple[str, dict]] | None:
    """The tuned (stage, params) of ``method``: its own entry, else each stage's own entry
    where the config has one (defaults for the others); None when the config knows none."""
    if not isinstance(method, str):
        raise TypeError(f"method: expected a re-ranker name or chain 'a+b', got {method!r} "
                        f"({type(method).__name__})")
    cfg = load_config(config)
    entry = cfg["methods"].get(method)
    if entry is not None:
        return [(n, dict(p)) for n, p in entry["stages"]]
    parts = method.split("+")
    found = [cfg["methods"].get(p) for p in parts]
    if not any(e is not None and len(e["stages"]) == 1 for e in found):
        return None
    return [(p, dict(e["stages"][0][1]) if e is not None and len(e["stages"]) == 1 else {})
            for p, e in zip(parts, found)]


def create_from_config(config: dict | PathLike, method: str | None = None, **learned_kwargs) -> Reranker:
    """The re-ranker ``method`` (default: the config's best) with its tuned parameters.
    ``learned_kwargs``: constructor arguments of learned stages, e.g.
    ``csa={"checkpoint": "csa.pt"}``; a learned stage that tune trained (``--train``) gets
    the checkpoint saved with the config unless given one here."""
    cfg = load_config(config)
    for name, kwargs in learned_kwargs.items():
        if not isinstance(kwargs, dict):
            raise TypeError(f"{name}: expected a dict of constructor arguments, e.g. csa={{'checkpoint': 'csa.pt'}}, "
                            f"got {kwargs!r}")
    if method is None:
        method = cfg.get("best")
        if method is None:
            raise ValueError(f"config: {_where(config)} names no 'best' method; pass method=, one of: "
                             f"{', '.join(cfg['methods'])}")
    stages = tuned_stages(cfg, method)
    if stages is None:
        raise ValueError(f"method: {method!r} was not tuned in this config (tuned: {', '.join(cfg['methods'])})")
    # a misspelt stage (cas= for csa=) would be dropped silently and the stage built without it
    names = [n for n, _ in stages]
    saved = config_checkpoints(config)
    whole = method in cfg["methods"]
    for s, name in enumerate(names):
        # a model saved for this chain ('k_reciprocal+csa': trained over k-reciprocal) before the stage's
        # own, when the chain was tuned as a whole (its stage then kept the model's parameters; a chain
        # put together from separate entries gets the plain model)
        path = saved.get(learned_key(saved, names, s) if whole else name)
        given = learned_kwargs.get(name)
        if path is not None and (given is None or (isinstance(given, dict) and "checkpoint" not in given
                                                   and "model" not in given)):
            learned_kwargs[name] = {**(given or {}), "checkpoint": path}
    for name, kwargs in learned_kwargs.items():
        if name not in names:
            raise TypeError(f"{name}: no stage of {method!r} is called {name!r} (its stages: {', '.join(names)})")
        for n, params in stages:
            both = sorted(set(kwargs) & set(params)) if n == name else []
            if both:  # else create() fails with "got multiple values", naming neither source
                raise ValueError(f"{name}: sets {', '.join(both)}, which the config already tunes for {name} "
                                 f"({', '.join(f'{p}={params[p]!r}' for p in both)}); pass only the "
                                 "constructor arguments the config lacks (e.g. a checkpoint)")
    return _build(stages, learned_kwargs)
