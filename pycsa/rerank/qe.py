"""Query expansion and database augmentation (SPEC §5), batched over all queries.

Each expansion is one weighted gather-sum of the top-k neighbours for every query
at once (pycsa.ops.weighted_gather_sum: the q x k x d gather is never held), then
a new exact search.

Weights, with the item itself weighted 1 and its neighbours at rank r = 1..k:
- AQE: 1 (plain mean).                   - AQEwD: (k - r + 1) / k.
- αQE: max(s_r, 0)^α (α = 3).            - DBA / αDBA: the same for database rows.
"""
from __future__ import annotations

import torch

from .._checks import finite_float, positive_int
from .._tensors import as_tensor, check_features, rescaled
from .._types import ArrayLike
from ..ops import weighted_gather_sum
from ..ranking import Progress, Ranking, Reranker, register
from ..search import Index


def neighbour_weights(scores: torch.Tensor, kind: str, alpha: float) -> torch.Tensor:
    """Weights of the k neighbours (q x k) for the expansion ``kind``."""
    k = scores.shape[1]
    if kind == "mean":
        return torch.ones_like(scores)
    if kind == "decay":
        return (k - torch.arange(k, device=scores.device, dtype=scores.dtype)).div(k).expand_as(scores)
    if kind == "alpha":
        return scores.clamp(min=0).pow(alpha)
    raise ValueError(f"kind: expected 'mean', 'decay' or 'alpha', got {kind!r}")


def expand(items: torch.Tensor, database: torch.Tensor, indices: torch.Tensor, scores: torch.Tensor,
           kind: str = "alpha", alpha: float = 3.0) -> torch.Tensor:
    """``normalize(items + Σ_r w_r · database[indices[:, r]])`` for every row at once."""
    scores = scores.float()
    own = None  # the item's weight, 1
    if kind == "alpha" and scores.shape[1]:
        # Similarities above 1 (features not L2-normalised) raised to α overflow float32.
        # The sum is normalised, so a row's weights, the item's 1 included, may all be
        # divided by its largest similarity's α-th power: the same expansion, finite.
        top = scores.amax(1, keepdim=True).clamp(min=1)
        scores, own = scores / top, top.double().pow(-alpha).float()
    w = neighbour_weights(scores, kind, alpha)
    agg = (items.float() if own is None else items.float() * own) + weighted_gather_sum(database, indices, w).float()
    # normalize() divides rows of norm below 1e-12 by 1e-12, not by their norm: tiny
    # features would come back unnormalised (a row's own power of two changes nothing else)
    agg, _ = rescaled(agg, per_row=True)
    return torch.nn.functional.normalize(agg, dim=1).to(items.dtype)


class _QueryExpansion(Reranker):
    """Expands each query with its top-k and searches the database again.

    ``fit(database)`` builds the search index once (see :class:`pycsa.Reranker` for a
    database that differs from fit's).
    """

    kind = "mean"
    keeps_fit = True
    # the exponent of the "alpha" weights; AQE and AQEwD have no such parameter, and taking
    # one they ignore would let a tuner or a caller believe it changes something
    _exponent = 0.0

    def __init__(self, k: int = 10):
        self.k = positive_int(k, "k")
        self._index = None

    def fit(self, database, *, progress: Progress = None):
        X, _ = as_tensor(database, "database")
        check_features(X.detach(), "database", allow_empty=False)
        self._index = Index(database)
        self._remember(database)
        return self

    def _rerank(self, Q, X, ranking: Ranking, progress: Progress) -> Ranking:
        k = min(self.k, ranking.indices.shape[1])
        Qe = expand(Q, X, ranking.indices[:, :k], ranking.scores[:, :k], self.kind, self._exponent)
        scores, indices = self._index.search(Qe, ranking.indices.shape[1], progress=progress)
        return Ranking(indices, scores)


@register("aqe")
class AQE(_QueryExpansion):
    """Average query expansion: the query and its top-k, averaged, then searched again."""

    kind = "mean"


@register("aqewd")
class AQEwD(_QueryExpansion):
    """AQE with weights decaying linearly with rank."""

    kind = "decay"


class _AlphaWeights:
    """The α of αQE and αDBA: neighbours weighted by max(similarity, 0)^α."""

    kind = "alpha"

    def __init__(self, k: int = 10, alpha: float = 3.0):
        super().__init__(k)
        self.alpha = finite_float(alpha, "alpha", low=0)

    @property
    def _exponent(self) -> float:
        return self.alpha


@register("alpha_qe")
class AlphaQE(_AlphaWeights, _QueryExpansion):
    """αQE: neighbours weighted by max(similarity, 0)^α (``alpha`` >= 0)."""


class _DatabaseAugmentation(Reranker):
    """Replaces every database row by its expansion over its own top-k (offline), then searches."""

    kind = "mean"
    keeps_fit = True
    _exponent = 0.0  # as in _QueryExpansion: only the "alpha" kind has an exponent

    def __init__(self, k: int = 10):
        self.k = positive_int(k, "k")
        self._augmented = None  # Index over the augmented database

    def fit(self, database, *, progress: Progress = None):
        X, _ = as_tensor(database, "database")
        X = X.detach()
        check_features(X, "database", allow_empty=False)
        k = min(self.k + 1, X.shape[0])
        scores, indices = Index(X).search(X, k, progress=progress)
        # Column 0 is normally the row itself (weight 1 in expand); drop it from the neighbours.
        self._augmented = Index(expand(X, X, indices[:, 1:], scores[:, 1:], self.kind, self._exponent))
        self._remember(database)
        return self

    def _rerank(self, Q, X, ranking: Ranking, progress: Progress) -> Ranking:
        scores, indices = self._augmented.search(Q, ranking.indices.shape[1], progress=progress)
        return Ranking(indices, scores)


@register("dba")
class DBA(_DatabaseAugmentation):
    """Database-side augmentation: each row averaged with its top-k."""

    kind = "mean"


@register("alpha_dba")
class AlphaDBA(_AlphaWeights, _DatabaseAugmentation):
    """αDBA: database rows expanded with weights max(similarity, 0)^α (``alpha`` >= 0)."""


@register("alpha_qe_dba")
class AlphaQEDBA(Reranker):
    """αDBA on the database (offline), then αQE against the augmented database: the query's
    top-k in the augmented database expand it, and the expanded query searches the augmented
    database again. The standard combination of the two (Radenović et al. 2018), unlike the
    chain ``alpha_dba+alpha_qe``, whose query expansion searches the original database.
    The input ranking's order is not used: the first search is against the augmented
    database; its depth is the output's."""

    keeps_fit = True

    def __init__(self, k: int = 10, alpha: float = 3.0, dba_k: int | None = None, dba_alpha: float | None = None):
        self.k, self.alpha = positive_int(k, "k"), finite_float(alpha, "alpha", low=0)
        self.dba_k = self.k if dba_k is None else positive_int(dba_k, "dba_k")
        self.dba_alpha = self.alpha if dba_alpha is None else finite_float(dba_alpha, "dba_alpha", low=0)
        self._dba = AlphaDBA(self.dba_k, self.dba_alpha)

    def fit(self, database: ArrayLike, *, progress: Progress = None) -> "AlphaQEDBA":
        self._dba.fit(database, progress=progress)
        self._remember(database)
        return self

    def _rerank(self, Q, X, ranking: Ranking, progress: Progress) -> Ranking:
        augmented = self._dba._augmented
        depth = ranking.indices.shape[1]
        k = min(self.k, X.shape[0])
        scores, indices = augmented.search(Q, k)
        Qe = expand(Q, augmented.database, indices, scores, "alpha", self.alpha)
        scores, indices = augmented.search(Qe, depth, progress=progress)
        return Ranking(indices, scores)
