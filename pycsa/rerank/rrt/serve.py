"""Serving RRT: re-sort each query's top-k by the pair logits, all pairs batched."""
from __future__ import annotations

import torch

from ..._checks import optional_int, optional_path, positive_int
from ..._tensors import as_device
from ..._types import ArrayLike, Device, PathLike
from ...datasets.local import LocalDescriptors
from ...ranking import Progress, Ranking, Reranker, register, resort_top
from ..checkpoint import load_checkpoint
from ..placement import placed, serving_dtype, serving_dtype_arg
from .model import RRT
from .train import FORMAT, rerank_scores


def load_rrt(path: PathLike) -> RRT:
    payload = load_checkpoint(path, fmt=FORMAT, what="pycsa RRT", how="`pycsa train --method rrt`")
    model = RRT(**payload["model_config"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint: {path}: the weights do not fit the stored configuration ({exc})") from exc
    return model.eval()


def _check_locals(value, name: str):
    if value is not None and not isinstance(value, LocalDescriptors):
        raise TypeError(f"{name}: expected LocalDescriptors (pycsa.datasets.load_local_descriptors), "
                        f"got {type(value).__name__}")
    return value


@register("rrt")
class RRTReranker(Reranker):
    """Reranking Transformers (SPEC §8): each query's top-``top`` re-sorted by the logit of
    the (query, candidate) pair; the rest keep their place and scores.

    Needs local descriptors: ``locals`` for the database (a :class:`LocalDescriptors`,
    one entry per database row) and ``query_locals`` for the queries (omit it when the
    queries are the database rows themselves, in order).
    """

    needs_checkpoint = True
    needs_locals = True

    def __init__(self, checkpoint: PathLike | None = None, *, model: RRT | None = None,
                 locals: LocalDescriptors | None = None, query_locals: LocalDescriptors | None = None, top: int = 100,
                 batch_pairs: int = 256, max_local: int | None = 500, device: Device = None,
                 dtype: torch.dtype | None = None):
        optional_path(checkpoint, "checkpoint")
        if model is not None and not isinstance(model, RRT):
            raise TypeError(f"model: expected an RRT (pycsa.rrt.RRT), got {type(model).__name__}")
        _check_locals(locals, "locals")
        _check_locals(query_locals, "query_locals")
        max_local = optional_int(max_local, "max_local", low=1)
        dtype = serving_dtype_arg(dtype)
        self.top = positive_int(top, "top")
        self.batch_pairs = positive_int(batch_pairs, "batch_pairs")
        if device is not None:
            device = as_device(device)  # a typo is named now, not at the first rerank
        if model is None:
            if checkpoint is None:
                raise ValueError("checkpoint: RRT needs a trained model: RRTReranker.load(path) or "
                                 "create('rrt', checkpoint=path, locals=...); train one with `pycsa train --method rrt`")
            model = load_rrt(checkpoint)
        self.max_local, self.device, self.dtype = max_local, device, dtype
        self._model = model.eval()
        self._placed = {}
        self._locals, self._query_locals = locals, query_locals

    @classmethod
    def load(cls, path, **kwargs) -> "RRTReranker":
        return cls(path, **kwargs)

    def fit(self, database: ArrayLike, *, locals: LocalDescriptors | None = None,
            progress: Progress = None) -> "RRTReranker":
        if locals is not None:
            self._locals, self._placed = _check_locals(locals, "locals"), {}
        return self

    def _rerank(self, Q, X, ranking: Ranking, progress: Progress) -> Ranking:
        if self._locals is None:
            raise ValueError("locals: RRT needs the database's local descriptors (RRTReranker(..., locals=...))")
        if self._locals.num_images != X.shape[0]:
            raise ValueError(f"locals: has {self._locals.num_images} images but the database has {X.shape[0]} rows")
        q_locals = self._query_locals
        if q_locals is None:
            if not (Q.shape == X.shape and torch.equal(Q, X)):
                raise ValueError("query_locals: the queries are not the database rows; give their local descriptors")
            q_locals = self._locals
        if q_locals.num_images != Q.shape[0]:
            raise ValueError(f"query_locals: has {q_locals.num_images} images but there are {Q.shape[0]} queries")
        device = torch.device(self.device) if self.device is not None else X.device
        dtype = self.dtype or serving_dtype(device)
        key = (device, dtype)
        if key not in self._placed:  # the model and the database's descriptors, moved once per device
            self._placed = {key: (placed(self._model, device, dtype), self._locals.to(device))}
        model, db_locals = self._placed[key]
        q_locals = db_locals if q_locals is self._locals else q_locals.to(device)
        top = ranking.indices[:, :self.top].cpu()
        logits = rerank_scores(model, X.to(device, dtype), db_locals, top, Gq=Q.to(device, dtype), local_q=q_locals,
                               batch_pairs=self.batch_pairs, max_local=self.max_local, progress=progress)
        return resort_top(ranking, logits.to(ranking.indices.device))
