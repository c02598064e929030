"""Accept torch tensors or numpy arrays; hand results back in the caller's kind."""
from __future__ import annotations

import numpy as np
import torch


def as_tensor(x, name: str) -> tuple[torch.Tensor, bool]:
    """Return ``(tensor, was_numpy)``; numpy arrays are wrapped without a copy where possible."""
    if isinstance(x, torch.Tensor):
        return x, False
    if isinstance(x, np.ndarray):
        if x.dtype == np.float16 or x.dtype.kind in "fiub":
            return torch.from_numpy(np.ascontiguousarray(x)), True
        raise TypeError(f"{name}: numpy dtype {x.dtype} is not supported")
    raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def to_caller(x: torch.Tensor, was_numpy: bool):
    """Give ``x`` back as numpy when the caller passed numpy."""
    if not was_numpy:
        return x
    x = x.detach().cpu()
    if x.dtype == torch.bfloat16:  # numpy has no bfloat16
        x = x.float()
    return x.numpy()


def check_features(x: torch.Tensor, name: str, *, allow_empty: bool = True) -> None:
    """Features are 2-D floating rows without NaN or inf."""
    if x.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D (items x dim) array, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point dtype, got {x.dtype}")
    if not allow_empty and x.shape[0] == 0:
        raise ValueError(f"{name}: is empty")
    check_finite(x, name)


def check_finite(x: torch.Tensor, name: str) -> None:
    """ValueError naming ``name`` if ``x`` holds NaN or inf.

    One reduction instead of an elementwise mask: NaN or inf anywhere makes the sum
    non-finite. A finite sum proves every value finite; a non-finite one is
    confirmed element-wise (a sum can overflow on its own). A plain sum: asking
    for another dtype would first copy the whole array.
    """
    if x.numel() and not bool(torch.isfinite(x.sum())):
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name}: contains NaN or inf")


def same_rows(Q: torch.Tensor, X: torch.Tensor) -> bool:
    """True when the queries are the database's rows, in order (the leave-one-out protocol:
    every item a query against all items): the same memory, or equal values."""
    if Q.shape != X.shape or Q.device != X.device:
        return False
    if Q.data_ptr() == X.data_ptr() and Q.stride() == X.stride() and Q.dtype == X.dtype:
        return True
    return bool(torch.equal(Q, X.to(Q.dtype)))


def leave_one_out(flag, Q: torch.Tensor, X: torch.Tensor, name: str = "leave_one_out") -> bool:
    """``flag`` None: detect (:func:`same_rows`); True: the caller says so (then the shapes must agree)."""
    if flag is None:
        return same_rows(Q, X)
    if flag and Q.shape != X.shape:
        raise ValueError(f"{name}: True needs the queries to be the database's rows, but queries are "
                         f"{tuple(Q.shape)} and the database {tuple(X.shape)}")
    return bool(flag)
