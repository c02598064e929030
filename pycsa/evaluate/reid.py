"""Person re-identification evaluation, Market-1501 style: CMC curve and mAP."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .._types import ArrayLike
from ._inputs import labels, positive_count, to_numpy

# bounds the (rows x gallery) temporaries whatever the query count
_CELLS_PER_CHUNK = 1 << 22
# CMC values past the gallery only repeat the last one; this many are written out at most
# (8 MiB), so that max_rank=10**9 is an error that says so, not 8 GB of copies
_MAX_PADDED_RANK = 1 << 20


def reid(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike, g_camids: ArrayLike,
         max_rank: int = 50, *, junk_pids: Sequence[int] = ()) -> tuple[np.ndarray, float]:
    """CMC and mAP for a query x gallery distance matrix.

    Each query's gallery is sorted by ascending distance with a stable sort, so
    equal distances keep the lower gallery index first. Gallery items with the
    query's identity AND the query's camera are then dropped (the same shot
    seen again proves nothing), as are items whose identity is in
    ``junk_pids`` (e.g. ``(-1,)`` for Market-1501's junk images; by default
    none, as in the usual Market-1501 evaluation code, whose loaders already
    leave them out). A query with no remaining true match is left out of both
    CMC and mAP.

    Returns ``(cmc, mAP)``: ``cmc[r]`` is the fraction of kept queries whose
    first true match is within the top ``r + 1`` (a float array of length
    ``max_rank``; ranks past the end of a short gallery keep the final value, and a
    ``max_rank`` above both the gallery size and 2**20 is refused);
    ``mAP`` is the mean over kept queries of AP = mean, over the query's true
    matches, of precision at each match's position. Both are fractions in
    [0, 1]. Raises ``ValueError`` when no query has a valid match, or on
    inconsistent shapes.
    """
    dist = to_numpy(distmat, "distmat")
    if dist.ndim != 2:
        raise ValueError(f"distmat: expected a 2-D (queries x gallery) array, got shape {dist.shape}")
    if dist.dtype.kind not in "fiu":
        raise TypeError(f"distmat: expected a numeric dtype, got {dist.dtype}")
    if dist.dtype.kind == "f" and dist.size and not np.isfinite(dist).all():
        raise ValueError("distmat: contains NaN or inf")
    nq, ng = dist.shape
    q_pids = labels(q_pids, "q_pids", nq)
    q_camids = labels(q_camids, "q_camids", nq)
    g_pids = labels(g_pids, "g_pids", ng)
    g_camids = labels(g_camids, "g_camids", ng)
    max_rank = positive_count(max_rank, "max_rank")
    if max_rank > max(ng, _MAX_PADDED_RANK):
        size = max_rank * 8
        size = f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"
        raise ValueError(f"max_rank: {max_rank} would need {size} for a CMC curve whose values past the "
                         f"gallery's {ng} items all repeat the last one; pass max_rank <= {ng}")
    g_junk = np.isin(g_pids, to_numpy(junk_pids, "junk_pids").reshape(-1))

    first_hit = []  # 0-based position of the first true match, per kept query
    aps = []
    step = max(1, _CELLS_PER_CHUNK // max(ng, 1))
    for s in range(0, nq, step):
        e = min(nq, s + step)
        order = np.argsort(dist[s:e], axis=1, kind="stable")
        same_id = g_pids[order] == q_pids[s:e, None]
        drop = (same_id & (g_camids[order] == q_camids[s:e, None])) | g_junk[order]
        keep = ~drop
        match = same_id & keep
        n_match = match.sum(axis=1)
        pos = np.cumsum(keep, axis=1)  # 1-based position among kept items
        hits = np.cumsum(match, axis=1)
        prec = np.where(match, hits / np.maximum(pos, 1), 0.0).sum(axis=1)
        for r in np.nonzero(n_match)[0]:
            first_hit.append(pos[r, np.argmax(match[r])] - 1)
            aps.append(prec[r] / n_match[r])
    if not aps:
        raise ValueError("no query has a valid match in the gallery; CMC and mAP are undefined")
    # a histogram of first hits, not a (queries x max_rank) table
    depth = min(max_rank, ng)
    cmc = np.cumsum(np.bincount(np.asarray(first_hit), minlength=depth)[:depth]) / len(first_hit)
    if max_rank > depth:
        cmc = np.concatenate([cmc, np.full(max_rank - depth, cmc[-1])])
    return cmc, float(np.mean(aps))
