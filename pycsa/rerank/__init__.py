"""Re-rankers; importing this package registers them all."""
from .qe import AQE, DBA, AlphaDBA, AlphaQE, AQEwD

__all__ = ["AQE", "AQEwD", "AlphaQE", "DBA", "AlphaDBA"]
