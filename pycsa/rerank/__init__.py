"""Re-rankers; importing this package registers them all."""
from .csa import CSA, CSAReranker
from .rrt import RRT, RRTReranker
from .diffusion import Diffusion, TruncatedDiffusion
from .gnn import GNN, gnn_rerank
from .kreciprocal import KReciprocal, k_reciprocal, k_reciprocal_features, k_reciprocal_self
from .qe import AQE, DBA, AlphaDBA, AlphaQE, AlphaQEDBA, AQEwD
from .superglobal import SuperGlobal, superglobal_rerank

__all__ = ["RRT", "RRTReranker", "CSA", "CSAReranker", "Diffusion", "TruncatedDiffusion", "SuperGlobal", "superglobal_rerank", "GNN", "gnn_rerank", "AQE", "AQEwD", "AlphaQE", "DBA", "AlphaDBA", "AlphaQEDBA", "KReciprocal", "k_reciprocal", "k_reciprocal_features", "k_reciprocal_self"]
