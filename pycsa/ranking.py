"""The interface every re-ranker shares, and the registry that lists them by name.

A re-ranker takes queries, the database and an initial ranking and returns a new
ranking. Swapping one for another is one line::

    scores, indices = pycsa.search(Q, X, k=100)
    new = pycsa.create("alpha_qe").fit(X).rerank(Q, X, pycsa.Ranking(indices, scores))
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Callable, ClassVar, NamedTuple, Optional, Sequence

import torch

from ._tensors import as_device, as_tensor, check_distinct_rows, check_features, check_finite, fingerprint, to_caller
from ._types import ArrayLike
from .search import sort_by_score

Progress = Optional[Callable[[int, int], None]]  # (done, total); the CLI passes a progress bar


class Ranking(NamedTuple):
    """Per query, database indices best first (q x k, int64) and their scores (q x k)."""

    indices: object
    scores: object


def resort_top(ranking: Ranking, top_scores: torch.Tensor) -> Ranking:
    """``ranking`` (torch tensors) with its first m = ``top_scores.shape[1]`` items re-sorted
    by ``top_scores`` (descending, equal scores by the lower index) and scored by them; the
    items past m keep their place and score."""
    m = top_scores.shape[1]
    new_scores, new_top = sort_by_score(top_scores, ranking.indices[:, :m])
    indices = ranking.indices.clone()
    indices[:, :m] = new_top
    scores = ranking.scores.clone().float()
    scores[:, :m] = new_scores
    return Ranking(indices, scores)


class Reranker:
    """Base class: ``fit`` does the offline work on the database, ``rerank`` the online work.

    Subclasses implement ``_rerank`` on torch tensors; inputs may be torch tensors or
    numpy arrays (rows are items) and the result comes back in the queries' kind.

    Re-rankers whose ``fit`` keeps something computed from the database (``keeps_fit``:
    the query and database expansions, diffusion) remember which database that was. A
    ``rerank`` before any ``fit`` fits on its database; after a ``fit``, ``rerank`` refuses
    (ValueError naming ``database``) a database that is another array or was changed in
    place since, instead of answering from what ``fit`` computed for the old one: call
    ``fit`` again. Changes are seen from the array's identity and layout, torch's count of
    in-place changes and a hash of 256 evenly spaced rows (a numpy array edited in place
    outside those rows is not noticed).

    Every parameter is checked when the re-ranker is built; ``rerank`` checks its inputs
    (finite features of bounded norm, a non-empty database, a ranking of depth >= 1 with
    finite scores that lists each database item at most once per row) and refuses, naming
    ``queries`` and ``database``, a result with NaN or inf scores.
    """

    name: ClassVar[str] = ""
    keeps_fit: ClassVar[bool] = False  # fit stores state derived from the database
    _fitted_on = None  # the Fingerprint of the database fit used

    def fit(self, database: ArrayLike, *, progress: Progress = None) -> "Reranker":
        # nothing is kept, but the database is checked as rerank would: an empty one has
        # nothing to rank, and saying so at fit is what the re-rankers that keep state do
        X, _ = as_tensor(database, "database")
        check_features(X.detach(), "database", allow_empty=False)
        return self

    def _remember(self, database) -> None:
        """Called by ``fit`` of a re-ranker that ``keeps_fit``, with the array it was given."""
        self._fitted_on = fingerprint(database)

    def _prepare(self, database) -> None:
        """Before ``_rerank``: fits on ``database`` if never fitted; refuses another database."""
        if not self.keeps_fit:
            return
        if self._fitted_on is None:
            self.fit(database)
            return
        why = self._fitted_on.differs(fingerprint(database))
        if why:
            raise ValueError(f"database: differs from the one given to fit ({why}"
                             f"{' fit' if why.endswith('since') else ''}); call fit again with this database")

    def rerank(self, queries: ArrayLike, database: ArrayLike, ranking: Ranking, *,
               progress: Progress = None) -> Ranking:
        Q, was_numpy = as_tensor(queries, "queries")
        X, _ = as_tensor(database, "database")
        Q, X = Q.detach(), X.detach()
        check_features(Q, "queries")
        check_features(X, "database", allow_empty=False)
        if Q.shape[1] != X.shape[1]:
            raise ValueError(f"queries: dimension {Q.shape[1]} differs from database dimension {X.shape[1]}")
        if Q.device != X.device:
            raise ValueError(f"queries: on {Q.device} but database is on {X.device}")
        if getattr(self, "device", None) is not None:
            as_device(self.device, "device")
        if not isinstance(ranking, (tuple, list)) or len(ranking) != 2:
            raise TypeError(f"ranking: expected a Ranking (indices, scores), got {type(ranking).__name__}")
        idx, _ = as_tensor(ranking[0], "ranking.indices")
        sc, _ = as_tensor(ranking[1], "ranking.scores")
        idx, sc = idx.detach().to(Q.device), sc.detach()
        if idx.dim() != 2 or idx.shape[0] != Q.shape[0] or tuple(sc.shape) != tuple(idx.shape):
            raise ValueError(f"ranking: expected indices and scores of shape ({Q.shape[0]}, k), "
                             f"got {tuple(idx.shape)} and {tuple(sc.shape)}")
        if idx.shape[1] < 1:
            raise ValueError(f"ranking: has depth 0 ({Q.shape[0]} x 0); give at least one candidate per query")
        if idx.is_floating_point() or idx.dtype == torch.bool:
            raise TypeError(f"ranking.indices: expected integers, got {idx.dtype}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= X.shape[0]):
            raise IndexError(f"ranking.indices: must lie in [0, {X.shape[0]}) (database rows)")
        check_distinct_rows(idx, "ranking.indices", X.shape[0])
        if sc.dtype == torch.bool:
            raise TypeError("ranking.scores: expected numbers, got bool")
        if sc.is_floating_point():
            check_finite(sc, "ranking.scores")
        self._prepare(database)
        out = self._rerank(Q, X, Ranking(idx.long(), sc.to(Q.device)), progress)
        if out.scores.is_floating_point() and out.scores.numel() and not bool(torch.isfinite(out.scores).all()):
            raise ValueError(f"queries/database: {self.name or type(self).__name__} gave NaN or inf scores for "
                             "finite inputs: the features are too large for its float32 arithmetic; "
                             "L2-normalise them")
        return Ranking(to_caller(out.indices, was_numpy), to_caller(out.scores, was_numpy))

    __call__ = rerank

    def _rerank(self, Q: torch.Tensor, X: torch.Tensor, ranking: Ranking, progress: Progress) -> Ranking:
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


_REGISTRY: dict[str, type] = {}


def _check_name(name) -> None:
    if not isinstance(name, str):
        raise TypeError(f"name: expected a re-ranker name (str), got {name!r} ({type(name).__name__})")


def register(name: str) -> Callable[[type], type]:
    """Class decorator: makes a re-ranker available to ``create``, the CLI and the benchmarks.
    ``name``: a non-empty str without "+", which ``create`` reads as a chain."""
    _check_name(name)
    if not name or "+" in name:
        raise ValueError(f"name: must be non-empty and without '+' (create reads 'a+b' as a chain), got {name!r}")

    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"re-ranker name {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def registered(name: str) -> type:
    """The re-ranker class registered under ``name``."""
    _check_name(name)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"name: unknown re-ranker {name!r}; available: {', '.join(available())}") from None


class Chain(Reranker):
    """Re-rankers applied one after another, each to the previous one's ranking.

    ``Chain([create("alpha_qe"), create("superglobal")])``, or ``create("alpha_qe+superglobal")``.
    """

    def __init__(self, rerankers: Sequence[Reranker]):
        # list(None) or list(5) would fail with a message that names no argument
        if isinstance(rerankers, (Reranker, str)) or not isinstance(rerankers, Iterable):
            raise TypeError(f"rerankers: expected a non-empty list of Reranker objects, got {rerankers!r} "
                            f"({type(rerankers).__name__})")
        self.rerankers = list(rerankers)
        if not self.rerankers or not all(isinstance(r, Reranker) for r in self.rerankers):
            raise ValueError("rerankers: expected a non-empty list of Reranker objects")
        self.name = "+".join(r.name for r in self.rerankers)

    def fit(self, database: ArrayLike, *, progress: Progress = None) -> "Chain":
        for r in self.rerankers:
            r.fit(database, progress=progress)
        return self

    def _prepare(self, database) -> None:
        for r in self.rerankers:
            r._prepare(database)

    def _rerank(self, Q, X, ranking: Ranking, progress: Progress) -> Ranking:
        for r in self.rerankers:
            ranking = r._rerank(Q, X, ranking, progress)
        return ranking


def create(name: str, **params) -> Reranker:
    """A re-ranker by its registry name, e.g. ``create("alpha_qe", k=5)``; "a+b" chains a then b."""
    _check_name(name)
    if "+" in name:
        if params:
            raise ValueError(f"name: parameters cannot be given to a chain ({name!r}); build it with "
                             "Chain([create(a, ...), create(b, ...)])")
        return Chain([create(part) for part in name.split("+")])
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"name: unknown re-ranker {name!r}; available: {', '.join(available())}") from None
    check_params(name, params)
    return cls(**params)


def check_params(name: str, params) -> None:
    """TypeError naming the first of ``params`` that re-ranker ``name``'s constructor does not
    take: Python's own message names the private class and no fix."""
    import inspect

    sig = inspect.signature(registered(name).__init__)
    kinds = {p.kind for p in sig.parameters.values()}
    if inspect.Parameter.VAR_KEYWORD in kinds:  # takes anything: its own checks apply
        return
    takes = [p.name for p in sig.parameters.values() if p.name != "self"
             and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    for key in params:
        if key not in takes:
            raise TypeError(f"{key}: {name} takes no parameter {key!r} "
                            f"({'it takes ' + ', '.join(takes) if takes else 'it takes none'})")
