"""Revisited Oxford/Paris evaluation (Radenović et al. 2018): mAP and mP@k per protocol.

Protocols (SPEC §9), from each query's ``easy``/``hard``/``junk`` index lists:

============  ===============  ====================
protocol      positives        junk (ignored)
============  ===============  ====================
``easy``      easy             junk + hard
``medium``    easy + hard      junk
``hard``      hard             junk + easy
============  ===============  ====================

An item that is both positive and junk counts as positive (the official files
have no such overlap).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .._types import ArrayLike
from ._inputs import (INT64_MAX, as_int64, check_depth, check_index_range, check_no_repeats, int_matrix,
                      positive_count, to_numpy)

PROTOCOLS = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}

# bounds the temporaries to a few tens of MB however many queries come in
_CELLS_PER_CHUNK = 1 << 22


def revisited(ranks: ArrayLike, gnd: Sequence[dict], kappas: Sequence[int] = (1, 5, 10), ranks_layout: str = "qn", *,
              n_db: int | None = None) -> dict:
    """Score rankings under the Easy, Medium and Hard protocols.

    Parameters
    ----------
    ranks : integer array (numpy, torch tensor or nested lists)
        Database indices, best first. ``ranks_layout="qn"`` (ours): one row per
        query, shape ``(queries, m)``. ``ranks_layout="nq"`` (revisitop's
        ``compute_map``): one column per query, shape ``(m, queries)``. ``m`` may
        be below the database size (a partial ranking); each item appears at
        most once per query.
    gnd : dict or list of dicts
        The dict from :func:`pycsa.datasets.load_gnd` (its ``"gnd"`` list is
        used, and ``len(imlist)`` bounds the indices), or the per-query list of
        dicts with ``easy``, ``hard`` and ``junk`` index lists.
    kappas : tuple of int
        Cut-offs for mP@k.
    n_db : int, optional
        Database size, to check indices against when ``gnd`` is a bare list.

    Returns
    -------
    dict
        ``{"easy"|"medium"|"hard": {"mAP": float, "mP@k": float for each k,
        "aps": per-query AP array}}``. All values are FRACTIONS in [0, 1], not
        percent. Queries with no positive under a protocol get AP NaN and are
        left out of that protocol's means (not counted as 0); if no query has a
        positive the means are NaN.

    Definitions (those of revisitop's ``compute_ap``/``compute_map``)
    ------------------------------------------------------------------
    Junk items are deleted from the ranking first; ``r_j`` is then the 0-based
    position of the ``j``-th retrieved positive (``j`` 0-based) and ``P`` the
    number of positives in the ground truth. AP integrates precision over
    recall with the trapezoid rule, each positive a recall step of ``1/P``::

        AP = sum_j (p0_j + p1_j) / 2 / P,  p0_j = j / r_j (1 when r_j = 0),
                                           p1_j = (j + 1) / (r_j + 1)

    Positives absent from a partial ranking add nothing, i.e. count as never
    retrieved.

    P@k uses 1-based junk-free positions ``R_j = r_j + 1`` and clips ``k`` to
    the position of the last retrieved positive: ``k' = min(max_j R_j, k)`` and
    ``P@k = #{j : R_j <= k'} / k'``. So a query whose positives all lie within
    the first ``k`` scores ``#positives / R_last`` rather than
    ``#positives / k``. A query that retrieves no positive scores P@k = 0 and
    AP = 0 (revisitop's code has no such case, its rankings being complete).
    mP@k is the mean of P@k over the queries that have positives.

    Raises ``ValueError`` naming the argument for rankings of depth 0, repeated items,
    non-integer indices or shapes that do not fit ``gnd``, and ``IndexError`` (also a
    ValueError) for an index of ``ranks`` or ``gnd`` below 0 or, where the database size is
    known, not below it. Without a known size, a ground-truth index however large costs
    nothing: the per-query tables cover only the items the ranking lists.
    """
    entries, n_db = _entries(gnd, n_db)
    if ranks_layout not in ("qn", "nq"):
        raise ValueError(f"ranks_layout: expected 'qn' or 'nq', got {ranks_layout!r}")
    ranks = int_matrix(ranks, "ranks")
    given_shape = ranks.shape
    if ranks_layout == "nq":
        ranks = ranks.T
    check_depth(ranks, "ranks")
    if ranks.shape[0] != len(entries):
        axis = "rows" if ranks_layout == "qn" else "columns"
        raise ValueError(
            f"gnd: has {len(entries)} queries but ranks (shape {given_shape}, "
            f"ranks_layout={ranks_layout!r}) has {ranks.shape[0]} query {axis}"
        )
    if n_db is not None and ranks.shape[1] > n_db:
        raise ValueError(f"ranks: has {ranks.shape[1]} items per query but the database has {n_db}")
    check_index_range(ranks, "ranks", n_db)
    check_no_repeats(ranks, "ranks")
    kappas = _kappas(kappas)
    ranks, width, inside = _ranked_space(ranks)

    out = {}
    for name, (pos_keys, junk_keys) in PROTOCOLS.items():
        aps, prs = _protocol(ranks, entries, pos_keys, junk_keys, kappas, width, inside)
        has_pos = ~np.isnan(aps)
        res = {"mAP": _mean(aps[has_pos])}
        for c, k in enumerate(kappas):
            res[f"mP@{k}"] = _mean(prs[has_pos, c])
        res["aps"] = aps
        out[name] = res
    return out


def _mean(v: np.ndarray) -> float:
    return float(v.mean()) if v.size else float("nan")


def _kappas(kappas) -> tuple[int, ...]:
    try:
        raw = list(kappas)
    except TypeError as exc:
        raise ValueError(f"kappas: expected a sequence of positive ints, got {kappas!r}") from exc
    try:
        if raw:
            out = tuple(positive_count(k, "kappas") for k in raw)
            # numpy compares them with int64 positions: a larger one overflows there
            if max(out) <= INT64_MAX:
                return out
    except ValueError:
        pass
    raise ValueError(f"kappas: expected positive ints (at most 2**63 - 1), got {kappas!r}")


def _entries(gnd, n_db):
    """Per-query {"easy","hard","junk"} int64 arrays, and the database size if known."""
    if isinstance(gnd, dict):
        if "gnd" not in gnd:
            raise ValueError("gnd: a dict must hold the per-query list under key 'gnd'")
        if "imlist" in gnd:
            imlist = gnd["imlist"]
            # only its length is used: a number or None here is a damaged dict, not a size
            if isinstance(imlist, (str, bytes, dict)) or not hasattr(imlist, "__len__"):
                raise ValueError(f"gnd: 'imlist' is a {type(imlist).__name__}, expected the list of database "
                                 "image names")
            n_img = len(imlist)
            if n_db is not None and n_db != n_img:
                raise ValueError(f"n_db: {n_db} disagrees with len(gnd['imlist']) = {n_img}")
            n_db = n_img
        gnd = gnd["gnd"]
    if not isinstance(gnd, (list, tuple)):
        raise ValueError(f"gnd: expected the loaded dict or a list of per-query dicts, got {type(gnd).__name__}")
    if n_db is not None:
        n_db = positive_count(n_db, "n_db", "a non-negative int", low=0)
    entries = []
    for i, e in enumerate(gnd):
        if not isinstance(e, dict) or any(k not in e for k in ("easy", "hard", "junk")):
            raise ValueError(f"gnd[{i}]: expected a dict with 'easy', 'hard' and 'junk' index lists")
        arrs = {}
        for k in ("easy", "hard", "junk"):
            a = to_numpy(e[k], f"gnd[{i}]['{k}']").reshape(-1)
            if a.size == 0:
                a = a.astype(np.int64)
            elif a.dtype.kind not in "iu":
                raise ValueError(f"gnd[{i}]['{k}']: expected integer indices, got dtype {a.dtype}")
            a = as_int64(a, f"gnd[{i}]['{k}']")
            check_index_range(a, f"gnd[{i}]['{k}']", n_db)
            arrs[k] = a
        entries.append(arrs)
    return entries, n_db


def _ranked_space(ranks):
    """The ranking, the width of the per-query tables and a map of index arrays into them.

    The tables cover only the items the ranking lists: a positive it never lists cannot be
    hit and counts only in P. Sparse indices (a top-100 of a 10**9-item database, or a
    damaged ground truth holding 10**12) are renumbered first, so no table grows with an
    index value."""
    top = int(ranks.max()) + 1 if ranks.size else 0
    if top <= 4 * ranks.size + 1024:
        return ranks, top, lambda a: a[a < top]
    ids = np.unique(ranks)

    def inside(a):
        at = np.searchsorted(ids, a)
        found = at < ids.size
        found[found] = ids[at[found]] == a[found]
        return at[found]

    return np.searchsorted(ids, ranks), ids.size, inside


def _protocol(ranks, entries, pos_keys, junk_keys, kappas, width, inside):
    q, m = ranks.shape
    aps = np.full(q, np.nan)
    prs = np.full((q, len(kappas)), np.nan)
    step = max(1, _CELLS_PER_CHUNK // max(width, m, 1))
    for s in range(0, q, step):
        rows = range(s, min(q, s + step))
        pos_mask = np.zeros((len(rows), width), dtype=bool)
        junk_mask = np.zeros((len(rows), width), dtype=bool)
        n_pos = np.zeros(len(rows), dtype=np.int64)
        for r, i in enumerate(rows):
            pos = np.concatenate([entries[i][k] for k in pos_keys])
            n_pos[r] = np.unique(pos).size
            pos_mask[r, inside(pos)] = True
            for k in junk_keys:
                junk_mask[r, inside(entries[i][k])] = True
        at = np.arange(len(rows))[:, None]
        ranked = ranks[s:s + len(rows)]
        hit = pos_mask[at, ranked]
        keep = ~(junk_mask[at, ranked] & ~hit)
        r0 = np.cumsum(keep, axis=1) - 1  # 0-based position once junk is gone
        j = np.cumsum(hit, axis=1) - 1  # how many positives came before, at each hit
        # r0 is -1 on junk ahead of the first kept item; clamp so only hits matter
        p0 = np.where(r0 > 0, j / np.maximum(r0, 1), 1.0)
        p1 = (j + 1) / np.maximum(r0 + 1, 1)
        area = np.where(hit, (p0 + p1) / 2.0, 0.0).sum(axis=1)
        valid = n_pos > 0
        aps[s:s + len(rows)][valid] = area[valid] / n_pos[valid]

        pos1 = np.where(hit, r0 + 1, 0)
        last = pos1.max(axis=1, initial=0)
        for c, k in enumerate(kappas):
            kq = np.minimum(last, k)
            count = (hit & (pos1 <= kq[:, None])).sum(axis=1)
            pr = np.where(kq > 0, count / np.maximum(kq, 1), 0.0)
            prs[s:s + len(rows), c][valid] = pr[valid]
    return aps, prs
