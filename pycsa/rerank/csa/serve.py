"""Serving a trained CSA model: re-sort each query's top-K by refined affinity features."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..._checks import boolean, integer, optional_path, positive_int
from ..._tensors import as_device, as_tensor, fingerprint, leave_one_out as leave_one_out_rows, to_caller
from ..._types import ArrayLike, Device, PathLike
from ...ops import affinity
from ...ranking import Progress, Ranking, Reranker, register, resort_top
from ..placement import placed, serving_dtype, serving_dtype_arg
from .checkpoint import load_model
from .model import CSA
from .stage import StageTable, check_stage_scores, stage_affinity, stage_table


class _GraphedModel:
    """Replays a CUDA graph of the model per input shape: at small batches the launch
    overhead of ~30 kernels would otherwise dominate. At most ``max_graphs`` shapes are kept."""

    def __init__(self, model: CSA, max_graphs: int = 8):
        self.model, self.max_graphs, self.graphs, self.pool = model, max_graphs, {}, None

    def __call__(self, A: torch.Tensor) -> torch.Tensor:
        # Streams, capture and replay on A's device, not the current one: a graph captured
        # on another device's stream would be empty and replay the first batch's output.
        with torch.cuda.device(A.device):
            key = (tuple(A.shape), A.dtype)
            if key not in self.graphs:
                if len(self.graphs) >= self.max_graphs:
                    return self.model(A)
                self.graphs[key] = self._capture(A)
            graph, static_in, static_out = self.graphs[key]
            static_in.copy_(A)
            graph.replay()
            return static_out.clone()

    def _capture(self, A: torch.Tensor):
        static_in = A.clone()
        side = torch.cuda.Stream(A.device)
        side.wait_stream(torch.cuda.current_stream(A.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the capture (allocator, lazy init)
                self.model(static_in)
        torch.cuda.current_stream(A.device).wait_stream(side)
        if self.pool is None:  # one memory pool for all shapes: graphs replay one at a time
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=side):
            static_out = self.model(static_in)
        return graph, static_in, static_out


@torch.no_grad()
def csa_scores(model: CSA, Q: torch.Tensor, X: torch.Tensor, ranks: torch.Tensor, k: int, *, batch_size: int = 64,
               dtype: torch.dtype | None = None, forward: Callable[..., torch.Tensor] | None = None,
               progress: Progress = None, input_scores: torch.Tensor | None = None,
               stage_table: StageTable | None = None, own: torch.Tensor | None = None) -> torch.Tensor:
    """cos(y_query, y_i) for the first k - 1 candidates of each query's ranking: B x (k - 1).

    ``ranks``: B x R database indices, best first. Each list is the query followed by
    its candidates (K = k items); the anchors are the query and its top L - 1, so
    ranks must hold at least L - 1 columns even when k < L. ``dtype``: the precision
    of the affinity features and the model. ``input_scores`` (B x R, the ranking's
    scores): needed by a residual model (see :meth:`CSA.rescore`). ``stage_table``: for a
    stage-trained model, the stage's ranking of the database (:func:`stage.stage_table`), from
    which the affinities come; ``own``: each query's database row, -1 for a query that is not
    one (its affinities then come from ``input_scores``).
    """
    if not isinstance(model, CSA):
        raise TypeError(f"model: expected a CSA, got {type(model).__name__}")
    k = positive_int(k, "k")  # 1: the query alone, nothing to re-score
    batch_size = positive_int(batch_size, "batch_size")
    dtype = serving_dtype_arg(dtype)
    (Q, _), (X, was_numpy), (ranks, _) = as_tensor(Q, "Q"), as_tensor(X, "X"), as_tensor(ranks, "ranks")
    if ranks.dim() != 2 or Q.dim() != 2 or Q.shape[0] != ranks.shape[0]:
        raise ValueError(f"ranks: expected one row of database indices per query (B x R), got shape "
                         f"{tuple(ranks.shape)} for queries of shape {tuple(Q.shape)}")
    L = model.num_anchors
    B, R = ranks.shape
    if R < L - 1:
        raise ValueError(f"ranking: has {R} candidates per query but the model uses L={L} anchors "
                         f"(the query and its top {L - 1}); rank at least {L - 1} items")
    m = min(k - 1, R)
    if input_scores is not None:
        input_scores = as_tensor(input_scores, "input_scores")[0]
        if input_scores.shape != ranks.shape:
            raise ValueError(f"input_scores: expected the ranking's shape {tuple(ranks.shape)}, "
                             f"got {tuple(input_scores.shape)}")
        if model.residual and not bool(torch.isfinite(input_scores[:, :m]).all()):
            raise ValueError("input_scores: the ranking's scores of the re-scored candidates must be finite "
                             "(a residual CSA model standardises them)")
    elif model.residual:
        raise ValueError("input_scores: a residual CSA model re-scores the input ranking's scores; pass them "
                         "(a Ranking, not bare indices)")
    if (stage_table is None) != (model.stage is None):
        raise ValueError(f"stage_table: the model was trained over {model.stage or 'the features'} similarities"
                         + ("; pass the stage's table" if stage_table is None else ", not a stage's"))
    if stage_table is not None:
        if input_scores is None:
            raise ValueError("input_scores: a stage-trained CSA model needs the stage's scores of the ranking")
        own = torch.full((B,), -1, dtype=torch.long) if own is None else torch.as_tensor(own).long()
        if own.shape != (B,):
            raise ValueError(f"own: expected one database row (or -1) per query, got shape {tuple(own.shape)}")
        if own.numel() and (int(own.min()) < -1 or int(own.max()) >= stage_table.indices.shape[0]):
            raise IndexError(f"own: database rows lie in [0, {stage_table.indices.shape[0]}) (-1: not one)")
    need = max(m, L - 1)  # k < L: affinity rows of the whole anchor list, of which the first k are kept
    forward = model if forward is None else forward
    dtype = dtype or X.dtype
    out = torch.empty((B, m), dtype=torch.float32, device=X.device)
    Xd, Qd = X.to(dtype), Q.to(dtype)
    for s in range(0, B, batch_size):
        if stage_table is None:
            A = affinity(Xd, ranks[s:s + batch_size, :need], L, queries=Qd[s:s + batch_size])[:, :m + 1]
        else:
            A = stage_affinity(stage_table, own[s:s + batch_size].to(ranks.device), ranks[s:s + batch_size, :need].long(),
                               L, input_scores[s:s + batch_size, :need].to(ranks.device))[:, :m + 1].to(dtype)
        base = None if input_scores is None else input_scores[s:s + batch_size, :m].to(out.device)
        out[s:s + batch_size] = model.rescore(forward(A), base)
        if progress is not None:
            progress(min(s + batch_size, B), B)
    return to_caller(out, was_numpy)


@register("csa")
class CSAReranker(Reranker):
    """CSA re-ranking (SPEC §2) with a trained model: the top-K of each ranking are
    re-sorted by cos(y_query, y_i); the rest keep their place and scores.

    ``CSAReranker.load("csa.pt")`` or ``pycsa.create("csa", checkpoint="csa.pt")``.
    ``k`` is the list length K (query included), independent of the K used in
    training; ``leave_one_out`` (None: detected, when the queries are the database's rows):
    each query's own row is kept first and left out of the lists CSA re-scores, as in
    training; ``dtype`` defaults to bfloat16 on CUDA (compute capability 8.0+) and float32 elsewhere; on CUDA the
    model runs as CUDA graphs (``cuda_graphs``), one per batch shape. A residual model's new
    top-K scores are standardised (about -3..3), on another scale than the input scores the
    items past K keep: the order is right, scores across that boundary do not compare.
    A model trained over a stage (``pycsa train --stage k_reciprocal``) re-ranks that stage's
    ranking, so it goes last in a chain right after it, with the same parameters
    (``Chain([create("k_reciprocal"), CSAReranker("csa-kr.pt")])``, ``--method k_reciprocal+csa``:
    for leave-one-out queries the ranking's scores are checked against the stage's); its
    affinities come from the stage's ranking of the database against itself, computed at the
    first re-rank (or ``fit``) and kept: N x depth (the model's ``stage_depth``) indices and scores.
    """

    needs_checkpoint = True

    def __init__(self, checkpoint: PathLike | None = None, *, model: CSA | None = None, k: int = 1024,
                 batch_size: int = 64, device: Device = None, dtype: torch.dtype | None = None,
                 cuda_graphs: bool = True, num_anchors: int | None = None, leave_one_out: bool | None = None):
        optional_path(checkpoint, "checkpoint")
        if num_anchors is not None:
            num_anchors = integer(num_anchors, "num_anchors", low=1)
        if model is not None and not isinstance(model, CSA):
            raise TypeError(f"model: expected a CSA (pycsa.csa.CSA), got {type(model).__name__}")
        dtype = serving_dtype_arg(dtype)
        cuda_graphs = boolean(cuda_graphs, "cuda_graphs")
        self.leave_one_out = boolean(leave_one_out, "leave_one_out", allow_none=True)
        self._own = None
        self.k = positive_int(k, "k")
        self.batch_size = positive_int(batch_size, "batch_size")
        if device is not None:
            device = as_device(device)  # a typo is named now, not at the first rerank
        if model is None:
            if checkpoint is None:
                raise ValueError("checkpoint: CSA needs a trained model: CSAReranker.load(path) or "
                                 "create('csa', checkpoint=path); train one with `pycsa train` or pycsa.csa.train")
            model = load_model(checkpoint, num_anchors)
        elif num_anchors is not None and model.num_anchors != num_anchors:
            raise ValueError(f"model: has L={model.num_anchors} anchors, not {num_anchors}")
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.device, self.dtype, self.cuda_graphs = device, dtype, cuda_graphs
        self._model = model.eval()
        self._placed = {}
        self._table = None  # (fingerprint of the database, StageTable) of a stage-trained model

    def fit(self, database: ArrayLike, *, progress: Progress = None) -> "CSAReranker":
        super().fit(database, progress=progress)
        self._prepare(database)
        return self

    def _prepare(self, database) -> None:
        """A stage-trained model's table of the stage's ranking of ``database``: computed once per
        database (told apart by the caller's array, as fit's are: a converted copy is new each call)."""
        super()._prepare(database)
        if self._model.stage is None:
            return
        key = fingerprint(database)
        if self._table is None or self._table[0].differs(key):
            m = self._model
            X = as_tensor(database, "database")[0].detach().float()
            self._table = (key, stage_table(X, m.stage, m.stage_params, m.stage_depth))

    @classmethod
    def load(cls, path, **kwargs) -> "CSAReranker":
        return cls(path, **kwargs)

    @property
    def model(self) -> CSA:
        return self._model

    def _model_on(self, device: torch.device, dtype: torch.dtype):
        """The model on the data's device in the serving precision (cached), and how to call it."""
        key = (device, dtype)
        if key not in self._placed:
            m = placed(self._model, device, dtype)
            fwd = _GraphedModel(m) if device.type == "cuda" and self.cuda_graphs else m
            self._placed = {key: (m, fwd)}
        return self._placed[key]

    def rerank(self, queries: ArrayLike, database: ArrayLike, ranking: Ranking | ArrayLike, *, k: int | None = None,
               progress: Progress = None, own: ArrayLike | None = None) -> Ranking:
        """Re-ranks; ``ranking`` is a :class:`Ranking` (indices, scores) or a plain B x R array
        of database indices, in which case the new indices alone are returned. ``own``: each
        query's own database row (leave-one-out for queries that are some of the database's
        rows; when all are, in order, it is detected unless ``leave_one_out=False``)."""
        if k is not None:
            old, self.k = self.k, positive_int(k, "k")
            try:
                return self.rerank(queries, database, ranking, progress=progress, own=own)
            finally:
                self.k = old
        if own is not None:
            own_t = as_tensor(np.asarray(own) if isinstance(own, (list, tuple)) else own, "own")[0]
            if own_t.dim() != 1 or own_t.is_floating_point() or own_t.dtype == torch.bool:
                raise ValueError(f"own: expected one integer database row per query, got {own_t.dtype} of shape "
                                 f"{tuple(own_t.shape)}")
            self._own = own_t.long()
            try:
                return self.rerank(queries, database, ranking, progress=progress)
            finally:
                self._own = None
        if isinstance(ranking, Ranking) or (isinstance(ranking, tuple) and len(ranking) == 2):
            return super().rerank(queries, database, ranking, progress=progress)
        idx, _ = as_tensor(ranking, "ranks")
        if self._model.stage is not None:
            raise ValueError(f"ranking: this CSA model was trained over {self._model.stage}'s ranking and reads its "
                             "scores; pass that Ranking (indices, scores), not bare indices")
        if self._model.residual:
            raise ValueError("ranking: this CSA model is residual (it corrects the input ranking's scores); "
                             "pass a Ranking (indices, scores), not bare indices")
        out = super().rerank(queries, database, Ranking(idx, torch.zeros(idx.shape, device=idx.device)),
                             progress=progress)
        return out.indices

    def _rerank(self, Q, X, ranking: Ranking, progress: Progress) -> Ranking:
        own = getattr(self, "_own", None)
        if own is None and leave_one_out_rows(self.leave_one_out, Q, X):
            own = torch.arange(Q.shape[0])
        if own is None:
            return self._rerank_lists(Q, X, ranking, progress, None)
        if own.shape[0] != Q.shape[0]:
            raise ValueError(f"own: {own.shape[0]} rows for {Q.shape[0]} queries")
        if own.numel() and (int(own.min()) < 0 or int(own.max()) >= X.shape[0]):
            raise IndexError(f"own: each query's database row must lie in [0, {X.shape[0]})")
        # Leave-one-out: a query's own row is not its neighbour. Left in, it would be the first
        # candidate and the second anchor, a copy of the query that training never shows (its
        # lists leave each image out). It is put first and the rest re-ranked without it.
        idx, sc = ranking.indices, ranking.scores
        is_own = idx == own.to(idx.device)[:, None]
        order = torch.sort((~is_own).to(torch.uint8), dim=1, stable=True).indices
        idx, sc = idx.gather(1, order), sc.gather(1, order)
        rest = self._rerank_lists(Q, X, Ranking(idx[:, 1:], sc[:, 1:]), progress, own)
        return Ranking(torch.cat([idx[:, :1], rest.indices], 1), torch.cat([sc[:, :1], rest.scores], 1))

    def _rerank_lists(self, Q, X, ranking: Ranking, progress: Progress, own: torch.Tensor | None) -> Ranking:
        device = torch.device(self.device) if self.device is not None else X.device
        dtype = self.dtype or serving_dtype(device)
        model, forward = self._model_on(device, dtype)
        idx = ranking.indices
        table = None
        if model.stage is not None:
            if self._table is None:  # _rerank called without rerank's _prepare
                self._prepare(X)
            table = self._table[1]
            table = StageTable(table.indices.to(device), table.scores.to(device), table.self_score)
            if own is not None:
                check_stage_scores(table, own.to(device), idx.to(device), ranking.scores.to(device), model.stage,
                                   model.stage_params)
        new_scores = csa_scores(model, Q.to(device), X.to(device), idx.to(device), self.k, batch_size=self.batch_size,
                                dtype=dtype, forward=forward, progress=progress,
                                input_scores=ranking.scores.to(device) if model.residual or table is not None else None,
                                stage_table=table, own=None if own is None else own.to(device))
        return resort_top(ranking, new_scores.to(idx.device))
