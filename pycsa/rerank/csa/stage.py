"""CSA over a first-stage re-ranker's similarities (issue #18).

A stage-trained CSA model (``train(..., stage="k_reciprocal")``) sees lists ranked by the
stage and affinities taken from the stage's own scores between database items, not from
the features' inner products: after k-reciprocal re-ranking the raw cosines describe the
lists worse than the stage does (on MPEG-7, a residual CSA over k-reciprocal lists gained
0.2-0.7 mAP with the stage's affinities and lost 0.5 with cosine ones;
bench/results/2026-11-29-csa-experiments-mpeg7.md).

The stage's scores between database items come from its leave-one-out re-ranking of the
database against itself, kept to the top ``depth`` of each row (N x depth, never N x N);
a pair outside an item's top ``depth`` gets that item's lowest kept score, a bound.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from ...ranking import Ranking, create, registered
from ...search import own_last, search


@dataclass
class StageTable:
    """Each database item's top-``depth`` items (itself included, wherever the stage put it)
    by the stage's score, and those scores, best first."""
    indices: torch.Tensor  # N x depth, int64
    scores: torch.Tensor  # N x depth, float32
    self_score: float  # the stage's typical score of an item with itself: a new query's own affinity

    def without_self(self, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's first ``depth`` other items and their scores (its own index removed)."""
        order = own_last(self.indices)
        return self.indices.gather(1, order)[:, :depth], self.scores.gather(1, order)[:, :depth]


# Stages whose score of a pair does not depend on how deep the ranking they re-rank is: the
# table (from a search of stage_depth + 1) then holds the scores the chain's stage gives at any
# depth. Truncated diffusion and SuperGlobal score within the list they are given (measured:
# their scores of the same pair moved by up to 35.7 and 0.26 between depths 20 and 300).
STAGES = ("k_reciprocal", "gnn", "dba", "alpha_dba", "alpha_qe", "aqe", "aqewd", "alpha_qe_dba", "diffusion")


def check_stage(stage, stage_params) -> tuple[str | None, dict]:
    """(name, params) of a stage a CSA model can be trained over, or ValueError/TypeError."""
    if stage is None:
        if stage_params:
            raise ValueError("stage_params: given without a stage")
        return None, {}
    if not isinstance(stage, str):
        raise TypeError(f"stage: expected a re-ranker name (str), got {type(stage).__name__}")
    if "+" in stage:
        raise ValueError(f"stage: one re-ranker, not a chain ({stage!r})")
    cls = registered(stage)
    if getattr(cls, "needs_checkpoint", False):
        raise ValueError(f"stage: {stage} is a learned re-ranker; a stage must be training-free")
    if stage not in STAGES:
        raise ValueError(f"stage: {stage} scores a pair by the list it re-ranks, so a table of its scores would "
                         f"not be the chain's; one of {', '.join(STAGES)}")
    if stage_params is not None and not isinstance(stage_params, dict):
        raise TypeError(f"stage_params: expected a dict of {stage}'s parameters, got {type(stage_params).__name__}")
    params = dict(stage_params or {})
    try:  # its own checks, now rather than after minutes of training
        create(stage, **params)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"stage_params: {exc}") from None
    return stage, params


def check_stage_jitter(stage: str | None, stage_params: dict, jitter) -> dict:
    """{parameter: (low, high)} of the stage's parameters to draw at random for each extra training
    copy (see :func:`draw_stage_params`), or ValueError/TypeError. Both bounds ints: an int drawn."""
    if jitter is None or jitter == {}:
        return {}
    if stage is None:
        raise ValueError("stage_jitter: given without a stage")
    if not isinstance(jitter, dict):
        raise TypeError(f"stage_jitter: expected a dict {{parameter: [low, high]}}, got {type(jitter).__name__}")
    out = {}
    for key, bounds in jitter.items():
        if not isinstance(bounds, (list, tuple)) or len(bounds) != 2 or \
                not all(isinstance(b, numbers.Real) and not isinstance(b, bool) for b in bounds):
            raise ValueError(f"stage_jitter: {key}: expected [low, high], two numbers, got {bounds!r}")
        low, high = bounds
        if not (math.isfinite(low) and math.isfinite(high)) or low > high:
            raise ValueError(f"stage_jitter: {key}: expected finite low <= high, got {bounds!r}")
        for b in (low, high):  # the stage's own checks name a parameter it does not take or a bad value
            try:
                create(stage, **{**stage_params, key: b})
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"stage_jitter: {key}={b!r}: {exc}") from None
        integral = all(isinstance(b, numbers.Integral) for b in bounds)
        out[str(key)] = (int(low), int(high)) if integral else (float(low), float(high))
    return out


def draw_stage_params(params: dict, jitter: dict, gen: torch.Generator | None) -> dict:
    """``params`` with each parameter of ``jitter`` drawn uniformly from its bounds (ints: each
    integer equally likely), in the order of the parameters' names."""
    out = dict(params)
    for key in sorted(jitter):
        low, high = jitter[key]
        if isinstance(low, int):
            out[key] = int(torch.randint(low, high + 1, (1,), generator=gen))
        else:
            out[key] = low + (high - low) * float(torch.rand(1, generator=gen))
    return out


@torch.no_grad()
def stage_table(X: torch.Tensor, stage: str, params: dict, depth: int) -> StageTable:
    """The stage's leave-one-out ranking of ``X``'s rows against ``X`` (top ``depth`` + 1 of the
    initial search re-ranked, so ``depth`` others besides the item itself)."""
    n = X.shape[0]
    m = min(depth + 1, n)
    s, i = search(X, X, m)
    r = create(stage, **params).rerank(X, X, Ranking(torch.as_tensor(i), torch.as_tensor(s)))
    idx, sc = torch.as_tensor(r.indices).long(), torch.as_tensor(r.scores).float()
    own = idx == torch.arange(n, device=idx.device).unsqueeze(1)
    self_score = float(sc[own].median()) if bool(own.any()) else float(sc[:, 0].median())
    return StageTable(idx, sc, self_score)


def check_stage_scores(table: StageTable, own: torch.Tensor, indices: torch.Tensor, scores: torch.Tensor,
                       stage: str, params: dict, rows: int = 64, columns: int = 16) -> None:
    """ValueError when the ranking's scores of a few leave-one-out queries (``own`` >= 0) are not
    the table's for the same pairs: the ranking came from another stage, or the same stage with
    other parameters, and the model would read affinities of one and scores of another."""
    q = (own >= 0).nonzero(as_tuple=True)[0][:rows]
    if q.numel() == 0:
        return
    idx, sc = indices[q, :columns].to(table.indices.device), scores[q, :columns].float().to(table.scores.device)
    row_idx, row_sc = table.indices[own[q].to(table.indices.device)], table.scores[own[q].to(table.indices.device)]
    match = idx.unsqueeze(2) == row_idx.unsqueeze(1)  # q x columns x depth
    found = match.any(dim=2)
    want = (row_sc.unsqueeze(1) * match).sum(dim=2)
    bad = found & ((sc - want).abs() > 1e-3 * want.abs().clamp_min(1.0))
    if bool(bad.any()):
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
        raise ValueError(f"ranking: its scores are not those of this CSA model's stage, {stage}({shown}): the "
                         f"model was trained over that stage's ranking; serve it right after it, with the same "
                         f"parameters (e.g. --method {stage}+csa)")


def stage_affinity(table: StageTable, own: torch.Tensor, ranks: torch.Tensor, L: int,
                   input_scores: torch.Tensor | None = None, *, chunk: int = 1 << 22) -> torch.Tensor:
    """B x (R + 1) x L affinities of each list (the query, then ``ranks``' R items) to its anchors
    (the list's first L) from the stage's scores. ``own``: each query's database row, or -1 for a
    query that is not in the database; its row and column then come from ``input_scores``
    (B x R, the stage's scores of the query's candidates) and the stage's self score."""
    B, R = ranks.shape
    L = min(L, R + 1)
    items = torch.cat([own.view(B, 1).to(ranks), ranks], dim=1)  # B x (R + 1)
    anchors = items[:, :L]
    sorted_anchors, perm = anchors.sort(dim=1)
    depth = table.indices.shape[1]
    A = torch.empty(B, R + 1, L, dtype=torch.float32, device=ranks.device)
    step = max(1, chunk // max(1, (R + 1) * depth))
    for s in range(0, B, step):
        it = items[s:s + step]
        b = it.shape[0]
        known = it >= 0
        rows = it.clamp_min(0)
        nb_idx = table.indices[rows]  # b x (R+1) x depth
        nb_sc = table.scores[rows]
        block = nb_sc[:, :, -1:].expand(b, R + 1, L).clone()  # outside the top depth: the lowest kept
        flat = nb_idx.reshape(b, -1)
        sa = sorted_anchors[s:s + b]
        pos = torch.searchsorted(sa, flat).clamp_max(L - 1)
        hit = (sa.gather(1, pos) == flat) & known.repeat_interleave(depth, dim=1)
        slot = perm[s:s + b].gather(1, pos)
        where = hit.nonzero(as_tuple=True)
        row_of = torch.div(where[1], depth, rounding_mode="floor")
        block[where[0], row_of, slot[where]] = nb_sc.reshape(b, -1)[where]
        A[s:s + b] = block
    new = own < 0
    if bool(new.any()):
        if input_scores is None:
            raise ValueError("input_scores: needed for queries that are not database rows (own = -1)")
        q = new.nonzero(as_tuple=True)[0]
        sc = input_scores[q].float()
        A[q, 1:, 0] = sc  # the candidates' affinity to the query: the stage's score of the pair
        A[q, 0, 1:] = sc[:, :L - 1]
        A[q, 0, 0] = table.self_score
    return A
