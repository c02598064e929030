"""Re-rankers; importing this package registers them all."""
from .kreciprocal import KReciprocal, k_reciprocal, k_reciprocal_features
from .qe import AQE, DBA, AlphaDBA, AlphaQE, AQEwD

__all__ = ["AQE", "AQEwD", "AlphaQE", "DBA", "AlphaDBA", "KReciprocal", "k_reciprocal", "k_reciprocal_features"]
