"""Argument checks shared by the op wrappers; every error names the argument."""
from __future__ import annotations

import torch

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
