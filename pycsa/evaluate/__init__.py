"""Evaluation protocols (SPEC §9), pure numpy and independent of the re-rankers they judge."""
from .classes import bullseye, class_map
from .reid import reid
from .revisited import revisited

__all__ = ["revisited", "reid", "class_map", "bullseye"]
