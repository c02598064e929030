"""Reranking Transformers (RRT, SPEC §8): model, training, serving."""
from .model import RRT
from .serve import RRTReranker, load_rrt
from .train import TrainResult, pair_logits, rerank_scores, train, validation_map

__all__ = ["RRT", "RRTReranker", "load_rrt", "train", "TrainResult", "pair_logits", "rerank_scores", "validation_map"]
