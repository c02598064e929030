"""Seeded synthetic person re-identification features, Market-1501 / MSMT17 shaped.

Real re-ID features are not shipped here; this generator gives sets of the
right size and a geometry on which plain Euclidean ranking is imperfect and
re-ranking (k-reciprocal, GNN) helps, in a couple of seconds at Market size.

Model, in ``dim`` dimensions (rows L2-normalised, float32; Euclidean distance
of unit rows = sqrt(2 - 2·cosine)):

* **Identities** are clusters. Each has a centre made of a shared "look"
  (one of ``num_ids // 12`` clothing groups: people dressed alike) and its own
  part; ``group_weight`` sets the share.
* **Cameras** shift every image they take by a common ``camera_shift``
  (domain shift: lighting, colour, background), and each (identity, camera)
  pair gets its own ``view_shift`` (that person under that camera). So an
  image is closer to other people under its own camera than the cross-camera
  views of the same person often are: plain ranking misses those, while the
  same person's same-camera images, which sit in the gallery as for Market,
  link the query to them (what re-ranking exploits).
* **Pose** is a low-rank component shared by everybody (``pose_rank``
  directions), and each image has isotropic noise of log-normally varying
  strength (occlusion, blur, detector misalignment).
* **Occlusion**: an ``occlusion_fraction`` of the images have another
  (random) identity's centre blended in with a weight drawn from U(0.3, 0.7):
  hard cases that neighbour-based re-ranking cannot fully repair either.
* **Distractors** (a ``distractor_fraction`` of the gallery) get pid ``0``,
  like Market's distractor images: people or background crops of nobody in
  the query set, each under one of the cameras, in small clusters of their own.
  Pid 0 never equals a query pid, so :func:`pycsa.evaluate.reid` scores them
  as ordinary negatives with no ``junk_pids`` needed. Market's ``-1`` junk
  images (bad detections, ignored by the evaluation) are not generated.

Layout as in Market-1501: every identity appears under 2 to ``num_cams``
cameras; the queries are (identity, camera) pairs, at most one per pair
while there are enough pairs (Market: one query per person and camera), and
every pair a query is drawn from also has at least one gallery image, so each
query has its same-camera look-alike in the gallery (dropped by the
evaluation protocol) and at least one cross-camera true match.

All draws come from child streams of ``numpy.random.SeedSequence(seed)``:
the same seed and arguments give identical arrays on one platform.

Measured with the defaults, seed 0 (``bench/rerank_side_by_side.py``; 2-core CPU):
Market size, Euclidean mAP 47.4 / rank-1 79.9; k-reciprocal (k1=20, k2=6,
λ=0.3) 91.7 / 92.7; dense GNN (26, 7) 92.7 / 93.2. Generation takes about
1 s at Market size and 6 s at MSMT17 size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["ReidData", "make_reid", "make_reid_preset", "REID_PRESETS"]

DISTRACTOR_PID = 0


@dataclass
class ReidData:
    """Query and gallery features with identities and cameras (numpy)."""

    query_feats: np.ndarray
    """q x dim float32, L2-normalised rows."""
    gallery_feats: np.ndarray
    """g x dim float32, L2-normalised rows."""
    q_pids: np.ndarray
    """q int64 identities (1..num_ids)."""
    g_pids: np.ndarray
    """g int64 identities; 0 for distractors."""
    q_camids: np.ndarray
    """q int64 cameras (0..num_cams-1)."""
    g_camids: np.ndarray
    """g int64 cameras."""

    @property
    def num_query(self) -> int:
        return self.query_feats.shape[0]

    @property
    def num_gallery(self) -> int:
        return self.gallery_feats.shape[0]


REID_PRESETS = {
    # Market-1501 test split: 3,368 queries, 19,732 gallery, 751 test ids, 6 cameras
    "market": dict(num_query=3368, num_gallery=19732, dim=2048, num_ids=751, num_cams=6),
    # MSMT17 test split: 11,659 queries, 82,161 gallery, 3,060 ids, 15 cameras
    "msmt": dict(num_query=11659, num_gallery=82161, dim=2048, num_ids=3060, num_cams=15),
    # for tests: quick and small
    "small": dict(num_query=50, num_gallery=300, dim=64, num_ids=20, num_cams=6),
}


def _unit(rng, n, dim):
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _check_int(name, value, low):
    if isinstance(value, bool) or int(value) != value or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    return int(value)


def make_reid(
    num_query: int = 3368,
    num_gallery: int = 19732,
    dim: int = 2048,
    num_ids: int = 751,
    num_cams: int = 6,
    seed: int = 0,
    *,
    distractor_fraction: float = 0.14,
    group_weight: float = 0.5,
    camera_shift: float = 0.45,
    view_shift: float = 0.55,
    pose_rank: int = 8,
    pose_weight: float = 0.7,
    noise: float = 1.0,
    noise_spread: float = 0.45,
    occlusion_fraction: float = 0.15,
    chunk_rows: int = 8192,
) -> ReidData:
    """Synthetic re-ID query/gallery features; see the module docstring for the model.

    Weights are the norms of each component before the row is normalised
    (an identity centre has norm 1). Defaults are Market-1501's sizes.
    """
    num_query = _check_int("num_query", num_query, 1)
    num_gallery = _check_int("num_gallery", num_gallery, 1)
    dim = _check_int("dim", dim, 2)
    num_ids = _check_int("num_ids", num_ids, 1)
    num_cams = _check_int("num_cams", num_cams, 2)
    pose_rank = _check_int("pose_rank", pose_rank, 0)
    chunk_rows = _check_int("chunk_rows", chunk_rows, 1)
    if not 0.0 <= distractor_fraction < 1.0:
        raise ValueError(f"distractor_fraction: expected a value in [0, 1), got {distractor_fraction!r}")
    if not 0.0 <= occlusion_fraction <= 1.0:
        raise ValueError(f"occlusion_fraction: expected a value in [0, 1], got {occlusion_fraction!r}")
    if not 0.0 <= group_weight <= 1.0:
        raise ValueError(f"group_weight: expected a value in [0, 1], got {group_weight!r}")

    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(8)]
    r_layout, r_ids, r_cams, r_views, r_pose, r_noise, r_distr, r_perm = streams

    # --- layout: cameras per identity, queries and gallery counts per (identity, camera) pair
    num_distr = int(round(distractor_fraction * num_gallery))
    num_real = num_gallery - num_distr
    if num_real < 1:
        raise ValueError("num_gallery: too small for any identity image once distractors are set aside")
    n_cam = r_layout.integers(2, num_cams + 1, size=num_ids)
    pair_id = np.repeat(np.arange(num_ids), n_cam)
    pair_cam = np.concatenate([r_layout.choice(num_cams, size=c, replace=False) for c in n_cam])
    num_pairs = pair_id.size
    # queries: a random subset of pairs (a pair repeats only when there are fewer pairs than queries)
    reps, extra = divmod(num_query, num_pairs)
    q_pair = np.concatenate([np.tile(np.arange(num_pairs), reps), r_layout.choice(num_pairs, size=extra, replace=False)])
    # gallery: every pair gets one image first when the budget allows (so each query has its
    # same-camera look-alike and a cross-camera match), else the queried pairs do;
    # the rest go uniformly over all pairs
    first = np.arange(num_pairs) if num_pairs <= num_real else np.unique(q_pair)
    if first.size > num_real:
        first = r_layout.choice(first, size=num_real, replace=False)
    g_pair = [first]
    left = num_real - first.size
    if left > 0:
        g_pair.append(r_layout.integers(0, num_pairs, size=left))
    g_pair = np.concatenate(g_pair)

    # --- latent structure
    num_groups = max(1, num_ids // 12)
    groups = _unit(r_ids, num_groups, dim)
    own = _unit(r_ids, num_ids, dim)
    member_of = r_ids.integers(0, num_groups, size=num_ids)
    centers = math.sqrt(group_weight) * groups[member_of] + math.sqrt(1.0 - group_weight) * own
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    cam_dirs = _unit(r_cams, num_cams, dim) * np.float32(camera_shift)
    views = _unit(r_views, num_pairs, dim) * np.float32(view_shift)
    pose_basis = _unit(r_pose, max(pose_rank, 1), dim)

    # distractors: small clusters (a few crops of one passer-by), each under one camera
    n_dclusters = max(1, num_distr // 4)
    d_centers = _unit(r_distr, n_dclusters, dim)
    d_cams = r_distr.integers(0, num_cams, size=n_dclusters)
    d_views = _unit(r_distr, n_dclusters, dim) * np.float32(view_shift)
    d_of = r_distr.integers(0, n_dclusters, size=num_distr)

    # --- every row as (centre row, camera, view row) into stacked tables
    all_centers = np.concatenate([centers, d_centers])
    all_views = np.concatenate([views, d_views])
    q_center, q_cam, q_view = pair_id[q_pair], pair_cam[q_pair], q_pair
    g_center = np.concatenate([pair_id[g_pair], num_ids + d_of])
    g_cam = np.concatenate([pair_cam[g_pair], d_cams[d_of]])
    g_view = np.concatenate([g_pair, num_pairs + d_of])
    g_pid = np.concatenate([pair_id[g_pair] + 1, np.full(num_distr, DISTRACTOR_PID)]).astype(np.int64)

    # shuffle the gallery (keeps the look-alikes from sitting at fixed positions)
    perm = r_perm.permutation(num_gallery)
    g_center, g_cam, g_view, g_pid = g_center[perm], g_cam[perm], g_view[perm], g_pid[perm]

    def render(center_idx, cam_idx, view_idx, rng):
        n = center_idx.size
        out = np.empty((n, dim), dtype=np.float32)
        for s in range(0, n, chunk_rows):
            e = min(n, s + chunk_rows)
            m = e - s
            x = rng.standard_normal((m, dim), dtype=np.float32)
            scale = noise * np.exp(noise_spread * rng.standard_normal(m)) / math.sqrt(dim)
            x *= scale.astype(np.float32)[:, None]
            if pose_rank:
                coef = rng.standard_normal((m, pose_basis.shape[0]), dtype=np.float32)
                coef *= np.float32(pose_weight / math.sqrt(pose_basis.shape[0]))
                x += coef @ pose_basis
            x += all_centers[center_idx[s:e]]
            if occlusion_fraction:
                # occluded crops: another identity's look blended in (hard for re-ranking too)
                hit = np.nonzero(rng.random(m) < occlusion_fraction)[0]
                other = rng.integers(0, num_ids, size=hit.size)
                mix = rng.uniform(0.3, 0.7, size=hit.size).astype(np.float32)[:, None]
                x[hit] += mix * (centers[other] - all_centers[center_idx[s:e][hit]])
            x += cam_dirs[cam_idx[s:e]]
            x += all_views[view_idx[s:e]]
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[s:e] = x
        return out

    query_feats = render(q_center, q_cam, q_view, r_noise)
    gallery_feats = render(g_center, g_cam, g_view, r_noise)
    return ReidData(
        query_feats=query_feats,
        gallery_feats=gallery_feats,
        q_pids=(q_center + 1).astype(np.int64),
        g_pids=g_pid,
        q_camids=q_cam.astype(np.int64),
        g_camids=g_cam.astype(np.int64),
    )


def make_reid_preset(name: str = "market", seed: int = 0, **overrides) -> ReidData:
    """:func:`make_reid` with the sizes of ``"market"``, ``"msmt"`` or ``"small"`` (overridable)."""
    if name not in REID_PRESETS:
        raise ValueError(f"name: expected one of {sorted(REID_PRESETS)}, got {name!r}")
    return make_reid(**{**REID_PRESETS[name], "seed": seed, **overrides})
