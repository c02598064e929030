"""pycsa: fast re-ranking for image retrieval and re-identification."""
from . import ops, rerank
from .ranking import Ranking, Reranker, available, create, register
from .search import Index, search

__version__ = "0.1.0"
__all__ = ["ops", "rerank", "search", "Index", "Ranking", "Reranker", "available", "create", "register", "__version__"]
