"""``pycsa.csa``: the CSA re-ranker (SPEC §2). Implemented in :mod:`pycsa.rerank.csa`.

    result = pycsa.csa.train(features, labels, checkpoint="csa.pt")
    reranker = pycsa.csa.CSAReranker.load("csa.pt")
    new = reranker.rerank(queries, database, ranking)
"""
from .rerank.csa import (CSA, CSAReranker, TrainResult, build_samples, csa_loss, csa_scores, load_checkpoint,
                         load_model, save_checkpoint, train, validation_map)

__all__ = ["CSA", "CSAReranker", "csa_scores", "train", "TrainResult", "csa_loss", "build_samples",
           "validation_map", "load_model", "load_checkpoint", "save_checkpoint"]
