"""Class-level retrieval evaluation: mAP by label equality, and the MPEG-7 bullseye score."""
from __future__ import annotations

import numpy as np

from .._types import ArrayLike
from ._inputs import check_index_range, check_no_repeats, labels, positive_count, ranking


def _ranking_and_labels(ranks, q_labels, db_labels):
    ranks = ranking(ranks, "ranks")
    q_labels = labels(q_labels, "q_labels", ranks.shape[0])
    db_labels = labels(db_labels, "db_labels")
    n = db_labels.shape[0]
    if ranks.shape[1] > n:
        raise ValueError(f"ranks: has {ranks.shape[1]} items per query but db_labels has {n}")
    check_index_range(ranks, "ranks", n)
    check_no_repeats(ranks, "ranks")
    return ranks, q_labels, db_labels


def _distractors(q_labels: np.ndarray) -> np.ndarray:
    """Which queries carry a negative numeric label: distractors, as training and the class
    split read them, so members of no class (a label shared by them is not a class)."""
    if q_labels.dtype.kind in "iuf":
        return q_labels < 0
    return np.zeros(q_labels.shape, dtype=bool)


def _no_query_left(distractors: np.ndarray) -> None:
    if distractors.size and distractors.all():
        raise ValueError("q_labels: every query is a distractor (a negative label), so none has a relevant item")


def class_map(ranks: ArrayLike, q_labels: ArrayLike, db_labels: ArrayLike, exclude_self: bool = False,
              return_aps: bool = False) -> float | tuple[float, np.ndarray]:
    """Mean average precision where a database item is relevant iff its label equals the query's.

    ``ranks`` is ``(queries, n)``: for each query a full ranking of the ``n``
    database items, best first. AP is the mean, over the query's relevant
    items, of precision at each one's position (non-interpolated, over the
    whole ranking).

    With ``exclude_self=True`` the queries are the database (query ``i`` is
    database item ``i``, so ``q_labels[i]`` must equal ``db_labels[i]``): item
    ``i`` is deleted from query ``i``'s ranking and is not counted as a
    positive.

    Negative numeric labels mark distractors: they belong to no class, so a
    distractor query has no relevant item and a distractor is relevant to no query.
    Queries with no relevant item are left out of the mean; their AP is NaN.
    Returns the mAP as a fraction in [0, 1], or ``(mAP, aps)`` with
    ``return_aps=True``. Raises ``ValueError`` when no query has a relevant item.
    """
    ranks, q_labels, db_labels = _ranking_and_labels(ranks, q_labels, db_labels)
    q, n = ranks.shape[0], db_labels.shape[0]
    if ranks.shape[1] != n:
        raise ValueError(f"ranks: class_map needs a full ranking of all {n} database items, got {ranks.shape[1]}")
    distractors = _distractors(q_labels)
    _no_query_left(distractors)
    rel = (db_labels[ranks] == q_labels[:, None]) & ~distractors[:, None]
    if exclude_self:
        if q > n:
            raise ValueError(f"q_labels: exclude_self needs query i to be database item i, but {q} queries > {n} items")
        if not np.array_equal(q_labels, db_labels[:q]):
            raise ValueError("q_labels: with exclude_self, q_labels[i] must equal db_labels[i]")
        kept = ranks != np.arange(q)[:, None]
        # drop each query's own column: every row keeps exactly n - 1 items
        rel = rel[kept].reshape(q, n - 1)
    n_rel = rel.sum(axis=1)
    hits = np.cumsum(rel, axis=1)
    at = np.arange(1, rel.shape[1] + 1)
    prec_sum = np.where(rel, hits / at, 0.0).sum(axis=1)
    aps = np.full(q, np.nan)
    has = n_rel > 0
    aps[has] = prec_sum[has] / n_rel[has]
    if not has.any():
        raise ValueError("q_labels: no query has a relevant database item (none of their labels is among the "
                         "items ranked); mAP is undefined")
    m = float(aps[has].mean())
    return (m, aps) if return_aps else m


def bullseye(ranks: ArrayLike, q_labels: ArrayLike, db_labels: ArrayLike, top: int = 40,
             class_size: int | None = None) -> float:
    """MPEG-7 bullseye score, as a fraction in [0, 1] (multiply by 100 for the usual %).

    For each query, count the database items of the query's class among the
    first ``top`` of its ranking, the query itself included (in the MPEG-7
    protocol the query is in the database and normally ranks itself first),
    and divide by the class size; average over queries. ``class_size`` is an
    int used for every query (20 for MPEG-7), or ``None`` to use the number of
    database items carrying the query's label; an int smaller than what a query
    can find among its first ``top`` is refused, as the fraction would exceed 1.
    Rankings shorter than ``top`` are counted as far as they go. Distractor
    queries (negative numeric labels, see :func:`class_map`) are left out.
    """
    ranks, q_labels, db_labels = _ranking_and_labels(ranks, q_labels, db_labels)
    top = positive_count(top, "top")
    if ranks.shape[0] == 0:
        raise ValueError("ranks: has no queries")
    kept = ~_distractors(q_labels)
    _no_query_left(~kept)
    ranks, q_labels = ranks[kept], q_labels[kept]
    found = (db_labels[ranks[:, :top]] == q_labels[:, None]).sum(axis=1)
    classes, counts = np.unique(db_labels, return_counts=True)  # not empty: ranks index db_labels
    where = np.minimum(np.searchsorted(classes, q_labels), len(classes) - 1)
    present = classes[where] == q_labels
    members = np.where(present, counts[where], 0)
    if class_size is None:
        if not present.all():
            raise ValueError("q_labels: holds a label absent from db_labels, so its class size is 0")
        size = members
    else:
        size = positive_count(class_size, "class_size", "a positive int or None")
        depth = min(top, ranks.shape[1])
        reach = int(np.minimum(members, depth).max())
        if size < reach:
            raise ValueError(f"class_size: {size} is less than {reach}, the items of one query's class that its "
                             f"first {depth} ranks can hold: the score would exceed 1 (None uses each class's size)")
    return float(np.mean(found / size))
