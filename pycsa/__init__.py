"""pycsa: fast re-ranking for image retrieval and re-identification."""
from . import compat, ops, rerank
from . import csa, rrt
from .ranking import Chain, Ranking, Reranker, available, create, register
from .rerank.gnn import gnn_rerank
from .rerank.kreciprocal import k_reciprocal
from .rerank.superglobal import superglobal_rerank
from .search import Index, search
from .tune import create_from_config

__version__ = "0.1.0"
__all__ = ["csa", "rrt", "compat", "ops", "rerank", "search", "Index", "k_reciprocal", "gnn_rerank", "Chain", "Ranking", "Reranker", "superglobal_rerank", "available", "create", "register", "create_from_config", "__version__"]
