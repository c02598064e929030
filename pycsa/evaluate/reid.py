"""Person re-identification evaluation, Market-1501 style: CMC curve and mAP."""
from __future__ import annotations

import numpy as np

from ._inputs import to_numpy, vector

# bounds the (rows x gallery) temporaries whatever the query count
_CELLS_PER_CHUNK = 1 << 22


def reid(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50, *, junk_pids=()):
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
    ``max_rank``; ranks past the end of a short gallery keep the final value);
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
    q_pids = vector(q_pids, "q_pids", nq)
    q_camids = vector(q_camids, "q_camids", nq)
    g_pids = vector(g_pids, "g_pids", ng)
    g_camids = vector(g_camids, "g_camids", ng)
    if isinstance(max_rank, bool) or int(max_rank) != max_rank or max_rank < 1:
        raise ValueError(f"max_rank: expected a positive int, got {max_rank!r}")
    max_rank = int(max_rank)
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
    first_hit = np.asarray(first_hit)
    cmc = (first_hit[:, None] <= np.arange(max_rank)[None, :]).mean(axis=0)
    return cmc, float(np.mean(aps))
