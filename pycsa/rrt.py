"""``pycsa.rrt``: Reranking Transformers (SPEC §8). Implemented in :mod:`pycsa.rerank.rrt`."""
from .datasets.local import LocalDescriptors, load_local_descriptors, make_local_descriptors
from .rerank.rrt import RRT, RRTReranker, TrainResult, load_rrt, pair_logits, rerank_scores, train, validation_map

__all__ = ["RRT", "RRTReranker", "load_rrt", "train", "TrainResult", "pair_logits", "rerank_scores",
           "validation_map", "LocalDescriptors", "load_local_descriptors", "make_local_descriptors"]
