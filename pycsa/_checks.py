"""Argument checks shared by the re-rankers: errors name the argument."""
from __future__ import annotations

import math
import numbers
import os

import numpy as np


INT64_MIN, INT64_MAX = -2 ** 63, 2 ** 63 - 1


class WrongKindError(TypeError, ValueError):
    """An argument of the wrong kind: a TypeError, and a ValueError as pycsa's parameter
    checks have always raised, so either ``except`` catches it."""


class NotAnIntError(WrongKindError):
    """A non-integer where an int belongs."""


class NotANumberError(WrongKindError):
    """A non-number where a float belongs (a string, None, a bool)."""


def integer(value, name: str, low: int | None = None, high: int | None = None, high_is: str = "") -> int:
    """``value`` as a Python int: Python and numpy integers pass (what users hold after
    ``np.argmax`` or a config file); bools and floats do not, even when integral."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # numpy bools are not Integral
        raise NotAnIntError(f"{name}: must be an int, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]" if low is not None else f"<= {high}"
        raise ValueError(f"{name}: must be an int {bounds}{f' ({high_is})' if high_is else ''}, got {value}")
    # every int goes on to torch or the C++ kernels as an int64, which would overflow or
    # refuse it there with a message that names no argument
    if not INT64_MIN <= value <= INT64_MAX:
        lo = INT64_MIN if low is None else max(low, INT64_MIN)
        raise ValueError(f"{name}: must be an int in [{lo}, {INT64_MAX}] (int64), got {value}")
    return value


def positive_int(value, name: str) -> int:
    return integer(value, name, low=1)


def optional_int(value, name: str, low: int | None = None) -> int | None:
    """None, or an int >= ``low`` (parameters where None means "no limit")."""
    return None if value is None else integer(value, name, low=low)


def finite_float(value, name: str, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite Python float within the bounds (``low_open``/``high_open``: the
    bound itself excluded). Ints and numpy numbers pass; bools, strings and NaN or inf do not:
    a NaN compares False with everything, so it would slip through a plain range test and
    reach the arithmetic."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise NotANumberError(f"{name}: must be a number, got {value!r} ({type(value).__name__})")
    v = float(value)
    too_low = low is not None and (v <= low if low_open else v < low)
    too_high = high is not None and (v >= high if high_open else v > high)
    if not math.isfinite(v) or too_low or too_high:
        if low is not None and high is not None:
            bounds = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            bounds = f" {'>' if low_open else '>='} {low:g}"
        elif high is not None:
            bounds = f" {'<' if high_open else '<='} {high:g}"
        else:
            bounds = ""
        raise ValueError(f"{name}: must be a finite number{bounds}, got {value!r}")
    return v


def unit_interval(value, name: str) -> float:
    return finite_float(value, name, 0.0, 1.0)


def boolean(value, name: str, *, allow_none: bool = False) -> bool | None:
    """True or False (numpy bools too), or None where ``allow_none``: a flag given 0, 1 or "no"
    is more likely a misplaced argument than a choice."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise WrongKindError(f"{name}: must be True or False{' or None' if allow_none else ''}, "
                        f"got {value!r} ({type(value).__name__})")


def one_of(value, name: str, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def optional_path(value, name: str):
    """A file path (str or os.PathLike) or None."""
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a file path or None, got {value!r} ({type(value).__name__})")
    return value


def optional_callable(value, name: str):
    if value is not None and not callable(value):
        raise TypeError(f"{name}: expected a callable or None, got {value!r} ({type(value).__name__})")
    return value


def transformer_sizes(config: dict, limits: dict) -> dict:
    """The entries of ``config`` named in ``limits`` (a transformer's sizes: dim, heads,
    depth, ...) as exact ints in [1, limit], with ``dim`` divisible by ``heads``; the errors
    name the entry (a checkpoint's configuration is checked this way before any layer is built)."""
    out = {name: integer(config[name], name, 1, high) for name, high in limits.items()}
    if out["dim"] % out["heads"]:
        raise ValueError(f"dim: {out['dim']} is not divisible by heads={out['heads']}")
    return out
