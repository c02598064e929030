"""Argument checks shared by the re-rankers: errors name the argument."""
from __future__ import annotations


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: must be an int >= 1, got {value!r}")
    return value


def unit_interval(value, name: str) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name}: must lie in [0, 1], got {value!r}")
    return v
