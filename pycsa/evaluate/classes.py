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

    Queries with no relevant item are left out of the mean; their AP is NaN.
    Returns the mAP as a fraction in [0, 1], or ``(mAP, aps)`` with
    ``return_aps=True``. Raises ``ValueError`` when no query has a relevant item.
    """
    ranks, q_labels, db_labels = _ranking_and_labels(ranks, q_labels, db_labels)
    q, n = ranks.shape[0], db_labels.shape[0]
    if ranks.shape[1] != n:
        raise ValueError(f"ranks: class_map needs a full ranking of all {n} database items, got {ranks.shape[1]}")
    rel = db_labels[ranks] == q_labels[:, None]
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
        raise ValueError("no query has a relevant database item; mAP is undefined")
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
    database items carrying the query's label. Rankings shorter than ``top``
    are counted as far as they go.
    """
    ranks, q_labels, db_labels = _ranking_and_labels(ranks, q_labels, db_labels)
    top = positive_count(top, "top")
    if ranks.shape[0] == 0:
        raise ValueError("ranks: has no queries")
    found = (db_labels[ranks[:, :top]] == q_labels[:, None]).sum(axis=1)
    if class_size is None:
        classes, counts = np.unique(db_labels, return_counts=True)
        where = np.searchsorted(classes, q_labels)
        where = np.minimum(where, len(classes) - 1) if len(classes) else where
        present = len(classes) > 0 and np.array_equal(classes[where], q_labels)
        if not present:
            raise ValueError("q_labels: holds a label absent from db_labels, so its class size is 0")
        size = counts[where]
    else:
        size = np.full(ranks.shape[0], positive_count(class_size, "class_size", "a positive int or None"))
    return float(np.mean(found / size))
