"""Argument checks shared by the op wrappers; every error names the argument."""
from __future__ import annotations

import math
import numbers

import torch

from .._checks import finite_float
from .._tensors import as_tensor


def tensor(x, name: str) -> torch.Tensor:
    """``x`` as a tensor (numpy arrays wrapped); the caller tracks numpy-ness through its first argument."""
    return as_tensor(x, name)[0]


def same_device(first_name: str, first: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.device != first.device:
            raise ValueError(f"{name}: on {t.device} but {first_name} is on {first.device} "
                             "(all inputs must be on one device)")


def integer_dtype(t: torch.Tensor, name: str) -> None:
    # bool is refused too: a mask taken for indices would silently select rows 0 and 1
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer dtype, got {t.dtype}")


def require_finite(t: torch.Tensor, message: str) -> None:
    """ValueError(message) when ``t`` holds NaN or inf.

    Under torch.compile a ValueError would need the answer on the host, which breaks
    the graph; the check is traced as an assert instead, which fails with a
    RuntimeError carrying the same message (asynchronously on CUDA).
    """
    if torch.compiler.is_compiling():
        torch._assert_async(torch.isfinite(t).all(), message)
    elif t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(message)


def indices(t: torch.Tensor, name: str) -> torch.Tensor:
    """``t``, of an integer dtype, as int64 (the index dtype of the kernels)."""
    integer_dtype(t, name)
    if t.dtype != torch.uint64:
        return t.long()
    # .long() would wrap values >= 2**63 to negatives, and the range checks would then
    # report numbers the caller never passed; the same bits read as int64 show them as < 0
    t = t.view(torch.int64)
    message = f"{name}: holds uint64 values >= 2**63, beyond the int64 range of indices"
    if torch.compiler.is_compiling():
        torch._assert_async((t >= 0).all(), message)
    elif t.numel() and bool((t < 0).any()):
        raise IndexError(message)
    return t


def real_floating(t: torch.Tensor, name: str) -> None:
    # complex and bool tensors would be cast silently: the imaginary part dropped, True read as 1.0
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a real floating-point dtype, got {t.dtype}")


def finite_number(value, name: str) -> float:
    """``value`` as a finite float, refused by name otherwise (see finite_float), also while
    torch.compile traces it."""
    if not torch.compiler.is_compiling():
        return finite_float(value, name)
    # A float argument may be traced as a symbol (dynamic shapes, or the second value seen):
    # math.isfinite cannot read one, a comparison can (compile guards on it and traces again
    # for a value on the other side).
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not -math.inf < value < math.inf:
        raise ValueError(f"{name}: must be a finite number, got {value!r}")
    return value
