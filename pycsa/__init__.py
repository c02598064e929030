"""pycsa: fast re-ranking for image retrieval and re-identification."""
from . import ops
from .search import search

__version__ = "0.1.0"
__all__ = ["ops", "search", "__version__"]
