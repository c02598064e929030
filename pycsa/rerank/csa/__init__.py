"""CSA: contextual similarity aggregation with self-attention (SPEC §2): model, training, serving."""
from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .model import CSA
from .serve import CSAReranker, csa_scores
from .train import TrainResult, build_samples, csa_loss, train, validation_map

__all__ = ["CSA", "CSAReranker", "csa_scores", "train", "TrainResult", "csa_loss", "build_samples",
           "validation_map", "load_model", "load_checkpoint", "save_checkpoint"]
