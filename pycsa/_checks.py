"""Argument checks shared by the re-rankers: errors name the argument."""
from __future__ import annotations

import numbers


class NotAnIntError(TypeError, ValueError):
    """A non-integer where an int belongs: a TypeError, and a ValueError as pycsa's
    parameter checks have always raised, so either ``except`` catches it."""


def integer(value, name: str, low: int | None = None, high: int | None = None, high_is: str = "") -> int:
    """``value`` as a Python int: Python and numpy integers pass (what users hold after
    ``np.argmax`` or a config file); bools and floats do not, even when integral."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # numpy bools are not Integral
        raise NotAnIntError(f"{name}: must be an int, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]" if low is not None else f"<= {high}"
        raise ValueError(f"{name}: must be an int {bounds}{f' ({high_is})' if high_is else ''}, got {value}")
    return value


def positive_int(value, name: str) -> int:
    return integer(value, name, low=1)


def unit_interval(value, name: str) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name}: must lie in [0, 1], got {value!r}")
    return v
